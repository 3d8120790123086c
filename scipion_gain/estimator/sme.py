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
counting and integrating data), and for other frames a 65536-level
quantisation between the frame's minimum and maximum, whose ties are then
handled as above. Robust ranks: when values lie beyond the frame's robust
range (:func:`robust_range`: its own 0.1 / 50 / 99.9 % quantiles, widened
four times; a hot pixel), the keys span that range and the outliers are
clipped to its ends, and the references (Eqs. 1-3) are built from values
clipped to it: a hot pixel at 50000 in a frame averaging 50 moves its own
block (it maps to about the top of the reference, so the map marks it hot),
not every line's reference. We wrote this ourselves rather than call a
library because it lets a stable radix sort rank a 4096 x 4096 frame about
ten times faster than a float sort on the CPU, and because no library offers
the tie-aware mapping.

Scaled counts (residual mode, Eq. 7 iterations after the first, recovered
lattices): the frame is counts x a per-pixel factor (a gain reference, 1 /
G) and ``recorded`` holds the counts. A frame gain-corrected this way is a
comb (each count a tooth, spread by the factors), and ranking its values
without ties re-creates the correction (the comb problem: the 4 % residual
of a perfect reference). Its ties are its values in whole counts: each
sample v goes to the block max(1, floor(v / u + 1/2)), u the count unit
(sum of the frame / sum of the counts), zeros alone in block 0 (:func:`count_keys`).
Where the factors spread little a block is exactly one count (the
counting path's blocks); where counts overlap (wide spread, high counts)
a block holds the overlapping values of neighbouring counts, as ranking the
values would. Then, at block resolution:

* Eq. 1: over a block's ranks the inverse CDF is a linear ramp with the
  block's mean and standard deviation (:func:`ramp`; a uniform profile);
* Eqs. 2-3: the references are built from these ramps;
* Eq. 4: as above (each sample keeps its relative value in its block);
* Eq. 5: the expected total variation of the mapped samples given their
  blocks (:func:`expected_total_variation`), which follows the samples'
  total variation closely.

For raw counts (factor 1) this is exactly the counting path. Measured on
simulated 512 x 512 x 20 counting movies (1.5 and 3 e/px, reference spread
2 to 20 %), the residual of the exact reference is as flat as, or flatter
than, with ties as runs of equal recorded counts in the order of the
values (std 0.0134 / 0.0099 / 0.0138 against 0.0133 / 0.0103 / 0.0148,
single reference) and a 3 % column error is found as well or better
(correlation 0.76 / 0.84 / 0.75 against 0.76 / 0.83 / 0.72); ranking the
blocks by count instead of by value, or flat (block-mean) inverse CDFs,
were measurably worse (std up to 0.0169). The fast path computes all of it
from histograms (:class:`CountedLines` with ``values``); the general path
(:class:`SortedLines` with ``scaled``) sorts, and gives the same map to
float rounding (tests: within 1e-6 of the map's maximum, same sigmas).

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
#: scaled counts: their pair histogram is kept up to this many bins per frame pixel (or
#: SCALED_PAIR_BINS in all, for small frames); beyond, the frame takes the general path
SCALED_PAIR_BINS_PER_PIXEL = 1.0
SCALED_PAIR_BINS = 1 << 22
#: the counting fast path works through a CPU frame this many samples at a time
#: (its block ids are never held for the whole frame); a GPU takes the frame at once
COUNT_CHUNK = 1 << 21
#: robust range of a frame (hot pixels): quantiles of at most ROBUST_SAMPLE values,
#: widened by ROBUST_REACH times their distance from the median
ROBUST_SAMPLE = 1 << 16
ROBUST_QUANTILES = (0.001, 0.5, 0.999)
ROBUST_REACH = 4.0


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


def _rank_keys(frame, xp=np):
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


def count_unit(frame, recorded, xp=np):
    """The unit of a scaled counting frame: sum(frame) / sum(recorded) (1 when nothing was counted).

    For frame = counts x scale this is the count-weighted mean scale: one
    count is worth ``unit`` in the frame.
    """
    total = float(recorded.sum(dtype=xp.float64))
    return float(frame.sum(dtype=xp.float64)) / total if total > 0 else 1.0


def count_keys(frame, unit, xp=np):
    """(keys, K) of a scaled counting frame: its values in whole counts of ``unit``.

    Key 0 holds exactly the zeros (nothing counted); any other value v gets
    max(1, floor(v / unit + 1/2)), clipped to COUNT_LEVELS - 1 (a reference's
    outlier pixel cannot push a frame off the fast path). uint8 keys.
    """
    keys = frame * np.float32(1.0 / unit)
    keys += np.float32(0.5)
    xp.clip(keys, np.float32(0), np.float32(COUNT_LEVELS - 1), out=keys)
    keys = keys.astype(xp.uint8)
    keys = xp.maximum(keys, (frame > 0).view(xp.uint8))
    return keys, int(keys.max()) + 1


def ramp(start, length, mean, square_mean, top, nominal, xp=np):
    """The block-resolution inverse CDF of scaled counts: (alpha, beta) per block.

    Over the ranks r = start .. start + length - 1 of its line a block's
    sorted values are modelled as a linear ramp with the block's mean and
    standard deviation (a uniform profile): alpha + beta r, with
    beta = sqrt(12) std / length. Blocks at the top key (``top``, bool: their
    values were clipped there, outliers) enter flat at ``nominal``. float64.
    """
    variance = xp.maximum(square_mean - mean * mean, 0.0)
    beta = xp.where(top, 0.0, math.sqrt(12.0) * xp.sqrt(variance) / length)
    mean = xp.where(top, nominal, mean)
    alpha = mean + beta * (0.5 - 0.5 * length - start)
    return alpha, beta


def expected_total_variation(pairs, first, second, means, own_means, square_means, xp=np):
    """Eq. 5 for scaled counts: the total variation across lines that the mapped
    samples are expected to have, given their blocks.

    ``pairs`` counts the neighbouring samples (line l, line l + 1, same place)
    whose blocks are ``first`` and ``second``. A sample of block b maps to
    its block's mapped mean m_b (``means``) with the block's spread scaled
    like its values (std_b m_b / own mean_b); for two independent samples the
    expected |X' - X|, with D = m' - m and s^2 the sum of the two variances,
    is s sqrt(2 / pi) exp(-D^2 / 2 s^2) + D erf(D / s sqrt 2). Summed in
    float64. This follows the total variation of the mapped samples closely
    (the within-block spread of a gain-corrected frame is part of it), at the
    cost of the block pairs instead of the samples.
    """
    erf = _erf(xp)
    variance = xp.maximum(square_means - own_means * own_means, 0.0)
    ratio = xp.where(own_means > 0, means / xp.where(own_means > 0, own_means, 1.0), 0.0)
    variance *= ratio * ratio
    difference = means[second] - means[first]
    spread = xp.sqrt(variance[first] + variance[second])
    safe = xp.where(spread > 0, spread, 1.0)
    expected = xp.where(
        spread > 0,
        spread * math.sqrt(2 / math.pi) * xp.exp(-0.5 * (difference / safe) ** 2)
        + difference * erf(difference / (safe * math.sqrt(2.0))),
        xp.abs(difference))
    return float((pairs * expected).sum())


def _erf(xp):
    if xp is np:
        from scipy.special import erf
    else:
        from cupyx.scipy.special import erf
    return erf


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
            total += xp.where(inside, float(g) * self._neighbour_sums(int(k)), 0.0)
        total /= xp.asarray(norm)[line]
        return total / (self.block_stop - self.block_start)

    def _neighbour_sums(self, k):
        """For each block, the sum of reference line (its line + k) over the block's ranks
        (clipped to the frame's lines; the caller drops those outside)."""
        neighbour = self.xp.clip(self.block_line + k, 0, self.shape[0] - 1)
        return self._line_block_sums(neighbour, self._cumulative)


class SortedLines(_TieBlocks):
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
    ``bounds`` (:func:`_rank_keys`): the references are built from the
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

    Scaled counts (``values``: the frame, frame layout; ``keys`` its values
    in whole counts of ``unit``, :func:`count_keys`): the blocks are the
    keys, as above, and per block the sum and the sum of squares of the
    values (weighted histograms) give its own mean and its ramp
    (:func:`ramp`), from which both references follow exactly (the single
    one as a piecewise-linear running sum, the local one by evaluating the
    neighbour lines' ramps at each block's ends). :meth:`scaled_tables` and
    :meth:`map_scaled` then map each sample, keeping its relative value.
    This is the general path's ``scaled`` mode (:class:`SortedLines`)
    without any sort.
    """

    def __init__(self, keys, levels, axis, xp=np, pairs=False, values=None, unit=1.0):
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
        if values is not None:
            sums = xp.zeros(n_lines * K, dtype=xp.float64)
            squares = xp.zeros(n_lines * K, dtype=xp.float64)
        for a, b, ids in self._block_ids():
            if values is not None:
                chunk = values[a:b].astype(xp.float64).ravel()
                sums += xp.bincount(ids.ravel(), weights=chunk, minlength=sums.shape[0])
                chunk *= chunk
                squares += xp.bincount(ids.ravel(), weights=chunk, minlength=sums.shape[0])
                del chunk
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
        if values is not None:
            length = self.block_stop - self.block_start
            self._own = sums[present] / length
            self._square_means = squares[present] / length
            self._ramp = ramp(self.block_start, length, self._own, self._square_means,
                              self.block_value == COUNT_LEVELS - 1,
                              (COUNT_LEVELS - 1) * self.unit, xp)
            self._neighbour_cache = {}

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
            K = self.levels
            flat = self.pairs.ravel()
            ids = xp.flatnonzero(flat)
            where = xp.full(self.shape[0] * K, -1, dtype=xp.int64)
            where[self.present] = xp.arange(self.n_blocks)
            line_value = ids // K            # l K + a
            first = where[line_value]
            second = where[line_value - line_value % K + K + ids % K]  # (l + 1) K + b
            self._pair_blocks = (flat[ids], first, second)
        counts, first, second = self._pair_blocks
        return expected_total_variation(counts, first, second, reference_means, self._own,
                                        self._square_means, xp)

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
                        sigma_grid=DEFAULT_SIGMA_GRID, xp=np):
    """The scaled fast path for one direction: (mapping table, sigma) (:meth:`CountedLines.scaled_table`).

    ``frame``: scaled counts; ``keys``: its values in whole counts of ``unit``
    (:func:`count_keys`); ``axis`` 0 takes the rows as the lines, 1 the
    columns. The sigma search (Eq. 5) uses :meth:`CountedLines.expected_total_variation`.
    """
    n_lines = keys.shape[0] if axis == 0 else keys.shape[1]
    counted = CountedLines(keys, levels, axis, xp, pairs=sigma == 'auto' and n_lines > 1,
                           values=frame, unit=unit)
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
    the sample (1 for a zero).
    """
    def run(axis):
        return scaled_counts_table(frame, keys, levels, unit, axis, mode, sigma, sigma_grid, xp)

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
                   xp=np, tie_keys=None, ties='mean', scaled=False, unit=1.0, bounds=None):
    """SME of a stack of lines (Eqs. 1-5). Returns (equalized lines, sigma used).

    ``sigma='auto'`` searches ``sigma_grid`` for the least total variation
    across lines; a number uses that sigma. ``scaled`` (scaled counts, see
    :func:`sme_frame`; ``tie_keys`` are then the values in whole counts of
    ``unit``): references and the total variation at block resolution.
    ``bounds``: the frame's robust range (:func:`_rank_keys`).
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


def sme_frame(frame, mode='single', sigma='auto', sigma_grid=DEFAULT_SIGMA_GRID, xp=np,
              executor=None, recorded=None, ties='mean', fast=True):
    """SME(I) = (SME_col(I) + SME_row(I)) / 2 (Eq. 6) of one 2-D frame I.

    ``recorded`` is the frame as the camera counted it (before any division
    by a gain estimate or multiplication by a reference): its equal values
    are the ties. When it holds counts (integers below COUNT_LEVELS) and the
    frame is not itself, the frame is *scaled counts* (residual mode, Eq. 7
    iterations, recovered lattices): its ties are its values in whole counts
    (see the module docstring). Returns (equalized frame, (sigma_columns,
    sigma_rows)). With an ``executor`` (a thread pool, CPU only) the two
    directions run at once. ``fast=False`` takes the general (sorting) path
    where a fast one exists (to compare them).
    """
    own = recorded is None or recorded is frame  # the frame is its own recording: same ties
    scaled = False
    if own:
        keys, levels, bounds = _rank_keys(frame, xp)
        tie_keys = None
        if fast and ties == 'mean' and levels is not None and levels <= COUNT_LEVELS:
            # counting fast path: histograms instead of sorts, no transposes
            return _fast_directions(executor, mode, lambda axis: equalize_counts(
                keys, levels, axis, mode, sigma, sigma_grid, xp))
    else:
        _, recorded_levels, _ = _rank_keys(recorded, xp)
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
            keys, _, bounds = _rank_keys(frame, xp)
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
