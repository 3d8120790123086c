"""The Gaussian weights of Eqs. 2-3 (Sorzano et al. 2018) and the total variation of Eq. 5."""
import math
import numpy as np


#: default sigma grid of the per-frame search (Eq. 5)
DEFAULT_SIGMA_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


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


def total_variation(lines, xp=np):
    """TV across lines (Eq. 5): sum over l, j of |X[l+1, j] - X[l, j]|."""
    difference = lines[1:] - lines[:-1]
    xp.abs(difference, out=difference)  # in place: one (L, n) temporary, not two
    return float(difference.sum(dtype=xp.float64))


def total_variation_along(frame, axis, xp=np):
    """TV across the lines of a frame whose lines are its rows (``axis`` 0) or columns (1)."""
    difference = frame[1:] - frame[:-1] if axis == 0 else frame[:, 1:] - frame[:, :-1]
    xp.abs(difference, out=difference)
    return float(difference.sum(dtype=xp.float64))
