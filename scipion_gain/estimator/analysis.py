"""One analysis of movies, the same for the command line and the Scipion protocol.

``analyse(movies, reference, dark, settings)`` reads and conditions the frames
(:mod:`.frames`), estimates the gain or, with a reference, the residual gain
(:mod:`.gain`: Sorzano et al. 2018, Eqs. 1-7), and judges it:

* the paper's statistics and its three flags (:mod:`.statistics`), kept as
  their own fields: they are what the facilities monitor reads;
* the defects, with their kinds (:mod:`.defects`);
* the structure that the residual holds beyond the estimate's noise
  (:mod:`.assessment`) and a model of it;
* the verdict (:mod:`.verdict`): ok, or flagged with its reasons and the
  fraction of DQE that the reference loses at the movie's dose.

The result, :class:`MovieAnalysis`, holds the maps and one JSON-ready
dictionary (:meth:`MovieAnalysis.to_json`); front-ends write them with
:func:`scipion_gain.io.results.write_analysis` and add only what is theirs
(a movie id, Scipion objects). A running estimate over several movies
(:class:`.gain.GainAccumulator`) is judged by the same code
(:func:`analyse_accumulated`).

No Scipion import; NumPy arrays out.
"""
import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from .arrays import in_background
from .assessment import AssessmentThresholds, assess, structure_model
from .readout import reference_boundaries
from .defects import (BROKEN_COLUMN, BROKEN_ROW, DEAD_COLUMN, DEAD_PIXEL, DEAD_ROW, GOOD,
                      DefectSettings, find_defects, level_without)
from .filters import box_blur
from .dose import measured_dose
from .estimate import EstimatorSettings
from .gain import estimate_gain
from .session import SessionThresholds, pixel_structure, smooth_field
from .specimen import session_quality
from .stages import Dark, Dose, default_stages
from .stages.integrating import IntegratingSettings, PhotonTransfer, SignalCheck
from .statistics import Thresholds, map_statistics
from .verdict import VerdictSettings, judge

#: the convention of every map this project writes
CONVENTION = 'multiplies raw frames; mean 1'


@dataclass
class AnalysisSettings:
    """Everything that decides an analysis (each part has its own defaults)."""
    # the specimen-robust estimate (estimator.specimen): the paper's SME turns a carbon or
    # gold edge into stripes of the map, and the monitor's statistics with it
    estimator: EstimatorSettings = field(default_factory=lambda: EstimatorSettings(
        method='robust'))
    thresholds: Thresholds = field(default_factory=Thresholds)          # the paper's flags
    assessment: AssessmentThresholds = field(default_factory=AssessmentThresholds)
    defects: DefectSettings = field(default_factory=DefectSettings)
    verdict: VerdictSettings = field(default_factory=VerdictSettings)
    session: SessionThresholds = field(default_factory=SessionThresholds)
    integrating: IntegratingSettings = field(default_factory=IntegratingSettings)

    def to_json(self):
        return {'estimator': _jsonable(asdict(self.estimator)),
                'thresholds': asdict(self.thresholds),
                'assessment': asdict(self.assessment),
                'defects': asdict(self.defects),
                'verdict': asdict(self.verdict),
                'integrating': asdict(self.integrating)}


@dataclass
class MovieAnalysis:
    """The analysis of one movie (or of several movies estimated together).

    ``gain``: the estimate (residual, with a reference), a correction that
    multiplies raw frames, mean 1; ``defects``: a :class:`.defects.DefectMap`;
    ``structure``: the map without its noise (mean 1); ``corrected_sum``: the
    per-pixel sum of the frames as judged (multiplied by the reference);
    ``result``: the estimator's :class:`.estimate.GainResult` (its sums feed a
    running estimate); ``report``: the JSON-ready dictionary.
    """
    gain: np.ndarray
    defects: object
    structure: np.ndarray
    corrected_sum: np.ndarray
    report: dict
    result: object = None
    applied_reference: np.ndarray = None   # movies gain-corrected at acquisition (lattice stage)

    @property
    def kind(self):
        return self.report['kind']

    @property
    def verdict(self):
        return self.report['verdict']

    def to_json(self):
        """The statistics object (a copy), stable keys: see README "JSON"."""
        import copy
        return copy.deepcopy(self.report)


def analysis_stages(dark=None, settings=None):
    """The frame conditioning of an analysis: dark subtraction (if given), the
    defaults of :func:`.stages.default_stages`, the integrating-camera checks
    (:mod:`.stages.integrating`: a survey that refuses movies without electron signal
    and reports an offset; photon transfer) and the dose bookkeeping last.
    ``settings``: an :class:`.stages.integrating.IntegratingSettings`."""
    settings = settings or IntegratingSettings()
    stages = ([Dark(dark)] if dark is not None else []) + default_stages()
    check = SignalCheck(settings, dark=dark is not None)
    conversion = PhotonTransfer(check, stated=settings.stated_adu_per_electron)
    return stages + [check, conversion, Dose(conversion)]


def analyse(movies, reference=None, dark=None, settings=None, device='cpu', progress=None,
            stages=None, keep_sums=True, sums_to=None):
    """Estimate and judge the gain (with ``reference``: the residual gain) of ``movies``.

    ``movies``: paths, whose frames together give one estimate; ``reference``:
    a gain reference that multiplies raw frames (residual mode); ``dark``: a
    dark reference subtracted from every frame first. ``keep_sums=False``: the
    result's sums for a session (Eq. 7's numerator and denominator, the pixel
    term's levels) are dropped before the judging, for a caller that adds the
    movie to no session (at 4096 x 4096 two float64 frames and a float32 one that
    the judging's peak no longer holds; the robust method drops them as soon as its map
    is made, before its pixel term). ``sums_to``: a function given the result while it
    holds those sums, its dose measured (``result.electrons``), before the judging (the
    per-movie job saves them there); with ``keep_sums=False`` they are dropped after it.
    Returns a :class:`MovieAnalysis`; raises :class:`~scipion_gain.io.InputError` on
    input that cannot be judged.
    """
    settings = settings or AnalysisSettings()
    stages = analysis_stages(dark, settings.integrating) if stages is None else stages
    dose = next((s for s in stages if isinstance(s, Dose)), None)
    stated = settings.integrating.stated_adu_per_electron
    pending_dose = []

    def measure_dose_beside(frame_sum):
        """The frames are read and summed: the dose needs nothing more, so it is measured
        on the second core while the estimate goes on (the robust method's specimen
        model). The photon transfer's lazy result is taken here, not in both threads."""
        if getattr(dose.conversion, 'finished', False):
            dose.conversion.result()
        pending_dose.append(in_background(measured_dose, dose, frame_sum, stated))

    result = estimate_gain(list(movies), settings.estimator, gain_reference=reference,
                           device=device, progress=progress, stages=stages,
                           keep_sums=keep_sums or sums_to is not None,
                           summed=measure_dose_beside if dose is not None else None)
    measured, dose_notes = (pending_dose[0].result() if pending_dose
                            else measured_dose(dose, result.frame_sum, stated))
    electrons = measured['electrons_per_pixel'] if measured else None
    result.electrons = electrons
    if sums_to is not None:
        sums_to(result)
    if not keep_sums:
        result.numerator = result.denominator = result.pixel_level = None
    report = {
        'kind': 'residual' if result.residual else 'gain',
        'convention': CONVENTION,
        'frames': int(result.frames),
        'device': result.device,
        'settings': _jsonable(asdict(result.settings)),
        'iterations': int(result.iterations),
        'converged': bool(result.converged),
        'sigma': _sigma_summary(result.sigmas),
        'seconds': round(float(result.seconds), 3),
        'input': dict(result.input),
    }
    # the paper's statistics need the map only, the readout boundaries the reference only:
    # on two threads at once, taken before the defect test, the command's largest
    # temporaries, so that their temporaries are not held at its peak (beside it, they
    # raised the per-movie job's peak by 80 MB)
    gain, no_signal = _map_of(result)
    statistics = in_background(map_statistics, gain, settings.thresholds, mask=~no_signal)
    boundaries = (in_background(readout_boundaries, result.reference)
                  if result.reference is not None else None)
    analysis = _judge(result, result.reference, settings, report, electrons,
                      measured['source'] if measured else None, statistics.result(),
                      None if boundaries is None else boundaries.result())
    if measured:
        analysis.report['dose'] = measured
    result.notes = list(result.notes) + dose_notes
    analysis.result = result
    analysis.applied_reference = next((s.applied_reference for s in stages
                                       if getattr(s, 'applied_reference', None) is not None), None)
    analysis.report['notes'] = (list(result.notes) + list(result.method_notes)
                                + analysis.report.pop('_notes', []))
    return analysis


def analyse_accumulated(accumulator, reference=None, settings=None):
    """The same judgement of a running estimate (:class:`.gain.GainAccumulator`).

    ``reference``: the one its residuals were made with (for the raw counts
    of the defect test). The DQE loss is given at one movie's dose (the mean
    electrons per pixel of its movies, when known): what the structure, now
    measured far more precisely, costs each movie corrected with that
    reference.
    """
    settings = settings or AnalysisSettings()
    # what the structure costs each movie of the session: the loss at one movie's dose
    electrons = (accumulator.electrons / accumulator.count
                 if accumulator.electrons and accumulator.count else None)
    report = {'kind': 'residual' if reference is not None else 'gain',
              'convention': CONVENTION, 'frames': int(accumulator.frames),
              'movies': list(accumulator.members)}
    analysis = _judge(accumulator, reference, settings, report, electrons, 'movies')
    analysis.report['notes'] = analysis.report.pop('_notes', [])
    quality = session_quality(getattr(accumulator, 'profiles', []),
                              getattr(accumulator, 'weights', []))
    if quality is not None:   # a robust session: how each movie was weighed, the noise left
        analysis.report['session_quality'] = quality
        if quality['down_weighted']:
            analysis.report['notes'].append(
                f"movies {', '.join(map(str, quality['down_weighted']))} (in the order added) "
                "weigh less than half in the running estimate: their line structure stands "
                "far from the other movies' (a specimen edge along a pixel axis?)")
    return analysis


def _judge(sums, reference, settings, report, electrons, source='counts', statistics=None,
           boundaries=None):
    """Statistics, defects, assessment, structure and verdict of an estimate's sums.

    ``sums`` is a GainResult or a GainAccumulator: ``gain``/``defects`` (or
    ``correction()``), ``numerator``/``denominator`` and ``frame_sum``; an
    accumulator also holds what a session adds (``tiles``, ``alternate_sum``).
    ``statistics``: the map's :func:`.statistics.map_statistics`, ``boundaries``: the
    reference's :func:`readout_boundaries`, when the caller has them already.
    """
    gain, no_signal = _map_of(sums)
    counts = in_electrons(raw_count_sums(sums.frame_sum, reference), electrons)
    defects = find_defects(gain=None if counts is not None else gain, counts=counts,
                           no_signal=no_signal, settings=settings.defects)
    unusable = getattr(sums, 'unusable', None)
    if unusable is not None and unusable.any():
        defects.mark_unusable(unusable)
    dim_zeros = shot_noise_zeros(counts, defects, no_signal, settings.defects)
    del counts   # (residual: a map of its own) not needed past the defect test
    pending = None
    if statistics is None:
        # on the second core, beside the assessment (after the defect test and the dim
        # zeros' box mean, whose temporaries are the command's largest)
        pending = in_background(map_statistics, gain, settings.thresholds, mask=~no_signal)
    report['defects'] = dict(defects.to_dict(), no_signal=int(no_signal.sum()),
                             pixels=int(defects.mask.sum()))
    # the structure is judged on the sum of the corrected frames, where the specimen stays
    # where it is (the equalized map spreads it along whole lines); a method without
    # frame sums is judged on its map's reciprocal (the sum it implies)
    total = sums.frame_sum
    if total is None:
        total = np.where(no_signal, 0.0, 1.0 / np.where(gain > 0, gain, 1.0))
    if boundaries is None:
        boundaries = readout_boundaries(reference)
    usable = ~(defects.mask | no_signal)
    if dim_zeros is not None:
        usable |= dim_zeros
    incomplete = getattr(sums, 'incomplete', None)
    if incomplete is not None:   # a session's sums that miss a movie: not like their neighbours
        usable &= ~incomplete
    halves = _session_halves(sums)
    assessment, model = assess(total, usable, settings.assessment, boundaries, halves)
    structure = structure_model(gain.shape, model)
    if hasattr(sums, 'tiles'):   # a session: what only several movies show
        structure = _session_structure(sums, halves, usable, model, structure, assessment,
                                       settings.session)
    report.update(statistics if pending is None else pending.result())
    report['assessment'] = assessment
    report['dose'] = ({'electrons_per_pixel': float(electrons), 'source': source or 'counts'}
                      if electrons else None)
    report['verdict'] = judge(assessment, electrons, settings.verdict, report['kind'])
    report['_notes'] = list(defects.notes)
    return MovieAnalysis(gain=gain, defects=defects, structure=structure,
                         corrected_sum=sums.frame_sum, report=report)


#: expected counts under which a pixel's zero is taken for shot noise: leaving out the zeros
#: of pixels expecting lambda leaks lambda exp(-lambda) / (1 - exp(-lambda)) of the
#: reference's own pattern into the mean of the rest, 1e-3 at 9 counts
DIM_COUNTS = 9.0


def shot_noise_zeros(counts, defects, no_signal, settings):
    """Pixels called dead or without signal only for the zeros of a dim region: the
    structure is judged with them (None: no counts, or no such pixel).

    Where a pixel expects few counts (under nearly opaque gold foil: a few tenths of an
    electron in a movie) a zero is the shot noise: P(0) = exp(-lambda). The defect test
    cannot tell a dead pixel from it by its response below ``sigmas``^2 expected counts
    (:mod:`.defects`), and leaving the zeros out biases the mean of what is left:
    E[c | c > 0] = lambda / (1 - exp(-lambda)), so that the sum corrected by an exact
    reference, c / g, averages to (1 / g) (1 + lambda / 2) over the pixels that recorded:
    the reference's whole inverse pattern (its sectors' steps, its column pattern)
    shows under the foil as if the reference were wrong there. These pixels (dead pixels,
    pixels of dead lines, pixels without signal, where the local level, zeros included, is
    under :data:`DIM_COUNTS`) stay in the line profiles; hot pixels, broken lines and what
    the movie holds no value for stay out. Above it the zeros left out leak less than
    1e-3 of the reference's pattern, and a dead pixel kept would dent its line.
    """
    if counts is None:
        return None
    labels = defects.labels
    dead = (labels == DEAD_PIXEL) | (labels == DEAD_ROW) | (labels == DEAD_COLUMN)
    dead |= no_signal & (labels == GOOD)
    if not dead.any():
        return None
    level = recorded_level(counts, (labels == GOOD) | dead, int(settings.box) | 1)
    dim = dead & (level < DIM_COUNTS)
    dim &= (labels != BROKEN_ROW) & (labels != BROKEN_COLUMN)
    return dim if dim.any() else None


def recorded_level(counts, recorded, size):
    """``masked_box_mean(counts, recorded, size)[0]``, the same values, in a third of its time
    where all but a few pixels recorded (the hot ones): the plain box mean (the box's share
    of recorded pixels is then exactly 1), made again over the recorded pixels only in the
    windows around the others (:func:`.defects.level_without`, which falls back on the
    whole frame's masked mean where they are many: a broken line)."""
    level = box_blur(np.array(counts, dtype=np.float32), size, np, overwrite=True)
    left_out = ~recorded
    if not left_out.any():
        return level
    return level_without(counts, recorded, level, left_out, size, np)[0]


def _session_halves(sums):
    """A session's corrected sums in its two halves of movies (:func:`.session.half_of`),
    or None: one movie, or an accumulator without the alternate sum."""
    first = getattr(sums, 'alternate_sum', None)
    if first is None or sums.frame_sum is None or getattr(sums, 'count', 0) < 2:
        return None
    second = sums.frame_sum - first
    if not (np.any(first > 0) and np.any(second > 0)):
        return None
    return first, second


def _session_structure(accumulator, halves, usable, model, structure, assessment, thresholds):
    """Add the smooth field and the pixel structure of a session to its assessment and map;
    ``halves``: what :func:`_session_halves` gives."""
    shape = structure.shape
    lines = np.log(structure_model(shape, model, sign=1.0))   # the lines as the sums show them
    smooth, smooth_map = smooth_field(accumulator.tiles, shape, lines, thresholds)
    first, second = halves or (None, None)
    pixels, pixel_map = pixel_structure(first, second, usable, lines, thresholds,
                                        movies=accumulator.count)
    assessment['components'] += [smooth, pixels]
    assessment['flagged'] = any(c['found'] for c in assessment['components'])
    log_map = np.log(structure.astype(np.float64))
    for extra in (smooth_map, pixel_map):
        if extra is not None:
            log_map = log_map + extra
    if smooth_map is None and pixel_map is None:
        return structure
    model_map = np.exp(log_map - log_map[usable].mean() if usable.any() else log_map)
    return (model_map / model_map.mean()).astype(np.float32)


_BOUNDARIES = {}


def readout_boundaries(reference):
    """The readout boundaries a reference shows (readout.reference_boundaries), or None.

    Computed once per reference (a session's movies share one): cached by a
    fingerprint of its values.
    """
    if reference is None:
        return None
    reference = np.asarray(reference)
    key = (reference.shape, hashlib.sha1(np.ascontiguousarray(reference[::7, ::5]).tobytes())
           .hexdigest())
    if key not in _BOUNDARIES:
        if len(_BOUNDARIES) > 8:
            _BOUNDARIES.clear()
        _BOUNDARIES[key] = reference_boundaries(reference)
    return _BOUNDARIES[key]


def _map_of(sums):
    if hasattr(sums, 'correction'):
        return sums.correction()
    return sums.gain, sums.defects


def raw_count_sums(frame_sum, reference=None):
    """Per-pixel sums of the frames before the reference: the defect test's counts.

    In residual mode the frames were multiplied by the reference; it is
    divided out again here (the defect test is a Poisson test on what the
    camera recorded). None when there is no frame sum.
    """
    if frame_sum is None:
        return None
    if reference is None:
        return frame_sum
    counts = np.array(frame_sum, dtype=np.float32)   # float32 holds a count sum to 1e-7
    reference = np.asarray(reference, dtype=np.float32)
    safe = np.isfinite(reference) & (reference > 0)
    np.divide(counts, reference, out=counts, where=safe)
    counts[~safe] = 0
    return counts


def in_electrons(counts, electrons):
    """Raw sums scaled to the electrons they hold on average (the defect test is a Poisson test).

    ``electrons``: electrons per pixel over the same frames (shot-noise
    equivalent for integrating frames: see :mod:`.stages.integrating`). Counting sums
    are their electrons already (the scale is 1 and they are left as they are);
    integrating sums in ADU are divided by the variance slope, so that their
    variance equals their mean as the test assumes. Unchanged when the
    electrons are not known.
    """
    if counts is None or not electrons:
        return counts
    level = float(counts.mean())
    if not level > 0:
        return counts
    scale = float(electrons) / level
    # float32 (the defect test's precision), made in one pass from float64 sums
    return counts if abs(scale - 1.0) < 1e-3 else np.multiply(counts, scale, dtype=np.float32)


def _sigma_summary(sigmas):
    sigmas = np.array(sigmas, dtype=float).reshape(-1, 2)
    if not sigmas.size:
        return None
    return {'columns_median': float(np.median(sigmas[:, 0])),
            'rows_median': float(np.median(sigmas[:, 1]))}


def _jsonable(settings):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}
