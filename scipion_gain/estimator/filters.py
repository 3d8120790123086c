"""Filters the estimator's modules share: box means (plain and over a mask), a
regular sampling grid, and the array module of an array.

Each works on NumPy or CuPy arrays alike (the array module ``xp`` is passed
in, or taken from the array); no Scipion import.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .arrays import row_blocks

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
    (mean, share), float32; the mean is 0 where the box holds none."""
    # both filtered maps are ours: filtered in place (a 4K map is 64 MB a copy); the masked
    # values are cast straight into float32 (float64 sums would take a float64 copy first)
    share = box_blur(mask.astype(xp.float32), size, xp, overwrite=True)
    total = xp.zeros(values.shape, dtype=xp.float32)
    xp.copyto(total, values, casting='unsafe', where=mask)
    total = box_blur(total, size, xp, overwrite=True)
    for rows in row_blocks(values.shape[0], DIVIDE_ROWS):   # no frame-sized mask
        part, weight = total[rows], share[rows]
        empty = weight <= 1e-9
        if xp is np:
            np.divide(part, weight, out=part, where=~empty)
        else:   # CuPy's ufuncs take no where=
            part /= xp.where(empty, xp.float32(1), weight)
        part[empty] = 0
    return total, share


#: rows of :func:`masked_box_mean`'s quotient taken at once
DIVIDE_ROWS = 256


#: frames of at least this many pixels are box-filtered in bands on threads
_THREADED_PIXELS = 1 << 20
_WORKERS = max(1, min(4, os.cpu_count() or 1))
_THREADS = []


def box_blur(image, size, xp, overwrite=False):
    """Mean over a size x size box (size odd), edges reflected (scipy.ndimage's
    'reflect': d c b a | a b c d). ``overwrite``: the result may be written over
    ``image`` (the caller's own temporary).

    CuPy: cupyx.scipy.ndimage.uniform_filter. NumPy: scipy.ndimage's, except for
    float32 frames of more than half a box a side (:func:`_box_blur_float32`: its rows on
    threads where the frame is large); cumulative sums where neither is at hand. One
    float32 scheme whatever the frame's size, so that a window of a frame (the level
    made again around a few pixels: :func:`.defects.level_without`) gets the frame's values.
    """
    try:
        if xp is np:
            from scipy.ndimage import uniform_filter
        else:
            from cupyx.scipy.ndimage import uniform_filter
    except ImportError:
        return _box_blur_cumsum(image, size, xp)
    if (xp is np and image.dtype == np.float32 and image.ndim == 2
            and min(image.shape) > size // 2):
        return _box_blur_float32(image, size, out=image if overwrite else None,
                                 threaded=image.size >= _THREADED_PIXELS)
    return uniform_filter(image, size=size, mode='reflect')


def _box_blur_float32(image, size, out=None, threaded=True):
    """scipy's uniform_filter, the same to float32 rounding, in a fraction of its time on a
    large frame: along the rows scipy's uniform_filter1d on bands of rows in threads
    (it releases the GIL); down the columns a running sum in float64 that adds one row
    and drops another per output row, reading the frame row by row (a filter along
    axis 0 jumps a whole row between neighbours, which the cache does not hold).

    No frame-sized temporary: the rows are filtered into ``out`` (``image`` itself when
    the caller allows it: scipy reads a batch of lines before it writes them), and the
    column pass writes each output row over the row-filtered one, keeping the last
    ``size + 1`` row-filtered rows it overwrote in a ring (a row is read at most
    ``size // 2 + 1`` rows after its own output row, reflections at the edges included):
    the same sums of the same values."""
    from scipy.ndimage import uniform_filter1d
    image = np.ascontiguousarray(image)
    rows = image.shape[0]
    across = np.empty_like(image) if out is None else out
    if threaded:
        if not _THREADS:
            _THREADS.append(ThreadPoolExecutor(max_workers=_WORKERS))
        edges = np.linspace(0, rows, 2 * _WORKERS + 1).astype(int)
        bands = [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
        list(_THREADS[0].map(lambda band: uniform_filter1d(
            image[band], size, axis=1, output=across[band], mode='reflect'), bands))
    else:
        uniform_filter1d(image, size, axis=1, output=across, mode='reflect')
    half = size // 2
    ring = np.empty((size + 1, image.shape[1]), dtype=across.dtype)

    def row(index, done):   # scipy's 'reflect'; rows before ``done`` hold output already
        index = -index - 1 if index < 0 else (2 * rows - index - 1 if index >= rows else index)
        return ring[index % ring.shape[0]] if index < done else across[index]

    running = np.zeros(image.shape[1], np.float64)
    for index in range(-half, half + 1):
        running += row(index, 0)
    scale = 1.0 / size
    for index in range(rows):
        if index:
            running += row(index + half, index)
            running -= row(index - 1 - half, index)
        ring[index % ring.shape[0]] = across[index]
        np.multiply(running, scale, out=across[index], casting='same_kind')
    return across


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


def binned(values, size):
    """Sums over size x size cells (the last partial cells dropped).

    float64 cells of up to STRIDED_CELL pixels a side are summed as NumPy's sum of the
    reshaped frame over both cell axes sums them (each row of a cell in order, then the
    rows in order: both reductions shorter than its pairwise blocks of 8), by one strided
    add per pixel of the cell instead of a reduction over two strided axes, a band of
    BINNED_ROWS cells at a time (one band's row sums besides the result): the same sums in
    about half the time (0.13 -> 0.06 s for 2 x 2 cells of a 4K frame)."""
    rows, cols = values.shape[0] // size, values.shape[1] // size
    cells = values[:rows * size, :cols * size]
    if size > STRIDED_CELL or cells.dtype != np.float64:
        return cells.reshape(rows, size, cols, size).sum(axis=(1, 3))
    total = np.empty((rows, cols))
    line = np.empty((min(rows, BINNED_ROWS), cols))
    for band in row_blocks(rows, BINNED_ROWS):
        part, pixels = total[band], cells[band.start * size:band.stop * size]
        for row in range(size):
            sums = part if row == 0 else line[:part.shape[0]]
            np.copyto(sums, pixels[row::size, ::size])
            for col in range(1, size):
                sums += pixels[row::size, col::size]
            if row:
                part += sums
    return total


#: :func:`binned`'s bands of cells
BINNED_ROWS = 128


#: :func:`binned` adds strided views for cells up to this size
STRIDED_CELL = 4


def grid(shape, pixels=GRID_PIXELS):
    """(row slice, column slice): a regular grid of at most ``pixels`` pixels of a frame."""
    rows, cols = shape
    step = max(1, int(np.ceil(np.sqrt(rows * cols / float(pixels)))))
    return slice(step // 2, None, step), slice(step // 2, None, step)
