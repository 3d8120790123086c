"""The general implementation: the lines sorted (Eq. 1), references built (Eqs. 2-3) and
mapped (Eq. 4) with tie blocks; the sigma search (Eq. 5).
"""
import numpy as np

from ..kernels import order_lines
from ._blocks import TieBlocks
from ._kernel import DEFAULT_SIGMA_GRID, single_reference_weights, smooth_lines, total_variation
from ._keys import COUNT_LEVELS
from ._scaled import SCALED_PAIR_BINS, expected_total_variation, ramp


class SortedLines(TieBlocks):
    """The lines of a frame sorted (their inverse CDFs, Eq. 1) with their tie blocks.

    ``sorted`` holds the sorted lines (L, n). A *block* is a run of equal keys
    in one sorted line; ``block_of`` gives, for every sample in its original
    place, the index of its block; ``block_line``, ``block_start`` and
    ``block_stop`` give each block's line and rank range [start, stop).

    ``tie_keys`` (the recorded frame's keys) define the blocks as runs of
    equal recorded values in the order of ``keys``. With ``scaled`` (scaled
    counts, see :func:`sme_frame`) the lines are ordered by ``tie_keys``
    themselves (the frame's values in whole counts), and the references are
    built at block resolution: over a block's ranks the inverse CDF is the
    block's ramp (:func:`ramp`), ``unit`` being the frame's count unit.
    ``bounds`` (:func:`frame_keys`): the references are built from the
    values clipped to this range.
    """

    def __init__(self, lines, keys, tie_keys=None, xp=np, scaled=False, unit=1.0, bounds=None):
        self.xp = xp
        n_lines, n = lines.shape
        self.shape = lines.shape
        self.lines = lines
        self.scaled = bool(scaled)
        self.unit = float(unit)
        self.bounds = bounds
        # flat indices of each line's stable order (kernels.order_lines: per-row radix
        # sort on the CPU, one composite-key radix sort on the GPU; same result)
        order = order_lines(tie_keys if self.scaled else keys, xp)
        self.sorted = lines.ravel().take(order)
        sorted_ties = (keys if tie_keys is None else tie_keys).ravel().take(order)
        starts = xp.ones(lines.shape, dtype=bool)
        starts[:, 1:] = sorted_ties[:, 1:] != sorted_ties[:, :-1]
        if self.scaled:
            self.block_key = sorted_ties.ravel()[xp.flatnonzero(starts.ravel())].astype(xp.int64)
        del sorted_ties
        block_sorted = xp.cumsum(starts.ravel(), dtype=xp.int32) - 1
        first = xp.flatnonzero(starts.ravel())
        del starts
        if self.scaled:
            self._block_sorted = block_sorted  # the ramps' block of each rank
        self.n_blocks = int(first.shape[0])
        self.block_line = (first // n).astype(xp.int64)
        self.block_start = (first % n).astype(xp.int64)
        stop = xp.empty_like(first)
        stop[:-1] = first[1:]
        stop[-1] = n_lines * n
        self.block_stop = self.block_start + (stop - first)
        # back to the samples' own places: block_of[l, order[l, k]] = block of rank k
        # NumPy gathers with intp indices (an int32 index is converted on every gather);
        # CuPy gathers with int32 at half the memory traffic
        self.block_of = xp.empty(lines.shape, dtype=np.intp if xp is np else xp.int32)
        self.block_of.ravel()[order.ravel()] = block_sorted

    def equalize(self, reference, ties='mean'):
        """Eq. 4 with tie blocks: each block goes to the mean of ``reference``
        over its ranks; ``reference`` is (n,) (single) or (L, n) (local).

        Inside a block the samples keep their relative values (each is scaled
        by the block's reference mean over its own mean); a block of zeros
        becomes the reference mean. Without ties this is Eq. 4 exactly.
        ``ties='last'`` maps a whole block to the reference at its last rank,
        as Xmipp does; it is here to measure the incumbent, not to be used.
        """
        xp = self.xp
        if ties == 'last':
            last = self.block_stop - 1
            if reference.ndim == 2:
                last = last + self.block_line * reference.shape[1]
            return reference.ravel()[last].astype(xp.float32)[self.block_of]
        return self._map_blocks(self._block_means(reference))

    def reference_block_means(self, mode, sigma):
        """Mean of the reference of ``mode`` and ``sigma`` over each block's ranks.

        The local reference's come from :meth:`local_reference_block_means`
        without building the (L, n) smoothed reference (the same up to float
        rounding).
        """
        if mode == 'local':
            return self.local_reference_block_means(sigma)
        return self._block_means(self.reference(mode, sigma))

    def equalize_to(self, mode, sigma, ties='mean'):
        """:meth:`equalize` against the reference of ``mode`` and ``sigma``."""
        if ties == 'mean':
            return self._map_blocks(self.reference_block_means(mode, sigma))
        return self.equalize(self.reference(mode, sigma), ties)

    def expected_total_variation(self, reference_means):
        """Eq. 5 for scaled counts (:func:`expected_total_variation`), from the blocks of
        neighbouring samples."""
        if not hasattr(self, '_pairs'):
            xp = self.xp
            n_lines, n = self.shape
            levels = int(self.block_key.max()) + 1
            first = self.block_of[:-1].ravel()
            key = self.block_key[self.block_of[1:].ravel()]
            ids = first.astype(xp.int64) * levels + key
            del first, key
            if self.n_blocks * levels <= max(SCALED_PAIR_BINS, n_lines * n):
                counts = xp.bincount(ids, minlength=self.n_blocks * levels)
                ids = xp.flatnonzero(counts)
                counts = counts[ids]
            else:
                ids, counts = xp.unique(ids, return_counts=True)
            where = xp.full(n_lines * levels, -1, dtype=xp.int64)
            where[self.block_line * levels + self.block_key] = xp.arange(self.n_blocks)
            first = ids // levels
            second = where[(self.block_line[first] + 1) * levels + ids % levels]
            squares = xp.cumsum(self.sorted.ravel().astype(xp.float64) ** 2)
            square_means = (self._line_block_sums(self.block_line, squares)
                            / (self.block_stop - self.block_start))
            self._pairs = (counts, first, second, square_means)
        counts, first, second, square_means = self._pairs
        return expected_total_variation(counts, first, second, reference_means, self._own_means,
                                        square_means, self.xp)

    def _map_blocks(self, reference_means):
        """Each block scaled from its own mean to ``reference_means`` (a block of zeros set to it)."""
        xp = self.xp
        own_means = self._own_means
        scale = xp.where(own_means > 0, reference_means / xp.where(own_means > 0, own_means, 1), 0)
        offset = xp.where(own_means > 0, 0, reference_means)
        block = self.block_of
        out = xp.take(scale.astype(xp.float32), block)
        out *= self.lines
        out += xp.take(offset.astype(xp.float32), block)
        return out

    @property
    def _own_means(self):
        """Mean of each block's own values."""
        if not hasattr(self, '_own_means_cache'):
            self._own_means_cache = (self._line_block_sums(self.block_line, self._value_cumulative)
                                     / (self.block_stop - self.block_start))
        return self._own_means_cache

    @property
    def _value_cumulative(self):
        """float64 running sum of the sorted lines' own values, flattened (kept)."""
        if not hasattr(self, '_value_cumulative_cache'):
            self._value_cumulative_cache = self.xp.cumsum(self.sorted.ravel(),
                                                          dtype=self.xp.float64)
        return self._value_cumulative_cache

    @property
    def _reference_lines(self):
        """The sorted lines as the references see them (Eqs. 1-3): the sorted
        lines themselves, or (``scaled``) each block's ramp, or (``bounds``)
        the sorted values clipped to the robust range."""
        if not hasattr(self, '_reference_lines_cache'):
            xp = self.xp
            lines = self.sorted
            if self.scaled:
                length = self.block_stop - self.block_start
                squares = xp.cumsum(self.sorted.ravel().astype(xp.float64) ** 2)
                square_means = self._line_block_sums(self.block_line, squares) / length
                del squares
                alpha, beta = ramp(self.block_start, length, self._own_means, square_means,
                                   self.block_key == COUNT_LEVELS - 1,
                                   (COUNT_LEVELS - 1) * self.unit, xp)
                block = self._block_sorted
                rank = xp.arange(block.shape[0]) % self.shape[1]
                lines = (alpha[block] + beta[block] * rank).astype(xp.float32).reshape(self.shape)
                del rank
            elif self.bounds is not None:
                lines = xp.clip(lines, np.float32(self.bounds[0]), np.float32(self.bounds[1]))
            self._reference_lines_cache = lines
        return self._reference_lines_cache

    @property
    def _cumulative(self):
        """float64 running sum of the reference lines, flattened (computed once, kept)."""
        if not hasattr(self, '_cumulative_cache'):
            if self._reference_lines is self.sorted:
                self._cumulative_cache = self._value_cumulative
            else:
                self._cumulative_cache = self.xp.cumsum(self._reference_lines.ravel(),
                                                        dtype=self.xp.float64)
        return self._cumulative_cache

    def _block_means(self, values):
        """Mean of ``values`` ((n,) or (L, n), in rank order) over each block's ranks."""
        xp = self.xp
        if values.ndim == 1:
            values = values.astype(xp.float64)
            cumulative = xp.zeros(values.shape[0] + 1, dtype=xp.float64)
            cumulative[1:] = xp.cumsum(values)
            sums = cumulative[self.block_stop] - cumulative[self.block_start]
        else:
            # one float64 running sum over the whole frame, straight from float32 (one pass:
            # no float64 copy, no padded per-line array); differences stay exact to ~1e-15
            n = values.shape[1]
            cumulative = xp.cumsum(values.ravel(), dtype=xp.float64)
            base = self.block_line * n
            before = base + self.block_start - 1
            sums = (cumulative[base + self.block_stop - 1]
                    - xp.where(before >= 0, cumulative[xp.maximum(before, 0)], 0.0))
        return sums / (self.block_stop - self.block_start)

    def reference(self, mode, sigma):
        """The smoothed reference inverse CDF for ``mode`` 'single' (Eq. 3) or 'local' (Eq. 2)."""
        xp = self.xp
        lines = self._reference_lines
        if mode == 'single':
            weights = single_reference_weights(self.shape[0], sigma)
            return xp.asarray(weights.astype(np.float32)) @ lines
        if mode == 'local':
            return smooth_lines(lines, sigma, xp)
        raise ValueError(f"unknown reference mode {mode!r} (use single or local)")


def equalize_lines(lines, keys, mode='single', sigma='auto', sigma_grid=DEFAULT_SIGMA_GRID,
                   xp=np, tie_keys=None, ties='mean', scaled=False, unit=1.0, bounds=None):
    """SME of a stack of lines (Eqs. 1-5). Returns (equalized lines, sigma used).

    ``sigma='auto'`` searches ``sigma_grid`` for the least total variation
    across lines; a number uses that sigma. ``scaled`` (scaled counts, see
    :func:`sme_frame`; ``tie_keys`` are then the values in whole counts of
    ``unit``): references and the total variation at block resolution.
    ``bounds``: the frame's robust range (:func:`frame_keys`).
    """
    ranked = SortedLines(lines, keys, tie_keys, xp, scaled=scaled, unit=unit, bounds=bounds)
    if sigma != 'auto':
        return ranked.equalize_to(mode, float(sigma), ties), float(sigma)
    best = None
    for candidate in sigma_grid:
        if scaled:
            means = ranked.reference_block_means(mode, float(candidate))
            tv = ranked.expected_total_variation(means)
            if best is None or tv < best[0]:
                best = (tv, means, float(candidate))
            continue
        equalized = ranked.equalize_to(mode, float(candidate), ties)
        tv = total_variation(equalized, xp)
        if best is None or tv < best[0]:
            best = (tv, equalized, float(candidate))
        del equalized
    if scaled:
        return ranked._map_blocks(best[1]), best[2]
    return best[1], best[2]
