"""scipion-em-gain: blind estimation of direct-electron-detector gain from movies.

Sorzano et al. 2018, "Blind estimation of DED camera gain in Electron
Microscopy", J. Struct. Biol. 203:90.

Every gain map this package writes MULTIPLIES raw frames (the Scipion, RELION
and MotionCor2 convention), has mean 1 and holds no NaN or inf.

The estimator (``scipion_gain.estimator``), the readers (``scipion_gain.io``)
and the command line import neither pyworkflow nor pwem; the Scipion
``Plugin`` class is loaded only when Scipion asks for it.
"""
__version__ = '0.1.0'

_SCIPION_NAMES = ('Plugin', '_logo', '_references')


def __getattr__(name):
    # Lazy, so that `import scipion_gain.estimator` and the command line work
    # (and start fast) without Scipion; pyworkflow looks `Plugin` up with
    # getattr when it registers the plugin.
    if name in _SCIPION_NAMES:
        from . import plugin
        return getattr(plugin, name)
    raise AttributeError(f"module 'scipion_gain' has no attribute {name!r}")
