"""Scipion protocols of scipion-em-gain (found by pyworkflow in ``<package>.protocols``).

The gain check monitor builds on scipion-em-facilities' movie gain monitor and
is registered only when that plugin imports; without it the plugin works as
before and ``MONITOR_UNAVAILABLE`` says why there is no monitor.
"""
from .protocol_movie_gain import GainProtMovieGain

__all__ = ['GainProtMovieGain']

try:  # optional dependency: scipion-em-facilities (extra "facilities")
    import emfacilities.protocols  # noqa: F401
except Exception as exc:  # not installed, or a plugin it needs (xmipp3) does not import
    MONITOR_UNAVAILABLE = ('scipion-em-facilities is not installed or does not import (%s: %s)'
                           % (type(exc).__name__, exc))
else:
    MONITOR_UNAVAILABLE = None
    from .protocol_monitor_gain import GainProtMonitorMovieGain  # noqa: F401
    __all__.append('GainProtMonitorMovieGain')
