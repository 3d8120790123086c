"""The histogram implementation for counting frames and scaled counts (no sort): the
same maps as the sorted one from per-line histograms.
"""
import numpy as np

from ._blocks import TieBlocks
from ._kernel import DEFAULT_SIGMA_GRID, single_reference_weights, total_variation_along
from ._keys import COUNT_LEVELS
from ._scaled import expected_total_variation, ramp


#: the sigma search takes its total variations from pair histograms of at most
#: this many bins per frame pixel (else it maps every candidate)
PAIR_BINS_PER_PIXEL = 0.25
#: the counting fast path works through a CPU frame this many samples at a time
#: (its block ids are never held for the whole frame); a GPU takes the frame at once
COUNT_CHUNK = 1 << 21


#: the sigma search's pair list is made from this many lines' bins at a time
PAIR_LIST_LINES = 512


class CountedLines(TieBlocks):
    """The counting fast path: the tie blocks of integer lines from per-line histograms.

    ``keys`` is the whole frame (rows, cols) of integer values 0 .. K - 1
    (``levels`` = K), the frame being its own recording. ``axis`` 0 takes the
    rows as the lines, 1 the columns; the frame keeps its layout (no
    transpose) and so does the result of :meth:`map`.

    Line l's tie blocks are the values v present in it: block (l, v) has
    ``counts[l, v]`` samples and occupies ranks ``starts[l, v]`` ..
    ``starts[l, v] + counts[l, v]`` of the sorted line (the cumulative
    histogram), and each sample's block is ``line * K + value`` (a lookup,
    no sort), computed a chunk of rows at a time (:data:`COUNT_CHUNK`). The present blocks, in line then value order, are the general
    path's blocks (:class:`SortedLines`) in the same order.

    With ``pairs`` the histogram of neighbouring pairs of values
    (line l value a, line l + 1 value b, same place) is kept, from which the
    total variation across lines (Eq. 5) of any (L, K) table follows without
    mapping the frame.

    Scaled counts (``values``: the frame, frame layout; ``keys`` its values
    in whole counts of ``unit``, :func:`count_keys`): the blocks are the
    keys, as above, and per block the sum and the sum of squares of the
    values (weighted histograms) give its own mean and its ramp
    (:func:`ramp`), from which both references follow exactly (the single
    one as a piecewise-linear running sum, the local one by evaluating the
    neighbour lines' ramps at each block's ends). :meth:`scaled_tables` and
    :meth:`map_scaled` then map each sample, keeping its relative value.
    This is the general path's ``scaled`` mode (:class:`SortedLines`)
    without any sort. ``integral``: the values are their own keys (whole counts, unit 1):
    a block's sum and sum of squares are its count times v and v^2, exact in float64 as
    the weighted histograms' sums of whole numbers are (two weighted histograms of the
    frame less, 0.14 s a direction at 4096 x 4096).
    """

    def __init__(self, keys, levels, axis, xp=np, pairs=False, values=None, unit=1.0,
                 integral=False):
        self.xp = xp
        self.values = values
        self.unit = float(unit)
        K = int(levels)
        rows, cols = keys.shape
        n_lines, n = (rows, cols) if axis == 0 else (cols, rows)
        self.shape = (n_lines, n)
        self.levels = K
        self.axis = axis
        self.keys = keys
        self._index = np.intp if xp is np else xp.int64
        offsets = xp.arange(n_lines, dtype=self._index) * K
        self._offsets = offsets[:, None] if axis == 0 else offsets[None, :]
        self.pairs = None
        if pairs and n_lines > 1:
            self.pairs = xp.zeros((n_lines - 1) * K * K, dtype=self._index)
        else:
            counts = xp.zeros(n_lines * K, dtype=self._index)
        weighted = values is not None and not integral
        if weighted:
            sums = xp.zeros(n_lines * K, dtype=xp.float64)
            squares = xp.zeros(n_lines * K, dtype=xp.float64)
        # (the columns' pairs of a frame without weighted histograms need no row chunks)
        chunks = self._block_ids() if weighted or axis == 0 or self.pairs is None else ()
        for a, b, ids in chunks:
            if weighted:
                chunk = values[a:b].astype(xp.float64).ravel()
                sums += xp.bincount(ids.ravel(), weights=chunk, minlength=sums.shape[0])
                chunk *= chunk
                squares += xp.bincount(ids.ravel(), weights=chunk, minlength=sums.shape[0])
                del chunk
            if self.pairs is not None and axis == 0:
                # pairs (line l value a, line l + 1 value b, same place): bin (l K + a) K + b;
                # these rows' bins only (a histogram of the chunk's lines, not of all
                # lines: at 4096 x 4096 and 45 levels, 8 MB instead of 66 MB a chunk)
                stop = min(b, rows - 1)  # rows a .. stop - 1 with their next rows
                self._add_pairs(ids[:stop - a], keys[a + 1:stop + 1], a, max(stop, a))
            elif self.pairs is None:
                counts += xp.bincount(ids.ravel(), minlength=counts.shape[0])
            del ids
        if self.pairs is not None and axis == 1:
            # columns as the lines: the pairs a block of columns at a time (all rows), each
            # block's histogram over its own lines' bins only
            step = max(1, COUNT_CHUNK // rows) if xp is np else cols
            for first in range(0, cols - 1, step):
                stop = min(first + step, cols - 1)
                ids = xp.add(keys[:, first:stop], self._offsets[:, first:stop],
                             dtype=self._index)
                self._add_pairs(ids, keys[:, first + 1:stop + 1], first, stop)
                del ids
        if self.pairs is not None:
            self.pairs = self.pairs.reshape(n_lines - 1, K, K)
            counts = xp.empty((n_lines, K), dtype=self.pairs.dtype)
            counts[:-1] = self.pairs.sum(axis=2)
            counts[-1] = self.pairs[-1].sum(axis=0)
        counts = counts.reshape(n_lines, K)
        if values is not None and integral:
            value = xp.arange(K, dtype=counts.dtype)
            sums = (counts * value).ravel().astype(xp.float64)
            squares = (counts * (value * value)).ravel().astype(xp.float64)
        self.counts = counts
        self.starts = xp.cumsum(counts, axis=1) - counts  # first rank of each value in its line
        present = xp.flatnonzero(counts.ravel())
        self.present = present
        self.n_blocks = int(present.shape[0])
        self.block_line = present // K
        self.block_value = present % K
        self.block_start = self.starts.ravel()[present]
        self.block_stop = self.block_start + counts.ravel()[present]
        if values is not None:
            length = self.block_stop - self.block_start
            self._own = sums[present] / length
            self._square_means = squares[present] / length
            self._ramp = ramp(self.block_start, length, self._own, self._square_means,
                              self.block_value == COUNT_LEVELS - 1,
                              (COUNT_LEVELS - 1) * self.unit, xp)
            self._neighbour_cache = {}

    def _add_pairs(self, ids, following, first_line, stop_line):
        """Adds the pairs (block id l K + a of ``ids``, the next line's value b at the same
        place in ``following``) of lines first_line .. stop_line - 1 to their bins
        (l K + a) K + b, a histogram over those lines' bins only."""
        K = self.levels
        pair = ids * K
        pair += following
        pair -= first_line * K * K
        self.pairs[first_line * K * K:stop_line * K * K] += self.xp.bincount(
            pair.ravel(), minlength=(stop_line - first_line) * K * K)

    @property
    def _cumulative(self):
        """float64 running sum of the sorted lines, flattened, built from the histograms.

        Sorted line l at rank r is the number of values v >= 1 with
        starts[l, v] <= r: one step up at each such start. The steps of all
        lines, with each line's total taken off again at the next line's
        first rank, summed twice give the running sum (exact: integers).
        """
        if not hasattr(self, '_cumulative_cache'):
            xp = self.xp
            n_lines, n = self.shape
            K = self.levels
            total = n_lines * n
            if K > 1:
                steps = (xp.arange(n_lines, dtype=self.starts.dtype)[:, None] * n
                         + self.starts[:, 1:]).ravel()
                resets = xp.arange(1, n_lines, dtype=steps.dtype) * n
                positions = xp.concatenate((steps, resets))
                weights = xp.concatenate((xp.ones(steps.shape[0]),
                                          xp.full(resets.shape[0], -(K - 1.0))))
                cumulative = xp.bincount(positions, weights=weights, minlength=total + 1)[:total]
                del positions, weights
                xp.cumsum(cumulative, out=cumulative)  # the sorted lines
                xp.cumsum(cumulative, out=cumulative)  # their running sum
            else:
                cumulative = xp.zeros(total)
            self._cumulative_cache = cumulative
        return self._cumulative_cache

    def single_reference_block_means(self, sigma):
        """Block means of Eq. 3's reference sum_l w_l H_l^-1, from the histograms.

        At rank r the reference is sum_l w_l (number of values v >= 1 with
        starts[l, v] <= r): a running sum of the weights put at the starts.
        """
        xp = self.xp
        n_lines, n = self.shape
        K = self.levels
        reference = xp.zeros(n + 1, dtype=xp.float64)
        if K > 1:
            weights = np.repeat(single_reference_weights(n_lines, sigma), K - 1)
            steps = xp.bincount(self.starts[:, 1:].ravel(), weights=xp.asarray(weights),
                                minlength=n + 1)
            reference[1:] = xp.cumsum(xp.cumsum(steps[:n]))  # running sum of the reference
        return ((reference[self.block_stop] - reference[self.block_start])
                / (self.block_stop - self.block_start))

    def scaled_single_reference_block_means(self, sigma):
        """Block means of Eq. 3's reference for scaled counts, from the blocks' ramps.

        At rank r line l's inverse CDF is alpha_b + beta_b r for the block b
        of l holding r, so the reference sum_l w_l H_l^-1(r) is A(r) + B(r) r,
        where A and B are running sums of each line's weighted changes of
        alpha and beta at its blocks' first ranks; its running sum gives the
        block means (float64).
        """
        xp = self.xp
        n_lines, n = self.shape
        alpha, beta = self._ramp
        weights = xp.asarray(single_reference_weights(n_lines, sigma))[self.block_line]
        first = self._first_in_line
        steps = []
        for coefficient in (alpha, beta):
            change = coefficient.copy()
            change[1:] -= xp.where(first[1:], 0.0, coefficient[:-1])
            change *= weights
            steps.append(xp.cumsum(xp.bincount(self.block_start, weights=change,
                                               minlength=n + 1)[:n]))
        reference = steps[0] + steps[1] * xp.arange(n, dtype=xp.float64)
        running = xp.zeros(n + 1, dtype=xp.float64)
        running[1:] = xp.cumsum(reference)
        return ((running[self.block_stop] - running[self.block_start])
                / (self.block_stop - self.block_start))

    @property
    def _first_in_line(self):
        first = self.xp.ones(self.n_blocks, dtype=bool)
        first[1:] = self.block_line[1:] != self.block_line[:-1]
        return first

    def _neighbour_sums(self, k):
        if self.values is None:
            return super()._neighbour_sums(k)
        if k not in self._neighbour_cache:  # the same for every sigma candidate
            xp = self.xp
            n = self.shape[1]
            base = xp.clip(self.block_line + k, 0, self.shape[0] - 1) * n
            high = self._ramp_running_sum(base + self.block_stop - 1)
            low = self._ramp_running_sum(base + xp.maximum(self.block_start - 1, 0))
            self._neighbour_cache[k] = high - xp.where(self.block_start > 0, low, 0.0)
        return self._neighbour_cache[k]

    def _ramp_running_sum(self, positions):
        """Running sum (inclusive) of a line's ramps at flat positions line * n + rank."""
        xp = self.xp
        if not hasattr(self, '_block_origin'):
            n = self.shape[1]
            length = self.block_stop - self.block_start
            self._block_origin = self.block_line * n + self.block_start
            alpha, beta = self._ramp
            totals = length * (alpha + beta * (self.block_start + 0.5 * (length - 1)))
            before = xp.cumsum(totals) - totals
            line_first = xp.flatnonzero(self._first_in_line)
            self._block_before = before - before[line_first][self.block_line]
        alpha, beta = self._ramp
        block = xp.searchsorted(self._block_origin, positions, side='right') - 1
        start = self.block_start[block]
        x = (positions - self._block_origin[block] + 1).astype(xp.float64)
        # sum of alpha + beta r over r = start .. start + x - 1
        return (self._block_before[block] + x * alpha[block]
                + beta[block] * (x * start + 0.5 * x * (x - 1)))

    def scaled_table(self, reference_means):
        """(L * K,) float32 table T of the scaled mapping (Eq. 4, the rule of
        :meth:`SortedLines._map_blocks`): a sample v > 0 of block b becomes
        v * T[b] (T = reference mean / own mean), a zero T[b] (the reference
        mean: a block of zeros is set to it)."""
        xp = self.xp
        own = self._own
        mapped = xp.where(own > 0, reference_means / xp.where(own > 0, own, 1), reference_means)
        table = xp.zeros(self.shape[0] * self.levels, dtype=xp.float32)
        table[self.present] = mapped.astype(xp.float32)
        return table

    def expected_total_variation(self, reference_means):
        """Eq. 5 for scaled counts (:func:`expected_total_variation`), from the pair histogram."""
        xp = self.xp
        if not hasattr(self, '_pair_blocks'):
            self._pair_blocks = self._pair_list()
            if self.values is not None:
                # the scaled path reads its pairs from the list only: the histogram ((lines
                # - 1) x K^2 int64, 63 MB at 4096 lines and 44 levels) is let go
                self.pairs = None
        counts, first, second = self._pair_blocks
        return expected_total_variation(counts, first, second, reference_means, self._own,
                                        self._square_means, xp)

    def _pair_list(self):
        """(count, first block, second block) of each nonzero bin of the pair histogram, in
        the bins' order, as int32 (a bin counts at most one line's samples, a block id is
        under lines x K), made PAIR_LIST_LINES lines' bins at a time: its int64 index
        temporaries are a chunk's, not the histogram's (at 4096 x 4096 and 44 levels,
        about 90 MB of them at once for the whole list)."""
        xp = self.xp
        K = self.levels
        where = xp.full(self.shape[0] * K, -1, dtype=xp.int64)
        where[self.present] = xp.arange(self.n_blocks)
        flat = self.pairs.reshape(-1)
        small = self.n_blocks < 2 ** 31 and self.shape[1] < 2 ** 31
        kind = xp.int32 if small else xp.int64
        per_line = K * K
        parts = ([], [], [])
        for start in range(0, self.shape[0] - 1, PAIR_LIST_LINES):
            stop = min(start + PAIR_LIST_LINES, self.shape[0] - 1)
            ids = xp.flatnonzero(flat[start * per_line:stop * per_line]) + start * per_line
            line_value = ids // K            # l K + a
            parts[0].append(flat[ids].astype(kind))
            parts[1].append(where[line_value].astype(kind))
            parts[2].append(where[line_value - line_value % K + K + ids % K].astype(kind))
            del ids, line_value             # (l + 1) K + b: the second block
        return tuple(xp.concatenate(part) if part else xp.zeros(0, kind) for part in parts)

    def block_means(self, mode, sigma):
        if mode == 'single':
            if self.values is not None:
                return self.scaled_single_reference_block_means(sigma)
            return self.single_reference_block_means(sigma)
        if mode == 'local':
            return self.local_reference_block_means(sigma)
        raise ValueError(f"unknown reference mode {mode!r} (use single or local)")

    def table(self, reference_means):
        """(L * K,) float32: what value v of line l becomes (Eq. 4, ties to the block mean).

        The same float operations per sample as :meth:`SortedLines.equalize`
        (a block's own mean is its value v: scale = mean / v, v * scale;
        a block of zeros is set to the mean).
        """
        xp = self.xp
        value = self.block_value.astype(xp.float64)
        scale = xp.where(value > 0, reference_means / xp.where(value > 0, value, 1), 0)
        offset = xp.where(value > 0, 0, reference_means)
        mapped = scale.astype(xp.float32) * value.astype(xp.float32)
        mapped += offset.astype(xp.float32)
        table = xp.zeros(self.shape[0] * self.levels, dtype=xp.float32)
        table[self.present] = mapped
        return table

    def _block_ids(self):
        """(first row, stop row, block ids line * K + value of those rows), chunk by chunk."""
        xp = self.xp
        rows, cols = self.keys.shape
        step = max(1, COUNT_CHUNK // cols) if xp is np else rows
        for a in range(0, rows, step):
            b = min(rows, a + step)
            offsets = self._offsets[a:b] if self.axis == 0 else self._offsets
            yield a, b, xp.add(self.keys[a:b], offsets, dtype=self._index)

    def map(self, table):
        """The equalized frame (frame layout): a gather from the table."""
        out = self.xp.empty(self.keys.shape, dtype=self.xp.float32)
        for a, b, ids in self._block_ids():
            out[a:b] = self.xp.take(table, ids)
        return out

    def total_variation(self, table):
        """TV across lines (Eq. 5) of the frame :meth:`map` would give.

        With the pair histogram Q[l, a, b]: sum Q[l, a, b] |T[l + 1, b] - T[l, a]|
        (the same float32 differences as on the samples, summed in another order).
        """
        xp = self.xp
        if self.pairs is None:
            return total_variation_along(self.map(table), self.axis, xp)
        T = table.reshape(self.shape[0], self.levels)
        difference = T[1:, None, :] - T[:-1, :, None]
        xp.abs(difference, out=difference)
        return float((difference.astype(xp.float64) * self.pairs).sum())


def equalize_counts(keys, levels, axis, mode='single', sigma='auto',
                    sigma_grid=DEFAULT_SIGMA_GRID, xp=np):
    """:func:`equalize_lines` of a counting frame's rows (``axis`` 0) or columns (1), fast path.

    ``keys`` are the frame's own integer values (0 .. ``levels`` - 1), which
    are also its ties. Returns (equalized frame in the frame's layout, sigma).
    """
    rows, cols = keys.shape
    n_lines = rows if axis == 0 else cols
    pairs = (sigma == 'auto'
             and (n_lines - 1) * levels * levels <= PAIR_BINS_PER_PIXEL * rows * cols)
    counted = CountedLines(keys, levels, axis, xp, pairs=pairs)
    if sigma != 'auto':
        return counted.map(counted.table(counted.block_means(mode, float(sigma)))), float(sigma)
    best = None
    for candidate in sigma_grid:
        table = counted.table(counted.block_means(mode, float(candidate)))
        tv = counted.total_variation(table)
        if best is None or tv < best[0]:
            best = (tv, table, float(candidate))
    return counted.map(best[1]), best[2]


def scaled_counts_table(frame, keys, levels, unit, axis, mode='single', sigma='auto',
                        sigma_grid=DEFAULT_SIGMA_GRID, xp=np, integral=False):
    """The scaled fast path for one direction: (mapping table, sigma) (:meth:`CountedLines.scaled_table`).

    ``frame``: scaled counts; ``keys``: its values in whole counts of ``unit``
    (:func:`count_keys`); ``axis`` 0 takes the rows as the lines, 1 the
    columns. The sigma search (Eq. 5) uses :meth:`CountedLines.expected_total_variation`.
    ``integral``: the frame holds its keys (whole counts, unit 1).
    """
    n_lines = keys.shape[0] if axis == 0 else keys.shape[1]
    counted = CountedLines(keys, levels, axis, xp, pairs=sigma == 'auto' and n_lines > 1,
                           values=frame, unit=unit, integral=integral)
    if sigma != 'auto':
        return counted.scaled_table(counted.block_means(mode, float(sigma))), float(sigma)
    best = None
    for candidate in sigma_grid:
        means = counted.block_means(mode, float(candidate))
        tv = counted.expected_total_variation(means)
        if best is None or tv < best[0]:
            best = (tv, means, float(candidate))
    return counted.scaled_table(best[1]), best[2]


def equalize_scaled_counts(frame, keys, levels, unit, mode='single', sigma='auto',
                           sigma_grid=DEFAULT_SIGMA_GRID, xp=np, executor=None):
    """Eq. 6 of scaled counts, fast path: (equalized frame, (sigma_columns, sigma_rows)).

    The two directions' tables come from :func:`scaled_counts_table` (in the
    pool, when there is one); the frame is then mapped once for both, a chunk
    of rows at a time: (T_columns + T_rows) / 2 of each sample's blocks, times
    the sample (1 for a zero). ``sigma``: 'auto', a number or a (columns, rows) pair.
    """
    def run(axis):
        chosen = sigma[0 if axis == 1 else 1] if isinstance(sigma, (tuple, list)) else sigma
        return scaled_counts_table(frame, keys, levels, unit, axis, mode, chosen, sigma_grid, xp)

    if executor is not None:
        (by_columns, sigma_c), (by_rows, sigma_r) = executor.map(run, (1, 0))
    else:
        (by_columns, sigma_c), (by_rows, sigma_r) = map(run, (1, 0))
    by_columns *= np.float32(0.5)
    by_rows *= np.float32(0.5)
    rows, cols = keys.shape
    index = np.intp if xp is np else xp.int64
    column_offsets = xp.arange(cols, dtype=index) * levels
    row_offsets = xp.arange(rows, dtype=index)[:, None] * levels
    out = xp.empty(keys.shape, dtype=xp.float32)
    step = max(1, COUNT_CHUNK // cols) if xp is np else rows

    def part(a):
        b = min(rows, a + step)
        chunk = keys[a:b]
        mapped = xp.take(by_columns, xp.add(chunk, column_offsets, dtype=index))
        mapped += xp.take(by_rows, xp.add(chunk, row_offsets[a:b], dtype=index))
        mapped *= xp.where(chunk > 0, frame[a:b], np.float32(1))
        out[a:b] = mapped

    starts = range(0, rows, step)
    if executor is not None:
        list(executor.map(part, starts))
    else:
        for a in starts:
            part(a)
    return out, (sigma_c, sigma_r)
