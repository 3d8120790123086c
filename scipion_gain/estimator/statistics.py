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
    values = values[keep] if keep is not None and keep.any() else values.ravel()
    if values.size == 0:
        raise ValueError("no pixels to compute statistics on")
    pct = np.percentile(values, PERCENTILES)
    stats = {'mean': float(values.mean(dtype=np.float64)),
             'std': float(values.std(dtype=np.float64)),
             'min': float(values.min()), 'max': float(values.max())}
    stats.update({_percentile_key(p): float(v) for p, v in zip(PERCENTILES, pct)})
    ratios = {'p97.5/p2.5': _ratio(stats['p97.5'], stats['p2.5']),
              'max/p97.5': _ratio(stats['max'], stats['p97.5'])}
    flags = {'std': stats['std'] > thresholds.std,
             'percentile_ratio': ratios['p97.5/p2.5'] > thresholds.percentile_ratio,
             'max_ratio': ratios['max/p97.5'] > thresholds.max_ratio}
    return {'statistics': stats, 'ratios': ratios, 'flags': flags,
            'flagged': any(flags.values()), 'thresholds': asdict(thresholds)}


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
