"""Throughput of the movie gain protocol: movies per hour, and the part of it in the estimator.

    .venv/bin/python benchmarks/throughput.py --shape 512 --frames 10 --movies 30
    .venv/bin/python benchmarks/throughput.py --shape 4096 --frames 40 --movies 3 --threads 2
    .venv/bin/python benchmarks/throughput.py ... --jobs      # each movie as `scipion-gain movie-job`
    .venv/bin/python benchmarks/throughput.py --memory --shape 4096 --frames 40   # one job's peak RSS
    .venv/bin/python benchmarks/throughput.py --queue ...  # one SLURM job per movie (SLURM_CONF set)

Simulates counting movies (Poisson, 1 e/px/frame, a structured gain; cached
in --data), imports them as one closed set with their gain reference, and
runs GainProtMovieGain in a headless Scipion project on them, in residual
mode (the frames times the reference) and in raw mode (the gain itself), with
--threads (one is Scipion's main loop, each other one analyses a movie at a
time). The rate is taken between the first and the last movie's results
(the stats JSON files' times: Scipion's start-up is left out), as
(movies - 1) / that time; the estimator's share is the sum of the per-movie
estimator times (``seconds`` in the stats JSON) over the same span and the
workers. Say the load of the machine with the numbers: ``os.getloadavg`` is
printed with each row.

``--queue`` sends every movie to the queue of tests/slurm/hosts.conf as its
own job (QUEUE_FOR_JOBS=Y; a running SLURM, e.g. tests/slurm/start-slurm.sh,
and SLURM_CONF in the environment) and counts the job scripts submitted.

``--memory`` runs one movie job (``scipion-gain movie-job``) under
``/usr/bin/time`` and prints its peak resident memory, for the memory a batch
job must ask for (``movie_job.BYTES_PER_PIXEL`` / ``BASE_MB``).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def simulate(folder, shape, frames, movies):
    """Movies and the gain reference in ``folder`` (kept between runs)."""
    from scipion_gain.io import write_mrc
    from scipion_gain.simulate import simulate_gain, simulate_movie
    folder.mkdir(parents=True, exist_ok=True)
    detector = None
    for index in range(movies):
        path = folder / ('movie_%03d.mrc' % index)
        if path.exists():
            continue
        if detector is None:
            detector = simulate_gain(shape, rng=1, sector_spread=0.1, column_spread=0.05)
        tmp = folder / ('.tmp_%03d.mrc' % index)
        simulate_movie(str(tmp), shape, frames, detector.gain, dose=1.0, rng=100 + index,
                       specimen=False)
        os.replace(tmp, path)
    gain = folder / 'gain.mrc'
    if not gain.exists():
        detector = detector or simulate_gain(shape, rng=1, sector_spread=0.1, column_spread=0.05)
        write_mrc(str(gain), detector.correction)
    return gain


def scipion_environment(out, queue=False):
    from scipion_gain.demo import scipion_environment as setup
    if queue:
        os.environ['SCIPION_HOSTS'] = str(HERE.parent / 'tests' / 'slurm' / 'hosts.conf')
    setup(out)
    os.environ['SCIPION_STEPS_CHECK_SEC'] = os.environ.get('SCIPION_STEPS_CHECK_SEC', '2')


def run_protocol(folder, gain, movies, threads, residual, jobs, queue=False,
                 frames_per_movie=0):
    import pyworkflow.project as pwproj
    from pwem.protocols import ProtImportMovies
    from pyworkflow.plugin import Domain
    project = pwproj.Manager().createProject('throughput_%d' % int(time.time() * 1000))
    os.chdir(project.getPath())
    imported = project.newProtocol(ProtImportMovies, filesPath=str(folder),
                                   filesPattern='movie_*.mrc', samplingRate=1.0,
                                   gainFile=str(gain))
    project.launchProtocol(imported, wait=True)
    assert imported.isFinished(), imported.getErrorMessage()
    prot = project.newProtocol(Domain.findClass('GainProtMovieGain'),
                               inputMovies=imported.outputMovies, useGpu=False,
                               numberOfThreads=threads, estimateResidualGain=residual,
                               estimateOrientation=False, movieProcesses=jobs, movieStep=1,
                               framesPerMovie=frames_per_movie)
    if queue:
        prot._useQueue.set(True)
        prot.setQueueParams(['debug', {'JOB_MEMORY': '256', 'JOB_TIME': '1',
                                       'QUEUE_FOR_JOBS': 'Y'}])
    started = time.time()
    project.launchProtocol(prot, wait=True)
    wall = time.time() - started
    project._updateProtocol(prot)
    assert prot.isFinished(), prot.getErrorMessage()
    rows = []
    for path in Path(prot._getExtraPath()).glob('movie_*_stats.json'):
        rows.append((path.stat().st_mtime, json.loads(path.read_text())['seconds']))
    rows.sort()
    span = rows[-1][0] - rows[0][0]
    workers = max(1, threads - 1)
    per_hour = 3600.0 * (len(rows) - 1) / span if span > 0 else float('nan')
    estimator = sum(s for _, s in rows[1:]) / (span * workers) if span > 0 else float('nan')
    submitted = len(list(Path(prot._getLogsPath()).glob('scipion*.job')))
    return {'movies': len(rows), 'jobs_submitted': submitted,
            'wall_s': round(wall, 1), 'span_s': round(span, 1),
            'movies_per_hour': round(per_hour), 'estimator_fraction': round(estimator, 3),
            'estimator_s_median': sorted(s for _, s in rows)[len(rows) // 2],
            'run': prot._getPath()}


def peak_memory(folder, gain, residual):
    """Peak RSS (MB) of one `scipion-gain movie-job` on the first movie."""
    from scipion_gain import movie_job
    from scipion_gain.estimator.analysis import AnalysisSettings
    out = Path(tempfile.mkdtemp(prefix='throughput_memory_'))
    roles = {'gain': 'gain.mrc', 'json': 'stats.json', 'defect_labels': 'defects.mrc',
             'defect_file': 'defects.txt', 'structure': 'structure.mrc',
             'corrected_sum': 'sum.mrc', 'sums': 'sums.npz', 'failed': 'failed.txt'}
    if residual:
        roles['corrected_gain'] = 'corrected_gain.mrc'
    movie = folder / 'movie_000.mrc'
    job = movie_job.make_job(1, str(movie), str(movie), AnalysisSettings(),
                             {r: str(out / n) for r, n in roles.items()},
                             reference=str(gain) if residual else None,
                             reference_reader='gain_reference')
    movie_job.write_job(str(out / 'job.json'), job)
    done = subprocess.run(['/usr/bin/time', '-f', '%M', sys.executable, '-m', 'scipion_gain.cli',
                           'movie-job', str(out / 'job.json')], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return int(done.stderr.strip().splitlines()[-1]) / 1024.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shape', type=int, default=512, help='frame side in pixels (512)')
    parser.add_argument('--frames', type=int, default=10, help='frames per movie (10)')
    parser.add_argument('--movies', type=int, default=20, help='movies (20)')
    parser.add_argument('--threads', type=int, default=2, help="protocol threads (2)")
    parser.add_argument('--mode', choices=['raw', 'residual', 'both'], default='both')
    parser.add_argument('--frames-per-movie', type=int, default=0,
                        help='the protocol\'s framesPerMovie (0: every frame, the default '
                             'here; every movie is analysed: movieStep 1)')
    parser.add_argument('--jobs', action='store_true',
                        help='each movie as the command scipion-gain movie-job (movieProcesses)')
    parser.add_argument('--memory', action='store_true', help="one movie job's peak RSS only")
    parser.add_argument('--queue', action='store_true',
                        help='one SLURM job per movie (QUEUE_FOR_JOBS=Y; SLURM_CONF set)')
    parser.add_argument('--data', default=os.path.join(tempfile.gettempdir(),
                                                       'scipion-gain-throughput'),
                        help='where the simulated movies are kept')
    args = parser.parse_args(argv)
    shape = (args.shape, args.shape)
    folder = Path(args.data) / ('%d_%d' % (args.shape, args.frames))
    gain = simulate(folder, shape, args.frames, 1 if args.memory else args.movies)
    modes = ['raw', 'residual'] if args.mode == 'both' else [args.mode]
    if args.memory:
        for mode in modes:
            mb = peak_memory(folder, gain, mode == 'residual')
            print('%d x %d x %d %s: one movie job peaks at %.0f MB (%.1f bytes per pixel above '
                  '%d MB)' % (args.shape, args.shape, args.frames, mode, mb,
                              (mb - 150) * 2 ** 20 / (args.shape ** 2), 150))
        return 0
    out = Path(tempfile.mkdtemp(prefix='throughput_scipion_'))
    scipion_environment(out, args.queue)
    home = os.getcwd()
    for mode in modes:
        os.chdir(home)
        row = run_protocol(folder, gain, args.movies, args.threads, mode == 'residual',
                           args.jobs, args.queue, args.frames_per_movie)
        row.update(shape='%d x %d x %d' % (args.shape, args.shape, args.frames), mode=mode,
                   frames_per_movie=args.frames_per_movie or 'all',
                   threads=args.threads, jobs=args.jobs, queue=args.queue, cores=os.cpu_count(),
                   load=round(os.getloadavg()[0], 1))
        print(json.dumps(row))
    return 0


if __name__ == '__main__':
    sys.exit(main())
