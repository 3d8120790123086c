"""The detector's readout boundaries, as a gain reference shows them.

A reference is measured with far more electrons than a movie: its own profiles
show where the detector's readout sectors meet (:func:`reference_boundaries`).
A wrong reference is most likely wrong there, so the step tests of one movie
(:mod:`.steps`) look at those lines, give or take each boundary's ``reach``
(:class:`ReadoutBoundary`, :func:`boundary_lines`).
"""
from functools import lru_cache

import numpy as np
from scipy.ndimage import median_filter
from scipy.special import ndtri

from .arrays import quiet_nan_warnings


# ------------------------------------------------------------------ both directions
class ReadoutBoundary(int):
    """A readout boundary's line (an int wherever one is expected) and ``reach``: how many
    lines either side of it the reference's own line pattern leaves its place uncertain
    (a plain int: 1)."""

    def __new__(cls, line, reach=1, z=0.0):
        boundary = super().__new__(cls, line)
        boundary.reach, boundary.z = int(reach), float(z)
        return boundary


def boundary_lines(boundary):
    """The lines where a step at ``boundary`` may lie: it, give or take its reach
    (:class:`ReadoutBoundary`; a plain int: one line), never the frame's first."""
    reach = int(getattr(boundary, 'reach', 1))
    return slice(max(1, boundary - reach), boundary + reach + 1)


#: a boundary's place is uncertain over the lines whose step fits worse than the best by
#: less than this chi-square (3 standard deviations), at most MAX_REACH lines either side
REACH_CHI2 = 9.0
MAX_REACH = 8


#: a reference is searched for steps over its whole length and in this many bands of it
#: (each less the whole length's profile): a sector whose reference is wrong in part of its
#: length steps the other way there, and the profile over the whole length can lose its
#: boundary (a median between two levels)
REFERENCE_BANDS = 8


def reference_boundaries(reference, min_step=0.01, alpha=0.001, most=32):
    """Lines where a gain reference itself steps: the detector's readout boundaries.

    A reference is measured with far more electrons than a movie, so its own
    profiles show the detector's sector boundaries: the mean level of the lines
    changes there and stays changed up to the next boundary. Along each direction
    the profile (median over the other direction, robust to defects) is modelled
    as a smooth flat field (:func:`smooth_basis`) plus steps at the boundaries,
    with the line-to-line pattern as noise (its RMS as sums over many lines see
    it, :func:`_summed_noise`: the yardstick). Boundaries are added one at a time
    where the step's least-squares height stands highest in that yardstick
    (:func:`_segmented_steps`): a step's height is measured from the lines between
    its neighbouring boundaries on each side, however wide the sectors are and
    wherever their edges fall, not from a fixed window that may cross another
    boundary or miss a narrow sector's lines. A boundary is kept while it stands
    ``min_step`` high and beyond Bonferroni's z for a false boundary anywhere at
    ``alpha`` (over every line of every profile tried: 5.3 at 1024 lines, 5.6 at
    4096) with all the others fitted beside it.

    The line pattern leaves a weak boundary's place uncertain by a few lines (a
    2 % pattern against a 4 % step: the fit at 3 lines off is worse by a
    chi-square of about 3 a line): each boundary carries its ``reach``, the lines
    either side whose fit is worse than the best by less than REACH_CHI2
    (:class:`ReadoutBoundary`). A wrong reference is most likely wrong there (a
    sector whose gain drifted), so those few lines are where a residual step is
    looked for with the lower ``boundary_step_z``. Returns {0: [columns], 1: [rows]}.
    """
    reference = np.asarray(reference, dtype=np.float32)   # a 4K map: float32 logs
    usable = np.isfinite(reference) & (reference > 0)
    logs = np.log(np.where(usable, reference, np.float32(1)))
    median = np.median
    if not usable.all():
        logs[~usable] = np.nan
        median = np.nanmedian
    out = {}
    with quiet_nan_warnings():
        for axis in (0, 1):
            # a line's median from contiguous values (the columns' from the transpose),
            # over each of REFERENCE_BANDS bands of its length, then over the whole length
            # reordered in place (the transpose is ours, and the rows' pass is the last)
            lines_first = np.ascontiguousarray(logs.T) if axis == 0 else logs
            length = lines_first.shape[1]
            cuts = np.linspace(0, length, REFERENCE_BANDS + 1).astype(int)
            bands = [median(lines_first[:, a:b], axis=1) for a, b in zip(cuts, cuts[1:])
                     if b - a >= 8]
            whole = np.asarray(median(lines_first, axis=1, overwrite_input=True), np.float64)
            del lines_first
            # the whole length's profile, and each band's less it: the detector's line
            # pattern is the same in every band and cancels there, leaving what differs
            # between bands (a reference wrong in part of its length) on their own noise
            profiles = [whole] + [np.asarray(band, np.float64) - whole for band in bands]
            found = []
            lines = whole.size
            min_z = float(-ndtri(alpha / (2.0 * len(profiles) * lines)))
            for profile in profiles:
                if profile.size < 4 * EDGE_LINES or not np.isfinite(profile).any():
                    continue
                profile = np.where(np.isfinite(profile), profile, np.nanmedian(profile))
                found.extend(_segmented_steps(profile, min_step, min_z, most))
            out[axis] = _merged_boundaries(found)
    return out


def _merged_boundaries(found):
    """One boundary for each group of boundaries found within each other's reach (in
    several bands): the strongest's line, and a reach that holds every line of the group."""
    merged = []
    for boundary in sorted(found, key=lambda b: -b.z):
        if any(abs(boundary - other) <= max(boundary.reach, other.reach) for other in merged):
            continue
        group = [b for b in found if abs(b - boundary) <= max(b.reach, boundary.reach)]
        reach = max(abs(int(b) - int(boundary)) + b.reach for b in group)
        merged.append(ReadoutBoundary(boundary, min(reach, MAX_REACH), boundary.z))
    return sorted(merged)


#: the flat field's polynomial degree. Each sector's level is free, so any smooth term is
#: nearly a staircase of them: a more flexible flat field (cubic B-splines every 192 lines)
#: leaves a step between two 128-line sectors 14 lines' worth of evidence of their 64,
#: a quadratic about 35
FLAT_FIELD_DEGREE = 2

#: a step is looked for at least this many lines from a profile's ends (a detector's first
#: and last lines often roll off), and must rest on at least this many lines' worth of
#: evidence once the flat field and the other steps are fitted
EDGE_LINES = 8


def smooth_basis(lines, degree=FLAT_FIELD_DEGREE):
    """(lines, degree + 1) Legendre polynomials over the lines: the flat field (the beam's
    illumination, a bowl over the frame), which a step sharp to the line is not."""
    t = np.linspace(-1.0, 1.0, lines)
    return np.polynomial.legendre.legvander(t, int(degree))


#: the other flat field tried: cubic B-splines over this many intervals of the lines (a beam
#: narrower than the frame, a bump a third of it across)
SPLINE_INTERVALS = 8


@lru_cache(maxsize=8)
def spline_basis(lines, intervals):
    """(lines, intervals + 3) cubic B-splines with ``intervals`` equal knot intervals (made
    once for every profile of that length; read only)."""
    from scipy.interpolate import BSpline
    inner = np.linspace(0.0, lines - 1.0, int(intervals) + 1)
    knots = np.concatenate([[inner[0]] * 3, inner, [inner[-1]] * 3])
    basis = BSpline.design_matrix(np.arange(lines, dtype=np.float64), knots, 3).toarray()
    basis.flags.writeable = False
    return basis


def _step_scan(design, profile):
    """For a step between lines x - 1 and x at every x, with the columns of ``design``
    fitted beside it: (height, the lines' worth of evidence n: its error is sigma /
    sqrt(n)). The step's column H_x (1 from x on) less its projection on the design,
    h_x, gives height = sum(r over x..) / |h_x|^2 and |h_x|^2 = (L - x) - |Q^T H_x|^2,
    with r the profile's residual and Q an orthonormal basis of the design: two
    cumulative sums, all lines at once."""
    q, _ = np.linalg.qr(design)
    residual = profile - q @ (q.T @ profile)
    tail = np.cumsum(residual[::-1])[::-1]
    projected = np.cumsum(q[::-1], axis=0)[::-1]
    lines = profile.size
    norm = (lines - np.arange(lines)) - np.sum(projected ** 2, axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        height = np.where(norm > 1e-9, tail / norm, 0.0)
    return height, np.maximum(norm, 0.0)


def _step_column(lines, line):
    column = np.zeros(lines)
    column[line:] = 1.0
    return column


def _segmented_steps(profile, min_step, min_z, most):
    """The boundaries of one profile (:func:`reference_boundaries`): sorted
    :class:`ReadoutBoundary` lines.

    Forward: the line whose step, fitted beside the flat field (:func:`smooth_basis`) and
    the boundaries found so far, stands highest in its own error (:func:`_step_scan`) is
    added while it stands ``min_z`` and ``min_step`` high. Backward: with all of them
    fitted together, the weakest is dropped while it stands below them (a step taken for
    two, a narrow sector's pair found as one)."""
    lines = profile.size
    pattern = _summed_noise(profile)
    # a bad line (a dead or hot column of the reference) is not a step: clipped to its
    # neighbours' running median, 5 yardsticks at most
    local = median_filter(profile, size=5, mode='nearest')
    profile = np.clip(profile, local - 5 * pattern, local + 5 * pattern)
    best = None
    for smooth in (smooth_basis(lines), spline_basis(lines, SPLINE_INTERVALS)):
        chosen = _forward(profile, smooth, pattern, min_step, min_z, most)
        chosen = _pruned(profile, smooth, chosen, pattern, min_z, min_step)
        design = np.column_stack([smooth] + [_step_column(lines, b) for b in chosen])
        residual = profile - design @ np.linalg.lstsq(design, profile, rcond=None)[0]
        # Schwarz's criterion; a step costs its height and the line it was searched for
        # over all lines: 3 log L (the modified criterion of change points, Zhang and
        # Siegmund 2007), so that a flat field's shoulders are not bought as steps
        score = lines * np.log(max(float(np.mean(residual ** 2)), 1e-30)) \
            + (smooth.shape[1] + 3 * len(chosen)) * np.log(lines)
        if best is None or score < best[0]:
            best = (score, smooth, chosen)
    return sorted(_placed(profile, best[1], best[2], pattern))


def _forward(profile, smooth, pattern, min_step, min_z, most):
    """The boundaries added one at a time beside the flat field ``smooth``
    (:func:`_segmented_steps`)."""
    lines = profile.size
    testable = np.zeros(lines, bool)
    testable[EDGE_LINES:lines - EDGE_LINES + 1] = True
    # the design's orthonormal basis grown a column a step (Gram-Schmidt), and with it the
    # residual and the tail sums of :func:`_step_scan`
    q = np.linalg.qr(smooth)[0]
    residual = profile - q @ (q.T @ profile)
    projected = np.sum(np.cumsum(q[::-1], axis=0)[::-1] ** 2, axis=1)
    chosen = []
    for _ in range(most):
        norm = np.maximum((lines - np.arange(lines)) - projected, 0.0)
        tail = np.cumsum(residual[::-1])[::-1]
        with np.errstate(invalid='ignore', divide='ignore'):
            height = np.where(norm > 1e-9, tail / norm, 0.0)
        z = np.abs(height) * np.sqrt(norm) / pattern
        z = np.where(testable & (norm >= EDGE_LINES), z, 0.0)
        for b in chosen:
            z[max(0, b - 1):b + 2] = 0.0
        best = int(np.argmax(z))
        if not (z[best] > min_z and abs(height[best]) > min_step):
            break
        chosen.append(best)
        column = _step_column(lines, best)
        for _ in range(2):   # twice: Gram-Schmidt keeps its columns orthogonal so
            column = column - q @ (q.T @ column)
        column /= np.linalg.norm(column)
        q = np.column_stack([q, column])
        residual = residual - column * (column @ residual)
        projected = projected + np.cumsum(column[::-1])[::-1] ** 2
    return chosen


#: lines per block in the yardstick's block means (:func:`_summed_noise`)
NOISE_BLOCK = 8


def _summed_noise(profile, block=NOISE_BLOCK):
    """The noise of one line as a sum over many lines sees it: sqrt(block / 2) times the
    robust spread of the differences of neighbouring ``block``-line means. A step's height
    is a difference of means over tens of lines: noise correlated between neighbouring lines
    (a pixel texture a line or two across, in a band's median) adds to it, which the
    differences of neighbouring lines alone would not show (white noise: the same)."""
    usable = profile.size // block * block
    means = profile[:usable].reshape(-1, block).mean(axis=1)
    differences = np.diff(means)
    if differences.size < 8:
        differences = np.diff(profile) / np.sqrt(block)
    spread = 1.4826 * np.median(np.abs(differences - np.median(differences)))
    return max(float(spread * np.sqrt(block / 2.0)), 1e-12)


def _pruned(profile, smooth, chosen, pattern, min_z, min_step):
    """The boundaries that still stand ``min_z`` and ``min_step`` high when all are fitted
    together, the weakest dropped one at a time."""
    lines = profile.size
    chosen = list(chosen)
    while chosen:
        steps = np.column_stack([_step_column(lines, b) for b in chosen])
        design = np.column_stack([smooth, steps])
        coefficients, *_ = np.linalg.lstsq(design, profile, rcond=None)
        covariance = np.linalg.pinv(design.T @ design)
        k = smooth.shape[1]
        heights = coefficients[k:]
        errors = pattern * np.sqrt(np.maximum(np.diag(covariance)[k:], 1e-30))
        z = np.abs(heights) / errors
        weakest = int(np.argmin(np.where(np.abs(heights) > min_step, z, 0.0)))
        if z[weakest] > min_z and abs(heights[weakest]) > min_step:
            break
        chosen.pop(weakest)
    return chosen


def _placed(profile, smooth, chosen, pattern):
    """Each boundary with its z and its reach: the lines near it whose step, fitted with the
    others, fits worse than its own by less than REACH_CHI2 (at most MAX_REACH)."""
    lines = profile.size
    out = []
    for b in chosen:
        others = [_step_column(lines, o) for o in chosen if o != b]
        height, norm = _step_scan(np.column_stack([smooth] + others), profile)
        z = np.abs(height) * np.sqrt(norm) / pattern
        near = np.arange(max(1, b - MAX_REACH), min(lines, b + MAX_REACH + 1))
        close = near[z[near] ** 2 >= z[b] ** 2 - REACH_CHI2]
        reach = int(max(1, np.max(np.abs(close - b)))) if close.size else 1
        out.append(ReadoutBoundary(b, reach, z[b]))
    return out


def detrended_step(window):
    """Weights over lines -window..window-1 that give the height of a step between -1 and 0
    in a model (level, slope, step): least squares."""
    t = np.arange(-window, window) + 0.5
    design = np.stack([np.ones_like(t), t, (t > 0).astype(np.float64)], axis=1)
    return np.arange(-window, window), np.linalg.pinv(design)[-1]
