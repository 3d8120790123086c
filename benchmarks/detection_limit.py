"""The detection limit of the verdict's tests, beside the Poisson limit of each.

Per movie (``movies``): the simulation of :mod:`part_frame` (a structured
gain with 4 readout sectors, one specimen per movie cycling through carbon
edges and nearly opaque gold foil within 3 degrees of a pixel axis, crowded
particles, crystalline-ice blobs, thick-ice ramps and ``random_specimen``;
Poisson counts at 1 e/px/frame, drift 0.5 px per frame). Each movie's raw sum
is simulated once and multiplied by every reference tried (the exact
correction, or the correction off by one error of one size), so the sizes of
one kind are compared on the same counts. Errors:

* ``columns``: a column pattern over the whole frame (relative RMS ``size``);
* ``rows``: the same along rows;
* ``sector_step``: one readout sector's level off by ``size`` over its whole length;
* ``half_step``: the same in the upper or lower half of the sector's rows only;
* ``half_columns``: a column pattern (relative RMS ``size``) in the upper or lower half
  of one readout sector's rows, over that sector's columns;
* ``exact``: no error (false alarms).

The sum goes through the verdict's own judgement of a sum
(``analysis._judge``: defect test, assessment with the reference's readout
boundaries, verdict at the movie's dose), not through the estimator's maps;
``--input lattice``: the same sums as pre-corrected float frames, judged with the
reference the lattice stage recovers (:func:`part_frame.lattice_reference`) and its
readout boundaries, as ``analyse`` does. ``found``: the assessment found any component; ``right``: it found the kind
simulated (columns, rows, or a step); ``verdict``: the verdict flagged the
movie (found and costing at least 0.1 % of the DQE).

Per session (``sessions``): one detector, movies of different specimens
(as above); the reference off by a smooth field (``smooth``: a smooth random
field correlated over a quarter of the frame, RMS ``size``) or a pixel
texture (``pixels``: white, RMS ``size``), or by one of the movies' errors
(``--errors``: ``half_step``, ``half_columns``, ``sector_step``, ...: one box per
session, the same in all its movies), or exact. The movies' corrected
sums go into a :class:`GainAccumulator` (its tiles and its two halves, as the
estimator adds them) and the session is judged by ``analyse_accumulated``.
The pool of movies is cut into disjoint sessions of each count where it holds
enough (e.g. 4 of 10 and 3 of 30 from 100 movies, and one of 100).

    python benchmarks/detection_limit.py movies --shape 1024 --frames 20 --movies 20 \\
        --errors columns,rows --sizes 0.003,0.004,0.005 --json out.jsonl
    python benchmarks/detection_limit.py sessions --shape 512 --frames 20 --pool 100 \\
        --counts 10,30,100 --smooth 0.005,0.01 --pixels 0.005,0.01 --json out.jsonl
    python benchmarks/detection_limit.py sessions --shape 512 --frames 20 --pool 30 \\
        --counts 3,5,10 --smooth '' --pixels '' \\
        --errors half_step:0.03,half_columns:0.03,sector_step:0.03 --json out.jsonl
    python benchmarks/detection_limit.py boundaries --shape 1024 --references 40 --json b.jsonl
    python benchmarks/detection_limit.py table out.jsonl [more.jsonl ...]
"""
import argparse
import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from part_frame import (DETECTORS, KINDS, detector_of, half_sector_error,  # noqa: E402
                        lattice_reference, raw_sum)

from scipion_gain.estimator.analysis import AnalysisSettings, _judge, analyse_accumulated  # noqa
from scipion_gain.estimator.band_profiles import step_template  # noqa: E402
from scipion_gain.estimator.gain import GainAccumulator  # noqa: E402
from scipion_gain.estimator.readout import reference_boundaries  # noqa: E402
from scipion_gain.estimator.session import TILE  # noqa: E402
from scipion_gain.simulate import smooth_field  # noqa: E402

#: the components that count as finding each kind of error
RIGHT = {'columns': {'columns'}, 'rows': {'rows'}, 'sector_step': {'sectors'},
         'half_step': {'sectors', 'row_steps'}, 'half_columns': {'columns'},
         'smooth': {'smooth'}, 'pixels': {'pixels'},
         'exact': set()}
WORDS = {'columns': 'column pattern, whole frame', 'rows': 'row pattern, whole frame',
         'sector_step': 'step between sectors, whole length',
         'half_step': 'step in half a sector', 'half_columns': 'column pattern in half a sector',
         'exact': 'exact reference',
         'smooth': 'smooth field', 'pixels': 'pixel texture'}


def movie_error(shape, seed, kind, size, sectors=4):
    """(log of a per-movie error, its box) (:func:`part_frame.half_sector_error`;
    ``rows`` is the column pattern transposed), or (None, None) for ``exact``;
    ``sectors``: a count of equal sectors or the detector's sector edges."""
    if kind == 'exact':
        return None, None
    if kind == 'rows':
        error, _ = half_sector_error(shape[::-1], seed, 'frame_columns', size)
        return error.T, [0, shape[0], 0, shape[1]]
    name = {'columns': 'frame_columns', 'sector_step': 'sector_step', 'half_step': 'step',
            'half_columns': 'columns'}[kind]
    return half_sector_error(shape, seed, name, size, sectors)


def judged_sum(total, reference, electrons, settings):
    """The verdict's judgement of one corrected sum (as ``analyse`` makes it of a movie)."""
    no_signal = ~(total > 0)
    sums = SimpleNamespace(gain=np.ones(total.shape, np.float32), defects=no_signal,
                           frame_sum=total)
    analysis = _judge(sums, reference, settings, {'kind': 'residual'}, electrons)
    return analysis.report


def outcome(report, kind):
    found = [c for c in report['assessment']['components'] if c['found']]
    return {'found': bool(found), 'right': any(c['name'] in RIGHT[kind] for c in found),
            'verdict': bool(report['verdict']['flagged']),
            'components': [[c['name'], round(float(c['size']), 5), round(float(c['z']), 1),
                            c.get('where')] for c in found]}


def movie_records(shape, frames, seed, tries, settings, cache=None, kind_of='benchmark',
                  inputs=('raw',)):
    """Every (kind, size) of ``tries`` judged on one movie's counts (kept in the folder
    ``cache``, if given, for a later run: a 4096 x 4096 x 40 movie takes minutes);
    ``kind_of``: the detector (:data:`part_frame.DETECTORS`); ``inputs``: 'raw' (raw
    frames and the reference), 'lattice' (frames corrected at acquisition with it: the same
    sum, judged with the reference the lattice stage recovers,
    :func:`part_frame.lattice_reference`)."""
    specimen = KINDS[seed % len(KINDS)]
    detector, correction = detector_of(shape, seed, kind_of)
    sectors = detector.sector_edges   # the errors in a sector lie in one of its own
    suffix = '' if kind_of == 'benchmark' else f"_{kind_of}"
    path = cache and os.path.join(cache, f"raw_{shape[0]}x{shape[1]}x{frames}_{seed}{suffix}.npy")
    if path and os.path.exists(path):
        raw = np.load(path).astype(np.float64)
    else:
        raw = raw_sum(shape, frames, seed, specimen, detector).astype(np.float64)
        if path:
            np.save(path, raw.astype(np.float32))
    electrons = float(raw.mean())
    for kind, size in tries:
        error, box = movie_error(shape, seed, kind, size, sectors)
        reference = correction if error is None else correction * np.exp(-error)
        for source in inputs:
            start = time.time()
            given = reference if source == 'raw' else lattice_reference(raw, reference)
            report = judged_sum(raw * reference, given, electrons, settings)
            yield dict(test='movie', shape=list(shape), frames=frames, seed=seed,
                       specimen=specimen, detector=kind_of, error=kind, size=size,
                       seconds=round(time.time() - start, 2), box=box,
                       sector_edges=list(sectors), input=source,
                       boundaries=[int(b) for b in
                                   report['assessment']['boundaries'].get('columns', [])],
                       **outcome(report, kind))


def session_error(shape, kind, size, seed, sectors=4):
    """log of a session's error: a smooth field or a pixel texture (of RMS ``size``), or one
    of the line errors of :func:`movie_error` in the detector's ``sectors``; None: exact."""
    if kind == 'exact':
        return None
    if kind not in ('smooth', 'pixels'):
        return movie_error(shape, seed, kind, size, sectors)[0]
    rng = np.random.default_rng(seed)
    if kind == 'smooth':
        return size * smooth_field(shape, shape[0] / 4, rng).astype(np.float64)
    values = rng.standard_normal(shape)
    return size * (values - values.mean()) / values.std()


def session_members(pool, counts):
    """Disjoint sessions of each count, from a pool of ``pool`` movies: {count: [ranges]}."""
    return {count: [range(first, first + count) for first in range(0, pool - count + 1, count)]
            for count in counts}


def session_report(raws, members, reference, frames, settings):
    accumulator = GainAccumulator()
    for index in members:
        total = raws[index] * reference
        result = SimpleNamespace(
            numerator=total, denominator=np.full(total.shape, float(total.mean())),
            frame_sum=total, defects=~(total > 0), frames=frames, unusable=None,
            electrons=float(raws[index].mean()), settings=SimpleNamespace(method='sme'))
        accumulator.add(result, member=int(index))
    return analyse_accumulated(accumulator, reference, settings).report


def session_records(shape, frames, pool, counts, tries, settings, first_seed=500):
    detector, correction = detector_of(shape, first_seed)
    start = time.time()
    raws = [raw_sum(shape, frames, first_seed + i, KINDS[i % len(KINDS)], detector)
            .astype(np.float32) for i in range(pool)]
    print(f"# {pool} movies simulated in {time.time() - start:.0f} s", file=sys.stderr)
    for count, sessions in session_members(pool, counts).items():
        for number, members in enumerate(sessions):
            for kind, size in tries:
                error = session_error(shape, kind, size, first_seed + 7 * number + count,
                                      detector.sector_edges)
                reference = correction if error is None else correction * np.exp(-error)
                begin = time.time()
                report = session_report(raws, members, reference, frames, settings)
                record = dict(test='session', shape=list(shape), frames=frames,
                              movies=count, session=number, error=kind, size=size,
                              seconds=round(time.time() - begin, 2), **outcome(report, kind))
                for c in report['assessment']['components']:
                    if c['name'] in ('smooth', 'pixels'):
                        record[c['name']] = [round(float(c['size']), 5), round(float(c['z']), 1)]
                yield record


# ------------------------------------------------------------------ readout boundaries
def boundary_record(shape, seed, kind_of):
    """Does the exact reference of one simulated detector give its readout boundaries?
    Each true column boundary (its sector step's size) found within its reach or not, and
    the boundaries found where none is (columns and rows)."""
    detector, correction = detector_of(shape, seed, kind_of)
    found = reference_boundaries(correction)
    true = [int(e) for e in detector.sector_edges[1:-1]]
    steps = np.abs(np.diff(np.log(detector.components['sectors'][0])))
    hit = [any(abs(int(b) - line) <= b.reach for b in found[0]) for line in true]
    false = [int(b) for b in found[0] if not any(abs(int(b) - line) <= b.reach for line in true)]
    return dict(test='boundaries', shape=list(shape), seed=seed, detector=kind_of, true=true,
                steps=[round(float(steps[line - 1]), 4) for line in true], found=hit,
                false_columns=false, false_rows=[int(b) for b in found[1]],
                reaches=[int(b.reach) for b in found[0]])


def boundary_table(records, edges=(0.0, 0.01, 0.02, 0.03, 0.05, 1.0)):
    """Markdown rows: per detector, true boundaries found of those whose sector step lies in
    each range, false boundaries (columns, rows) per reference."""
    lines = ['| detector, references | ' + ' | '.join(
        f"step {100 * a:g}-{100 * b:g} %" if b < 1 else f"step >= {100 * a:g} %"
        for a, b in zip(edges, edges[1:])) + ' | false boundaries (columns / rows) |',
        '|---' * (len(edges) + 1) + '|']
    for detector in sorted({r['detector'] for r in records}):
        rows = [r for r in records if r['detector'] == detector]
        cells = []
        for a, b in zip(edges, edges[1:]):
            pairs = [h for r in rows for h, s in zip(r['found'], r['steps']) if a <= s < b]
            cells.append(f"{sum(pairs)} of {len(pairs)}")
        false = (sum(len(r['false_columns']) for r in rows), sum(len(r['false_rows']) for r in rows))
        lines.append(f"| {detector}, {len(rows)} x {rows[0]['shape'][0]} | " + ' | '.join(cells)
                     + f" | {false[0]} / {false[1]} |")
    return '\n'.join(lines)


# ------------------------------------------------------------------ Poisson limits
def pattern_limit(along, lines, electrons, z):
    """RMS a of a line pattern found at ``z``: a >= sigma (z sqrt(2 / C))^(1/2), sigma =
    1 / sqrt(R F dose); ``along``: pixels averaged per line (R), ``lines``: C."""
    sigma = 1.0 / np.sqrt(along * electrons)
    return sigma * np.sqrt(z * np.sqrt(2.0 / lines))


def step_limit(along, electrons, z, width):
    """Height of a step found at ``z`` by the matched filter of a step high-passed over
    ``width`` lines: the least-squares height's error sigma / sqrt(sum template^2), with
    sigma = 1 / sqrt(R F dose) per line (about a two-sided mean over width / 2 lines)."""
    _, template = step_template(width)
    return z / np.sqrt(along * electrons) / np.sqrt(float(np.sum(template ** 2)))


def pixel_limit(movies, frames, pixels, z):
    """RMS of a pixel texture whose two halves' cross product stands at ``z``: each half's
    per-pixel noise s = 1 / sqrt(movies F dose / 2); a >= s (z / sqrt(P))^(1/2)."""
    s = 1.0 / np.sqrt(movies * frames / 2.0)
    return s * np.sqrt(z / np.sqrt(pixels))


def smooth_limit(movies, frames, side, z):
    """RMS of a smooth field found at ``z`` from the halves' median tile maps: each half's
    tile noise 1.2533 / sqrt(T^2 F dose movies / 2) (a median), K tiles."""
    tiles = (side // TILE) ** 2
    s = 1.2533 / np.sqrt(TILE ** 2 * frames * movies / 2.0)
    return s * np.sqrt(z / np.sqrt(tiles))


def limit_of(record, settings):
    a, t = settings.assessment, settings.session
    side, frames = record['shape'][0], record['frames']
    # 1 e/px/frame; a session's line tests see all its movies' electrons
    electrons = frames * record.get('movies', 1)
    kind = record['error']
    if kind in ('columns', 'rows'):
        return pattern_limit(side, side, electrons, a.z), f"z {a.z:g}, R = C = {side}"
    if kind == 'half_columns':
        lines = side // 8
        return (pattern_limit(side // 2, lines, electrons, a.z),
                f"z {a.z:g} over the sector's lines, R = {side // 2}, C = {lines} (a sector "
                f"of the mean width)")
    if kind in ('sector_step', 'half_step'):
        along = side if kind == 'sector_step' else side // 2
        width = max(a.highpass)
        return (step_limit(along, electrons, a.boundary_step_z, width),
                f"z {a.boundary_step_z:g} at a boundary, filter {width} lines, R = {along}; "
                f"{100 * step_limit(along, electrons, a.boundary_step_z, 33):.2f} % "
                f"with the 33-line filter")
    if kind == 'pixels':
        value = pixel_limit(record['movies'], frames, side * side, t.z)
        return max(value, t.pixel_size), (f"z {t.z:g}: {100 * value:.2f} %; floor "
                                           f"{100 * t.pixel_size:g} %")
    if kind == 'smooth':
        value = smooth_limit(record['movies'], frames, side, t.smooth_z)
        return max(value, t.smooth_size), (f"z {t.smooth_z:g}: {100 * value:.2f} %; floor "
                                           f"{100 * t.smooth_size:g} %")
    return None, ''


# ------------------------------------------------------------------ the table
def found_right(record, factor=2.0):
    """The kind simulated was found and measured within ``factor`` of its size (a pattern
    found at 4x its size is the specimen's: a foil's edge near an axis, not the error; a
    pattern in part of the frame gives its RMS there)."""
    return any(name in RIGHT[record['error']] and
               1 / factor <= size / record['size'] <= factor
               for name, size, *_ in record['components'])


def _pct(value):
    return '-' if value is None else f"{100 * value:.2g} %"


def table(records, settings=None):
    """Markdown rows: per (test, size of data, kind): counts per size, smallest found
    (:func:`found_right`), the smallest found in at least 19 of 20 (all, of fewer), the
    Poisson limit and the ratio of the two."""
    settings = settings or AnalysisSettings()
    groups = {}
    for r in records:
        key = (r['test'], tuple(r['shape']), r['frames'], r.get('movies'), r['error'],
               r.get('detector', 'benchmark'), r.get('input', 'raw'))
        groups.setdefault(key, []).append(r)
    lines = ['| data | error | per size: any component found / the kind simulated found, '
             'measured within 2x / verdict flagged, of n '
             '| smallest found | smallest in >= 19 of 20 | Poisson limit | ratio |',
             '|---|---|---|---|---|---|---|']
    order = list(WORDS)
    for key in sorted(groups, key=lambda k: (k[0], -k[1][0], k[5], k[6], k[3] or 0,
                                             order.index(k[4]))):
        test, shape, frames, movies, kind, detector, source = key
        rows = groups[key]
        data = (f"{shape[0]} x {shape[1]} x {frames}" if test == 'movie' else
                f"sessions of {movies} movies, {shape[0]} x {shape[1]} x {frames}")
        data += '' if detector == 'benchmark' else f", {detector} detector"
        data += '' if source == 'raw' else ', pre-corrected (lattice)'
        sizes = sorted({r['size'] for r in rows})
        cells, smallest, reliable = [], None, None
        for size in sizes:
            these = [r for r in rows if r['size'] == size]
            n = len(these)
            right = sum(found_right(r) for r in these)
            cells.append(f"{_pct(size) if kind != 'exact' else 'exact'}: "
                         f"{sum(r['found'] for r in these)}/{right}/"
                         f"{sum(r['verdict'] for r in these)} of {n}")
            if kind != 'exact' and right and smallest is None:
                smallest = size
            if kind != 'exact' and reliable is None and right >= min(19, n) * (n >= 20) + \
                    n * (n < 20):
                reliable = size
        limit, how = limit_of(rows[0], settings)
        ratio = (f"{reliable / limit:.1f}" if reliable else f"> {sizes[-1] / limit:.1f}") \
            if limit else '-'
        shown = _pct(reliable) if reliable else f"> {_pct(sizes[-1])}"
        lines.append(f"| {data} | {WORDS[kind]} | {'; '.join(cells)} | "
                     f"{_pct(smallest) if kind != 'exact' else '-'} | "
                     f"{shown if kind != 'exact' else '-'} | "
                     f"{_pct(limit) if limit else '-'} ({how}) | {ratio} |" if limit else
                     f"| {data} | {WORDS[kind]} | {'; '.join(cells)} | - | - | - | - |")
    return '\n'.join(lines)


# ------------------------------------------------------------------ command line
def _floats(text):
    return [float(v) for v in str(text).split(',') if v]


def _tries(item, args):
    """'columns' (every size of ``--sizes``) or 'columns:0.001:0.002' (these sizes)."""
    kind, *sizes = item.split(':')
    if kind == 'exact':
        return [(kind, 0.0)]
    return [(kind, float(v)) for v in sizes] if sizes else \
        [(kind, v) for v in _floats(args.sizes)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='what', required=True)
    movies = sub.add_parser('movies')
    movies.add_argument('--shape', type=int, default=1024)
    movies.add_argument('--frames', type=int, default=20)
    movies.add_argument('--movies', type=int, default=20)
    movies.add_argument('--first-seed', type=int, default=100)
    movies.add_argument('--seeds', help='these seeds instead (commas)')
    movies.add_argument('--errors', default='columns,rows,sector_step,half_step,exact',
                        help="kinds (commas), each with its own sizes if given "
                             "('columns:0.003:0.004')")
    movies.add_argument('--sizes', default='0.004', help='relative sizes (commas), every error')
    movies.add_argument('--json', required=True, help='JSON lines appended here')
    movies.add_argument('--cache', help="a folder: each movie's raw sum kept there and reused")
    movies.add_argument('--detector', choices=sorted(DETECTORS), default='benchmark',
                        help="the simulated detector (part_frame.DETECTORS)")
    movies.add_argument('--input', default='raw',
                        help="raw (frames and the reference), lattice (frames corrected at "
                             "acquisition, the reference recovered by the lattice stage), or "
                             "both separated by a comma")
    sessions = sub.add_parser('sessions')
    sessions.add_argument('--shape', type=int, default=512)
    sessions.add_argument('--frames', type=int, default=20)
    sessions.add_argument('--pool', type=int, default=100)
    sessions.add_argument('--counts', default='10,30,100')
    sessions.add_argument('--smooth', default='0.005,0.01')
    sessions.add_argument('--pixels', default='0.005,0.01')
    sessions.add_argument('--errors', default='',
                          help="line errors too (movies' kinds and sizes: "
                               "'half_step:0.03,half_columns:0.03,sector_step:0.03')")
    sessions.add_argument('--sizes', default='', help='sizes of the --errors given without')
    sessions.add_argument('--json', required=True)
    bounds = sub.add_parser('boundaries', help="the exact references' readout boundaries")
    bounds.add_argument('--shape', type=int, default=1024)
    bounds.add_argument('--references', type=int, default=40)
    bounds.add_argument('--first-seed', type=int, default=100)
    bounds.add_argument('--detectors', default='unequal,patterned,benchmark')
    bounds.add_argument('--json', required=True)
    shown = sub.add_parser('table')
    shown.add_argument('files', nargs='+')
    args = parser.parse_args(argv)
    settings = AnalysisSettings()
    if args.what == 'table':
        records = [json.loads(line) for f in args.files for line in open(f) if line.strip()]
        bounds = [r for r in records if r['test'] == 'boundaries']
        print(table([r for r in records if r['test'] != 'boundaries'], settings)
              if len(bounds) < len(records) else boundary_table(bounds))
        return
    start, records = time.time(), None
    if args.what == 'boundaries':
        records = (boundary_record((args.shape, args.shape), seed, kind)
                   for kind in args.detectors.split(',')
                   for seed in range(args.first_seed, args.first_seed + args.references))
    elif args.what == 'movies':
        seeds = ([int(s) for s in args.seeds.split(',')] if args.seeds else
                 range(args.first_seed, args.first_seed + args.movies))
        tries = [(k, size) for item in args.errors.split(',') for k, size in _tries(item, args)]
        records = (r for seed in seeds for r in movie_records(
            (args.shape, args.shape), args.frames, seed, tries, settings, args.cache,
            args.detector, tuple(args.input.split(','))))
    else:
        tries = ([('exact', 0.0)] + [('smooth', s) for s in _floats(args.smooth)]
                 + [('pixels', s) for s in _floats(args.pixels)]
                 + [(k, size) for item in args.errors.split(',') if item
                    for k, size in _tries(item, args)])
        records = session_records((args.shape, args.shape), args.frames, args.pool,
                                  [int(c) for c in args.counts.split(',')], tries, settings)
    with open(args.json, 'a') as out:
        for record in records:
            line = json.dumps(record)
            print(line, flush=True)
            out.write(line + '\n')
            out.flush()
    print(f"# {time.time() - start:.0f} s, load average {os.getloadavg()}", file=sys.stderr)


if __name__ == '__main__':
    main()
