"""The detector's readout boundaries, as a gain reference shows them.

A reference is measured with far more electrons than a movie: its own profiles
show where the detector's readout sectors meet (:func:`reference_boundaries`).
A wrong reference is most likely wrong there, so the step tests of one movie
(:mod:`.steps`) look at those lines, give or take each boundary's ``reach``
(:class:`ReadoutBoundary`, :func:`boundary_lines`).
"""
import numpy as np

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
MAX_REACH = 4


#: a reference is searched for steps over its whole length and in this many bands of it: a
#: sector whose reference is wrong in part of its length steps the other way there, and
#: the profile over the whole length can lose its boundary (a median between two levels)
REFERENCE_BANDS = 8


def reference_boundaries(reference, window=96, min_step=0.01, min_z=6.0, most=32):
    """Lines where a gain reference itself steps: the detector's readout boundaries.

    A reference is measured with far more electrons than a movie, so its own
    profiles show the detector's sector boundaries: the mean level of the
    lines changes there and stays changed for hundreds of lines. Along each
    direction the profile (median over the other direction, robust to
    defects) is compared ``window`` lines on each side of every line, each
    side's linear trend removed (the flat field: the least-squares step of a
    (level, slope, step) model); what the reference's line-to-line pattern
    alone gives that comparison (the pattern's RMS, from the differences of
    neighbouring lines, times the weights' norm) is the yardstick. Boundaries
    are taken one at a time, strongest first, each subtracted from the profile
    before the next is looked for (a step seen through a detrended window also
    answers, weaker, about 2/3 of a window away: those echoes went with it),
    while one stands ``min_z`` times the yardstick and ``min_step`` high.

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
            profiles = [median(lines_first[:, a:b], axis=1) for a, b in zip(cuts, cuts[1:])
                        if b - a >= 8]
            profiles.append(median(lines_first, axis=1, overwrite_input=True))
            del lines_first
            found = []
            for profile in profiles:
                profile = np.asarray(profile, np.float64)
                w = int(min(window, profile.size // 4))
                if w < 8 or not np.isfinite(profile).any():
                    continue
                profile = np.where(np.isfinite(profile), profile, np.nanmedian(profile))
                found.extend(_strongest_steps(profile, w, min_step, min_z, most))
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


def _strongest_steps(profile, w, min_step, min_z, most):
    """The boundaries of one profile, strongest first, each subtracted before the next
    (:func:`reference_boundaries`): sorted :class:`ReadoutBoundary` lines."""
    offsets, weights = detrended_step(w)
    differences = np.diff(profile)
    pattern = 1.4826 * np.median(np.abs(differences - np.median(differences))) / np.sqrt(2)
    spread = pattern * float(np.sqrt(np.sum(weights ** 2)))
    rest, found = profile.copy(), []
    for _ in range(most):
        steps = np.correlate(rest, weights, mode='valid')   # boundary at x: lines x-w..x+w-1
        best = int(np.argmax(np.abs(steps)))
        if not abs(steps[best]) > max(min_z * spread, min_step):
            break
        line = w + best
        # the step's z at each line near it: chi-square worse than the best by z_best^2 - z^2
        z = np.abs(steps[max(0, best - MAX_REACH):best + MAX_REACH + 1]) / max(spread, 1e-30)
        near = np.flatnonzero(z ** 2 >= z.max() ** 2 - REACH_CHI2) + max(0, best - MAX_REACH)
        reach = int(max(1, np.max(np.abs(near - best))))
        found.append(ReadoutBoundary(line, reach, z.max()))
        rest[line:] -= steps[best]
    return sorted(found)


def detrended_step(window):
    """Weights over lines -window..window-1 that give the height of a step between -1 and 0
    in a model (level, slope, step): least squares."""
    t = np.arange(-window, window) + 0.5
    design = np.stack([np.ones_like(t), t, (t > 0).astype(np.float64)], axis=1)
    return np.arange(-window, window), np.linalg.pinv(design)[-1]
