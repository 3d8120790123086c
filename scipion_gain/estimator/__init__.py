"""The gain estimator library: no Scipion import, NumPy or CuPy arrays.

Sorzano et al. 2018, "Blind estimation of DED camera gain in Electron
Microscopy": smooth midway equalization (``sme``), the fixed-point iteration
(``gain``), statistics and the paper's flags (``statistics``).
"""
from .arrays import Device, DeviceError, resolve_device, to_numpy
from .estimate import METHODS, REFERENCES, EstimatorSettings, GainResult, correction_from_sums
from .gain import GainAccumulator, estimate_gain
from .sme import DEFAULT_SIGMA_GRID, sme_frame
from .statistics import PERCENTILES, Thresholds, map_statistics

__all__ = ['Device', 'DeviceError', 'resolve_device', 'to_numpy', 'METHODS', 'REFERENCES',
           'EstimatorSettings', 'GainAccumulator', 'GainResult', 'correction_from_sums',
           'estimate_gain', 'DEFAULT_SIGMA_GRID', 'sme_frame', 'PERCENTILES', 'Thresholds',
           'map_statistics']
