"""What every frame-conditioning stage shares: the :class:`Stage` protocol.

:class:`~scipion_gain.estimator.frames.FrameSource` reads the frames and calls
its stages in this order: :meth:`Stage.wants_survey` on the first frame, then
(for the stages that asked) :meth:`Stage.survey` on every frame of a first
pass, :meth:`Stage.begin` once, :meth:`Stage.apply` on every frame of each
main pass (it must give the same frame each time: Eq. 7 iterations read the
movies again) and :meth:`Stage.end` after each main pass.
"""


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
