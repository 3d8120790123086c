"""What the drift tells of a step in half a readout sector: an oracle that knows the box.

The detector is fixed to the pixel grid; the specimen moves with the drift (frames are
shifted copies of one specimen). A corrected frame is C_i(x) = S(x + d_i) E(x) (S: the
specimen, d_i: the frame's shift, E: what the reference leaves, exp(h b) for a box b).
With the shifts known, the specimen's least-squares estimate is the aligned mean
S^(y) = mean_i C_i(y - d_i), and what is left of the box in frame i is the template
(linearised in h)

    r_i(x) = b(x) - bbar(x + d_i),    bbar(y) = mean_j b(y - d_j)

(b less the box smeared by the drift as the specimen's estimate takes it): only within
the drift's range of the box's edges. The statistic U = sum_i sum_x ok_i(x) r_i(x) C_i(x)
has expectation h sum_i sum_x r_i^2 S_i and, for a specimen alone (E = 1), exactly 0
whatever the specimen, because sum_i ok_i r_i(y - d_i) = 0 at every y when the mask
ok_i(x) = ok(x + d_i) is one mask in the specimen's coordinates (where every frame saw
it). Its variance is sum_i sum_x r_i^2 S^(x + d_i) (Poisson), so z = U / sqrt(var):
specimen-free evidence, the Kuhn-Lin-Loranz self-calibration (gain from shifted images of
one scene) restricted to one box. It is 1.3x what the same template gives on the sum alone
(sum_i r_i, smeared symmetrically: the first and last frames see the edge displaced
opposite ways and cancel there). With streaming in mind: U = <b, sum_i ok_i C_i> -
n <bbar, ok S^>, the movie's sum and its aligned sum, once the shifts are known.

Beside it, the evidence in the sum (:func:`sum_edge_z`): at each of the box's edges inside
the frame (two readout boundaries with opposite steps, the half's row edge) the two-sided
mean difference over 32 lines, over the box's extent along the edge, in the robust spread
of the same statistic along that profile (the specimen's own line structure included);
the edges' z with the box's sign, summed over sqrt(edges).

Shifts: ``known`` (the simulation's), ``est4`` (:func:`estimated_shifts`: groups of 4
frames, every pair cross-correlated, 4x4-binned, tapered and band-passed, the least-squares
shifts interpolated to each frame), ``est1`` (the same, frame by frame).

Movies: :mod:`part_frame`'s specimens and detectors (unequal by default), 1024 x 1024 x
20 at 1 e/px/frame, one drift kind each: ``steady`` (0.5 px/frame at a random angle, as
:mod:`part_frame`), ``none``, ``walk`` (a random walk of -1, 0 or +1 px per frame in each
axis), ``diag`` (1 px/frame in each axis). Each movie is judged with its exact reference
at every (sector, half) box (the null: 16 boxes a movie) and with a 3 % step in the
seed's half sector (:func:`part_frame.half_sector_error`).

    python benchmarks/drift_evidence.py run --seeds 100-119 --drifts steady,walk,diag,none \\
        --shifts known,est1,est4 --json F
    python benchmarks/drift_evidence.py table F
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from part_frame import KINDS, detector_of, half_sector_error, specimen_for  # noqa: E402

from scipion_gain.simulate import render_specimen  # noqa: E402

DRIFTS = ('steady', 'walk', 'diag', 'none')


def drift_path(kind, frames, rng):
    """(frames, 2) integer shifts (rows, columns) of the specimen in each frame."""
    index = np.arange(frames)
    if kind == 'none':
        return np.zeros((frames, 2), int)
    if kind == 'steady':
        angle = rng.uniform(0, 2 * np.pi)
        return np.rint(0.5 * index[:, None] * [np.sin(angle), np.cos(angle)]).astype(int)
    if kind == 'diag':
        return np.stack([index, index], 1)
    if kind == 'walk':
        steps = rng.integers(-1, 2, size=(frames, 2))
        steps[0] = 0
        return np.cumsum(steps, 0)
    raise ValueError(f"unknown drift {kind!r} (use {', '.join(DRIFTS)})")


def movie(shape, frames, seed, drift, detector='unequal'):
    """(raw counting frames, shifts, the detector, its exact correction): C_i(x) =
    Poisson(S(x + d_i) G(x)), 1 e/px/frame."""
    rng = np.random.default_rng(seed + 77)
    shifts = drift_path(drift, frames, rng)
    shifts = shifts - shifts.min(0)
    margin = int(shifts.max()) + 1
    scene = render_specimen(specimen_for(seed, KINDS[seed % len(KINDS)]), shape, seed + 1,
                            margin=margin).image
    detector, correction = detector_of(shape, seed, detector)
    raw = np.empty((frames,) + tuple(shape), np.float32)
    for i, (dy, dx) in enumerate(shifts):
        raw[i] = rng.poisson(scene[dy:dy + shape[0], dx:dx + shape[1]] * detector.gain)
    return raw, shifts, detector, correction


def shifted(image, dy, dx):
    """image(x + d) (values rolled in from the other side: callers pad or mask them)."""
    return np.roll(image, (-int(dy), -int(dx)), axis=(0, 1))


def estimated_shifts(corrected, group=1, binning=4):
    """(frames, 2) shifts from the frames: every pair of groups of ``group`` frames
    cross-correlated (FFT of ``binning``-binned sums, tapered at the frame's border, which
    is fixed to the detector and would pull every peak to 0; band-passed between 0.01 and
    0.15 cycles per binned pixel; the peak refined by a parabola on each axis), the groups'
    shifts the least-squares fit of the pairs' (d_i - d_j = s_ij, mean 0: d_i = mean_j
    s_ij), interpolated to each frame. A group against the sum of the others instead (its
    specimen at every other group's place) picks one of their peaks, and the shifts come
    out about half the true ones."""
    n, rows, cols = corrected.shape
    binned = corrected.reshape(n, rows // binning, binning, cols // binning, binning).sum((2, 4))
    count = n // group
    binned = binned[:count * group].reshape(count, group, *binned.shape[1:]).sum(1)
    ramps = [np.clip(np.minimum(np.arange(m), m - 1 - np.arange(m)) / (m / 8), 0, 1)
             for m in binned.shape[1:]]
    window = np.outer(*[0.5 - 0.5 * np.cos(np.pi * ramp) for ramp in ramps])
    binned = (binned - (binned * window).sum((1, 2), keepdims=True) / window.sum()) * window
    ky = np.fft.fftfreq(binned.shape[1])[:, None]
    kx = np.fft.fftfreq(binned.shape[2])[None, :]
    k2 = ky ** 2 + kx ** 2
    band = (1 - np.exp(-k2 / (2 * 0.01 ** 2))) * np.exp(-k2 / (2 * 0.15 ** 2))
    spectra = np.fft.fft2(binned) * band
    pairs = np.zeros((count, count, 2))
    for i in range(count):
        for j in range(i + 1, count):
            # cc[s] = sum_x f_i(x) f_j(x + s): peak at s = d_i - d_j
            pairs[i, j] = _peak(np.fft.ifft2(spectra[i].conj() * spectra[j]).real)
            pairs[j, i] = -pairs[i, j]
    found = pairs.sum(1) / count * binning
    centres = np.arange(count) * group + (group - 1) / 2
    per_frame = np.stack([np.interp(np.arange(n), centres, found[:, a]) for a in (0, 1)], 1)
    return per_frame - per_frame.mean(0)


def _peak(cc):
    """The place of a correlation's largest value, refined by a parabola on each axis, in
    (-size / 2, size / 2]."""
    peak = np.unravel_index(int(np.argmax(cc)), cc.shape)
    place = np.zeros(2)
    for axis in (0, 1):
        size = cc.shape[axis]
        below, above = list(peak), list(peak)
        below[axis] = (peak[axis] - 1) % size
        above[axis] = (peak[axis] + 1) % size
        a, c, b = cc[tuple(below)], cc[tuple(above)], cc[peak]
        curvature = a - 2 * b + c
        where = peak[axis] + (0.5 * (a - c) / curvature if curvature < 0 else 0.0)
        place[axis] = where - size if where > size / 2 else where
    return place


def aligned_mean(corrected, shifts):
    """S^(y) = mean_i C_i(y - d_i): the specimen's estimate (valid where every frame saw it)."""
    out = np.zeros(corrected.shape[1:])
    for frame, (dy, dx) in zip(corrected, shifts):
        out += shifted(frame, -dy, -dx)
    return out / len(shifts)


def drift_z(corrected, shifts, specimen, box):
    """(h, z) of the box's level from U (the module's docstring); on a crop of the box,
    three drift ranges around it, with the frame's outside as zeros (no roll wraps a
    value that counts)."""
    rows, cols = corrected.shape[1:]
    r0, r1, c0, c1 = box
    reach = int(np.abs(shifts).max()) + 1
    top, left = r0 - 3 * reach, c0 - 3 * reach
    shape = (r1 - r0 + 6 * reach, c1 - c0 + 6 * reach)
    y = np.arange(top, top + shape[0])[:, None]
    x = np.arange(left, left + shape[1])[None, :]
    b = ((y >= r0) & (y < r1) & (x >= c0) & (x < c1)).astype(float)
    bbar = sum(shifted(b, -dy, -dx) for dy, dx in shifts) / len(shifts)
    inside = (slice(max(0, top), min(rows, top + shape[0])),
              slice(max(0, left), min(cols, left + shape[1])))
    placed = (slice(inside[0].start - top, inside[0].stop - top),
              slice(inside[1].start - left, inside[1].stop - left))
    most = shifts.max(0)
    frame, model = np.zeros(shape), np.zeros(shape)
    u = variance = 0.0
    for c, (dy, dx) in zip(corrected, shifts):
        # ok_i(x) = ok(x + d_i): the specimen's coordinates every frame saw
        ok = (y + dy >= most[0]) & (y + dy < rows) & (x + dx >= most[1]) & (x + dx < cols) \
            & (y >= 0) & (x >= 0)
        r = np.where(ok, b - shifted(bbar, dy, dx), 0.0)
        frame[placed] = c[inside]
        model[placed] = shifted(specimen, dy, dx)[inside]
        u += float(np.sum(r * frame))
        variance += float(np.sum(r * r * model))
    if not variance > 0:
        return 0.0, 0.0
    return u / variance, u / np.sqrt(variance)


def sum_edge_z(log_sum, box, width=32):
    """(z of the box's level, each edge's z with the box's sign) from the sum's profiles
    (the module's docstring)."""
    rows, cols = log_sum.shape
    r0, r1, c0, c1 = box
    signed = []
    for profile, first, last, size in ((np.nanmean(log_sum[r0:r1], axis=0), c0, c1, cols),
                                       (np.nanmean(log_sum[:, c0:c1], axis=1), r0, r1, rows)):
        for line, sign in ((first, 1), (last, -1)):
            if 0 < line < size:
                signed.append(sign * _two_sided_z(profile, line, width))
    return float(np.sum(signed) / np.sqrt(len(signed))), [round(float(z), 2) for z in signed]


def _two_sided_z(profile, line, width):
    ends = np.concatenate([[0.0], np.cumsum(profile)])
    lines = profile.size
    x = np.arange(width, lines - width + 1)
    every = (ends[x + width] - 2 * ends[x] + ends[x - width]) / width
    spread = 1.4826 * np.median(np.abs(every - np.median(every)))
    line = min(max(line, width), lines - width)
    return float((ends[line + width] - 2 * ends[line] + ends[line - width]) / width / spread)


def half_boxes(detector, shape):
    """Every (sector, half) box of the detector: the null's boxes."""
    edges = [int(e) for e in detector.sector_edges]
    half = shape[0] // 2
    return [[r0, r1, a, b] for a, b in zip(edges, edges[1:])
            for r0, r1 in ((0, half), (half, shape[0]))]


def records(seed, drift, how_many, shape=(1024, 1024), frames=20, size=0.03):
    raw, shifts, detector, correction = movie(shape, frames, seed, drift)
    error, box = half_sector_error(shape, seed, 'step', size, detector.sector_edges)
    sign = -float(np.sign(error[box[0], box[2]]))   # corrected = raw x correction / (1 + error)
    for how in how_many:
        record = dict(seed=seed, drift=drift, specimen=KINDS[seed % len(KINDS)], shifts=how,
                      box=box, size=size, span=[int(v) for v in np.ptp(shifts, 0)])
        for name, reference in (('exact', correction), ('step', correction * np.exp(-error))):
            corrected = raw * reference.astype(np.float32)
            used = shifts
            if how != 'known':
                found = estimated_shifts(corrected, group=int(how[3:] or 1))
                truth = shifts - shifts.mean(0)
                record[f'{name}_shift_error'] = round(float(np.sqrt(np.mean(
                    np.sum((found - truth) ** 2, 1)))), 2)
                used = np.rint(found).astype(int)
            used = used - used.min(0)
            specimen = aligned_mean(corrected, used)
            log_sum = np.log(np.maximum(corrected.sum(0), 1e-3))
            results = []
            for one in ([box] if name == 'step' else half_boxes(detector, shape)):
                h, z = drift_z(corrected, used, specimen, one)
                edges, per_edge = sum_edge_z(log_sum, one)
                results.append(dict(box=one, drift_h=round(h, 4), drift_z=round(z, 2),
                                    sum_z=round(edges, 2), sum_edges=per_edge))
            if name == 'step':   # signed: positive when it sees the step simulated
                for r in results:
                    r['drift_z'], r['sum_z'] = sign * r['drift_z'], sign * r['sum_z']
            record[name] = results
        yield record


def table(rows):
    """Markdown rows per (drift, shifts): the step's z from the drift and from the sum, and
    the null's spread over every (sector, half) box of the exact references."""
    def spread(v):
        return f"{np.median(v):.1f} [{np.min(v):.1f} to {np.max(v):.1f}]"

    out = ['| drift | shifts | movies | shift error, px RMS (median) | 3 % step, drift z: '
           'median [range] | drift z >= 3 / 4 / 5 | sum z: median [range] | '
           '(drift + sum) / sqrt 2 >= 4 / 5 | exact, drift z: sd, largest abs, of n boxes '
           '| exact, sum z: largest abs | exact, combined: largest abs | drift z in the '
           "movie's own spread: step >= 4, exact's largest abs | movies under 3 (drift z) |",
           '|---' * 13 + '|']
    for drift in DRIFTS:
        for how in ('known', 'est1', 'est4'):
            these = [r for r in rows if r['drift'] == drift and r['shifts'] == how]
            if not these:
                continue
            step = np.array([r['step'][0]['drift_z'] for r in these])
            edges = np.array([r['step'][0]['sum_z'] for r in these])
            both = (step + edges) / np.sqrt(2)
            null = np.array([b['drift_z'] for r in these for b in r['exact']])
            null_sum = np.array([b['sum_z'] for r in these for b in r['exact']])
            error = (f"{np.median([r['step_shift_error'] for r in these]):.2f}"
                     if how != 'known' else '0')
            own = [_own_spread(r) for r in these]
            own_step = step / np.array([o[0] for o in own])
            own_null = np.concatenate([o[1] for o in own])
            weak = ', '.join(f"{r['seed']} {r['specimen']}" for r, z in zip(these, step) if z < 3)
            out.append(f"| {drift} | {how} | {len(these)} | {error} | {spread(step)} | "
                       f"{(step >= 3).sum()} / {(step >= 4).sum()} / {(step >= 5).sum()} | "
                       f"{spread(edges)} | {(both >= 4).sum()} / {(both >= 5).sum()} | "
                       f"{null.std():.2f}, {np.abs(null).max():.1f}, {null.size} | "
                       f"{np.abs(null_sum).max():.1f} | "
                       f"{np.abs((null + null_sum) / np.sqrt(2)).max():.1f} | "
                       f"{(own_step >= 4).sum()}, {np.abs(own_null).max():.1f} | {weak or '-'} |")
    return '\n'.join(out)


def _own_spread(record):
    """The movie's own yardstick for the drift's z: the robust spread (1.4826 MAD) of its
    exact reference's z over the (sector, half) boxes, the step's box left out (in a movie
    with the step, the other boxes' z are the exact reference's but for the neighbours):
    (that spread, the exact boxes' z in their own spread)."""
    values = np.array([b['drift_z'] for b in record['exact']])
    others = np.array([b['drift_z'] for b in record['exact'] if b['box'] != record['box']])
    def mad(v):
        return max(1.4826 * float(np.median(np.abs(v - np.median(v)))), 1e-9)
    return mad(others), values / mad(values)


def _seeds(text):
    out = []
    for part in text.split(','):
        first, _, last = part.partition('-')
        out.extend(range(int(first), int(last or first) + 1))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='what', required=True)
    run = sub.add_parser('run')
    run.add_argument('--seeds', default='100-119', help="'100-119' or '100,105'")
    run.add_argument('--drifts', default=','.join(DRIFTS))
    run.add_argument('--shifts', default='known,est1,est4')
    run.add_argument('--json', required=True, help='JSON lines appended here')
    shown = sub.add_parser('table')
    shown.add_argument('files', nargs='+')
    args = parser.parse_args(argv)
    if args.what == 'table':
        print(table([json.loads(line) for f in args.files for line in open(f) if line.strip()]))
        return
    with open(args.json, 'a') as out:
        for seed in _seeds(args.seeds):
            for drift in args.drifts.split(','):
                for record in records(seed, drift, args.shifts.split(',')):
                    out.write(json.dumps(record) + '\n')
                    out.flush()
                    step = record['step'][0]
                    print(seed, drift, record['shifts'], record['specimen'], step['drift_z'],
                          step['sum_z'], record.get('step_shift_error'), flush=True)


if __name__ == '__main__':
    main()
