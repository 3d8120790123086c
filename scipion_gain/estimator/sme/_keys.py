"""Rank keys: 16-bit keys whose order is a frame's order, with the robust range that keeps
a hot pixel from squeezing the others (see the package docstring).
"""
import numpy as np


KEY_LEVELS = 65536
#: counting fast path: integer frames with values 0 .. COUNT_LEVELS - 1
COUNT_LEVELS = 256
#: robust range of a frame (hot pixels): quantiles of at most ROBUST_SAMPLE values,
#: widened by ROBUST_REACH times their distance from the median
ROBUST_SAMPLE = 1 << 16
ROBUST_QUANTILES = (0.001, 0.5, 0.999)
ROBUST_REACH = 4.0


def rank_keys(frame, xp=np):
    """16-bit keys whose order is the frame's order (exact for integer frames)."""
    return frame_keys(frame, xp)[0]


def robust_range(frame, xp=np):
    """(low, high) beyond which a frame's values are outliers, from its own quantiles.

    The 0.1 %, 50 % and 99.9 % quantiles of a sample of the frame (every
    k-th value, at most :data:`ROBUST_SAMPLE` of them), widened by
    :data:`ROBUST_REACH` times the distance from the median on each side: a
    hot pixel (one value, or a few per thousand) is outside, any real
    structure of the specimen or of the detector inside. None when the
    sample has no spread (a sparse frame: nothing can be called an outlier).
    """
    flat = frame.ravel()
    sample = xp.sort(flat[::max(1, flat.shape[0] // ROBUST_SAMPLE)])
    last = sample.shape[0] - 1
    low, middle, high = (float(sample[int(round(q * last))]) for q in ROBUST_QUANTILES)
    if not high > low:
        return None
    return low - ROBUST_REACH * (middle - low), high + ROBUST_REACH * (high - middle)


def _outlier_bounds(frame, lo, hi, xp):
    """When the frame goes beyond its robust range: (smallest, largest) value inside it
    (the keys then span the values that are not outliers); else None."""
    bounds = robust_range(frame, xp)
    if bounds is None or (lo >= bounds[0] and hi <= bounds[1]):
        return None
    if hi > bounds[1]:
        hi = float(xp.max(xp.where(frame <= bounds[1], frame, np.float32(lo))))
    if lo < bounds[0]:
        lo = float(xp.min(xp.where(frame >= bounds[0], frame, np.float32(hi))))
    return lo, hi


def frame_keys(frame, xp=np):
    """(keys, K, bounds) of a frame.

    K = max + 1 when the keys are the frame's own integer values (0..65535),
    else None: the keys then quantise the frame to 65536 levels between its
    minimum and maximum, or, when values lie beyond the frame's robust range
    (:func:`robust_range`: a hot pixel), between the range's ends, the
    outliers clipped to the end keys (one outlier no longer squeezes every
    other value into a few levels). ``bounds`` is that range (then also used
    to clip the values the references are built from), or None when no
    value is an outlier. Integer frames small enough for the counting fast
    path are never clipped.
    """
    lo = float(frame.min())
    hi = float(frame.max())
    if lo >= 0 and hi < KEY_LEVELS:
        keys = frame.astype(xp.uint16)  # truncates: equal to the frame iff it holds integers
        if bool(xp.all(keys == frame)):
            levels = int(hi) + 1
            bounds = _outlier_bounds(frame, lo, hi, xp) if levels > COUNT_LEVELS else None
            return keys, levels, bounds
        del keys
    bounds = _outlier_bounds(frame, lo, hi, xp)
    if bounds is not None:
        lo, hi = bounds
    scale = (KEY_LEVELS - 1) / (hi - lo) if hi > lo else 0.0
    shifted = frame - np.float32(lo)
    if bounds is not None:
        xp.clip(shifted, np.float32(0), np.float32(hi - lo), out=shifted)
    shifted *= np.float32(scale)
    return shifted.astype(xp.uint16), None, bounds
