"""The stages that bring real frames back to the paper's model (recorded = ideal x G)
before the estimate: :class:`~.base.Stage` is what each one is; :mod:`.cleaning`
(NaN and inf, a dark reference, the dose), :mod:`.lattice` (frames gain-corrected
at acquisition turned back into counts) and :mod:`.integrating` (the checks of
integrating cameras: electron signal, offset, photon transfer).

:class:`~scipion_gain.estimator.frames.FrameSource` runs the stages it is given;
:func:`default_stages` are those every movie gets.
"""
from .base import Stage
from .cleaning import BadValues, Dark, Dose
from .lattice import Lattice


def default_stages():
    """The conditioning every movie gets: NaN and inf masked, then the lattice check."""
    return [BadValues(), Lattice()]
