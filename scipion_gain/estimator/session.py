"""Detector structure that only a session shows: smooth fields and single pixels.

In one movie a smooth field (a flat-field error, a burnt-in patch where the
beam sat) cannot be told from a thickness gradient of the ice, and a pixel's
sensitivity from the specimen's texture under it. Across the movies of a
session the specimen changes and the detector does not:

* **smooth field**: each movie's corrected sum, averaged over tiles of
  ``tile`` pixels (:func:`movie_tiles`), minus its own median; the median of
  those maps over the movies keeps what is the same in all of them (the
  detector, and the illumination, which is fixed on the detector too) and
  drops carbon, holes and ice, which are elsewhere in each movie. Its noise is
  the spread between movies.
* **pixels**: the session's movies in two halves (``alternate``: the movies
  :func:`half_of` puts in the second half); each half's sum divided by its local mean
  (``box`` pixels) leaves each pixel's sensitivity, shot noise and the
  specimen's texture; the mean product of the two halves keeps only what
  they share, the detector (Wiener-weighted into the map).

Both need several movies (``min_movies``); the per-movie line structure
(:mod:`.assessment`) is taken out first, so nothing is counted twice.
"""
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .arrays import quiet_nan_warnings
from .filters import masked_box_mean

#: tile side (pixels) of the per-movie maps kept for the smooth field
TILE = 32


@dataclass(frozen=True)
class SessionThresholds:
    z: float = 7.0            # significance of pixel structure (standard errors)
    smooth_z: float = 5.0     # significance of a smooth field (chance spreads)
    smooth_size: float = 0.003  # RMS below which a smooth field is not reported
    pixel_size: float = 0.003   # RMS below which pixel structure is not reported
    min_movies: int = 6       # movies needed for either
    box: int = 9              # local mean of the pixel test (pixels, odd)

    def to_json(self):
        return asdict(self)


def half_of(index):
    """0 or 1: which half of a session the ``index``-th movie added belongs to.

    Not simply alternating: sessions often alternate themselves (two or four
    exposures per hole, the first near the carbon), and a split in step with
    them would put the specimen in one half. The Thue-Morse sequence (the
    parity of the index's bits) is balanced in every pair of movies and
    follows no period: movies 0, 2, 4, ... fall in both halves alike.
    """
    return bin(int(index)).count('1') % 2


def movie_tiles(frame_sum, usable=None, tile=TILE):
    """log of the masked mean of ``frame_sum`` over tiles, minus its median (float32)."""
    total = np.asarray(frame_sum, dtype=np.float64)
    rows, cols = total.shape
    ty, tx = max(1, rows // tile), max(1, cols // tile)
    y_edges = np.linspace(0, rows, ty + 1).astype(int)[:-1]
    x_edges = np.linspace(0, cols, tx + 1).astype(int)[:-1]
    # the rows of each band of tiles summed band by band (the same sums as one reduceat
    # over the frame, without its two float64 copies: 256 MB at 4096 x 4096)
    by_rows, weight_rows = np.empty((ty, cols)), np.empty((ty, cols))
    for index, (top, bottom) in enumerate(zip(y_edges, list(y_edges[1:]) + [rows])):
        weights = np.ones((bottom - top, cols)) if usable is None else \
            np.asarray(usable[top:bottom], np.float64)
        by_rows[index] = np.add.reduceat(total[top:bottom] * weights, [0], 0)[0]
        weight_rows[index] = np.add.reduceat(weights, [0], 0)[0]
    sums = np.add.reduceat(by_rows, x_edges, 1)
    counts = np.add.reduceat(weight_rows, x_edges, 1)
    with np.errstate(divide='ignore', invalid='ignore'):
        logs = np.log(sums / counts)
    logs[~np.isfinite(logs)] = np.nan
    if np.isfinite(logs).any():
        logs -= np.nanmedian(logs)
    return logs.astype(np.float32)


def smooth_field(tiles, shape, line_model=None, thresholds=SessionThresholds()):
    """The smooth field the movies share: (component, log map at full size or None).

    ``tiles``: :func:`movie_tiles` of each movie; ``line_model``: the log of the
    line structure as the sums show it (taken out first). The movies are split
    in two alternating halves and each half's median map taken: what the
    detector (or the illumination) puts there is in both, the specimens are
    not. Their mean product over tiles is the field's power; since smooth
    specimens make neighbouring tiles alike (few independent tiles), its
    chance level is measured, not assumed: half the halves' difference holds
    their noise and none of the field, and its product with itself rotated or
    flipped (the 7 other orientations: smoothness kept, alignment lost) gives
    the spread of a product of two independent noise maps (twice the RMS, for
    a difference carries half the variance). The map returned is the residual
    correction's log (the sums hold its inverse).
    """
    t = thresholds
    if len(tiles) < t.min_movies:
        return _absent('smooth', f"needs {t.min_movies} movies"), None
    stack = np.stack([np.asarray(m, dtype=np.float64) for m in tiles])
    if line_model is not None:   # the lines are counted by the line structure
        stack = stack - movie_tiles(np.exp(line_model), tile=_tile_of(shape, stack.shape[1:]))
    which = np.array([half_of(index) for index in range(len(stack))])
    if min(np.sum(which == 0), np.sum(which == 1)) < 2:
        return _absent('smooth', 'too few movies in one half'), None
    with quiet_nan_warnings():
        halves = [np.nanmedian(stack[which == half], axis=0) for half in (0, 1)]
    good = np.isfinite(halves[0]) & np.isfinite(halves[1])
    if good.sum() < 16:
        return _absent('smooth', 'too few tiles'), None
    first, second = (np.where(good, h - np.median(h[good]), 0.0) for h in halves)
    cross = float(np.mean(first[good] * second[good]))
    difference = np.where(good, (first - second) / 2, 0.0)
    chance = [float(np.mean((difference * other)[good & other_good]))
              for other, other_good in _reoriented(difference, good)]
    error = 2 * float(np.sqrt(np.mean(np.square(chance)))) if chance else 0.0
    z = cross / error if error > 0 else 0.0
    noise = float(np.var((first[good] - second[good]) / 2))
    power = max(cross, 0.0)
    found = bool(z > t.smooth_z and np.sqrt(power) > t.smooth_size)
    component = {'name': 'smooth', 'size': float(np.sqrt(power)), 'noise': float(np.sqrt(noise)),
                 'z': float(z), 'found': found, 'movies': int(len(tiles)),
                 'variance': float(power) if found else 0.0}
    if not found:
        return component, None
    clean = (first + second) / 2 * power / (power + noise)
    zoom = (shape[0] / clean.shape[0], shape[1] / clean.shape[1])
    full = ndimage.zoom(clean, zoom, order=1, mode='nearest', grid_mode=True)
    return component, -full[:shape[0], :shape[1]]


def _reoriented(field, good):
    """``field`` and its mask in the orientations other than its own (7 for a square grid,
    3 otherwise): alignment lost, smoothness kept."""
    out = []
    for k in range(4):
        for flip in (False, True):
            if k == 0 and not flip:
                continue
            f, g = np.rot90(field, k), np.rot90(good, k)
            if flip:
                f, g = f[::-1], g[::-1]
            if f.shape == field.shape:
                out.append((f, g))
    return out


def pixel_structure(first, second, usable, line_model=None, thresholds=SessionThresholds(),
                    movies=0):
    """Pixel-scale structure two independent halves of a session share: (component, log map).

    ``first``, ``second``: sums of two disjoint sets of movies; ``line_model``:
    the log of the line structure as the sums show it (its pixel-scale part is
    taken out first). The map returned is the residual correction's log.
    """
    t = thresholds
    if movies < t.min_movies or first is None or second is None:
        return _absent('pixels', f"needs {t.min_movies} movies"), None
    ratios = []
    for half in (first, second):
        half = np.asarray(half, dtype=np.float64)
        ok = usable & np.isfinite(half) & (half > 0)
        local, share = masked_box_mean(half, ok, t.box)
        with np.errstate(divide='ignore', invalid='ignore'):
            ratio = np.log(half / local)
        ratios.append(np.where(ok & (share > 0.5) & np.isfinite(ratio), ratio, np.nan))
    a, b = ratios
    if line_model is not None:   # the lines' share of each pixel is counted by the lines
        lines = line_model - ndimage.uniform_filter(line_model, t.box)
        a, b = a - lines, b - lines
    good = np.isfinite(a) & np.isfinite(b)
    if good.sum() < 100:
        return _absent('pixels', 'too few pixels'), None
    # centred: the log of a count is biased low by about 1 / (2 n), the same in both halves
    a, b = a - np.mean(a[good]), b - np.mean(b[good])
    product = a[good] * b[good]
    cross = float(product.mean())
    error = float(product.std() / np.sqrt(product.size))
    z = cross / error if error > 0 else 0.0
    noise = float(np.var((a[good] - b[good]) / 2))
    size = float(np.sqrt(max(cross, 0.0)))
    found = bool(z > t.z and size > t.pixel_size)
    component = {'name': 'pixels', 'size': size, 'noise': float(np.sqrt(noise)), 'z': float(z),
                 'found': found, 'movies': int(movies),
                 'variance': float(max(cross, 0.0)) if found else 0.0}
    if not found:
        return component, None
    power = max(cross, 0.0)
    mean = np.where(good, (a + b) / 2, 0.0)
    return component, -mean * power / (power + noise)   # the residual correction's sense


def _absent(name, why):
    return {'name': name, 'size': 0.0, 'noise': 0.0, 'z': 0.0, 'found': False, 'why': why}


def _tile_of(shape, tiles_shape):
    return max(1, shape[0] // tiles_shape[0])
