"""How fast the estimator runs per 4096 x 4096 frame, on the CPU and on a GPU, in one run.

    python benchmarks/estimator_speed.py                 # what `make bench` runs
    python benchmarks/estimator_speed.py --quick         # 1 frame per case, no CPU whole movies
    python benchmarks/estimator_speed.py --frames 4 --devices cpu --size 2048

Simulated counting movies (Poisson, 1 e/px/frame, a structured gain) are
written to a temporary folder, then every case runs in its own subprocess
(so that its peak host memory, ru_maxrss, is its own) through the public
``estimate_gain`` on the movie file, reading included:

* per frame: single and local reference, sigma fixed (1.0) and searched
  (0..3 step 0.5); residual mode (the raw counts multiplied by a reference);
  and a pre-corrected movie (float32 frames = counts x the reference, as
  written gain-normalised at acquisition: the lattice stage recovers the
  counts and the reference, then the residual path runs); the time per frame
  is the steady-state interval between the estimator's progress calls (the
  first frame, which on a GPU compiles kernels, is not counted when more than
  one frame is timed); ``wall/frame`` is the whole ``estimate_gain`` (reading,
  the lattice survey pass, the analysis of the sums) over the frames;
* whole movie (GPU, and the CPU with --cpu-movies): 4096 x 4096 x 8 and x 40
  frames, single and local reference with the sigma search, one iteration,
  wall time of ``estimate_gain`` after a warm-up on a 2-frame movie.

Memory: peak host RSS of the case's process (MB) and, on a GPU, the peak of
bytes in use in CuPy's memory pool (MB) plus the pinned host buffers.

Bandwidth: ``traffic_model`` counts the bytes that the code's array passes
read and write per frame (stage by stage; see its docstring); achieved
bandwidth = model bytes / time per frame, against the device's peak (GPU:
memory clock x bus width from the device properties; CPU: a measured
single-thread NumPy copy, so the CPU fraction is of what NumPy can stream,
not of the DRAM datasheet). On a GPU the bytes CuPy allocates per frame are
also measured (every temporary is written once and read at least once, so
2 x allocated is a second, code-derived lower bound) to cross-check the
model.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIGMA_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
CASES = [  # name, settings, input: 'raw' counts, 'residual' (raw x reference), 'lattice'
    ('single, sigma 1', dict(reference='single', sigma=1.0), 'raw'),
    ('single, sigma searched', dict(reference='single', sigma='auto'), 'raw'),
    ('local, sigma 1', dict(reference='local', sigma=1.0), 'raw'),
    ('local, sigma searched', dict(reference='local', sigma='auto'), 'raw'),
    ('residual, single, searched', dict(reference='single', sigma='auto'), 'residual'),
    ('residual, single, sigma 1', dict(reference='single', sigma=1.0), 'residual'),
    ('residual, local, searched', dict(reference='local', sigma='auto'), 'residual'),
    ('pre-corrected, single, searched', dict(reference='single', sigma='auto'), 'lattice'),
    ('pre-corrected, single, sigma 1', dict(reference='single', sigma=1.0), 'lattice'),
]
MOVIE_CASES = [
    ('single, sigma searched', dict(reference='single', sigma='auto')),
    ('local, sigma searched', dict(reference='local', sigma='auto')),
]


# --------------------------------------------------------------------------- traffic model
def traffic_model(reference, sigma, residual=False, gpu=False):
    """Bytes read + written per pixel per frame by the estimator's array passes.

    ``residual``: False / 'raw' (counting fast path), True / 'residual' or
    'lattice' (scaled counts fast path; the lattice adds its apply). See
    :func:`_traffic_model_counts` for what is counted.
    """
    if residual in (True, 'residual', 'lattice'):
        return _traffic_model_scaled(sigma, lattice=residual == 'lattice')
    return _traffic_model_counts(reference, sigma, False, gpu)


def _traffic_model_scaled(sigma, lattice=False):
    """Scaled counts fast path (sme._counted.equalize_scaled_counts), bytes per pixel per frame.

    Per frame: the reference multiplication (12), the recorded frame's count
    check (max 4, uint16 cast 6, compare 6, all 1: 17), the count unit (two
    sums: 8), the count keys (scale 8, + 1/2 8, clip 8, uint8 cast 5, > 0 5,
    maximum 3: 37), the fused mapping of both directions (block ids 2 x 9,
    gathers 2 x 12, add 12, zero mask and where 13, multiply 12, store 8: 87),
    the Eq. 7 sums (46). Per direction: block ids (9), weighted histograms of
    the values and their squares (float64 copy 12, square 16, two weighted
    bincounts 2 x (a min/max pass 16 + 16): 92) and the count histogram (16)
    or, searching, the pair ids (36) and their histogram (16); the sigma
    candidates work on (L, K) tables and block pairs only (~0). The lattice
    adds its apply (divide 12, scale 8, rint 8, a few masked pixels: 28) and,
    once per movie, its survey pass (not per frame: reported in wall/frame).
    """
    per_frame = 12 + 17 + 8 + 37 + 87 + 46 + (28 if lattice else 0)
    per_direction = 9 + 92 + (36 + 16 if sigma == 'auto' else 16)
    return per_frame + 2 * per_direction


def _traffic_model_counts(reference, sigma, residual=False, gpu=False):
    """Bytes read + written per pixel per frame by the estimator's array passes.

    Counted from the code (the sme package, gain.py), per pixel, for counting frames
    (few tie blocks per line, so per-block work is negligible):

    per frame: rank keys of the frame (min, max, floor, compare, all, cast:
    32), the transposes of frame and keys for the column direction (12),
    Eq. 6 (12 + 8), the Eq. 7 sums (float64 numerator and denominator: 20
    each; float32 half sums: 12 on every other frame); residual mode adds the
    multiplication by the reference (12) and the recorded frame's own rank
    keys and their transpose (32 + 4);
    per direction: the stable order (CPU: 16-bit radix, 2 passes + output +
    row offsets, ~66; GPU: composite key 14 + 4-pass 32-bit key / 64-bit index
    radix sort ~104), the two gathers (16 + 12), tie starts (6), block ids
    (13), flatnonzero (1), the scatter of block ids (CPU intp 20, GPU int32
    16), the own block means (one float64 running sum from float32: 12);
    per sigma candidate and direction: the reference (single: 4; local: per
    block and Gaussian tap only, ~0 for counting frames), the equalization (two
    gathers through the block ids, index read + value written: CPU 8 + 4,
    GPU 4 + 4 each; multiply in place 12, add in place 12) and, when
    searching, the total variation (diff 12, abs 8, sum 4).
    Counting fast path (sme._counted.CountedLines: the non-residual cases, first
    iteration) instead: per frame rank keys (min, max, cast, compare, all:
    22), Eq. 6 in place (20), the Eq. 7 sums (46); per direction the block
    ids (uint16 in, intp out: 10), their histogram (bincount: a min/max pass
    and a counting pass, 16) or, searching, the pair ids (36) and their
    histogram (16), the local reference's running sum (bincount into a
    float64 frame, two cumulative sums: 40), and the mapping of the chosen
    sigma (block ids 10, gather 12, copy into the result 8 on the CPU); the
    sigma candidates themselves work on (L, K) tables only (~0).
    Returns bytes per pixel.
    """
    if not residual:
        per_frame = 22 + 20 + 46
        per_direction = (10 + 62 if sigma == 'auto' else 10 + 16) + (40 if reference == 'local' else 0)
        per_direction += 10 + 12 + (0 if gpu else 8)
        return per_frame + 2 * per_direction
    per_frame = 32 + 12 + 20 + 20 + 20 + 6 + (12 + 32 + 4 if residual else 0)
    order = 104 + 14 if gpu else 66
    per_direction = order + 16 + 12 + 6 + 13 + 1 + (16 if gpu else 20) + 12
    gather = 8 if gpu else 12
    candidates = SIGMA_GRID if sigma == 'auto' else (float(sigma),)
    for candidate in candidates:
        if reference == 'single':
            per_direction += 4
        # local: the reference's block means come from the running sum, per block and
        # Gaussian tap (2 reads each): negligible for counting frames
        per_direction += 2 * gather + 12 + 12 + (24 if sigma == 'auto' else 0)
    return per_frame + 2 * per_direction


# --------------------------------------------------------------------------- peaks
def gpu_peak_bandwidth(cupy):
    """Peak DRAM bandwidth (bytes/s) from the device properties: 2 x memory clock x bus width."""
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return 2.0 * props['memoryClockRate'] * 1e3 * props['memoryBusWidth'] / 8, props['name'].decode()


def cpu_copy_bandwidth(megabytes=256, repeats=5):
    """Bytes/s (read + write) of a single-thread NumPy copy of a large array."""
    source = np.ones(megabytes * 2 ** 20 // 4, np.float32)
    target = np.empty_like(source)
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best


def cpu_name():
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def gpu_available():
    try:
        from scipion_gain.estimator.arrays import resolve_device
        device = resolve_device('gpu')
        return gpu_peak_bandwidth(device.xp)[1]
    except Exception:
        return None


# --------------------------------------------------------------------------- worker (one case)
def _reset_host_peak():
    """Reset the kernel's peak-RSS mark of this process (Linux: clear_refs 5); False if impossible.

    ru_maxrss alone would not do: Linux carries the parent's RSS over fork and exec.
    """
    try:
        with open('/proc/self/clear_refs', 'w') as handle:
            handle.write('5')
        return True
    except OSError:
        return False


def _host_peak_mb():
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _host_now_mb():
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float('nan')


def worker(job):
    """Run one case in this process and print its measurements as JSON."""
    from scipion_gain.estimator import EstimatorSettings, estimate_gain
    _reset_host_peak()
    baseline_mb = _host_now_mb()
    device = job['device']
    hook = None
    if device.startswith('gpu'):
        import cupy
        from cupy.cuda.memory_hook import MemoryHook

        class Peak(MemoryHook):
            name = 'benchmark-peak'

            def __init__(self):
                self.peak = 0
                self.allocated = 0
                self.pool = cupy.get_default_memory_pool()

            def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
                self.allocated += size
                self.peak = max(self.peak, self.pool.used_bytes())

        hook = Peak()
        warm = EstimatorSettings(**job['settings'])
        estimate_gain([job['warmup']], warm, device=device)  # compiles the kernels
        cupy.cuda.Device().synchronize()
        cupy.get_default_memory_pool().free_all_blocks()
    reference = np.load(job['reference']) if job.get('reference') else None
    settings = EstimatorSettings(**job['settings'])
    stamps = []
    if hook is not None:
        hook.__enter__()
    start = time.perf_counter()
    result = estimate_gain([job['movie']], settings, gain_reference=reference, device=device,
                           progress=lambda done, total: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    if hook is not None:
        hook.__exit__()
    frames = result.frames
    if len(stamps) >= 2:
        per_frame = statistics.median(np.diff(stamps))
    else:
        per_frame = total / max(frames, 1)
    out = {'device': result.device, 'frames': frames, 'seconds': total, 'per_frame': per_frame,
           'host_peak_mb': _host_peak_mb(), 'host_baseline_mb': baseline_mb}
    if hook is not None:
        import cupy
        out['device_peak_mb'] = hook.peak / 2 ** 20
        out['device_allocated_per_frame'] = hook.allocated / max(frames, 1)
        out['pinned_mb'] = cupy.get_default_pinned_memory_pool().total_bytes() / 2 ** 20
        peak, name = gpu_peak_bandwidth(cupy)
        out['device_name'], out['peak_bandwidth'] = name, peak
    print('RESULT ' + json.dumps(out))


def run_case(job, timeout):
    command = [sys.executable, str(Path(__file__).resolve()), '--worker', json.dumps(job)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    for line in done.stdout.splitlines():
        if line.startswith('RESULT '):
            return json.loads(line[len('RESULT '):])
    raise RuntimeError(f"case failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")


# --------------------------------------------------------------------------- main
def make_movies(folder, size, counts):
    from scipion_gain.simulate import simulate_gain, simulate_movie
    shape = (size, size)
    truth = simulate_gain(shape, rng=1, pixel_scatter=0.02)
    paths = {}
    for frames in sorted(set(counts)):
        path = folder / f'movie_{size}_{frames}.mrc'
        simulate_movie(str(path), shape, frames, truth.gain, dose=1.0, mode='counting', rng=2)
        paths[frames] = str(path)
    reference = folder / 'reference.npy'
    np.save(reference, truth.correction)
    return paths, str(reference)


def make_pre_corrected(folder, size, frames):
    """The counting movie of ``make_movies`` written as counts x correction (float32)."""
    from scipion_gain.simulate import simulate_gain, simulate_movie
    shape = (size, size)
    truth = simulate_gain(shape, rng=1, pixel_scatter=0.02)
    path = folder / f'pre_corrected_{size}_{frames}.mrc'
    simulate_movie(str(path), shape, frames, truth.gain, dose=1.0, mode='counting', rng=2,
                   correction=truth.correction, output='float32')
    return str(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, default=4096, help='frame side in pixels (4096)')
    parser.add_argument('--frames', type=int, default=3,
                        help='frames timed per case (3; the median interval is reported)')
    parser.add_argument('--quick', action='store_true',
                        help='1 frame per case and no whole-movie runs on the CPU')
    parser.add_argument('--devices', default='auto',
                        help="cpu, gpu or both ('cpu,gpu'); auto: the CPU, and the GPU if there is one")
    parser.add_argument('--movie-frames', default='8,40', help='whole-movie lengths (8,40)')
    parser.add_argument('--cpu-movies', action='store_true',
                        help='also time whole movies on the CPU (slow: minutes per movie)')
    parser.add_argument('--cases', default='',
                        help=f'comma-separated case numbers to run (1-{len(CASES)}; default all)')
    parser.add_argument('--json', help='also write the measurements to this file')
    parser.add_argument('--timeout', type=int, default=3600, help='per case, seconds')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))

    frames = 1 if args.quick else max(1, args.frames)
    gpu_name = gpu_available()
    devices = (['cpu'] + (['gpu'] if gpu_name else [])) if args.devices == 'auto' else \
        [d.strip() for d in args.devices.split(',') if d.strip()]
    if 'gpu' in devices and not gpu_name:
        print('no GPU (CuPy or a CUDA device missing): the GPU column is left out', file=sys.stderr)
        devices.remove('gpu')
    movie_lengths = [int(n) for n in args.movie_frames.split(',') if n.strip()]
    movie_devices = [d for d in devices if d == 'gpu' or (args.cpu_movies and not args.quick)]
    cases = CASES
    if args.cases:
        cases = [CASES[int(i) - 1] for i in args.cases.split(',')]

    cpu_peak = cpu_copy_bandwidth()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, NumPy copy {cpu_peak / 1e9:.1f} GB/s "
          f"(read + write, one thread)")
    if gpu_name:
        print(f"GPU: {gpu_name}")
    print(f"frames {args.size} x {args.size}, counting, 1 e/px/frame; {frames} frame(s) per case",
          flush=True)
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} at the start", flush=True)
    if load > 0.5:
        print("warning: other processes are running; CPU times will be too long", file=sys.stderr)

    records = []
    with tempfile.TemporaryDirectory(prefix='gain-bench-') as tmp:
        counts = [max(frames, 1), 2] + (movie_lengths if movie_devices else [])
        started = time.perf_counter()
        movies, reference = make_movies(Path(tmp), args.size, counts)
        if any(kind == 'lattice' for _, _, kind in cases):
            movies['lattice'] = make_pre_corrected(Path(tmp), args.size, max(frames, 1))
            movies['lattice warmup'] = make_pre_corrected(Path(tmp), args.size, 2)
        print(f"simulated {sorted(str(k) for k in movies)} frame movies in {time.perf_counter() - started:.0f} s",
              flush=True)
        pixels = args.size * args.size
        rows = []
        for device in devices:
            for name, settings, residual in cases:
                lattice = residual == 'lattice'
                job = {'device': device,
                       'movie': movies['lattice'] if lattice else movies[frames],
                       'warmup': movies['lattice warmup'] if lattice else movies[2],
                       'settings': settings,
                       'reference': reference if residual == 'residual' else None}
                out = run_case(job, args.timeout)
                model = traffic_model(settings['reference'], settings['sigma'], residual,
                                      gpu=device == 'gpu') * pixels
                peak = out.get('peak_bandwidth', cpu_peak)
                achieved = model / out['per_frame']
                out.update(case=name, kind='frame', model_bytes_per_frame=model,
                           achieved_bandwidth=achieved, fraction_of_peak=achieved / peak)
                records.append(out)
                rows.append(out)
                print(f"  {device:4s} {name:32s} {out['per_frame']:8.3f} s/frame "
                      f"({out['seconds'] / max(out['frames'], 1):.3f} wall)", flush=True)
        movie_rows = []
        for device in movie_devices:
            for length in movie_lengths:
                for name, settings in MOVIE_CASES:
                    job = {'device': device, 'movie': movies[length], 'warmup': movies[2],
                           'settings': settings, 'reference': None}
                    out = run_case(job, args.timeout)
                    out.update(case=name, kind='movie')
                    records.append(out)
                    movie_rows.append(out)
                    print(f"  {device:4s} {name:28s} {length:3d} frames {out['seconds']:8.2f} s",
                          flush=True)

    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    print()
    print(format_frame_table(rows))
    if movie_rows:
        print()
        print(format_movie_table(movie_rows))
    if args.json:
        Path(args.json).write_text(json.dumps({'cpu': cpu_name(), 'gpu': gpu_name,
                                               'load_average_end': os.getloadavg()[0],
                                               'cpu_copy_bandwidth': cpu_peak,
                                               'records': records}, indent=1))
    return 0


def _mb(value):
    return '-' if value is None else f"{value:,.0f}"


def format_frame_table(rows):
    header = (f"{'device':8s} {'case':32s} {'s/frame':>8s} {'wall/fr':>8s} {'host MB':>8s} "
              f"{'dev MB':>7s} {'GB/frame':>8s} {'GB/s':>7s} {'% peak':>6s} {'alloc GB':>8s}")
    lines = [header, '-' * len(header)]
    for r in rows:
        alloc = r.get('device_allocated_per_frame')
        lines.append(f"{r['device']:8s} {r['case']:32s} {r['per_frame']:8.3f} "
                     f"{r['seconds'] / max(r['frames'], 1):8.3f} "
                     f"{_mb(r['host_peak_mb']):>8s} {_mb(r.get('device_peak_mb')):>7s} "
                     f"{r['model_bytes_per_frame'] / 1e9:8.2f} {r['achieved_bandwidth'] / 1e9:7.1f} "
                     f"{100 * r['fraction_of_peak']:6.1f} "
                     f"{'-' if alloc is None else f'{alloc / 1e9:.2f}':>8s}")
    by_case = {}
    for r in rows:
        by_case.setdefault(r['case'], {})[r['device'].split(':')[0]] = r['per_frame']
    ratios = [f"{case}: {v['cpu'] / v['gpu']:.0f}x" for case, v in by_case.items()
              if 'cpu' in v and 'gpu' in v]
    if ratios:
        lines.append('GPU speed-up (CPU s/frame / GPU s/frame): ' + '; '.join(ratios))
    return '\n'.join(lines)


def format_movie_table(rows):
    header = (f"{'device':8s} {'case':28s} {'frames':>6s} {'seconds':>8s} {'s/frame':>8s} "
              f"{'host MB':>8s} {'dev MB':>7s}")
    lines = [header, '-' * len(header)]
    for r in rows:
        lines.append(f"{r['device']:8s} {r['case']:28s} {r['frames']:6d} {r['seconds']:8.2f} "
                     f"{r['seconds'] / r['frames']:8.3f} {_mb(r['host_peak_mb']):>8s} "
                     f"{_mb(r.get('device_peak_mb')):>7s}")
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
