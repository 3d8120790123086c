"""The scaled-count model: a frame of counts x per-pixel factors, its ties in whole counts,
its block-resolution inverse CDFs (ramps) and the expected total variation of Eq. 5.
"""
import math
import numpy as np

from ._keys import COUNT_LEVELS


#: scaled counts: their pair histogram is kept up to this many bins per frame pixel (or
#: SCALED_PAIR_BINS in all, for small frames); beyond, the frame takes the general path
SCALED_PAIR_BINS_PER_PIXEL = 1.0
SCALED_PAIR_BINS = 1 << 22


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


#: the expected total variation's pairs taken this many at a time (NumPy: its float64
#: temporaries of a chunk, 2 MB each, instead of a dozen of the whole pair list, 30 MB each
#: at 4096 x 4096 and 45 levels), in EXPECTED_TV_THREADS threads
EXPECTED_TV_CHUNK = 1 << 18
EXPECTED_TV_THREADS = 2


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

    On NumPy the pairs' terms are computed a chunk at a time in threads (each writes its
    own slice of one array; NumPy's loops release the GIL) and summed at once: the same
    terms and the same sum as over the whole list.
    """
    variance = xp.maximum(square_means - own_means * own_means, 0.0)
    ratio = xp.where(own_means > 0, means / xp.where(own_means > 0, own_means, 1.0), 0.0)
    variance *= ratio * ratio
    count = int(pairs.shape[0])
    weighted = xp.empty(count, dtype=xp.result_type(pairs.dtype, xp.float64))

    def terms(part):
        weighted[part] = pairs[part] * _expected_difference(
            means, variance, first[part], second[part], xp)

    if xp is not np or count <= EXPECTED_TV_CHUNK:
        terms(slice(None))
    else:
        from concurrent.futures import ThreadPoolExecutor
        parts = [slice(start, start + EXPECTED_TV_CHUNK)
                 for start in range(0, count, EXPECTED_TV_CHUNK)]
        with ThreadPoolExecutor(max_workers=EXPECTED_TV_THREADS) as pool:
            list(pool.map(terms, parts))
    return float(weighted.sum())


def _expected_difference(means, variance, first, second, xp):
    """E|X' - X| of independent samples of blocks ``second`` and ``first`` (see
    :func:`expected_total_variation`), float64."""
    erf = _erf(xp)
    difference = means[second] - means[first]
    spread = xp.sqrt(variance[first] + variance[second])
    safe = xp.where(spread > 0, spread, 1.0)
    return xp.where(
        spread > 0,
        spread * math.sqrt(2 / math.pi) * xp.exp(-0.5 * (difference / safe) ** 2)
        + difference * erf(difference / (safe * math.sqrt(2.0))),
        xp.abs(difference))


def _erf(xp):
    if xp is np:
        from scipy.special import erf
    else:
        from cupyx.scipy.special import erf
    return erf
