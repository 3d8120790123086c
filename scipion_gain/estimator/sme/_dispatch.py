"""SME of one frame (Eq. 6): which implementation runs, and the two directions."""
import numpy as np

from ._counted import equalize_counts, equalize_scaled_counts, scaled_counts_table
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
    (see the package docstring). ``sigma``: 'auto' (Eq. 5's search), a number, or a
    (columns, rows) pair, one per direction (a search's result, reused). Returns (equalized frame, (sigma_columns,
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
                keys, levels, axis, mode, along(sigma, axis), sigma_grid, xp))
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

    def run(job, axis):
        return equalize_lines(job[0], job[1], mode, along(sigma, axis), sigma_grid, xp,
                              tie_keys=job[2], ties=ties, scaled=scaled, unit=unit, bounds=bounds)

    if executor is not None:
        (by_columns, sigma_c), (by_rows, sigma_r) = executor.map(run, jobs, (1, 0))
    else:
        (by_columns, sigma_c), (by_rows, sigma_r) = map(run, jobs, (1, 0))
    result = by_columns.T + by_rows
    result *= np.float32(0.5)
    return result, (sigma_c, sigma_r)


#: the two directions' sigma searches run at once (with an executor) only where their pair
#: histograms together take at most this many bins per frame pixel (int64: 12 bytes a pixel
#: at 1.5; each histogram is let go once its nonzero bins are listed as int32, which the
#: search reads: a raw 4096 x 4096 x 16 draw at 44 levels, the tables' own peak 235 MB one
#: direction after the other before, 168 MB after, 265 MB both at once) ...
PAIR_BINS_BESIDE = 1.5
#: ... or, for a frame that is not its own recording (a residual's draw: counts times the
#: reference; its weighted histograms' float64 chunks, a direction's at a time), this many:
#: both directions at once raised the command's peak on a residual 4096 x 4096 x 16 movie
#: from 736 to 839 MB (raw: 622-660 -> 643 MB)
PAIR_BINS_BESIDE_SCALED = 0.5


def scaled_count_tables(frame, recorded, mode='single', sigma='auto',
                        sigma_grid=DEFAULT_SIGMA_GRID, xp=np, executor=None):
    """Eq. 6's two mapping tables of a frame of scaled counts, instead of the mapped frame.

    The scaled fast path (:func:`sme_frame` with ``recorded``) maps a sample of value v
    > 0 and key k (its value in whole counts of ``unit``, :func:`count_keys`) in column
    c and row r to v (C[c, k] + R[r, k]) / 2, and a zero to (C[c, 0] + R[r, 0]) / 2.
    Returns (C (columns, K), R (rows, K), unit, (sigma_columns, sigma_rows)), an absent
    block's entry 0; or None where the fast path does not take the frame (not counts, or
    the sigma search's pair tables do not fit). With an ``executor`` (a thread pool, CPU
    only) the two directions run at once, unless the sigma search's pair histograms of both
    would exceed PAIR_BINS_BESIDE (a residual's: PAIR_BINS_BESIDE_SCALED) bins a pixel."""
    recorded_keys, recorded_levels, _ = frame_keys(recorded, xp)
    if recorded_levels is None or recorded_levels > COUNT_LEVELS or float(frame.min()) < 0:
        return None
    # a frame that is its own recording holds whole counts: its unit is 1 (its sum over
    # itself) and its keys are its values (count_keys would give the same)
    integral = recorded is frame
    unit = 1.0 if integral else count_unit(frame, recorded, xp)
    keys, levels = ((recorded_keys.astype(xp.uint8), recorded_levels) if integral
                    else count_keys(frame, unit, xp))
    if sigma == 'auto' and not _scaled_pairs_fit(frame.shape, levels):
        return None
    beside = PAIR_BINS_BESIDE if integral else PAIR_BINS_BESIDE_SCALED
    if (executor is not None and sigma == 'auto'
            and 2 * _pair_bins(frame.shape, levels) > beside * frame.size):
        # the sigma search's pair histograms of both directions at once would hold more
        # than 1.5 float64 frames (a residual's: half a frame) beside the estimate's other
        # arrays (with the histograms held through the search, raw 4096 x 4096 x 16 (42
        # levels) and x 40 in two threads raised the command's peak by 120 MB)
        executor = None

    def run(axis):
        return scaled_counts_table(frame, keys, levels, unit, axis, mode, along(sigma, axis),
                                   sigma_grid, xp, integral=integral)

    tables = list(executor.map(run, (1, 0)) if executor is not None else map(run, (1, 0)))
    rows, cols = frame.shape
    return (tables[0][0].reshape(cols, levels), tables[1][0].reshape(rows, levels), unit,
            (tables[0][1], tables[1][1]))


def along(sigma, axis):
    """The sigma of one direction (``axis`` 1: the columns, 0: the rows) of ``sigma``: 'auto',
    a number, or a (columns, rows) pair."""
    if isinstance(sigma, (tuple, list)):
        return sigma[0] if axis == 1 else sigma[1]
    return sigma


def _pair_bins(shape, levels):
    """The bins of one direction's pair histogram of the sigma search (scaled fast path)."""
    return (max(shape) - 1) * levels * levels


def _scaled_pairs_fit(shape, levels):
    """Whether the scaled fast path's pair histograms (sigma search) fit (else: general path)."""
    rows, cols = shape
    return _pair_bins(shape, levels) <= max(SCALED_PAIR_BINS,
                                            SCALED_PAIR_BINS_PER_PIXEL * rows * cols)


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
