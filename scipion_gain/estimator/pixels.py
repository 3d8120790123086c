"""The pixel term of the robust estimate: each pixel's own gain, from its counts against the
specimen's local level, shrunk by what the data say the detector's pixel texture is.

Why. The robust map (:mod:`.specimen`) is SME on a specimen-flattened, thinned sum
(Sorzano et al. 2018, Eqs. 1-7). SME equalizes *lines*: a pixel's own gain enters its
correction only through the nonlinearity of the equalization tables at low counts, so
the map's pixel-scale detail is attenuated (measured: high-passed R^2 0.09 on a
detector with 10 % pixel texture, where the inverse mean of the same frames gives 0.14).
Real K2, K3 and Falcon gains hold 5 to 10 % pixel-to-pixel variation.

The physics. A pixel p of a movie recorded N(p) ~ Poisson(lambda(p) / g(p)) counts, where
lambda(p) is what a pixel of correction 1 would have recorded there (the specimen's level
times the dose) and g(p) the pixel's correction. Given lambda, the maximum-likelihood
correction is lambda / N; over movies, sum_m lambda_m / sum_m N_m. lambda is not known,
but the specimen varies slowly beside the pixel grid: the prior c, the robust map's lines
(its row and column means, sectors included: :func:`line_prior`), applied to the corrected
sum S gives v = S c, whose *local level*
L(p) is lambda(p) in the sum's units (:func:`local_level`). The pixel's residual is

    u = c N / lambda,        E[u] = 1 + t,   var(u | t) = c / lambda (1 + 1 / n)  (Poisson)

with t the texture the prior c left (in counts: N the raw counts, lambda = L / k, k the
reference the frames were multiplied by, 1 without one; n the pixels of the ring the
level is the mean of, whose own counts add their Poisson variance). The texture's variance is
measured from the data, beyond the Poisson variance: tau^2 = var(u) - mean(var(u | t))
(an empirical-Bayes, James-Stein estimate: it is near 0 where the prior holds the
detector's pixels already, e.g. the residual of the exact reference). The Wiener
(posterior mean) estimate of the pixel's gain relative to the prior is
1 + s (u - 1), s = tau^2 / (tau^2 + var(u | t)), and the correction

    c' = c / (1 + a s (u - 1))          (:func:`pixel_detail`)

with a = LINE_AMPLITUDE. Neighbours (:func:`wiener_kernels`): a detector's texture is
correlated over a pixel or so (0.8 of its variance shared with the next pixel when
filtered over one), the counts' Poisson noise is not, so a pixel's neighbours within the
ring's hole tell of its texture too. The covariance of the residuals at lags up to 4
pixels is measured from the data (:func:`texture_covariance`: off lag 0 the Poisson noise
adds nothing but what two levels' rings share, which is taken out) and s (u - 1) becomes
the 5 x 5 Wiener filter of the residuals for the pixel's Poisson variance (alone, one
pixel, it is s (u - 1) again). Measured against a count-limited ceiling that knows the
specimen (benchmarks/ceiling.py; 512 px x 20, 10 % texture over 2 % scatter, steep ice
ramps, carbon at 12 degrees): R^2 0.19-0.26 -> 0.39-0.48 (the ceiling 0.55); the
tests' detector (8 % texture, 5 % scatter) high-passed R^2 0.22 -> 0.31; a white scatter
gets next to no neighbour weight. Why a: one pass of Eq. 7 on few counts holds the detector's
lines at about half their amplitude (the paper iterates Eq. 7 to undo that; the robust
method makes one pass), so the prior c is the detector's line structure attenuated by
a. A pixel term at full strength beside it would be a map whose pixel scale weighs
twice its line scale: measured on the benchmark's detectors (2.9 % pixel scatter, 8 %
sectors, 3 % columns; 512 px, 6 movies), the session's R^2 to the true gain fell from
0.795 to 0.761 at full strength and rose to 0.805 at 0.4; on a 10 % texture detector
0.35 without the term, 0.59 at full strength, 0.61 to 0.62 at 0.4 to 0.6 (tau^2 then
measured with the lines in; with them out, below, the benchmark detector's session gave
0.801 at full strength and 0.806 at 0.6: the amplitude matters less than the lines did). A map
attenuated alike at every scale is also the one a later correction of the attenuation
(iterating Eq. 7) would lift whole.

A session adds each movie's N and lambda per pixel (``GainAccumulator``): u of the
sums, with the Poisson variance of the session's counts, so that the pixel term
sharpens with every movie, toward the inverse mean's limit, while the specimen stays
out (it is in lambda).

What the local level cannot follow, and where a pixel gets no term from a movie
(lambda = 0 there; its correction stays the prior's): pixels marked not estimable
(defects, gold: the robust method's dim pixels), pixels whose ring of neighbours holds
too few good ones, pixels under a nearly opaque specimen (L below 1 / DIM of the
typical level), and pixels next to a specimen edge, where a level gradient across the
window stands more than EDGE_Z of its own noise off zero (the window's local scatter).

The local level is the mean over a ring: the RING_OUTER x RING_OUTER pixels about p less
the RING_INNER x RING_INNER ones. A pixel's texture is correlated with its nearest
neighbours' (a texture filtered over a pixel: about 0.4 at 2 pixels, 0.1 at 3), so a level
taken over them takes part of the texture with it (measured on 10 % texture, 6 ice movies,
512 px, full strength: the session's R^2 0.40 with a 5 x 5 median, 0.52 / 0.54 (full /
high-passed) with 9 x 9 less 3 x 3, 0.53 / 0.55 with 9 x 9 less 5 x 5, 0.55 / 0.55 with 11 x
11 less 5 x 5 but the single movie's high-passed 0.203 against 0.205); a wider ring follows
the specimen less well.

Integrating frames (sums that are not whole counts) get no pixel term: their Poisson
variance per unit level (ADU per electron) is not known to this step, and the shrinkage
needs it.

Pure NumPy and SciPy on the host, a block of rows at a time in float32 (no frame-sized
float64 temporaries).
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from .arrays import in_row_blocks, row_blocks

#: the local level: the mean over RING_OUTER x RING_OUTER pixels less the RING_INNER x
#: RING_INNER about the pixel
RING_OUTER = 9
RING_INNER = 5
#: a pixel's ring needs at least this share of good pixels
RING_COVERED = 0.5
#: a level gradient across the window this many standard deviations off zero (a specimen
#: edge the ring cannot follow) leaves the pixel without a term (chi^2, 2 degrees of
#: freedom: a false alarm on 4e-6 of the pixels, and it costs only that movie's term)
EDGE_Z = 5.0
#: pixels whose level is under 1 / DIM of the typical one (gold, thick ice) get no term
DIM = 4.0
#: residuals above this (a hot pixel, a cosmic-ray streak) are left out of tau^2
OUTLIER = 4.0
#: the fraction of their amplitude at which the map of the robust method's equalization
#: holds the detector's lines (one pass of Eq. 7 on counts thinned to at most 16: the slope
#: of its column profile on the true one, measured 0.52 to 0.61 at 512 and 1024 px, 20 to
#: 100 counts a pixel; rows 0.3 to 0.4; the paper's SME after 3 iterations 0.92 to 0.96).
#: The pixel term is added at the same fraction, so that the map stays one estimate
#: attenuated alike at every scale (see :func:`pixel_detail`)
LINE_AMPLITUDE = 0.5
#: rows per block (a multiple of TAU_ROWS)
BLOCK_ROWS = 128
#: blocks of rows handled at once, one a thread (the local level, the pixel term)
BLOCK_THREADS = 2
#: tau^2 is measured on every TAU_ROWS-th row, and taken as 0 unless it stands TAU_Z
#: standard errors above 0
TAU_ROWS = 4
TAU_Z = 3.0
#: the pixel term's Wiener filter reaches this many pixels either way (5 x 5: the ring's
#: hole, so that no pixel it weighs enters the level of the pixel it estimates)
KERNEL_REACH = RING_INNER // 2
#: the texture's covariance is measured on about this many pixels (whole blocks of rows)
COVARIANCE_PIXELS = 1 << 20
#: the filter is tabulated on this log grid of a pixel's Poisson variance (var(u | t)):
#: neighbouring values 22 % apart, the nearest taken
VARIANCE_GRID = np.exp(np.linspace(np.log(1e-3), np.log(10.0), 48))


def _with_halo(values, part, halo):
    """The rows ``part`` of ``values`` and ``halo`` rows either side, reflected at the frame's
    edges as scipy.ndimage's 'reflect' mode does (numpy's 'symmetric')."""
    height = values.shape[0]
    first, last = part.start - halo, part.stop + halo
    block = values[max(first, 0):min(last, height)]
    above, below = max(0, -first), max(0, last - height)
    if above or below:
        block = np.pad(block, ((above, below), (0, 0)), mode='symmetric')
    return block


def _across_rows(values, size, halo, moment=False):
    """Sums over ``size`` rows centred on each row of a block that has ``halo`` rows either
    side (``moment``: each row weighted by its offset from the centre row), float32: the
    sum of the ``size`` shifted blocks (contiguous rows: no strided filter down the columns,
    which costs 4 times as much at 4096 x 4096)."""
    rows = values.shape[0] - 2 * halo
    reach = size // 2

    def shifted(offset):
        return values[halo + offset:halo + offset + rows]

    if moment:
        sums = np.zeros((rows, values.shape[1]), np.float32)
        pair = np.empty_like(sums)
        for offset in range(1, reach + 1):
            np.subtract(shifted(offset), shifted(-offset), out=pair)
            pair *= np.float32(offset)
            sums += pair
        return sums
    sums = shifted(0).copy()
    for offset in range(1, reach + 1):
        sums += shifted(offset)
        sums += shifted(-offset)
    return sums


def _along_rows(values, size):
    """Sums over ``size`` pixels along each row (reflected at the ends), float32."""
    return ndimage.uniform_filter1d(values, size, axis=1, mode='reflect') * np.float32(size)


def local_level(total, correction, usable, reference=None):
    """lambda of :mod:`.pixels` (float32, 0 where a pixel gets no term from this movie):
    the local level of v = total x correction over the ring about each pixel, in counts
    (divided by ``reference``, the per-pixel factor the frames were multiplied by, if
    any), where the ring follows the specimen.

    ``usable``: the pixels that enter a ring and may get a term (not defects, not dim).
    Window sums are separable: along the rows by scipy.ndimage (contiguous), across them
    by a cumulative sum a block of rows at a time."""
    level = np.zeros(total.shape, np.float32)

    def work(part):
        level[part] = _block_level(total, correction, usable, reference, part)

    in_row_blocks(work, total.shape[0], BLOCK_ROWS, BLOCK_THREADS)
    typical = _typical(level)
    if typical > 0:
        level[level * DIM < typical] = 0.0
    return level


def _block_level(total, correction, usable, reference, part):
    """:func:`local_level` in the rows ``part`` (before the dim pixels are left out)."""
    halo = RING_OUTER // 2
    ring_size = RING_OUTER ** 2 - RING_INNER ** 2
    ramp = np.arange(-halo, halo + 1, dtype=np.float32)
    moment = float(RING_OUTER * np.sum(ramp * ramp))
    good = _with_halo(np.asarray(usable), part, halo)
    v = np.where(good, _with_halo(total, part, halo).astype(np.float32)
                 * _with_halo(correction, part, halo), np.float32(0.0)).astype(np.float32)
    row9 = _along_rows(v, RING_OUTER)
    window = _across_rows(row9, RING_OUTER, halo)
    inner = _across_rows(_along_rows(v, RING_INNER), RING_INNER, halo)
    squares = _across_rows(_along_rows(v * v, RING_OUTER), RING_OUTER, halo)
    # a straight-line fit's slope over the window, x and y
    slope_x = _across_rows(ndimage.correlate1d(v, ramp, axis=1, mode='reflect'),
                           RING_OUTER, halo)
    slope_y = _across_rows(row9, RING_OUTER, halo, moment=True)
    good = good[halo:halo + part.stop - part.start]
    if good.all():              # (the usual block: no window misses a pixel)
        count, covered = np.float32(RING_OUTER ** 2), np.float32(ring_size)
    else:
        weight = _with_halo(np.asarray(usable), part, halo).astype(np.float32)
        count = np.maximum(_across_rows(_along_rows(weight, RING_OUTER), RING_OUTER, halo),
                           1.0)
        covered = count - _across_rows(_along_rows(weight, RING_INNER), RING_INNER, halo)
    mean = (window - inner) / np.maximum(covered, 1.0)
    # the window's own scatter (the texture's and the counts'), and its gradient in
    # units of it
    box_mean = window / count
    scatter = np.maximum(squares / count - box_mean * box_mean, 1e-12)
    gradient = (slope_x * slope_x + slope_y * slope_y) / (np.float32(moment) * scatter)
    kept = good & (covered >= RING_COVERED * ring_size) & (gradient <= EDGE_Z * EDGE_Z)
    del v, row9, window, inner, squares, slope_x, slope_y, gradient
    if reference is not None:
        factor = np.asarray(reference[part], np.float32)
        kept &= factor > 0
        mean = mean / np.where(factor > 0, factor, 1.0)
    return np.where(kept, mean, 0.0)


def typical_level(values):
    """The specimen's typical level in ``values`` (levels, in counts): their median, unless
    the median pixel is itself dim (under 1 / DIM) against the level the typical count
    arrived at (the median weighted by the values: half the counts arrived at pixels of a
    lower level), then the median of the exposed part (the values not dim against it).
    The plain median is the level of the typical *pixel*: where a nearly opaque specimen
    (gold foil about a hole) covers more than half the frame it lies in the gold, and
    nothing is dim against it (measured: 50 % gold of T 0.03, the exact reference's
    residual std 0.098 and the paper's std flag; 60 % of it at 512 px, the robust
    method declined the movie as holding 2 counts a pixel). The counts' median stays in
    the exposed part while that holds most of the counts (a hole over 5 % of a frame of
    T 0.03 gold: 66 % of them)."""
    values = np.sort(np.asarray(values), axis=None)
    if not values.size:
        return 0.0
    median = float(np.median(values))
    below = np.cumsum(np.maximum(values, 0), dtype=np.float64)
    if below[-1] <= 0:
        return median
    weighted = values[min(int(np.searchsorted(below, 0.5 * below[-1])), values.size - 1)]
    if median * DIM >= weighted:
        return median
    return float(np.median(values[np.searchsorted(values, weighted / DIM):]))


def _typical(level):
    """:func:`typical_level` of the positive levels (on a sample of every 3rd pixel of every
    3rd row)."""
    sample = level[::3, ::3]
    return typical_level(sample[sample > 0])


def log_blocks(gain, defects, block, denominator=None):
    """(log of the gain with bad pixels 0, good pixels, the rows) a block of rows at a time
    (``denominator``: the gain is denominator / ``gain``)."""
    for part in row_blocks(gain.shape[0], block):
        yield _log_block(gain, defects, part, denominator) + (part,)


def _log_block(gain, defects, part, denominator=None):
    """(log of the gain with bad pixels 0, good pixels) in the rows ``part``
    (:func:`log_blocks`)."""
    good = np.ones(gain[part].shape, bool) if defects is None else \
        ~np.asarray(defects[part], bool)
    values = np.asarray(gain[part], np.float64)
    if denominator is not None:
        with np.errstate(divide='ignore', invalid='ignore'):
            values = np.asarray(denominator[part], np.float64) / values
        good &= np.isfinite(values) & (values > 0)
    logs = np.log(np.maximum(values, 1e-6))
    return np.where(good, logs, 0.0), good


def line_log_sums(values, defects=None, block=BLOCK_ROWS, denominator=None):
    """(column sums, column counts, row sums, row counts) of the log of ``values`` over its
    good pixels (not ``defects``; ``denominator``: of denominator / ``values``), a block of
    rows at a time: the line profiles of a map (:func:`line_prior`,
    :func:`.specimen.map_profile`). The blocks' logs on BLOCK_THREADS threads, their line
    sums added in the blocks' order (the same sums as one loop)."""
    height, width = values.shape

    def sums(part):
        logs, good = _log_block(values, defects, part, denominator)
        return logs.sum(axis=0), good.sum(axis=0), logs.sum(axis=1), good.sum(axis=1)

    column_sums, column_counts = np.zeros(width), np.zeros(width)
    row_sums, row_counts = np.zeros(height), np.zeros(height)
    for part, (columns, column_good, rows, row_good) in zip(
            row_blocks(height, block), in_row_blocks(sums, height, block, BLOCK_THREADS)):
        column_sums += columns
        column_counts += column_good
        row_sums[part] = rows
        row_counts[part] = row_good
    return column_sums, column_counts, row_sums, row_counts


def line_prior(correction, defects):
    """The prior of the pixel term: the map's lines alone, exp(row mean + column mean) of its
    log over the good pixels, mean 1 over them (float32; defects keep their value).

    Why not the map itself. A pixel's value in the map of step 3 (one pass of Eq. 7 on a
    thinned sum) is a nonlinear function of its own counts: small where its counts are
    typical, large at their rare low tail (1 count where 10 were expected maps several
    times off). Shrinking toward that map keeps the tail (its max / p97.5, one of the paper's
    flags, fired on carbon and gold movies with the exact reference); shrinking toward the
    lines leaves a pixel's own gain to the pixel term alone, whose Wiener factor weighs its
    counts by the texture the data show. Measured (1024 x 1024 x 20, no pixel texture,
    exact reference): residual std 0.0102 -> 0.0072, carbon edges 1.19-1.26 -> 1.10-1.14
    times that, max / p97.5 flags 2 of 5 -> 0 of 5; gain-mode R^2 0.87 -> 0.93; on 10 %
    texture per-movie high-passed R^2 0.205 -> 0.214, the session's 0.612 -> 0.610."""
    height = correction.shape[0]
    column_sums, column_counts, row_sums, row_counts = line_log_sums(correction, defects)
    mean = column_sums.sum() / max(column_counts.sum(), 1.0)
    # the map's lines are exp(row) x exp(column): an outer product, no logs to exponentiate
    columns = np.exp(np.where(column_counts > 0, column_sums / np.maximum(column_counts, 1.0),
                              mean) - mean)
    rows = np.exp(np.where(row_counts > 0, row_sums / np.maximum(row_counts, 1.0), mean))
    # mean 1 over the good pixels: sum over them of rows x columns, a row of blocks at a time
    # (on BLOCK_THREADS threads, added in the blocks' order)
    total = sum(in_row_blocks(
        lambda part: float(rows[part] @ (~np.asarray(defects[part], bool) @ columns)),
        height, BLOCK_ROWS, BLOCK_THREADS))
    count = float(column_counts.sum())
    rows = (rows / (total / count if total > 0 and count else 1.0)).astype(np.float32)
    columns = columns.astype(np.float32)
    prior = np.empty(correction.shape, np.float32)

    def fill(part):
        np.multiply.outer(rows[part], columns, out=prior[part])
        bad = np.asarray(defects[part], bool)
        prior[part][bad] = correction[part][bad]

    in_row_blocks(fill, height, BLOCK_ROWS, BLOCK_THREADS)
    return prior


class SumCounts:
    """N of :mod:`.pixels`: the whole counts of a sum of counts times a per-pixel
    ``reference`` (None: the sum itself), as float32 a block of rows at a time, so that no
    frame of counts is held beside the sum."""

    def __init__(self, total, reference=None):
        self.total, self.reference = total, reference
        self.shape = total.shape

    def __getitem__(self, rows):
        block = np.asarray(self.total[rows], np.float64)
        if self.reference is None:
            return block.astype(np.float32)
        factor = np.asarray(self.reference[rows], np.float64)
        known = factor > 0
        return np.where(known, np.rint(block / np.where(known, factor, 1.0)),
                        0.0).astype(np.float32)


def texture_variance(prior, counts, level, defects=None, every=TAU_ROWS):
    """tau^2: the variance of the residuals u = prior x counts / level about their row and
    column means, beyond their Poisson variance (:func:`_residuals`), over the pixels with a
    level (residuals above OUTLIER left out); 0 when the Poisson variance explains it within
    TAU_Z standard errors. The lines' means are left out: what a residual shares with its
    whole row or column (the lines the prior holds attenuated, a specimen edge along a
    line that the lines took) is not a pixel's texture. One number of the whole frame:
    taken on every ``every``-th row (a 4096-row frame: 1024 rows, 4 million pixels), two
    passes a block of rows at a time (the line means, then the scatter about them)."""
    width = prior.shape[1]
    column_sums, column_counts = np.zeros(width), np.zeros(width)
    row_means = []

    def sampled():
        for part in row_blocks(prior.shape[0], BLOCK_ROWS):
            rows = slice(part.start, part.stop, every)
            u, poisson, take = _residuals(prior[rows], counts[rows], level[rows],
                                          None if defects is None else defects[rows])
            take &= u < OUTLIER
            yield np.where(take, u, np.float32(0.0)), poisson, take

    for u, _, take in sampled():
        column_sums += u.sum(axis=0, dtype=np.float64)
        column_counts += take.sum(axis=0)
        row_means.append(u.sum(axis=1, dtype=np.float64) / np.maximum(take.sum(axis=1), 1))
    used = int(column_counts.sum())
    if used < 2:
        return 0.0
    mean = float(column_sums.sum()) / used
    column = (column_sums / np.maximum(column_counts, 1) - mean).astype(np.float32)
    squares = noise = 0.0
    for (u, poisson, take), row in zip(sampled(), row_means):
        u -= column[None, :]
        u -= (row - mean).astype(np.float32)[:, None]
        u -= np.float32(mean)
        rest = u[take].astype(np.float64)
        squares += float(np.dot(rest, rest))
        noise += float(poisson[take].sum(dtype=np.float64))
    variance = squares / used
    excess = variance - noise / used
    # a sample variance of n pixels scatters by sqrt(2 / n) of itself: an excess within
    # TAU_Z of that is the counts' (a movie of the benchmark's 3 % pixel scatter at 20
    # counts a pixel: 1.4 of it), and the term is left out
    return excess if excess > TAU_Z * np.sqrt(2.0 / used) * variance else 0.0


def _residuals(prior, counts, level, defects):
    """(u, its Poisson variance, where it is defined) of a block, float32."""
    take = level > 0
    if defects is not None:
        take &= ~np.asarray(defects, bool)
    safe = np.where(take, level, np.float32(1.0))
    poisson = prior / safe
    u = np.where(take, poisson * counts, np.float32(1.0))
    # the level is itself a mean of counts, over the ring: its Poisson variance adds
    # 1 / (ring pixels) of the pixel's (on the exact reference's residual, without it:
    # tau 0.036 where the truth is 0)
    poisson *= np.float32(1.0 + 1.0 / (RING_OUTER ** 2 - RING_INNER ** 2))
    poisson[~take] = 0.0
    return u, poisson, take


def texture_covariance(prior, counts, level, defects, tau2):
    """The covariance of the residuals' texture at lags up to 2 KERNEL_REACH pixels: an
    array of (4 R + 1) x (4 R + 1), lag (0, 0) at its centre (the residuals' variance less
    their Poisson variance, as :func:`texture_variance` has it, on the same pixels and
    means as the other lags, so that the two agree; ``tau2`` where that is not positive).
    Off lag 0 it is the mean product of the residuals (about their row and column means, as in
    :func:`texture_variance`) over the pairs of pixels that both have a level: the counts'
    Poisson noise is independent from pixel to pixel and adds nothing there, so what is
    left is the texture's own correlation (a texture filtered over a pixel: about 0.8 of
    tau^2 at one pixel) and what the ring's level shares (negative, at the ring's
    distance). Whole blocks of rows, about COVARIANCE_PIXELS pixels in all.

    Returns (covariance, shared): ``shared`` the part of each lag that the two pixels'
    levels share (:func:`_ring_overlap`), which is the residuals' but not the texture's."""
    blocks = row_blocks(prior.shape[0], BLOCK_ROWS)
    step = max(1, len(blocks) * BLOCK_ROWS * prior.shape[1] // COVARIANCE_PIXELS)
    chosen = blocks[::step]

    def residuals():
        for part in chosen:
            u, poisson, take = _residuals(prior[part], counts[part], level[part],
                                          defects[part])
            take &= u < OUTLIER
            yield np.where(take, u, np.float32(0.0)).astype(np.float64), poisson, take

    column_sums, column_counts = np.zeros(prior.shape[1]), np.zeros(prior.shape[1])
    for u, _, take in residuals():
        column_sums += u.sum(axis=0)
        column_counts += take.sum(axis=0)
    column = column_sums / np.maximum(column_counts, 1.0)
    reach = 2 * KERNEL_REACH
    sums = np.zeros((2 * reach + 1, 2 * reach + 1))
    pairs = np.zeros_like(sums)
    poisson_sum = 0.0
    for u, poisson, take in residuals():
        poisson_sum += float(poisson[take].sum(dtype=np.float64))
        u -= column[None, :]
        u[~take] = 0.0                # before the rows' means: they are over ``take`` alone
        u -= (u.sum(axis=1) / np.maximum(take.sum(axis=1), 1))[:, None]
        u[~take] = 0.0
        _lag_products(u, take.astype(np.float64), reach, sums, pairs)
        # lag 0 on the same pixels and means (the others' scale), less the Poisson variance
        sums[reach, reach] += float(np.sum(u * u)) - float(poisson[take].sum(dtype=np.float64))
        pairs[reach, reach] += float(take.sum())
    covariance = sums / np.maximum(pairs, 1.0)
    covariance += covariance[::-1, ::-1]          # lag -k is lag k: one half was summed
    covariance[reach, reach] /= 2.0               # (lag 0 was added to itself)
    if covariance[reach, reach] <= 0:
        covariance[reach, reach] = tau2
    # two pixels' levels are means over rings that share pixels: their residuals share
    # those pixels' scatter (the texture's and the counts') over the ring's size squared
    scatter = covariance[reach, reach] + poisson_sum / max(float(pairs[reach, reach]), 1.0)
    shared = _ring_overlap(reach) * (scatter / float(RING_OUTER ** 2 - RING_INNER ** 2) ** 2)
    shared[reach, reach] = 0.0      # (lag 0: the Poisson share is out already, the rest small)
    return covariance, shared


def _ring_overlap(reach):
    """How many pixels the rings of two pixels (dy, dx) apart share, for |dy|, |dx| <=
    ``reach`` (an array with lag (0, 0) at its centre)."""
    ring = np.ones((RING_OUTER, RING_OUTER))
    hole = (RING_OUTER - RING_INNER) // 2
    ring[hole:hole + RING_INNER, hole:hole + RING_INNER] = 0.0
    padded = np.pad(ring, reach)
    centre = padded[reach:reach + RING_OUTER, reach:reach + RING_OUTER]
    return np.array([[float(np.sum(centre * padded[reach + dy:reach + dy + RING_OUTER,
                                                   reach + dx:reach + dx + RING_OUTER]))
                      for dx in range(-reach, reach + 1)] for dy in range(-reach, reach + 1)])


def _lag_products(values, weights, reach, sums, pairs):
    """Add to ``sums`` (``pairs``) the products of ``values`` (of ``weights``) at every lag
    (dy, dx), dy > 0 or dy = 0 < dx, up to ``reach``, at [reach + dy, reach + dx]."""
    height, width = values.shape
    for dy in range(reach + 1):
        for dx in range(-reach, reach + 1):
            if dy == 0 and dx <= 0:
                continue
            left, right = max(0, -dx), width - max(0, dx)
            first = (slice(0, height - dy), slice(left, right))
            second = (slice(dy, height), slice(left + dx, right + dx))
            sums[reach + dy, reach + dx] += float(np.sum(values[first] * values[second]))
            pairs[reach + dy, reach + dx] += float(np.sum(weights[first] * weights[second]))


def wiener_kernels(covariance, shared):
    """The Wiener filter of the pixel term, one per value of VARIANCE_GRID: (len(grid),
    (2 R + 1)^2) weights of a pixel's (2 R + 1)^2 neighbourhood, R = KERNEL_REACH, in
    row-major order. For a pixel whose residuals carry the Poisson variance v, the
    posterior mean of its texture is sum_k h_k (u_k - 1) with h = (C + v I)^-1 c: C the
    residuals' covariance between the neighbourhood's pixels (:func:`texture_covariance`
    at their offsets), c its covariance with the pixel's own texture (its row of C less
    what their levels share, ``shared``: the neighbourhood lies within the ring's hole, so
    no neighbour's level holds the pixel itself).
    The neighbours' Poisson variance is taken as the pixel's own (the specimen's level
    changes slowly beside 5 pixels)."""
    reach = KERNEL_REACH
    centre = covariance.shape[0] // 2
    offsets = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    between = np.array([[covariance[centre + a - c, centre + b - d] for c, d in offsets]
                        for a, b in offsets])
    own = np.array([covariance[centre + a, centre + b] - shared[centre + a, centre + b]
                    for a, b in offsets])
    eye = np.eye(len(offsets))
    return np.array([np.linalg.solve(between + v * eye, own) for v in VARIANCE_GRID])


def _texture_estimate(prior, counts, level, defects, part, kernels):
    """a x the Wiener estimate of each pixel's texture (:func:`wiener_kernels`) in the rows
    ``part`` (float32; 0 where the pixel has no term). Its neighbours beyond the frame or
    without a level count as residuals of 0 (no evidence)."""
    reach = KERNEL_REACH
    first, last = max(part.start - reach, 0), min(part.stop + reach, prior.shape[0])
    rows = slice(first, last)
    u, poisson, take = _residuals(prior[rows], counts[rows], level[rows], defects[rows])
    residual = np.zeros((last - first + 2 * reach, u.shape[1] + 2 * reach), np.float32)
    residual[reach:reach + u.shape[0], reach:reach + u.shape[1]] = \
        np.where(take, u - np.float32(1.0), 0.0)
    top = part.start - first + reach          # the block's first row in ``residual``
    height, width = part.stop - part.start, u.shape[1]
    own = slice(part.start - first, part.stop - first)
    step = float(np.log(VARIANCE_GRID[1] / VARIANCE_GRID[0]))
    index = np.rint((np.log(np.maximum(poisson[own], VARIANCE_GRID[0]))
                     - np.log(VARIANCE_GRID[0])) / step)
    index = np.clip(index, 0, len(VARIANCE_GRID) - 1).astype(np.intp)
    # the kernels are point-symmetric (the covariance is, lag -k being lag k): a tap and its
    # mirror share one weight, so each pair of taps is one gather of the weights, not two
    symmetric = 0.5 * (kernels + kernels[:, ::-1])
    table = (LINE_AMPLITUDE * symmetric).astype(np.float32)
    taps = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    centre = len(taps) // 2

    def shifted(dy, dx):
        return residual[top + dy:top + dy + height, reach + dx:reach + dx + width]

    estimate = np.take(table[:, centre], index, mode='clip')
    estimate *= shifted(0, 0)
    pair, weight = np.empty((height, width), np.float32), np.empty((height, width), np.float32)
    for tap in range(centre):
        dy, dx = taps[tap]
        np.add(shifted(dy, dx), shifted(-dy, -dx), out=pair)
        np.take(table[:, tap], index, out=weight, mode='clip')   # index is within the grid
        pair *= weight
        estimate += pair
    estimate[~take[own]] = 0.0
    return estimate


def pixel_detail(prior, counts, level, defects):
    """The correction with the pixel term: prior / (1 + a t), t the Wiener estimate of each
    pixel's texture relative to the prior from its own and its neighbours' residuals
    (:func:`wiener_kernels`; alone, it would be s (u - 1), s = tau^2 / (tau^2 + var(u |
    t))), added at the prior's line amplitude a = LINE_AMPLITUDE (:mod:`.pixels`), mean 1
    over the good pixels; defects keep the prior's value (1). ``prior`` (float32) is
    written in place, a block of rows behind the one being estimated (whose neighbours
    reach into it). Returns (correction, tau^2)."""
    tau2 = texture_variance(prior, counts, level, defects)
    if tau2 <= 0:
        return prior, 0.0
    kernels = wiener_kernels(*texture_covariance(prior, counts, level, defects, tau2))
    parts = row_blocks(prior.shape[0], BLOCK_ROWS)
    pending = []
    # BLOCK_THREADS blocks estimated at once (NumPy's loops and gathers release the GIL);
    # a block is written only once the blocks beside it are estimated, so that every
    # estimate reads the prior as it came in
    with ThreadPoolExecutor(max_workers=BLOCK_THREADS) as pool:
        for start in range(0, len(parts) + 1, BLOCK_THREADS):
            chunk = parts[start:start + BLOCK_THREADS]
            estimates = list(pool.map(lambda part: _texture_estimate(
                prior, counts, level, defects, part, kernels), chunk))
            ready = pending + list(zip(chunk, estimates))
            pending = ready[-1:] if start + BLOCK_THREADS < len(parts) else []
            for rows, term in ready[:len(ready) - len(pending)]:
                term += np.float32(1.0)
                prior[rows] /= term
    total, count = 0.0, 0
    for part in row_blocks(prior.shape[0], BLOCK_ROWS):
        good = ~np.asarray(defects[part], bool)
        total += float(prior[part][good].sum(dtype=np.float64))
        count += int(good.sum())
    if count:
        scale = np.float32(total / count)
        for part in row_blocks(prior.shape[0], BLOCK_ROWS):
            good = ~np.asarray(defects[part], bool)
            prior[part][good] /= scale
    return prior, tau2
