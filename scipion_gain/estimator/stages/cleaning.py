"""Stages that clean frames before the estimate: NaN and inf masked, a dark
reference subtracted, and the dose each frame brings counted.

No Scipion import; NumPy arrays.
"""
import numpy as np

from ...io import InputError
from .base import Stage, frame_size, whole_numbers

#: a movie whose pixels are unusable beyond this fraction cannot be judged
MAX_UNUSABLE_FRACTION = 0.5
#: a frame with more non-finite pixels than this fraction is left out whole
MAX_BAD_FRAME_FRACTION = 0.5


class BadValues(Stage):
    """NaN and inf: the pixel is masked for the whole movie, never the frame or the map.

    A non-finite value is replaced by 0 in the frame (so that the rank
    statistics of its line stay finite; the pixel is a defect anyway) and
    its pixel is reported as unusable: the map gets 1 there and the defect
    map the label ``unusable``. A frame whose pixels are mostly non-finite,
    or that is all zero (beam blanked, a dropped frame), is left out and
    reported. A movie whose pixels are mostly unusable cannot be judged:
    :class:`~scipion_gain.io.InputError`.
    """

    name = 'bad_values'

    def __init__(self):
        super().__init__()
        self.mask = None
        self.bad_frames = {}     # key -> number of non-finite values
        self.dropped = {}        # key -> reason
        self.seen = set()

    def apply(self, key, frame):
        self.seen.add(key)
        if key in self.dropped:
            return None
        finite = np.isfinite(frame)
        if not finite.all():
            bad = int(frame.size - np.count_nonzero(finite))
            self.bad_frames[key] = bad
            if bad > MAX_BAD_FRAME_FRACTION * frame.size:
                self.dropped[key] = f"{100 * bad / frame.size:.0f} % NaN/inf"
                return None
            if self.mask is None:
                self.mask = np.zeros(frame.shape, dtype=bool)
            self.mask |= ~finite
            frame = np.where(finite, frame, np.float32(0))
        if not frame.any():
            self.dropped[key] = 'all zero'
            return None
        return frame

    def end(self, source):
        if self.mask is not None and self.mask.mean() > MAX_UNUSABLE_FRACTION:
            raise InputError(f"{source.describe()}: {100 * self.mask.mean():.0f} % of the pixels "
                             f"are NaN or inf in some frame: too few usable pixels to judge")

    @property
    def unusable(self):
        return self.mask

    def info(self):
        pixels = int(self.mask.sum()) if self.mask is not None else 0
        return {'unusable_pixels': pixels,
                'frames_with_nan_or_inf': _frame_list(self.bad_frames),
                'frames_left_out': {_frame_label(k): why for k, why in sorted(self.dropped.items())}}

    def summary_notes(self, source):
        notes = []
        if self.mask is not None and self.mask.any():
            notes.append(f"{int(self.mask.sum())} pixel(s) hold NaN or inf in "
                         f"{len(self.bad_frames)} frame(s): masked for the whole movie and "
                         f"reported as unusable")
        zero = [k for k, why in self.dropped.items() if why == 'all zero']
        if zero:
            notes.append(f"{len(zero)} all-zero frame(s) left out "
                         f"({', '.join(_frame_label(k) for k in sorted(zero)[:10])}"
                         f"{' ...' if len(zero) > 10 else ''}): beam blanked or frames dropped?")
        broken = [k for k, why in self.dropped.items() if why != 'all zero']
        if broken:
            notes.append(f"{len(broken)} frame(s) mostly NaN/inf left out")
        return notes


class Dark(Stage):
    """A dark reference subtracted from every frame (DE's convention:
    corrected = (raw - dark) x gain): the model recorded = ideal x G has no offset.

    ``dark``: an image, or what :func:`scipion_gain.io.read_dark_reference`
    returns (its path and unusable pixels are then reported and masked).
    """

    name = 'dark'

    def __init__(self, dark):
        super().__init__()
        self.reference = dark if hasattr(dark, 'to_json') else None
        image = dark.image if self.reference is not None else dark
        self.dark = np.asarray(image, dtype=np.float32)
        if not np.all(np.isfinite(self.dark)):
            raise InputError("dark reference holds NaN or inf values")
        mask = getattr(self.reference, 'unusable', None)
        self.mask = mask if mask is not None and mask.any() else None

    def begin(self, source):
        self._check(source.shape)

    def apply(self, key, frame):
        if frame.shape != self.dark.shape:  # also in a survey pass, before begin
            self._check(frame.shape)
        return frame - self.dark

    def _check(self, shape):
        if self.dark.shape != tuple(shape):
            name = getattr(self.reference, 'path', None)
            raise InputError(f"{str(name) + ': ' if name else ''}dark reference is "
                             f"{frame_size(self.dark.shape)}, the movie frames are "
                             f"{frame_size(shape)}")

    @property
    def unusable(self):
        return self.mask

    def info(self):
        if self.reference is not None:
            return self.reference.to_json()
        return {'path': None, 'mean': float(self.dark.mean()), 'std': float(self.dark.std())}


class Dose(Stage):
    """Bookkeeping of what reaches the estimator: the mean of each frame and
    whether the frames are whole counts (counting: then the mean is the dose in
    electrons per pixel per frame).

    ``conversion`` (an :class:`.integrating.PhotonTransfer` of the same source)
    gives integrating frames their shot-noise-equivalent electrons (mean over
    the variance slope of photon transfer), and tells raw integrating frames
    that happen to be whole numbers from counting ones.
    """

    name = 'dose'

    def __init__(self, conversion=None):
        super().__init__()
        self.means = {}
        self.counting = True
        self.conversion = conversion

    def apply(self, key, frame):
        if key not in self.means:
            self.means[key] = float(frame.mean(dtype=np.float64))
            if self.counting:
                self.counting = bool(frame.min() >= 0 and whole_numbers(frame))
        return frame

    def electrons_per_pixel(self):
        """Electrons per pixel summed over the frames used: counts for counting frames,
        the shot-noise equivalent for integrating ones (with a conversion); else None."""
        return self._electrons()[0]

    def electrons_source(self):
        """'counts', 'photon transfer' or None: where :meth:`electrons_per_pixel` comes from."""
        return self._electrons()[1]

    def _electrons(self):
        if not self.means:
            return None, None
        total = float(sum(self.means.values()))
        if self.conversion is not None:
            return self.conversion.electrons(total, len(self.means), self.counting)
        return (total, 'counts') if self.counting else (None, None)

    def info(self):
        if not self.means:
            return {}
        per_frame = float(np.mean(list(self.means.values())))
        electrons, source = self._electrons()
        return {'counting': self.counting and source == 'counts', 'mean_per_frame': per_frame,
                'electrons_per_pixel_per_frame': (electrons / len(self.means)
                                                  if electrons is not None else None),
                'electrons_source': source}


def _frame_label(key):
    movie, frame = key
    return f"{movie}:{frame}" if movie else str(frame)


def _frame_list(keyed):
    return [_frame_label(k) for k in sorted(keyed)]
