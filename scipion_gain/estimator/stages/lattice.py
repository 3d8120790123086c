"""Movies gain-corrected at acquisition: the counts and the factors that were applied.

K2/K3 and Falcon counting movies are often written gain-normalised: each
frame is counts x correction (float32, float16). Such frames are a
*lattice*: every non-zero value of a pixel is a whole number of electrons
times that pixel's applied factor f. The factor is then recoverable exactly
(RELION's ``relion_convert_to_tiff --estimate_gain``): it is the largest
common divisor of the pixel's values, and value / f is the count. With the
counts and the factors, the estimate is exactly the residual path of raw
frames with ``--gain`` (Sorzano et al. 2018, Sec. 1: the residual of the
applied reference), ties included; without them the rank mapping of Eq. 4
re-creates the correction (the frames are a comb, not a continuum).

:class:`Lattice` is the frame-conditioning stage (:mod:`..frames`) that does it:

* ``wants_survey``: frames that hold whole numbers are counts already (or
  integrating ADU, or gain-normalised output rounded to integers, whose
  factors are lost); frames with negative values are integrating (an offset
  or a dark taken off); frames without exact zeros are not counts (a lattice
  at a counting dose has empty pixels in every frame). Anything else is
  surveyed.
* ``survey``: per pixel, streaming over every frame, a common divisor of the
  non-zero values (:class:`LatticeSurvey`: the first value, then Euclid's
  algorithm with a tolerance set by the frames' precision, float32 or
  float16, whenever a value is not a whole multiple of it), the number of
  non-zero values, their sum and the sum of their counts.
* ``begin``: the movie is a lattice when at most 1 % of the pixels with two
  or more values are off it. Then per pixel: the factor sum / counts; the
  factor the neighbours suggest (a mean of log factors over pixels with
  enough values in a window of about 9 x 9 pixels); whether the divisor found is a whole multiple j of the true
  factor (a pixel that saw only 2s and 4s): the j of 1..4 with the highest
  posterior (by a margin), from the pixel's frames with no value, with one
  divisor and with more (Poisson at the neighbours' rate), and the spread of
  the factors around the neighbours' (:func:`_log_ratio_prior`); pixels that never saw an electron take the
  neighbours' factor (their counts are 0 anyway); pixels off the lattice, or
  with a factor more than 8 times off the neighbours' (a hot pixel at a
  constant value), are masked as unusable and reported. The reference is
  the factors scaled to mean 1 (it multiplies raw frames, as every reference
  here); with a ``--gain`` given, it is compared with the recovered one (in
  the 8 orientations, up to scale) and the residual is computed against the
  recovered one: that is the correction the frames carry.
* ``apply``: each frame becomes its counts, rint(value / factor) (0 where
  masked).

Integer frames are also looked at (``apply`` of the first pass, on a grid of
pixels): gain-normalised counts rounded to integers break the Poisson
relation between a pixel's numbers of 1s, 2s and 3s (n1 n3 / n2 (n2 - 1) is
2/3 for any Poisson rate, more for a rate that varies over frames); a ratio
well below says so in a note. Their factors cannot be recovered.

No Scipion import; NumPy arrays (the stages run on the host).
"""
from dataclasses import dataclass
import math

import numpy as np

from ..filters import box_blur, grid
from ..orientation import apply_orientation, find_orientation
from ..statistics import significant
from .base import Stage, whole_numbers

#: the movie is a lattice when at most this share of the pixels with 2+ values is off it
MAX_OFF_LATTICE = 0.01
#: ... and at least this share of the pixels has 2+ non-zero values
MIN_TESTED = 0.05
#: a pixel's factor is pinned by this many non-zero values (else: few values, reported)
MIN_VALUES = 3
#: a value is a whole multiple k of the factor when |value / factor - k| <= TOLERANCE x eps x (k + 1)
TOLERANCE = 8.0
#: counts above this per value cannot be verified at the frames' precision (float16: ~60)
MAX_TOLERANCE = 0.25
#: multiples of the true factor tested (a pixel that never saw 1 electron)
MAX_MULTIPLE = 4
#: a factor this many times off its neighbours' is not a detector's (a hot pixel): unusable
MAX_FACTOR_RATIO = 8.0
#: log odds by which a multiple j > 1 must beat the divisor found (j = 1)
MULTIPLE_MARGIN = 2.0
#: the given reference is the applied one when their log ratio spreads at most SAME_SPREAD
#: (robust) and SAME_SHARE of the pixels agree to SAME_WITHIN
SAME_SPREAD = 0.005
SAME_SHARE = 0.99
SAME_WITHIN = 0.01
#: window of the neighbours' factor (pixels; blocks of a third of it)
NEIGHBOURHOOD = 12
#: Euclid steps at most (counts below a few hundred need far fewer)
EUCLID_STEPS = 12
#: the smallest divisor accepted, as a share of the values it divides
MIN_DIVISOR = 1.0 / 255
#: a survey that finds this share of its pixels off any lattice after SETTLE frames stops
SETTLE = 4
#: rows of a frame handled at once in the survey (bounded temporaries)
CHUNK_ROWS = 256
#: integer frames: n1 n3 / n2 (n2 - 1) below this (Poisson: 2/3; raw counting movies measured
#: 0.65 to 0.69, gain-normalised ones rounded 0.50 to 0.61 at 10 to 20 % spread) says "rounded"
ROUNDED_RATIO = 0.62
#: ... from at least this many pairs of 2s
ROUNDED_MIN_PAIRS = 1000


@dataclass
class LatticeSettings:
    max_off_lattice: float = MAX_OFF_LATTICE
    min_values: int = MIN_VALUES
    max_multiple: int = MAX_MULTIPLE
    max_factor_ratio: float = MAX_FACTOR_RATIO
    neighbourhood: int = NEIGHBOURHOOD


def precision_of(frame):
    """('float16' | 'float32', unit roundoff) of a frame's values: float16 when every value
    is a half-precision number (a float16 movie, read as float32)."""
    values = np.asarray(frame, dtype=np.float32)
    with np.errstate(over='ignore'):
        half = values.astype(np.float16).astype(np.float32)
    if np.array_equal(half, values):
        return 'float16', 2.0 ** -11
    return 'float32', 2.0 ** -24


def approximate_gcd(a, b, eps, max_steps=EUCLID_STEPS):
    """Euclid's algorithm on positive floats whose values carry a relative error ``eps``.

    Returns (divisor, ok): ``divisor`` divides a and b (each is a whole
    multiple of it to within TOLERANCE / 2 times the rounding error the steps
    have accumulated: every value starts with eps x value, and a remainder
    x - k y carries the errors of x and of k y). ``ok`` is False where no
    divisor of at least MIN_DIVISOR of the larger value is found within
    ``max_steps`` steps: values that are not multiples of one factor.
    """
    x = np.maximum(a, b).astype(np.float64)
    y = np.minimum(a, b).astype(np.float64)
    x_error, y_error = eps * x, eps * y
    top = x.copy()
    divisor = np.zeros_like(x)
    done = np.zeros(x.shape, dtype=bool)
    for _ in range(max_steps):
        active = np.flatnonzero(~done & (y > MIN_DIVISOR * top))
        if not active.size:
            break
        xa, ya = x[active], y[active]
        k = np.rint(xa / ya)
        remainder = np.abs(xa - k * ya)
        error = x_error[active] + k * y_error[active]
        fits = remainder <= 0.5 * TOLERANCE * error
        divisor[active[fits]] = ya[fits]
        done[active[fits]] = True
        rest = active[~fits]
        x[rest], y[rest] = ya[~fits], remainder[~fits]
        x_error[rest], y_error[rest] = y_error[rest], error[~fits]
    return divisor, done


class LatticeSurvey:
    """Per pixel, over every frame: a common divisor of the non-zero values and their counts.

    ``factor``: the divisor (0: no non-zero value yet); ``values``: number of
    non-zero values; ``total``: their sum; ``counts``: the sum of value /
    factor; ``off``: pixels whose values are not whole multiples of one factor
    (or negative). ``worst``: the largest distance of a value from its whole
    multiple, in counts. Frames are taken a chunk of rows at a time.
    """

    def __init__(self, shape, eps):
        self.shape = shape
        self.eps = float(eps)
        # float32 state (336 MB at 4096 x 4096): a factor to 6e-8, sums of a movie's values
        # to well within the tolerance, counts exact below 2^24
        self.factor = np.zeros(shape, np.float32)
        self.values = np.zeros(shape, np.uint16)
        self.total = np.zeros(shape, np.float32)
        self.counts = np.zeros(shape, np.float32)
        self.ones = np.zeros(shape, np.uint16)      # values of exactly one factor
        self.off = np.zeros(shape, bool)
        self.worst = 0.0
        self.frames = 0

    def add(self, frame):
        if self.frames == np.iinfo(self.values.dtype).max:
            return  # 65535 frames are plenty
        frame = np.asarray(frame, dtype=np.float32)
        for a in range(0, self.shape[0], CHUNK_ROWS):
            self._add(frame[a:a + CHUNK_ROWS], slice(a, a + CHUNK_ROWS))
        self.frames += 1

    def _add(self, v, rows):
        """One chunk of rows of a frame (float32: every test below is within its rounding;
        a value that does not fit goes through :func:`approximate_gcd` in float64)."""
        factor, off = self.factor[rows], self.off[rows]
        if float(v.min()) < 0:
            off |= v < 0
        # plain ufuncs throughout: NumPy's masked (where=) loops are many times slower
        seen = v > 0
        seen &= ~off
        fresh = seen & (factor == 0)
        if fresh.any():
            factor[...] = np.where(fresh, v, factor)
        with np.errstate(divide='ignore', invalid='ignore'):
            q = v / factor            # 0 / 0 where nothing was seen yet: NaN, never fits
        k = np.rint(q)
        miss = np.subtract(q, k, out=q)
        np.abs(miss, out=miss)
        allowed = k + np.float32(1)
        allowed *= np.float32(TOLERANCE * self.eps)
        fits = miss <= allowed
        fits &= seen
        fits &= k >= 1
        unverifiable = allowed > MAX_TOLERANCE   # counts too high for the frames' precision
        unverifiable &= fits
        if unverifiable.any():
            off |= unverifiable
            fits &= ~unverifiable
        else:
            unverifiable = None
        if fits.any():
            self.worst = max(self.worst, float(np.where(fits, miss, np.float32(0)).max()))
        redo = seen & ~fits
        if unverifiable is not None:
            redo &= ~unverifiable
        redo = np.flatnonzero(redo)
        counts, total, values = self.counts[rows], self.total[rows], self.values[rows]
        ones = self.ones[rows]
        if redo.size:
            old = factor.ravel()[redo].astype(np.float64)
            value = v.ravel()[redo].astype(np.float64)
            divisor, ok = approximate_gcd(old, value, self.eps)
            bad = redo[~ok]
            off.ravel()[bad] = True
            good = redo[ok]
            divisor = divisor[ok]
            scale = np.rint(old[ok] / divisor)          # the old factor in new factors
            count = np.rint(value[ok] / divisor)
            new_total = total.ravel()[good].astype(np.float64) + value[ok]
            new_counts = counts.ravel()[good].astype(np.float64) * scale + count
            # the factor from every value so far (least squares): precise in float16 too
            factor.ravel()[good] = new_total / new_counts
            total.ravel()[good] = new_total
            counts.ravel()[good] = new_counts
            values.ravel()[good] += 1
            # the old values are now whole multiples of at least 2: none is a single count
            ones.ravel()[good] = np.where(scale > 1, 0, ones.ravel()[good]) + (count == 1)
        total += np.where(fits, v, np.float32(0))
        counts += np.where(fits, k, np.float32(0))
        values += fits
        fits &= k == 1
        ones += fits

    def refine(self):
        """Each factor from all its values (sum / counts)."""
        np.divide(self.total, self.counts, out=self.factor, where=self.counts > 0)

    def off_share(self):
        """(share of the pixels with 2+ values off the lattice, share with 2+ values)."""
        tested = (self.values >= 2) | self.off
        n = int(tested.sum())
        return (float(self.off[tested].mean()) if n else 1.0), n / float(self.off.size)


class Lattice(Stage):
    """Frames gain-corrected at acquisition turned back into counts (see the module docstring).

    After :meth:`begin`, ``path`` is 'lattice' or 'raw', ``why`` says why;
    for a lattice, ``applied_reference`` is the recovered reference (multiplies
    raw frames, mean 1, float32) and the source's gain reference is set to it.
    Its JSON is ``input.lattice``.
    """

    name = 'lattice'

    def __init__(self, settings=None):
        super().__init__()
        self.settings = settings or LatticeSettings()
        self.path = 'raw'
        self.why = None
        self.precision = None
        self.survey_data = None
        self.applied_reference = None
        self.survey_done = False
        self._mask = None
        self._details = {}
        self._rounded = None      # integer frames: (n1 n3, n2 (n2 - 1)) sums on a grid
        self._seen = set()

    # -- survey -----------------------------------------------------------------------
    def wants_survey(self, first_frame):
        frame = np.asarray(first_frame)
        if frame.ndim != 2 or frame.size == 0:
            self.why = 'not a 2-D frame'
            return False
        if float(frame.min()) < 0:
            self.why = ('frames hold negative values: integrating data (an offset or a dark '
                        'reference taken off), not counts times factors')
            return False
        if whole_numbers(frame):
            self.why = ('frames hold whole numbers: raw counts (or integrating ADU, or '
                        'gain-normalised counts rounded to integers, whose factors are lost); '
                        'estimated as recorded')
            self._rounded = [0.0, 0.0]
            return False
        if np.count_nonzero(frame == 0) < 1e-4 * frame.size:
            self.why = ('frames hold no exact zeros: not counts times factors (a counting '
                        'frame has empty pixels); integrating or processed data, estimated as '
                        'recorded')
            return False
        self.precision, eps = precision_of(frame)
        self.survey_data = LatticeSurvey(frame.shape, eps)
        return True

    def survey(self, key, frame):
        survey = self.survey_data
        if survey is None or self.survey_done:
            return
        survey.add(frame)
        if survey.frames == SETTLE:
            share, _ = survey.off_share()
            if share > 0.5:  # clearly not a lattice: the rest of the survey is skipped
                self.survey_done = True

    # -- decision -----------------------------------------------------------------------
    def begin(self, source):
        survey = self.survey_data
        if survey is None:
            self._details.setdefault('checked', False)
            return
        share, tested = survey.off_share()
        self._details = {'checked': True, 'precision': self.precision,
                         'frames_surveyed': int(survey.frames),
                         'off_lattice_share': _round(share), 'tested_share': _round(tested)}
        if share > self.settings.max_off_lattice or tested < MIN_TESTED:
            self.why = (f"values are not whole multiples of one factor per pixel "
                        f"({100 * share:.1f} % of the {100 * tested:.0f} % of pixels with two or "
                        f"more values are off any lattice): integrating or processed data, or "
                        f"not gain-corrected counts; estimated as recorded"
                        if tested >= MIN_TESTED else
                        f"too few pixels with two or more non-zero values "
                        f"({100 * tested:.1f} %) to tell a lattice: estimated as recorded")
            self.survey_data = None
            return
        survey.refine()
        factor, mask, details = recover_factors(survey, self.settings)
        self.survey_data = None
        scale = float(factor.mean(dtype=np.float64))
        factor /= np.float32(scale)
        self.applied_reference = factor           # float32, mean 1
        self._mask = mask if mask.any() else None
        self._masked = np.flatnonzero(mask)
        self._unit = np.float32(1.0 / scale)      # counts = frame / reference / scale
        self.path = 'lattice'
        self.why = (f"every non-zero value is a whole number of counts times a per-pixel factor "
                    f"({self.precision} frames; {100 * (1 - share):.2f} % of the pixels with two "
                    f"or more values on the lattice): the frames were gain-corrected at "
                    f"acquisition; estimated on the recovered counts with the recovered factors "
                    f"as the reference (residual of the applied reference)")
        self._details.update(details)
        self._details['worst_distance_counts'] = _round(survey.worst)
        given = source.gain_reference
        if given is not None:
            self._details['given_reference'] = compare_references(self.applied_reference, given,
                                                                  ~mask & details['_pinned'])
        self._details.pop('_pinned', None)
        details.pop('_pinned', None)
        source.gain_reference = self.applied_reference
        self.notes.append(self._note())

    def _note(self):
        d = self._details
        pixels = d['pixels']
        parts = [f"frames gain-corrected at acquisition ({self.precision}): recovered the counts "
                 f"and the applied factors (spread {100 * d['factors']['spread']:.1f} %); the "
                 f"estimate is the residual of the applied reference"]
        if pixels['unseen']:
            parts.append(f"{pixels['unseen']} pixel(s) never saw an electron: the neighbours' "
                         f"factor")
        if pixels['few_values']:
            parts.append(f"{pixels['few_values']} pixel(s) with fewer than "
                         f"{self.settings.min_values} non-zero values: factor as the neighbours "
                         f"suggest")
        if pixels['multiples']:
            parts.append(f"{pixels['multiples']} pixel(s) whose divisor was a whole multiple of "
                         f"the factor (no single count seen) corrected")
        if pixels['off_lattice'] or pixels['implausible']:
            parts.append(f"{pixels['off_lattice'] + pixels['implausible']} pixel(s) off the "
                         f"lattice or with an implausible factor (hot?) masked as unusable")
        note = '; '.join(parts)
        given = d.get('given_reference')
        if given:
            note += '. ' + given['sentence']
        return note

    # -- frames -------------------------------------------------------------------------
    def apply(self, key, frame):
        if self.path == 'lattice':
            # in place where the frame is the reader's own float32 copy (no second frame held)
            fresh = (isinstance(frame, np.ndarray) and frame.dtype == np.float32
                     and frame.flags.writeable and frame.flags.owndata)
            counts = np.divide(frame, self.applied_reference, out=frame if fresh else None,
                               dtype=np.float32)
            counts *= self._unit
            np.rint(counts, out=counts)
            counts.ravel()[self._masked] = 0  # off the lattice (hot): nothing counted
            return counts
        if self._rounded is not None and key not in self._seen:
            self._seen.add(key)
            self._count_small_values(frame)
        return frame

    def _count_small_values(self, frame):
        if not hasattr(self, '_small'):
            self._grid = grid(frame.shape)
            shape = np.asarray(frame)[self._grid].shape
            self._small = np.zeros((3,) + shape, np.uint32)
        sample = np.asarray(frame)[self._grid]
        for value in (1, 2, 3):
            self._small[value - 1] += sample == value

    def end(self, source):
        if self._rounded is not None and hasattr(self, '_small'):
            n1, n2, n3 = (h.astype(np.float64) for h in self._small)
            self._rounded = [float((n1 * n3).sum()), float((n2 * (n2 - 1)).sum())]

    @property
    def unusable(self):
        return self._mask

    def rounded_ratio(self):
        """n1 n3 / n2 (n2 - 1) over the grid of integer frames (Poisson: 2/3), or None."""
        if not self._rounded or self._rounded[1] < ROUNDED_MIN_PAIRS:
            return None
        return self._rounded[0] / self._rounded[1]

    def info(self):
        out = {'path': self.path, 'why': self.why}
        out.update({k: v for k, v in self._details.items() if not k.startswith('_')})
        ratio = self.rounded_ratio()
        if self._rounded is not None:
            out['rounded'] = {'ratio_n1n3_n2n2': _round(ratio) if ratio is not None else None,
                              'poisson': _round(2.0 / 3.0),
                              'suspected': bool(ratio is not None and ratio < ROUNDED_RATIO)}
        return out

    def summary_notes(self, source):
        ratio = self.rounded_ratio()
        if ratio is not None and ratio < ROUNDED_RATIO:
            return [f"frames hold whole numbers that do not count like electrons (values 1, 2, "
                    f"3 of a pixel: n1 n3 / n2 (n2 - 1) = {ratio:.2f}, Poisson 0.67): "
                    f"gain-normalised counts rounded to integers? Their factors cannot be "
                    f"recovered; estimated as recorded"]
        if self.path == 'raw' and self.why and self._rounded is None:
            # float frames that are not a lattice: which path and why (whole numbers, the
            # common case of raw counts, need no note)
            return [f"not gain-corrected counts: {self.why}"]
        return []


def recover_factors(survey, settings):
    """(factor, unusable mask, details) from a finished survey (see the module docstring).

    float32 maps, worked in place (a few 4096 x 4096 maps at a time); the
    survey's factor map becomes the returned factor.
    """
    factor = survey.factor
    values = survey.values
    off = survey.off
    frames = max(1, survey.frames)
    survey.counts = None  # not needed any more (memory: a frame's worth)
    seen = (values > 0) & ~off
    pinned = seen & (values >= settings.min_values)
    size = settings.neighbourhood
    logs = np.where(seen, factor, np.float32(1))
    np.log(logs, out=logs)
    # the neighbours' factor: a box mean of log factors over pinned pixels; twice, the
    # second time without pixels far from the first (multiples, hot pixels)
    neighbours = _box_mean(logs, pinned, size)
    neighbours -= logs
    neighbours *= -1                      # the log ratio to the first neighbours' factor
    reach = max(4 * _robust_std(_sample(neighbours, pinned)), 0.05)
    keep = neighbours < reach
    keep &= neighbours > -reach
    keep &= pinned
    del neighbours
    neighbours = _box_mean(logs, keep, size)
    del keep
    ratio = logs
    ratio -= neighbours                   # log(factor / neighbours' factor), in place
    del logs
    # multiples: j in 1..max_multiple, the highest posterior (j > 1 by a margin)
    multiples = 0
    candidates = np.flatnonzero(seen & (ratio > 0.5 * math.log(2.0)))
    if candidates.size:
        prior = _log_ratio_prior(_sample(ratio, pinned & (values >= 2 * settings.min_values)))
        # the flux each pixel's neighbours receive (corrected values per frame)
        neighbour_flux = _box_mean(survey.total, ~off, size) / np.float32(frames)
        f = factor.ravel()[candidates].astype(np.float64)
        n = values.ravel()[candidates].astype(np.float64)
        single = survey.ones.ravel()[candidates].astype(np.float64)
        expected = neighbour_flux.ravel()[candidates].astype(np.float64)
        del neighbour_flux
        survey.total = None
        centre = np.log(f) - ratio.ravel()[candidates]
        scores = []
        for j in range(1, settings.max_multiple + 1):
            # the pixel's frames: n0 empty, n1 one divisor (j counts), the rest 2+ divisors
            rate = np.maximum(expected * j / f, 1e-12)
            one = np.exp(j * np.log(rate) - rate - math.lgamma(j + 1))
            more = np.maximum(_share_of_multiples(j, rate) * -np.expm1(-rate) - one, 1e-300)
            scores.append(-(frames - n) * rate + single * np.log(np.maximum(one, 1e-300))
                          + (n - single) * np.log(more) + prior(np.log(f / j) - centre))
        scores = np.array(scores)
        best = np.argmax(scores, axis=0)
        sure = scores[best, np.arange(candidates.size)] - scores[0] >= MULTIPLE_MARGIN
        switched = candidates[sure]
        j = (best[sure] + 1).astype(np.float32)
        factor.ravel()[switched] /= j
        ratio.ravel()[switched] -= np.log(j)
        multiples = int(switched.size)
    limit = math.log(settings.max_factor_ratio)
    implausible = ratio > limit
    implausible |= ratio < -limit
    implausible &= seen
    unseen = (values == 0) & ~off
    mask = off | implausible
    fill = ~seen | implausible   # the neighbours' factor: never counted, or not a detector's
    factor[fill] = np.exp(neighbours[fill])
    good = pinned & ~mask
    spread_all = _robust_std(_sample(ratio, good)) if good.any() else 0.0
    mean = float(factor.mean(dtype=np.float64))
    details = {
        'pixels': {'pinned': int(good.sum()),
                   'few_values': int((seen & ~pinned & ~mask).sum()),
                   'unseen': int(unseen.sum()),
                   'multiples': multiples,
                   'off_lattice': int(off.sum()),
                   'implausible': int(implausible.sum()),
                   'median_values': _round(float(np.median(values[::max(1, values.size
                                                                       // 1_000_000)]))),
                   'min_values': int(settings.min_values)},
        'factors': {'mean': _round(mean),
                    'std': _round(float(factor.ravel()[::max(1, factor.size // 1_000_000)]
                                        .std(dtype=np.float64)) / mean),
                    'spread': _round(float(spread_all)),
                    'min': _round(float(factor.min()) / mean),
                    'max': _round(float(factor.max()) / mean)},
        '_pinned': pinned,
    }
    return factor, mask, details


def _log_ratio_prior(ratios, width=0.02, reach=4.0, multiples=MAX_MULTIPLE):
    """log density of log(factor / neighbours' factor), from the well-measured pixels.

    A histogram (``width`` bins over +-``reach``), smoothed over 5 bins. The
    tails are the detector's (a 20 % scatter of the gain puts a few pixels
    per thousand at twice the neighbours' factor, far more than a normal law
    would), so a pixel at twice its neighbours' is judged on its counts there,
    while with a 2 % scatter it is a multiple. Around log 2, log 3, log 4
    (+- 0.12 + 3 robust sigmas of the ratios, at most 0.3) the sample would
    hold the very multiples it is to judge, so the density there is
    interpolated (in log) from the flanks. Floor: one pixel of the sample per
    unit of log ratio.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    bins = int(round(2 * reach / width))
    counts, edges = np.histogram(np.clip(ratios, -reach, reach - 1e-9), bins=bins,
                                 range=(-reach, reach))  # uniform bins: no sort
    counts = np.convolve(counts.astype(np.float64), np.ones(5) / 5.0, mode='same')
    total = max(float(counts.sum()), 1.0)
    density = np.log(np.maximum(counts / (total * width), 1.0 / total))
    centres = 0.5 * (edges[:-1] + edges[1:])
    window = min(0.12 + 3 * _robust_std(ratios), 0.3)
    near = np.zeros(centres.shape, bool)
    for j in range(2, multiples + 1):
        near |= np.abs(centres - math.log(j)) <= window
    starts = np.flatnonzero(near & ~np.r_[False, near[:-1]])
    stops = np.flatnonzero(near & ~np.r_[near[1:], False])
    for lo, hi in zip(starts, stops):
        left, right = max(lo - 1, 0), min(hi + 1, density.size - 1)
        density[lo:hi + 1] = np.interp(centres[lo:hi + 1], [centres[left], centres[right]],
                                       [density[left], density[right]])
    return lambda r: np.interp(np.clip(r, -reach, reach), centres, density)


def _share_of_multiples(j, rate):
    """P(count is a multiple of j | count >= 1) for Poisson counts of mean ``rate``."""
    if j == 1:
        return np.ones_like(rate)
    total = np.zeros_like(rate)
    log_rate = np.log(rate)
    top = int(np.ceil(float(rate.max()) + 10 * math.sqrt(float(rate.max())) + 10))
    for count in range(j, top + j, j):
        total += np.exp(count * log_rate - rate - math.lgamma(count + 1))
    return np.maximum(total / -np.expm1(-rate), 1e-300)


def _box_mean(values, where, size):
    """Mean of ``values`` over the ``where`` pixels around each pixel, float32.

    The frame is cut into blocks of ``size`` / 3 pixels (at least 2); each
    pixel takes the mean over its block and the 8 around it (a window of
    ``size`` pixels; cheap at 4096 x 4096: strided sums into a small map, no
    full-size temporary but the result); where that holds no ``where`` pixel,
    5 x 5 blocks, and so on, then the mean over the whole frame.
    """
    rows, cols = values.shape
    block = max(2, int(round(size / 3.0)))
    R, C = -(-rows // block), -(-cols // block)

    def block_sums(weighted):
        across = np.zeros((rows, C), np.float64)
        for offset in range(block):
            part = where[:, offset::block].astype(np.float64)
            if weighted:
                part *= values[:, offset::block]
            across[:, :part.shape[1]] += part
        down = np.zeros((R, C), np.float64)
        for offset in range(block):
            part = across[offset::block]
            down[:part.shape[0]] += part
        return down

    count = block_sums(False)
    total = block_sums(True)
    mean = np.full((R, C), np.nan)
    reach = 3
    while np.isnan(mean).any() and reach <= 2 * max(R, C) + 1:
        t = box_blur(total, reach, np)
        c = box_blur(count, reach, np)
        fill = np.isnan(mean) & (c > 1e-9)
        mean[fill] = t[fill] / c[fill]
        reach = 2 * reach - 1
    if np.isnan(mean).any():
        mean[np.isnan(mean)] = (total.sum() / count.sum()) if count.sum() else 0.0
    full = np.broadcast_to(mean.astype(np.float32)[:, None, :, None], (R, block, C, block))
    return full.reshape(R * block, C * block)[:rows, :cols].copy()


def _sample(image, where, size=1_000_000):
    """At most about ``size`` values of ``image`` where ``where`` (a regular subsample first:
    no full-frame boolean copy)."""
    step = max(1, image.size // (4 * size))
    return image.ravel()[::step][where.ravel()[::step]]


def _robust_std(values):
    """1.4826 x the median absolute deviation (a sample of at most a million values)."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        return 0.0
    values = values[::max(1, values.size // 1_000_000)]
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def compare_references(recovered, given, trusted):
    """Is ``given`` (a reference that multiplies raw frames) the one that was applied?

    Its orientation (of the 8) from :func:`..orientation.find_orientation`,
    then, in that orientation, the correlation of the logs of the two over
    ``trusted`` pixels and the scale between them (of the reference as read:
    readers scale references to mean 1). The same reference up to
    scale correlates above 0.99 (measured: 0.9999 and above for float32 and
    float16 movies at 1 e/px and more).
    """
    given = np.asarray(given, dtype=np.float32)
    try:
        found = find_orientation(recovered, given, valid=trusted)
        oriented = apply_orientation(given, found)
        transform, inverted = found.transform, found.inverted
    except ValueError:
        oriented, transform, inverted = given / given.mean(), None, False
    good = trusted & np.isfinite(oriented) & (oriented > 0) & (recovered > 0)
    if good.sum() < 16:
        return {'same': False, 'correlation': None,
                'sentence': 'the given reference could not be compared with the applied one'}
    a, b = np.log(recovered[good]), np.log(oriented[good])
    correlation = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
    raw = np.asarray(given, dtype=np.float64)
    scale = float(np.exp(np.median(np.log(np.clip(
        (transform.apply(raw) if transform is not None else raw)[good], 1e-30, None)) - a)))
    # the same reference up to scale: a constant ratio (float16 frames carry 0.05 %,
    # a few pixels' factors can stay ambiguous); a 3 % column error is far from it
    ratio = a - b
    ratio -= np.median(ratio)
    spread = _robust_std(ratio)
    agree = float(np.mean(np.abs(ratio) <= SAME_WITHIN))
    same = bool(spread <= SAME_SPREAD and agree >= SAME_SHARE)
    where = transform.describe() if transform is not None else 'as stored'
    if inverted:
        where += ', inverted'
    if same:
        sentence = (f"the given gain reference IS the one applied at acquisition ({where}: "
                    f"{100 * agree:.2f} % of the pixels agree to {100 * SAME_WITHIN:.0f} %); "
                    f"the residual is that of the applied reference")
    else:
        sentence = (f"the given gain reference is NOT the one applied at acquisition (best "
                    f"orientation: {where}, the two differ by {100 * spread:.2f} % RMS, "
                    f"correlation {correlation:.3f}); the residual is that of the reference the "
                    f"frames carry (the applied one), the given one is not multiplied in")
    return {'same': same, 'correlation': _round(correlation, 5), 'ratio_spread': _round(spread),
            'agreeing_share': _round(agree), 'scale_as_read': _round(scale),
            'orientation': transform.to_dict() if transform is not None else None,
            'inverted': bool(inverted), 'sentence': sentence}


def _round(value, digits=4):
    return significant(value, digits)
