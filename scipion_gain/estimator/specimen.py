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
   share: :func:`.line_profiles.specimen_cuts`), the band's profile is cut there and each
   piece gets its own offset, so a carbon plateau, a hole or a gold foil
   enters only as offsets. The column profile is the least-squares fit of all
   pieces with free offsets, weighted by their counts (:func:`.line_profiles.line_profile`);
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
   their expectation over all draws (:mod:`.thinning`): the SME's tables
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
resolution (:func:`.line_profiles.sloped_edges`): a readout step sits on one pixel line over
its whole extent, an edge 0.5 degrees off moves 9 pixels over 1024 lines. An
edge on a pixel axis to within a pixel over the frame is kept as a readout step, unless
its lines pass under 1 / DIM of the typical line's electrons (a gold strip: the specimen's,
:func:`_detector_lines`).
Pixels under a nearly opaque specimen (gold foil) are returned as not estimable
(the result's ``defects``): the movie holds no pixel detail there. A session
tells both apart (specimens move, the detector does not): see
:mod:`.session` and :class:`.gain.GainAccumulator`.

Step 1 lives in :mod:`.line_profiles`, the thinned sums of step 3 in :mod:`.thinning`, step 4
in :mod:`.pixels`; here the specimen model, the estimate (:func:`estimate_flattened`) and
the session's weights. Pure functions of NumPy arrays; the frames are read by
:func:`.gain.estimate_gain`.
"""
import numpy as np
from scipy import ndimage

from .arrays import row_blocks, to_numpy
from .estimate import GainResult, correction_from_sums
from .planes import map_plane, plane_factor, shrink_plane
# DIM: a pixel whose specimen passes less than 1 / DIM of the typical level is left to
# its lines here, and gets no pixel term there (one threshold: pixels.DIM)
from .pixels import (DIM, SumCounts, log_blocks, line_log_sums, line_prior, local_level,
                     pixel_detail, typical_level)
from .line_profiles import (GAP_SIDE, binned, counts_per_pixel, line_profiles,
                            too_small_for_cells)
from .sme import DEFAULT_SIGMA_GRID
from .thinning import (ROWS_PER_BLOCK, STAND_IN_WEIGHT, drawn_sums, expected_thinning)
from .transfer import FrameUploader

#: the median of the specimen model: pixels across (at full resolution)
MODEL_WINDOW = 21
#: ... taken on cells of this many pixels a side (the model is constant over a cell)
MODEL_CELL = 4
#: a pixel this many Poisson deviations under the specimen model, and dim, is one the model
#: missed (a false alarm on 3e-7 of the pixels); a cell with MISSED_PIXELS of them is dim
MISSED_Z = 5.0
MISSED_PIXELS = 3


def specimen_model(total, window=MODEL_WINDOW, size=None):
    """The specimen (times the movie's dose) as the sum ``total`` shows it: positive,
    the sum's shape, no line pattern of the detector (module docstring, steps 1-2).
    Returns (model, lines): ``model`` a :class:`CellModel`, ``lines`` the (row, column)
    factors exp(row profile), exp(column profile) of the detector's line structure that
    was divided out first (their outer product, :func:`_line_frame`, is a 4K frame that
    only the stand-ins of dim pixels need)."""
    total = np.asarray(total, np.float64)
    columns, rows = line_profiles(total, size)
    lines = (np.exp(_detector_lines(rows, window)), np.exp(_detector_lines(columns, window)))
    # the median on MODEL_CELL x MODEL_CELL cells (their means), over the cells of a
    # window as wide as ``window`` pixels: each cell averages MODEL_CELL^2 pixels, so the
    # median of the window's cells is as noisy as the pixels' (1.25 x a cell's spread over
    # the square root of their number: 0.06 of a pixel's spread either way), at 1 /
    # MODEL_CELL^4 of the work (4 x 4 cells: 0.3 s at 4096 x 4096 against 5 s for 2 x 2)
    cell = MODEL_CELL
    across = max(1, window // (2 * cell)) * 2 + 1
    if min(total.shape) >= cell * 4 * across:
        # the cells a band of rows at a time: no 4K frame of the flattened sum or the lines
        cells = np.concatenate([binned(total[band] / np.outer(lines[0][band], lines[1]), cell)
                                for band in row_blocks(total.shape[0] // cell * cell,
                                                       ROWS_PER_BLOCK)])
        smooth = ndimage.median_filter(cells / float(cell * cell), size=across, mode='reflect')
        floor = 1e-3 * max(float(np.mean(smooth)), 1e-12)
        return CellModel(np.maximum(smooth, floor), cell, total.shape,
                         observed=cells / float(cell * cell)), lines
    model = ndimage.median_filter(total / _line_frame(lines), size=window, mode='reflect')
    floor = 1e-3 * max(float(np.mean(model)), 1e-12)
    return CellModel(np.maximum(model, floor), 1, total.shape), lines


def _detector_lines(profile, window=MODEL_WINDOW):
    """The log line ``profile`` with the lines no sensor has taken out: a line that passes
    less than 1 / DIM of the typical line's electrons (:func:`.pixels.typical_level`) is
    a nearly opaque specimen lying along it, not a sensitivity (a line that weak is a
    defect either way). A gold strip on a pixel axis to within a pixel is cut alike in
    every band, so the profile took it for a readout step and the map held 1 /
    transmission, 20 times, in its lines. Those lines, and ``window`` // 2 lines either
    side (the strip's rim, blurred by the drift, as wide as the model's median), take the
    profile interpolated from beyond, after the two sides of each such run are levelled by
    GAP_SIDE lines beyond each (the run links them only through the strip's rims: a strip
    0.04 degrees off a row, cut in some bands and not in others, left its sides 0.45 apart
    in log), as line_profiles levels the parts that no piece links. The specimen model then
    shows the strip as dim, and the map leaves it out (:func:`_dim_left_out`)."""
    profile = np.asarray(profile, np.float64)
    finite = np.isfinite(profile)
    if not finite.any():
        return profile
    # against the typical line as the specimen model's typical level is taken (a strip
    # wider than half the frame holds the median line itself: pixels.typical_level)
    typical = np.log(typical_level(np.exp(profile[finite])))
    weak = ~finite | (profile < typical - np.log(DIM))
    if not weak.any():
        return profile
    weak = ndimage.binary_dilation(weak, iterations=max(1, window // 2))
    if weak.all():
        return np.zeros_like(profile)
    out = profile.copy()
    for (run,) in ndimage.find_objects(ndimage.label(weak)[0]):
        if 0 < run.start and run.stop < out.size:
            before = out[max(0, run.start - GAP_SIDE):run.start]
            after = out[run.stop:run.stop + GAP_SIDE]
            out[run.stop:] += before.mean() - after.mean()
    lines = np.arange(out.size)
    out[weak] = np.interp(lines[weak], lines[~weak], out[~weak])
    return out


def _missed_dark(model, level, total):
    """The cells the median passed over: a nearly opaque specimen narrower than half its
    window (a sliver of gold foil along the frame's edge, where the window reflects the
    exposed side: 173 pixels of one count taken for exposed ones, each a value of 10 or
    more in the map, and the exact reference's residual std 0.098; with drift, a sliver
    one or two pixels wide). A cell is dim when MISSED_PIXELS of its pixels, or the cell's
    sum, lie under 1 / DIM of the typical ``level`` and MISSED_Z Poisson deviations under
    the model (an isolated dead pixel is one; a dead column takes a quarter of its cells'
    counts, and only the cells whose own mean is under half the level are looked at).
    False (none) for a model at full resolution."""
    if model.observed is None:
        return False
    dark = np.zeros(model.cells.shape, bool)
    cells = np.argwhere(model.observed * 2 < level)
    if not len(cells):
        return dark
    per_count = counts_per_pixel(total) / max(level, 1e-12)   # counts a unit of the sum holds
    side = np.arange(model.cell)
    rows, cols = cells[:, 0], cells[:, 1]
    pixels = per_count * np.asarray(total)[rows[:, None, None] * model.cell + side[:, None],
                                           cols[:, None, None] * model.cell + side]
    expected = per_count * model.cells[rows, cols][:, None, None]
    missed = ((pixels * DIM < per_count * level)
              & (expected - pixels > MISSED_Z * np.sqrt(expected)))
    # ... or the cell's own sum so (the cell's mean Poisson law: 16 pixels' worth of counts)
    seen, foreseen = pixels.sum(axis=(1, 2)), expected[:, 0, 0] * model.cell ** 2
    found = ((missed.sum(axis=(1, 2)) >= MISSED_PIXELS)
             | ((seen * DIM < per_count * level * model.cell ** 2)
                & (foreseen - seen > MISSED_Z * np.sqrt(foreseen))))
    dark[rows[found], cols[found]] = True
    return dark


def _line_frame(lines):
    """The detector's line structure as a frame: the outer product of (row, column) factors."""
    return np.outer(lines[0], lines[1])


class CellModel:
    """The specimen model, constant over ``cell`` x ``cell`` pixels: its cells' values and
    the frame's shape (the partial cells at the far edges take their neighbours', as
    :func:`_upsampled` writes them). Indexed as the full-resolution frame would be, a
    block at a time (``model[rows]``, ``model[::7, ::7]``), so that no 4K float64 model
    is written (128 MB, 0.4 s at 4096 x 4096)."""

    def __init__(self, cells, cell, shape, observed=None):
        self.cells, self.cell, self.shape = cells, int(cell), tuple(shape)
        self.dtype = cells.dtype
        # the cells' own means before the median (None: a model at full resolution)
        self.observed = observed

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

    def typical(self):
        """The specimen's typical level (:func:`.pixels.typical_level`: the level the
        typical count arrived at) over the frame's pixels: the cells' when every cell is
        whole (each counts cell^2 times: the same weighted middle)."""
        whole = all(side == cells * self.cell for side, cells in zip(self.shape, self.cells.shape))
        return typical_level(self.cells if whole else self[:])


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
    level = model.typical()
    dim = model.of_cells((model.cells * DIM < level) | _missed_dark(model, level, total))
    if dim.any():   # and its rim, where the model is as blurred as the median window is wide
        dim = ndimage.maximum_filter(dim, size=MODEL_WINDOW)
    stand_ins = bool(dim.any() and not dim.all())
    # only the stand-ins need the lines as a frame (a 4K float64 frame)
    lines = _line_frame(lines) if stand_ins else None
    rng = np.random.default_rng(0)
    thinning = frames is None and counts is not None
    expected = expected_thinning(total, counts, model, level, dim,
                                  lines if stand_ins else None, rng,
                                  reference, sigma, sigma_grid) if thinning else None
    if expected is None:
        numerator, denominator, sigmas = drawn_sums(total, counts, model, level, dim,
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
    any_dim = bool(dim.any())
    for rows in row_blocks(total.shape[0], ROWS_PER_BLOCK):
        weight = model[rows] / level
        if any_dim:   # (without dim pixels the selections below change nothing)
            weight = np.where(dim[rows], STAND_IN_WEIGHT, weight)
            # a dim pixel that recorded nothing (a dead one, or a live one the gold let
            # nothing through to) adds nothing: its stand-in's share would make a dead
            # pixel, zero in every other movie's numerator, a finite 'good' one of the
            # session (measured: 1881)
            weight[dim[rows] & (total[rows] <= 0)] = 0.0
        numerator[rows] *= weight
        denominator[rows] *= weight
    return numerator, denominator, sigmas, dim & ~np.all(dim)


def estimate_flattened(source, settings, dev, progress=None, per_frame=False, keep_sums=True,
                       summed=None):
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
    the pixel term's peak then does not hold); the result's are None. ``summed(total)``:
    called with the sum of the corrected frames (the result's ``frame_sum``) once the
    method takes the movie, before the specimen model (not with ``per_frame``, which reads
    the frames again).
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
                for rows in row_blocks(counts.shape[0], ROWS_PER_BLOCK))
    # whole counts are held as int32 (what the thinning draws from), others not at all
    counts = counts.astype(np.int32) if whole else None
    if not whole and source.gain_reference is not None:
        # measured noisier than the paper's residual (integrating 512 x 512 x 20: std 0.20
        # against 0.035); the caller takes the paper's SME (see gain.estimate_gain)
        return "the frames are not counts and a reference is given"
    too_small = too_small_for_cells(total)
    if too_small:
        return too_small
    if summed is not None and not per_frame:
        summed(total)

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
    # (the plane measured once: the shrinkage takes the same one)
    plane = map_plane(correction, defects)
    factor = plane_factor([plane], sectors=source.gain_reference is None)
    correction = shrink_plane(correction, defects, factor, plane)
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
