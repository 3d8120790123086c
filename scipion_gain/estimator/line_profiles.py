"""The gain's line profiles of a movie's sum, told from the specimen by where they live.

Step 1 of the robust estimate (:mod:`.specimen`): a column factor is the same in every
row (a readout sector's step too), a specimen edge crosses each row at its own place.
Rows are grouped in bands; each band's log column profile is the column profile plus the
specimen's level in the band. Where the specimen has an edge in a band (a step of the
band's profile that the other bands do not share: :func:`specimen_cuts`; a straight edge
close to a pixel axis, band by band at full resolution: :func:`sloped_edges`), the band's
profile is cut there and each piece gets its own offset, so a carbon plateau, a hole or a
gold foil enters only as offsets. The column profile is the least-squares fit of all
pieces with free offsets, weighted by their counts (:func:`line_profile`); rows likewise
(:func:`line_profiles`). Pure NumPy and SciPy, on the host.
"""
import numpy as np
from scipy import ndimage

from .filters import binned
from .pixels import DIM, typical_level


#: a cell of the coarse grid (where specimen edges are found) holds at least this many
#: counts, so that its log has a relative noise of about 2 % (1 % after the 3 x 3 median:
#: a carbon edge changes the level by 15 % or more); smaller cells tell more edges from
#: the pixel axes (an edge must cross about a cell over the frame)
CELL_COUNTS = 2500.0


#: a step of a band's profile is the specimen's when it stands this many robust
#: standard deviations off what all bands share (a false cut costs little: a piece less)
CUT_Z = 5.0


#: ... and a weaker step (this many) continues such a step into the next bands: an edge is
#: one line across the bands, and a light one (carbon of T 0.8: a 0.22 step, 5 to 10
#: spreads a cell) falls below CUT_Z in a third of its bands where particles or the cell's
#: partial cover weaken it; an uncut band links the two sides and gives the column profile
#: the carbon's step (measured: 33 of 85 bands of a 14-degree edge uncut, the column profile
#: 0.06 off on a flat detector; :func:`_followed`)
FOLLOW_Z = 3.0


#: ... followed across up to this many bands in a row where not even that shows (a light
#: edge under a crowd of particles), the bands between cut on the line between its ends.
#: Both against following the particles' own steps (a step of 2.5 spreads is common among
#: crowded particles): at 2.5 and 6 bands a movie without an edge got 450 cuts for 45, a
#: carbon edge 1.5 degrees off a column (test_specimen, 512 px) 0.66 of its twin's R^2 for
#: 0.85, gold foil over 60 % 1.44x its twin's exact residual for 1.16x; at 3.0 and 3
#: bands 170 cuts, 0.84 and 1.26x
BRIDGE_BANDS = 3


#: a strong step is followed only when another of its sign lies within k cells k bands away,
#: k up to this (:func:`_partnered`)
PARTNER_BANDS = 1


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


#: the line fit: a residual this many robust standard deviations off (a hot pixel in a
#: band) is left out; the penalty on the profile's steps, in one column's weight (it
#: decides only where no piece links the two sides)
OUTLIER_Z = 5.0


SMOOTHNESS = 1e-3


#: a gap that no piece spans is levelled by the mean of this many columns either side
GAP_SIDE = 16


#: pieces whose columns enter one dense product of the line fit (memory: length x this x 8 B)
PIECES_PER_PRODUCT = 512


#: columns of one panel of the offsets' system (:func:`_offsets_panels`; the product's
#: temporary: length x this x 8 B)
PANEL_COLUMNS = 256


#: the line fit eliminates the profile (its offsets' dense system: pieces^2 x 8 B, and
#: B dense: length x pieces x 8 B) up to this many weighted pieces, else the offsets
PIECES_BY_PROFILE = 1024


def coarse_bin(shape, counts_per_pixel):
    """Side of the coarse cells: each holds about CELL_COUNTS counts, 4 to 1/16 of the frame."""
    need = np.sqrt(CELL_COUNTS / max(float(counts_per_pixel), 1e-6))
    side = int(np.ceil(max(need, 4.0)))
    return int(min(side, max(4, min(shape) // 16)))


def too_small_for_cells(total):
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
    # of the part of the frame the typical count arrived at: a nearly opaque specimen over
    # half the frame (gold foil about a hole) is not what the cells must resolve (its
    # median pixel held 2 counts where the exposed ones held 48, and the robust method
    # declined a 512 x 512 x 20 movie)
    level = typical_level(sample)
    difference = np.diff(sample, axis=1)
    if level > float(np.median(sample)):   # the median pixel is dim: of the exposed pixels
        exposed = sample * DIM >= level
        difference = difference[exposed[:, 1:] & exposed[:, :-1]]
    if not difference.size:
        return max(level, 1.0)
    spread = 1.4826 * float(np.median(np.abs(difference - np.median(difference))))
    variance = spread * spread / 2.0
    return level * level / variance if variance > 0 else max(level, 1.0)


def specimen_cuts(total, size):
    """Where the specimen has an edge: (cut_x, cut_y) on the coarse grid of ``size`` cells.

    ``cut_x[i, j]`` is True when the step between cells (i, j) and (i, j+1) is
    not what all rows of cells share: the log of the cells (median filtered
    3 x 3: particles and noise) differenced along the rows, less the median of
    that difference over all rows (a readout step, a column gradient: the
    gain's, kept), is more than CUT_Z robust standard deviations off zero; and where such a step
    continues into the next bands above FOLLOW_Z, the edge is followed across them
    (:func:`_followed`). ``cut_y`` likewise down the columns. Each cut is the sign of its
    step (int8: +1 brighter on, -1 darker on, 0 no cut).
    """
    cells = binned(np.asarray(total, np.float64), size)
    level = np.log(np.maximum(cells, 1e-3 * max(float(np.median(cells)), 1e-12)))
    level = ndimage.median_filter(level, size=3, mode='nearest')
    # only light edges are followed: between cells of which neither is dim nor next to a dim
    # one (a nearly opaque specimen's edge steps far above CUT_Z; in it the cells' noise,
    # many times the typical cell's, would be followed: gold foil over 60 % of a frame, its
    # exact residual 1.16 -> 1.44x a movie without it; along its rim the partly covered
    # cells': a gold line 7.5 degrees off an axis, 0.0178 -> 0.0223)
    dim_cells = ndimage.binary_dilation(level < np.median(level) - np.log(DIM),
                                        np.ones((3, 3), bool))
    cuts = []
    for axis in (1, 0):
        step = np.diff(level, axis=axis)
        shared = np.median(step, axis=1 - axis, keepdims=True)
        excess = step - shared
        spread = 1.4826 * float(np.median(np.abs(excess - np.median(excess))))
        score = excess / max(spread, 1e-6)
        dim = (dim_cells[:, 1:] | dim_cells[:, :-1] if axis == 1
               else dim_cells[1:] | dim_cells[:-1])
        if axis == 0:       # band-major (bands x steps along them) from here on
            score, dim = score.T, dim.T
        cut = (np.abs(score) > CUT_Z) | _followed(np.where(dim, 0.0, score))
        cut = cut * np.sign(score).astype(np.int8)
        cuts.append(cut if axis == 1 else cut.T)
    return cuts[0], cuts[1]


def _followed(score):
    """The cuts of a band-major ``score`` (bands x steps along them, in spreads): the steps
    above CUT_Z, each followed band by band (up and down) to the step of the same sign
    above FOLLOW_Z within a cell of it in the next band (the strongest), or, where no band
    shows one, within k cells k bands on, up to BRIDGE_BANDS + 1 bands on, the bands between
    cut on the line between the two (an edge within 45 degrees of the lines: one line across
    the bands; a readout step is in every band alike and is no step here). One cell a band:
    a weak step next to a strong one in its band is the same edge's other part (its cell's
    partial cover), and cutting it too would widen the gap that the two sides of a
    near-axis edge are linked across (an edge 4 degrees off: residual 1.02 -> 1.30x its
    twin's when every step above FOLLOW_Z touching a strong one was cut)."""
    bands, steps = score.shape
    strong = np.abs(score) > CUT_Z
    cut = strong.copy()
    signed = np.where(strong, np.sign(score), 0.0)
    for first, start in zip(*np.nonzero(strong)):
        sign = np.sign(score[first, start])
        if not _partnered(signed, first, start, sign):
            continue        # a lone strong step (a particle's, a blob's) is not followed
        for direction in (1, -1):
            band, position, apart = first, start, 1
            while apart <= BRIDGE_BANDS + 1 and 0 <= band + direction * apart < bands:
                ahead = band + direction * apart
                lo, hi = max(position - apart, 0), min(position + apart + 1, steps)
                found = sign * score[ahead, lo:hi]
                if not found.size or found.max() <= FOLLOW_Z:
                    apart += 1
                    continue
                step = lo + int(np.argmax(found))
                if apart > 1 and not (strong[ahead, step] or
                                      _continues(score, sign, ahead + direction, step)):
                    apart += 1          # after a gap, one weak step is not yet an edge
                    continue
                between = np.arange(1, apart)
                cut[band + direction * between,
                    np.rint(position + (step - position) * between / apart).astype(int)] = True
                if strong[ahead, step]:        # followed from there on its own
                    break
                cut[ahead, step] = True
                band, position, apart = ahead, step, 1
    return cut


def _partnered(signed, band, step, sign):
    """Whether another strong step of ``sign`` lies within k cells k bands away (k up to
    PARTNER_BANDS) of the strong step at (``band``, ``step``): an edge is strong in many of
    the bands it crosses, a particle's or a blob's step stands alone. Following every
    strong step followed the particles' own (cuts of a 4096 x 4096 x 16 movie without an edge
    858 -> 2841, and the line fit's offsets system, dense in its pieces, 0.5 -> 5.9 s)."""
    bands, steps = signed.shape
    for apart in range(1, PARTNER_BANDS + 1):
        lo, hi = max(step - apart, 0), min(step + apart + 1, steps)
        for other in (band - apart, band + apart):
            if 0 <= other < bands and np.any(signed[other, lo:hi] == sign):
                return True
    return False


def _continues(score, sign, band, step):
    """Whether band ``band`` holds a step of ``sign`` above FOLLOW_Z within a cell of
    ``step``."""
    if not 0 <= band < score.shape[0]:
        return False
    near = sign * score[band, max(step - 1, 0):step + 2]
    return bool(near.size and near.max() > FOLLOW_Z)


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
    # the path sums in float32: half the memory traffic of the moves x length sums that the
    # band loop adds into (0.17 -> 0.08 s a direction at 4096 x 4096); a sum of a few hundred
    # squared scores rounds by 1e-7 of itself, and the tests below ask differences of
    # SLOPE_Z^2 (64) between paths that differ in most of their terms
    padded = np.zeros((bands, length + 2 * reach), np.float32)
    padded[:, reach:reach + length] = power
    position = (np.arange(bands) - (bands - 1) / 2.0) / bands
    moves = np.arange(-reach, reach + 1)
    offsets = np.rint(moves[:, None] * position[None, :]).astype(int)   # (moves, bands)
    columns = np.arange(length)
    # the band's scores shifted by each move's offset, whole rows at a time: the moves that
    # shift a band alike (offsets rise with the move) take one row of the padded band
    score = np.zeros((moves.size, length), np.float32)
    for band in range(bands):
        shift = offsets[:, band]
        starts = np.flatnonzero(np.r_[True, shift[1:] != shift[:-1]])
        for first, last in zip(starts, np.r_[starts[1:], moves.size]):
            start = reach + int(shift[first])
            score[first:last] += padded[band, start:start + length]
    straight = score[reach]                                               # m = 0
    best_move = np.argmax(score, axis=0)
    best = score[best_move, columns]
    # the sign of the step along each column's best path: a step's matched filter echoes
    # with the step's own sign up to a filter's width either side; a strip's other side
    # (a gold line's) steps the other way
    along = np.clip(columns[None, :] + offsets[best_move].T, 0, length - 1)
    sign = np.sign(z[np.arange(bands)[:, None], along].sum(axis=0))
    open_ = best - bands > SLOPE_Z ** 2
    for _ in range(4 * MAX_SLOPED_EDGES):
        if not open_.any() or len(edges) >= MAX_SLOPED_EDGES:
            break
        centre = int(np.argmax(np.where(open_, best, -np.inf)))
        move = int(moves[best_move[centre]])
        # any one pixel line within the path's span (and a filter's width) explains less
        lo, hi = centre - abs(move) // 2 - width, centre + abs(move) // 2 + width + 1
        path = centre + np.rint(move * position).astype(int)
        if best[centre] - straight[max(lo, 0):max(hi, 1)].max() > SLOPE_Z ** 2 and \
                abs(move + _beyond_path(z, path, position, width)) <= reach:
            edges.append(_traced(path, power, logs, width) + (int(sign[centre]),))
            # its echoes (its own sign) are left; a step the other way next to it is another
            # edge (a gold line's other side 24 pixels off was left untraced, taken as a
            # readout step: the map's R^2 0.20 against 0.39 without the line)
            near = slice(max(lo - width, 0), max(hi + width, 0))
            open_[near] &= sign[near] == -sign[centre]
        else:
            open_[max(centre - width, 0):centre + width + 1] = False
    return edges


def _beyond_path(z, path, position, width):
    """How much farther than ``path`` the edge moves over the frame, in pixels: the slope
    (per unit of ``position``) of where each band's step lies (its strongest |z| within two
    filter widths of the path, in the bands where the path's own score exceeds BAND_STEP_Z)
    against the path, within each run of such bands (pooled). A straight edge steeper than the traced paths reach is matched by one
    of them over the few bands where they cross (a strip 7.5 degrees off an axis, 1024 px:
    paths of 40 pixels where it moves 135), and the bands beyond lie off it; the coarse
    cells cut such an edge (:func:`specimen_cuts`) and the path must not claim it."""
    bands, length = z.shape
    inside = (path >= 0) & (path < length)
    strong = np.zeros(bands, bool)
    strong[inside] = np.abs(z[np.flatnonzero(inside), path[inside]]) > BAND_STEP_Z
    chosen = np.flatnonzero(strong)
    if chosen.size < 3:
        return 0.0
    offsets = np.arange(-2 * width, 2 * width + 1)
    where = np.clip(path[chosen, None] + offsets[None, :], 0, length - 1)
    found = offsets[np.argmax(np.abs(z[chosen[:, None], where]), axis=1)].astype(float)
    # the slope within each run of neighbouring bands, pooled: a path may cross two edges
    # (a strip's sides) in two runs, each moving off it alike, with a jump between them
    run = np.cumsum(np.r_[1, np.diff(chosen) > 2])
    x, y = position[chosen], found
    for label in np.unique(run):
        part = run == label
        x[part] -= x[part].mean()
        y[part] -= y[part].mean()
    spread = float(np.dot(x, x))
    return float(np.dot(x, y)) / spread if spread > 0 else 0.0


def _traced(path, power, logs, width):
    """A traced edge: (bands, pixels, half width) (:func:`sloped_edges` adds its step's
    sign). The bands are those whose step score
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


def _exclude_along(excluded, edge):
    """A traced edge's exclusion (bands x pixels, in place): in each of its bands, the
    pixels the edge's path and blur cover in any of its bands (the coarse cells' cuts of it
    gave way: :func:`_give_way`). Not the band's own pixels only: the two sides would then
    be linked by the few pixels that one band sees before the edge and another after it,
    with the edge's blur tail in them (measured: a 0.07 false step); across the gap the
    profile is the penalty's, no step."""
    chosen, pixels, reach = edge[:3]
    length = excluded.shape[1]
    inside = chosen < excluded.shape[0]
    chosen, pixels = chosen[inside], pixels[inside]
    if not chosen.size:
        return
    lo, hi = max(int(pixels.min()) - reach, 0), min(int(pixels.max()) + reach, length)
    excluded[chosen, lo:hi] = True


def _give_way(cut, edge, size):
    """``cut`` (bands of cells x steps, signed, in place) without the cuts that a traced
    edge's path replaces: in each of its bands, those of its sign within 3 cells of its
    path (they were that edge's, seen on the coarse grid). Its sign only: the other side of
    a strip (a gold line 7.5 degrees off an axis, 512 px: its traced path partial, 30 px
    off the far side) steps the other way; its cut cleared, the column profile took the
    gold's step (residual 11x the movie's without the line, the paper's flags firing)."""
    chosen, pixels, _, sign = edge
    boundary = (np.arange(cut.shape[1]) + 1) * size          # where each step lies
    for band, pixel in zip(chosen, pixels):
        if band < cut.shape[0]:
            near = np.abs(boundary - pixel) <= 3 * size
            cut[band, near & (cut[band] == sign)] = 0


def _exclude_across(excluded, edge, size):
    """A traced edge in the profile across it (bands x pixels, in place): the edge runs
    along the few bands it lies in, covering more or less of each as it moves, a ramp of
    their level that no other band shares; those bands are left out where it is in them
    (each band of the edge's own direction is ``size`` pixels of these bands' length)."""
    chosen, pixels, reach = edge[:3]
    for band, pixel in zip(chosen, pixels):
        first = max(int(pixel) - reach, 0) // size
        last = min((int(pixel) + reach) // size, excluded.shape[0] - 1)
        excluded[first:last + 1, band * size:(band + 1) * size] = True


def _gaps(along, size, length):
    """Full-resolution mask (bands x length) of the cells on either side of each cut of
    ``along`` (True where cut; bands of cells x steps along the line), widened by one cell
    for drift."""
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
    the profile's length, solved by Cholesky, its lower triangle only and a panel of
    PANEL_COLUMNS columns at a time (:func:`_offsets_panels`, :func:`_factor_panels`,
    :func:`_solve_panels`): half the dense system's memory (at 4096 columns 71 MB, not 128)
    and, since a piece puts weight only on its own columns, each panel's product only over
    the pieces that reach it. Written here rather than left to a sparse LU: a 4096-column
    profile with 13 000 pieces fills the column block densely in a poor order."""
    from scipy import linalg
    flat_piece, flat_w, column, cells, pinned, column_rhs, piece_rhs, diagonal, penalty = terms
    reduced_rhs = column_rhs - np.bincount(column, flat_w * (piece_rhs / pinned)[flat_piece],
                                           minlength=length)
    try:
        panels = _offsets_panels(terms, length)
        _factor_panels(panels)
        return _solve_panels(panels, reduced_rhs)
    except linalg.LinAlgError:      # positive definite in exact arithmetic; near-singular
        panels = None               # (the failed factor is half overwritten: made again)
        system = np.zeros((length, length), order='F')
        for first, panel in _offsets_panels(terms, length):
            width = panel.shape[1]
            system[first:, first:first + width] = panel
            system[first:first + width, first + width:] = panel[width:].T
        return linalg.solve(system, reduced_rhs, assume_a='sym', check_finite=False,
                            overwrite_a=True)


def _offsets_panels(terms, length):
    """A - B D^-1 B^T of :func:`_eliminate_offsets`, lower triangle: a list of (first column,
    panel), the panel (Fortran order) holding rows ``first`` on of columns ``first`` to
    ``first`` + PANEL_COLUMNS. B D^-1 B^T = sum over pieces of s s^T, s a piece's weights
    over sqrt of its total, non-zero on the columns the piece spans only: a panel's part is
    the product over the pieces that span one of its columns, from its first column to the
    farthest such piece's end, PIECES_PER_PRODUCT pieces at a time."""
    flat_piece, flat_w, column, cells, pinned, column_rhs, piece_rhs, diagonal, penalty = terms
    pieces = flat_piece[cells]
    scale = flat_w[cells] / np.sqrt(pinned[pieces])
    key = pieces * length + column[cells]       # a cell's piece and column
    del pieces
    if np.any(key[1:] < key[:-1]):              # (made by piece and column: not taken)
        order = np.argsort(key, kind='stable')
        key, scale = key[order], scale[order]
    # the weighted pieces' cells: key[starts[i]:starts[i + 1]], by column
    starts = np.r_[0, np.flatnonzero(key[1:] // length != key[:-1] // length) + 1, key.size]
    first_column, last_column = key[starts[:-1]] % length, key[starts[1:] - 1] % length
    piece_start = key[starts[:-1]] - first_column   # piece x length
    # the panels are views of one buffer: one allocation, given back whole when freed (many
    # panel-sized ones, under the allocator's mmap threshold, stay in the heap after it)
    firsts = list(range(0, length, PANEL_COLUMNS))
    sizes = [(length - first) * min(PANEL_COLUMNS, length - first) for first in firsts]
    buffer = np.zeros(sum(sizes))
    panels = []
    for first, start in zip(firsts, np.cumsum([0] + sizes[:-1])):
        width = min(PANEL_COLUMNS, length - first)
        panel = buffer[start:start + (length - first) * width].reshape(width, -1).T
        reaching = np.flatnonzero((first_column < first + width) & (last_column >= first))
        for chunk in np.array_split(reaching, -(-reaching.size // PIECES_PER_PRODUCT) or 1):
            if not chunk.size:
                continue
            # the chunk's cells from column ``first`` on, gathered piece by piece
            lo = np.searchsorted(key, piece_start[chunk] + first)
            counts = starts[chunk + 1] - lo
            taken = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            rows = max(int(last_column[chunk].max()) + 1, first + width) - first
            x = np.zeros((rows, chunk.size))
            x[key[taken] % length - first, np.repeat(np.arange(chunk.size), counts)] = \
                scale[taken]
            panel[:rows] -= x @ x[:width].T
            del x
        panel[np.arange(width), np.arange(width)] += diagonal[first:first + width]
        inner = np.arange(width - 1)
        panel[inner + 1, inner] -= penalty                # the step penalty's neighbours
        panel[inner, inner + 1] -= penalty
        if first + width < length:
            panel[width, width - 1] -= penalty            # the next panel's first column
        panels.append((first, panel))
    return panels


def _factor_panels(panels):
    """The Cholesky factor L (system = L L^T) of :func:`_offsets_panels`' system, in place,
    a panel at a time (right-looking: each panel, once factored, updates the panels to its
    right). Raises LinAlgError where the system is not positive definite."""
    from scipy import linalg
    for number, (first, panel) in enumerate(panels):
        width = panel.shape[1]
        block = linalg.cholesky(panel[:width], lower=True, check_finite=False)
        panel[:width] = block
        if panel.shape[0] > width:              # below: P L^-T
            panel[width:] = linalg.solve_triangular(block, panel[width:].T, lower=True,
                                                    check_finite=False).T
        for later_first, later in panels[number + 1:]:
            below = panel[later_first - first:]
            later -= below @ below[:later.shape[1]].T


def _solve_panels(panels, rhs):
    """x with L L^T x = rhs, L the factor of :func:`_factor_panels`."""
    from scipy import linalg
    solution = np.array(rhs, np.float64)
    for first, panel in panels:                           # L y = rhs
        width = panel.shape[1]
        part = slice(first, first + width)
        solution[part] = linalg.solve_triangular(panel[:width], solution[part], lower=True,
                                                 check_finite=False)
        solution[first + width:] -= panel[width:] @ solution[part]
    for first, panel in reversed(panels):                 # L^T x = y
        width = panel.shape[1]
        part = slice(first, first + width)
        solution[part] = linalg.solve_triangular(
            panel[:width], solution[part] - panel[width:].T @ solution[first + width:],
            lower=True, trans='T', check_finite=False)
    return solution


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
        # the coarse cells' cuts of a traced edge give way to its path (the cuts of its own
        # sign near it: a strip's other side steps the other way and keeps its cut), then
        # every edge's path is excluded
        along = (cut if axis == 1 else cut.T).copy()
        for edge in edges[axis]:
            _give_way(along, edge, size)
        excluded = _gaps(along != 0, size, length)[:bands]
        for edge in edges[axis]:
            _exclude_along(excluded, edge)
        for edge in edges[1 - axis]:
            _exclude_across(excluded, edge, size)
        return line_profile(logs, np.maximum(sums[axis], 0.0), excluded)

    return profile(1, cut_x, width), profile(0, cut_y, height)
