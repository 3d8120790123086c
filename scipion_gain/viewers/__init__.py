"""Scipion viewers of scipion-em-gain (found by pyworkflow in ``<package>.viewers``).

Importing them needs no display: Tk is touched only when a window is shown.
"""
from .viewer_movie_gain import FigureView, GainMovieGainViewer

__all__ = ['GainMovieGainViewer', 'FigureView']
