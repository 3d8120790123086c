"""Device-specific strategies for the few places where NumPy and CuPy differ in speed.

Each strategy here is plain array code run with either module: the GPU strategy
can be run with NumPy (its *twin*), and the tests check that both strategies
give identical results on the CPU. Nothing here changes a result; only how fast
it is reached.

Ordering the samples of each line (Eq. 1, the empirical inverse CDF)
--------------------------------------------------------------------
SME needs, for every line of a frame, the stable order of its 16-bit rank
keys. ``order_lines`` returns it as *flat* indices into the frame
(``lines.ravel()[flat[l]]`` is line ``l`` sorted), so the gathers and the
scatter that follow are 1-D (cheaper than 2-D fancy indexing on both devices).

* ``'rows'`` (CPU default): ``numpy.argsort(keys, axis=1, kind='stable')``,
  which NumPy runs as a radix sort on 16-bit keys, one row at a time, plus the
  row offsets.
* ``'flat'`` (GPU default): one stable 1-D argsort of the 32-bit composite key
  ``line << 16 | key``. CuPy (13.x, ``cupy/cuda/cupy_thrust.cu``) sorts a 2-D
  array along an axis with ``thrust::stable_sort_by_key`` over a zip of
  (segment id, value) with a tuple comparator, i.e. a merge sort; a 1-D integer
  array with the default comparator goes to CUB's radix sort. Sorting by
  ``(line, key)`` in one 1-D radix sort gives exactly the per-line stable
  order (lines come out in line order, ties in original order).
"""
import numpy as np

ORDER_STRATEGIES = ('rows', 'flat')


def default_strategy(xp):
    return 'rows' if xp is np else 'flat'


def order_lines(keys, xp=np, strategy=None):
    """Flat indices (L, n) of the stable per-line order of ``keys`` (L, n), 16-bit.

    ``lines.ravel()[flat[l]]`` is line ``l`` sorted by key; equal keys keep
    their original order. Both strategies give identical results.
    """
    strategy = strategy or default_strategy(xp)
    n_lines, n = keys.shape
    if strategy == 'rows':
        flat = xp.argsort(keys, axis=1, kind='stable')
        flat += (xp.arange(n_lines, dtype=flat.dtype) * n)[:, None]
        return flat
    if strategy == 'flat':
        key_type = xp.uint32 if n_lines < (1 << 16) else xp.uint64
        composite = xp.arange(n_lines, dtype=key_type)[:, None] << 16
        composite = composite | keys.astype(key_type)
        return xp.argsort(composite.ravel(), kind='stable').reshape(n_lines, n)
    raise ValueError(f"unknown order strategy {strategy!r} (use {', '.join(ORDER_STRATEGIES)})")
