"""Scipion protocols of scipion-em-gain (found by pyworkflow in ``<package>.protocols``)."""
from .protocol_movie_gain import GainProtMovieGain

__all__ = ['GainProtMovieGain']
