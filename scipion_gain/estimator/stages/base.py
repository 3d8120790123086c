"""What every frame-conditioning stage shares: the :class:`Stage` protocol.

:class:`~scipion_gain.estimator.frames.FrameSource` reads the frames and calls
its stages in this order: :meth:`Stage.wants_survey` on the first frame, then
(for the stages that asked) :meth:`Stage.survey` on every frame of a first
pass, :meth:`Stage.begin` once, :meth:`Stage.apply` on every frame of each
main pass (it must give the same frame each time: Eq. 7 iterations read the
movies again) and :meth:`Stage.end` after each main pass.
"""
import numpy as np

#: bytes of a frame tested at a time by :func:`whole_numbers` (a block that stays in cache:
#: no frame-sized temporaries, whose fresh pages cost more than the test on a 4K frame)
WHOLE_BLOCK_BYTES = 1 << 20


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


def frame_size(shape):
    """A frame's size as people say it: columns x rows."""
    return f"{shape[-1]} x {shape[-2]}"


def whole_numbers(frame):
    """Whether every value of ``frame`` is a whole number: ``np.array_equal(frame,
    np.rint(frame))`` (NaN is not), a block of rows at a time, stopping at the first block
    that is not; integer frames at once."""
    values = np.asarray(frame)
    if values.dtype.kind in 'biu':
        return True
    if values.ndim < 2 or values.size == 0 or not values.flags.c_contiguous:
        return bool(np.array_equal(values, np.rint(values)))
    lines = values.reshape(values.shape[0], -1)
    step = max(1, WHOLE_BLOCK_BYTES // max(1, lines[0].nbytes))
    rounded = np.empty((min(step, lines.shape[0]), lines.shape[1]), values.dtype)
    equal = np.empty(rounded.shape, bool)
    for start in range(0, lines.shape[0], step):
        part = lines[start:start + step]
        count = part.shape[0]
        np.rint(part, out=rounded[:count])
        np.equal(part, rounded[:count], out=equal[:count])
        if not equal[:count].all():
            return False
    return True
