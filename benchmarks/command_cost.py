"""What the whole `scipion-gain estimate` command costs at 4096 x 4096: fixed cost, cost per
frame and peak memory, for raw, residual (``--gain``) and pre-corrected float32 movies.

    python benchmarks/command_cost.py --folder /tmp/movies            # the table of README
    python benchmarks/command_cost.py --timing 4,16 --memory 10,40 --repeats 3
    python benchmarks/command_cost.py --stages --memory 10            # peak per stage
    python benchmarks/command_cost.py --code /tmp/main-checkout       # another version's code

Movies are simulated (counting, Poisson, 1 e/px/frame through a structured gain, with a
specimen; :mod:`scipion_gain.simulate`) into ``--folder`` (kept there for the next run:
simulating a 40-frame movie takes longer than judging it) or a temporary folder:

* raw: the counts (uint8 frames);
* residual: the same counts with ``--gain`` the exact reference (an MRC correction);
* pre-corrected: the counts times the reference written as float32 frames (gain-normalised
  at acquisition: the lattice stage recovers counts and reference).

Every run is the console command in its own process (``python -m scipion_gain.cli estimate
MOVIE -o GAIN.mrc --json STATS.json -q``, plus ``--gain REF.mrc`` for the residual): wall
time from start to exit, peak resident memory of that process (``ru_maxrss`` from
``os.wait4``, imports included). Timing: the best of ``--repeats`` runs at each length
(other jobs share the machine: the best is the least disturbed); the fixed cost is the
wall time at the shortest length less that many times the marginal cost of a frame (the
slope between the two lengths). ``--stages``: the peak resident memory while each stage
runs (estimate, dose, statistics, counts, defects, boundaries, assessment, structure,
writing; 'start' is the rest: imports, reading the reference, what runs between stages),
from a thread that reads /proc/self/status every 5 ms inside the command's process, and each
stage's wall and CPU seconds (the statistics run on a second thread beside the assessment:
their peaks and CPU seconds overlap).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ('raw', 'residual', 'pre-corrected')
#: every kind: the estimate command on raw, residual, pre-corrected float32 and float16
#: movies, and the protocol's per-movie job (``movie-job``) on raw and residual ones
ALL_KINDS = KINDS + ('pre-corrected-f16', 'job-raw', 'job-residual')
STAGES = (('scipion_gain.estimator.analysis', 'estimate_gain', 'estimate'),
          ('scipion_gain.estimator.analysis', 'measured_dose', 'dose'),
          ('scipion_gain.estimator.analysis', 'raw_count_sums', 'counts'),
          ('scipion_gain.estimator.analysis', 'readout_boundaries', 'boundaries'),
          ('scipion_gain.estimator.analysis', 'map_statistics', 'statistics'),
          ('scipion_gain.estimator.analysis', 'find_defects', 'defects'),
          ('scipion_gain.estimator.analysis', 'assess', 'assessment'),
          ('scipion_gain.estimator.analysis', 'structure_model', 'structure'),
          ('scipion_gain.io.results', 'write_analysis', 'writing'),
          ('scipion_gain.io.results', 'write_sums', 'sums'))


# --------------------------------------------------------------------------- movies
def movie_paths(folder, kind, size, frames):
    """(movie, reference) paths of a simulated movie of ``kind`` (see :data:`KINDS`)."""
    stem = {'pre-corrected': 'pre_corrected', 'pre-corrected-f16': 'pre_corrected_f16'}.get(
        kind, 'raw')
    return Path(folder) / f'{stem}_{size}_{frames}.mrc', Path(folder) / f'reference_{size}.mrc'


def make_movie(folder, kind, size, frames):
    """(movie path, reference path or None) of a simulated movie; reused when present.

    The reference (``reference_SIZE.mrc``) is the true correction (the simulated gain's
    reciprocal, mean 1: it multiplies raw frames), the truth an estimate is scored against.
    """
    import numpy as np
    sys.path.insert(0, str(ROOT))
    from scipion_gain.simulate import simulate_gain, simulate_movie
    from scipion_gain.io.mrc import write_mrc
    shape = (size, size)
    movie, reference = movie_paths(folder, kind, size, frames)
    truth = None
    if not reference.exists():
        truth = simulate_gain(shape, rng=1, pixel_scatter=0.02)
        part = reference.with_suffix('.part.mrc')
        write_mrc(str(part), truth.correction.astype(np.float32))
        os.replace(part, reference)
    if not movie.exists():
        truth = truth or simulate_gain(shape, rng=1, pixel_scatter=0.02)
        output = {'pre-corrected': 'float32', 'pre-corrected-f16': 'float16'}.get(kind)
        options = dict(correction=truth.correction, output=output) if output else {}
        part = movie.with_suffix('.part.mrc')
        simulate_movie(str(part), shape, frames, truth.gain, dose=1.0, mode='counting', rng=2,
                       **options)
        os.replace(part, movie)
    return str(movie), (str(reference) if kind in ('residual', 'job-residual') else None)


def make_movies(folder, wanted):
    """Simulate the ``(kind, size, frames)`` movies missing from ``folder`` in a child process
    (this process stays small: a child started from a large process inherits its peak
    resident memory in ``ru_maxrss``), and return their ``{(kind, size, frames): (movie,
    reference)}``."""
    missing = [w for w in wanted if not movie_paths(folder, *w)[0].exists()
               or not movie_paths(folder, *w)[1].exists()]
    if missing:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), '--make-movies',
                        json.dumps([str(folder), missing])], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return {w: movie_paths_of(folder, *w) for w in wanted}


def movie_paths_of(folder, kind, size, frames):
    movie, reference = movie_paths(folder, kind, size, frames)
    return str(movie), (str(reference) if kind in ('residual', 'job-residual') else None)


# --------------------------------------------------------------------------- one run
#: more arguments for every ``estimate`` run (``--estimate-args``, e.g. '--method sme')
ESTIMATE_ARGS = []


def command_arguments(kind, movie, reference, out_folder):
    """The ``scipion-gain`` arguments of one measured run of ``kind``.

    Estimate kinds: ``estimate MOVIE -o GAIN.mrc --json STATS.json -q`` (``--gain REF``
    for the residual). Job kinds (``job-raw``, ``job-residual``): ``movie-job JOB.json``,
    the command the movie gain protocol runs for each movie (:func:`scipion_gain.movie_job.
    run_as_command`), on a job file that the protocol would write (its default settings: 20
    frames spread over the movie; every output role of a run folder, the movie's sums for
    the running estimate and, residual, the corrected gain), written by a child process.
    """
    if not kind.startswith('job-'):
        return ['estimate', movie, '-o', str(out_folder / 'gain.mrc'), '--json',
                str(out_folder / 'stats.json'), '-q'] + (['--gain', reference] if reference
                                                         else []) + ESTIMATE_ARGS
    job = out_folder / 'job' / 'job.json'
    subprocess.run([sys.executable, str(Path(__file__).resolve()), '--make-job',
                    json.dumps([str(job), movie, reference])], check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return ['movie-job', str(job)]


def make_job(job_path, movie, reference):
    """Write the protocol's job file for ``movie`` (see :func:`command_arguments`)."""
    from dataclasses import replace
    from scipion_gain.estimator.analysis import AnalysisSettings
    from scipion_gain.movie_job import make_job as job_of, write_job
    from scipion_gain.run_folder.layout import RunFolder
    folder = RunFolder(str(Path(job_path).parent / 'run'))
    outputs = folder.job_outputs(1, residual=reference is not None, accumulate=True)
    for path in outputs.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            os.remove(path)
    # the protocol's defaults (its method included), 20 frames per movie
    defaults = AnalysisSettings()
    settings = replace(defaults, estimator=replace(defaults.estimator, frames_per_movie=20))
    write_job(job_path, job_of(1, movie, movie, settings, outputs, position=0,
                               reference=reference, reference_reader='gain_reference',
                               reference_kind='as given' if reference else None))


def run_command(code, kind, movie, reference, out_folder, stages=False):
    """Wall and CPU seconds, peak RSS (MB) and, with ``stages``, the peak per stage of one
    command, in a fresh process started from this one (which stays small: see
    :func:`make_movies`)."""
    args = command_arguments(kind, movie, reference, out_folder)
    env = dict(os.environ, PYTHONPATH=str(code))
    if stages:
        command = [sys.executable, str(Path(__file__).resolve()), '--stage-worker',
                   json.dumps(args)]
    else:
        command = [sys.executable, '-m', 'scipion_gain.cli'] + args
    started = time.perf_counter()
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        process = subprocess.Popen(command, env=env, cwd=str(out_folder), stdout=out,
                                   stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({process.returncode}): {stderr.strip()[-500:]}")
    record = {'seconds': seconds, 'cpu': usage.ru_utime + usage.ru_stime,
              'peak_mb': usage.ru_maxrss / 1024.0}
    if stages:
        for key, tag in (('stages', 'STAGES '), ('stage_seconds', 'SECONDS ')):
            line = [x for x in stdout.splitlines() if x.startswith(tag)][-1]
            record[key] = json.loads(line[len(tag):])
    return record


def stage_worker(args):
    """Run the command in this process, recording the peak RSS while each stage runs."""
    import importlib
    import threading
    current = ['start']
    peaks = {}
    done = threading.Event()

    def rss_mb():
        with open('/proc/self/status') as handle:
            for line in handle:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0
        return 0.0

    def poll():
        while not done.is_set():
            value = rss_mb()
            peaks[current[0]] = max(peaks.get(current[0], 0.0), value)
            time.sleep(0.005)

    seconds = {}

    def staged(function, name):
        def run(*a, **k):
            previous = current[0]
            current[0] = name
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return function(*a, **k)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
                seconds[name + ' cpu'] = (seconds.get(name + ' cpu', 0.0) + time.process_time()
                                          - cpu)
                peaks[name] = max(peaks.get(name, 0.0), rss_mb())
                current[0] = previous
        return run

    for module_name, attribute, name in STAGES:
        module = importlib.import_module(module_name)
        if hasattr(module, attribute):
            setattr(module, attribute, staged(getattr(module, attribute), name))
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    from scipion_gain.cli import main
    try:
        status = main(args)
    finally:
        done.set()
        thread.join()
    print('STAGES ' + json.dumps({k: round(v) for k, v in peaks.items()}))
    print('SECONDS ' + json.dumps({k: round(v, 2) for k, v in seconds.items()}))
    return status


# --------------------------------------------------------------------------- tables
def timing_rows(code, movies, kinds, size, lengths, repeats, out_folder):
    rows = []
    for kind in kinds:
        best, cpu = {}, {}
        for frames in lengths:
            movie, reference = movies[kind, size, frames]
            runs = [run_command(code, kind, movie, reference, out_folder)
                    for _ in range(repeats)]
            best[frames] = min(r['seconds'] for r in runs)
            cpu[frames] = min(r['cpu'] for r in runs)
            print(f"  {kind:14s} {frames:3d} frames: "
                  + ', '.join(f"{r['seconds']:.2f} ({r['cpu']:.2f} cpu)" for r in runs) + ' s',
                  flush=True)
        short, long_ = min(lengths), max(lengths)
        marginal = (best[long_] - best[short]) / (long_ - short)
        marginal_cpu = (cpu[long_] - cpu[short]) / (long_ - short)
        rows.append({'kind': kind, 'best': best, 'marginal': marginal,
                     'fixed': best[short] - short * marginal, 'cpu': cpu,
                     'marginal_cpu': marginal_cpu, 'fixed_cpu': cpu[short] - short * marginal_cpu})
    return rows


def memory_rows(code, movies, runs, out_folder, stages):
    """Peak memory of each ``(kind, size, frames)`` of ``runs``."""
    rows = []
    for kind, size, frames in runs:
        movie, reference = movies[kind, size, frames]
        record = run_command(code, kind, movie, reference, out_folder, stages=stages)
        record.update(kind=kind, size=size, frames=frames)
        rows.append(record)
        print(f"  {kind:18s} {size} x {size} x {frames:3d}: {record['peak_mb']:.0f} MB "
              f"({record['seconds']:.1f} s)", flush=True)
    return rows


def format_timing(rows, lengths):
    short, long_ = min(lengths), max(lengths)
    header = (f"{'movie':14s} {'':5s} {f'{short} frames s':>12s} {f'{long_} frames s':>12s} "
              f"{'s/frame':>8s} {'fixed s':>8s}")
    lines = [header, '-' * len(header)]
    for r in rows:
        for what, best, marginal, fixed in (('wall', r['best'], r['marginal'], r['fixed']),
                                            ('cpu', r['cpu'], r['marginal_cpu'],
                                             r['fixed_cpu'])):
            lines.append(f"{r['kind']:14s} {what:5s} {best[short]:12.2f} {best[long_]:12.2f} "
                         f"{marginal:8.3f} {fixed:8.2f}")
    return '\n'.join(lines)


def format_memory(rows):
    names = ['start'] + [name for _, _, name in STAGES] if any('stages' in r for r in rows) \
        else []
    header = f"{'movie':18s} {'size':>5s} {'frames':>6s} {'peak MB':>8s} {'growth':>7s} " \
             f"{'wall s':>7s}"
    lines = [header, '-' * len(header)]
    first = {}
    for r in rows:
        key = (r['kind'], r['size'])
        base = first.setdefault(key, r)
        growth = '' if base is r else f"{100 * (r['peak_mb'] / base['peak_mb'] - 1):+6.1f}%"
        lines.append(f"{r['kind']:18s} {r['size']:5d} {r['frames']:6d} {r['peak_mb']:8.0f} "
                     f"{growth:>7s} {r['seconds']:7.1f}")
    if names:
        header = f"{'movie':18s} {'size':>5s} {'frames':>6s} " + ' '.join(f"{n:>10s}"
                                                                        for n in names)
        lines += ['', 'peak RSS (MB) while each stage runs (0: the stage did not run)', header,
                  '-' * len(header)]
        for r in rows:
            stage = r.get('stages', {})
            lines.append(f"{r['kind']:18s} {r['size']:5d} {r['frames']:6d} "
                         + ' '.join(f"{stage.get(n, 0):10.0f}" for n in names))
        lines += ['', 'wall seconds of each stage (CPU seconds of the thread that ran it)',
                  header, '-' * len(header)]
        for r in rows:
            seconds = r.get('stage_seconds', {})
            lines.append(f"{r['kind']:18s} {r['size']:5d} {r['frames']:6d} " + ' '.join(
                f"{seconds.get(n, 0):5.2f} ({seconds.get(n + ' cpu', 0):4.2f})"
                if n in seconds else f"{'':10s}" for n in names))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, default=4096)
    parser.add_argument('--timing', default='4,16', help="frame counts timed ('' for none)")
    parser.add_argument('--memory', default='10,40', help="frame counts measured ('' for none)")
    parser.add_argument('--extra', default='',
                        help="more memory runs, KIND:SIZE:FRAMES,... (e.g. raw:8192:10)")
    parser.add_argument('--repeats', type=int, default=3, help='timing runs per length (best)')
    parser.add_argument('--kinds', default=','.join(KINDS), help=', '.join(ALL_KINDS))
    parser.add_argument('--stages', action='store_true', help='memory: also the peak per stage')
    parser.add_argument('--folder', help='keep the simulated movies here (reused next time)')
    parser.add_argument('--code', default=str(ROOT), help='checkout whose scipion_gain runs')
    parser.add_argument('--json', help='also write the measurements to this file')
    parser.add_argument('--estimate-args', default='',
                        help="more arguments for every estimate run, e.g. '--method sme'")
    for hidden in ('--stage-worker', '--make-movies', '--make-job'):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage_worker:
        return stage_worker(json.loads(args.stage_worker))
    if args.make_job:
        make_job(*json.loads(args.make_job))
        return 0
    if args.make_movies:
        folder, wanted = json.loads(args.make_movies)
        for kind, size, frames in wanted:
            started = time.perf_counter()
            movie, _ = make_movie(Path(folder), kind, size, frames)
            print(f"  simulated {movie} in {time.perf_counter() - started:.0f} s", flush=True)
        return 0
    ESTIMATE_ARGS[:] = args.estimate_args.split()
    kinds = [k for k in args.kinds.split(',') if k]
    timing = [int(n) for n in args.timing.split(',') if n]
    memory = [(kind, args.size, int(n)) for kind in kinds for n in args.memory.split(',') if n]
    memory += [(k, int(size), int(n)) for k, size, n in
               (item.split(':') for item in args.extra.split(',') if item)]
    with tempfile.TemporaryDirectory(prefix='command-cost-') as tmp:
        folder = Path(args.folder or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        out_folder = Path(tmp)
        started = time.perf_counter()
        wanted = sorted(set([(kind, args.size, n) for kind in kinds for n in timing] + memory))
        movies = make_movies(folder, wanted)
        print(f"movies ready in {time.perf_counter() - started:.0f} s; code {args.code}; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        result = {'code': str(args.code), 'size': args.size,
                  'load_start': os.getloadavg()}
        if timing:
            result['timing'] = timing_rows(args.code, movies, kinds, args.size, timing,
                                           args.repeats, out_folder)
        if memory:
            result['memory'] = memory_rows(args.code, movies, memory, out_folder, args.stages)
        result['load_end'] = os.getloadavg()
    print(f"\n{args.size} x {args.size}; load average (1, 5, 15 min) at the start "
          f"{' '.join(f'{x:.2f}' for x in result['load_start'])}, at the end "
          f"{' '.join(f'{x:.2f}' for x in result['load_end'])}")
    if timing:
        print(f"\nwall time and CPU time (user + system, both cores), best of {args.repeats}\n"
              + format_timing(result['timing'], timing))
    if memory:
        print('\npeak resident memory of the command\n' + format_memory(result['memory']))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
