"""The movie gain run folder: what the protocol, its movie jobs, ``scipion-gain check`` and
the report agree on (no pyworkflow import).

* :mod:`.layout`: every path of a run folder and the movie ids in file names.
* :mod:`.running`: the running estimate: the movies' sums merged, judged, its maps.
"""
from .layout import RunFolder, movie_id_of_label

__all__ = ['RunFolder', 'movie_id_of_label']
