"""Filters the estimator's modules share: box means (plain and over a mask), a
regular sampling grid, and the array module of an array.

Each works on NumPy or CuPy arrays alike (the array module ``xp`` is passed
in, or taken from the array); no Scipion import.
"""
import numpy as np

#: a grid (:func:`grid`) holds at most this many pixels of a frame
GRID_PIXELS = 65536


def array_module(array):
    """numpy or cupy, whichever ``array`` belongs to."""
    if type(array).__module__.split('.')[0] == 'cupy':
        import cupy
        return cupy
    return np


def masked_box_mean(values, mask, size, xp=np):
    """Mean of ``values`` over the ``mask`` pixels of the size x size box around each
    pixel (a normalised convolution), and the share of the box those pixels fill:
    (mean, share); the mean is 0 where the box holds none."""
    share = box_blur(mask.astype(xp.float64), size, xp)
    total = box_blur(xp.where(mask, values, 0.0), size, xp)
    return xp.where(share > 1e-9, total / xp.maximum(share, 1e-9), 0.0), share


def box_blur(image, size, xp):
    """Mean over a size x size box (size odd), edges reflected.

    scipy.ndimage.uniform_filter for NumPy, cupyx.scipy.ndimage's for CuPy;
    cumulative sums where neither is at hand.
    """
    try:
        if xp is np:
            from scipy.ndimage import uniform_filter
        else:
            from cupyx.scipy.ndimage import uniform_filter
    except ImportError:
        return _box_blur_cumsum(image, size, xp)
    return uniform_filter(image, size=size, mode='reflect')


def _box_blur_cumsum(image, size, xp):
    half = size // 2
    out = image
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half + 1, half)
        padded = xp.pad(out, pad, mode='reflect') if out.shape[axis] > half + 1 else \
            xp.pad(out, pad, mode='edge')
        total = xp.cumsum(padded, axis=axis, dtype=xp.float64)
        hi = [slice(None), slice(None)]
        lo = [slice(None), slice(None)]
        hi[axis] = slice(size, None)
        lo[axis] = slice(0, -size)
        out = (total[tuple(hi)] - total[tuple(lo)]) / size
    return out


def grid(shape, pixels=GRID_PIXELS):
    """(row slice, column slice): a regular grid of at most ``pixels`` pixels of a frame."""
    rows, cols = shape
    step = max(1, int(np.ceil(np.sqrt(rows * cols / float(pixels)))))
    return slice(step // 2, None, step), slice(step // 2, None, step)
