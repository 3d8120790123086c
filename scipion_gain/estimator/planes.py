"""The map's plane: the one part of a movie's line structure that an ice ramp imitates exactly.

Why. The robust estimate (:mod:`.specimen`) keeps in the map what is the same along
whole lines: the detector's readout sectors, column and row factors, and the part of
its smooth field that is a row profile times a column profile. A thickness ramp of
the ice is, in log intensity, a plane a + b x + c y, which is exactly such a sum of a
row profile and a column profile: the line profiles take it whole, and one movie
cannot tell it from a planar field of the detector (the frames are ideal x G; a ramp
of the specimen and a ramp of G give the same counts, the same Poisson statistics
and the same particles). Measured on sessions whose ice is a steep ramp (10-25 %
across the frame at any angle, ``benchmarks/accuracy.py --gain-rows --ice steep``,
1024 x 1024 x 20, 12 movies), with the whole plane kept: per-movie R^2 to the true gain
0.653 without an edge (0.728 the worst edge movie's share of it), and with the exact
reference a residual std of 0.023 against 0.012 on the usual ice.

What statistics can tell. Write the map's log plane (its x and y slopes across the
frame) as p = d + r: d the detector's plane, r the specimen's ramp. With priors
d ~ N(0, s_d^2) and r ~ N(0, ICE_RAMP^2) per axis, the posterior mean of d given one
movie's p is k p per axis, k = s_d^2 / (s_d^2 + ICE_RAMP^2) (Wiener): the movie's map
keeps k of its plane (:func:`plane_factor` of one plane). Across the rows s_d is a
smooth field's, DETECTOR_PLANE (k 0.30); across the columns the detector's readout
sectors (column blocks whose levels differ by several %) tilt it too, SECTOR_PLANE
beside it (k 0.73). In residual mode the frames were corrected by a reference, whose
sectors they are: a plane left is the reference's error or the ramp, and the smooth
field's prior holds on both axes (k 0.30).

In a session the detector's plane is the same in every movie and the ramps point
anywhere: the session's map (the ratio of its sums) holds the weighted mean of the
movies' planes, d plus the mean of the ramps, whose variance is the ramps' over the
effective number of movies n. Both variances are learned from the movies' planes
(:func:`plane_factor`): the ramps' from the planes' scatter about their mean, the
detector's from the mean's square beyond that noise, each pooled with its prior
(PRIOR_DEGREES degrees of freedom against the scatter's 2 (n - 1): one movie is the
prior alone, since there d and r are one number). The share kept rises toward 1 as
movies are added and the detector's own plane comes back
(:class:`.gain.GainAccumulator`). Nothing but the plane is changed: the sectors' steps,
the lines' pattern, the pixel term and the map's mean are the movie's.

The priors. ICE_RAMP is the RMS per axis of the log slope of the ice in
:func:`scipion_gain.simulate.random_specimen` (2 to 20 % peak to peak, log-uniform, a
random mix of a field and a ramp at any angle: 0.046 measured on 300 draws; steep
ramps of 10-25 % give 0.099). DETECTOR_PLANE, 0.03, is a planar field of 3 % across
the frame per axis (a flat-field blob of 2-10 % off centre gives 0.01-0.03). The
benchmark's random detectors (``accuracy.session_gain``: 4 or 8 sectors of 3-10 %) have
planes of RMS 0.097 across the columns and 0.018 across the rows (200 draws). On eight
512 px sessions of the usual ice (benchmark detectors, seeds 2-9, the whole plane kept
0.763 mean per-movie R^2; the shares applied to the maps afterwards) these shares gave 0.782 (one share of 0.3 on both axes:
0.766, and 0.733 instead of 0.827 on the detector whose sectors tilt most); on two
sessions of steep ramps 0.62-0.63 against 0.51-0.54 kept whole (0.65 with 0.3 on both
axes). What one movie loses: a detector's plane beyond the priors (a planar field
across the rows, or sectors tilted across the columns more than SECTOR_PLANE), kept at
the share k; only a session gives it back (a detector with an 8 % / 5 % planar field
beside its sectors, 512 px, little ice, tests/test_planes.py).
"""
import numpy as np

from .arrays import in_row_blocks
from .pixels import BLOCK_THREADS, LINE_AMPLITUDE, line_log_sums

#: RMS per axis of a detector's planar field (log, across the frame)
DETECTOR_PLANE = 0.03
#: RMS of the log slope across the columns that readout sectors (column blocks) give: K
#: sectors whose levels scatter by 5 % tilt the map by sqrt(12 K / (K^2 - 1)) x 0.05,
#: 0.089 for 4 sectors, 0.062 for 8
SECTOR_PLANE = 0.07
#: RMS per axis of an ice ramp (log, across the frame): the specimens of simulate.random_specimen
ICE_RAMP = 0.046
#: the prior ramp variance counts as this many degrees of freedom beside a session's scatter
#: (each movie's plane beyond the first gives 2: its x and y slopes)
PRIOR_DEGREES = 4.0
#: rows a block (no frame-sized float64 temporaries)
BLOCK = 256


def _slope(sums, counts):
    """The weighted least-squares slope of line means (sums / counts, weights counts) against
    the line's place across the frame (-1/2 .. 1/2): the log change across the frame."""
    counts = np.asarray(counts, np.float64)
    kept = counts > 0
    if kept.sum() < 3:
        return 0.0
    n = counts.size
    x = (np.arange(n) - (n - 1) / 2.0) / n
    means = np.where(kept, sums / np.maximum(counts, 1.0), 0.0)
    centre = float((counts * x).sum() / counts.sum())
    spread = float((counts * (x - centre) ** 2).sum())
    return float((counts * (x - centre) * means).sum() / spread) if spread > 0 else 0.0


def map_plane(values, defects=None, denominator=None):
    """(x slope, y slope) of a map's log (``denominator``: of denominator / ``values``) over
    its good pixels, from its column and row means: the log change across the frame."""
    column_sums, column_counts, row_sums, row_counts = line_log_sums(values, defects,
                                                                     denominator=denominator)
    return _slope(column_sums, column_counts), _slope(row_sums, row_counts)


def profile_plane(profile):
    """(x slope, y slope) of a movie's line profiles (:func:`.specimen.map_profile`)."""
    return tuple(_slope(np.asarray(p, np.float64), np.ones(len(p))) for p in profile[:2])


def plane_factor(planes, weights=None, sectors=True):
    """The shares (k_x, k_y) of its plane that a map of these movies keeps (module
    docstring): ``planes`` the movies' (x, y) slopes, ``weights`` their weights in the
    session's sums (None: 1); ``sectors`` False for a residual (frames corrected by a
    reference: its sectors' levels are the reference's, and a plane left is its error)."""
    planes = np.asarray(planes, np.float64).reshape(-1, 2)
    weights = np.ones(len(planes)) if weights is None else np.asarray(weights, np.float64)
    total = float(weights.sum())
    if not len(planes) or total <= 0:
        return 1.0, 1.0
    effective = total ** 2 / float((weights ** 2).sum())
    mean = (weights[:, None] * planes).sum(axis=0) / total
    degrees = max(effective - 1.0, 0.0)           # the scatter's, per axis
    scatter = float((weights[:, None] * (planes - mean) ** 2).sum()) / total * effective
    # the priors in the map's units: it holds line structure, ramps and fields alike, at
    # about LINE_AMPLITUDE of their size (pixels.py), and so do the movies' planes
    # (ramps: the same in x and y, pooled over both axes)
    ramp = (PRIOR_DEGREES * (LINE_AMPLITUDE * ICE_RAMP) ** 2 + scatter) / \
        (PRIOR_DEGREES + 2.0 * degrees)
    noise = ramp / effective          # the variance of the mean plane, per axis
    across_columns = SECTOR_PLANE ** 2 if sectors else 0.0
    prior = LINE_AMPLITUDE ** 2 * np.array([DETECTOR_PLANE ** 2 + across_columns,
                                            DETECTOR_PLANE ** 2])
    # the detector's plane: the mean plane's square beyond its noise, as many degrees of
    # freedom as the scatter has (none for one movie: there d and r are one number)
    shared = np.maximum(mean ** 2 - noise, 0.0)
    half = PRIOR_DEGREES / 2.0
    detector = (half * prior + degrees * shared) / (half + degrees)
    return tuple(float(k) for k in detector / (detector + noise))


def shrink_plane(correction, defects, factor, plane=None):
    """``correction`` (float32, changed in place and returned) with (1 - ``factor``) of its log
    plane (``plane``, or its own :func:`map_plane`) taken out, mean 1 over the good pixels
    again (defects keep their value); ``factor``: one share, or (x, y) shares."""
    factor_x, factor_y = (factor, factor) if np.isscalar(factor) else factor
    if factor_x >= 1.0 and factor_y >= 1.0:
        return correction
    slope_x, slope_y = map_plane(correction, defects) if plane is None else plane
    height, width = correction.shape
    x = (np.arange(width) - (width - 1) / 2.0) / width * slope_x * (1.0 - factor_x)
    y = (np.arange(height) - (height - 1) / 2.0) / height * slope_y * (1.0 - factor_y)
    # the plane is separable: its factor is an outer product, no exponential per pixel
    across = np.exp(-x).astype(np.float32)
    down = np.exp(-y).astype(np.float32)

    def scaled(rows, factor):
        """The block ``rows`` times ``factor`` where good (defects keep their value): its
        good pixels' sum and count."""
        block = correction[rows]
        bad = None if defects is None else np.asarray(defects[rows], bool)
        kept = block[bad] if bad is not None and bad.any() else None
        block *= factor
        if kept is None:
            return float(block.sum(dtype=np.float64)), block.size
        block[bad] = kept
        return (float(block.sum(dtype=np.float64)) - float(kept.sum(dtype=np.float64)),
                block.size - kept.size)

    # the blocks on BLOCK_THREADS threads, their sums added in the blocks' order
    sums = in_row_blocks(lambda rows: scaled(rows, np.multiply.outer(down[rows], across)),
                         height, BLOCK, BLOCK_THREADS)
    total, count = sum(s for s, _ in sums), sum(n for _, n in sums)
    if count and total > 0:
        scale = np.float32(count / total)
        in_row_blocks(lambda rows: scaled(rows, scale), height, BLOCK, BLOCK_THREADS)
    return correction
