"""Scipion viewers of scipion-em-gain (found by pyworkflow in ``<package>.viewers``).

Importing them needs no display: Tk is touched only when a window is shown.
"""
from .viewer_movie_gain import FigureView, GainMovieGainViewer, TableView

__all__ = ["GainMovieGainViewer", "FigureView", "TableView"]


def _registerTableColumns():
    """Scipion's table of a SetOfGainMaps (estimatedGains / residualGains): the verdict and
    the gain statistics first, the acquisition columns every Image carries hidden. Both
    table viewers (showj's DataViewer and the metadata viewer) read this registry."""
    from pwem.viewers import DataViewer
    from pwem.viewers.showj import MODE, MODE_MD, ORDER, RENDER, VISIBLE

    from ..objects import SetOfGainMaps
    from ..protocols.outputs import GAIN_MAP_COLUMNS
    labels = ' '.join(GAIN_MAP_COLUMNS)
    DataViewer.registerConfig(SetOfGainMaps, {ORDER: labels, VISIBLE: labels, MODE: MODE_MD,
                                             RENDER: '_filename'})


_registerTableColumns()
