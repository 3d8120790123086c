"""SME of one frame (Eq. 6): which implementation runs, and the two directions."""
import numpy as np

from ._counted import equalize_counts, equalize_scaled_counts
from ._kernel import DEFAULT_SIGMA_GRID
from ._keys import COUNT_LEVELS, frame_keys, rank_keys
from ._scaled import SCALED_PAIR_BINS, SCALED_PAIR_BINS_PER_PIXEL, count_keys, count_unit
from ._sorted import equalize_lines


def sme_frame(frame, mode='single', sigma='auto', sigma_grid=DEFAULT_SIGMA_GRID, xp=np,
              executor=None, recorded=None, ties='mean', fast=True):
    """SME(I) = (SME_col(I) + SME_row(I)) / 2 (Eq. 6) of one 2-D frame I.

    ``recorded`` is the frame as the camera counted it (before any division
    by a gain estimate or multiplication by a reference): its equal values
    are the ties. When it holds counts (integers below COUNT_LEVELS) and the
    frame is not itself, the frame is *scaled counts* (residual mode, Eq. 7
    iterations, recovered lattices): its ties are its values in whole counts
    (see the package docstring). Returns (equalized frame, (sigma_columns,
    sigma_rows)). With an ``executor`` (a thread pool, CPU only) the two
    directions run at once. ``fast=False`` takes the general (sorting) path
    where a fast one exists (to compare them).
    """
    own = recorded is None or recorded is frame  # the frame is its own recording: same ties
    scaled = False
    if own:
        keys, levels, bounds = frame_keys(frame, xp)
        tie_keys = None
        if fast and ties == 'mean' and levels is not None and levels <= COUNT_LEVELS:
            # counting fast path: histograms instead of sorts, no transposes
            return _fast_directions(executor, mode, lambda axis: equalize_counts(
                keys, levels, axis, mode, sigma, sigma_grid, xp))
    else:
        _, recorded_levels, _ = frame_keys(recorded, xp)
        scaled = (ties == 'mean' and recorded_levels is not None
                  and recorded_levels <= COUNT_LEVELS and float(frame.min()) >= 0)
        if scaled:
            unit = count_unit(frame, recorded, xp)
            keys, levels = count_keys(frame, unit, xp)
            tie_keys, bounds = keys, None
            if fast and (sigma != 'auto' or _scaled_pairs_fit(frame.shape, levels)):
                return equalize_scaled_counts(frame, keys, levels, unit, mode, sigma, sigma_grid,
                                              xp, executor)
        else:
            keys, _, bounds = frame_keys(frame, xp)
            tie_keys = rank_keys(recorded, xp)
    unit = unit if scaled else 1.0
    if tie_keys is None:
        jobs = [(xp.ascontiguousarray(frame.T), xp.ascontiguousarray(keys.T), None),
                (frame, keys, None)]
    else:
        jobs = [(xp.ascontiguousarray(frame.T), xp.ascontiguousarray(keys.T),
                 xp.ascontiguousarray(tie_keys.T)), (frame, keys, tie_keys)]

    def run(job):
        return equalize_lines(job[0], job[1], mode, sigma, sigma_grid, xp, tie_keys=job[2],
                              ties=ties, scaled=scaled, unit=unit, bounds=bounds)

    if executor is not None:
        (by_columns, sigma_c), (by_rows, sigma_r) = executor.map(run, jobs)
    else:
        (by_columns, sigma_c), (by_rows, sigma_r) = map(run, jobs)
    result = by_columns.T + by_rows
    result *= np.float32(0.5)
    return result, (sigma_c, sigma_r)


def _scaled_pairs_fit(shape, levels):
    """Whether the scaled fast path's pair histograms (sigma search) fit (else: general path)."""
    rows, cols = shape
    bins = (max(rows, cols) - 1) * levels * levels
    return bins <= max(SCALED_PAIR_BINS, SCALED_PAIR_BINS_PER_PIXEL * rows * cols)


def _fast_directions(executor, mode, run):
    """Eq. 6 from the fast path's two directions (``run(axis)``), in the frame's layout."""
    axes = (1, 0)  # columns, rows
    # the local reference's running sums (128 MB each at 4096^2) would be held at once
    # in the pool, which gains nothing for them here; the single reference gains ~20 %
    if executor is not None and mode == 'single':
        (by_columns, sigma_c), (by_rows, sigma_r) = executor.map(run, axes)
    else:
        (by_columns, sigma_c), (by_rows, sigma_r) = map(run, axes)
    by_columns += by_rows
    by_columns *= np.float32(0.5)
    return by_columns, (sigma_c, sigma_r)
