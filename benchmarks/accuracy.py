"""Verdict accuracy on simulated sessions with realistic specimens.

Every session is one simulated detector (a random structured gain: readout
sectors, line factors, flat field, pixel scatter and texture, dead and hot
pixels) and a number of movies, each with its own random specimen
(``scipion_gain.simulate.random_specimen``: an ice-thickness field of 2 % to
20 %, particles from sparse to crowded, a pixel texture in half of them, a
carbon edge at any angle covering up to a third of the frame in half of them,
an empty hole in a third of them; drifting 0.1 to 1 px/frame). Each movie is
judged against references that are exact or wrong in known ways
(``scipion_gain.simulate.wrong_reference``):

    exact        the true correction: nothing should be flagged
    columns      off by a column pattern, RMS 2 %
    sector       one readout sector (of 4) off by a 3 % step
    rot180       rotated by 180 degrees
    rot90        rotated by 90 degrees
    part_frame   a 2 % column (or row) pattern in one half plus a 2 % smooth field
    growing      movie k of N carries k/N of a 2 % column pattern + 3 % sector step

Inputs: ``raw`` (raw frames, the reference given: residual mode, the
protocol's default), ``precorrected`` (float32 frames = counts x reference, no
reference given), ``float16`` and ``rounded`` (the same as float16, or
rounded to integers as cameras that write gain-normalised integers), ``summed``
(one summed, gain-normalised micrograph: the sum of the frames times the
reference, no reference given), ``spoiled`` (raw frames with a hot pixel at
50000, a NaN and a +inf patch and an all-zero frame, the reference given).

Methods, each a rate flagged / movies per case:

    ours       THE verdict, from ``judge()`` below: estimator.analysis's
               ``to_json()['verdict']['flagged']``
    paper      the paper's three flags on the same SME map
    incumbent  Xmipp's program in its Scipion settings (sigma 0, frame step 5,
               ties to the last rank, frames DIVIDED by the reference)
    mean, std  the inverse per-pixel mean / std baselines, paper's flags

and the R^2 of the map and of the localized map (the analysis' structure
model) to the true residual (true correction / reference, mean 1). Each session's
movies are simulated once (into a temporary folder, removed at the end) and
reused across cases and methods. Each case's movies are also accumulated
(GainAccumulator) and the session judged as the protocol's running estimate
is (analysis.analyse_accumulated): its verdict and localized map.

Seeds: every random stream derives from ``--seed`` through
numpy.random.SeedSequence. ``--seed tune`` (= 1) is for tuning thresholds;
``--seed check`` (= 2, the default) is the untouched set the claims are
checked on: the two never share a stream. Any integer works too.

    python benchmarks/accuracy.py                  # the headline grid + the demo session
    python benchmarks/accuracy.py --quick          # a few minutes on 2 cores
    python benchmarks/accuracy.py --grid sweep     # sizes 512-4096, 1-40 frames, doses, modes
    python benchmarks/accuracy.py --grid all       # headline + sweep
    python benchmarks/accuracy.py --cases exact,sector --sizes 2048 --movies 4 --json out.json
    python benchmarks/accuracy.py --table out.json   # the tables of a saved run again
    python benchmarks/accuracy.py --gain-rows --movies 12   # gain mode, edges in half the movies
"""
import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from scipion_gain.estimator import EstimatorSettings, GainAccumulator, estimate_gain
from scipion_gain.estimator.statistics import map_statistics
from scipion_gain.io import open_movie
from scipion_gain.simulate import (Spoiler, random_specimen, render_specimen,
                                   session_references, simulate_frames, simulate_gain,
                                   write_movie)

SEED_SETS = {'tune': 1, 'check': 2}
CASES = ('exact', 'columns', 'sector', 'rot180', 'rot90', 'part_frame', 'growing')
METHODS = ('ours', 'paper', 'incumbent', 'mean', 'std')
INPUTS = ('raw', 'precorrected', 'summed', 'float16', 'rounded', 'spoiled')  # append only
BASELINES = {
    'incumbent': EstimatorSettings(sigma=0.0, frame_step=5, ties='last'),
    'mean': EstimatorSettings(method='mean'),
    'std': EstimatorSettings(method='std'),
}


# ------------------------------------------------------------------ the verdict under test
def _judge_analysis(movies, reference=None, settings=None):
    """THE verdict of estimator.analysis: ``to_json()['verdict']``; the
    paper's flags from the same analysis; its localized map when it has one.
    ``settings``: an AnalysisSettings (default: the analysis' defaults)."""
    from scipion_gain.estimator.analysis import analyse
    analysis = analyse(movies, reference=reference, settings=settings)
    data = analysis.to_json()
    verdict = data['verdict']
    gain_map = _first_attribute(analysis, ('gain', 'map', 'residual'))
    localized = _first_attribute(analysis, ('localized', 'localized_map', 'structure'))
    defects = _first_attribute(analysis, ('defects', 'defect_mask'))
    if defects is not None and not isinstance(defects, np.ndarray):
        defects = _first_attribute(defects, ('mask', 'labels'))
    return {'flagged': bool(verdict['flagged']), 'reasons': list(verdict.get('reasons', [])),
            'paper_flagged': bool(data.get('flagged')),
            'std': data.get('statistics', {}).get('std'),
            'dqe_loss': verdict.get('dqe_loss'),
            'components': {c['name']: {'z': round(float(c['z']), 2), 'size': round(float(c['size']), 5),
                                       'found': bool(c['found']),
                                       **({'steps': [(s['position'], round(s['z'], 1))
                                                     for s in c['steps']]} if c.get('steps') else {})}
                           for c in data['assessment']['components']},
            'map': gain_map, 'localized': localized,
            'defects': None if defects is None else np.asarray(defects) != 0,
            'result': getattr(analysis, 'result', None)}


def _first_attribute(obj, names):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


JUDGES = {'analysis': _judge_analysis}
OURS = 'analysis'  # the one line that says what "ours" is (the "today" of the table "before"
                   # was the SME map's split-half assessment, removed with the verdict work)


def judge(movies, reference=None, ours=None, settings=None):
    """THE verdict under test on ``movies`` (paths) with ``reference`` (or None).

    Returns a dict: ``flagged``, ``reasons``, ``paper_flagged`` (the paper's
    flags on the same map), ``std``, ``dqe_loss``, ``components`` (what the
    verdict measured, JSON-ready), ``map``, ``localized``, ``defects``.
    ``ours``: a key of :data:`JUDGES` (default :data:`OURS`); ``settings``: the
    analysis settings (default: its defaults; benchmarks/frames_needed.py sets the
    frame step).
    """
    return JUDGES[ours or OURS](movies, reference, settings)


# ------------------------------------------------------------------ sessions
@dataclass(frozen=True)
class Session:
    size: int = 1024
    frames: int = 20
    dose: float = 1.0
    mode: str = 'counting'
    input: str = 'raw'
    movies: int = 20

    def key(self):
        return [self.size, self.frames, int(round(self.dose * 1000)),
                ('counting', 'integrating').index(self.mode), INPUTS.index(self.input)]

    def label(self):
        what = {'raw': 'raw frames + reference', 'precorrected': 'pre-corrected float32 frames',
                'summed': f'one summed gain-normalised micrograph of {self.frames} frames',
                'float16': 'pre-corrected float16 frames',
                'rounded': 'pre-corrected frames rounded to integers',
                'spoiled': 'raw frames with a hot pixel, NaN and inf patches and a zero '
                           'frame + reference'}
        frames = '' if self.input == 'summed' else f', {self.frames} frames'
        return (f"{self.size} x {self.size}{frames}, {self.dose:g} e/px/frame, {self.mode}, "
                f"{what[self.input]}; {self.movies} movies")

    def headline(self):
        """Whether the detection claim (>= 19 of 20) applies: 1024^2 x 20 frames at
        1 e/px/frame and larger, raw counting frames with the reference."""
        return (self.size >= 1024 and self.frames >= 20 and self.dose >= 1.0
                and self.mode == 'counting' and self.input == 'raw')


GRIDS = {
    'headline': [Session(1024, 20, 1.0, 'counting', 'raw', 20)],
    'quick': [Session(512, 10, 1.0, 'counting', 'raw', 4),
              Session(512, 10, 1.0, 'counting', 'summed', 3),
              Session(512, 10, 1.5, 'integrating', 'raw', 2)],
    'sweep': [Session(512, 40, 0.5, 'counting', 'raw', 10),
              Session(2048, 10, 2.0, 'counting', 'raw', 4),
              Session(4096, 8, 1.0, 'counting', 'raw', 2),
              Session(1024, 20, 1.0, 'counting', 'summed', 10),
              Session(1024, 20, 1.0, 'integrating', 'raw', 6),
              Session(1024, 20, 1.0, 'counting', 'precorrected', 6)],
}
GRIDS['all'] = GRIDS['headline'] + GRIDS['sweep']


def seeds(base, *key):
    """An independent stream for (base, key...): disjoint between seed sets."""
    return np.random.SeedSequence([int(base)] + [int(k) for k in key])


#: ``--detector``: the benchmark's detectors (pixel-to-pixel variation 0.5 to 3 %),
#: texture-dominated ones (pixel scatter and a texture correlated over a pixel, 5 to 10 %
#: each, as real K2, K3 and Falcon references show), or part_frame.py's 'patterned' one
#: (8 sectors of 3 % and unequal width, at least half the mean, 3 % columns, 1.5 % rows,
#: 2 % scatter, 10 % texture; the same draws otherwise)
DETECTORS = ('benchmark', 'texture', 'patterned')


def session_gain(session, base, detector='benchmark'):
    """The session's detector: a random structured gain (same for every movie)."""
    rng = np.random.default_rng(seeds(base, *session.key(), 99))
    size = session.size
    options = dict(sectors=int(rng.choice([4, 8])), sector_spread=rng.uniform(0.03, 0.1),
                   column_spread=rng.uniform(0.01, 0.05), row_spread=rng.uniform(0.005, 0.03),
                   flat_field=rng.uniform(0.02, 0.1), pixel_scatter=rng.uniform(0.005, 0.03),
                   texture=rng.uniform(0.005, 0.02) if rng.uniform() < 0.5 else 0.0,
                   dead_pixels=size * size // 50000, hot_pixels=size * size // 200000)
    if detector == 'texture':       # the same draws, then the pixel scale's own
        options.update(pixel_scatter=rng.uniform(0.05, 0.1), texture=rng.uniform(0.05, 0.1))
    if detector == 'patterned':
        options.update(sectors=8, sector_spread=0.03, column_spread=0.03, row_spread=0.015,
                       pixel_scatter=0.02, texture=0.1, unequal_sectors=0.5)
    gain = simulate_gain((size, size), rng=rng, **options)
    return gain, {k: (round(float(v), 4) if isinstance(v, float) else v)
                  for k, v in options.items()}


def simulate_session_movies(session, base, folder):
    """Write the session's raw movies; return per movie its path and specimen facts."""
    gain, gain_options = session_gain(session, base)
    shape = (session.size, session.size)
    movies = []
    for k in range(session.movies):
        spec_seed, render_seed, frame_seed, drift_seed = seeds(base, *session.key(), 1, k).spawn(4)
        spec = random_specimen(spec_seed)
        drift_rng = np.random.default_rng(drift_seed)
        drift = float(drift_rng.uniform(0.1, 1.0))
        margin = int(np.ceil(drift * session.frames)) + 1
        image = render_specimen(spec, shape, render_seed, margin=margin)
        path = os.path.join(folder, f'movie_{k + 1:03d}.mrc')
        frames = simulate_frames(shape, session.frames, gain.gain, dose=session.dose,
                                 mode=session.mode, rng=frame_seed, specimen=image.image,
                                 drift=drift)
        write_movie(path, frames, shape=shape, n_frames=session.frames)
        movies.append({'movie': k + 1, 'path': path, 'drift_px_per_frame': round(drift, 3),
                       'specimen': dict(spec.describe(),
                                        carbon_covered=round(image.carbon_fraction, 4),
                                        hole_covered=round(image.hole_fraction, 4)),
                       'kind': specimen_kind(image)})
        del image
    return gain, gain_options, movies


def specimen_kind(image):
    parts = [name for name, fraction in (('carbon', image.carbon_fraction),
                                         ('hole', image.hole_fraction)) if fraction > 0]
    return '+'.join(parts) or 'ice only'


def derived_input(session, raw_path, reference, folder):
    """The file a method reads for ``session.input``, and the reference it is given.

    raw: the raw movie, the reference given; precorrected / float16 / rounded:
    frames x reference as float32, float16, or rounded to integers (uint16),
    no reference given; summed: one frame, the sum of the frames x reference,
    no reference; spoiled: the raw frames with one hot pixel at 50000 in every
    frame, a 10 x 10 NaN and a 10 x 10 +inf patch and one all-zero frame
    (:class:`scipion_gain.simulate.Spoiler`, seeded by the movie's file name),
    the reference given.
    """
    if session.input == 'raw':
        return raw_path, reference
    out = os.path.join(folder, 'derived.mrc')
    with open_movie(raw_path) as movie:
        shape, count = tuple(movie.frame_shape), movie.n_frames
        frames = (frame for _, frame in movie.iter_frames())
        if session.input == 'summed':
            total = np.zeros(shape, np.float64)
            for frame in frames:
                total += frame
            write_movie(out, (total * reference).astype(np.float32)[None])
            return out, None
        if session.input == 'spoiled':
            seed = sum(os.path.basename(raw_path).encode())
            spoiler = Spoiler.random(shape, count, rng=seed, hot_pixels=1, nan_patches=1,
                                     inf_patches=1, zero_frames=1)
            write_movie(out, spoiler.apply(frames), shape=shape, n_frames=count)
            return out, reference
        convert = {'precorrected': lambda f: f,
                   'float16': lambda f: f.astype(np.float16),
                   'rounded': lambda f: np.rint(f).astype(np.uint16)}[session.input]
        write_movie(out, (convert(frame * reference) for frame in frames),
                    shape=shape, n_frames=count)
    return out, None


# ------------------------------------------------------------------ scores
def r_squared(estimate, truth, good=None):
    """R^2 (squared correlation) of a map to the true residual over good pixels."""
    if estimate is None:
        return None
    estimate, truth = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    if good is not None:
        estimate, truth = estimate[good], truth[good]
    if np.std(truth) < 1e-7 or np.std(estimate) < 1e-12:
        return 0.0
    return float(np.corrcoef(estimate.ravel(), truth.ravel())[0, 1] ** 2)


def run_methods(session, movie, case_ref, folder, methods, ours):
    """Every method on one movie with one reference: a JSON-ready dict."""
    path, reference = derived_input(session, movie['path'], case_ref.reference, folder)
    truth = case_ref.residual
    out = {}
    try:
        if 'ours' in methods or 'paper' in methods:
            judged = judge([path], reference, ours)
            good = None if judged['defects'] is None else ~judged['defects']
            if judged.get('result') is not None:
                out['_result'] = judged['result']
            if 'ours' in methods:
                out['ours'] = {'flagged': judged['flagged'], 'reasons': judged['reasons'],
                               'dqe_loss': judged['dqe_loss'],
                               'components': judged.get('components'),
                               'r2_map': r_squared(judged['map'], truth, good),
                               'r2_localized': r_squared(judged['localized'], truth, good)}
            if 'paper' in methods:
                out['paper'] = {'flagged': judged['paper_flagged'], 'std': judged['std'],
                                'r2_map': out.get('ours', {}).get('r2_map')}
        for name in ('incumbent', 'mean', 'std'):
            if name not in methods:
                continue
            # the incumbent divides frames by the reference (a correction): its defect, kept
            used = None if reference is None else (1 / reference if name == 'incumbent'
                                                   else reference)
            result = estimate_gain([path], BASELINES[name], gain_reference=used)
            out[name] = {'flagged': bool(_paper_flags(result)['flagged']),
                         'r2_map': r_squared(result.gain, truth, ~result.defects)}
    finally:
        if path != movie['path']:
            os.remove(path)
    return out


def judge_session(accumulator, case_ref, with_reference):
    """The accumulated estimate of a session's movies, judged (analysis.analyse_accumulated):
    its verdict, what it found and the R^2 of its localized map to the true residual."""
    from scipion_gain.estimator.analysis import analyse_accumulated
    analysis = analyse_accumulated(accumulator, case_ref.reference if with_reference else None)
    report = analysis.to_json()
    good = ~analysis.defects.mask
    return {'movies': accumulator.count, 'flagged': bool(report['verdict']['flagged']),
            'reasons': report['verdict']['reasons'], 'dqe_loss': report['verdict']['dqe_loss'],
            'r2_localized': r_squared(analysis.structure, case_ref.residual, good),
            'found': [c['name'] for c in report['assessment']['components'] if c['found']]}


def _paper_flags(result):
    return map_statistics(result.gain, mask=~result.defects)


def run_session(session, base, cases, methods, ours, log=print):
    """Simulate one session, judge every movie against every case."""
    started = time.time()
    folder = tempfile.mkdtemp(prefix='gain_accuracy_')
    record = {'session': asdict(session), 'label': session.label(), 'movies': [], 'cases': {}}
    try:
        gain, gain_options, movies = simulate_session_movies(session, base, folder)
        record['gain'] = gain_options
        log(f"# {session.label()}: simulated in {time.time() - started:.0f} s")
        truth = gain.correction
        per_movie = {m['movie']: dict((k, v) for k, v in m.items() if k != 'path')
                     for m in movies}
        for m in per_movie.values():
            m['cases'] = {}
        for index, case in enumerate(cases):
            refs = session_references(truth, case, session.movies,
                                      rng=seeds(base, *session.key(), 2, CASES.index(case)))
            record['cases'][case] = {'details': refs[-1].details}
            accumulator = GainAccumulator()
            for movie, ref in zip(movies, refs):
                result = run_methods(session, movie, ref, folder, methods, ours)
                sums = result.pop('_result', None)
                if sums is not None and case != 'growing':
                    accumulator.add(sums, member=movie['movie'])
                result['true_residual_std'] = float(np.std(ref.residual))
                if case == 'growing':
                    result['amount'] = ref.details['amount']
                per_movie[movie['movie']]['cases'][case] = result
            if accumulator.count >= 2:
                record['cases'][case]['session'] = judge_session(accumulator, refs[-1],
                                                                 session.input == 'raw')
            log(f"#   {case} done after {time.time() - started:.0f} s")
        record['movies'] = list(per_movie.values())
    finally:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)
    record['seconds'] = round(time.time() - started, 1)
    return record


def demo_session(ours, log=print):
    """The `make demo` session (scipion_gain.demo's detector, drift and seeds), judged by
    ``judge`` on each movie with the session's gain file; not through Scipion."""
    from scipion_gain import demo
    from scipion_gain.simulate import simulate_movie
    started = time.time()
    rng = np.random.default_rng(2018)
    detector = simulate_gain(demo.SHAPE, rng=11, **demo.GAIN_OPTIONS)
    after = demo.drifted_gain(detector.gain, rng)
    movies, drift_at = 10, 6
    flagged, paper = [], []
    with tempfile.TemporaryDirectory(prefix='gain_demo_') as folder:
        for index in range(movies):
            path = os.path.join(folder, f'movie_{index:03d}.mrc')
            simulate_movie(path, demo.SHAPE, demo.FRAMES,
                           detector.gain if index < drift_at else after,
                           dose=demo.DOSE, rng=1000 + index)
            judged = judge([path], detector.correction, ours)
            if judged['flagged']:
                flagged.append(index + 1)
            if judged['paper_flagged']:
                paper.append(index + 1)
            os.remove(path)
    expected = list(range(drift_at + 1, movies + 1))
    log(f"# demo session done after {time.time() - started:.0f} s")
    return {'flagged': flagged, 'paper_flagged': paper, 'expected': expected,
            'exact': flagged == expected}


# ------------------------------------------------------------------ tables
def rate(record, case, method):
    values = [m['cases'][case][method]['flagged'] for m in record['movies']
              if method in m['cases'].get(case, {})]
    return sum(values), len(values)


def median_of(record, case, method, key):
    values = [m['cases'][case][method].get(key) for m in record['movies']
              if method in m['cases'].get(case, {})]
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def _fmt(value, digits=3):
    return '-' if value is None else f"{value:.{digits}f}"


def session_table(record, cases, methods):
    lines = [f"### {record['label']}", '',
             'Detector: ' + ', '.join(f"{k} {v}" for k, v in record['gain'].items()) + '.',
             '']
    kinds = {}
    for m in record['movies']:
        kinds[m['kind']] = kinds.get(m['kind'], 0) + 1
    lines.append('Specimens: ' + ', '.join(f"{n} {k}" for k, n in sorted(kinds.items())) + '.')
    lines.append('')
    header = ['case'] + [f"{m} flagged" for m in methods] + ['R^2 map (ours)',
                                                             'R^2 localized (ours)']
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for case in cases:
        if case not in record['cases']:
            continue
        row = [case]
        for method in methods:
            n, total = rate(record, case, method)
            row.append(f"{n}/{total}")
        if case == 'exact':  # a flat truth: the map's spread instead of an R^2
            row += [f"(std {_fmt(median_of(record, case, 'paper', 'std'), 4)})", '-']
        else:
            row += [_fmt(median_of(record, case, 'ours', 'r2_map')),
                    _fmt(median_of(record, case, 'ours', 'r2_localized'))]
        lines.append('| ' + ' | '.join(row) + ' |')
    lines.append('')
    judged = [(case, record['cases'][case]['session']) for case in cases
              if 'session' in record['cases'].get(case, {})]
    if judged:
        lines += ['The session: the accumulated estimate of its movies, judged '
                  '(analysis.analyse_accumulated):', '',
                  '| case | movies | flagged | found | DQE loss | R^2 localized |',
                  '|---|---|---|---|---|---|']
        for case, result in judged:
            loss = result['dqe_loss']
            lines.append(f"| {case} | {result['movies']} | {'yes' if result['flagged'] else 'no'}"
                         f" | {', '.join(result['found']) or '-'} | "
                         f"{'-' if loss is None else f'{100 * loss:.3f} %'} | "
                         f"{'-' if case == 'exact' else _fmt(result['r2_localized'])} |")
        lines.append('')
    if 'growing' in record['cases']:
        for method in [m for m in ('ours', 'paper') if m in methods]:
            hits = [(m['movie'], m['cases']['growing']['amount']) for m in record['movies']
                    if m['cases']['growing'][method]['flagged']]
            lines.append(f"Growing error, {method}: flagged movies "
                         f"{[movie for movie, _ in hits]} (movie k carries k/"
                         f"{len(record['movies'])} of the error)")
        lines.append('')
    if 'ours' in methods:
        lines += by_specimen(record, cases)
    return lines


def by_specimen(record, cases):
    """Ours' rate per specimen kind, and the movies it got wrong."""
    kinds = sorted({m['kind'] for m in record['movies']})
    lines = ['Ours by specimen kind (flagged / movies):', '',
             '| case | ' + ' | '.join(kinds) + ' |', '|---|' + '---|' * len(kinds)]
    wrong = []
    for case in cases:
        if case not in record['cases']:
            continue
        row = [case]
        for kind in kinds:
            values = [m['cases'][case]['ours']['flagged'] for m in record['movies']
                      if m['kind'] == kind and 'ours' in m['cases'].get(case, {})]
            row.append(f"{sum(values)}/{len(values)}")
        lines.append('| ' + ' | '.join(row) + ' |')
        for m in record['movies']:
            verdict = m['cases'].get(case, {}).get('ours')
            if verdict is None or case == 'growing':
                continue
            if verdict['flagged'] != (case != 'exact'):
                s = m['specimen']
                wrong.append(f"- {case}, movie {m['movie']}: "
                             f"{'false alarm' if case == 'exact' else 'missed'} "
                             f"({', '.join(verdict['reasons']) or 'nothing found'}); "
                             f"{m['kind']}, carbon {s['carbon_covered']:.2f} at "
                             f"{s['carbon_angle']:.0f} deg, hole {s['hole_covered']:.2f}, "
                             f"ice {s['ice']:.3f}, particles {s['particle_density']:.2f}, "
                             f"texture {s['texture']:.3f}")
    lines.append('')
    lines += ['Ours, median R^2 of the localized map to the true residual by specimen kind:', '',
              '| case | ' + ' | '.join(kinds) + ' |', '|---|' + '---|' * len(kinds)]
    for case in cases:
        if case not in record['cases'] or case == 'exact':
            continue
        row = [case]
        for kind in kinds:
            values = [m['cases'][case]['ours']['r2_localized'] for m in record['movies']
                      if m['kind'] == kind and 'ours' in m['cases'].get(case, {})]
            values = [v for v in values if v is not None]
            row.append(_fmt(float(np.median(values)) if values else None))
        lines.append('| ' + ' | '.join(row) + ' |')
    lines.append('')
    if wrong:
        lines += ['Movies ours got wrong:', ''] + wrong + ['']
    return lines


def claims(records, demo, methods):
    """The claims the verdict must meet (its accuracy targets), checked on these sessions (ours)."""
    out = []
    if 'ours' not in methods:
        return out
    for record in records:
        session = Session(**record['session'])
        label = record['label']
        if 'exact' in record['cases']:
            n, total = rate(record, 'exact', 'ours')
            out.append((f"exact reference never flagged ({label})", n == 0, f"{n}/{total}"))
        if session.headline():
            for case in ('columns', 'sector', 'rot180'):
                if case in record['cases']:
                    n, total = rate(record, case, 'ours')
                    out.append((f"{case} flagged in >= 95 % ({label})", n >= 0.95 * total,
                                f"{n}/{total}"))
        if 'part_frame' in record['cases']:
            r2 = median_of(record, 'part_frame', 'ours', 'r2_localized')
            out.append((f"part-frame drift localized R^2 >= 0.6 (median of single movies; "
                        f"{label})", r2 is not None and r2 >= 0.6, _fmt(r2)))
            judged = record['cases']['part_frame'].get('session')
            if judged is not None:
                out.append((f"part-frame drift localized R^2 >= 0.6 (the session's "
                            f"accumulated estimate; {label})", judged['r2_localized'] >= 0.6,
                            _fmt(judged['r2_localized'])))
        if 'exact' in record['cases'] and 'session' in record['cases']['exact']:
            flagged = record['cases']['exact']['session']['flagged']
            out.append((f"exact reference: session not flagged ({label})", not flagged,
                        'flagged' if flagged else 'ok'))
    if demo is not None:
        out.append(("demo session flags exactly its drifted movies", demo['exact'],
                    f"flagged {demo['flagged']}, expected {demo['expected']}"))
    return out


# ------------------------------------------------------------------ command line
def _list(text, kind=str):
    return [kind(item) for item in text.split(',') if item]


def sessions_for(args):
    grid = GRIDS['quick' if args.quick else args.grid]
    chosen = []
    for session in grid:
        variants = [session]
        for name, values in (('size', args.sizes), ('frames', args.frames),
                             ('dose', args.doses), ('mode', args.modes),
                             ('input', args.inputs)):
            if values:
                variants = [replace(v, **{name: value}) for v in variants for value in values]
        if args.movies:
            variants = [replace(v, movies=args.movies) for v in variants]
        chosen += [v for v in variants if v not in chosen]
    return chosen


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--quick', action='store_true',
                        help='a small grid (512 x 512, a few movies): minutes on 2 cores')
    parser.add_argument('--grid', choices=sorted(GRIDS), default='headline',
                        help='sessions to run (default headline: 1024^2 x 20 frames, '
                             '1 e/px/frame, counting, raw + reference, 20 movies)')
    parser.add_argument('--cases', type=_list, default=list(CASES),
                        help='comma-separated, from: ' + ','.join(CASES))
    parser.add_argument('--methods', type=_list, default=list(METHODS),
                        help='comma-separated, from: ' + ','.join(METHODS))
    parser.add_argument('--sizes', type=lambda t: _list(t, int), help='frame sizes (replace)')
    parser.add_argument('--frames', type=lambda t: _list(t, int), help='frames (replace)')
    parser.add_argument('--doses', type=lambda t: _list(t, float), help='e/px/frame (replace)')
    parser.add_argument('--modes', type=_list, help='counting,integrating (replace)')
    parser.add_argument('--inputs', type=_list, help=','.join(INPUTS) + ' (replace)')
    parser.add_argument('--movies', type=int, help='movies per session (replace)')
    parser.add_argument('--seed', default='check',
                        help='seed set: tune (1), check (2, default; the untouched one) '
                             'or an integer')
    parser.add_argument('--ours', choices=sorted(JUDGES), default=OURS,
                        help='what "ours" is: analysis (estimator.analysis)')
    parser.add_argument('--no-demo', action='store_true', help='skip the demo session')
    parser.add_argument('--accumulate', type=int, default=0,
                        help='also accumulate N movies of the first session with no '
                             'reference and give the R^2 of each method to the true gain')
    parser.add_argument('--gain-rows', action='store_true',
                        help='instead of the verdict grid: gain mode (no reference) on the '
                             'sessions chosen, every second movie with a carbon or gold edge: '
                             'R^2 to the true gain per movie and accumulated, robust / paper / '
                             'inverse mean, and the residual of the exact reference '
                             '(benchmarks/gain_mode.py)')
    parser.add_argument('--detector', choices=DETECTORS, default='benchmark',
                        help='--gain-rows: the benchmark\'s detectors (pixel variation 0.5-3 %%), '
                             'texture-dominated ones (pixel scatter and texture 5-10 %% each) '
                             'or patterned (8 unequal sectors, 3 %% columns, 10 %% texture)')
    parser.add_argument('--ice', choices=('usual', 'steep'), default='usual',
                        help='--gain-rows: the usual ice (2-20 %% peak to peak, a field and a '
                             'ramp mixed) or steep ramps (10-25 %%, 80-100 %% ramp, any angle)')
    parser.add_argument('--specimen', choices=('usual', 'hard'), default='usual',
                        help='--gain-rows: the usual edges (carbon 0.5-0.85, 5-33 %% of the '
                             'frame) or hard ones (carbon 0.3-0.85 over 5-50 %%, gold sheets '
                             'and lines, half within 15 degrees of an axis; steep ice always)')
    parser.add_argument('--json', help='write every movie\'s numbers here')
    args = parser.parse_args(argv)
    for name, allowed in (('cases', CASES), ('methods', METHODS)):
        unknown = set(getattr(args, name)) - set(allowed)
        if unknown:
            parser.error(f"unknown {name}: {', '.join(sorted(unknown))}")
    for name, allowed in (('modes', ('counting', 'integrating')), ('inputs', INPUTS)):
        unknown = set(getattr(args, name) or ()) - set(allowed)
        if unknown:
            parser.error(f"unknown {name}: {', '.join(sorted(unknown))}")
    try:
        args.seed_base = SEED_SETS[args.seed] if args.seed in SEED_SETS else int(args.seed)
    except ValueError:
        parser.error("--seed: tune, check or an integer")
    return args


def accumulated_r2(session, base, count, log):
    """R^2 to the true gain of each method's estimate accumulated over ``count`` movies."""
    folder = tempfile.mkdtemp(prefix='gain_accumulate_')
    try:
        gain, _, movies = simulate_session_movies(replace(session, movies=count), base, folder)
        out = {}
        for name, settings in [('paper', EstimatorSettings())] + list(BASELINES.items()):
            accumulator = GainAccumulator()
            for movie in movies:
                accumulator.add(estimate_gain([movie['path']], settings))
            gain_map, defects = accumulator.correction()
            out[name] = r_squared(gain_map, gain.correction, ~defects)
        log(f"# accumulation done ({count} movies)")
        return out
    finally:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)


def render(data):
    """The markdown report of a run (``data``: what ``--json`` writes)."""
    records, demo = data['sessions'], data['demo']
    methods = [m for m in METHODS if any(m in c for r in records for mv in r['movies']
                                         for c in mv['cases'].values())] or list(METHODS)
    cases = [c for c in CASES if any(c in r['cases'] for r in records)]
    ours = ('estimator.analysis verdict' if data['ours'] == 'analysis' else
            'paper SME + the noise-aware assessment of the SME map (before the verdict work)')
    lines = [f"`{data['command']}`", '',
             f"Seed set {data['seed']} (base {data['seed_base']}); ours = {ours}; "
             f"{data['seconds']:.0f} s.", '']
    for record in records:
        lines += session_table(record, cases, methods)
    if demo is not None:
        lines += [f"Demo session (`make demo`'s movies, judged without Scipion): ours flagged "
                  f"{demo['flagged']}, the paper's flags {demo['paper_flagged']}; the drifted "
                  f"movies are {demo['expected']}.", '']
    if data.get('accumulated'):
        lines += ["Raw gain accumulated without a reference, R^2 to the true gain: "
                  + ', '.join(f"{k} {_fmt(v)}" for k, v in data['accumulated'].items()), '']
    if data['claims']:
        lines += ['Claims (issue 11, "Done when"), ours:', '']
        lines += [f"- {'PASS' if c['pass'] else 'FAIL'}: {c['claim']}: {c['value']}"
                  for c in data['claims']]
    return '\n'.join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == '--table':  # re-print a saved run, no simulation
        with open(argv[1]) as handle:
            print(render(json.load(handle)))
        return 0
    args = parse(argv)
    command = 'python benchmarks/accuracy.py ' + ' '.join(shlex.quote(a) for a in argv)
    sessions = sessions_for(args)
    started = time.time()

    def log(text):
        print(text, file=sys.stderr, flush=True)

    if args.gain_rows:
        return gain_rows(sessions, args, command, log)

    records = []
    for session in sessions:
        records.append(run_session(session, args.seed_base, args.cases, args.methods,
                                   args.ours, log=log))
    demo = None if args.no_demo else demo_session(args.ours, log)
    accumulated = (accumulated_r2(sessions[0], args.seed_base, args.accumulate, log)
                   if args.accumulate else None)
    data = {'command': command.strip(), 'seed': args.seed, 'seed_base': args.seed_base,
            'ours': args.ours, 'sessions': records, 'demo': demo, 'accumulated': accumulated,
            'claims': [{'claim': w, 'pass': bool(ok), 'value': v}
                       for w, ok, v in claims(records, demo, args.methods)],
            'seconds': round(time.time() - started, 1)}
    publish(data, render, args.json)
    return 0


def gain_rows(sessions, args, command, log):
    """``--gain-rows``: the gain-mode rows of every session (benchmarks/gain_mode.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gain_mode import render_gain_rows, run_gain_session
    started = time.time()
    records = [run_gain_session(s, args.seed_base, seeds,
                                lambda *a: session_gain(*a, detector=args.detector), log,
                                ice=args.ice, specimen=args.specimen)
               for s in sessions]
    data = {'command': command.strip(), 'seed': args.seed, 'seed_base': args.seed_base,
            'gain_rows': records, 'seconds': round(time.time() - started, 1)}

    def render_rows(data):
        lines = [f"`{data['command']}`", '', f"Seed set {data['seed']}; {data['seconds']:.0f} s.", '']
        for record in data['gain_rows']:
            lines += render_gain_rows(record)
        return '\n'.join(lines)

    publish(data, render_rows, args.json)
    return 0


def publish(data, render_with, path=None):
    """Print the tables of a run and keep every number in ``path`` (JSON), if given."""
    print(render_with(data))
    if path:
        with open(path, 'w') as handle:
            json.dump(data, handle, indent=1)


if __name__ == '__main__':
    sys.exit(main())
