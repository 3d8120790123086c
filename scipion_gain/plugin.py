"""The Scipion side of the package: the ``Plugin`` class pyworkflow registers.

Loaded lazily by ``scipion_gain.__getattr__`` so that the estimator and the
command line never import pyworkflow or pwem. The estimator is pure Python
(NumPy, optionally CuPy), so there is no binary to install and no variable
that must be set.
"""
import os
import re

import pwem
import pyworkflow.utils as pwutils

from . import __version__

#: Set to a folder to make the estimator's GPU path use a specific CUDA
#: toolkit; empty (default) leaves the environment as it is.
GAIN_CUDA_LIB = 'GAIN_CUDA_LIB'

_logo = ''
_references = ['Sorzano2018']


class Plugin(pwem.Plugin):
    """scipion-em-gain: blind gain estimation (Sorzano et al. 2018)."""
    _url = 'https://github.com/scipion-em/scipion-em-gain'
    _supportedVersions = [__version__]

    @classmethod
    def _defineVariables(cls):
        cls._defineVar(GAIN_CUDA_LIB, '', description='Optional CUDA library folder prepended '
                                                       'to LD_LIBRARY_PATH for the GPU path.')

    @classmethod
    def getEnviron(cls):
        """Environment for the estimator: the caller's, plus GAIN_CUDA_LIB if set."""
        environ = pwutils.Environ(os.environ)
        cuda = cls.getVar(GAIN_CUDA_LIB)
        if cuda:
            environ.update({'LD_LIBRARY_PATH': cuda}, position=environ.BEGIN)
        return environ

    @classmethod
    def defineBinaries(cls, env):
        """Nothing to install: the estimator is Python (CuPy via the ``gpu`` extra)."""

    @classmethod
    def getActiveVersion(cls, *args, **kwargs):
        return __version__

    def getTemplates(self):
        """The workflow templates of ``templates/*.json.template`` (pyworkflow's
        template list asks every plugin) whose protocols are all registered: the
        gain check template's monitor exists only with scipion-em-facilities."""
        protocols = pwem.Domain.getProtocols()
        return [template for template in super().getTemplates()
                if all(name in protocols for name in
                       re.findall(r'"object\.className":\s*"(\w+)"', template.getContent()))]

    # pyworkflow assumes the Plugin class is defined in the package's
    # __init__: it takes the plugin's name and folder from
    # ``self.__class__.__module__`` ('scipion_gain.plugin' here, a module
    # without __path__, which makes every protocol run fail at start).
    # The class lives here so that the package imports without pwem.
    def getName(self):
        return __package__

    def getPath(self):
        return os.path.dirname(os.path.abspath(__file__))
