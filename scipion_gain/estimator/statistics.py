"""Statistics of a gain map and the paper's three quality flags.

Sorzano et al. 2018 (Sec. 3) flag a residual gain whose std > 0.04, whose
p97.5 / p2.5 > 1.15, or whose max / p97.5 > 4.5. Std is the population std
(ddof=0) and percentiles are numpy's linear ones, as in Xmipp's summary files
and the facilities monitor.
"""
from dataclasses import asdict, dataclass

import numpy as np

PERCENTILES = (2.5, 25, 50, 75, 97.5)


@dataclass(frozen=True)
class Thresholds:
    std: float = 0.04
    percentile_ratio: float = 1.15
    max_ratio: float = 4.5


def _percentile_key(p):
    return f"p{p:g}"


def map_statistics(gain_map, thresholds=Thresholds(), mask=None):
    """Statistics, ratios and flags of a map, as a JSON-ready dict.

    ``mask`` (True = use) restricts the statistics to good pixels; by default,
    and when the mask keeps no pixel, all pixels count. Keys are stable: other
    tools read them.
    """
    values = np.asarray(gain_map)
    if values.dtype != np.float32:   # a map is float32; sums and moments are in float64
        values = values.astype(np.float64)
    keep = None if mask is None else np.asarray(mask, dtype=bool)
    copied = keep is not None and bool(keep.any())
    values = values[keep] if copied else values.ravel()
    if values.size == 0:
        raise ValueError("no pixels to compute statistics on")
    mean, std = _mean_std(values)
    stats = {'mean': mean, 'std': std, 'min': float(values.min()), 'max': float(values.max())}
    # the percentiles reorder the values: in place when they are our copy
    pct = np.percentile(values, PERCENTILES, overwrite_input=copied)
    stats.update({_percentile_key(p): float(v) for p, v in zip(PERCENTILES, pct)})
    ratios = {'p97.5/p2.5': _ratio(stats['p97.5'], stats['p2.5']),
              'max/p97.5': _ratio(stats['max'], stats['p97.5'])}
    flags = {'std': stats['std'] > thresholds.std,
             'percentile_ratio': ratios['p97.5/p2.5'] > thresholds.percentile_ratio,
             'max_ratio': ratios['max/p97.5'] > thresholds.max_ratio}
    return {'statistics': stats, 'ratios': ratios, 'flags': flags,
            'flagged': any(flags.values()), 'thresholds': asdict(thresholds)}


def _mean_std(values, chunk=1 << 20):
    """Mean and population std (ddof 0) of a 1-D array, accumulated in float64 a chunk at
    a time (numpy's std of float32 values makes a float64 copy of them all)."""
    mean = float(values.sum(dtype=np.float64)) / values.size
    centre = values.dtype.type(mean)
    offset = squares = 0.0
    for start in range(0, values.size, chunk):
        deviation = (values[start:start + chunk] - centre).astype(np.float64)
        offset += float(deviation.sum())
        squares += float(np.dot(deviation, deviation))
    offset /= values.size   # the centre's own rounding, taken out
    return mean, float(np.sqrt(max(squares / values.size - offset * offset, 0.0)))


def _ratio(a, b):
    # A zero denominator means a map with a dead quarter: report it as huge,
    # never as inf (JSON has no inf).
    return float(a / b) if b > 0 else float(np.finfo(np.float64).max)


def significant(value, digits):
    """``value`` to ``digits`` significant digits for a JSON report; None when it is
    None, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    if not np.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")
