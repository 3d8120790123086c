"""Simulated direct-electron-detector movies with a known gain.

Tests, the demo and the benchmarks use this. The physical gain G follows the
paper's model, recorded = ideal * G; the matching *correction* (what a gain
reference file holds in Scipion, RELION and MotionCor2) is 1 / G scaled to
mean 1.

Gains are built from readout sectors, column and row factors, a smooth flat
field, per-pixel scatter, dead and hot pixels, a dead column and a broken row.
Specimens have particles, an ice-thickness gradient and drift. Frames are
counting (Poisson counts, integers) or integrating (large values with read
noise), and can be pre-corrected with a given reference.
"""
from dataclasses import dataclass, field

import mrcfile
import numpy as np


@dataclass
class SimulatedGain:
    """A physical gain G (recorded = ideal * G) and what it implies."""
    gain: np.ndarray
    dead: np.ndarray                       # pixels that record nothing (G = 0)
    hot: np.ndarray                        # pixels far too bright
    components: dict = field(default_factory=dict)

    @property
    def correction(self):
        """The gain reference in the Scipion sense: 1 / G, mean 1, dead pixels 1."""
        return correction_of(self.gain)


def correction_of(gain):
    """1 / G scaled to mean 1 over live pixels; pixels with G <= 0 get 1."""
    live = gain > 0
    correction = np.ones(gain.shape, dtype=np.float64)
    correction[live] = 1.0 / gain[live]
    correction[live] /= correction[live].mean()
    return correction.astype(np.float32)


def simulate_gain(shape, rng=None, sectors=4, sector_spread=0.04, column_spread=0.02,
                  row_spread=0.01, flat_field=0.05, pixel_scatter=0.0, dead_pixels=0,
                  hot_pixels=0, dead_column=False, broken_row=False):
    """A structured physical gain G of ``shape`` (rows, columns), mean about 1.

    sectors: vertical readout sectors (column blocks) with their own factor;
    *_spread: relative standard deviations of the factors; flat_field:
    relative amplitude of a smooth illumination blob; dead_pixels /
    hot_pixels: how many; dead_column / broken_row: one of each (a broken row
    records at 30 % of its neighbours' level).
    """
    rng = np.random.default_rng(rng)
    rows, cols = shape
    components = {}
    sector_of = np.minimum((np.arange(cols) * max(1, sectors)) // cols, max(1, sectors) - 1)
    sector_factor = 1 + sector_spread * rng.standard_normal(max(1, sectors))
    components['sectors'] = np.broadcast_to(sector_factor[sector_of][None, :], shape)
    components['columns'] = np.broadcast_to(
        (1 + column_spread * rng.standard_normal(cols))[None, :], shape)
    components['rows'] = np.broadcast_to((1 + row_spread * rng.standard_normal(rows))[:, None],
                                         shape)
    y, x = np.mgrid[0:rows, 0:cols]
    cy, cx = rows * rng.uniform(0.3, 0.7), cols * rng.uniform(0.3, 0.7)
    components['flat_field'] = 1 + flat_field * np.exp(
        -(((y - cy) / (0.6 * rows)) ** 2 + ((x - cx) / (0.6 * cols)) ** 2))
    components['pixels'] = 1 + pixel_scatter * rng.standard_normal(shape)
    gain = np.ones(shape)
    for part in components.values():
        gain = gain * part
    gain /= gain.mean()
    dead = np.zeros(shape, dtype=bool)
    hot = np.zeros(shape, dtype=bool)
    if dead_pixels:
        dead.flat[rng.choice(gain.size, dead_pixels, replace=False)] = True
    if hot_pixels:
        hot.flat[rng.choice(gain.size, hot_pixels, replace=False)] = True
        hot &= ~dead
        gain[hot] *= rng.uniform(5, 20, int(hot.sum()))
    if dead_column:
        dead[:, int(rng.integers(cols // 8, cols - cols // 8))] = True
    if broken_row:
        gain[int(rng.integers(rows // 8, rows - rows // 8)), :] *= 0.3
    gain[dead] = 0.0
    return SimulatedGain(gain=gain.astype(np.float32), dead=dead, hot=hot, components=components)


def simulate_specimen(shape, rng=None, particles=None, contrast=0.1, ice_gradient=0.03,
                      margin=0):
    """Relative transmitted intensity (mean about 1): particles on a thickness gradient.

    The image is ``margin`` pixels larger on each side so that drifting crops
    stay inside it.
    """
    rng = np.random.default_rng(rng)
    rows, cols = shape[0] + 2 * margin, shape[1] + 2 * margin
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    image = 1 + ice_gradient * ((x / cols - 0.5) + 0.5 * (y / rows - 0.5))
    radius = max(3.0, min(rows, cols) / 40)
    count = particles if particles is not None else int(rows * cols / (12 * radius) ** 2)
    blobs = np.zeros((rows, cols), dtype=np.float32)
    for py, px in zip(rng.uniform(0, rows, count), rng.uniform(0, cols, count)):
        y0, y1 = int(max(0, py - 3 * radius)), int(min(rows, py + 3 * radius + 1))
        x0, x1 = int(max(0, px - 3 * radius)), int(min(cols, px + 3 * radius + 1))
        blobs[y0:y1, x0:x1] += np.exp(-((y[y0:y1, x0:x1] - py) ** 2 + (x[y0:y1, x0:x1] - px) ** 2)
                                      / (2 * radius ** 2))
    image *= 1 - contrast * np.minimum(blobs, 2)
    return (image / image.mean()).astype(np.float32)


def simulate_frames(shape, n_frames, gain, dose=1.0, mode='counting', rng=None, specimen=True,
                    drift=0.5, adu_per_electron=30.0, electron_spread=0.7, read_noise=4.0,
                    correction=None):
    """Yield ``n_frames`` frames (one at a time) of a movie recorded through ``gain``.

    counting: Poisson counts of dose * specimen * G per pixel (integers,
    returned as uint8 when they fit, else uint16). integrating: Poisson
    electrons, each depositing a signal of mean ``adu_per_electron`` and
    relative spread ``electron_spread`` (a gamma law standing in for the
    Landau spread of real sensors), times G, plus Gaussian read noise
    (float32).
    ``drift`` is in pixels per frame. ``correction`` (a gain reference that
    multiplies raw frames) pre-corrects the frames, as a camera pipeline does;
    the result is then float32.
    """
    rng = np.random.default_rng(rng)
    gain = np.asarray(gain, dtype=np.float32)
    margin = int(np.ceil(abs(drift) * n_frames)) + 1
    scene = (simulate_specimen(shape, rng, margin=margin) if specimen
             else np.ones((shape[0] + 2 * margin, shape[1] + 2 * margin), np.float32))
    angle = rng.uniform(0, 2 * np.pi)
    for index in range(n_frames):
        dy = int(round(margin + drift * index * np.sin(angle)))
        dx = int(round(margin + drift * index * np.cos(angle)))
        dy, dx = min(max(dy, 0), 2 * margin), min(max(dx, 0), 2 * margin)
        expected = dose * scene[dy:dy + shape[0], dx:dx + shape[1]]
        if mode == 'counting':
            counts = rng.poisson(expected * gain)
            frame = counts.astype(np.uint8 if counts.max() < 256 else np.uint16)
        elif mode == 'integrating':
            electrons = rng.poisson(expected)
            if electron_spread > 0:
                # the sum of n gamma(k) deposits is gamma(n k): k = 1 / spread^2
                k = 1.0 / electron_spread ** 2
                signal = rng.gamma(np.maximum(electrons * k, 1e-12), adu_per_electron / k)
                signal[electrons == 0] = 0.0
            else:
                signal = electrons * adu_per_electron
            frame = (signal * gain + read_noise * rng.standard_normal(shape)).astype(np.float32)
        else:
            raise ValueError(f"unknown mode {mode!r} (use counting or integrating)")
        if correction is not None:
            frame = frame.astype(np.float32) * correction
        yield frame


def write_movie(path, frames, shape=None, n_frames=None):
    """Write frames (an array or an iterable of 2-D frames) as an MRC stack.

    With an iterable, ``shape`` and ``n_frames`` let the file be written one
    frame at a time (memory independent of the movie length).
    """
    if isinstance(frames, np.ndarray):
        with mrcfile.new(str(path), overwrite=True) as mrc:
            mrc.set_data(frames)
        return
    frames = iter(frames)
    first = next(frames)
    dtype = np.float32 if first.dtype == np.float64 else first.dtype
    with mrcfile.new_mmap(str(path), shape=(n_frames,) + tuple(shape),
                          mrc_mode=_mrc_mode(dtype), overwrite=True) as mrc:
        mrc.data[0] = first
        for index, frame in enumerate(frames, start=1):
            mrc.data[index] = frame


def _mrc_mode(dtype):
    return {np.dtype(np.int8): 0, np.dtype(np.int16): 1, np.dtype(np.float32): 2,
            np.dtype(np.uint16): 6, np.dtype(np.uint8): 6}[np.dtype(dtype)]


def simulate_movie(path, shape, n_frames, gain, **options):
    """Simulate a movie (see :func:`simulate_frames`) straight into an MRC file."""
    frames = simulate_frames(shape, n_frames, gain, **options)
    write_movie(path, frames, shape=shape, n_frames=n_frames)
    return path
