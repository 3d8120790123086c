"""The incumbent side by side: Xmipp's ``xmipp_movie_estimate_gain`` (the program Scipion's
``XmippProtMovieGain`` runs) and ``scipion-gain estimate`` on the same simulated movie, one
after the other, in one run.

    python benchmarks/incumbent.py --xmipp /work/xmipp/bin/xmipp_movie_estimate_gain \\
        --folder /work/bench_movies                       # 4096 x 4096 x 16 raw counting movie

The movie is simulated once into ``--folder`` (:func:`command_cost.make_movie`: counting,
Poisson, 1 e/px/frame through a structured gain with per-pixel scatter, a specimen; raw
counts, stored as MRC mode 6, uint16) together with the truth, ``reference_SIZE.mrc``: the
true correction (the simulated gain's reciprocal, mean 1), which MULTIPLIES raw frames.

Runs (each its own process, started from this small process, which never imports NumPy: a
child started from a large process inherits its peak resident memory in ``ru_maxrss``):

* xmipp, Scipion's arguments: ``-i MOVIE --oroot ROOT --iter 1 --singleRef --frameStep 5
  --sigma 0`` (``XmippProtMovieGain`` with its defaults; frames 1, 6, 11, 16 of 16);
* xmipp, the same with ``--frameStep 1`` (all frames);
* ours, ``python -m scipion_gain.cli estimate MOVIE -o GAIN.mrc --json STATS.json -q``
  (all frames, the defaults; `--ours-args` adds more, e.g. `--method sme`);
* ours, the same with ``--frame-step 5`` (Scipion's frames).

Each: wall seconds, CPU seconds (user + system) and peak resident memory (``ru_maxrss``)
from ``os.wait4``, and R^2 of the map to the truth: 1 - sum (map - truth)^2 /
sum (truth - mean truth)^2 over every pixel, both maps scaled to mean 1, and the squared
correlation (blind to scale and offset). Xmipp writes
``ROOT_gain.xmp`` (SPIDER, float32), ``sum(ideal) / sum(observed)``: a map that multiplies
raw frames, the same sense as ours and the truth (the R^2 of its reciprocal is printed as a
check of that sense). Where the claim stops: one simulated movie, one seed, a machine
shared with other jobs (the load average is printed at the start and the end).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_XMIPP = '/work/xmipp/bin/xmipp_movie_estimate_gain'


def timed(command, env=None, cwd=None, log=None):
    """Run ``command`` in a fresh process: {seconds, cpu, peak_mb, status}."""
    started = time.perf_counter()
    with open(log or os.devnull, 'w') as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {'seconds': time.perf_counter() - started, 'cpu': usage.ru_utime + usage.ru_stime,
            'peak_mb': usage.ru_maxrss / 1024.0, 'status': process.returncode}


def runs(xmipp, code, movie, out, ours_args=()):
    """(name, command, map written) of every run, in the order they run."""
    ours = [sys.executable, '-m', 'scipion_gain.cli', 'estimate', movie] + list(ours_args)
    table = []
    for step, what in ((5, "xmipp, Scipion's arguments (--frameStep 5)"),
                       (1, 'xmipp, all frames (--frameStep 1)')):
        root = str(out / f'xmipp_s{step}')
        table.append((what, [xmipp, '-i', movie, '--oroot', root, '--iter', '1', '--singleRef',
                             '--frameStep', str(step), '--sigma', '0'], root + '_gain.xmp'))
    for step, what in ((1, 'ours, all frames'), (5, 'ours, --frame-step 5')):
        root = out / f'ours_s{step}'
        table.append((what, ours + ['-o', f'{root}.mrc', '--json', f'{root}.json', '-q']
                      + (['--frame-step', str(step)] if step != 1 else []), f'{root}.mrc'))
    return table


# --------------------------------------------------------------------------- scoring (child)
def read_spider(path):
    """A 2-D SPIDER / Xmipp ``.xmp`` image (float32, native byte order) as a NumPy array."""
    import numpy as np
    header = np.fromfile(path, dtype='<f4', count=256)
    nz, ny, nx, labbyt = int(header[0]), int(header[1]), int(header[11]), int(header[21])
    if nz != 1:
        raise ValueError(f"{path}: {nz} slices, expected one image")
    return np.fromfile(path, dtype='<f4', offset=labbyt, count=ny * nx).reshape(ny, nx)


def read_map(path):
    import mrcfile
    import numpy as np
    if path.endswith('.xmp'):
        return read_spider(path)
    with mrcfile.open(path, permissive=True) as mrc:
        return np.array(mrc.data, dtype=np.float32)


def r_squared(estimate, truth):
    """1 - SS_res / SS_tot of ``estimate`` to ``truth``, both scaled to mean 1."""
    import numpy as np
    e = estimate.astype(np.float64)
    t = truth.astype(np.float64)
    e /= e.mean()
    t /= t.mean()
    return float(1.0 - ((e - t) ** 2).sum() / ((t - t.mean()) ** 2).sum())


def correlation_squared(estimate, truth):
    """The squared Pearson correlation of ``estimate`` with ``truth`` (scale-free)."""
    import numpy as np
    return float(np.corrcoef(estimate.ravel(), truth.ravel())[0, 1] ** 2)


def score(maps, truth_path):
    """{map: (R^2 as written, R^2 of its reciprocal, squared correlation)} against the
    truth."""
    import numpy as np
    truth = read_map(truth_path)
    out = {}
    for path in maps:
        if not os.path.exists(path):
            out[path] = None
            continue
        values = read_map(path)
        with np.errstate(divide='ignore'):
            inverse = np.where(values > 0, 1.0 / np.where(values > 0, values, 1), 1.0)
        out[path] = (r_squared(values, truth), r_squared(inverse, truth),
                     correlation_squared(values, truth))
    return out


# --------------------------------------------------------------------------- the run
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--xmipp', default=DEFAULT_XMIPP, help='xmipp_movie_estimate_gain')
    parser.add_argument('--folder', default='/work/bench_movies',
                        help='simulated movies (made there once, reused)')
    parser.add_argument('--size', type=int, default=4096)
    parser.add_argument('--frames', type=int, default=16)
    parser.add_argument('--code', default=str(ROOT), help='checkout whose scipion_gain runs')
    parser.add_argument('--out', help='maps and logs (default: FOLDER/incumbent)')
    parser.add_argument('--only', default='', help="comma-separated run numbers (1-4) to run")
    parser.add_argument('--json', help='also write the measurements here')
    parser.add_argument('--ours-args', default='',
                        help="more arguments for our runs, e.g. '--method sme' (the paper's)")
    parser.add_argument('--score', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.score:
        maps, truth = json.loads(args.score)
        print('SCORES ' + json.dumps(score(maps, truth)))
        return 0
    sys.path.insert(0, str(HERE))
    from command_cost import make_movies   # stdlib only at import: this process stays small
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    movie, _ = make_movies(folder, [('raw', args.size, args.frames)])[
        ('raw', args.size, args.frames)]
    truth = str(folder / f'reference_{args.size}.mrc')
    out = Path(args.out or folder / 'incumbent')
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(args.code))
    subprocess.run(['cat', movie], stdout=subprocess.DEVNULL, check=True)  # page cache warm
    chosen = {int(n) for n in args.only.split(',') if n}
    load_start = os.getloadavg()
    print(f"{movie}; code {args.code}; load average {' '.join(f'{x:.2f}' for x in load_start)}",
          flush=True)
    results = []
    for number, (what, command, written) in enumerate(runs(args.xmipp, args.code, movie, out,
                                                        args.ours_args.split()), 1):
        if chosen and number not in chosen:
            continue
        if os.path.exists(written):
            os.remove(written)
        record = timed(command, env=env, cwd=str(out), log=str(out / f'run{number}.log'))
        record.update(number=number, what=what, command=' '.join(command), map=written)
        results.append(record)
        print(f"  {number} {what}: {record['seconds']:.2f} s, {record['cpu']:.2f} s CPU, "
              f"{record['peak_mb']:.0f} MB, exit {record['status']}", flush=True)
    load_end = os.getloadavg()
    child = subprocess.run([sys.executable, __file__, '--score',
                            json.dumps([[r['map'] for r in results], truth])],
                           env=env, capture_output=True, text=True, check=True)
    scores = json.loads([x for x in child.stdout.splitlines()
                         if x.startswith('SCORES ')][-1][len('SCORES '):])
    for record in results:
        record['r2'], record['r2_reciprocal'], record['corr2'] = \
            scores[record['map']] or (None, None, None)
    print(format_table(results, load_start, load_end, args))
    if args.json:
        Path(args.json).write_text(json.dumps({'movie': movie, 'truth': truth,
                                               'load_start': load_start, 'load_end': load_end,
                                               'runs': results}, indent=1))
    return 0 if all(r['status'] == 0 for r in results) else 1


def format_table(results, load_start, load_end, args):
    base = {r['number']: r for r in results}
    header = (f"{'run':46s} {'wall s':>7s} {'CPU s':>7s} {'peak MB':>8s} {'R^2':>7s} "
              f"{'(1/map)':>8s} {'corr^2':>7s}")
    lines = ['', f"{args.size} x {args.size} x {args.frames} raw counting movie; load average "
             f"{' '.join(f'{x:.2f}' for x in load_start)} at the start, "
             f"{' '.join(f'{x:.2f}' for x in load_end)} at the end", header, '-' * len(header)]
    for r in results:
        r2 = f"{r['r2']:7.4f}" if r['r2'] is not None else '      -'
        inverse = f"{r['r2_reciprocal']:8.4f}" if r['r2_reciprocal'] is not None else '       -'
        corr2 = f"{r['corr2']:7.4f}" if r['corr2'] is not None else '      -'
        lines.append(f"{r['number']} {r['what']:44s} {r['seconds']:7.2f} {r['cpu']:7.2f} "
                     f"{r['peak_mb']:8.0f} {r2} {inverse} {corr2}")
    for ours, theirs in ((3, 2), (4, 1)):
        if ours in base and theirs in base:
            a, b = base[theirs], base[ours]
            lines.append(f"run {theirs} / run {ours}: wall {a['seconds'] / b['seconds']:.2f}x, "
                         f"CPU {a['cpu'] / b['cpu']:.2f}x, peak memory "
                         f"{a['peak_mb'] / b['peak_mb']:.2f}x")
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
