"""A blind gain estimate that the specimen cannot spoil: SME on the specimen-flattened sum.

Why. The paper's SME (Sorzano et al. 2018, Eqs. 1-6) assumes that every row
and every column of a frame share one histogram. A carbon or gold edge, a hole,
a contamination blob or an ice ramp gives the lines that cross it other
histograms, and equalization turns the specimen into row and column stripes
of the map (a movie with a carbon edge: R^2 to the true gain near 0).

The frames are ideal x G: the specimen is shared by all frames, G is fixed to
the pixel grid. The movie's sum S = N x specimen x G. What we do:

1. **The gain's line profiles at every scale**, told from the specimen by
   where they live: a column factor is the same in every row (a readout
   sector's step too), a specimen edge crosses each row at its own place.
   Rows are grouped in bands; each band's log column profile is the column
   profile plus the specimen's level in the band. Where the specimen has an
   edge in a band (a step of the band's profile that the other bands do not
   share: :func:`specimen_cuts`), the band's profile is cut there and each
   piece gets its own offset, so a carbon plateau, a hole or a gold foil
   enters only as offsets. The column profile is the least-squares fit of all
   pieces with free offsets, weighted by their counts (:func:`line_profile`);
   rows likewise. Pieces, not differences: the profile's low frequencies are
   pinned by whole pieces, so its noise does not add up along the line.
2. **The specimen model**: S with those line profiles divided out, median
   filtered over ``window`` pixels (:func:`specimen_model`). The median keeps
   straight edges at any angle and the ice, and cannot show a one-pixel line
   pattern (it moves the median by about 1 / window of its size); since the
   line profiles were divided out first, it does not hold the sectors either.
3. **SME on the flattened sum** (the paper's verb, ``sme_frame``, on one
   image: the sum of counts is what the frames know of the per-pixel rate).
   Counting sums are *thinned* to one level: each count kept with probability
   (model's low percentile) / model, so every pixel holds Poisson counts of one
   rate times its gain (thinning a Poisson count by p gives a Poisson count of
   rate times p); other sums are divided by the model (F = S / model). The
   lines of F share one histogram again, and the correction is SME(F) / F
   (Eq. 7, one iteration). Measured on the checker's carbon movie (512 px,
   transmission 0.51 over 37 % of the frame): R^2 0.19 divided, 0.49 thinned
   (its ice movie 0.60 / 0.63). A draw is random; the sums are not drawn but
   their expectation over all draws (:func:`_expected_sums`): the SME's tables
   of one draw (thinned to at most THINNED_COUNTS counts a pixel, so that its
   levels do not grow with the frames) applied to each pixel's binomial law.
4. **Each pixel's own gain** (:mod:`.pixels`): SME equalizes lines, so the map of
   step 3 holds a pixel's own gain only through its tables' nonlinearity at low
   counts (high-passed R^2 0.09 on a detector with 10 % pixel texture). Given the
   specimen's local level (the corrected sum's mean over a ring about the pixel), a
   pixel's counts give its maximum-likelihood gain; it is shrunk toward the lines of
   the map of step 3 (:func:`.pixels.line_prior`) by the Wiener factor of the texture variance the data show beyond their
   Poisson variance (none with the exact reference). Pixels next to a specimen edge
   the ring cannot follow, under gold, or not estimable get no term from the movie.
   Whole counts only (the Poisson variance of integrating frames is not known here).

What a single movie cannot tell. A smooth field the same shape as a thickness
gradient of the ice is the specimen's as much as the detector's: the line
profiles keep the smooth part that is the same along whole lines (as the paper
does: an ice ramp along the columns is taken as a column gradient), and a
smooth field that is not line-separable (part of a flat-field blob) is divided
out with the specimen. Of what the lines keep, the plane is what a thickness ramp of the
ice imitates exactly: the map keeps the share of it that a prior on detector fields and
ice ramps gives (:mod:`.planes`), a session the share its movies' planes tell. A
straight edge close to a pixel axis (its step shared by
all bands of coarse cells) is told from a readout step band by band at full
resolution (:func:`sloped_edges`): a readout step sits on one pixel line over
its whole extent, an edge 0.5 degrees off moves 9 pixels over 1024 lines. An
edge on a pixel axis to within a pixel over the frame is kept as a readout step.
Pixels under a nearly opaque specimen (gold foil) are returned as not estimable
(the result's ``defects``): the movie holds no pixel detail there. A session
tells both apart (specimens move, the detector does not): see
:mod:`.session` and :class:`.gain.GainAccumulator`.

Pure functions of NumPy arrays; the frames are read by :func:`.gain.estimate_gain`.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from .arrays import to_numpy
from .estimate import GainResult, correction_from_sums
from .planes import map_plane, plane_factor, shrink_plane
from .pixels import (SumCounts, log_blocks, line_log_sums, line_prior, local_level,
                     pixel_detail)
from .sme import DEFAULT_SIGMA_GRID, scaled_count_tables, sme_frame
from .transfer import FrameUploader

#: a cell of the coarse grid (where specimen edges are found) holds at least this many
#: counts, so that its log has a relative noise of about 2 % (1 % after the 3 x 3 median:
#: a carbon edge changes the level by 15 % or more); smaller cells tell more edges from
#: the pixel axes (an edge must cross about a cell over the frame)
CELL_COUNTS = 2500.0
#: a step of a band's profile is the specimen's when it stands this many robust
#: standard deviations off what all bands share (a false cut costs little: a piece less)
CUT_Z = 5.0
#: a straight edge whose path over the frame moves at most this many cells is traced band
#: by band (:func:`sloped_edge_cuts`); steeper ones move from cell to cell
SLOPED_CELLS = 6
#: a step is an edge's, not the detector's, when a sloped path explains the bands' step
#: scores better than one pixel line by SLOPE_Z^2 (a log-likelihood ratio of SLOPE_Z^2 / 2)
SLOPE_Z = 8.0
#: bands cut along a traced edge: those whose step score there exceeds BAND_STEP_Z (and
#: their neighbours)
BAND_STEP_Z = 3.0
MAX_SLOPED_EDGES = 8   # edges traced per axis at most
#: the median of the specimen model: pixels across (at full resolution)
MODEL_WINDOW = 21
#: ... taken on cells of this many pixels a side (the model is constant over a cell)
MODEL_CELL = 4
#: the line fit: a residual this many robust standard deviations off (a hot pixel in a
#: band) is left out; the penalty on the profile's steps, in one column's weight (it
#: decides only where no piece links the two sides)
OUTLIER_Z = 5.0
SMOOTHNESS = 1e-3
#: a gap that no piece spans is levelled by the mean of this many columns either side
GAP_SIDE = 16
#: a pixel whose specimen passes less than 1 / DIM of the typical level is left to its lines
DIM = 4.0
#: counting sums are thinned to one level (binomial), not divided: the SME's tables come
#: from one draw of at most THINNED_COUNTS counts per pixel on average (its levels, hence
#: the SME's pair tables, do not grow with the frames) and the sums are their expectation
#: over all draws (:func:`_expected_sums`); where the tables cannot be had, the sums of
#: THINNING_DRAWS draws
THINNED_COUNTS = 16.0
THINNING_DRAWS = 8
#: the weight of a stand-in pixel in a session's sums (one movie's map is the ratio: unchanged)
STAND_IN_WEIGHT = 1e-3
#: pieces whose columns enter one dense product of the line fit (memory: length x this x 8 B)
PIECES_PER_PRODUCT = 1024
#: rows of the offsets' elimination product (x x^T) made at once (memory: this x length x 8 B)
PRODUCT_ROWS = 512
#: the line fit eliminates the profile (its offsets' dense system: pieces^2 x 8 B, and
#: B dense: length x pieces x 8 B) up to this many weighted pieces, else the offsets
PIECES_BY_PROFILE = 1024



def coarse_bin(shape, counts_per_pixel):
    """Side of the coarse cells: each holds about CELL_COUNTS counts, 4 to 1/16 of the frame."""
    need = np.sqrt(CELL_COUNTS / max(float(counts_per_pixel), 1e-6))
    side = int(np.ceil(max(need, 4.0)))
    return int(min(side, max(4, min(shape) // 16)))


def _too_small_for_cells(total):
    """Why the frame cannot hold the specimen model's coarse grid, or '' when it can.
    The cuts and the band fits need 16 cells a side, each of about CELL_COUNTS counts;
    a smaller frame (or one with fewer counts) leaves cells too noisy to tell an edge
    from shot noise, and the thinned sum's few counts give single pixels far off (a
    64 x 64 x 6 movie at 2 e/px/frame: residual of the exact reference up to 2.5
    against 1.5 for the paper's SME)."""
    per_pixel = counts_per_pixel(total)
    need = int(np.ceil(max(np.sqrt(CELL_COUNTS / max(per_pixel, 1e-6)), 4.0)))
    if min(total.shape) >= 16 * need:
        return ''
    return (f"{total.shape[1]} x {total.shape[0]} pixels at about {per_pixel:.0f} counts per "
            f"pixel cannot hold 16 cells of {need} x {need} pixels a side for its specimen model")


def counts_per_pixel(total):
    """Electrons per pixel the sum holds, from its own noise: mean^2 / variance of the
    differences of neighbouring pixels (halved), the shot-noise count of Poisson data.
    Counting sums give about their mean; integrating sums in ADU give their electrons
    (less: the deposit's spread adds variance), whatever the ADU per electron."""
    step = max(1, min(np.shape(total)) // 512)
    sample = np.asarray(total[::step, ::step], np.float64)
    difference = np.diff(sample, axis=1)
    spread = 1.4826 * float(np.median(np.abs(difference - np.median(difference))))
    variance = spread * spread / 2.0
    level = float(np.median(sample))
    return level * level / variance if variance > 0 else max(level, 1.0)


def _binned(values, size):
    """Sums over size x size cells (the last partial cells dropped)."""
    rows, cols = values.shape[0] // size, values.shape[1] // size
    return values[:rows * size, :cols * size].reshape(rows, size, cols, size).sum(axis=(1, 3))


def specimen_cuts(total, size):
    """Where the specimen has an edge: (cut_x, cut_y) on the coarse grid of ``size`` cells.

    ``cut_x[i, j]`` is True when the step between cells (i, j) and (i, j+1) is
    not what all rows of cells share: the log of the cells (median filtered
    3 x 3: particles and noise) differenced along the rows, less the median of
    that difference over all rows (a readout step, a column gradient: the
    gain's, kept), is more than CUT_Z robust standard deviations off zero.
    ``cut_y`` likewise down the columns.
    """
    cells = _binned(np.asarray(total, np.float64), size)
    level = np.log(np.maximum(cells, 1e-3 * max(float(np.median(cells)), 1e-12)))
    level = ndimage.median_filter(level, size=3, mode='nearest')
    cuts = []
    for axis in (1, 0):
        step = np.diff(level, axis=axis)
        shared = np.median(step, axis=1 - axis, keepdims=True)
        excess = step - shared
        spread = 1.4826 * float(np.median(np.abs(excess - np.median(excess))))
        cuts.append(np.abs(excess) > CUT_Z * max(spread, 1e-6))
    return cuts[0], cuts[1]


def band_sums(total, size, axis):
    """Sums of bands of ``size`` lines (``axis`` 1: bands of rows, 0: of columns), as
    (bands, line length) float64; the lines of a partial last band dropped. Each cell
    of a band of columns sums its row's pixels in memory order (no transposed copy of
    the frame)."""
    total = np.asarray(total, np.float64)
    height, width = total.shape
    if axis == 1:
        bands = height // size
        return total[:bands * size].reshape(bands, size, width).sum(axis=1)
    bands = width // size
    return np.ascontiguousarray(total[:, :bands * size].reshape(height, bands, size)
                                .sum(axis=2).T)


def band_steps(total, size, axis, sums=None):
    """Step scores of every band of ``size`` lines at full resolution: (z, width, logs).

    ``z[b, c]`` is the difference of the mean log-level of band b over the
    ``width`` = ``size`` pixels from c on and over the ``width`` pixels before c
    (a matched filter for a step between pixels c - 1 and c), in units of its
    own noise: the scatter of the log-levels that bands do not share (counts,
    particles, texture), measured as the robust spread of neighbouring bands'
    differences. ``sums``: :func:`band_sums` of the same, when they are at hand."""
    sums = band_sums(total, size, axis) if sums is None else sums
    bands = sums.shape[0]
    sums = np.maximum(sums, 0.5)
    logs = np.log(sums)
    # a log-count varies by 1 / counts; particles and texture add to that by a factor
    # measured on neighbouring bands' differences (their shared lines taken out)
    apart = np.diff(logs, axis=0)
    apart = apart - np.median(apart, axis=1, keepdims=True)
    expected = 1.0 / sums[1:] + 1.0 / sums[:-1]
    excess = max(float(np.median(apart * apart / expected)) / 0.4549, 1.0)  # chi2(1) median
    width = size
    length = logs.shape[1]
    running = np.concatenate([np.zeros((bands, 1)), np.cumsum(logs, axis=1)], axis=1)
    variance = np.concatenate([np.zeros((bands, 1)), np.cumsum(excess / sums, axis=1)], axis=1)
    z = np.zeros((bands, length))
    where = np.arange(width, length - width + 1)
    where = where[where < length]
    after = running[:, where + width] - running[:, where]
    before = running[:, where] - running[:, where - width]
    spread = np.sqrt(variance[:, where + width] - variance[:, where - width])
    z[:, where] = (after - before) / np.maximum(spread, 1e-12)
    return z, width, logs


def sloped_edges(total, size, axis, sums=None):
    """The straight specimen edges that lie close to a pixel axis (``axis`` 1: steps along
    the rows, edges near a column line): too close for the coarse cells to see them move
    from band to band, so that all bands share their step and they look like a readout
    step.

    What tells them apart: a detector step is fixed to one pixel line over its whole
    extent; a straight edge off the axis by an angle a crosses band b at
    c0 + b size tan(a). Every band's step score (:func:`band_steps`, squared: a
    log-likelihood ratio, free height per band) is summed along straight paths
    c0 + m (b - middle) / bands for every total movement m up to SLOPED_CELLS cells
    (a Radon transform of the scores); where the best path's sum beats the best
    path on one pixel line nearby (m = 0) by more than SLOPE_Z^2, the step moves
    and is the specimen's. Returns a list of (band, pixel, half width) arrays: the
    bands where the path's score is significant (and their neighbours), the path's
    pixel in each and how far the edge's blur reaches (:func:`_edge_reach`). An
    edge steeper than that moves by several cells and :func:`specimen_cuts` cuts it.
    ``sums``: :func:`band_sums` of the same, when they are at hand.
    """
    edges = []
    z, width, logs = band_steps(total, size, axis, sums)
    bands, length = z.shape
    if bands < 4 or length < 4 * width:
        return edges
    power = z * z
    reach = SLOPED_CELLS * size
    padded = np.zeros((bands, length + 2 * reach))
    padded[:, reach:reach + length] = power
    position = (np.arange(bands) - (bands - 1) / 2.0) / bands
    moves = np.arange(-reach, reach + 1)
    offsets = np.rint(moves[:, None] * position[None, :]).astype(int)   # (moves, bands)
    columns = np.arange(length)
    # the band's scores shifted by each move's offset, whole rows at a time: the moves that
    # shift a band alike (offsets rise with the move) take one row of the padded band
    score = np.zeros((moves.size, length))
    for band in range(bands):
        shift = offsets[:, band]
        starts = np.flatnonzero(np.r_[True, shift[1:] != shift[:-1]])
        for first, last in zip(starts, np.r_[starts[1:], moves.size]):
            start = reach + int(shift[first])
            score[first:last] += padded[band, start:start + length]
    straight = score[reach]                                               # m = 0
    best_move = np.argmax(score, axis=0)
    best = score[best_move, columns]
    open_ = best - bands > SLOPE_Z ** 2
    for _ in range(4 * MAX_SLOPED_EDGES):
        if not open_.any() or len(edges) >= MAX_SLOPED_EDGES:
            break
        centre = int(np.argmax(np.where(open_, best, -np.inf)))
        move = int(moves[best_move[centre]])
        # any one pixel line within the path's span (and a filter's width) explains less
        lo, hi = centre - abs(move) // 2 - width, centre + abs(move) // 2 + width + 1
        if best[centre] - straight[max(lo, 0):max(hi, 1)].max() > SLOPE_Z ** 2:
            edges.append(_traced(centre + np.rint(move * position).astype(int), power, logs,
                                 width))
            open_[max(lo - width, 0):max(hi + width, 0)] = False
        else:
            open_[max(centre - width, 0):centre + width + 1] = False
    return edges


def _traced(path, power, logs, width):
    """A traced edge: (bands, pixels, half width). The bands are those whose step score
    at the path's pixel exceeds BAND_STEP_Z, and the bands next to them."""
    bands, length = power.shape
    inside = (path >= 0) & (path < length)
    strong = np.zeros(bands, bool)
    strong[inside] = power[np.arange(bands)[inside], path[inside]] > BAND_STEP_Z ** 2
    strong = ndimage.binary_dilation(strong, iterations=1) & inside
    chosen = np.flatnonzero(strong)
    return chosen, path[chosen], _edge_reach(logs, chosen, path[chosen], width)


def _edge_reach(logs, bands, pixels, width):
    """How far from its path an edge's blur reaches (drift, a soft edge), in pixels: the
    bands' log-levels aligned on the path and averaged, smoothed over 3 pixels; the
    farthest pixel within ``width`` of the path that stands between 10 % and 90 % of the
    way from one plateau (``width`` to 2 ``width`` before the path) to the other, plus 2."""
    reach = 2 * width
    offsets = np.arange(-reach, reach)
    where = pixels[:, None] + offsets[None, :]
    valid = (where >= 0) & (where < logs.shape[1])
    values = np.where(valid, logs[bands[:, None], np.clip(where, 0, logs.shape[1] - 1)], 0.0)
    counted = np.maximum(valid.sum(axis=0), 1)
    aligned = ndimage.uniform_filter1d(values.sum(axis=0) / counted, 3, mode='nearest')
    before, after = np.median(aligned[:width]), np.median(aligned[-width:])
    if not abs(after - before) > 0:
        return width
    fraction = (aligned - before) / (after - before)
    between = (fraction > 0.05) & (fraction < 0.95) & (np.abs(offsets) <= width)
    return int(np.abs(offsets[between]).max() + 3) if between.any() else 3


def _exclude_along(excluded, edge, size):
    """A traced edge's exclusion (bands x pixels, in place): in each of its bands, the
    cells' gaps within 3 cells of the path (they were that edge's, seen on the coarse grid)
    give way to the pixels the edge's path and blur cover in any of its bands. Not the
    band's own pixels only: the two sides would then be linked by the few pixels that one
    band sees before the edge and another after it, with the edge's blur tail in them
    (measured: a 0.07 false step); across the gap the profile is the penalty's, no step."""
    chosen, pixels, reach = edge
    length = excluded.shape[1]
    chosen, pixels = pixels[chosen < excluded.shape[0]], chosen[chosen < excluded.shape[0]]
    chosen, pixels = pixels, chosen
    if not chosen.size:
        return
    lo, hi = max(int(pixels.min()) - reach, 0), min(int(pixels.max()) + reach, length)
    for band, pixel in zip(chosen, pixels):
        excluded[band, max(pixel - 3 * size, 0):min(pixel + 3 * size, length)] = False
        excluded[band, lo:hi] = True


def _exclude_across(excluded, edge, size):
    """A traced edge in the profile across it (bands x pixels, in place): the edge runs
    along the few bands it lies in, covering more or less of each as it moves, a ramp of
    their level that no other band shares; those bands are left out where it is in them
    (each band of the edge's own direction is ``size`` pixels of these bands' length)."""
    chosen, pixels, reach = edge
    for band, pixel in zip(chosen, pixels):
        first = max(int(pixel) - reach, 0) // size
        last = min((int(pixel) + reach) // size, excluded.shape[0] - 1)
        excluded[first:last + 1, band * size:(band + 1) * size] = True


def _gaps(cut, size, length, axis):
    """Full-resolution mask (bands x length) of the cells on either side of each cut of
    ``cut`` (bands of cells x steps along the line), widened by one cell for drift."""
    along = cut if axis == 1 else cut.T        # (bands, steps)
    bands, steps = along.shape
    cells = np.zeros((bands, steps + 1), bool)
    cells[:, :-1] |= along
    cells[:, 1:] |= along
    cells = ndimage.binary_dilation(cells, structure=np.ones((1, 3), bool))
    full = np.zeros((bands, length), bool)
    full[:, :cells.shape[1] * size] = np.repeat(cells, size, axis=1)
    return full


def line_profile(logs, weights, excluded):
    """The profile shared by all bands: log-levels ``logs`` (bands x length) = profile +
    an offset per piece, pieces being the runs of a band between ``excluded`` cells.

    Weighted least squares (``weights``: counts, the inverse variance of a
    log-count), solved exactly: the normal equations of profile and
    offsets are one sparse system, solved directly. Where no piece links two parts of the
    profile (a specimen edge crosses every band there), the data do not say
    how they stand: a weak penalty on the profile's differences (SMOOTHNESS of
    one column's weight) says "no step", the specimen's. Then cells more than
    OUTLIER_Z robust standard deviations off the fit (a hot pixel in a band)
    are left out and the fit is made again. Returns the profile (length,),
    mean 0 over the fitted columns (where no cell was fitted: what the penalty
    says, the line between its neighbours).
    """
    weights = np.where(excluded | ~np.isfinite(logs), 0.0, np.asarray(weights, np.float64))
    logs = np.where(weights > 0, logs, 0.0)
    bands, length = logs.shape
    starts = np.concatenate([np.ones((bands, 1), bool), excluded[:, 1:] != excluded[:, :-1]],
                            axis=1) | excluded
    piece = np.cumsum(starts.ravel()).reshape(bands, length) - 1
    n_pieces = int(piece.max()) + 1
    profile = np.zeros(length)
    for _ in range(2):
        profile, offsets = _solve_pieces(logs, weights, piece, n_pieces)
        error = (logs - offsets[piece] - profile[None, :]) * np.sqrt(weights)
        fitted = weights > 0
        spread = 1.4826 * float(np.median(np.abs(error[fitted]))) if fitted.any() else 0.0
        if not spread > 0:
            break
        weights = np.where(np.abs(error) > OUTLIER_Z * spread, 0.0, weights)
    profile = _level_across_gaps(profile, weights, piece, n_pieces)
    fitted = weights.sum(axis=0) > 0
    if fitted.any():
        profile -= profile[fitted].mean()
    return profile


def _level_across_gaps(profile, weights, piece, n_pieces):
    """The profile with the parts that no piece links (a run of columns cut in every band:
    an edge along the whole frame) set level with each other by the mean of GAP_SIDE
    columns either side of each gap, and the gap filled with that level.

    Within a part the data fix the profile up to a constant; between parts only the step
    penalty does, and it compares the two single columns at the gap's ends, whose own
    factors (a few % each) then become a step of the whole part (measured: 0.04 on an edge
    1.5 degrees off an axis). The mean of GAP_SIDE columns holds a column factor's
    scatter to a quarter. Parts that interleave are left as the penalty set them."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components
    bands, length = weights.shape
    linked = weights > 0
    rows, columns = np.nonzero(linked)
    graph = sparse.coo_matrix((np.ones(rows.size), (columns, length + piece[rows, columns])),
                              shape=(length + n_pieces, length + n_pieces))
    _, label = connected_components(graph, directed=False)
    fitted = linked.any(axis=0)
    part = np.where(fitted, label[:length], -1)
    runs = [(int(start), int(stop)) for start, stop in _runs(part)]
    parts = [part[start] for start, _ in runs]
    if len(runs) < 2 or len(set(parts)) != len(parts):
        return profile
    profile = profile.copy()
    for (start, stop), (next_start, next_stop) in zip(runs, runs[1:]):
        before = profile[max(start, stop - GAP_SIDE):stop]
        after = profile[next_start:min(next_stop, next_start + GAP_SIDE)]
        profile[next_start:] += before.mean() - after.mean()
        profile[stop:next_start] = before.mean()     # the gap: the level both sides share
    return profile


def _runs(part):
    """(start, stop) of the runs of equal labels >= 0 of ``part`` (-1: no label)."""
    edges = np.flatnonzero(np.diff(part) != 0) + 1
    bounds = np.r_[0, edges, part.size]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if part[a] >= 0]


def _solve_pieces(logs, weights, piece, n_pieces):
    """(profile, offsets) minimising sum w (log - profile - offset)^2 + the step penalty.

    The normal equations are [[A, B], [B^T, D]] [profile, offsets] = [r1, r2], with A the
    columns' weights plus the penalty (tridiagonal), D the pieces' weights (diagonal) and
    B the weight each piece puts on each column. One block is eliminated and the other's
    dense symmetric system solved by Cholesky: the profile (A is tridiagonal: A^-1 B is
    one banded solve), leaving the offsets' system (D - B^T A^-1 B) of the weighted
    pieces' size, when there are at most PIECES_BY_PROFILE of those (a 4096 x 4096
    sum: about 300, cut bands included: 0.02 s against 1 s for the profile's 4096 x 4096
    system); else the offsets (:func:`_eliminate_offsets`). The same solution either way
    (exact arithmetic; 1e-12 measured)."""
    bands, length = logs.shape
    flat_piece, flat_w = piece.ravel(), weights.ravel()
    piece_weight = np.bincount(flat_piece, flat_w, minlength=n_pieces)
    column_weight = weights.sum(axis=0)
    penalty = SMOOTHNESS * max(float(np.median(column_weight)), 1e-12)
    # the profile's mean is the offsets' to give: a ridge far below any weight pins it
    ridge = 1e-9 * penalty
    # a piece without weight (all its cells left out) is pinned at 0
    pinned = np.maximum(piece_weight, 1e-12)
    weighted = (weights * logs).ravel()
    column_rhs = weighted.reshape(bands, length).sum(axis=0)
    piece_rhs = np.bincount(flat_piece, weighted, minlength=n_pieces)
    steps = np.r_[1.0, 2.0 * np.ones(length - 2), 1.0] if length > 1 else np.zeros(1)
    diagonal = column_weight + ridge + penalty * steps
    column = np.tile(np.arange(length), bands)
    cells = np.flatnonzero((flat_w > 0) & (piece_weight[flat_piece] > 0))
    used = np.flatnonzero(piece_weight > 0)
    terms = (flat_piece, flat_w, column, cells, pinned, column_rhs, piece_rhs, diagonal,
             penalty)
    if used.size <= PIECES_BY_PROFILE:
        profile = _eliminate_profile(terms, used, length)
    else:
        profile = _eliminate_offsets(terms, length)
    offsets = (piece_rhs - np.bincount(flat_piece, flat_w * profile[column],
                                       minlength=n_pieces)) / pinned
    return profile, offsets


def _eliminate_profile(terms, used, length):
    """The profile of :func:`_solve_pieces` with the profile eliminated first: with A = L L^T
    (A tridiagonal: L lower bidiagonal, one banded Cholesky) and Y = L^-1 [B, r1] (one
    banded triangular solve for all columns of B), (D - Y_B^T Y_B) offsets = r2 - Y_B^T y_r
    (the weighted pieces only: the others' offsets are 0 and put nothing on the profile;
    Y_B^T Y_B is one symmetric product, half a general one's work), then
    profile = L^-T (y_r - Y_B offsets)."""
    from scipy import linalg
    from scipy.linalg import lapack
    flat_piece, flat_w, column, cells, pinned, column_rhs, piece_rhs, diagonal, penalty = terms
    index = np.searchsorted(used, flat_piece[cells])
    coupling = np.bincount(index * length + column[cells], flat_w[cells],
                           minlength=length * used.size).reshape(used.size, length).T
    lower = np.zeros((2, length))
    lower[0] = diagonal
    lower[1, :-1] = -penalty
    factor = linalg.cholesky_banded(lower, lower=True, check_finite=False)
    reduced, _ = lapack.dtbtrs(factor, coupling, uplo='L', overwrite_b=1)    # Y_B, in place
    reduced_rhs, _ = lapack.dtbtrs(factor, column_rhs[:, None], uplo='L')
    system = -(reduced.T @ reduced)
    system[np.diag_indices(used.size)] += pinned[used]
    rhs = piece_rhs[used] - reduced.T @ reduced_rhs[:, 0]
    try:
        offsets = linalg.solve(system, rhs, assume_a='pos', check_finite=False)
    except linalg.LinAlgError:      # positive definite in exact arithmetic; near-singular
        offsets = linalg.solve(system, rhs, assume_a='sym', check_finite=False)
    left = reduced_rhs[:, 0] - reduced @ offsets
    profile, _ = lapack.dtbtrs(factor, left[:, None], uplo='L', trans='T')
    return profile[:, 0]


def _eliminate_offsets(terms, length):
    """The profile of :func:`_solve_pieces` with the offsets eliminated first (D is
    diagonal): (A - B D^-1 B^T) profile = r1 - B D^-1 r2, a dense symmetric system of
    the profile's length, solved by Cholesky. B D^-1 B^T is one dense product (BLAS),
    PIECES_PER_PRODUCT pieces at a time so that its memory stays bounded. Written here
    rather than left to a sparse LU: a 4096-column profile with 13 000 pieces fills the
    column block densely in a poor order (5.5 s a solve, against about 2 s)."""
    from scipy import linalg
    flat_piece, flat_w, column, cells, pinned, column_rhs, piece_rhs, diagonal, penalty = terms
    reduced_rhs = column_rhs - np.bincount(column, flat_w * (piece_rhs / pinned)[flat_piece],
                                           minlength=length)
    # the system in Fortran order, solved in place: LAPACK takes it as it is (a C-ordered
    # one is copied, 128 MB at 4096 columns); made again for the fallback, which the
    # failed Cholesky leaves half overwritten
    try:
        return linalg.solve(_offsets_system(terms, length), reduced_rhs, assume_a='pos',
                            check_finite=False, overwrite_a=True)
    except linalg.LinAlgError:      # positive definite in exact arithmetic; near-singular
        return linalg.solve(_offsets_system(terms, length), reduced_rhs, assume_a='sym',
                            check_finite=False, overwrite_a=True)


def _offsets_system(terms, length):
    """A - B D^-1 B^T of :func:`_eliminate_offsets` (Fortran order)."""
    flat_piece, flat_w, column, cells, pinned, column_rhs, piece_rhs, diagonal, penalty = terms
    weighted_pieces, index = np.unique(flat_piece[cells], return_inverse=True)
    scale = flat_w[cells] / np.sqrt(pinned[flat_piece[cells]])
    system = np.zeros((length, length), order='F')
    for first in range(0, weighted_pieces.size, PIECES_PER_PRODUCT):
        chunk = (index >= first) & (index < first + PIECES_PER_PRODUCT)
        x = np.zeros((length, min(PIECES_PER_PRODUCT, weighted_pieces.size - first)))
        x[column[cells[chunk]], index[chunk] - first] = scale[chunk]
        # the product a band of PRODUCT_ROWS rows at a time: no second dense system (128
        # MB at 4096 columns) for x x^T; each band's entries are the whole product's
        for top in range(0, length, PRODUCT_ROWS):
            system[top:top + PRODUCT_ROWS] -= x[top:top + PRODUCT_ROWS] @ x.T
        del x
    system[np.diag_indices(length)] += diagonal
    neighbours = np.arange(length - 1)
    system[neighbours, neighbours + 1] -= penalty
    system[neighbours + 1, neighbours] -= penalty
    return system


def line_profiles(total, size=None):
    """(column profile, row profile): the log line structure of the sum ``total`` that
    every band of lines shares, with the specimen's edges cut out (see the module
    docstring, step 1). ``size``: the coarse cell (default :func:`coarse_bin`)."""
    total = np.asarray(total, np.float64)
    height, width = total.shape
    size = size or coarse_bin(total.shape, counts_per_pixel(total))
    cut_x, cut_y = specimen_cuts(total, size)
    # the bands' sums once for the edge search and the fit; one direction after the other:
    # in two threads their band scores and the fits' arrays (10-30 MB each at 4096, under
    # the allocator's mmap threshold) stay resident in the threads' heaps after they are
    # freed and add to the estimate's peak (measured: raw 4096 x 4096 x 10, +75 MB)
    sums = {axis: band_sums(total, size, axis) for axis in (1, 0)}
    edges = {axis: sloped_edges(total, size, axis, sums[axis]) for axis in (1, 0)}

    def profile(axis, cut, length):
        bands = sums[axis].shape[0]
        with np.errstate(divide='ignore', invalid='ignore'):
            logs = np.log(sums[axis] / size)
        excluded = _gaps(cut, size, length, axis)[:bands]
        for edge in edges[axis]:
            _exclude_along(excluded, edge, size)
        for edge in edges[1 - axis]:
            _exclude_across(excluded, edge, size)
        return line_profile(logs, np.maximum(sums[axis], 0.0), excluded)

    return profile(1, cut_x, width), profile(0, cut_y, height)


def specimen_model(total, window=MODEL_WINDOW, size=None):
    """The specimen (times the movie's dose) as the sum ``total`` shows it: positive,
    the sum's shape, no line pattern of the detector (module docstring, steps 1-2).
    Returns (model, lines): ``model`` a :class:`CellModel`, ``lines`` the (row, column)
    factors exp(row profile), exp(column profile) of the detector's line structure that
    was divided out first (their outer product, :func:`_line_frame`, is a 4K frame that
    only the stand-ins of dim pixels need)."""
    total = np.asarray(total, np.float64)
    columns, rows = line_profiles(total, size)
    lines = (np.exp(rows), np.exp(columns))
    # the median on MODEL_CELL x MODEL_CELL cells (their means), over the cells of a
    # window as wide as ``window`` pixels: each cell averages MODEL_CELL^2 pixels, so the
    # median of the window's cells is as noisy as the pixels' (1.25 x a cell's spread over
    # the square root of their number: 0.06 of a pixel's spread either way), at 1 /
    # MODEL_CELL^4 of the work (4 x 4 cells: 0.3 s at 4096 x 4096 against 5 s for 2 x 2)
    cell = MODEL_CELL
    across = max(1, window // (2 * cell)) * 2 + 1
    if min(total.shape) >= cell * 4 * across:
        # the cells a band of rows at a time: no 4K frame of the flattened sum or the lines
        cells = np.concatenate([_binned(total[band] / np.outer(lines[0][band], lines[1]), cell)
                                for band in _row_blocks(total.shape[0] // cell * cell)])
        smooth = ndimage.median_filter(cells / float(cell * cell), size=across, mode='reflect')
        floor = 1e-3 * max(float(np.mean(smooth)), 1e-12)
        return CellModel(np.maximum(smooth, floor), cell, total.shape), lines
    model = ndimage.median_filter(total / _line_frame(lines), size=window, mode='reflect')
    floor = 1e-3 * max(float(np.mean(model)), 1e-12)
    return CellModel(np.maximum(model, floor), 1, total.shape), lines


def _line_frame(lines):
    """The detector's line structure as a frame: the outer product of (row, column) factors."""
    return np.outer(lines[0], lines[1])


class CellModel:
    """The specimen model, constant over ``cell`` x ``cell`` pixels: its cells' values and
    the frame's shape (the partial cells at the far edges take their neighbours', as
    :func:`_upsampled` writes them). Indexed as the full-resolution frame would be, a
    block at a time (``model[rows]``, ``model[::7, ::7]``), so that no 4K float64 model
    is written (128 MB, 0.4 s at 4096 x 4096)."""

    def __init__(self, cells, cell, shape):
        self.cells, self.cell, self.shape = cells, int(cell), tuple(shape)
        self.dtype = cells.dtype

    def _cell_index(self, index, axis):
        positions = np.arange(self.shape[axis])[index]
        return np.minimum(positions // self.cell, self.cells.shape[axis] - 1)

    def __getitem__(self, index):
        rows, cols = index if isinstance(index, tuple) else (index, slice(None))
        if self.cell == 1:
            return self.cells[rows, cols]
        values = self.cells[self._cell_index(rows, 0)]
        return np.take(values, self._cell_index(cols, 1), axis=1)

    def of_cells(self, values):
        """A per-cell array (the cells' shape) as a full-resolution frame."""
        return values if self.cell == 1 else _upsampled(values, self.cell, self.shape)

    def median(self):
        """The median over the frame's pixels: the cells' when every cell is whole (each
        counts cell^2 times: the same middle values)."""
        whole = all(side == cells * self.cell for side, cells in zip(self.shape, self.cells.shape))
        return float(np.median(self.cells if whole else self[:]))


def _upsampled(cells, size, shape):
    """Cells of ``size`` x ``size`` pixels back to ``shape`` (each pixel its cell's value; the
    partial cells at the far edges take their neighbours'), written in place."""
    rows, cols = cells.shape
    out = np.empty(shape, cells.dtype)
    out[:rows * size, :cols * size].reshape(rows, size, cols, size)[...] = cells[:, None, :, None]
    out[rows * size:, :cols * size] = out[rows * size - 1, :cols * size]
    out[:, cols * size:] = out[:, cols * size - 1:cols * size]
    return out


def flattened_sums(total, counts=None, sigma='auto', sigma_grid=DEFAULT_SIGMA_GRID,
                   reference='single', model=None, frames=None):
    """Eq. 7's two sums for one movie, with the specimen divided out: (F, SME(F), sigmas),
    both weighted by the counts each pixel saw (model / typical level).

    ``total``: the movie's sum of (conditioned, in residual mode corrected)
    frames; ``model``: (:class:`CellModel`, line factors) (default :func:`specimen_model`
    of ``total``). ``frames``: None, or a callable that gives the frames again
    as (corrected, recorded) pairs: each frame is divided by the model and
    equalized (Eqs. 1-6 per frame, as the paper does; ``recorded`` holds the
    frame's ties, whole counts for counting frames), and the sums run over the
    frames. Without frames the sum itself is equalized once (``counts``: the
    sum before any reference, its ties): faster, but a pixel whose sum is a
    rare low tail (1 count where 18 were expected) maps to the foot of the
    reference and stands 5 times off in the map, where frame by frame its
    zeros map to zero. The correction is SME(F) / F (mean 1 after scaling).

    Where the specimen lets through less than 1 / DIM of the movie's typical
    level (a gold foil, a thick crystal), a flattened pixel carries more than
    DIM times the variance of the others and the histograms of its lines would
    be ruled by that noise. Those pixels, and the rim of MODEL_WINDOW pixels
    around them where the model is as blurred as its window (a pixel there with
    one count instead of the model's ten maps to the foot of the reference:
    0.2 % of the pixels took a movie's R^2 from 0.67 to 0.35), enter SME as
    stand-ins (their lines' value times the scatter of the other pixels), and
    their correction is their lines' (no pixel detail is knowable there). Returns
    (numerator, denominator, sigmas, dim): ``dim`` marks those pixels.
    """
    total = np.asarray(total)         # in float64 where it is used, a block of rows at a time
    model, lines = specimen_model(total) if model is None else model
    level = model.median()
    dim = model.of_cells(model.cells * DIM < level)
    if dim.any():   # and its rim, where the model is as blurred as the median window is wide
        dim = ndimage.maximum_filter(dim, size=MODEL_WINDOW)
    stand_ins = bool(dim.any() and not dim.all())
    # only the stand-ins need the lines as a frame (a 4K float64 frame)
    lines = _line_frame(lines) if stand_ins else None
    rng = np.random.default_rng(0)
    thinning = frames is None and counts is not None
    expected = _expected_thinning(total, counts, model, dim, lines if stand_ins else None, rng,
                                  reference, sigma, sigma_grid) if thinning else None
    if expected is None:
        numerator, denominator, sigmas = _drawn_sums(total, counts, model, level, dim,
                                                     lines if stand_ins else None, rng,
                                                     frames, (reference, sigma, sigma_grid))
    else:
        numerator, denominator, sigmas = expected
    if stand_ins:
        # the dim pixels' correction is their lines', at the scale of the others
        good = ~dim & (numerator > 0)
        scale = float(np.median((denominator / np.maximum(numerator, 1e-30) * lines)[good]))
        predicted = lines * (float(numerator[~dim].sum()) / float(lines[~dim].sum()))
        numerator[dim] = predicted[dim]
        denominator[dim] = scale * predicted[dim] / lines[dim]
    # Eq. 7 weighs each pixel by its counts (its sums); the flattening took that away:
    # back to the counts the specimen let through, so that a session adds each movie
    # where it saw electrons (a stand-in, which holds nothing of its pixel, next to nothing)
    # (a block of rows at a time: no 4K weight frame)
    for rows in _row_blocks(total.shape[0]):
        weight = np.where(dim[rows], STAND_IN_WEIGHT, model[rows] / level)
        # a dim pixel that recorded nothing (a dead one, or a live one the gold let nothing
        # through to) adds nothing: its stand-in's share would make a dead pixel, zero in
        # every other movie's numerator, a finite 'good' one of the session (measured: 1881)
        weight[dim[rows] & (total[rows] <= 0)] = 0.0
        numerator[rows] *= weight
        denominator[rows] *= weight
    return numerator, denominator, sigmas, dim & ~np.all(dim)


def _drawn_sums(total, counts, model, level, dim, lines, rng, frames, sme):
    """(numerator, denominator, sigmas) summed over frames or draws: the frames of
    ``frames()`` (a callable, or None: the sum itself), each divided by the model, or
    THINNING_DRAWS thinning draws of a counting sum whose SME tables are not to be had
    (:func:`_expected_thinning`); ``lines`` (not None): the dim pixels as stand-ins."""
    reference, sigma, sigma_grid = sme
    stand_ins = lines is not None
    pairs = [(total, counts)] if frames is None else frames()
    thinning = frames is None and counts is not None
    if thinning:
        # the stand-ins are drawn from the float64 frame: only they need it whole
        pairs = _thinned(total, _whole_counts(counts), model, _thinning_target(model, dim),
                         THINNING_DRAWS, rng, np.float64 if stand_ins else np.float32)
    numerator = np.zeros(total.shape)
    denominator = np.zeros(total.shape)
    sigmas = []
    chosen = sigma
    for corrected, recorded in pairs:
        if stand_ins:
            flat = np.asarray(corrected, np.float64) * (1.0 if thinning else level / model[:])
            flat, recorded = _stand_ins(flat, recorded, dim, lines, rng)
            flat = flat.astype(np.float32)
        elif thinning:
            flat = corrected          # already float32, one level: the factor is 1
        else:
            flat = _flattened_float32(corrected, level, model)
        ties = None if recorded is None else np.asarray(recorded, np.float32)
        del corrected, recorded       # 4K frames: each one held no longer than it is used
        equalized, pair = sme_frame(flat, reference, chosen, sigma_grid, np, recorded=ties)
        if thinning and reference == 'single':
            # Eq. 3's single reference averages the smoothed lines of Eq. 2 over all lines:
            # sigma only reweights the few lines at the frame's borders, the search's
            # total variations differ by noise and its choice goes from draw to draw
            # (measured: 0 to 3 on the 8 draws of one sum); the first draw's is kept,
            # and the others skip the search and its pair tables
            chosen = pair
        numerator += flat
        denominator += equalized
        sigmas.append(pair)
        del flat, ties, equalized
    if thinning:                      # the mean draw: the scale of the expected sums
        numerator /= THINNING_DRAWS
        denominator /= THINNING_DRAWS
    return numerator, denominator, sigmas


def _filled_tables(table):
    """A scaled table (lines, K) of :func:`.sme.scaled_count_tables`, halved (Eq. 6 is the
    mean of the two directions), each absent block's entry (0) taken from the nearest
    present block below it in its line (above, where none is below): a value that this
    draw did not hold in a line maps as its neighbours in value do. Key 0 (a zero's mapped
    value) is kept as it is. float64."""
    filled = np.array(table, np.float64) * 0.5
    body = filled[:, 1:]
    if body.shape[1] == 0:
        return filled
    present = body != 0
    index = np.where(present, np.arange(body.shape[1]), -1)
    below = np.maximum.accumulate(index, axis=1)
    below = np.where(below < 0, np.argmax(present, axis=1)[:, None], below)
    filled[:, 1:] = np.take_along_axis(body, below, axis=1)
    return filled


def _expected_sums(whole, total, model, target, columns, rows):
    """Eq. 7's two sums of a thinned sum, averaged over all its thinning draws (the limit
    of infinitely many draws), per pixel: (E[F], E[SME(F)]).

    A pixel of N counts (``whole``; ``total`` the sum, N times the pixel's factor u)
    thinned by p = target / model holds v ~ Binomial(N, p): E[F] = p N u. Given the
    tables of one draw (``columns``, ``rows``: :func:`.sme.scaled_count_tables`), the SME
    maps v to v u (C[c, v] + R[r, v]) / 2 and a zero to (C[c, 0] + R[r, 0]) / 2, so
    E[SME(F)] = sum_v P(v) of that (:func:`_expected_block`), over the levels up to
    ``top``: no more than the counts of all but 0.1 % of the pixels (v <= N) or than
    their expected thinned counts' 99.9th percentile plus 5 standard deviations (the
    mass above: 3e-7). The few pixels with mass above ``top`` (a hot or a bright pixel)
    map that mass at their expected count's key. The average of D draws scatters about
    this by (1 - p) / (D p) of the counts' own variance, and more at a pixel whose draws
    are a rare low tail (1 count where 18 were expected maps 2 to 6 times off, a draw of
    0 or 2 further): measured, 3 draws instead of 8 took a movie's R^2 from 0.77 to 0.70
    through 0.1 % of its pixels; this expectation gives it 0.79, in 1 s at 4096 x 4096
    against 8 s for 8 draws."""
    columns, rows = _filled_tables(columns), _filled_tables(rows)
    levels = columns.shape[1]
    numerator, denominator = np.empty(whole.shape), np.empty(whole.shape)
    sample = whole[::7, ::7]
    thinned = sample * np.clip(target / model[::7, ::7], 0.0, 1.0)
    expected = float(np.percentile(thinned, 99.9)) if sample.size else 0.0
    top = int(min(levels - 1, np.ceil(float(np.percentile(sample, 99.9)) if sample.size else 0),
                  np.ceil(expected + 5.0 * np.sqrt(expected))))
    scaled = (columns * np.arange(levels), rows * np.arange(levels))   # v C[c, v] / 2

    def work(block):
        counts = whole[block].astype(np.float64)
        share = np.clip(target / model[block], 0.0, 1.0)
        unit = np.where(counts > 0, total[block] / np.maximum(counts, 1.0), 0.0)
        mean = share * counts
        numerator[block] = mean * unit
        zero, mapped = _expected_block(counts, share, scaled[0], scaled[1][block], top)
        zero *= columns[:, 0][None, :] + rows[block, 0][:, None]
        # the mass above the top level (v > top: only where N > top) at the expected key
        over = np.nonzero(counts > top)
        if over[0].size and levels > 1:
            key = np.clip(np.rint(mean[over]), 1, levels - 1).astype(np.intp)
            spent = _kept_below(counts[over], share[over], top)
            mapped[over] += (np.maximum(mean[over] - spent, 0.0)
                             * (columns[over[1], key] + rows[over[0] + block.start, key]))
        mapped *= unit
        mapped += zero
        denominator[block] = mapped

    # blocks in threads: NumPy's element-wise loops release the GIL, and each block
    # writes its own rows
    with ThreadPoolExecutor(max_workers=EXPECTED_THREADS) as pool:
        list(pool.map(work, _row_blocks(whole.shape[0], EXPECTED_ROWS)))
    return numerator, denominator


def _expected_block(counts, share, scaled_columns, scaled_rows, top):
    """Over a block of rows: (P(0), sum_{v=1..top} P(v) v (C[c, v] + R[r, v]) / 2) for
    v ~ Binomial(counts, share) (:func:`_chances`: P(v) times a scale, which is taken off
    the tables' entries); a pixel kept whole (p = 1) has P(N) = 1. In place, a few buffers
    of the block."""
    chances = _chances(counts, share, top)
    certain, zero = next(chances)
    mapped, step = np.zeros(counts.shape), np.empty(counts.shape)
    for value, (chance, scale) in enumerate(chances, 1):
        np.add(scaled_columns[:, value][None, :] / scale,
               scaled_rows[:, value][:, None] / scale, out=step)
        step *= chance
        mapped += step
    if certain.any():                 # v = N exactly, where N is within the levels
        whole = certain & (counts >= 1) & (counts <= top)
        row, col = np.nonzero(whole)
        value = counts[whole].astype(np.intp)
        mapped[whole] = scaled_columns[col, value] + scaled_rows[row, value]
    return zero, mapped


def _kept_below(counts, share, top):
    """sum_{v=1..top} P(v) v of v ~ Binomial(counts, share) (:func:`_chances`): the counts a
    pixel keeps within the levels, asked only where N > top (a hot or bright pixel)."""
    chances = _chances(counts, share, top)
    certain, _ = next(chances)
    spent = np.zeros(counts.shape)
    for value, (chance, scale) in enumerate(chances, 1):
        spent += chance * (value / scale)
    if certain.any():
        whole = certain & (counts >= 1) & (counts <= top)
        spent[whole] = counts[whole]
    return spent


def _chances(counts, share, top):
    """The binomial law of v ~ Binomial(counts, share) level by level: first (the pixels kept
    whole, p = 1; P(0)), then (P(v) s, s) for v = 1..top, one buffer updated in place by
    the recurrence P(v) = P(v - 1) (N - v + 1) / v p / (1 - p) from P(0) = (1 - p)^N (0 from
    v = N + 1 on; 0 throughout where p = 1). The scale s is v! (the 1 / v of each step
    left to the caller, who takes it off the tables' entries instead of every pixel: one
    pass over the block less a level), brought back to 1 before it nears float64's range."""
    certain = share >= 1.0 - 1e-9
    odds = np.where(certain, 0.0, share / np.where(certain, 1.0, 1.0 - share))
    chance = np.where(certain, 0.0, (1.0 - share) ** counts)
    yield certain, np.where(certain, counts == 0, chance)
    step = np.empty(counts.shape)
    scale = 1.0
    for value in range(1, top + 1):
        np.subtract(counts, value - 1, out=step)
        step *= odds
        chance *= step
        scale *= value
        if scale > 1e200:
            chance *= 1.0 / scale
            scale = 1.0
        yield chance, scale


#: rows of a 4K frame handled at once where a float64 intermediate is rounded to float32
ROWS_PER_BLOCK = 256


#: rows of a 4K frame per block of the expected sums' loop over levels (its few buffers
#: stay in the processor's cache)
EXPECTED_ROWS = 32
EXPECTED_THREADS = 2


def _row_blocks(rows, size=None):
    """Slices of ``size`` (default ROWS_PER_BLOCK) rows covering ``rows`` rows, in order."""
    size = size or ROWS_PER_BLOCK
    return [slice(first, min(first + size, rows)) for first in range(0, rows, size)]


def _flattened_float32(values, level, model):
    """values x level / model in float32: the float64 product rounded once (as a float64
    frame cast to float32 would be), a block of rows at a time, so that no float64 frame
    is held."""
    flat = np.empty(np.shape(values), np.float32)
    for rows in _row_blocks(flat.shape[0]):
        flat[rows] = np.asarray(values[rows], np.float64) * (level / model[rows])
    return flat


def _whole_counts(counts):
    """The counts as int32 (a pixel's counts, well below 2^31): the array itself when it is."""
    if counts.dtype == np.int32 and int(counts.min()) >= 0:
        return counts
    whole = np.empty(counts.shape, np.int32)
    for rows in _row_blocks(counts.shape[0]):
        whole[rows] = np.rint(np.maximum(counts[rows], 0))
    return whole


def _thinning_target(model, dim):
    """Counts per pixel a thinned sum holds on average: the model's 1st percentile outside
    ``dim`` (every other pixel thinned down to it), at most THINNED_COUNTS."""
    # on every 3rd pixel of every 3rd row: the model is a median over 20 pixels
    sample, outside = model[::3, ::3], ~dim[::3, ::3]
    target = (float(np.percentile(sample[outside], 1)) if outside.any()
              else float(np.median(sample)))
    return min(target, THINNED_COUNTS)


def _thinned(total, whole, model, target, draws, rng, dtype=np.float32, own=False):
    """(corrected, counts) pairs of the sum thinned to one level: each count kept with
    probability target / model (binomial thinning: Poisson(rate) thinned by p is
    Poisson(rate p)), so that every pixel outside the dim ones holds Poisson counts of one
    rate times its gain, whatever the specimen let through. Dividing by the model
    instead scales the noise with it (a carbon pixel's flattened counts spread twice as
    wide as the ice's, and Eq. 4 maps that spread into the map). ``draws`` draws of the
    counts ``whole`` (int32).

    Both frames of a pair come as ``dtype``: the draw times the reference's factor (sum
    over counts) in float64, rounded once; ``own`` (the sum is its own counts: the factor
    is 1): the draw itself, as both. The draws run a block of rows at a time (the
    generator's stream is the same as one draw of the whole frame: it draws pixel after
    pixel in order) and the probabilities and factors are recomputed per block, so that
    no float64 frame is held between draws."""
    for _ in range(draws):
        corrected = np.empty(total.shape, dtype)
        kept = corrected if own else np.empty(total.shape, dtype)
        for rows in _row_blocks(total.shape[0]):
            recorded = whole[rows]
            drawn = rng.binomial(recorded, np.clip(target / model[rows], 0.0, 1.0))
            if own:
                corrected[rows] = drawn
                continue
            unit = np.where(recorded > 0, total[rows] / np.maximum(recorded, 1), 0.0)
            kept[rows] = drawn
            corrected[rows] = drawn * unit
        yield corrected, kept
        del corrected, kept


def _expected_thinning(total, counts, model, dim, lines, rng, reference, sigma, sigma_grid):
    """(numerator, denominator, sigmas) of a counting sum thinned to one level, as the
    expectation over all thinning draws (:func:`_expected_sums`) from the SME tables of
    one draw (Eqs. 1-6, the sigma search of Eq. 5 on it); ``lines`` (not None): the dim
    pixels enter that draw as stand-ins (:func:`_stand_ins`). None where the SME's fast
    path does not take the draw (then the caller averages THINNING_DRAWS draws)."""
    whole = _whole_counts(counts)
    target = _thinning_target(model, dim)
    own = lines is None and (total is counts or np.array_equal(total, counts))
    dtype = np.float32 if lines is None else np.float64
    corrected, kept = next(_thinned(total, whole, model, target, 1, rng, dtype, own))
    if lines is not None:
        corrected, kept = _stand_ins(corrected, kept, dim, lines, rng)
        corrected = corrected.astype(np.float32)
    # the two directions one after the other: in two threads their pair tables of the sigma
    # search ((lines - 1) x levels^2 int64 and their sum's copy, 30-60 MB each at 4096, under
    # the allocator's mmap threshold) stay resident in the threads' heaps after they are
    # freed and add to the estimate's peak (measured: raw 4096 x 4096 x 10, +75 MB)
    tables = scaled_count_tables(corrected, np.asarray(kept, np.float32), reference, sigma,
                                 sigma_grid, np)
    del corrected, kept
    if tables is None:
        return None
    columns, rows, _, pair = tables
    numerator, denominator = _expected_sums(whole, total, model, target, columns, rows)
    return numerator, denominator, [pair]


def _stand_ins(flat, recorded, dim, lines, rng):
    """The dim pixels of a flattened frame replaced by stand-ins with the histogram of the
    other pixels (drawn with a fixed seed) at their lines' level: a block of equal values
    would take a band of ranks and be mapped across that band of the reference. With
    whole counts (``recorded``), the stand-ins are drawn counts times their lines' factor,
    so the frame stays counts x factors (the ties of Eq. 4: ranking flattened counts
    without their ties re-creates the flattening)."""
    count = int(dim.sum())
    relative = lines[dim] / float(lines[~dim].mean())
    if recorded is None:
        predicted = lines * (float(flat[~dim].sum()) / float(lines[~dim].sum()))
        flat[dim] = predicted[dim] * rng.choice((flat / predicted)[~dim], size=count)
        return flat, None
    recorded = np.array(recorded, np.float64)
    seen = ~dim & (recorded > 0)
    factor = float(np.median(flat[seen] / recorded[seen])) if seen.any() else 1.0
    drawn = rng.choice(recorded[~dim], size=count)
    recorded[dim] = drawn
    flat[dim] = drawn * factor * relative
    return flat, recorded


def estimate_flattened(source, settings, dev, progress=None, per_frame=False, keep_sums=True):
    """The ``robust`` method of :func:`.gain.estimate_gain`: the frames of ``source`` (a
    prepared :class:`.frames.FrameSource`) summed for the specimen model and the sum
    equalized once (:func:`flattened_sums`; ``per_frame=True`` reads the frames
    again and equalizes each: a pixel's rare low sum no longer stands out, but each
    frame's edge lies off the sum's by its drift; measured on a 512 x 512 x 20 movie
    with a carbon edge, tests/test_specimen.py: R^2 0.59 frame by frame against 0.72
    without the edge, below the 85 % the sum keeps).

    Returns, instead of a result, why the method declines (a str): sums that are
    not counts with a reference (residual mode of integrating frames: measured
    noisier than the paper's), or a frame too small for the coarse grid. Several movies
    given together share one specimen model (of their sum); a session adds
    each movie's own sums (:class:`.gain.GainAccumulator`). The
    model and the equalization run on the host (NumPy and SciPy). ``keep_sums=False``:
    the flattened sums are dropped once the map is made (two 4K float64 frames that
    the pixel term's peak then does not hold); the result's are None.
    """
    xp = dev.xp
    steps = source.total * (2 if per_frame else 1)
    done = [0]

    def tick():
        done[0] += 1
        if progress:
            progress(done[0], steps)

    total, counts, used = _frame_sums(source, dev, tick)
    whole = all(bool(np.all(counts[rows] >= 0) and np.all(counts[rows] == np.rint(counts[rows])))
                for rows in _row_blocks(counts.shape[0]))
    # whole counts are held as int32 (what the thinning draws from), others not at all
    counts = counts.astype(np.int32) if whole else None
    if not whole and source.gain_reference is not None:
        # measured noisier than the paper's residual (integrating 512 x 512 x 20: std 0.20
        # against 0.035); the caller takes the paper's SME (see gain.estimate_gain)
        return "the frames are not counts and a reference is given"
    too_small = _too_small_for_cells(total)
    if too_small:
        return too_small

    def frames():
        for frame in FrameUploader(dev).upload(source):
            corrected = to_numpy(source.corrected(frame, xp))
            tick()
            yield corrected, (to_numpy(frame) if whole else None)

    # the float64 sum is held throughout, also where it equals the int32 counts: the
    # specimen model reads it in float64, and the result holds it (made from the counts
    # twice, 128 MB each at 4096, it cost more than holding it: the estimate's peak is
    # at the correction, where it is held either way)
    flat, equalized, sigmas, dim = flattened_sums(total, counts, settings.sigma,
                                                  settings.sigma_grid, settings.reference,
                                                  frames=frames if per_frame else None)
    del counts
    correction, defects = correction_from_sums(flat, equalized)
    if not keep_sums:
        flat = equalized = None
    correction, defects, notes = _dim_left_out(correction, defects, dim)
    # the map's plane, which one movie cannot tell from an ice ramp: the share a prior gives
    # it (planes.py; a session takes its own from its movies: GainAccumulator.correction)
    factor = plane_factor([map_plane(correction, defects)],
                          sectors=source.gain_reference is None)
    correction = shrink_plane(correction, defects, factor)
    level = None
    if whole:   # the pixel term: whole counts only (its shrinkage needs their Poisson variance)
        # (the counts read from the sum, sum / reference, a block at a time: no frame of them)
        # shrunk toward the map's lines, not the map: its pixels' values are a nonlinear
        # function of their own counts (see pixels.line_prior)
        correction = line_prior(correction, defects)
        level = local_level(total, correction, ~defects, source.gain_reference)
        correction, _ = pixel_detail(correction, SumCounts(total, source.gain_reference),
                                     level, defects)
    return GainResult(gain=correction, defects=defects, frames=used, device=dev.label,
                      settings=settings, sigmas=sigmas, numerator=flat,
                      denominator=equalized, frame_sum=total, method_notes=notes,
                      pixel_level=level)


def _frame_sums(source, dev, tick):
    """(the sum of the corrected frames, of the raw frames, how many were read), on the
    host, float64; without a reference one sum is both."""
    xp = dev.xp
    total = counts = None
    used = 0
    # without a reference the frames are their own corrected frames: one sum holds both
    own = source.gain_reference is None
    for frame in FrameUploader(dev).upload(source):
        corrected = source.corrected(frame, xp)
        if total is None:
            total = corrected.astype(xp.float64)
        else:
            total += corrected        # in place: a 4K float64 frame less per frame read
        if not own:
            if counts is None:
                counts = frame.astype(xp.float64)
            else:
                counts += frame
        used += 1
        tick()
    if total is None:                 # no usable frame: the caller says why
        total = np.zeros(source.shape)
    total = to_numpy(total)
    counts = total if own or counts is None else to_numpy(counts)
    return total, counts, used


def _dim_left_out(correction, defects, dim):
    """(correction, defects, notes) with the pixels under a nearly opaque specimen
    (``dim``) marked not estimable and the map's mean 1 over the rest again."""
    if not dim.any():
        return correction, defects, []
    # under a nearly opaque specimen the map holds only the lines' values: not
    # estimable from this movie, so left out of its statistics (a pixel with almost
    # no counts would be the map's extreme) and of what is judged of it
    defects = defects | dim
    good = ~defects
    if good.any():
        correction = correction / np.float32(correction[good].mean())
    return correction, defects, [
        f"robust method: {100.0 * dim.mean():.1f} % of the pixels lie under a nearly opaque "
        "specimen (gold foil?) and its rim: not estimable from this movie (marked so; their "
        "value is their lines')"]


def map_profile(gain, defects=None, block=256, denominator=None):
    """A movie's line structure for the session's weights: (column profile, row profile,
    noise variance of one column's mean, of one row's), in log, over good pixels.
    ``denominator`` (not None): ``gain`` is a numerator, and the map is their ratio (up
    to its scale, which the log profiles do not see).

    The noise is the pixel scatter left after the lines, divided by the pixels a
    line mean averages (what a map's lines would scatter by were the movie's
    only error its counts). Taken ``block`` rows at a time (float64 within a block:
    no frame-sized float64 temporaries, 128 MB each at 4096 x 4096)."""
    gain = np.asarray(gain)
    height, width = gain.shape
    column_sums, column_counts, row_sums, row_counts = line_log_sums(gain, defects, block,
                                                                     denominator)
    columns = column_sums / np.maximum(column_counts, 1.0)
    rows = row_sums / np.maximum(row_counts, 1.0)
    columns -= columns.mean()
    rows -= rows.mean()
    # the variance of what the lines leave over the good pixels, about its mean: the mean
    # from the sums above (the logs' less each line's value times its good pixels)
    count = float(column_counts.sum())
    scatter = 0.0
    if count:
        mean = (float(column_sums.sum()) - float(columns @ column_counts)
                - float(rows @ row_counts)) / count
        squares = 0.0
        for logs, good, part in log_blocks(gain, defects, block, denominator):
            rest = (logs - columns[None, :] - rows[part, None])[good] - mean
            squares += float(np.dot(rest, rest))
        scatter = squares / count
    return (columns.astype(np.float32), rows.astype(np.float32),
            np.array([scatter / height, scatter / width]))


def session_weight(profile, previous):
    """The weight of a movie in a session's sums, from how far its line structure
    (:func:`map_profile`) stands from the median of the movies before it.

    Each movie's error variance is its lines' noise plus an excess (its
    specimen's leftovers: an ice ramp, an edge too close to a pixel axis to be
    told from a readout step); its weight is the inverse of that variance
    relative to the session's typical movie (the median excess of the movies so
    far, each against the median of the others), at most 1: a movie no worse
    than typical adds as the paper adds it, one ten times worse a tenth. The
    first two movies weigh 1 (no majority to judge them by).
    """
    if len(previous) < 2:
        return 1.0
    excess = _excess(profile, previous)
    typical = float(np.median([_excess(p, [q for q in previous if q is not p])
                               for p in previous]))
    noise = float(np.mean(profile[2]))
    return float(min(1.0, (noise + typical) / (noise + excess)))


def _excess(profile, others):
    """Variance of a profile about the others' median beyond what the noise explains."""
    count = len(others)
    # the median of n noisy profiles scatters by about pi / 2n of one's variance
    shrink = 1.0 if count < 3 else np.pi / (2 * count)
    parts = []
    for index in (0, 1):
        median = np.median(np.stack([o[index] for o in others]), axis=0)
        deviation = profile[index] - median
        deviation = deviation - deviation.mean()
        noise = profile[2][index] * (1 + shrink)
        parts.append(max(0.0, float(np.mean(deviation ** 2)) - noise))
    return float(np.mean(parts))


def session_quality(profiles, weights):
    """What a robust session's estimate is worth, for its report: the movies' weights,
    the effective number of movies (sum w)^2 / sum w^2, and the noise (RMS, relative)
    of the estimate's column and row factors from the movies' own noise, combined
    with their weights: None without movies."""
    if not profiles:
        return None
    weights = np.asarray(weights, np.float64)
    total = float(weights.sum())
    noise = np.stack([p[2] for p in profiles])          # per movie: column, row variance
    combined = (weights[:, None] ** 2 * noise).sum(axis=0) / max(total, 1e-30) ** 2
    return {'weights': [round(float(w), 4) for w in weights],
            'effective_movies': round(total ** 2 / max(float((weights ** 2).sum()), 1e-30), 2),
            'column_noise': float(np.sqrt(combined[0])),
            'row_noise': float(np.sqrt(combined[1])),
            'down_weighted': [index + 1 for index, w in enumerate(weights) if w < 0.5]}
