"""Gain-mode accuracy on sessions whose specimens have edges (``accuracy.py --gain-rows``).

One simulated detector per session (``accuracy.session_gain``: readout
sectors, line factors, flat field, pixel scatter and texture, dead and hot
pixels) and movies of realistic specimens (``simulate.random_specimen``: ice
of 2 to 20 % with a ramp at any angle, particles from sparse to crowded, holes
in a third, pixel texture in half); every second movie has an edge: carbon
(transmission 0.5 to 0.85) or, in every third edge movie, nearly opaque gold
foil (transmission 0.02 to 0.1), covering 5 % to a third of the frame, at any
angle, and in every fourth edge movie within 2 degrees of a pixel axis.
With ``ice='steep'`` (``accuracy.py --ice steep``) every movie's ice is a steep
thickness ramp instead: 10 to 25 % peak to peak, the ramp 80 to 100 % of the
field (``ice_tilt``), at any angle, drawn after everything else (the movies
are otherwise the same).

Rows, for ``robust`` (estimator.specimen), ``paper`` (SME per frame, Eq. 7)
and ``mean`` (inverse per-pixel mean):

* R^2 to the true gain (its correction, good pixels) of every movie, with and
  without an edge, and high-passed (``hp``: the R^2 of the logs less their 9 x 9
  mean: the pixel-scale detail alone);
* the accumulated estimate (GainAccumulator) after every movie, and the one of
  the movies without an edge alone;
* residual mode with the exact reference: the std and the paper's flags of
  the residual map of every movie.
"""
import os
import tempfile
import time
from dataclasses import replace

import numpy as np

from scipy import ndimage

from scipion_gain.estimator import EstimatorSettings, GainAccumulator, estimate_gain
from scipion_gain.estimator.statistics import map_statistics

from ceiling import ceiling_correction, ever_covered, expected_dose, frame_offsets, movie_counts
from scipion_gain.simulate import random_specimen, render_specimen, simulate_frames, write_movie

GAIN_METHODS = {'robust': EstimatorSettings(method='robust'),
                'paper': EstimatorSettings(),
                'mean': EstimatorSettings(method='mean')}
CHECKPOINTS = (1, 3, 10, 12, 30)


#: ``--ice``: the usual ice (simulate.random_specimen: 2 to 20 %, any mix of a smooth
#: field and a ramp) or steep ramps (10 to 25 %, mostly a ramp, any angle)
ICE = ('usual', 'steep')
#: ``--specimen``: the usual edges (above) or hard ones (:func:`hard_edge`; steep ice always)
SPECIMENS = ('usual', 'hard')


def edge_specimen(rng, k, ice='usual', specimen='usual'):
    """Movie k's specimen: an edge in every second movie (gold in every third of those,
    within 2 degrees of an axis in every fourth), random otherwise; ``ice`` 'steep': its
    ice a steep ramp (drawn last: the rest of the specimen as with the usual ice);
    ``specimen`` 'hard': the edge drawn by :func:`hard_edge` instead, over a steep ramp."""
    spec, kind = _edge_specimen(rng, k)
    if specimen == 'hard' and kind != 'none':
        spec, kind = hard_edge(rng, spec, k)
    if ice == 'steep' or specimen == 'hard':
        spec = replace(spec, ice=float(rng.uniform(0.10, 0.25)),
                       ice_tilt=float(rng.uniform(0.8, 1.0)),
                       ice_angle=float(rng.uniform(0, 360)))
    return spec, kind


def hard_edge(rng, spec, k):
    """What the usual edges leave out (edge movie k // 2 of a session): carbon down to a
    transmission of 0.3 (log-uniform 0.3-0.85) covering 5 % to half of the frame; in every
    third edge movie gold (0.02-0.1), alternately a sheet (5 % to half) or a line (a strip
    of 2 % to 8 % of the frame, anywhere); the edge within 15 degrees of a pixel axis in
    every second edge movie (the 2nd, 4th, ...; straight), at any angle otherwise. Every value is drawn
    whatever the kind, so the draws stay aligned between kinds."""
    index = k // 2
    carbon_t = float(np.exp(rng.uniform(np.log(0.3), np.log(0.85))))
    gold_t = float(rng.uniform(0.02, 0.1))
    covered, line = float(rng.uniform(0.05, 0.5)), float(rng.uniform(0.02, 0.08))
    gap, off_axis = float(rng.uniform(0.1, 0.7)), float(rng.uniform(-15, 15))
    axis = 90.0 * int(rng.integers(0, 4))
    kind, values = 'carbon', dict(carbon=covered, carbon_transmission=carbon_t)
    if index % 3 == 2:
        kind = 'gold sheet' if (index // 3) % 2 == 0 else 'gold line'
        values = dict(carbon=covered, carbon_transmission=gold_t)
        if kind == 'gold line':
            values.update(carbon=line, carbon_gap=gap * (1 - line), carbon_curvature=0.0)
    if index % 2 == 1:
        values.update(carbon_angle=axis + off_axis, carbon_curvature=0.0)
        kind += ' near axis'
    return replace(spec, **values), kind


def _edge_specimen(rng, k):
    edge = k % 2 == 1
    spec = random_specimen(rng, carbon=True if edge else False)
    if not edge:
        return spec, 'none'
    kind = 'carbon'
    if (k // 2) % 3 == 2:
        spec = replace(spec, carbon_transmission=float(rng.uniform(0.02, 0.1)))
        kind = 'gold'
    if (k // 2) % 4 == 3:
        axis = 90.0 * int(rng.integers(0, 4))
        spec = replace(spec, carbon_angle=axis + float(rng.uniform(-2, 2)), carbon_curvature=0.0)
        kind += ' near axis'
    return spec, kind


def r_squared(estimate, truth, good):
    estimate, truth = np.asarray(estimate, np.float64)[good], np.asarray(truth, np.float64)[good]
    return float(np.corrcoef(estimate, truth)[0, 1] ** 2)


def high_passed(values):
    """The log of a map less its 9 x 9 mean: its pixel-scale detail."""
    logs = np.log(np.maximum(np.asarray(values, np.float64), 1e-6))
    return logs - ndimage.uniform_filter(logs, 9, mode='reflect')


def high_passed_r_squared(estimate, truth, good):
    """R^2 of the pixel-scale detail (:func:`high_passed`) over the good pixels."""
    return r_squared(high_passed(estimate), high_passed(truth), good)


def run_gain_session(session, base, seeds, session_gain, log=print, ice='usual',
                     specimen='usual'):
    """One session's rows (a JSON-ready dict); ``ice``: one of ICE, ``specimen``: of
    SPECIMENS."""
    started = time.time()
    gain, options = session_gain(session, base)
    truth = gain.correction
    shape = (session.size, session.size)
    accumulators = {name: GainAccumulator() for name in GAIN_METHODS}
    clean = {name: GainAccumulator() for name in GAIN_METHODS}
    movies, curve = [], []
    with tempfile.TemporaryDirectory(prefix='gain_mode_') as folder:
        for k in range(session.movies):
            spec_seed, render_seed, frame_seed, drift_seed = seeds(base, *session.key(), 7, k).spawn(4)
            spec, kind = edge_specimen(np.random.default_rng(spec_seed), k, ice, specimen)
            drift = float(np.random.default_rng(drift_seed).uniform(0.1, 1.0))
            image = render_specimen(spec, shape, render_seed,
                                    margin=int(np.ceil(drift * session.frames)) + 1)
            path = os.path.join(folder, 'movie.mrc')
            write_movie(path, simulate_frames(shape, session.frames, gain.gain, dose=session.dose,
                                              mode=session.mode, rng=frame_seed,
                                              specimen=image.image, drift=drift),
                        shape=shape, n_frames=session.frames)
            row = {'movie': k + 1, 'edge': kind, 'covered': round(image.carbon_fraction, 3),
                   'angle': round(spec.carbon_angle % 360, 1) if kind != 'none' else None,
                   'transmission': round(spec.carbon_transmission, 3), 'ice': round(spec.ice, 3),
                   'ice_tilt': round(spec.ice_tilt, 2), 'ice_angle': round(spec.ice_angle, 1),
                   'hole': round(image.hole_fraction, 3),
                   'particles': round(spec.particle_density, 3), 'r2': {}, 'r2_high': {},
                   'residual': {}}
            oracle = _oracle(path, image, gain, session, drift, frame_seed)
            for name, settings in GAIN_METHODS.items():
                result = estimate_gain([path], settings)
                good = ~result.defects & ~gain.dead & ~gain.hot
                row['r2'][name] = r_squared(result.gain, truth, good)
                if name == 'robust':
                    row.update(_ceiling_rows(result.gain, oracle, truth, good))
                row['r2_high'][name] = high_passed_r_squared(result.gain, truth, good)
                accumulators[name].add(result)
                if kind == 'none':
                    clean[name].add(result)
                if name != 'mean':
                    residual = estimate_gain([path], settings, gain_reference=truth)
                    stats = map_statistics(residual.gain, mask=~residual.defects)
                    row['residual'][name] = {'std': stats['statistics']['std'],
                                             'flagged': bool(stats['flagged'])}
            point = {'movies': k + 1, 'high': {}}
            for name, accumulator in accumulators.items():
                point[name], point['high'][name] = _accumulated_r2(accumulator, truth, gain,
                                                                   both=True)
            curve.append(point)
            movies.append(row)
            log(f"#   movie {k + 1} ({kind}): " + ', '.join(
                f"{n} {row['r2'][n]:.3f}/acc {point[n]:.3f}" for n in GAIN_METHODS)
                + f" ({time.time() - started:.0f} s)")
            del image
    return {'session': session.label(), 'gain': options, 'movies': movies, 'curve': curve,
            'clean': {name: _accumulated_r2(a, truth, gain) if a.count else None
                      for name, a in clean.items()},
            'clean_movies': clean['robust'].count, 'seconds': round(time.time() - started, 1)}


def _oracle(path, image, gain, session, drift, frame_seed):
    """(the count-limited ceiling's correction of the movie at ``path``, the pixels under
    its carbon or gold in any frame): benchmarks/ceiling.py; None for integrating frames
    (their counts are not Poisson)."""
    if session.mode != 'counting':
        return None
    shape = (session.size, session.size)
    offsets = frame_offsets(session.frames, drift, image.margin, frame_seed)
    dose = expected_dose(image.image, shape, offsets, session.dose)
    return (ceiling_correction(movie_counts(path), dose, gain),
            ever_covered(image.carbon, shape, offsets))


def _ceiling_rows(estimate, oracle, truth, good):
    """The ceiling's R^2 on the estimate's pixels, and both on the exposed ones alone."""
    if oracle is None:
        return {}
    ceiling, covered = oracle
    exposed = good & ~covered
    return {'ceiling': r_squared(ceiling, truth, good),
            'exposed': {'robust': r_squared(estimate, truth, exposed),
                        'ceiling': r_squared(ceiling, truth, exposed),
                        'pixels': round(float(exposed.sum() / good.sum()), 3)}}


def _accumulated_r2(accumulator, truth, gain, both=False):
    """R^2 of the accumulated estimate (``both``: and high-passed)."""
    correction, defects = accumulator.correction()
    good = ~defects & ~gain.dead & ~gain.hot
    full = r_squared(correction, truth, good)
    return (full, high_passed_r_squared(correction, truth, good)) if both else full


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _fmt(value):
    return '-' if value is None else f"{value:.3f}"


def _high(row_or_point, method):
    """The high-passed R^2 of a row or a curve point (runs before it was kept: None)."""
    high = row_or_point.get('r2_high', row_or_point.get('high')) or {}
    return high.get(method)


def _both(full, high):
    return _fmt(full) if high is None else f"{_fmt(full)} / {_fmt(high)}"


def _ceiling_cells(row):
    """A movie's ceiling cells: its R^2, robust / ceiling, and on the exposed pixels."""
    if 'ceiling' not in row:
        return '- | - | -'
    exposed = row['exposed']
    return (f"{row['ceiling']:.3f} | {row['r2']['robust'] / row['ceiling']:.3f} | "
            f"{exposed['robust']:.3f} / {exposed['ceiling']:.3f} ({exposed['pixels']:.2f})")


def _ceiling_summary(none, edge, methods):
    """Summary rows of the count-limited ceiling (robust column only)."""
    if not all('ceiling' in r for r in none + edge):
        return []
    blank = ' | -' * (len(methods) - 1)
    lines = []
    for label, rows in (('no edge', none), ('edge', edge)):
        lines.append(f"| ceiling: mean R^2, {label} | {_fmt(_mean([r['ceiling'] for r in rows]))}"
                     f"{blank} |")
        lines.append(f"| robust / ceiling, {label}: mean (worst) | "
                     f"{_fmt(_mean([r['r2']['robust'] / r['ceiling'] for r in rows]))} "
                     f"({_fmt(min([r['r2']['robust'] / r['ceiling'] for r in rows], default=None))})"
                     f"{blank} |")
    if edge and none:
        ceiling_none = _mean([r['ceiling'] for r in none])
        lines.append(f"| ceiling: worst edge movie / mean no-edge | "
                     f"{_fmt(min(r['ceiling'] for r in edge) / ceiling_none)}{blank} |")
        lines.append(f"| exposed pixels: worst edge movie / mean no-edge, robust (ceiling) | "
                     f"{_fmt(min(r['exposed']['robust'] for r in edge) / _mean([r['exposed']['robust'] for r in none]))}"
                     f" ({_fmt(min(r['exposed']['ceiling'] for r in edge) / _mean([r['exposed']['ceiling'] for r in none]))})"
                     f"{blank} |")
    return lines


def render_gain_rows(record):
    """Markdown tables of one session's gain-mode rows (R^2 full / high-passed)."""
    methods = list(GAIN_METHODS)
    detector = record.get('gain', {})
    lines = [f"Gain mode, {record['session']} "
             f"({record['seconds']:.0f} s); detector pixel scatter "
             f"{detector.get('pixel_scatter', '-')}, texture {detector.get('texture', '-')}", '',
             '| movie | edge | covered | angle | T | ice | hole | ' + ' | '.join(
                 f'R^2 {m} (hp)' for m in methods) + ' | ceiling | robust / ceiling | '
             'exposed: robust / ceiling (share) | residual std robust | paper |',
             '|' + '---|' * (7 + len(methods) + 5)]
    for row in record['movies']:
        res = row['residual']
        lines.append(f"| {row['movie']} | {row['edge']} | {row['covered']} | "
                     f"{row['angle'] if row['angle'] is not None else '-'} | "
                     f"{row['transmission'] if row['edge'] != 'none' else '-'} | {row['ice']} | "
                     f"{row['hole']} | " + ' | '.join(_both(row['r2'][m], _high(row, m))
                                                     for m in methods)
                     + f" | {_ceiling_cells(row)}"
                     + f" | {res['robust']['std']:.4f}{' F' if res['robust']['flagged'] else ''}"
                     f" | {res['paper']['std']:.4f}{' F' if res['paper']['flagged'] else ''} |")
    lines += ['', '(hp: R^2 of the logs less their 9 x 9 mean, the pixel-scale detail; '
              'F: the paper\'s flags fire on the residual of the exact reference)', '']
    edge = [r for r in record['movies'] if r['edge'] != 'none']
    none = [r for r in record['movies'] if r['edge'] == 'none']
    lines += ['| summary (R^2 full / hp) | ' + ' | '.join(methods) + ' |',
              '|---|' + '---|' * len(methods)]
    for label, rows in (('mean R^2, no edge', none), ('mean R^2, edge', edge)):
        lines.append(f"| {label} | " + ' | '.join(
            _both(_mean([r['r2'][m] for r in rows]), _mean([_high(r, m) for r in rows]))
            for m in methods) + ' |')
    lines += _ceiling_summary(none, edge, methods)
    lines.append('| worst edge movie / mean no-edge | ' + ' | '.join(
        _fmt(min(r['r2'][m] for r in edge) / _mean([r['r2'][m] for r in none]))
        if edge and none else '-' for m in methods) + ' |')
    for point in record['curve']:
        if point['movies'] in CHECKPOINTS or point is record['curve'][-1]:
            lines.append(f"| accumulated, {point['movies']} movies | "
                         + ' | '.join(_both(point[m], _high(point, m)) for m in methods) + ' |')
    lines.append(f"| accumulated, the {record['clean_movies']} no-edge movies alone | "
                 + ' | '.join(_fmt(record['clean'][m]) for m in methods) + ' |')
    curve = record['curve']
    drops = {m: max([0.0] + [a[m] - b[m] for a, b in zip(curve, curve[1:])]) for m in methods}
    high_drops = {m: max([0.0] + [_high(a, m) - _high(b, m) for a, b in zip(curve, curve[1:])
                                  if _high(a, m) is not None and _high(b, m) is not None])
                  for m in methods}
    lines.append('| largest drop of the accumulated R^2 as a movie is added (full / hp) | '
                 + ' | '.join(f"{drops[m]:.3f} / {high_drops[m]:.3f}" for m in methods) + ' |')
    for label, rows in (('residual std, no edge (mean)', none), ('residual std, edge (mean)', edge)):
        lines.append(f"| {label} | " + ' | '.join(
            _fmt(_mean([r['residual'][m]['std'] for r in rows])) if m != 'mean' else '-'
            for m in methods) + ' |')
    lines.append('| edge movies flagged by the paper\'s flags (exact reference) | ' + ' | '.join(
        f"{sum(r['residual'][m]['flagged'] for r in edge)}/{len(edge)}" if m != 'mean' else '-'
        for m in methods) + ' |')
    return lines + ['']
