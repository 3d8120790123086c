"""Integrating cameras: is there electron signal, is there an offset, how many ADU per electron.

Integrating detectors (DE, Falcon II in linear mode) record each frame as an
offset (the dark level, its own pattern) plus, for every electron, a signal of
mean ``g`` ADU with a relative spread ``s`` (the deposit differs from electron
to electron), plus read noise. Per pixel and frame, with ``lambda`` electrons
expected and ``G`` the pixel's gain::

    mean     = dark + G g lambda
    variance = G^2 g^2 (1 + s^2) lambda + read_noise^2
             = [G g (1 + s^2)] (mean - dark) + read_noise^2

so the temporal variance grows with the mean above the dark with the slope
``k = g (1 + s^2)`` (photon transfer). Two stages use this, on a regular grid
of pixels (at most :data:`..filters.GRID_PIXELS`, so the cost does not grow with the
frame size):

:class:`SignalCheck` surveys the first frames of each movie (at most
``survey_frames``) before the estimate and

* refuses a movie without electron signal (no beam, beam blanked, valves
  closed): its temporal variance does not follow its mean across the frame
  (photon transfer with slope 0: read noise only, whatever the dark pattern
  does to the means) and it holds no electron events (values far above the
  pixel's usual level) (:class:`~scipion_gain.io.InputError`, one line).
  With beam the variance follows the mean with the slope ``k`` (1 for
  counts, at any dose; ADU per electron for integrating frames), even under
  flat illumination: a pixel's sample variance and sample mean then share
  the third cumulant of its shot noise (electrons add signal, never remove
  it), which read noise does not have;
* finds an offset: when some frames of a pixel receive no electron (dose per
  frame below about 3 e/px), the lowest values of each pixel form a floor as
  narrow as the read noise while the other values scatter with shot noise.
  That floor is the level of no electron; far above zero (or, after a dark
  reference, far from zero) it is an offset the dark reference should remove.

:class:`PhotonTransfer` measures the conversion over every frame used (first
main pass): per pixel, the variance of consecutive frame differences
(``(x[t+1] - x[t])^2 / 2``: free of the offset, and of the specimen, which
moves slowly, and of the gain, which is the same in both frames) against the
mean above the level of no electron. Their ratio over the pixels (outliers
left out) is the slope ``k``; the read noise is the RMS of the values below
the level of no electron (half of a pixel's empty frames fall there); the mean
ADU per electron ``g`` itself follows, without any assumption about the
spread, from the share of empty pixel-frames ``P0 = exp(-lambda)``:
``g = mean / -ln(P0)``, when frames have enough empty pixels.

For the DQE, what counts is the *shot-noise-equivalent* number of electrons
per pixel, ``mean / k``: the variance of a sum of frames in ADU is ``k``
times its mean, so in those units it behaves as Poisson counts. It is what
:class:`~.cleaning.Dose` reports for integrating movies (``electrons_per_pixel``
in the JSON, with its source) and what the defect test's Poisson test is fed
(the raw sums divided by ``k``). It is ``lambda / (1 + s^2)``, fewer than the
electrons that arrived: the spread of the deposits costs DQE (DQE(0) =
1 / (1 + s^2)) before any gain reference does.

No Scipion import; the frames reach the stages as NumPy arrays.
"""
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from ...io import InputError
from ..filters import grid
from ..statistics import significant
from .base import Stage, whole_numbers

#: fewer frames than this: the temporal statistics say nothing
MIN_FRAMES = 8
#: a value this many robust sigmas above its pixel's median is an electron event
EVENT_SIGMAS = 10.0
#: signal: at least this share of the pixels holds an event in the survey ...
MIN_EVENT_PIXELS = 0.01
#: ... or the temporal variance follows the mean across the pixels: photon-transfer slope
#: this many standard errors above 0 (one-sided; read noise alone gives 0)
TRANSFER_Z = 5.0
#: the floor counts as the level of no electron when its width is below this share
#: of the temporal noise (shot noise over read noise)
MAX_FLOOR_WIDTH = 0.25
#: an offset is reported when it is this many read-noise sigmas from zero ...
OFFSET_SIGMAS = 5.0
#: ... and at least this share of the signal above it
OFFSET_SHARE = 0.02
#: the count-per-electron estimate from empty pixel-frames needs their share within
EMPTY_RANGE = (0.005, 0.995)


@dataclass
class IntegratingSettings:
    """What the integrating-camera checks need (see the module docstring)."""
    stated_adu_per_electron: float = None   # the camera's stated factor (Celeritas: 300), if known
    survey_frames: int = 32                 # first frames of each movie surveyed before the estimate
    refuse_without_signal: bool = True      # movies without electron signal: InputError


def looks_counting(frame):
    """A counting frame: whole non-negative counts, at least 1 % of them zero (an
    integrating camera's raw frames sit on an offset and are almost never zero)."""
    values = np.asarray(frame)
    if values.size == 0 or not np.issubdtype(values.dtype, np.number):
        return False
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)) or not whole_numbers(values):
            return False
    return bool(values.min() >= 0 and np.count_nonzero(values == 0) >= 0.01 * values.size)


def survey_statistics(stack):
    """Temporal statistics of the surveyed frames of one movie (``stack``: frames x pixels).

    Returns a dict: ``event_pixels`` (share of pixels with a value more than
    :data:`EVENT_SIGMAS` robust sigmas above their median), ``skew`` (median
    over pixels of the temporal skewness), ``noise`` (RMS of the temporal noise
    from consecutive differences, the top 0.1 % of pixels left out), ``level``
    (mean), ``variance`` (per pixel), ``mean`` (per pixel), ``sorted``, and
    ``transfer_slope`` / ``transfer_z``: the slope of the variance against the
    mean across the pixels and its significance (:func:`transfer_slope`).
    """
    x = np.asarray(stack, dtype=np.float64)
    frames = x.shape[0]
    median = np.median(x, axis=0)
    spread = 1.4826 * np.median(np.abs(x - median), axis=0)
    typical = float(np.median(spread))
    limit = median + EVENT_SIGMAS * np.maximum(np.maximum(spread, typical),
                                               1e-6 * (np.abs(median) + 1.0))
    events = (x > limit).any(axis=0)
    mean = x.mean(axis=0)
    centred = x - mean
    second = (centred ** 2).mean(axis=0)
    third = (centred ** 3).mean(axis=0)
    varied = second > 0
    skew = float(np.median(third[varied] / second[varied] ** 1.5)) if varied.any() else 0.0
    variance = (np.diff(x, axis=0) ** 2).sum(axis=0) / (2.0 * max(frames - 1, 1))
    cut = np.quantile(variance, 0.999)
    noise = float(np.sqrt(variance[variance <= cut].mean()))
    slope, z = transfer_slope(mean, variance)
    return {'frames': frames, 'event_pixels': float(events.mean()), 'skew': skew,
            'noise': noise, 'level': float(mean.mean()), 'variance': variance, 'mean': mean,
            'median': median, 'typical': typical, 'sorted': np.sort(x, axis=0),
            'transfer_slope': slope, 'transfer_z': z}


def transfer_slope(mean, variance):
    """(slope, z): least squares of the pixels' temporal variance on their mean, and
    the slope over its standard error.

    Pixels far from the others in mean or variance (hot pixels, a masked patch)
    are left out first (:func:`_inliers`, 10 robust sigmas). Shot noise gives
    the slope ``k`` (ADU per electron x (1 + spread^2), 1 for counts) however
    the means differ (specimen, gain, or only the noise of the mean itself, to
    which the variance is tied by the shot noise's third cumulant); read noise
    gives 0 whatever the dark pattern, which moves the means alone.
    """
    keep = np.isfinite(mean) & np.isfinite(variance)
    keep &= _inliers(np.where(keep, mean, 0.0), 10.0) & _inliers(np.where(keep, variance, 0.0),
                                                                 10.0)
    m, v = mean[keep], variance[keep]
    if m.size < 3 or not m.std() > 0:
        return 0.0, 0.0
    dm = m - m.mean()
    slope = float((dm * (v - v.mean())).sum() / (dm ** 2).sum())
    residual = v - v.mean() - slope * dm
    error = float(residual.std() / (m.std() * np.sqrt(m.size)))
    return slope, (slope / error if error > 0 else (np.inf if slope > 0 else 0.0))


def has_signal(stats):
    """Electron signal in the surveyed frames: the variance follows the mean (photon
    transfer), or electron events."""
    return stats['transfer_z'] > TRANSFER_Z or stats['event_pixels'] > MIN_EVENT_PIXELS


def find_floor(stats):
    """The level of no electron of each pixel, when the frames show it (dict), else None.

    A pixel's lowest values sit at its level of no electron when some frames
    received none: they then form a floor as narrow as the read noise, while
    the temporal noise of the pixel (shot noise) is much wider. At low dose,
    when electrons are sparse events far above the pixels' usual values, the
    usual value (the median) is that level. Returns ``floor`` (per pixel: the
    mean of its values on the floor), ``read_noise`` (their pooled spread),
    ``empty`` (the share of pixel-frames on the floor), or None when no floor
    shows (every frame holds electrons).
    """
    ordered = stats['sorted']
    frames = ordered.shape[0]
    j = max(2, frames // 10)
    # expected gap between the lowest and the (j+1)-th of `frames` normal values (Blom)
    gap = float(ndtri((j + 1 - 0.375) / (frames + 0.25)) - ndtri(0.625 / (frames + 0.25)))
    width = float(np.median(ordered[j] - ordered[0])) / gap
    if width < MAX_FLOOR_WIDTH * stats['noise']:
        on_floor = ordered <= ordered[0] + 4.0 * width
    elif stats['event_pixels'] > MIN_EVENT_PIXELS:  # sparse events over the usual level
        on_floor = np.abs(ordered - stats['median']) <= 4.0 * stats['typical']
    else:
        return None
    count = on_floor.sum(axis=0)
    floor = np.where(on_floor, ordered, 0.0).sum(axis=0) / count
    deviation = np.where(on_floor, ordered - floor, 0.0)
    dof = max(int((count - 1).sum()), 1)
    return {'floor': floor, 'read_noise': float(np.sqrt((deviation ** 2).sum() / dof)),
            'empty': float(on_floor.mean())}


class SignalCheck(Stage):
    """Survey of the first frames: refuse movies without electron signal, report an offset.

    Goes after the dark subtraction and the bad-value masking, before the
    estimate (see the module docstring). ``dark``: whether a dark reference
    was subtracted (the offset is then what is left of it). Its JSON is
    ``input.offset``.
    """

    name = 'offset'

    def __init__(self, settings=None, dark=False):
        super().__init__()
        self.settings = settings or IntegratingSettings()
        self.survey_frames = max(MIN_FRAMES, int(self.settings.survey_frames))
        self.dark = bool(dark)
        self.grid = None
        self._stacks = {}        # movie index -> list of sampled frames
        self.movies = {}         # movie index -> survey statistics (without the big arrays)
        self.floor = None        # per grid pixel: the level of no electron (when found)
        self.result = {}

    def wants_survey(self, first_frame):
        """Every movie but counting ones: their frames carry no offset, and a counting
        movie without beam is all zero (left out by the bad-value stage)."""
        self._counting = looks_counting(first_frame)
        return np.ndim(first_frame) == 2 and not self._counting

    def survey(self, key, frame):
        if self.grid is None:
            self.grid = grid(frame.shape)
        frames = self._stacks.setdefault(key[0], [])
        if len(frames) < self.survey_frames:
            frames.append(np.array(frame[self.grid], dtype=np.float32))

    def begin(self, source):
        if self.result or not self._stacks:
            if not self.result:
                self.result = {'checked': False, 'reason': (
                    'counting frames (whole counts, many zeros): no offset'
                    if getattr(self, '_counting', False) else 'no frame surveyed')}
            return
        pooled = []
        for movie, frames in sorted(self._stacks.items()):
            path = source.paths[movie]
            if len(frames) < MIN_FRAMES:
                self.movies[movie] = {'frames': len(frames)}
                continue
            stats = survey_statistics(np.stack(frames).reshape(len(frames), -1))
            self.movies[movie] = {k: stats[k] for k in
                                  ('frames', 'event_pixels', 'skew', 'noise', 'level',
                                   'transfer_slope', 'transfer_z')}
            if not has_signal(stats) and self.settings.refuse_without_signal:
                self._stacks = {}
                raise InputError(f"{path}: {no_signal_reason(stats, self.dark)}")
            pooled.append(stats)
        self._stacks = {}  # the survey's frames are not needed any more
        if not pooled:
            self.result = {'checked': False,
                           'reason': f'fewer than {MIN_FRAMES} frames per movie: no temporal '
                                     f'statistics'}
            return
        self.result = self._offset(pooled)
        for note in self._offset_notes():
            self.notes.append(note)

    def _offset(self, pooled):
        """The offset from the pixels' floors, pooled over the movies (JSON-ready)."""
        shape = pooled[0]['mean'].shape
        out = {'checked': True, 'relative_to': 'dark reference' if self.dark else 'raw frames',
               'frames_surveyed': int(sum(s['frames'] for s in pooled)),
               'pixels': int(shape[0]),
               'signal': {'event_pixels': _round(np.mean([s['event_pixels'] for s in pooled])),
                          'skew': _round(np.median([s['skew'] for s in pooled])),
                          'variance_slope_adu': _round(np.median([s['transfer_slope']
                                                                  for s in pooled])),
                          'variance_slope_z': _round(np.min([s['transfer_z'] for s in pooled]),
                                                     3),
                          'temporal_noise_adu': _round(np.mean([s['noise'] for s in pooled]))}}
        floors = [find_floor(s) for s in pooled]
        if any(f is None for f in floors):
            out.update(decidable=False, detected=False, offset_adu=None,
                       reason='no narrow floor: frames hold electrons in nearly every pixel '
                              '(dose per frame above about 3 e/px), so an offset cannot be told '
                              'from signal')
            return out
        floor = np.mean([f['floor'] for f in floors], axis=0)
        read_noise = float(np.sqrt(np.mean([f['read_noise'] ** 2 for f in floors])))
        offset = float(np.median(floor))
        signal = float(np.mean([s['level'] for s in pooled])) - offset
        far = abs(offset) > OFFSET_SIGMAS * read_noise and \
            abs(offset) > OFFSET_SHARE * max(signal, 0.0)
        self.floor = floor if far else None
        out.update(decidable=True, detected=bool(far), offset_adu=_round(offset),
                   offset_std_adu=_round(float(np.std(floor))),
                   read_noise_adu=_round(read_noise),
                   empty_share=_round(float(np.mean([f['empty'] for f in floors]))),
                   signal_above_adu=_round(signal))
        return out

    def _offset_notes(self):
        result = self.result
        if not result.get('detected'):
            return []
        offset = result['offset_adu']
        if not self.dark:
            return [f"frames carry an offset of about {offset:.0f} ADU (the level where no "
                    f"electron arrived; signal above it {result['signal_above_adu']:.3g} ADU): "
                    f"give the dark reference"]
        where = 'above' if offset > 0 else 'below'
        return [f"after the dark reference, frames still sit about {abs(offset):.0f} ADU {where} "
                f"the level where no electron arrived: is it the right dark reference?"]

    def info(self):
        return dict(self.result)


def no_signal_reason(stats, dark):
    """The one line that says why a movie without electron signal is refused."""
    level = (f"mean {stats['level']:.3g} ADU after the dark reference" if dark
             else f"mean {stats['level']:.4g} ADU, the dark level")
    slope, z = stats['transfer_slope'], stats['transfer_z']
    return (f"no electron signal in the first {stats['frames']} frames: temporal noise "
            f"{stats['noise']:.3g} ADU that does not follow the mean across the frame (variance "
            f"slope {slope:.2g} ADU, {z:.1f} standard errors from 0) and no electron events "
            f"(read noise only), {level}: taken without beam (blanked, valves closed)? "
            f"not analysable")


class PhotonTransfer(Stage):
    """The conversion from ADU to electrons, measured on every frame of the first main pass.

    ``check``: the :class:`SignalCheck` of the same source (its floor is the
    level of no electron when an offset was found); ``stated``: the camera's
    stated ADU per electron, compared with the measurement. Its JSON is
    ``input.conversion``; :meth:`electrons` turns a frame-mean sum into the
    shot-noise-equivalent electrons per pixel that :class:`~.cleaning.Dose` reports.
    """

    name = 'conversion'

    def __init__(self, check=None, stated=None):
        super().__init__()
        self.check = check
        self.stated = None if stated is None else float(stated)
        self.grid = None
        self.active = False
        self.finished = False
        self._seen = set()
        self._previous = None    # (key, sampled frame) of the last frame of this pass
        self._zero = 0.0
        self._result = None
        self._unusable = None

    def begin(self, source):
        if self.finished or self.active:
            return
        self.grid = grid(source.shape)
        self.active = True
        floor = getattr(self.check, 'floor', None)
        self._zero = floor.reshape(-1) if floor is not None else 0.0
        offset = getattr(self.check, 'result', {}) or {}
        noise = offset.get('read_noise_adu')
        # a value this far under ... above the level of no electron still holds no electron
        self._threshold = 5.0 * noise if noise else None
        self._sum = self._pairs = self._negative = self._empty = None
        self._frames = self._pair_count = self._negative_count = 0

    def apply(self, key, frame):
        if not self.active or key in self._seen:
            return frame
        self._seen.add(key)
        sample = np.asarray(frame[self.grid], dtype=np.float64).reshape(-1) - self._zero
        if self._sum is None:
            self._sum = np.zeros(sample.shape)
            self._pairs = np.zeros(sample.shape)
            self._empty = np.zeros(sample.shape)
            self._negative = 0.0
        self._sum += sample
        self._frames += 1
        below = sample < 0
        self._negative += float(np.square(sample[below]).sum())
        self._negative_count += int(below.sum())
        if self._threshold is not None:
            self._empty += sample < self._threshold
        previous = self._previous
        if previous is not None and previous[0][0] == key[0]:
            self._pairs += np.square(sample - previous[1])
            self._pair_count += 1
        self._previous = (key, sample)
        return frame

    def end(self, source):
        if self.active:
            self.active = False
            self.finished = True
            self._previous = None
            unusable = source.unusable
            self._unusable = (None if unusable is None or not unusable.any()
                              else np.asarray(unusable[self.grid]).reshape(-1))

    def result(self):
        """The measurement (dict, JSON-ready), computed once after the first pass."""
        if self._result is None:
            self._result = self._measure()
        return self._result

    def _measure(self):
        if not self._pair_count or self._frames < MIN_FRAMES:
            return {'measured': False,
                    'reason': f'fewer than {MIN_FRAMES} frames: no photon transfer'}
        mean = self._sum / self._frames
        variance = self._pairs / (2.0 * self._pair_count)
        # whole pixels are left out, never values: hot pixels (mean far off), pixels masked
        # for NaN/inf, the 0.1 % most variable (a specimen edge that moved); a choice by
        # the ratio variance / mean would bias it at low dose
        keep = np.isfinite(variance) & np.isfinite(mean) & _inliers(mean, 10.0)
        if self._unusable is not None:
            keep &= ~self._unusable
        if keep.sum() >= 1000:
            keep &= variance <= np.quantile(variance[keep], 0.999)
        if keep.sum() < 100:
            return {'measured': False, 'reason': 'too few usable pixels'}
        m, v = mean[keep], variance[keep]
        if not m.mean() > 0:
            return {'measured': False, 'reason': 'no signal above the level of no electron'}
        samples = self._frames * mean.size
        read_noise, noise_from = None, None
        if getattr(self.check, 'floor', None) is not None:
            # the level of no electron is the survey's floor estimate, not a dark: its own
            # error would add to the values below it; the floor's spread is the read noise
            read_noise = self.check.result.get('read_noise_adu')
            noise_from = 'the spread of the floor in the surveyed frames'
        elif self._negative_count >= 100 and self._negative_count >= 1e-4 * samples:
            read_noise = float(np.sqrt(self._negative / self._negative_count))
            noise_from = 'RMS of the values below the level of no electron'
        slope = (v.mean() - (read_noise or 0.0) ** 2) / m.mean()
        if not np.isfinite(slope) or slope <= 0:
            return {'measured': False, 'reason': 'the variance does not grow with the mean'}
        groups = [g for g in np.array_split(np.arange(m.size), 8) if g.size]
        slopes = [(v[g].mean() - (read_noise or 0.0) ** 2) / m[g].mean() for g in groups]
        out = {'measured': True,
               'method': 'photon transfer: variance of consecutive-frame differences against '
                         'the mean above the level of no electron, per pixel',
               'variance_slope_adu': _round(slope),
               'variance_slope_error': _round(float(np.std(slopes) / np.sqrt(len(slopes)))
                                              / slope),
               'read_noise_adu': _round(read_noise), 'read_noise_from': noise_from,
               'frames': int(self._frames), 'pixels': int(keep.sum()),
               'mean_adu_per_frame': _round(float(m.mean())),
               'electrons_per_pixel_per_frame': _round(float(m.mean()) / slope),
               'electrons': 'shot-noise equivalent: mean / variance slope '
                            '(= electrons / (1 + spread^2))',
               'adu_per_electron': None, 'electron_spread': None}
        check = self.check
        if check is not None and not check.dark and check.result.get('checked') \
                and not check.result.get('decidable'):
            # no dark reference, and the frames do not show the level of no electron
            out['mean_from'] = 'raw frames: an offset, if any, is counted as signal'
        elif check is not None and check.floor is not None:
            out['mean_from'] = 'above the floor found in the survey (the offset)'
        else:
            out['mean_from'] = 'dark-subtracted frames' if getattr(check, 'dark', False) \
                else 'frames as read (no offset found)'
        empty = self._empty[keep].sum() / (self._frames * m.size) \
            if self._threshold is not None else None
        if empty is not None and EMPTY_RANGE[0] < empty < EMPTY_RANGE[1] \
                and self._threshold < 0.1 * slope:
            factor = float(m.mean()) / -np.log(empty)
            out['adu_per_electron'] = _round(factor)
            out['adu_per_electron_method'] = ('mean / -ln(share of pixel-frames without '
                                              'electron)')
            out['empty_share'] = _round(float(empty))
            out['electron_spread'] = _round(float(np.sqrt(max(slope / factor - 1.0, 0.0))))
        elif read_noise is None:
            out['read_noise_reason'] = 'every pixel-frame holds electrons'
        if self.stated is not None:
            out['stated_adu_per_electron'] = self.stated
            out['slope_over_stated'] = _round(slope / self.stated)
            if slope >= self.stated:
                out['spread_implied_by_stated'] = _round(float(np.sqrt(slope / self.stated - 1)))
        return out

    @property
    def slope(self):
        result = self.result()
        return result['variance_slope_adu'] if result.get('measured') else None

    def electrons(self, frame_mean_sum, frames, counting):
        """(electrons per pixel, source) for frames whose means sum to ``frame_mean_sum``.

        Counting frames (whole counts whose variance equals their mean, no
        offset) are their own electrons ('counts'); integrating frames give
        their shot-noise-equivalent electrons, the sum above the level of no
        electron over the variance slope ('photon transfer'); (None, None)
        when neither is known.
        """
        slope = self.slope
        offset = getattr(self.check, 'floor', None)
        if counting and offset is None and (slope is None or 0.5 < slope < 2.0):
            return float(frame_mean_sum), 'counts'
        if slope is None:
            return None, None
        zero = float(np.mean(offset)) if offset is not None else 0.0
        return max(float(frame_mean_sum) - frames * zero, 0.0) / slope, 'photon transfer'

    def summary_notes(self, source):
        result = self.result()
        if not result.get('measured'):
            return []
        slope = result['variance_slope_adu']
        if 0.5 < slope < 2.0 and result['adu_per_electron'] is None:
            return []  # counting frames: nothing to say
        text = "photon transfer: "
        if result['adu_per_electron'] is not None:
            text += (f"{result['adu_per_electron']:.4g} ADU per electron (spread "
                     f"{result['electron_spread']:.2f}), ")
        text += f"variance slope {slope:.4g} ADU (= ADU per electron x (1 + spread^2))"
        if result['read_noise_adu'] is not None:
            text += f", read noise {result['read_noise_adu']:.3g} ADU"
        text += (f"; {result['electrons_per_pixel_per_frame']:.3g} e/px per frame "
                 f"(shot-noise equivalent: mean / slope)")
        if result.get('mean_from', '').startswith('raw frames'):
            text += ("; no dark reference and no frame without electrons to tell the offset: "
                     "an offset, if the camera adds one, inflates the electrons")
        if self.stated is not None and result.get('spread_implied_by_stated') is not None:
            text += (f"; the camera's stated {self.stated:.4g} ADU per electron implies a spread "
                     f"of {result['spread_implied_by_stated']:.2f}")
            if result['adu_per_electron'] is not None:
                text += (f" (measured / stated: "
                         f"{result['adu_per_electron'] / self.stated:.3f})")
        notes = [text]
        if self.stated is not None and slope < 0.9 * self.stated:
            notes.append(f"the variance slope ({slope:.4g} ADU) is below the camera's stated "
                         f"{self.stated:.4g} ADU per electron: frames not raw, or the stated "
                         f"factor does not apply")
        return notes

    def info(self):
        return self.result() if self.finished else {}


def _inliers(values, sigmas=6.0):
    """Values within ``sigmas`` robust standard deviations of their median."""
    centre = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - centre))
    if not spread > 0:
        return np.ones(values.shape, dtype=bool)
    return np.abs(values - centre) <= sigmas * spread


def _round(value, digits=6):
    return significant(value, digits)
