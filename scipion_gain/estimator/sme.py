"""Smooth Midway Equalization (SME) of the columns or rows of one frame.

Sorzano et al. 2018, Sec. 2. The frame is handled as a stack of *lines* (the
columns for column equalization, the rows for row equalization), shape
(L lines, n samples). For each line l:

* Eq. 1: the empirical inverse CDF H_l^-1 is the sorted line;
* Eq. 2: the smoothed inverse CDF is the Gaussian-weighted average of the
  neighbouring lines' inverse CDFs, g_k = exp(-k^2 / 2 sigma^2), k = -K..K,
  K = ceil(3 sigma); at the borders only existing lines count (the weights are
  renormalised: no wrap-around, no zero padding);
* Eq. 3 (``reference='single'``): the smoothed inverse CDFs averaged over all
  lines give one reference for the whole frame; ``reference='local'`` keeps
  one smoothed reference per line;
* Eq. 4: each sample v of line l becomes H~^-1(H_l(v)): its rank in its own
  line read off the reference;
* Eq. 5: sigma is the one, on a grid, that minimises the total variation
  across lines, TV = sum |X[l+1, j] - X[l, j]|.

Ties. Counting movies hold mostly 0, 1, 2, 3, so most samples of a line are
tied. Xmipp maps a tied value to the rank of the last element of its block,
which moves whole blocks to one end of the reference. Here a tied value maps to
the MEAN of the reference over the ranks its block occupies: the mapping then
preserves each line's total exactly (a line whose counts run 3 % high is
brought down by 3 %), and without ties it is the plain rank mapping of Eq. 4.

Ranks are taken on 16-bit keys: exact for integer frames in 0..65535 (raw
counting and integrating data), and for other frames (gain-corrected or
re-weighted ones) a 65536-level quantisation between the frame's minimum and
maximum, whose ties are then handled as above. We wrote this ourselves rather
than call a library because it lets a stable radix sort rank a 4096 x 4096
frame about ten times faster than a float sort on the CPU, and because no
library offers the tie-aware mapping.

Counting fast path. When the frame is its own recording (no pre-correction,
first iteration) and holds small non-negative integers (counting frames), each
line's tie blocks are exactly the values present in it. A per-line histogram
(``bincount`` of ``line * K + value``) then gives the blocks' sizes and first
ranks without sorting; the single reference (Eq. 3) and the local reference's
block means (Eq. 2) follow from the histograms, and the mapping (Eq. 4) is a
gather from an (L, K) table. With the sigma search, the total variation of a
candidate (Eq. 5) comes from a histogram of neighbouring pairs of values, so
only the chosen sigma is mapped. :class:`CountedLines` does this, keeping the
frame's layout (no transposes); it gives the general path's map (the local
reference bit for bit, the single one to float rounding: its reference is
summed in float64 instead of float32) and the same sigmas.

All functions take the array module ``xp`` (numpy or cupy): one code path for
the CPU and the GPU.
"""
import math

import numpy as np

from .kernels import order_lines

#: default sigma grid of the per-frame search (Eq. 5)
DEFAULT_SIGMA_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
KEY_LEVELS = 65536
#: counting fast path: integer frames with values 0 .. COUNT_LEVELS - 1
COUNT_LEVELS = 256
#: the sigma search takes its total variations from pair histograms of at most
#: this many bins per frame pixel (else it maps every candidate)
PAIR_BINS_PER_PIXEL = 0.25
#: the counting fast path works through a CPU frame this many samples at a time
#: (its block ids are never held for the whole frame); a GPU takes the frame at once
COUNT_CHUNK = 1 << 21


def gaussian_kernel(sigma):
    """Offsets k = -K..K and weights g_k = exp(-k^2 / 2 sigma^2), K = ceil(3 sigma) (Eq. 2)."""
    if sigma <= 0:
        return np.array([0]), np.array([1.0])
    radius = int(math.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    return offsets, np.exp(-offsets.astype(np.float64) ** 2 / (2 * sigma ** 2))


def smoothing_matrix_weights(n_lines, sigma):
    """Per-line normalisers Z_l = sum of g_k over the neighbours that exist (Eq. 2 borders)."""
    offsets, weights = gaussian_kernel(sigma)
    norm = np.zeros(n_lines)
    for k, g in zip(offsets, weights):
        lo, hi = max(0, -k), min(n_lines, n_lines - k)
        norm[lo:hi] += g
    return offsets, weights, norm


def smooth_lines(sorted_lines, sigma, xp=np):
    """Eq. 2: border-renormalised Gaussian average of neighbouring lines' inverse CDFs."""
    n_lines = sorted_lines.shape[0]
    if sigma <= 0:
        return sorted_lines
    offsets, weights, norm = smoothing_matrix_weights(n_lines, sigma)
    out = xp.zeros(sorted_lines.shape, dtype=xp.float32)
    for k, g in zip(offsets, weights):
        lo, hi = max(0, -k), min(n_lines, n_lines - k)
        if hi > lo:
            out[lo:hi] += np.float32(g) * sorted_lines[lo + k:hi + k]
    out /= xp.asarray((norm[:, None]).astype(np.float32))
    return out


def single_reference_weights(n_lines, sigma):
    """Weights w_l such that Eq. 3's reference is sum_l w_l H_l^-1.

    Averaging the smoothed inverse CDFs (Eq. 2) over all lines is linear in
    the sorted lines: w_l = (1/L) sum_m g_(l-m) / Z_m. Computing w once avoids
    building the smoothed lines at all.
    """
    offsets, weights, norm = smoothing_matrix_weights(n_lines, sigma)
    w = np.zeros(n_lines)
    for k, g in zip(offsets, weights):
        # smoothed line m takes g_k * line (m + k) / Z_m
        lo, hi = max(0, -k), min(n_lines, n_lines - k)
        if hi > lo:  # an offset longer than the frame (a 2-line frame, sigma 1) adds nothing
            w[lo + k:hi + k] += g / norm[lo:hi]
    return w / n_lines


def rank_keys(frame, xp=np):
    """16-bit keys whose order is the frame's order (exact for integer frames)."""
    return _rank_keys(frame, xp)[0]


def _rank_keys(frame, xp=np):
    """(keys, K): K = max + 1 when the keys are the frame's own integer values, else None."""
    lo = float(frame.min())
    hi = float(frame.max())
    if lo >= 0 and hi < KEY_LEVELS:
        keys = frame.astype(xp.uint16)  # truncates: equal to the frame iff it holds integers
        if bool(xp.all(keys == frame)):
            return keys, int(hi) + 1
        del keys
    scale = (KEY_LEVELS - 1) / (hi - lo) if hi > lo else 0.0
    return ((frame - np.float32(lo)) * np.float32(scale)).astype(xp.uint16), None


class _TieBlocks:
    """Block sums shared by :class:`SortedLines` and :class:`CountedLines`.

    Needs ``xp``, ``shape`` (L, n), ``n_blocks``, ``block_line``,
    ``block_start``, ``block_stop`` and ``_cumulative`` (the float64 running
    sum of the sorted lines, flattened).
    """

    def _line_block_sums(self, lines_of_blocks, cumulative):
        """For each block, the sum of sorted line ``lines_of_blocks[b]`` over the block's ranks."""
        xp = self.xp
        base = lines_of_blocks * self.shape[1]
        before = base + self.block_start - 1
        return (cumulative[base + self.block_stop - 1]
                - xp.where(before >= 0, cumulative[xp.maximum(before, 0)], 0.0))

    def local_reference_block_means(self, sigma):
        """Block means of the local reference (Eq. 2) without building it.

        Eq. 2 is linear in the sorted lines: the smoothed line l is
        sum_k g_k H_(l+k)^-1 / Z_l over the neighbours that exist. Its mean
        over a block's ranks is therefore sum_k g_k (sum of sorted line l + k
        over the same ranks) / Z_l / length, two reads of the running sum per
        block and neighbour: for counting frames (few blocks per line) this is
        far less than smoothing the (L, n) lines for every sigma.
        """
        xp = self.xp
        n_lines = self.shape[0]
        offsets, weights, norm = smoothing_matrix_weights(n_lines, sigma)
        line = self.block_line
        total = xp.zeros(self.n_blocks, dtype=xp.float64)
        for k, g in zip(offsets, weights):
            neighbour = line + int(k)
            inside = (neighbour >= 0) & (neighbour < n_lines)
            sums = self._line_block_sums(xp.clip(neighbour, 0, n_lines - 1), self._cumulative)
            total += xp.where(inside, float(g) * sums, 0.0)
        total /= xp.asarray(norm)[line]
        return total / (self.block_stop - self.block_start)


class SortedLines(_TieBlocks):
    """The lines of a frame sorted (their inverse CDFs, Eq. 1) with their tie blocks.

    ``sorted`` holds the sorted lines (L, n). A *block* is a run of equal keys
    in one sorted line; ``block_of`` gives, for every sample in its original
    place, the index of its block; ``block_line``, ``block_start`` and
    ``block_stop`` give each block's line and rank range [start, stop).
    """

    def __init__(self, lines, keys, tie_keys=None, xp=np):
        self.xp = xp
        n_lines, n = lines.shape
        self.shape = lines.shape
        self.lines = lines
        # flat indices of each line's stable order (kernels.order_lines: per-row radix
        # sort on the CPU, one composite-key radix sort on the GPU; same result)
        order = order_lines(keys, xp)
        self.sorted = lines.ravel().take(order)
        sorted_ties = (keys if tie_keys is None else tie_keys).ravel().take(order)
        starts = xp.ones(lines.shape, dtype=bool)
        starts[:, 1:] = sorted_ties[:, 1:] != sorted_ties[:, :-1]
        del sorted_ties
        block_sorted = xp.cumsum(starts.ravel(), dtype=xp.int32) - 1
        first = xp.flatnonzero(starts.ravel())
        del starts
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

    def equalize_to(self, mode, sigma, ties='mean'):
        """:meth:`equalize` against the reference of ``mode`` and ``sigma``.

        With the local reference and tie-aware mapping only the block means
        of the reference are needed, and they come from
        :meth:`local_reference_block_means` without building the (L, n)
        smoothed reference; the result is that of ``equalize(reference(...))``
        up to float rounding.
        """
        if mode == 'local' and ties == 'mean':
            return self._map_blocks(self.local_reference_block_means(sigma))
        return self.equalize(self.reference(mode, sigma), ties)

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
        if not hasattr(self, '_own_means_cache'):
            # the running sum is kept only if the local reference asked for it first
            cumulative = getattr(self, '_cumulative_cache', None)
            if cumulative is None:
                cumulative = self.xp.cumsum(self.sorted.ravel(), dtype=self.xp.float64)
            self._own_means_cache = (self._line_block_sums(self.block_line, cumulative)
                                     / (self.block_stop - self.block_start))
        return self._own_means_cache

    @property
    def _cumulative(self):
        """float64 running sum of the sorted lines, flattened (computed once, kept)."""
        if not hasattr(self, '_cumulative_cache'):
            self._cumulative_cache = self.xp.cumsum(self.sorted.ravel(), dtype=self.xp.float64)
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
        if mode == 'single':
            weights = single_reference_weights(self.shape[0], sigma)
            return xp.asarray(weights.astype(np.float32)) @ self.sorted
        if mode == 'local':
            return smooth_lines(self.sorted, sigma, xp)
        raise ValueError(f"unknown reference mode {mode!r} (use single or local)")


class CountedLines(_TieBlocks):
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
    """

    def __init__(self, keys, levels, axis, xp=np, pairs=False):
        self.xp = xp
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
        for a, b, ids in self._block_ids():
            if self.pairs is not None:
                # pairs (line l value a, line l + 1 value b, same place): bin (l K + a) K + b
                if axis == 0:
                    stop = min(b, rows - 1)  # rows a .. stop - 1 with their next rows
                    first, second = ids[:stop - a], keys[a + 1:stop + 1]
                else:
                    first, second = ids[:, :-1], keys[a:b, 1:]
                pair = first * K
                pair += second
                self.pairs += xp.bincount(pair.ravel(), minlength=self.pairs.shape[0])
                del pair
            else:
                counts += xp.bincount(ids.ravel(), minlength=counts.shape[0])
            del ids
        if self.pairs is not None:
            self.pairs = self.pairs.reshape(n_lines - 1, K, K)
            counts = xp.empty((n_lines, K), dtype=self.pairs.dtype)
            counts[:-1] = self.pairs.sum(axis=2)
            counts[-1] = self.pairs[-1].sum(axis=0)
        counts = counts.reshape(n_lines, K)
        self.counts = counts
        self.starts = xp.cumsum(counts, axis=1) - counts  # first rank of each value in its line
        present = xp.flatnonzero(counts.ravel())
        self.present = present
        self.n_blocks = int(present.shape[0])
        self.block_line = present // K
        self.block_value = present % K
        self.block_start = self.starts.ravel()[present]
        self.block_stop = self.block_start + counts.ravel()[present]

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

    def block_means(self, mode, sigma):
        if mode == 'single':
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


def total_variation_along(frame, axis, xp=np):
    """TV across the lines of a frame whose lines are its rows (``axis`` 0) or columns (1)."""
    difference = frame[1:] - frame[:-1] if axis == 0 else frame[:, 1:] - frame[:, :-1]
    xp.abs(difference, out=difference)
    return float(difference.sum(dtype=xp.float64))


def total_variation(lines, xp=np):
    """TV across lines (Eq. 5): sum over l, j of |X[l+1, j] - X[l, j]|."""
    difference = lines[1:] - lines[:-1]
    xp.abs(difference, out=difference)  # in place: one (L, n) temporary, not two
    return float(difference.sum(dtype=xp.float64))


def equalize_lines(lines, keys, mode='single', sigma='auto', sigma_grid=DEFAULT_SIGMA_GRID,
                   xp=np, tie_keys=None, ties='mean'):
    """SME of a stack of lines (Eqs. 1-5). Returns (equalized lines, sigma used).

    ``sigma='auto'`` searches ``sigma_grid`` for the least total variation
    across lines; a number uses that sigma.
    """
    ranked = SortedLines(lines, keys, tie_keys, xp)
    if sigma != 'auto':
        return ranked.equalize_to(mode, float(sigma), ties), float(sigma)
    best = None
    for candidate in sigma_grid:
        equalized = ranked.equalize_to(mode, float(candidate), ties)
        tv = total_variation(equalized, xp)
        if best is None or tv < best[0]:
            best = (tv, equalized, float(candidate))
        del equalized
    return best[1], best[2]


def sme_frame(frame, mode='single', sigma='auto', sigma_grid=DEFAULT_SIGMA_GRID, xp=np,
              executor=None, recorded=None, ties='mean'):
    """SME(I) = (SME_col(I) + SME_row(I)) / 2 (Eq. 6) of one 2-D frame I.

    ``recorded`` is the frame as the camera counted it (before any division
    by a gain estimate or multiplication by a reference): its equal values
    are the ties. Returns (equalized frame, (sigma_columns, sigma_rows)). With
    an ``executor`` (a thread pool, CPU only) the two directions run at once.
    """
    keys, levels = _rank_keys(frame, xp)
    own = recorded is None or recorded is frame  # the frame is its own recording: same ties
    if own and ties == 'mean' and levels is not None and levels <= COUNT_LEVELS:
        # counting fast path: histograms instead of sorts, no transposes
        def run(axis):
            return equalize_counts(keys, levels, axis, mode, sigma, sigma_grid, xp)

        axes = (1, 0)  # columns, rows
        # the local reference's running sums (128 MB each at 4096^2) would be held at once
        # in the pool, which gains nothing for them here; the single reference gains ~20 %
        if executor is not None and mode == 'single':
            (by_columns, sigma_c), (by_rows, sigma_r) = executor.map(run, axes)
        else:
            (by_columns, sigma_c), (by_rows, sigma_r) = map(run, axes)
        del keys
        by_columns += by_rows
        by_columns *= np.float32(0.5)
        return by_columns, (sigma_c, sigma_r)
    if own:
        tie_keys = None
        jobs = [(xp.ascontiguousarray(frame.T), xp.ascontiguousarray(keys.T), None),
                (frame, keys, None)]
    else:
        tie_keys = rank_keys(recorded, xp)
        jobs = [(xp.ascontiguousarray(frame.T), xp.ascontiguousarray(keys.T),
                 xp.ascontiguousarray(tie_keys.T)), (frame, keys, tie_keys)]

    def run(job):
        return equalize_lines(job[0], job[1], mode, sigma, sigma_grid, xp, tie_keys=job[2],
                              ties=ties)

    if executor is not None:
        (by_columns, sigma_c), (by_rows, sigma_r) = executor.map(run, jobs)
    else:
        (by_columns, sigma_c), (by_rows, sigma_r) = map(run, jobs)
    result = by_columns.T + by_rows
    result *= np.float32(0.5)
    return result, (sigma_c, sigma_r)
