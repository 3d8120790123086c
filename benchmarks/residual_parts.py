"""Where the residual map's std (exact reference, robust method) of a movie with a
carbon or gold edge comes from, against the same movie without the edge.

Each case: one patterned detector (accuracy.session_gain 'patterned'), one specimen
(steep ice ramp, particles) rendered with the same seed with and without an edge, the
same frame seed. The residual map's log (good pixels) is split into its column
profile, row profile (each line's mean after the other's), the plane of the rest, and
the pixel term (what is left); 'stage 3' is the same split of the map before the plane
and the pixel term (the thinned SME's correction, specimen.flattened_sums). 'count
limit' is the std the lines' Poisson noise alone would give if every recorded count
were used: sqrt(mean over columns of 1/N_col + mean over rows of 1/N_row), N the
line's counts (the lines' ML given the dose); 'thinned limit' the same with the counts
each line keeps after thinning to the movie's level (specimen model's 1st percentile).

    python benchmarks/residual_parts.py [--size 512] [--seeds 3,4]
"""
import argparse
import os
import sys
import tempfile
from dataclasses import replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy import Session, session_gain  # noqa: E402

from scipion_gain.estimator import EstimatorSettings, estimate_gain  # noqa: E402
from scipion_gain.estimator.estimate import correction_from_sums  # noqa: E402
from scipion_gain.estimator.specimen import flattened_sums, specimen_model  # noqa: E402
from scipion_gain.estimator.statistics import map_statistics  # noqa: E402
from scipion_gain.estimator import thinning  # noqa: E402

OWN_TARGET = thinning._thinning_target
from scipion_gain.simulate import Specimen, render_specimen, simulate_frames, write_movie  # noqa: E402

CASES = {'none': {},
         'carbon T0.3 45%': dict(carbon=0.45, carbon_transmission=0.3, carbon_angle=30.0),
         'carbon T0.4 30%': dict(carbon=0.30, carbon_transmission=0.4, carbon_angle=120.0),
         'carbon T0.6 30%': dict(carbon=0.30, carbon_transmission=0.6, carbon_angle=200.0),
         'gold T0.05 30%': dict(carbon=0.30, carbon_transmission=0.05, carbon_angle=70.0),
         'gold line 6% 7.5deg': dict(carbon=0.06, carbon_transmission=0.05, carbon_gap=0.4,
                                     carbon_angle=7.5, carbon_curvature=0.0)}


def parts(logs, good):
    """(total std, column, row, plane, pixel) stds of a log map over ``good``."""
    values = np.where(good, logs, 0.0)
    weight = good.astype(float)
    columns = values.sum(0) / np.maximum(weight.sum(0), 1)
    columns -= np.average(columns, weights=weight.sum(0))
    rest = np.where(good, logs - columns[None, :], 0.0)
    rows = rest.sum(1) / np.maximum(weight.sum(1), 1)
    rows -= np.average(rows, weights=weight.sum(1))
    rest = np.where(good, rest - rows[:, None], 0.0)
    yy, xx = np.nonzero(good)
    design = np.stack([np.ones_like(xx), xx, yy], 1).astype(float)
    coef, *_ = np.linalg.lstsq(design, rest[good], rcond=None)
    plane = design @ coef
    pixel = rest[good] - plane
    return (float(np.std(logs[good])), float(np.std(columns)), float(np.std(rows)),
            float(np.std(plane)), float(np.std(pixel)))


def line_limit(counts):
    """The lines' Poisson std: over the lines that hold any counts (a line all under gold
    is not estimable and not in the map's statistics)."""
    columns, rows = counts.sum(0), counts.sum(1)
    return float(np.sqrt(np.mean(1 / columns[columns > 0]) + np.mean(1 / rows[rows > 0])))


def forced_target(level):
    """Make the thinning's level ``level`` counts a pixel (None: the estimator's own)."""
    if level is None:
        thinning._thinning_target = OWN_TARGET
    else:
        thinning._thinning_target = lambda model, dim: float(level)


def run_case(gain, shape, frames, spec, seeds, folder):
    render_seed, frame_seed = seeds
    image = render_specimen(spec, shape, render_seed, margin=frames + 1)
    movie = simulate_frames(shape, frames, gain.gain, dose=1.0, mode='counting',
                            rng=frame_seed, specimen=image.image, drift=0.5)
    movie = np.stack(list(movie))
    path = os.path.join(folder, 'movie.mrc')
    write_movie(path, movie, shape=shape, n_frames=frames)
    truth = gain.correction
    result = estimate_gain([path], EstimatorSettings(method='robust'), gain_reference=truth)
    good = ~result.defects
    stats = map_statistics(result.gain, mask=good)
    final = parts(np.log(np.maximum(result.gain.astype(float), 1e-6)), good)
    counts = movie.sum(0).astype(np.float64)
    total = result.frame_sum
    flat, equalized, _, dim = flattened_sums(total, counts.astype(np.int32))
    stage, defects = correction_from_sums(flat, equalized)
    keep = ~defects & ~dim
    stage3 = parts(np.log(np.maximum(stage.astype(float), 1e-6)), keep)
    model, _ = specimen_model(total)
    target = thinning._thinning_target(model, dim)
    kept = np.where(dim, 0.0, counts * np.minimum(1.0, target / np.maximum(model[:], 1e-9)))
    return {'std': stats['statistics']['std'], 'flagged': bool(stats['flagged']),
            'final': final, 'stage3': stage3, 'limit': line_limit(np.where(good, counts, 0)),
            'thinned': line_limit(kept), 'target': target,
            'level': float(np.median(counts))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument('--frames', type=int, default=20)
    parser.add_argument('--seeds', default='3,4')
    parser.add_argument('--cases', default=','.join(CASES))
    parser.add_argument('--twin-target', action='store_true',
                        help='also run the no-edge movie thinned to each edge movie\'s level')
    args = parser.parse_args(argv)
    shape = (args.size, args.size)
    print('| seed | case | residual std (x none) | flag | final: col / row / plane / pixel '
          '| stage 3: total / col / row | count limit | thinned limit (target) |')
    print('|---|---|---|---|---|---|---|---|')
    with tempfile.TemporaryDirectory() as folder:
        for seed in [int(s) for s in args.seeds.split(',')]:
            gain, _ = session_gain(Session(args.size, args.frames, movies=1), seed, 'patterned')
            base = Specimen(ice=0.15, ice_tilt=0.9, ice_angle=40.0 + 50 * seed,
                            particle_density=0.1)
            reference = None
            for name in args.cases.split(','):
                spec = replace(base, **CASES[name])
                row = run_case(gain, shape, args.frames, spec, (seed * 11 + 1, seed * 11 + 2),
                               folder)
                reference = reference or row['std']
                _print(seed, name, row, reference)
                if args.twin_target and name != 'none':
                    forced_target(row['target'])
                    twin = run_case(gain, shape, args.frames, base, (seed * 11 + 1, seed * 11 + 2),
                                    folder)
                    forced_target(None)
                    _print(seed, f"none thinned to {row['target']:.1f}", twin, reference)


def _print(seed, name, row, reference):
    f, s = row['final'], row['stage3']
    print(f"| {seed} | {name} | {row['std']:.4f} ({row['std'] / reference:.2f}x) | "
          f"{'F' if row['flagged'] else '-'} | {f[1]:.4f} / {f[2]:.4f} / {f[3]:.4f} / "
          f"{f[4]:.4f} | {s[0]:.4f} / {s[1]:.4f} / {s[2]:.4f} | {row['limit']:.4f} | "
          f"{row['thinned']:.4f} ({row['target']:.1f}) |", flush=True)


if __name__ == '__main__':
    main()
