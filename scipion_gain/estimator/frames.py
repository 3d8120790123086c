"""The frames the estimator sees: movies read one frame at a time, then conditioned.

The paper's model (Sorzano et al. 2018, Eq. 0) is recorded_i = ideal_i * G.
Real movies reach us in other shapes: with a dark offset (integrating
cameras), with NaN or inf where a camera pipeline failed, already multiplied
by a gain reference at acquisition. :class:`FrameSource` reads the frames of
one or more movies one at a time (memory never grows with their number) and
passes each through the *stages* it is given (:mod:`.stages`) that bring it
back to the model:

1. ``dark``: a dark reference subtracted (integrating cameras);
2. ``bad values``: NaN and inf masked for the whole movie and reported; frames
   that are mostly unusable, or all zero, left out and reported;
3. ``lattice``: frames gain-corrected at acquisition turned back into counts,
   with the factors that were applied as the reference;
4. the reference: frames multiplied by the gain reference (residual mode),
   done by :meth:`FrameSource.corrected`, since the estimator needs both the
   recorded frame (its ties) and the corrected one.

A stage may first *survey* the movie (a first pass over every frame, asked
for by :meth:`.stages.Stage.wants_survey`, e.g. to find the lattice of each
pixel), then ``begin`` decides, then ``apply`` transforms each
frame of every pass (Eq. 7 iterations read the movies again, so ``apply``
must give the same frame each time). What each stage did goes into
:meth:`FrameSource.info` (the ``input`` object of the JSON) and the notes.
"""
import numpy as np

from ..io import InputError, open_movie
from .stages.base import frame_size

#: the smallest frame side the analysis can judge (defects and line tests need 3)
MIN_FRAME_SIDE = 3


class FrameSource:
    """The frames of a list of movies, read one at a time and conditioned by stages.

    ``reference`` (a correction that multiplies raw frames) makes the
    estimator see ``recorded * reference`` (:meth:`corrected`); a stage may
    replace it (the lattice stage sets the factors that were applied at
    acquisition). Iterating gives the conditioned frames of one main pass;
    frames a stage leaves out are skipped. ``total`` is the number of frames
    read per pass (before any is left out). ``stages``: the conditioning, in
    order (:mod:`.stages`; none when None).
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
        self.stages = list(stages or ())
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

    def _raw_frames(self, limit=None, reuse_first=False):
        """(key, frame) of every frame to use (the first ``limit`` of each movie), as read;
        ``reuse_first``: the first one is the frame :meth:`prepare` read, when it kept it."""
        several = len(self.paths) > 1
        first, self._first = (getattr(self, '_first', None) if reuse_first else None), None
        for number, path in enumerate(self.paths):
            with open_movie(path) as reader:
                step = self.steps.get(path) or self.step_for(reader.n_frames)
                start = 0
                if first is not None and number == 0:
                    yield first
                    start, first = step, None
                for count, (index, frame) in enumerate(reader.iter_frames(step, start),
                                                       1 if start else 0):
                    if limit is not None and count >= limit:
                        break
                    yield ((number if several else 0), index), frame

    def prepare(self):
        """The survey pass (only when a stage asks for one), then each stage's decision."""
        if self._prepared:
            return
        first = None
        for key, frame in self._raw_frames():
            first = frame
            break
        surveying = [s for s in self.stages if first is not None and s.wants_survey(first)]
        # without a survey pass, the first main pass starts with this frame as read (not
        # read twice); a survey pass may have conditioned it
        self._first = None if surveying or first is None else (key, first)
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
        for key, frame in self._raw_frames(reuse_first=True):
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
