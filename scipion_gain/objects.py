"""Scipion objects of scipion-em-gain (found by pyworkflow in ``<package>.objects``)."""
from pwem.objects import SetOfImages


class SetOfGainMaps(SetOfImages):
    """The gain (or residual gain) maps of analysed movies: one Image per movie, its
    objId the movie's id, its statistics and verdict as attributes. A class of its
    own only so that Scipion's table views can order and show its columns
    (viewers register them for this class): the gain statistics and the verdict
    first, not behind the acquisition columns every Image carries."""
