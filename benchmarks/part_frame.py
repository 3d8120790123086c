"""Errors confined to part of the frame, and the exact reference, on hard specimens.

Each movie: a structured gain (``--detector``: by default 4 readout sectors of
256 columns at 1024, sector spread 6 %; see DETECTORS), a specimen of one kind,
20 frames at 1 e/px/frame drifting
0.5 px per frame, raw counts summed and multiplied by the reference. The
reference is the exact correction, or the correction off by an error confined
to half a readout sector (the sector's columns, the upper or lower half of the
rows): a ``step`` (the sector's level off by ``size``) or a ``columns``
pattern (RMS ``size``). The sum goes to the assessment and the verdict's
decision (``estimator.assessment.assess`` with the reference's readout
boundaries; flagged = a component found), not through the estimator's maps:
the verdict on a movie is taken on this sum (``analysis._judge``).
``--input precorrected``: the same frames corrected at acquisition with that
reference (each frame times the reference, the movie alone given): the same
sum, judged without the reference's readout boundaries (frames whose factors
cannot be recovered: rounded to integers, integrating). ``--input lattice``:
the same pre-corrected float frames as the lattice stage reads them
(``estimator/stages/lattice.py``): it recovers the applied factors, each pixel's
where it saw a count and its neighbours' where it saw none
(:func:`lattice_reference`), and the readout boundaries are the recovered
reference's, as ``analyse`` takes them.

Specimen kinds (cycled over the movies): ``random`` (``random_specimen``),
``carbon_axis`` (a carbon edge within 3 degrees of a pixel axis, 0.5 to 0.85
transmission), ``gold_axis`` (nearly opaque foil, 3 % transmission, within 3
degrees of an axis), ``crowded`` (60 % of the area under particles),
``blobs`` (ice at 20 % in blobs a seventh of the frame across), ``ramp`` (an
ice-thickness ramp of 20 %).

    python benchmarks/part_frame.py --movies 20 --errors columns,step,exact --size 0.03
    python benchmarks/part_frame.py --movies 5 --errors frame_columns --size 0.0025,0.005,0.01
    python benchmarks/part_frame.py --movies 20 --errors columns,step,exact --input raw,precorrected
    python benchmarks/part_frame.py --movies 20 --detector unequal --input raw,precorrected
    python benchmarks/part_frame.py --movies 20 --detector unequal --input raw,lattice
"""
import argparse
import json
import sys
import time

import numpy as np

from scipion_gain.estimator.assessment import assess
from scipion_gain.estimator.readout import reference_boundaries
from scipion_gain.simulate import (Specimen, random_specimen, render_specimen, simulate_frames,
                                   simulate_gain)

KINDS = ('random', 'carbon_axis', 'gold_axis', 'crowded', 'blobs', 'ramp')


def specimen_for(seed, kind):
    rng = np.random.default_rng(seed)
    if kind == 'random':
        return random_specimen(seed)
    if kind in ('carbon_axis', 'gold_axis'):
        angle = float(rng.choice([0, 90, 180, 270]) + rng.uniform(-3, 3))
        transmission = 0.03 if kind == 'gold_axis' else float(rng.uniform(0.5, 0.85))
        return Specimen(ice=0.05, particle_density=0.1, carbon=float(rng.uniform(0.1, 0.5)),
                        carbon_angle=angle, carbon_transmission=transmission)
    if kind == 'crowded':
        return Specimen(ice=0.1, particle_density=0.6, particle_radius=0.01, contrast=0.12)
    if kind == 'blobs':
        return Specimen(ice=0.2, ice_scale=0.15, ice_tilt=0.0, particle_density=0.05)
    if kind == 'ramp':
        return Specimen(ice=0.2, ice_tilt=1.0, ice_angle=float(rng.uniform(0, 360)),
                        particle_density=0.1)
    raise ValueError(kind)


def half_sector_error(shape, seed, kind, size, sectors=4):
    """log of the error and its box (rows r0-r1, columns c0-c1, end excluded).

    ``step`` / ``columns``: in half of one readout sector; ``sector_step``: the
    whole sector's level off; ``frame_columns``: a column pattern over the whole
    frame (the cases the whole-frame tests were built for, for comparison).
    ``sectors``: how many equal sectors, or the detector's own sector edges (its
    ``sector_edges``: first column of each sector and the width), for sectors of
    unequal width.
    """
    rng = np.random.default_rng(seed + 999)
    rows, cols = shape
    if np.ndim(sectors):
        edges = [int(e) for e in sectors]
        which = int(rng.integers(0, len(edges) - 1))
        c0, c1 = edges[which], edges[which + 1]
    else:
        which = int(rng.integers(0, sectors))
        c0, c1 = which * cols // sectors, (which + 1) * cols // sectors
    r0, r1 = (rows // 2, rows) if rng.integers(0, 2) else (0, rows // 2)
    if kind == 'sector_step':
        kind, r0, r1 = 'step', 0, rows
    elif kind == 'frame_columns':
        kind, r0, r1, c0, c1 = 'columns', 0, rows, 0, cols
    error = np.zeros(shape)
    if kind == 'step':
        error[r0:r1, c0:c1] = np.log1p((1 if rng.uniform() < .5 else -1) * size)
    elif kind == 'columns':
        values = rng.standard_normal(c1 - c0)
        error[r0:r1, c0:c1] = ((values - values.mean()) / values.std() * size)[None, :]
    return error, [r0, r1, c0, c1]


#: the simulated detectors: 'benchmark' (4 sectors, their steps well above the 2 % column
#: pattern), 'patterned' (8 sectors whose 3 % steps are no larger than the reference's own
#: 3 % column pattern, 1.5 % rows, 10 % pixel texture: boundaries hard to see in it),
#: 'unequal' (the same, its 8 sectors of unequal width, each at least half the mean: the
#: boundaries at any column, not at multiples of the width / 8), 'narrow' (the same, each
#: sector at least a quarter of the mean width: 32 of 1024 columns)
DETECTORS = {'benchmark': dict(sectors=4, sector_spread=0.06),
             'patterned': dict(sectors=8, sector_spread=0.03, column_spread=0.03,
                               row_spread=0.015, pixel_scatter=0.02, texture=0.1),
             'unequal': dict(sectors=8, sector_spread=0.03, column_spread=0.03,
                             row_spread=0.015, pixel_scatter=0.02, texture=0.1,
                             unequal_sectors=0.5),
             'narrow': dict(sectors=8, sector_spread=0.03, column_spread=0.03,
                            row_spread=0.015, pixel_scatter=0.02, texture=0.1,
                            unequal_sectors=0.25)}


def detector_of(shape, seed, detector='benchmark'):
    """(the simulated detector, its exact correction: multiplies raw frames, mean 1)."""
    detector = simulate_gain(shape, rng=seed, **DETECTORS[detector])
    correction = 1.0 / np.where(detector.gain > 0, detector.gain, 1.0)
    return detector, correction / correction.mean()


def raw_sum(shape, frames, seed, kind, detector):
    """The raw counts of a movie summed over its frames (1 e/px/frame, drift 0.5 px/frame),
    a specimen of ``kind`` (:func:`specimen_for`) through ``detector``'s gain."""
    image = render_specimen(specimen_for(seed, kind), shape, seed + 1, margin=int(frames))
    return next(simulate_frames(shape, frames, detector.gain, dose=1.0, rng=seed + 2,
                                specimen=image.image, summed=True, drift=0.5))


def lattice_reference(raw, reference, neighbourhood=12):
    """The reference the lattice stage recovers from frames corrected at acquisition with
    ``reference`` (``stages.lattice.recover_factors``): a pixel's applied factor wherever it
    recorded a count (a value is a whole number of counts times it), the geometric mean of
    its neighbours' over a ``neighbourhood``-pixel box where it recorded none (under gold
    foil, most pixels)."""
    from scipion_gain.estimator.filters import masked_box_mean
    seen = raw > 0
    neighbours, _ = masked_box_mean(np.log(reference), seen, neighbourhood)
    return np.where(seen, reference, np.exp(neighbours))


def boundaries_for(source, raw, reference):
    """The readout boundaries the analysis has for an input ``source``: the reference's
    (raw frames given with it), the lattice's recovered reference's (pre-corrected float
    frames), or none (pre-corrected frames whose factors are lost)."""
    if source == 'raw':
        return reference_boundaries(reference)
    if source == 'lattice':
        return reference_boundaries(lattice_reference(raw, reference))
    return None


def one_movie(shape, frames, seed, kind, error_kind, size, inputs=('raw',), detector='benchmark'):
    detector, correction = detector_of(shape, seed, detector)
    error, box = (None, None) if error_kind == 'exact' else \
        half_sector_error(shape, seed, error_kind, size, detector.sector_edges)
    reference = correction * (np.exp(-error) if error is not None else 1.0)
    total = raw_sum(shape, frames, seed, kind, detector)
    corrected = total.astype(np.float64) * reference
    records = []
    for source in inputs:
        # pre-corrected frames: the same sum (each frame times the reference)
        boundaries = boundaries_for(source, total, reference)
        assessment, _ = assess(corrected, ~detector.dead, boundaries=boundaries)
        found = [c for c in assessment['components'] if c['found']]
        records.append({'seed': seed, 'specimen': kind, 'error': error_kind, 'size': size,
                        'input': source, 'box': box, 'flagged': bool(found),
                        'found': [[c['name'], round(c['size'], 4), round(c['z'], 1),
                                   c.get('where')] for c in found]})
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--movies', type=int, default=20)
    parser.add_argument('--first-seed', type=int, default=100)
    parser.add_argument('--errors', default='columns,step,exact')
    parser.add_argument('--size', default='0.03',
                        help='relative size, or several separated by commas (one run each)')
    parser.add_argument('--shape', type=int, default=1024)
    parser.add_argument('--frames', type=int, default=20)
    parser.add_argument('--input', default='raw',
                        help="raw (frames and the reference), precorrected (frames corrected "
                             "at acquisition, no reference), lattice (the same, the factors "
                             "recovered by the lattice stage), several separated by commas")
    parser.add_argument('--json', help='write every movie as a JSON line here too')
    parser.add_argument('--detector', choices=sorted(DETECTORS), default='benchmark',
                        help='the simulated detector (DETECTORS); errors lie in its own sectors')
    args = parser.parse_args(argv)
    shape = (args.shape, args.shape)
    records = []
    start = time.time()
    sizes = [float(v) for v in str(args.size).split(',')]
    errors = args.errors.split(',')
    inputs = args.input.split(',')
    for seed in range(args.first_seed, args.first_seed + args.movies):
        kind = KINDS[seed % len(KINDS)]
        for error_kind in errors:
            for size in ([0.0] if error_kind == 'exact' else sizes):
                for record in one_movie(shape, args.frames, seed, kind, error_kind, size,
                                        inputs, args.detector):
                    records.append(record)
                    print(json.dumps(record), flush=True)
    if args.json:
        with open(args.json, 'w') as out:
            out.write('\n'.join(json.dumps(r) for r in records) + '\n')
    print(f"\n{args.shape} x {args.shape} x {args.frames} frames, 1 e/px/frame, "
          f"{args.movies} movies ({time.time() - start:.0f} s)", file=sys.stderr)
    for source, error_kind in ((s, e) for s in inputs for e in errors):
        for size in ([0.0] if error_kind == 'exact' else sizes):
            these = [r for r in records if r['error'] == error_kind and r['size'] == size
                     and r['input'] == source]
            flagged = [r for r in these if r['flagged']]
            extent = [r for r in flagged if any(f[3] for f in r['found'])]
            print(f"{source} {error_kind} {100 * size:g} %: flagged {len(flagged)} of {len(these)}"
                  + (f", extent given for {len(extent)}" if error_kind != 'exact' else '')
                  + (f" (specimens: {', '.join(r['specimen'] for r in flagged)})"
                     if error_kind == 'exact' and flagged else ''), file=sys.stderr)


if __name__ == '__main__':
    main()
