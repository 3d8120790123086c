"""Detector defects: dead and hot pixels, dead or broken rows and columns.

Found from the per-pixel raw count sums of the movies (best: they carry their
own noise model) and/or from a gain estimate (a correction that multiplies raw
frames: the detector's response is its inverse). Each pixel's response is
compared with the local level around it: a box mean (``box`` pixels) of the
pixels not yet flagged, computed twice so that the defects do not pull their
own reference down.

* dead pixel: response below ``dead_level`` x local level (or no signal at all, where
  a zero is not the shot noise of the local level: :func:`_improbable_zeros`);
* hot pixel: response above ``hot_level`` x local level;
  with counts, both must also be ``sigmas`` Poisson standard deviations away
  from the local level, so that shot noise is never called a defect (a dead
  pixel needs about sigmas^2 expected counts to be recognised);
* dead row/column: at least ``line_fraction`` of its pixels dead;
* broken row/column: the summed response of its recording pixels over the
  summed local level outside [``broken_level``, 1 / ``broken_level``] (a line
  that records, but wrongly); with counts also ``sigmas`` Poisson deviations off.

The result holds a label image (see ``LABELS``), counts per kind and the
MotionCor2 ``-DefectFile`` text: one rectangle ``x y w h`` (integers: column,
row, width, height) per line, a full row or column (or a run of adjacent
ones) as one rectangle, runs of adjacent defective pixels in a row as one
rectangle. Coordinates are in the frames as this project reads them (row 0 =
first stored row; see the readers' notes about RELION's Y flip of TIFF).

No pyworkflow/pwem import; the inputs may be NumPy or CuPy arrays (the
thresholds run in their module); the labels and rectangles are NumPy.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from .arrays import row_blocks
from .filters import array_module, masked_box_mean

#: label image values
GOOD, DEAD_PIXEL, HOT_PIXEL, DEAD_ROW, BROKEN_ROW, DEAD_COLUMN, BROKEN_COLUMN, UNUSABLE = range(8)
LABELS = {GOOD: 'good', DEAD_PIXEL: 'dead pixel', HOT_PIXEL: 'hot pixel', DEAD_ROW: 'dead row',
          BROKEN_ROW: 'broken row', DEAD_COLUMN: 'dead column', BROKEN_COLUMN: 'broken column',
          UNUSABLE: 'unusable (NaN/inf in the movie)'}
#: labels that are single pixels (the -DefectFile's runs within a row)
_PIXEL_KINDS = np.zeros(256, dtype=bool)
_PIXEL_KINDS[[DEAD_PIXEL, HOT_PIXEL, UNUSABLE]] = True
KINDS = ('dead_pixels', 'hot_pixels', 'dead_rows', 'broken_rows', 'dead_columns', 'broken_columns',
         'unusable_pixels')


@dataclass
class DefectSettings:
    dead_level: float = 0.2        # relative response below this: dead
    hot_level: float = 3.0         # relative response above this: hot
    sigmas: float = 6.0            # with counts: also this many Poisson sigmas off
    zero_alpha: float = 0.01       # with counts: a pixel that recorded nothing is dead where
    #                                the chance of such a zero anywhere in the frame
    #                                (pixels x exp(-expected counts)) is below this
    line_fraction: float = 0.5     # dead pixels in a line for a dead line
    broken_level: float = 0.7      # line median outside [b, 1/b]: broken line
    box: int = 15                  # local level: box mean of this size (odd)


@dataclass
class DefectMap:
    labels: np.ndarray                                 # uint8, see LABELS
    rows: dict = field(default_factory=dict)           # row index -> 'dead' | 'broken'
    columns: dict = field(default_factory=dict)        # column index -> 'dead' | 'broken'
    source: str = ''
    notes: list = field(default_factory=list)

    @property
    def mask(self):
        """True where a pixel is defective, whatever the kind."""
        return self.labels != GOOD

    @property
    def counts(self):
        labels = self.labels[self.labels != GOOD]   # few: bincount would widen them all
        per_label = np.bincount(labels, minlength=len(LABELS))
        return {
            'dead_pixels': int(per_label[DEAD_PIXEL]),
            'hot_pixels': int(per_label[HOT_PIXEL]),
            'dead_rows': sum(1 for kind in self.rows.values() if kind == 'dead'),
            'broken_rows': sum(1 for kind in self.rows.values() if kind == 'broken'),
            'dead_columns': sum(1 for kind in self.columns.values() if kind == 'dead'),
            'broken_columns': sum(1 for kind in self.columns.values() if kind == 'broken'),
            'unusable_pixels': int(per_label[UNUSABLE]),
        }

    def mark_unusable(self, mask):
        """Label pixels the movie holds no usable value for (NaN/inf): not a detector fault,
        but no gain can be judged there. They are left out of the -DefectFile's pixel runs
        only if already part of a line."""
        mask = np.asarray(mask, dtype=bool)
        self.labels[mask & (self.labels == GOOD)] = UNUSABLE
        self.labels[mask & ((self.labels == DEAD_PIXEL) | (self.labels == HOT_PIXEL))] = UNUSABLE

    def rectangles(self):
        """MotionCor2 rectangles (x, y, w, h): lines first, then runs of pixels in rows."""
        xs, ys, widths = self._pixel_runs()
        return self._line_rectangles() + list(zip(xs.tolist(), ys.tolist(), widths.tolist(),
                                                  [1] * xs.size))

    def _line_rectangles(self):
        rows_n, cols_n = self.labels.shape
        out = [(start, 0, length, rows_n) for start, length in _runs(sorted(self.columns))]
        return out + [(0, start, cols_n, length) for start, length in _runs(sorted(self.rows))]

    def _pixel_runs(self):
        """(x, y, width): the runs of single-pixel defects within rows, row by row."""
        ys, xs = np.nonzero(self.labels)   # row by row, columns ascending within a row
        single = _PIXEL_KINDS[self.labels[ys, xs]]
        ys, xs = ys[single], xs[single]
        # a run ends where the next pixel is on another row or not the next column
        ends = np.flatnonzero((np.diff(ys) != 0) | (np.diff(xs) != 1))
        starts = np.concatenate(([0], ends + 1)) if ys.size else ends
        stops = np.concatenate((ends, [ys.size - 1])) if ys.size else ends
        return xs[starts], ys[starts], xs[stops] + 1 - xs[starts]

    def defect_file_text(self):
        """The MotionCor2 -DefectFile text: 'x y w h' per line."""
        return ''.join(f"{x} {y} {w} {h}\n" for x, y, w, h in self.rectangles())

    def to_dict(self):
        return {'counts': self.counts, 'rows': {str(k): v for k, v in sorted(self.rows.items())},
                'columns': {str(k): v for k, v in sorted(self.columns.items())},
                'rectangles': len(self._line_rectangles()) + self._pixel_runs()[0].size,
                'source': self.source,
                'labels': {str(k): v for k, v in LABELS.items()}, 'notes': list(self.notes)}


def _runs(indices):
    """(start, length) of runs of consecutive integers in sorted ``indices``."""
    runs = []
    for index in indices:
        if runs and index == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([index, 1])
    return [tuple(run) for run in runs]


def find_defects(gain=None, counts=None, no_signal=None, settings=None):
    """Dead/hot pixels and dead/broken lines from raw count sums and/or a gain estimate.

    gain: a correction that multiplies raw frames (e.g. ``GainResult.gain``);
    counts: per-pixel sums of raw frames (e.g. ``GainResult.numerator`` of a
    non-residual SME estimate); no_signal: pixels known to hold no signal
    (e.g. ``GainResult.defects``), counted dead. With both gain and counts the
    counts decide (they carry Poisson noise to test against). Returns a
    :class:`DefectMap`.
    """
    settings = settings or DefectSettings()
    if gain is None and counts is None:
        raise ValueError("find_defects needs a gain estimate or count sums")
    source_array = counts if counts is not None else gain
    xp = array_module(source_array)
    notes = []
    response, source = _response(gain, counts, xp)
    if source == 'counts' and gain is not None:
        notes.append("count sums used; the gain estimate was not needed")
    if response.ndim != 2 or min(response.shape) < 3:
        raise ValueError(f"defects need a 2-D map, not shape {tuple(response.shape)}")
    silent = xp.zeros(response.shape, dtype=bool) if no_signal is None else \
        xp.asarray(no_signal, dtype=bool)
    # a pixel the estimate holds no value for that recorded counts (under gold foil: the
    # robust method's dim pixels) is not estimable from this movie, not dead
    zero = silent
    if source == 'counts':
        zero = _improbable_zeros(response, silent & (response <= 0), settings, xp)
    response[silent] = 0.0
    usable = ~silent & (response > 0)
    size = int(settings.box) | 1
    level = masked_box_mean(response, usable, size, xp)[0]
    dead, hot = _off_level(response, level, zero, settings, source == 'counts', xp)
    if bool(hot.any()):
        # a second pass leaves out the hot pixels the first one found: one at 50000
        # counts raises its whole box's level, and its neighbours look dead next to it
        usable &= ~hot
        level, changed = level_without(response, usable, level, hot, size, xp)
        for box in changed:   # the pixels whose level changed: judged again
            dead[box], hot[box] = _off_level(response[box], level[box], zero[box], settings,
                                             source == 'counts', xp)
    # what the estimate holds no value for and is not dead (its zeroed response looks dead
    # beside its neighbours' level) is left out of the pixels and of the lines' sums
    unknown = silent & ~zero
    dead &= ~unknown
    if source == 'counts':
        notes += _shot_noise_notes(level, silent, settings, xp)
    rows, columns = _broken_lines(response, level, dead, hot, settings, source, xp, unknown)
    labels = to_numpy(dead).astype(np.uint8) * np.uint8(DEAD_PIXEL)
    labels[to_numpy(hot)] = HOT_PIXEL
    for index, kind in rows.items():
        labels[index, :] = DEAD_ROW if kind == 'dead' else BROKEN_ROW
    for index, kind in columns.items():
        labels[:, index] = DEAD_COLUMN if kind == 'dead' else BROKEN_COLUMN
    return DefectMap(labels=labels, rows=rows, columns=columns, source=source, notes=notes)


def _response(gain, counts, xp):
    """(response, source): the detector's response per pixel (float32, a copy: finite and
    not negative), from the counts when given, else the inverse of the gain."""
    if counts is not None:
        response = xp.array(counts, dtype=xp.float32)
        source = 'counts'
    else:
        correction = xp.asarray(gain, dtype=xp.float32)
        positive = xp.isfinite(correction) & (correction > 0)
        response = xp.where(positive, 1 / xp.where(positive, correction, xp.float32(1)),
                            xp.float32(0))
        source = 'gain'
    response[~xp.isfinite(response)] = 0.0
    xp.maximum(response, 0.0, out=response)
    return response, source


#: rows of the candidates' products made at once (a 4K frame's product: 64 MB)
CANDIDATE_ROWS = 256


#: the second pass recomputes the level only around the first pass's hot pixels when
#: their windows cover less than this share of the frame
_WINDOWED_SHARE = 0.1


def level_without(response, usable, level, hot, size, xp):
    """The local level again, now over ``usable`` (the first pass's hot pixels left out),
    and the boxes (pairs of slices) where it changed.

    Only the boxes that hold a hot pixel change: where the hot pixels are few (NumPy),
    the level is recomputed in a window of two box widths around each and its centre,
    the box width around the pixel, replaces the old level in ``level`` itself (no copy of
    the frame's level: the windows are made from ``response`` and ``usable``); a window
    cut by the frame's edge is reflected there as the whole frame is, so the values are
    the same.
    """
    points = to_numpy(xp.argwhere(hot)) if xp is np else None
    if points is None or points.shape[0] * (2 * size + 1) ** 2 > _WINDOWED_SHARE * hot.size:
        return masked_box_mean(response, usable, size, xp)[0], [(slice(None), slice(None))]
    half = size // 2
    rows, cols = hot.shape
    changed = []   # (``level`` changed in place: the caller's first pass, not used again)
    for y, x in points.tolist():
        window = (slice(max(0, y - 2 * half), min(rows, y + 2 * half + 1)),
                  slice(max(0, x - 2 * half), min(cols, x + 2 * half + 1)))
        local = masked_box_mean(response[window], usable[window], size, xp)[0]
        top, left = max(0, y - half), max(0, x - half)
        bottom, right = min(rows, y + half + 1), min(cols, x + half + 1)
        level[top:bottom, left:right] = local[top - window[0].start:bottom - window[0].start,
                                              left - window[1].start:right - window[1].start]
        changed.append((slice(top, bottom), slice(left, right)))
    return level, changed


def _off_level(response, level, silent, settings, counts, xp):
    """(dead, hot) against the local ``level``: relative response below ``dead_level`` or
    above ``hot_level``, with ``counts`` also ``sigmas`` Poisson deviations away.

    Products find the candidates (a margin of 1e-5 wider than the ratios, far beyond
    float32 rounding); the ratios and the Poisson test run on those few pixels only.
    """
    dead = xp.zeros(response.shape, dtype=bool)
    hot = xp.zeros(response.shape, dtype=bool)
    candidates = xp.empty(response.shape, dtype=bool)
    for rows in row_blocks(response.shape[0], CANDIDATE_ROWS):   # no frame-sized product
        value, local = response[rows], level[rows]
        candidates[rows] = value < local * xp.float32(settings.dead_level * (1 + 1e-5))
        candidates[rows] |= value > local * xp.float32(settings.hot_level * (1 - 1e-5))
        candidates[rows] |= local < xp.float32(1e-30)   # no level: the ratio is taken as 1
    index = xp.flatnonzero(candidates)
    del candidates
    value, local = response.ravel()[index], level.ravel()[index]
    relative = xp.where(local > 0, value / xp.where(local > 0, local, xp.float32(1)),
                        xp.float32(1))
    low = relative < settings.dead_level
    high = relative > settings.hot_level
    if counts:
        spread = xp.sqrt(xp.maximum(local, xp.float32(1e-12))) * xp.float32(settings.sigmas)
        low &= local - value > spread
        high &= value - local > spread
    dead.ravel()[index[low]] = True
    hot.ravel()[index[high]] = True
    dead |= silent
    return dead, hot


def _improbable_zeros(counts, zeros, settings, xp):
    """The pixels of ``zeros`` (no signal, no counts) whose zero is not shot noise: dead.

    Under Poisson law a pixel expecting lambda counts records none with chance
    exp(-lambda); over the frame's N pixels a zero anywhere is a false alarm with chance
    N exp(-lambda), so a zero is dead where lambda > ln(N / ``zero_alpha``) (18 counts at
    1024 x 1024, 21 at 4096 x 4096). lambda is the median of the pixel's 8 neighbours,
    zeros included: under gold foil, and on its rim (at most 3 neighbours in the open), it
    is the foil's few counts; beside a dead pixel or in a dead line (2 neighbours) the
    open's (the mean took 3 neighbours in the open for 12 % of a rim's zeros). Every zero
    was called dead: at 10 counts per pixel 12 pixels of a 512 x 512 movie without any
    dead pixel (exp(-10) x 262144), and every pixel of a foil the robust method left out,
    into the MotionCor2 defect file."""
    rows, cols = (xp.asarray(index) for index in xp.nonzero(zeros))
    dead = xp.zeros(zeros.shape, dtype=bool)
    if rows.size == 0:
        return dead
    limit = float(np.log(zeros.size / settings.zero_alpha))
    # the median of 8 values, (4th + 5th) / 2, exceeds the limit only where at least 4 of
    # them do: the median is taken of those zeros only (at a low dose every pixel without
    # counts is a zero to test, 2 % of the frame at 4 counts, and none is dead)
    above = xp.zeros(rows.shape, dtype=xp.uint8)
    for dy, dx in _NEIGHBOURS:
        above += _neighbour(counts, rows, cols, dy, dx, xp) > limit
    candidate = above >= 4
    rows, cols = rows[candidate], cols[candidate]
    if rows.size == 0:
        return dead
    around = xp.stack([_neighbour(counts, rows, cols, dy, dx, xp) for dy, dx in _NEIGHBOURS],
                      axis=1)
    expected = xp.median(around, axis=1)
    keep = expected > limit
    dead[rows[keep], cols[keep]] = True
    return dead


_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _neighbour(counts, rows, cols, dy, dx, xp):
    """``counts`` at (``rows`` + dy, ``cols`` + dx); at the frame's edge the row or column
    itself stands in for the one beyond it."""
    height, width = counts.shape
    return counts[xp.clip(rows + dy, 0, height - 1), xp.clip(cols + dx, 0, width - 1)]


def _shot_noise_notes(level, silent, settings, xp):
    """What shot noise leaves undecidable: pixels expecting fewer than sigmas^2 counts."""
    undecidable = int(((level < settings.sigmas ** 2) & ~silent).sum())
    if undecidable > 0.5 * level.size:
        step = max(1, int(np.sqrt(level.size / 1e6)))   # a million pixels set the median
        return [f"at about {float(to_numpy(xp.median(level[::step, ::step]))):.0f} counts per pixel "
                f"a dead pixel cannot be told from shot noise ({settings.sigmas ** 2:g} are "
                f"needed): only pixels without any signal where a zero is improbable are "
                f"called dead; the running estimate of a session gathers enough"]
    if undecidable:
        return [f"{undecidable} pixel(s) expected fewer than {settings.sigmas ** 2:g} counts: "
                f"too few to call them dead"]
    return []


def _broken_lines(response, level, dead, hot, settings, source, xp, unknown):
    """(rows, columns): index -> 'dead' or 'broken', from the recording pixels' sums
    (``unknown``: pixels left out of them, neither dead nor recording)."""
    rows, columns = {}, {}
    # the recording pixels' sums: each line's sum less its few dead and hot pixels
    not_recording = xp.flatnonzero(dead | hot | unknown)
    off_line = {1: not_recording // dead.shape[1], 0: not_recording % dead.shape[1]}
    off_response = response.ravel()[not_recording].astype(xp.float64)
    off_level = level.ravel()[not_recording].astype(xp.float64)
    for axis, lines in ((1, rows), (0, columns)):  # axis summed over: 1 -> per row
        dead_share = to_numpy(xp.count_nonzero(dead, axis=axis)) / dead.shape[axis]
        got, expected = (_sum_less(full, off_line[axis], off_values, axis, xp)
                         for full, off_values in ((response, off_response), (level, off_level)))
        ratio = np.where(expected > 0, got / np.maximum(expected, 1e-12), 1.0)
        off = (ratio < settings.broken_level) | (ratio > 1 / settings.broken_level)
        if source == 'counts':  # and more than shot noise could do
            off &= np.abs(got - expected) > settings.sigmas * np.sqrt(np.maximum(expected, 1e-12))
        for index in range(dead_share.size):
            if dead_share[index] >= settings.line_fraction:
                lines[index] = 'dead'
            elif off[index]:
                lines[index] = 'broken'
    return rows, columns


def _sum_less(image, lines, values, axis, xp):
    """Per line, the sum of ``image`` less ``values`` (its pixels on ``lines``): float64,
    0 where what is left is within rounding of nothing."""
    full = image.sum(axis=axis, dtype=xp.float64)
    left = full - xp.bincount(lines, weights=values, minlength=full.size)
    return to_numpy(xp.where(left > 1e-9 * xp.abs(full), left, 0.0))


def to_numpy(array):
    get = getattr(array, 'get', None)
    return get() if callable(get) else np.asarray(array)
