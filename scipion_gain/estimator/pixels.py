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
but the specimen varies slowly beside the pixel grid: the robust correction c (lines,
sectors, flat field) applied to the corrected sum S gives v = S c, whose *local level*
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

    c' = c / (1 + s (u - 1))          (:func:`pixel_detail`)

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
taken over them takes part of the texture with it (measured on 10 % texture, 6 ice movies:
high-passed R^2 of the session 0.45 with a 5 x 5 median, 0.52 with 9 x 9 less 3 x 3, 0.55
with 9 x 9 less 5 x 5); a wider ring follows the specimen less well.

Integrating frames (sums that are not whole counts) get no pixel term: their Poisson
variance per unit level (ADU per electron) is not known to this step, and the shrinkage
needs it.

Pure NumPy and SciPy on the host, a block of rows at a time in float32 (no frame-sized
float64 temporaries).
"""
import numpy as np
from scipy import ndimage

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
#: rows per block
BLOCK_ROWS = 256


def _blocks(rows, halo=0, size=BLOCK_ROWS):
    """(rows with halo, rows of the block within them, rows of the block) per block."""
    for top in range(0, rows, size):
        bottom = min(rows, top + size)
        first, last = max(0, top - halo), min(rows, bottom + halo)
        yield slice(first, last), slice(top - first, top - first + bottom - top), \
            slice(top, bottom)


def _box_sum(values, size):
    """Sums over size x size windows (reflected at the frame's edges), float32."""
    return ndimage.uniform_filter(values, size, mode='reflect') * np.float32(size * size)


def local_level(total, correction, usable, reference=None):
    """lambda of :mod:`.pixels` (float32, 0 where a pixel gets no term from this movie):
    the local level of v = total x correction over the ring about each pixel, in counts
    (divided by ``reference``, the per-pixel factor the frames were multiplied by, if
    any), where the ring follows the specimen.

    ``usable``: the pixels that enter a ring and may get a term (not defects, not dim)."""
    height = total.shape[0]
    halo = RING_OUTER // 2
    ring_size = RING_OUTER ** 2 - RING_INNER ** 2
    ramp = np.arange(-halo, halo + 1, dtype=np.float32)
    moment = float(RING_OUTER * np.sum(ramp * ramp))
    level = np.zeros(total.shape, np.float32)
    for rows, inner, part in _blocks(height, halo):
        good = np.asarray(usable[rows], bool)
        v = np.where(good, np.asarray(total[rows], np.float32) * correction[rows], 0.0)
        v = v.astype(np.float32)
        if good.all():              # (the usual block: no window misses a pixel)
            count, covered = np.float32(RING_OUTER ** 2), np.float32(ring_size)
        else:
            weight = good.astype(np.float32)
            count = np.maximum(_box_sum(weight, RING_OUTER), 1.0)
            covered = count - _box_sum(weight, RING_INNER)
        window = _box_sum(v, RING_OUTER)
        mean = (window - _box_sum(v, RING_INNER)) / np.maximum(covered, 1.0)
        # the window's own scatter (the texture's and the counts'), and its gradient in
        # units of it: a straight-line fit's slope over the window, x and y
        box_mean = window / count
        scatter = np.maximum(_box_sum(v * v, RING_OUTER) / count - box_mean * box_mean, 1e-12)
        gradient = np.zeros(v.shape, np.float32)
        for axis in (0, 1):
            slope = ndimage.correlate1d(v, ramp, axis=axis, mode='reflect')
            slope = ndimage.uniform_filter1d(slope, RING_OUTER, axis=1 - axis, mode='reflect')
            slope *= np.float32(RING_OUTER)
            gradient += slope * slope / np.float32(moment)
        gradient /= scatter
        kept = (good & (covered >= RING_COVERED * ring_size)
                & (gradient <= EDGE_Z * EDGE_Z))[inner]
        del v, window, gradient
        mean = mean[inner]
        if reference is not None:
            factor = np.asarray(reference[part], np.float32)
            kept &= factor > 0
            mean = mean / np.where(factor > 0, factor, 1.0)
        level[part] = np.where(kept, mean, 0.0)
    typical = _typical(level)
    if typical > 0:
        level[level * DIM < typical] = 0.0
    return level


def _typical(level):
    """The median of the positive levels (on a sample of every 3rd pixel of every 3rd row)."""
    sample = level[::3, ::3]
    sample = sample[sample > 0]
    return float(np.median(sample)) if sample.size else 0.0


def texture_variance(prior, counts, level, defects=None):
    """tau^2: the variance of the residuals u = prior x counts / level beyond their Poisson
    variance prior / level, over the pixels with a level (residuals above OUTLIER left
    out), 0 when the Poisson variance explains it all."""
    total = squares = noise = 0.0
    used = 0
    for _, _, part in _blocks(prior.shape[0]):
        u, poisson, take = _residuals(prior[part], counts[part], level[part],
                                      None if defects is None else defects[part])
        take &= u < OUTLIER
        used += int(take.sum())
        total += float(u[take].sum())
        squares += float(np.dot(u[take], u[take]))
        noise += float(poisson[take].sum())
    if used < 2:
        return 0.0
    mean = total / used
    return max(0.0, squares / used - mean * mean - noise / used)


def _residuals(prior, counts, level, defects):
    """(u, its Poisson variance, where it is defined) of a block (float64 within it)."""
    prior = np.asarray(prior, np.float64)
    level = np.asarray(level, np.float64)
    take = level > 0
    if defects is not None:
        take &= ~np.asarray(defects, bool)
    safe = np.where(take, level, 1.0)
    u = np.where(take, prior * np.asarray(counts, np.float64) / safe, 1.0)
    # the level is itself a mean of counts, over the ring: its Poisson variance adds
    # 1 / (ring pixels) of the pixel's (on the exact reference's residual, without it:
    # tau 0.036 where the truth is 0)
    poisson = prior / safe * (1.0 + 1.0 / (RING_OUTER ** 2 - RING_INNER ** 2))
    return u, np.where(take, poisson, 0.0), take


def pixel_detail(prior, counts, level, defects):
    """The correction with the pixel term: prior / (1 + s (u - 1)), s = tau^2 / (tau^2 +
    prior / level) (the Wiener estimate of each pixel's gain relative to the prior,
    :mod:`.pixels`), mean 1 over the good pixels; defects keep the prior's value (1).
    Returns (correction float32, tau^2)."""
    tau2 = texture_variance(prior, counts, level, defects)
    if tau2 <= 0:
        return prior, 0.0
    corrected = np.array(prior, np.float32)
    for _, _, part in _blocks(prior.shape[0]):
        u, poisson, take = _residuals(prior[part], counts[part], level[part], defects[part])
        share = np.where(take, tau2 / (tau2 + np.maximum(poisson, 1e-30)), 0.0)
        corrected[part] = prior[part] / (1.0 + share * (u - 1.0))
    good = ~np.asarray(defects, bool)
    if good.any():
        corrected[good] /= np.float32(corrected[good].mean(dtype=np.float64))
    return corrected, tau2
