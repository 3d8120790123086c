"""Detector defects: dead and hot pixels, dead or broken rows and columns.

Found from the per-pixel raw count sums of the movies (best: they carry their
own noise model) and/or from a gain estimate (a correction that multiplies raw
frames: the detector's response is its inverse). Each pixel's response is
compared with the local level around it: a box mean (``box`` pixels) of the
pixels not yet flagged, computed twice so that the defects do not pull their
own reference down.

* dead pixel: response below ``dead_level`` x local level (or no signal at all);
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

from .filters import array_module, masked_box_mean

#: label image values
GOOD, DEAD_PIXEL, HOT_PIXEL, DEAD_ROW, BROKEN_ROW, DEAD_COLUMN, BROKEN_COLUMN, UNUSABLE = range(8)
LABELS = {GOOD: 'good', DEAD_PIXEL: 'dead pixel', HOT_PIXEL: 'hot pixel', DEAD_ROW: 'dead row',
          BROKEN_ROW: 'broken row', DEAD_COLUMN: 'dead column', BROKEN_COLUMN: 'broken column',
          UNUSABLE: 'unusable (NaN/inf in the movie)'}
KINDS = ('dead_pixels', 'hot_pixels', 'dead_rows', 'broken_rows', 'dead_columns', 'broken_columns',
         'unusable_pixels')


@dataclass
class DefectSettings:
    dead_level: float = 0.2        # relative response below this: dead
    hot_level: float = 3.0         # relative response above this: hot
    sigmas: float = 6.0            # with counts: also this many Poisson sigmas off
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
        labels = self.labels
        return {
            'dead_pixels': int((labels == DEAD_PIXEL).sum()),
            'hot_pixels': int((labels == HOT_PIXEL).sum()),
            'dead_rows': sum(1 for kind in self.rows.values() if kind == 'dead'),
            'broken_rows': sum(1 for kind in self.rows.values() if kind == 'broken'),
            'dead_columns': sum(1 for kind in self.columns.values() if kind == 'dead'),
            'broken_columns': sum(1 for kind in self.columns.values() if kind == 'broken'),
            'unusable_pixels': int((labels == UNUSABLE).sum()),
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
        rows_n, cols_n = self.labels.shape
        out = [(start, 0, length, rows_n) for start, length in _runs(sorted(self.columns))]
        out += [(0, start, cols_n, length) for start, length in _runs(sorted(self.rows))]
        pixels = ((self.labels == DEAD_PIXEL) | (self.labels == HOT_PIXEL)
                  | (self.labels == UNUSABLE))
        if pixels.any():
            padded = np.zeros((rows_n, cols_n + 2), dtype=np.int8)
            padded[:, 1:-1] = pixels
            steps = np.diff(padded, axis=1)
            starts_y, starts_x = np.nonzero(steps == 1)
            ends_y, ends_x = np.nonzero(steps == -1)  # same row order as the starts
            for y, x, end in zip(starts_y.tolist(), starts_x.tolist(), ends_x.tolist()):
                out.append((x, y, end - x, 1))
        return out

    def defect_file_text(self):
        """The MotionCor2 -DefectFile text: 'x y w h' per line."""
        return ''.join(f"{x} {y} {w} {h}\n" for x, y, w, h in self.rectangles())

    def write_defect_file(self, path):
        """Write the -DefectFile text atomically (temp file + rename)."""
        path = str(path)
        tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                           f".{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            with open(tmp, 'w') as handle:
                handle.write(self.defect_file_text())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def to_dict(self):
        return {'counts': self.counts, 'rows': {str(k): v for k, v in sorted(self.rows.items())},
                'columns': {str(k): v for k, v in sorted(self.columns.items())},
                'rectangles': len(self.rectangles()), 'source': self.source,
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
    if counts is not None:
        response = xp.asarray(counts, dtype=xp.float64)
        source = 'counts'
        if gain is not None:
            notes.append("count sums used; the gain estimate was not needed")
    else:
        correction = xp.asarray(gain, dtype=xp.float64)
        positive = xp.isfinite(correction) & (correction > 0)
        response = xp.where(positive, 1.0 / xp.where(positive, correction, 1.0), 0.0)
        source = 'gain'
    if response.ndim != 2 or min(response.shape) < 3:
        raise ValueError(f"defects need a 2-D map, not shape {tuple(response.shape)}")
    response = xp.where(xp.isfinite(response), xp.maximum(response, 0.0), 0.0)
    silent = xp.zeros(response.shape, dtype=bool) if no_signal is None else \
        xp.asarray(no_signal, dtype=bool)
    response = xp.where(silent, 0.0, response)
    size = int(settings.box) | 1
    usable = ~silent & (response > 0)
    level = response
    for _ in range(2):
        # the second pass leaves out the hot pixels the first one found: one at 50000
        # counts raises its whole box's level, and its neighbours look dead next to it
        level = masked_box_mean(response, usable, size, xp)[0]
        relative = xp.where(level > 0, response / xp.where(level > 0, level, 1.0), 1.0)
        dead = silent | (relative < settings.dead_level)
        hot = relative > settings.hot_level
        if source == 'counts':
            spread = settings.sigmas * xp.sqrt(xp.maximum(level, 1e-12))
            dead = silent | (dead & (level - response > spread))
            hot = hot & (response - level > spread)
        usable = usable & ~hot
    if source == 'counts':
        undecidable = int(((level < settings.sigmas ** 2) & ~silent).sum())
        if undecidable > 0.5 * response.size:
            notes.append(f"at about {float(to_numpy(xp.median(level))):.0f} counts per pixel a "
                         f"dead pixel cannot be told from shot noise ({settings.sigmas ** 2:g} "
                         f"are needed): only pixels without any signal are called dead; the "
                         f"running estimate of a session gathers enough")
        elif undecidable:
            notes.append(f"{undecidable} pixel(s) expected fewer than {settings.sigmas ** 2:g} "
                         f"counts: too few to call them dead")
    rows, columns = {}, {}
    recording = ~(dead | hot)
    for axis, lines in ((1, rows), (0, columns)):  # axis summed over: 1 -> per row
        dead_share = to_numpy(dead.mean(axis=axis))
        got = to_numpy(xp.where(recording, response, 0.0).sum(axis=axis))
        expected = to_numpy(xp.where(recording, level, 0.0).sum(axis=axis))
        ratio = np.where(expected > 0, got / np.maximum(expected, 1e-12), 1.0)
        off = (ratio < settings.broken_level) | (ratio > 1 / settings.broken_level)
        if source == 'counts':  # and more than shot noise could do
            off &= np.abs(got - expected) > settings.sigmas * np.sqrt(np.maximum(expected, 1e-12))
        for index in range(dead_share.size):
            if dead_share[index] >= settings.line_fraction:
                lines[index] = 'dead'
            elif off[index]:
                lines[index] = 'broken'
    labels = np.zeros(response.shape, dtype=np.uint8)
    labels[to_numpy(dead)] = DEAD_PIXEL
    labels[to_numpy(hot)] = HOT_PIXEL
    for index, kind in rows.items():
        labels[index, :] = DEAD_ROW if kind == 'dead' else BROKEN_ROW
    for index, kind in columns.items():
        labels[:, index] = DEAD_COLUMN if kind == 'dead' else BROKEN_COLUMN
    return DefectMap(labels=labels, rows=rows, columns=columns, source=source, notes=notes)


def to_numpy(array):
    get = getattr(array, 'get', None)
    return get() if callable(get) else np.asarray(array)
