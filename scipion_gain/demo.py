"""`make demo`: a Scipion session in streaming whose detector gain drifts part way.

Run with ``python -m scipion_gain.demo [--movies N] [--drift-at K] [--out DIR]``.

What it does, all from this script and headless:

1. simulates a detector (512 x 512, counting) and writes its gain reference
   (a correction that multiplies raw frames, mean 1) as the microscope
   session's gain file;
2. creates a Scipion project and imports the movies in streaming
   (``ProtImportMovies``, ``dataStreaming``) with that gain attached, while
   this script "acquires" a movie every couple of seconds; from movie K on the
   detector's real gain has drifted (one readout sector 20 % weaker and new
   column factors), but the session's gain file stays the same;
3. runs ``GainProtMovieGain`` on the open set: every movie's residual gain is
   estimated as it arrives;
4. ends the session (the import's stop file), waits for the closed output and
   prints the summary, in which the drifted movies are flagged, and where the
   project and the summary are.

Exit status 0 when exactly the drifted movies are flagged, 1 otherwise.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = 'demo-output'
SHAPE = (512, 512)
FRAMES = 10
DOSE = 3.0
GAIN_OPTIONS = dict(sector_spread=0.1, column_spread=0.05, row_spread=0.03, flat_field=0.1,
                    dead_pixels=20, hot_pixels=5)


def scipion_environment(out):
    """Set what pyworkflow reads at its first import (values already set win)."""
    out = Path(out).resolve()
    config = out / 'config'
    config.mkdir(parents=True, exist_ok=True)
    hosts = config / 'hosts.conf'
    hosts.write_text('[localhost]\nPARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s\n')
    for name, value in {'SCIPION_DOMAIN': 'pwem', 'SCIPION_HOSTS': str(hosts),
                        'SCIPION_PYTHON': sys.executable, 'SCIPION_HOME': str(out),
                        'SCIPION_USER_DATA': str(out / 'ScipionUserData'),
                        'SCIPION_NOTIFY': 'False', 'SCIPION_TEST_NOSYNC': '1',
                        'SCIPION_STEPS_CHECK_SEC': '2',
                        'SCIPION_EM_NEW_FILE_CHECK_SEC': '2'}.items():
        os.environ.setdefault(name, value)


def drifted_gain(gain, rng):
    """The detector after the drift: one sector 20 % weaker, new column factors."""
    drifted = gain.copy()
    cols = gain.shape[1]
    drifted[:, cols // 4:cols // 2] *= 0.8
    drifted *= (1 + 0.1 * rng.standard_normal(cols)).astype(drifted.dtype)[None, :]
    return drifted


def acquire(folder, index, gain, seed):
    """Write one movie under a temporary name, then rename it into place.

    ``index`` counts from 0; the file is named from 1 (movie_001.mrc for the
    first), as the import numbers the movies: the file of movie id 7 is
    movie_007.mrc.
    """
    from .simulate import simulate_movie
    from .io.atomic import atomic_path
    final = folder / ('movie_%03d.mrc' % (index + 1))
    with atomic_path(final) as tmp:
        simulate_movie(tmp, SHAPE, FRAMES, gain, dose=DOSE, rng=seed)
    return final


def gpu_usable():
    from .estimator.arrays import resolve_device
    try:
        resolve_device('gpu')
        return True
    except Exception:
        return False


def wait_for(condition, timeout, interval=1.0):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        time.sleep(interval)
    return False


def report_step(project, protocol, out):
    """The run's report, written once the protocol has finished (``project``,
    the finished GainProtMovieGain and the demo folder): its conclusion
    printed, the path of the report returned."""
    # the same report as `scipion-gain report RUN -o demo-output/report`, its header
    # naming the project and the protocol as the Scipion window does
    from .report import write_report
    from .report.run_folder import conclusion, load
    run = Path(protocol._getPath()).resolve()
    print('\nConclusion: %s' % conclusion(load(run)))
    return write_report(run, Path(out) / 'report', project=project.getShortName(),
                        protocol='%s (%s)' % (protocol.getObjLabel(), run.name))


def keeping_up(run, arrivals, threads):
    """How far analysis trailed acquisition: from each movie's arrival (its file in
    place) to its analysis (its stats JSON written), and when the last one was done."""
    latencies, done = [], []
    for index, arrived in sorted(arrivals.items()):
        stats = run / 'extra' / ('movie_%06d_stats.json' % (index + 1))  # ids start at 1
        if stats.exists():
            finished = stats.stat().st_mtime
            latencies.append(finished - arrived)
            done.append(finished)
    if not done:
        return 'Keeping up: no movie analysed.'
    last = max(arrivals.values())
    latencies.sort()
    seconds = []
    for index in arrivals:
        path = run / 'extra' / ('movie_%06d_stats.json' % (index + 1))
        if path.exists():
            seconds.append(json.loads(path.read_text())['seconds'])
    span = max(done) - min(arrivals.values())
    return ('Keeping up (%d threads): %d of %d movies analysed; arrival to analysis median '
            '%.1f s, max %.1f s; the last movie arrived at %.0f s and every movie was analysed '
            '%.1f s later; estimator %.2f s per movie (median), %.0f %% of the wall time from '
            'the first arrival to the last analysis (the session\'s pace: %.0f movies/h), on '
            '%d cores (load average now %.1f)'
            % (threads, len(done), len(arrivals), latencies[len(latencies) // 2], latencies[-1],
               last - min(arrivals.values()), max(done) - last,
               sorted(seconds)[len(seconds) // 2], 100.0 * sum(seconds) / span,
               3600.0 * len(done) / span, os.cpu_count(), os.getloadavg()[0]))


def main(argv=None):
    args = _arguments(argv)
    out = Path(args.out).resolve()
    scipion_environment(out)

    import numpy as np
    import pyworkflow.project as pwproj
    from pyworkflow.plugin import Domain
    GainProtMovieGain = Domain.findClass('GainProtMovieGain')  # registered, with its plugin

    started = time.time()
    movies, gain_file, gain_for = _microscope(out, args, np.random.default_rng(2018))
    acquire(movies, 0, gain_for(0), 1000)
    first_arrival = time.time()
    project = pwproj.Manager().createProject('gain_demo_%s' % time.strftime('%Y%m%d_%H%M%S'))
    os.chdir(project.getPath())
    print('Scipion project: %s' % project.getPath())

    imported = _import_in_streaming(project, movies, gain_file)
    if imported is None:
        return 1
    prot = _launch_gain_protocol(project, GainProtMovieGain, imported, args.threads)
    arrivals = _acquire_session(project, prot, movies, gain_for, args, first_arrival)
    if not _end_session(project, imported, prot, args.movies):
        return 1
    return _conclude(project, prot, arrivals, args, out, started)


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--movies', type=int, default=10, help='movies in the session (10)')
    parser.add_argument('--drift-at', type=int, default=6,
                        help='0-based index of the first movie after the drift (6)')
    parser.add_argument('--interval', type=float, default=2.0,
                        help='seconds between movies (2)')
    parser.add_argument('--threads', type=int, default=2,
                        help="the protocol's threads: one runs Scipion's main loop, each other "
                             "one analyses a movie at a time (2)")
    parser.add_argument('--out', default=DEFAULT_OUT, help='demo folder (demo-output)')
    args = parser.parse_args(argv)
    if not 1 <= args.drift_at < args.movies:
        parser.error('--drift-at must be between 1 and --movies - 1')
    return args


def _microscope(out, args, rng):
    """The session's folder, its gain file and the detector's gain for each movie:
    (movies folder, gain file, gain_for(index))."""
    from .io import write_mrc
    from .simulate import simulate_gain
    detector = simulate_gain(SHAPE, rng=11, **GAIN_OPTIONS)
    after = drifted_gain(detector.gain, rng)
    session = Path(tempfile.mkdtemp(prefix='session_', dir=out))
    movies = session / 'movies'
    movies.mkdir()
    gain_file = session / 'gain_reference.mrc'
    write_mrc(str(gain_file), detector.correction,
              label='demo detector gain reference; multiplies raw frames')
    print('Session folder: %s (gain reference %s)' % (session, gain_file.name))

    def gain_for(index):
        return detector.gain if index < args.drift_at else after

    return movies, gain_file, gain_for


def _import_in_streaming(project, movies, gain_file):
    """The streaming import of the movies with the gain attached, once it has an
    output; None (and a line on stderr) when it does not start."""
    from pwem.protocols import ProtImportMovies
    imported = project.newProtocol(ProtImportMovies, objLabel='import movies (streaming)',
                                   filesPath=str(movies), filesPattern='movie_*.mrc',
                                   samplingRate=1.0, voltage=300, gainFile=str(gain_file),
                                   dataStreaming=True, timeout='30m', fileTimeout='1')
    project.launchProtocol(imported, wait=False)

    def imported_output():
        project._updateProtocol(imported)
        return imported.hasAttribute('outputMovies') or imported.isFailed()

    if not wait_for(imported_output, 180) or imported.isFailed():
        print('The import did not start: %s' % imported.getErrorMessage(), file=sys.stderr)
        return None
    return imported


def _launch_gain_protocol(project, GainProtMovieGain, imported, threads):
    use_gpu = gpu_usable()
    prot = project.newProtocol(GainProtMovieGain, objLabel='movie gain (residual, streaming)',
                               inputMovies=imported.outputMovies, useGpu=use_gpu,
                               movieStep=1,  # every movie: small ones keep up
                               numberOfThreads=max(1, threads))
    project.launchProtocol(prot, wait=False)
    print('Running %s on %s, in streaming...' % (prot.getRunName(), 'a GPU' if use_gpu else 'the CPU'))
    return prot


def _acquire_session(project, prot, movies, gain_for, args, first_arrival):
    """The microscope's schedule: one movie every --interval seconds, however long
    writing one takes; progress every movie, or every 10th when they come fast.
    Returns each movie's arrival time (by 0-based index)."""
    def analysed():
        project._updateProtocol(prot)
        output = getattr(prot, 'residualGains', None)
        return output.getSize() if output is not None else 0

    arrivals = {0: first_arrival}
    every = 1 if args.interval >= 2 else 10
    due = time.time()
    for index in range(1, args.movies):
        due += args.interval
        time.sleep(max(0.0, due - time.time()))
        acquire(movies, index, gain_for(index), 1000 + index)
        arrivals[index] = time.time()
        note = ' (detector drifted)' if index == args.drift_at else ''
        if note or index % every == 0 or index == args.movies - 1:
            print('  acquired movie %2d/%d%s; residual gains so far: %d'
                  % (index + 1, args.movies, note, analysed()))
    return arrivals


def _end_session(project, imported, prot, n_movies):
    """Stop the import once it holds every movie and wait for the gain protocol to
    finish; False (and a line on stderr) when it does not."""
    project._updateProtocol(imported)
    wait_for(lambda: (project._updateProtocol(imported) or True)
             and imported.outputMovies.getSize() >= n_movies, 120)
    Path(imported._getExtraPath('STOP_STREAMING.TXT')).touch()  # the session ends
    print('Session over; waiting for the closed output...')

    def done():
        project._updateProtocol(prot)
        return not prot.isActive()

    if not wait_for(done, 600, 2):
        print('The protocol did not finish in 10 minutes.', file=sys.stderr)
        return False
    if not prot.isFinished():
        print('The protocol failed: %s (log: %s)' % (prot.getErrorMessage(),
                                                     Path(prot.getStdoutLog()).resolve()),
              file=sys.stderr)
        return False
    return True


def _conclude(project, prot, arrivals, args, out, started):
    """Print what the session gave; 0 when exactly the drifted movies are flagged."""
    run = Path(prot._getPath()).resolve()
    print('\nsummaryForMonitor.txt (std p2.5 p97.5 max):')
    print((run / 'summaryForMonitor.txt').read_text().rstrip())
    flagged = sorted(item.getObjId() for item in prot.residualGains if item._verdictFlagged.get())
    expected = list(range(args.drift_at + 1, args.movies + 1))  # ids start at 1
    closed = prot.residualGains.isStreamClosed() and prot.outputMovies.isStreamClosed()
    print('\nResidual gains: %d, output %s; flagged movies: %s (the drift began at movie %d)'
          % (prot.residualGains.getSize(), 'closed' if closed else 'OPEN', flagged,
             args.drift_at + 1))
    warnings = run / 'warnings.txt'
    if warnings.exists():
        print('\nwarnings.txt:\n' + warnings.read_text().rstrip())

    print('\n' + keeping_up(run, arrivals, prot.numberOfThreads.get()))

    extra = report_step(project, prot, out)
    print('\nProject:  %s' % Path(project.getPath()).resolve())
    print('Run:      %s' % run)
    print('Summary:  %s' % (run / 'summary.txt'))
    if extra:
        print('Report:   %s' % extra)
    print('Took %.0f s.' % (time.time() - started))
    ok = closed and flagged == expected
    if not ok:
        print('UNEXPECTED: flagged %s, expected %s' % (flagged, expected), file=sys.stderr)
    return 0 if ok else 1

if __name__ == '__main__':
    sys.exit(main())
