"""Smooth Midway Equalization (SME) of the columns or rows of one frame.

The verb is :func:`sme_frame` (Eq. 6 of one frame, what the estimator calls
for every frame); :func:`equalize_lines` is one direction of it on a stack of
lines, :func:`rank_keys` the keys it ranks by, :func:`total_variation` Eq. 5.
Below them, private modules: ``_kernel`` (Eq. 2-3 weights, Eq. 5), ``_keys``
(rank keys), ``_scaled`` (the scaled-count model), ``_sorted`` and
``_counted`` (the general and the histogram implementations, sharing
``_blocks``) and ``_dispatch`` (which implementation a frame takes).

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
from ._dispatch import scaled_count_tables, sme_frame
from ._kernel import DEFAULT_SIGMA_GRID, total_variation
from ._keys import rank_keys
from ._sorted import equalize_lines

__all__ = ['sme_frame', 'scaled_count_tables', 'equalize_lines', 'rank_keys', 'total_variation', 'DEFAULT_SIGMA_GRID']
