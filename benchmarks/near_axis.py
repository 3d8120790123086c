"""Gold foil and carbon edges within a few degrees of a pixel axis, judged with the exact
reference and with errors the verdict must still find.

Each movie: the detector of :mod:`part_frame` (4 readout sectors of 256 columns at 1024,
sector spread 6 %) and one specimen with an edge near a pixel axis, drawn per seed:

* the edge: nearly opaque gold foil (transmission 0.02 to 0.3, log-uniform) or carbon
  (0.6 to 0.9), in alternate movies;
* its direction: 0.1 to 5 degrees (log-uniform, either sign) off the row axis (an edge
  along the rows: its remains are a row feature) or off the column axis, in alternate
  pairs of movies;
* its position: 10 % to 90 % of the frame under the foil or carbon;
* straight (half the movies) or slightly curved (curvature 0.02 to 0.15 of
  :class:`Specimen`'s scale: a sagitta of 0.5 % to 4 % of the frame);
* around it: ice (2 % to 15 % peak to peak, a random field with a gradient) and particles
  (2 % to 30 % of the area).

20 frames at 1 e/px/frame drifting 0.5 px per frame, raw counts summed and multiplied by
the reference; the sum goes through the verdict's own judgement of a sum
(``analysis._judge`` via :func:`detection_limit.judged_sum`: defect test, assessment with
the reference's readout boundaries, verdict at the movie's dose). Errors: ``exact`` (no
error: every flag is a false alarm), ``columns`` / ``rows`` (a column or row pattern of
RMS ``size`` in half of one readout sector: its 256 columns, the upper or lower half of the
rows; :func:`part_frame.half_sector_error`),
``frame_columns`` (a column pattern over the whole frame).

    python benchmarks/near_axis.py --movies 40 --errors exact
    python benchmarks/near_axis.py --movies 20 --errors columns,rows,frame_columns --size 0.02,0.03
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detection_limit import judged_sum  # noqa: E402
from part_frame import detector_of, half_sector_error  # noqa: E402

from scipion_gain.estimator.analysis import AnalysisSettings  # noqa: E402
from scipion_gain.simulate import Specimen, render_specimen, simulate_frames  # noqa: E402


def near_axis_specimen(seed):
    """(Specimen, description) of movie ``seed``: see the module's docstring."""
    rng = np.random.default_rng(seed + 4242)
    gold = seed % 2 == 0
    along_rows = (seed // 2) % 2 == 0
    offset = float(np.exp(rng.uniform(np.log(0.1), np.log(5.0))) * rng.choice([-1, 1]))
    # carbon_angle is the direction of the edge's normal: 90 (or 270) puts the edge
    # along the rows, 0 (or 180) along the columns
    normal = (90.0 if along_rows else 0.0) + float(rng.choice([0, 180]))
    transmission = (float(np.exp(rng.uniform(np.log(0.02), np.log(0.3)))) if gold
                    else float(rng.uniform(0.6, 0.9)))
    curvature = 0.0 if rng.uniform() < 0.5 else float(rng.uniform(0.02, 0.15) *
                                                       rng.choice([-1, 1]))
    spec = Specimen(ice=float(rng.uniform(0.02, 0.15)), ice_tilt=float(rng.uniform(0, 1)),
                    ice_angle=float(rng.uniform(0, 360)),
                    particle_density=float(rng.uniform(0.02, 0.3)),
                    carbon=float(rng.uniform(0.1, 0.9)), carbon_angle=normal + offset,
                    carbon_curvature=curvature, carbon_transmission=transmission)
    return spec, {'edge': 'gold' if gold else 'carbon',
                  'axis': 'rows' if along_rows else 'columns', 'offset': round(offset, 3),
                  'T': round(transmission, 3), 'curvature': round(curvature, 3),
                  'covered': round(spec.carbon, 2)}


def near_axis_sum(shape, frames, seed, detector):
    """The raw counts of movie ``seed`` summed over its frames (float64) and its description."""
    spec, description = near_axis_specimen(seed)
    image = render_specimen(spec, shape, seed + 1, margin=int(frames))
    total = next(simulate_frames(shape, frames, detector.gain, dose=1.0, rng=seed + 2,
                                 specimen=image.image, summed=True, drift=0.5))
    return total.astype(np.float64), description


def movie_error(shape, seed, kind, size):
    """log of the error of ``kind`` (None for ``exact``) and its box."""
    if kind == 'exact':
        return None, None
    if kind == 'rows':   # a row pattern over the box of the half-sector column pattern
        error, box = half_sector_error(shape, seed, 'step', size)
        r0, r1, c0, c1 = box
        values = np.random.default_rng(seed + 77).standard_normal(r1 - r0)
        error[:] = 0.0
        error[r0:r1, c0:c1] = ((values - values.mean()) / values.std() * size)[:, None]
        return error, box
    return half_sector_error(shape, seed, kind, size)


RIGHT = {'columns': 'columns', 'frame_columns': 'columns', 'rows': 'rows'}


def records(shape, frames, seed, tries, settings):
    detector, correction = detector_of(shape, seed)
    raw, description = near_axis_sum(shape, frames, seed, detector)
    electrons = float(raw.mean())
    for kind, size in tries:
        error, box = movie_error(shape, seed, kind, size)
        reference = correction if error is None else correction * np.exp(-error)
        report = judged_sum(raw * reference, reference, electrons, settings)
        found = [c for c in report['assessment']['components'] if c['found']]
        yield {'seed': seed, **description, 'error': kind, 'size': size, 'box': box,
               'flagged': bool(found), 'verdict': bool(report['verdict']['flagged']),
               'right': any(c['name'] == RIGHT.get(kind) for c in found),
               'found': [[c['name'], round(float(c['size']), 4), round(float(c['z']), 1),
                          c.get('where')] for c in found],
               # the drift test of a found line pattern (z, and the lines it left out)
               'drift': {c['name']: round(float(c['drift_z']), 1)
                         for c in report['assessment']['components'] if 'drift_z' in c},
               'moving': {c['name']: [f['lines'] for f in c['specimen_lines']]
                          for c in report['assessment']['components']
                          if c.get('specimen_lines')}}


def summary(rows, kinds):
    for kind, size in kinds:
        these = [r for r in rows if r['error'] == kind and r['size'] == size]
        if kind == 'exact':
            bad = [r for r in these if r['flagged']]
            print(f"exact: flagged {len(bad)} of {len(these)}"
                  + (" (" + "; ".join(f"{r['seed']} {r['edge']} T {r['T']} {r['axis']} "
                                      f"{r['offset']:+g} deg" for r in bad) + ")" if bad else ''),
                  file=sys.stderr)
            continue
        right = [r for r in these if r['right']]
        extent = [r for r in right if any(f[3] for f in r['found'] if f[0] == RIGHT[kind])]
        missed = [r for r in these if not r['right']]
        print(f"{kind} {100 * size:g} %: found {len(right)} of {len(these)}, extent given "
              f"for {len(extent)}" + (" (missed: " + "; ".join(
                  f"{r['seed']} {r['edge']} T {r['T']} {r['axis']}" for r in missed) + ")"
                  if missed else ''), file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--movies', type=int, default=40)
    parser.add_argument('--first-seed', type=int, default=1000)
    parser.add_argument('--errors', default='exact')
    parser.add_argument('--size', default='0.03')
    parser.add_argument('--shape', type=int, default=1024)
    parser.add_argument('--frames', type=int, default=20)
    parser.add_argument('--json', help='write every movie as a JSON line here too')
    args = parser.parse_args(argv)
    shape = (args.shape, args.shape)
    sizes = [float(v) for v in args.size.split(',')]
    tries = [(kind, size) for kind in args.errors.split(',')
             for size in ([0.0] if kind == 'exact' else sizes)]
    settings = AnalysisSettings()
    rows, start = [], time.time()
    for seed in range(args.first_seed, args.first_seed + args.movies):
        for record in records(shape, args.frames, seed, tries, settings):
            rows.append(record)
            print(json.dumps(record), flush=True)
    if args.json:
        with open(args.json, 'w') as out:
            out.write('\n'.join(json.dumps(r) for r in rows) + '\n')
    print(f"\n{args.shape} x {args.shape} x {args.frames} frames, 1 e/px/frame, "
          f"{args.movies} movies ({time.time() - start:.0f} s, load {os.getloadavg()[0]:.1f})",
          file=sys.stderr)
    summary(rows, tries)


if __name__ == '__main__':
    main()
