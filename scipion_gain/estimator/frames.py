"""The frames the estimator sees: movies read one frame at a time, then conditioned.

The paper's model (Sorzano et al. 2018, Eq. 0) is recorded_i = ideal_i * G.
Real movies reach us in other shapes: with a dark offset (integrating
cameras), with NaN or inf where a camera pipeline failed, already multiplied
by a gain reference at acquisition. :class:`FrameSource` reads the frames of
one or more movies one at a time (memory never grows with their number) and
passes each through a list of *stages* that bring it back to the model:

1. ``dark``: a dark reference subtracted (integrating cameras);
2. ``bad values``: NaN and inf masked for the whole movie and reported; frames
   that are mostly unusable, or all zero, left out and reported;
3. ``lattice``: frames gain-corrected at acquisition turned back into counts,
   with the factors that were applied as the reference;
4. the reference: frames multiplied by the gain reference (residual mode),
   done by :meth:`FrameSource.corrected`, since the estimator needs both the
   recorded frame (its ties) and the corrected one.

A stage may first *survey* the movie (a first pass over every frame, asked
for by :meth:`Stage.wants_survey`, e.g. to find the lattice of each pixel),
then :meth:`Stage.begin` decides, then :meth:`Stage.apply` transforms each
frame of every pass (Eq. 7 iterations read the movies again, so ``apply``
must give the same frame each time). What each stage did goes into
:meth:`FrameSource.info` (the ``input`` object of the JSON) and the notes.
"""
import numpy as np

from ..io import InputError, open_movie

#: a movie whose pixels are unusable beyond this fraction cannot be judged
MAX_UNUSABLE_FRACTION = 0.5
#: a frame with more non-finite pixels than this fraction is left out whole
MAX_BAD_FRAME_FRACTION = 0.5


class Stage:
    """One step of frame conditioning (see the module docstring for the order of calls)."""

    name = 'stage'
    #: frames per movie the survey needs (None: all; the survey pass stops early otherwise)
    survey_frames = None

    def __init__(self):
        self.notes = []

    def wants_survey(self, first_frame):
        """True to get :meth:`survey` calls on every frame before the main passes."""
        return False

    def survey(self, key, frame):
        """See one frame of the first pass (``key``: (movie index, frame index))."""

    def begin(self, source):
        """Decide, after the survey (if any), before the first main pass."""

    def apply(self, key, frame):
        """The frame conditioned; None leaves it out of the estimate."""
        return frame

    def end(self, source):
        """After a main pass: checks that need every frame (may raise InputError)."""

    @property
    def unusable(self):
        """Pixels this stage found unusable for the whole movie (bool map), or None."""
        return None

    def info(self):
        """What the stage did, JSON-ready (goes under ``input`` in the statistics)."""
        return {}


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
                self.counting = bool(frame.min() >= 0 and np.array_equal(frame, np.rint(frame)))
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


class FrameSource:
    """The frames of a list of movies, read one at a time and conditioned by stages.

    ``reference`` (a correction that multiplies raw frames) makes the
    estimator see ``recorded * reference`` (:meth:`corrected`); a stage may
    replace it (the lattice stage sets the factors that were applied at
    acquisition). Iterating gives the conditioned frames of one main pass;
    frames a stage leaves out are skipped. ``total`` is the number of frames
    read per pass (before any is left out).
    """

    def __init__(self, paths, frame_step=1, gain_reference=None, stages=None,
                 frames_per_movie=0):
        if not paths:
            raise InputError("no movie given")
        self.paths = [str(p) for p in paths]
        self.frame_step = max(1, int(frame_step))
        self.frames_per_movie = max(0, int(frames_per_movie or 0))
        self.steps = {}          # path -> the frame step used for it (see step_for)
        self.notes = []
        self.shape = None
        self.total = 0
        self.used = 0            # frames that reached the estimator in the last pass
        self.truncated = {}      # path -> reader.truncation (lenient reading of a cut file)
        for path in self.paths:  # open every movie once up front: bad input fails early
            with open_movie(path) as reader:
                if self.shape is None:
                    self.shape = tuple(reader.frame_shape)
                    if min(self.shape) < MIN_FRAME_SIDE:  # the defect and line tests need 3
                        raise InputError(f"{path}: frames of {frame_size(self.shape)} pixels are "
                                         f"too small (at least {MIN_FRAME_SIDE} x "
                                         f"{MIN_FRAME_SIDE})")
                elif tuple(reader.frame_shape) != self.shape:
                    raise InputError(f"{path}: frames are {frame_size(reader.frame_shape)}, "
                                     f"the first movie's are {frame_size(self.shape)}")
                self.steps[path] = self.step_for(reader.n_frames)
                self.total += len(range(0, reader.n_frames, self.steps[path]))
                self.notes += [f"{path}: {note}" for note in reader.notes]
                if reader.truncation:
                    self.truncated[path] = dict(reader.truncation)
        self.gain_reference = None
        if gain_reference is not None:
            reference = np.asarray(gain_reference, dtype=np.float32)
            if reference.shape != self.shape:
                raise InputError(f"gain reference is {frame_size(reference.shape)}, "
                                 f"the movie frames are {frame_size(self.shape)}")
            if not np.all(np.isfinite(reference)):
                raise InputError("gain reference holds NaN or inf values")
            self.gain_reference = reference
        self.stages = list(stages) if stages is not None else default_stages()
        self._prepared = False

    def step_for(self, n_frames):
        """The frame step for a movie of ``n_frames``: ``frame_step``; with
        ``frames_per_movie`` N, every (n_frames // N)-th frame, so that at least N
        frames spread over the whole movie are used (all of them when it has fewer
        than 2 N): the cost of an analysis and the electrons it judges follow the
        frames used, not the movie's length."""
        if self.frames_per_movie:
            return max(1, int(n_frames) // self.frames_per_movie)
        return self.frame_step

    def describe(self):
        return self.paths[0] if len(self.paths) == 1 else f"{len(self.paths)} movies"

    def _raw_frames(self, limit=None):
        """(key, frame) of every frame to use (the first ``limit`` of each movie), as read."""
        several = len(self.paths) > 1
        for number, path in enumerate(self.paths):
            with open_movie(path) as reader:
                step = self.steps.get(path) or self.step_for(reader.n_frames)
                for count, (index, frame) in enumerate(reader.iter_frames(step)):
                    if limit is not None and count >= limit:
                        break
                    yield ((number if several else 0), index), frame

    def prepare(self):
        """The survey pass (only when a stage asks for one), then each stage's decision."""
        if self._prepared:
            return
        first = None
        for _, frame in self._raw_frames():
            first = frame
            break
        surveying = [s for s in self.stages if first is not None and s.wants_survey(first)]
        if surveying:
            wanted = [s.survey_frames for s in surveying]
            limit = None if None in wanted else max(wanted)
            for key, frame in self._raw_frames(limit):
                conditioned = True  # stages after a surveying one would see unconditioned frames
                for stage in self.stages:
                    if stage in surveying:
                        stage.survey(key, frame)
                        conditioned = False
                    elif conditioned:
                        frame = stage.apply(key, frame)
                        if frame is None:
                            break
        for stage in self.stages:
            stage.begin(self)
        self._prepared = True

    def __iter__(self):
        self.prepare()
        self.used = 0
        for key, frame in self._raw_frames():
            for stage in self.stages:
                frame = stage.apply(key, frame)
                if frame is None:
                    break
            else:
                self.used += 1
                yield frame
        for stage in self.stages:
            stage.end(self)

    def corrected(self, frame, xp=np):
        """The frame as the estimator sees it: multiplied by the reference, if any."""
        if self.gain_reference is None:
            return frame
        if getattr(self, '_reference_xp', None) is not xp:
            self._reference_on_device = xp.asarray(self.gain_reference)
            self._reference_xp = xp
        return frame * self._reference_on_device

    @property
    def unusable(self):
        """Pixels some stage found unusable for the whole movie (bool map), or None."""
        masks = [s.unusable for s in self.stages if s.unusable is not None]
        if not masks:
            return None
        mask = masks[0].copy()
        for other in masks[1:]:
            mask |= other
        return mask

    def info(self):
        """The ``input`` object of the statistics: what each stage did."""
        out = {'frames_read': int(self.total), 'frames_used': int(self.used)}
        if self.truncated:  # read leniently: {path: {complete, claimed, unit, used}}
            out['truncated'] = dict(self.truncated)
        for stage in self.stages:
            details = stage.info()
            if details:
                out[stage.name] = details
        return out

    def stage_notes(self):
        notes = []
        for stage in self.stages:
            summary = getattr(stage, 'summary_notes', None)
            notes += list(stage.notes) + (summary(self) if summary else [])
        return notes


def default_stages():
    """The conditioning every movie gets (see the module docstring)."""
    from .lattice import Lattice
    return [BadValues(), Lattice()]


#: the smallest frame side the analysis can judge (defects and line tests need 3)
MIN_FRAME_SIDE = 3


def frame_size(shape):
    return f"{shape[-1]} x {shape[-2]}"
