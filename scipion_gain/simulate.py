"""Simulated direct-electron-detector movies with a known gain.

Tests, the demo and the benchmarks use this. The physical gain G follows the
paper's model, recorded = ideal * G; the matching *correction* (what a gain
reference file holds in Scipion, RELION and MotionCor2) is 1 / G scaled to
mean 1.

Gains are built from readout sectors, column and row factors, a smooth flat
field, per-pixel scatter, a pixel-scale texture, dead and hot pixels, a dead
column and a broken row. Frames are counting (Poisson counts, integers) or
integrating (large values with read noise).

Specimens: the default is the historical one (a few particles on a linear
ice gradient). :class:`Specimen` describes a realistic one, and
:func:`random_specimen` draws one at random: an ice-thickness field (a smooth
random field plus a gradient at any angle), particles from sparse to crowded,
a pixel-scale texture, a carbon edge at any angle (straight or gently curved)
with a sharp edge, an empty hole (vacuum: brighter, no particles), and any
combination. The specimen drifts within a movie and differs between movies.

Frames as they reach users: raw, pre-corrected by a reference (float32 or
float16: frames = counts x correction), rounded to integers after correction,
or summed into one gain-normalised micrograph; and hostile ones
(:func:`spoil_frames`: hot pixels, NaN and +inf patches, all-zero frames).

Wrong references (:func:`wrong_reference`): a true correction turned into the
reference a session might hold (off by a column pattern, a step in one readout
sector, rotated, drifted in part of the frame, an error that grows over a
session), each returned with the true residual it leaves (true correction /
reference, mean 1): what a residual estimate should find.
"""
from dataclasses import asdict, dataclass, field

import mrcfile
import numpy as np
from scipy import ndimage


@dataclass
class SimulatedGain:
    """A physical gain G (recorded = ideal * G) and what it implies."""
    gain: np.ndarray
    dead: np.ndarray                       # pixels that record nothing (G = 0)
    hot: np.ndarray                        # pixels far too bright
    components: dict = field(default_factory=dict)
    sector_edges: tuple = ()               # first column of each readout sector, and the width

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


def sector_edges(cols, sectors, rng=None, least_width=None):
    """The first column of each of ``sectors`` vertical readout sectors, and ``cols``.

    Equal sectors (``least_width`` None): at multiples of cols / sectors. Otherwise sectors
    of unequal width, each at least ``least_width`` columns (a fraction of the mean width
    when below 1): the widths beyond that minimum are a uniform split of what is left (a
    flat Dirichlet draw), so the edges fall at any column, not at multiples of anything.
    """
    sectors = max(1, int(sectors))
    if least_width is None or sectors == 1:
        return tuple(int(c) for c in -((-np.arange(sectors + 1) * cols) // sectors))
    least = float(least_width) * (cols / sectors if least_width < 1 else 1.0)
    least = int(np.ceil(min(least, cols / sectors)))
    spare = cols - least * sectors
    cuts = np.sort(np.random.default_rng(rng).integers(0, spare + 1, sectors - 1))
    widths = np.diff(np.concatenate([[0], cuts, [spare]])) + least
    return tuple(int(c) for c in np.concatenate([[0], np.cumsum(widths)]))


def sector_of(edges):
    """Each column's readout sector (0, 1, ...) from :func:`sector_edges`."""
    edges = np.asarray(edges)
    return np.searchsorted(edges[1:], np.arange(int(edges[-1])), side='right')


def simulate_gain(shape, rng=None, sectors=4, sector_spread=0.04, column_spread=0.02,
                  row_spread=0.01, flat_field=0.05, pixel_scatter=0.0, dead_pixels=0,
                  hot_pixels=0, dead_column=False, broken_row=False, texture=0.0,
                  texture_scale=1.0, unequal_sectors=None):
    """A structured physical gain G of ``shape`` (rows, columns), mean about 1.

    sectors: vertical readout sectors (column blocks) with their own factor;
    *_spread: relative standard deviations of the factors; flat_field:
    relative amplitude of a smooth illumination blob; dead_pixels /
    hot_pixels: how many; dead_column / broken_row: one of each (a broken row
    records at 30 % of its neighbours' level); texture: relative RMS of a
    pixel-scale texture correlated over ``texture_scale`` pixels (a Gaussian
    filter of white noise; DE and Falcon gains show such texture), drawn after
    everything else so that a gain without it is the same as before.
    unequal_sectors: None (sectors of equal width, at multiples of cols / sectors), or
    the least width of a sector (columns, or a fraction of the mean width when below 1):
    sectors of unequal width whose edges fall at random columns (:func:`sector_edges`,
    drawn first from ``rng``); the edges are kept in ``sector_edges``.
    """
    rng = np.random.default_rng(rng)
    rows, cols = shape
    components = {}
    edges = sector_edges(cols, sectors, None if unequal_sectors is None else rng,
                         unequal_sectors)
    sector_factor = 1 + sector_spread * rng.standard_normal(max(1, sectors))
    components['sectors'] = np.broadcast_to(sector_factor[sector_of(edges)][None, :], shape)
    components['columns'] = np.broadcast_to(
        (1 + column_spread * rng.standard_normal(cols))[None, :], shape)
    components['rows'] = np.broadcast_to((1 + row_spread * rng.standard_normal(rows))[:, None],
                                         shape)
    y, x = np.arange(rows)[:, None], np.arange(cols)[None, :]  # broadcast: no full grids
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
    if texture > 0:
        components['texture'] = 1 + texture * _unit_noise(shape, texture_scale, rng)
        gain *= components['texture']
    gain[dead] = 0.0
    return SimulatedGain(gain=gain.astype(np.float32), dead=dead, hot=hot, components=components,
                         sector_edges=edges)


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


def _unit_noise(shape, scale, rng):
    """White noise filtered with a Gaussian of ``scale`` pixels: zero mean, unit std (float32)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if scale > 0:
        noise = ndimage.gaussian_filter(noise, scale, mode='wrap')
    noise -= noise.mean()
    return noise / max(float(noise.std()), 1e-12)


def smooth_field(shape, scale, rng=None):
    """A smooth random field of ``shape``: zero mean, unit std, correlated over ``scale`` pixels.

    Gaussian bumps of width ``scale`` on a grid (spacing scale / 1.5, reaching
    beyond the borders) with random weights, built as the product of three
    small matrices: isotropic in practice, and cheap at 4096 x 4096.
    """
    rng = np.random.default_rng(rng)
    scale = max(float(scale), 1.0)

    def basis(n):
        step = scale / 1.5
        centres = np.arange(-2 * scale, n + 2 * scale + step, step)
        offsets = (np.arange(n)[:, None] - centres[None, :]) / scale
        return np.exp(-0.5 * offsets ** 2).astype(np.float32)

    a, b = basis(shape[0]), basis(shape[1])
    weights = rng.standard_normal((a.shape[1], b.shape[1])).astype(np.float32)
    field = (a @ weights) @ b.T
    field -= field.mean()
    return field / max(float(field.std()), 1e-12)


def _gaussian_blur_fft(image, sigma):
    """Gaussian filter (sum 1) by FFT, zero padded: fast for wide kernels at 4096 x 4096."""
    from scipy import fft
    pad = int(np.ceil(4 * sigma))
    rows, cols = image.shape
    size = tuple(fft.next_fast_len(n + 2 * pad, real=True) for n in (rows, cols))
    spectrum = fft.rfft2(image, s=size)
    fy = fft.fftfreq(size[0]).astype(np.float32)
    fx = fft.rfftfreq(size[1]).astype(np.float32)
    factor = np.float32(-2 * np.pi ** 2 * sigma ** 2)
    spectrum *= np.exp(factor * fy[:, None] ** 2) * np.exp(factor * fx[None, :] ** 2)
    # the blur wraps around the padded size; the padding keeps the wrap outside the image
    return fft.irfft2(spectrum, s=size)[:rows, :cols].astype(np.float32)


@dataclass
class Specimen:
    """What a specimen holds (the scene that the beam crosses), in frame-relative units.

    Lengths are fractions of the frame's smaller side (``L``), angles degrees,
    fractions of the frame's area. :func:`random_specimen` draws one;
    :func:`render_specimen` turns it into an image.
    """
    ice: float = 0.05               # peak-to-peak relative transmission variation of the ice
    ice_scale: float = 0.4          # correlation length of the ice field (in L)
    ice_angle: float = 0.0          # direction of the ice's thickness gradient (degrees)
    ice_tilt: float = 0.5           # 0: random field only, 1: linear gradient only
    particle_density: float = 0.1   # fraction of the area under particles (0.01 to 0.6)
    particle_radius: float = 0.015  # Gaussian blob width (in L; at least 3 pixels)
    contrast: float = 0.1           # relative darkening at a particle's centre
    texture: float = 0.0            # relative RMS of a pixel-scale texture (ice, carbon)
    carbon: float = 0.0             # fraction of the frame covered by carbon
    carbon_angle: float = 0.0       # direction of the edge's normal, into the carbon (degrees)
    carbon_curvature: float = 0.0   # 0: straight edge; +-0.5: gently curved (sagitta ~ L / 8)
    carbon_transmission: float = 0.7  # carbon's intensity relative to the ice next to it
    carbon_gap: float = 0.0         # > 0: a strip (a gold line, a bar), this fraction of the
    #                                 frame uncovered beyond it; 0: a half-plane edge
    hole: float = 0.0               # fraction of the frame that is an empty hole (vacuum)
    hole_brightness: float = 1.2    # vacuum's intensity relative to the mean of the rest
    hole_angle: float = 0.0         # direction from the frame's centre to the hole's centre
    hole_distance: float = 1.0      # distance from the frame's centre to the hole's centre (in L)

    def describe(self):
        """A JSON-ready dict of the parameters (floats rounded for reading)."""
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


@dataclass
class SpecimenImage:
    """A rendered specimen: the scene (mean 1) and where its carbon and hole lie.

    ``image`` is ``margin`` pixels larger than the frame on each side (room to
    drift); ``carbon`` and ``hole`` are boolean masks of the same size;
    ``carbon_fraction`` and ``hole_fraction`` are measured on the frame's
    central crop (the first frame of a movie).
    """
    image: np.ndarray
    carbon: np.ndarray
    hole: np.ndarray
    spec: Specimen
    margin: int
    carbon_fraction: float = 0.0
    hole_fraction: float = 0.0

    def crop(self, array=None):
        """The central crop (the first frame's view) of ``array`` (default: the image)."""
        array = self.image if array is None else array
        m = self.margin
        return array[m:array.shape[0] - m, m:array.shape[1] - m]


def random_specimen(rng=None, carbon=None, hole=None, texture=None, ice=None, particles=None):
    """A :class:`Specimen` drawn at random: the hard cases a session meets, in combinations.

    Always: an ice field (2 % to 20 % peak to peak, log-uniform; a smooth
    random field plus a gradient at any angle) and particles (1 % to 70 % of
    the area, sparse to crowded, 0.5 % to 3 % of the frame wide). With
    probability 1/2 a carbon edge (5 % to a third of the frame, any angle,
    straight or gently curved, 0.5 to 0.85 of the ice's intensity); with
    probability 1/3 an empty hole (3 % to 25 % of the frame, 1.05 to 1.5 times
    brighter, edge straight to clearly curved); with probability 1/2 a
    pixel-scale texture (1 % to 5 %).

    ``carbon``, ``hole``, ``texture``: None (at random), False (absent), True
    (present, size at random) or a number (that fraction / RMS). ``ice`` and
    ``particles`` (density) fix those values. Every value is drawn whatever
    is forced, so a given seed gives the same specimen otherwise.
    """
    rng = np.random.default_rng(rng)
    draw = dict(
        ice=float(np.exp(rng.uniform(np.log(0.02), np.log(0.2)))),
        ice_scale=float(rng.uniform(0.15, 0.8)),
        ice_angle=float(rng.uniform(0, 360)),
        ice_tilt=float(rng.uniform(0, 1)),
        particle_density=float(np.exp(rng.uniform(np.log(0.01), np.log(0.7)))),
        particle_radius=float(rng.uniform(0.005, 0.03)),
        contrast=float(rng.uniform(0.02, 0.12)),
        texture=float(rng.uniform(0.01, 0.05)),
        carbon=float(rng.uniform(0.05, 1 / 3)),
        carbon_angle=float(rng.uniform(0, 360)),
        carbon_curvature=float(rng.uniform(-0.5, 0.5) if rng.uniform() < 0.5 else 0.0),
        carbon_transmission=float(rng.uniform(0.5, 0.85)),
        hole=float(rng.uniform(0.03, 0.25)),
        hole_brightness=float(rng.uniform(1.05, 1.5)),
        hole_angle=float(rng.uniform(0, 360)),
        hole_distance=float(rng.uniform(0.6, 1.5)),
    )
    present = rng.uniform(size=3)
    for name, choice, chance in (('carbon', carbon, 0.5), ('hole', hole, 1 / 3),
                                 ('texture', texture, 0.5)):
        if choice is None:
            choice = bool(present[['carbon', 'hole', 'texture'].index(name)] < chance)
        if choice is False:
            draw[name] = 0.0
        elif choice is not True:
            draw[name] = float(choice)
    if ice is not None:
        draw['ice'] = float(ice)
    if particles is not None:
        draw['particle_density'] = float(particles)
    return Specimen(**draw)


def _edge_mask(distance, crop, fraction):
    """A sharp mask (one-pixel ramp) of the pixels with the largest ``distance``.

    The threshold puts ``fraction`` of the crop (a view of ``distance``) in
    the mask; taken on a subsample of the crop (at most ~512 x 512 values).
    """
    step = max(1, min(crop.shape) // 512)
    threshold = float(np.quantile(crop[::step, ::step], 1 - fraction))
    return np.clip(distance - threshold + 0.5, 0, 1).astype(np.float32)


def render_specimen(spec, shape, rng=None, margin=0):
    """Render a :class:`Specimen` for frames of ``shape``: a :class:`SpecimenImage`.

    Intensity model (relative, mean 1 over the image): ice (1 + ice x field),
    darkened by particles (1 - contrast x blobs, blobs capped at 2), times the
    texture, times the carbon's transmission under the carbon (a half-plane, or
    a strip with ``carbon_gap`` of the frame beyond it); the hole is
    vacuum: no particles, no ice, ``hole_brightness`` times the mean of the
    rest. Vectorised: a 4096 x 4096 specimen takes a few seconds.
    """
    rng = np.random.default_rng(rng)
    rows, cols = shape
    total = (rows + 2 * margin, cols + 2 * margin)
    size = float(min(rows, cols))
    # coordinates relative to the centre of the central crop, as broadcastable vectors
    y = (np.arange(total[0], dtype=np.float32) - (margin + rows / 2 - 0.5))[:, None]
    x = (np.arange(total[1], dtype=np.float32) - (margin + cols / 2 - 0.5))[None, :]

    def crop(array):
        return array[margin:margin + rows, margin:margin + cols]

    # ice: a smooth random field and a gradient at ice_angle, peak to peak 1 on the crop
    field = smooth_field(total, max(spec.ice_scale * size, 4.0), rng)
    angle = np.deg2rad(spec.ice_angle)
    ramp = (x * np.float32(np.cos(angle)) + y * np.float32(np.sin(angle))) / np.float32(size)
    ramp = (ramp - crop(ramp).mean()) / max(float(crop(ramp).std()), 1e-12)
    tilt = float(np.clip(spec.ice_tilt, 0, 1))
    field = np.float32(np.sqrt(1 - tilt ** 2)) * field + np.float32(tilt) * ramp
    span = float(crop(field).max() - crop(field).min())
    field = (field - crop(field).mean()) / max(span, 1e-12)
    image = 1 + np.float32(spec.ice) * field
    del field, ramp

    # hole and carbon masks (sharp edges, any angle)
    hole = np.zeros(total, np.float32)
    if spec.hole > 0:
        angle = np.deg2rad(spec.hole_angle)
        cy = np.float32(spec.hole_distance * size * np.sin(angle))
        cx = np.float32(spec.hole_distance * size * np.cos(angle))
        distance = -np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        hole = _edge_mask(distance, crop(distance), min(spec.hole, 1.0))
        del distance
    carbon = np.zeros(total, np.float32)
    if spec.carbon > 0:
        angle = np.deg2rad(spec.carbon_angle)
        along = x * np.float32(np.cos(angle)) + y * np.float32(np.sin(angle))
        across = -x * np.float32(np.sin(angle)) + y * np.float32(np.cos(angle))
        distance = along + np.float32(spec.carbon_curvature / size) * across ** 2
        carbon = _edge_mask(distance, crop(distance), min(spec.carbon + spec.carbon_gap, 1.0))
        if spec.carbon_gap > 0:     # a strip: less the part beyond it
            carbon -= _edge_mask(distance, crop(distance), min(spec.carbon_gap, 1.0))
        del distance, along, across

    # particles: impulses blurred into Gaussian blobs of peak 1, none in the hole
    radius = max(3.0, spec.particle_radius * size)
    count = int(round(spec.particle_density * total[0] * total[1] / (np.pi * radius ** 2)))
    if count > 0 and spec.contrast > 0:
        where = (rng.integers(0, total[0], count) * total[1] + rng.integers(0, total[1], count))
        impulses = np.bincount(where, minlength=total[0] * total[1]).reshape(total)
        blobs = _gaussian_blur_fft(impulses.astype(np.float32), radius)
        del impulses
        blobs *= np.float32(2 * np.pi * radius ** 2)
        blobs *= 1 - hole
        image *= 1 - np.float32(spec.contrast) * np.minimum(blobs, 2)
        del blobs
    if spec.texture > 0:
        image *= 1 + np.float32(spec.texture) * _unit_noise(total, 0.7, rng)
    if spec.carbon > 0:
        image *= 1 - np.float32(1 - spec.carbon_transmission) * carbon
    if spec.hole > 0:
        rest = crop(hole) < 0.5
        level = spec.hole_brightness * float(crop(image)[rest].mean()) if rest.any() else 1.0
        image = image * (1 - hole) + np.float32(level) * hole
    image /= image.mean()
    return SpecimenImage(image=image.astype(np.float32), carbon=carbon > 0.5, hole=hole > 0.5,
                         spec=spec, margin=margin,
                         carbon_fraction=float((crop(carbon) > 0.5).mean()),
                         hole_fraction=float((crop(hole) > 0.5).mean()))


def simulate_frames(shape, n_frames, gain, dose=1.0, mode='counting', rng=None, specimen=True,
                    drift=0.5, adu_per_electron=30.0, electron_spread=0.7, read_noise=4.0,
                    correction=None, output=None, summed=False, spoil=None, drift_angle=None,
                    dark=None):
    """Yield ``n_frames`` frames (one at a time) of a movie recorded through ``gain``.

    counting: Poisson counts of dose * specimen * G per pixel (integers,
    returned as uint8 when they fit, else uint16). integrating: Poisson
    electrons, each depositing a signal of mean ``adu_per_electron`` and
    relative spread ``electron_spread`` (a gamma law standing in for the
    Landau spread of real sensors), times G, plus Gaussian read noise
    (float32). ``dark`` (integrating only): the offset an integrating camera
    adds to every raw frame, in ADU (an image of the frame's shape, e.g. a real
    dark reference, or a number), added before any rounding (``output=
    'rounded'`` then gives the camera's raw uint16 frames); ``dose=0`` gives
    frames taken without beam (the dark level and read noise only).

    specimen: True (the historical default: a few particles on a linear ice
    gradient), False (flat illumination), a :class:`Specimen` (rendered with
    this ``rng``; see :func:`random_specimen`) or an image at least as large
    as a frame (a :class:`SpecimenImage`'s ``image``; a margin around the
    frame gives room to drift). ``drift`` is in pixels per frame, along
    ``drift_angle`` degrees (None: at random).

    ``correction`` (a gain reference that multiplies raw frames) pre-corrects
    the frames, as a camera pipeline does: frames = raw x correction, exactly
    (float32 arithmetic). ``output``: None (as above; float32 when
    pre-corrected), 'float32', 'float16' (the float32 frame rounded to half
    precision), or 'rounded' (integer-valued, as cameras that write
    gain-normalised integers: rint of the frame, uint16 when it fits, else
    float32). ``summed``: yield one frame, the sum of the ``n_frames`` raw
    frames (times ``correction`` when given): a single summed micrograph.
    ``spoil``: a :class:`Spoiler` or a dict of :meth:`Spoiler.random` options
    (hot pixels, NaN/inf patches, all-zero frames), applied last.
    """
    if output not in (None, 'float32', 'float16', 'rounded'):
        raise ValueError(f"unknown output {output!r} (use float32, float16 or rounded)")
    rng = np.random.default_rng(rng)
    gain = np.asarray(gain, dtype=np.float32)
    scene, margin = _scene(shape, n_frames, specimen, drift, rng)
    angle = rng.uniform(0, 2 * np.pi) if drift_angle is None else np.deg2rad(drift_angle)
    if isinstance(spoil, dict):
        spoil = Spoiler.random(shape, 1 if summed else n_frames, rng, **spoil)
    if correction is not None:
        correction = np.asarray(correction, dtype=np.float32)
    if dark is not None:
        if mode != 'integrating':
            raise ValueError("dark: only integrating frames carry an offset")
        if correction is not None:
            raise ValueError("dark and correction: a camera subtracts the dark before it "
                             "corrects the gain; pass one of them")
        dark = np.broadcast_to(np.asarray(dark, dtype=np.float32), shape)
    camera = dict(mode=mode, adu_per_electron=adu_per_electron, electron_spread=electron_spread,
                  read_noise=read_noise, dark=dark)

    def raw_frames():
        for index in range(n_frames):
            dy = int(round(margin + drift * index * np.sin(angle)))
            dx = int(round(margin + drift * index * np.cos(angle)))
            dy, dx = min(max(dy, 0), 2 * margin), min(max(dx, 0), 2 * margin)
            expected = dose * scene[dy:dy + shape[0], dx:dx + shape[1]]
            yield _recorded(expected, gain, rng, **camera)

    if summed:
        total = None
        for frame in raw_frames():
            total = frame.astype(np.float64) if total is None else total + frame
        if mode == 'counting' and correction is None and output is None:
            frames = [total.astype(np.uint16 if total.max() < 65536 else np.float32)]
        else:
            frames = [total.astype(np.float32)]
    else:
        frames = raw_frames()
    stream = (_finished(frame, correction, output) for frame in frames)
    if spoil is not None:
        stream = spoil.apply(stream)
    yield from stream


def _scene(shape, n_frames, specimen, drift, rng):
    """(scene, margin): what the frames see, larger than a frame by ``margin`` on each
    side so that the drift stays inside it (see :func:`simulate_frames`)."""
    if isinstance(specimen, SpecimenImage):
        specimen = specimen.image
    if isinstance(specimen, np.ndarray):
        scene = np.asarray(specimen, dtype=np.float32)
        if scene.shape[0] < shape[0] or scene.shape[1] < shape[1]:
            raise ValueError(f"specimen image {scene.shape} is smaller than the frames {shape}")
        return scene, min(scene.shape[0] - shape[0], scene.shape[1] - shape[1]) // 2
    margin = int(np.ceil(abs(drift) * n_frames)) + 1
    if isinstance(specimen, Specimen):
        scene = render_specimen(specimen, shape, rng, margin=margin).image
    elif specimen:
        scene = simulate_specimen(shape, rng, margin=margin)
    else:
        scene = np.ones((shape[0] + 2 * margin, shape[1] + 2 * margin), np.float32)
    return scene, margin


def _recorded(expected, gain, rng, mode, adu_per_electron, electron_spread, read_noise, dark):
    """One raw frame of ``expected`` electrons per pixel through ``gain`` (see
    :func:`simulate_frames` for the two modes)."""
    if mode == 'counting':
        counts = rng.poisson(expected * gain)
        return counts.astype(np.uint8 if counts.max() < 256 else np.uint16)
    if mode != 'integrating':
        raise ValueError(f"unknown mode {mode!r} (use counting or integrating)")
    electrons = rng.poisson(expected)
    if electron_spread > 0:
        # the sum of n gamma(k) deposits is gamma(n k): k = 1 / spread^2
        k = 1.0 / electron_spread ** 2
        signal = rng.gamma(np.maximum(electrons * k, 1e-12), adu_per_electron / k)
        signal[electrons == 0] = 0.0
    else:
        signal = electrons * adu_per_electron
    frame = (signal * gain + read_noise * rng.standard_normal(expected.shape)).astype(np.float32)
    if dark is not None:
        frame += dark
    return frame


def _finished(frame, correction, output):
    """A raw frame as the camera writes it: times ``correction``, in the ``output`` type."""
    if correction is not None:
        frame = frame.astype(np.float32) * correction
    if output == 'float32':
        frame = frame.astype(np.float32)
    elif output == 'float16':
        frame = frame.astype(np.float32).astype(np.float16)
    elif output == 'rounded':
        frame = np.rint(frame)
        fits = frame.size and frame.min() >= 0 and frame.max() < 65536
        frame = frame.astype(np.uint16 if fits else np.float32)
    return frame


@dataclass
class Spoiler:
    """Hostile values written into frames, and where (so tests can check what was done).

    ``hot``: (row, column) of hot pixels, at ``hot_value`` in the frames listed
    in ``hot_frames`` (None: every frame); ``patches``: (frame, row, column,
    size, value) squares of NaN or +inf; ``zero_frames``: frames that are all
    zero. Integer frames become uint16 when a hot value needs it and float32
    when a patch needs it (float16 frames stay float16).
    """
    hot: list = field(default_factory=list)
    hot_value: float = 50000.0
    hot_frames: tuple = None
    patches: list = field(default_factory=list)
    zero_frames: tuple = ()

    @classmethod
    def random(cls, shape, n_frames, rng=None, hot_pixels=0, hot_value=50000.0, hot_frames=None,
               nan_patches=0, inf_patches=0, patch_size=10, zero_frames=0):
        """Place ``hot_pixels``, ``nan_patches`` and ``inf_patches`` (each in one
        random frame) and ``zero_frames`` all-zero frames at random."""
        rng = np.random.default_rng(rng)
        rows, cols = shape
        hot = [(int(r), int(c)) for r, c in zip(rng.integers(0, rows, hot_pixels),
                                                rng.integers(0, cols, hot_pixels))]
        patches = []
        for value, count in ((np.nan, nan_patches), (np.inf, inf_patches)):
            for _ in range(count):
                patches.append((int(rng.integers(0, n_frames)),
                                int(rng.integers(0, max(1, rows - patch_size))),
                                int(rng.integers(0, max(1, cols - patch_size))),
                                int(patch_size), float(value)))
        zeros = tuple(sorted(int(i) for i in rng.choice(n_frames, min(zero_frames, n_frames),
                                                         replace=False))) if zero_frames else ()
        return cls(hot=hot, hot_value=float(hot_value),
                   hot_frames=None if hot_frames is None else tuple(hot_frames),
                   patches=patches, zero_frames=zeros)

    def _dtype(self, dtype):
        dtype = np.dtype(dtype)
        if dtype.kind == 'f':
            return dtype
        if self.patches:
            return np.dtype(np.float32)
        if self.hot and self.hot_value > np.iinfo(dtype).max:
            return np.dtype(np.uint16) if 0 <= self.hot_value < 65536 else np.dtype(np.float32)
        return dtype

    def apply(self, frames):
        """Yield ``frames`` with the hostile values written in (copies)."""
        for index, frame in enumerate(frames):
            frame = np.array(frame, dtype=self._dtype(frame.dtype))
            if index in self.zero_frames:
                frame[...] = 0
            if self.hot and (self.hot_frames is None or index in self.hot_frames):
                rows, cols = zip(*self.hot)
                frame[list(rows), list(cols)] = self.hot_value
            for where, row, col, size, value in self.patches:
                if where == index:
                    frame[row:row + size, col:col + size] = value
            yield frame


def spoil_frames(frames, shape, n_frames, rng=None, **options):
    """``frames`` with hostile values (see :meth:`Spoiler.random`); returns (spoiler, generator)."""
    spoiler = Spoiler.random(shape, n_frames, rng, **options)
    return spoiler, spoiler.apply(frames)


# ---------------------------------------------------------------- wrong references
WRONG_REFERENCES = ('exact', 'columns', 'rows', 'sector', 'rot180', 'rot90', 'part_frame',
                    'growing')
DEFAULT_SIZES = {'columns': 0.02, 'rows': 0.02, 'sector': 0.03, 'part_frame': 0.02}


@dataclass
class ReferenceCase:
    """A reference a session holds for a true correction, and what it leaves.

    ``reference`` multiplies raw frames, mean 1 (float32); ``residual`` is the
    true correction / reference scaled to mean 1 (float32): the map that a
    residual estimate (raw frames times ``reference``) should find, flat for
    the exact reference. ``details`` says what was done (JSON-ready).
    """
    name: str
    reference: np.ndarray
    residual: np.ndarray
    details: dict = field(default_factory=dict)


def _log_error(shape, case, rng, size, sectors, smooth, stripe_width, details):
    """log of the residual a wrong reference leaves (before scaling to mean 1)."""
    rows, cols = shape
    if case in ('columns', 'rows'):
        n = cols if case == 'columns' else rows
        values = rng.standard_normal(-(-n // stripe_width)).repeat(stripe_width)[:n]
        values = (values - values.mean()) / max(values.std(), 1e-12) * size
        details.update(rms=size, stripe_width=stripe_width)
        return values[None, :] if case == 'columns' else values[:, None]
    if case == 'sector':
        sector_of = np.minimum((np.arange(cols) * sectors) // cols, sectors - 1)
        which = int(rng.integers(0, sectors))
        sign = 1.0 if rng.uniform() < 0.5 else -1.0
        details.update(step=sign * size, sector=which, sectors=sectors)
        return np.where(sector_of == which, np.log1p(sign * size), 0.0)[None, :]
    if case == 'part_frame':
        half = ['top', 'bottom', 'left', 'right'][int(rng.integers(0, 4))]
        lines = cols if half in ('top', 'bottom') else rows
        values = rng.standard_normal(-(-lines // stripe_width)).repeat(stripe_width)[:lines]
        values = (values - values.mean()) / max(values.std(), 1e-12) * size
        error = np.zeros(shape)
        if half == 'top':
            error[:rows // 2, :] = values[None, :]
        elif half == 'bottom':
            error[rows // 2:, :] = values[None, :]
        elif half == 'left':
            error[:, :cols // 2] = values[:, None]
        else:
            error[:, cols // 2:] = values[:, None]
        if smooth > 0:
            error += smooth * smooth_field(shape, 0.3 * min(shape), rng)
        details.update(half=half, stripe_rms=size, smooth_rms=smooth, stripe_width=stripe_width)
        return error
    raise ValueError(f"unknown reference case {case!r} (use {', '.join(WRONG_REFERENCES)})")


def wrong_reference(correction, case='exact', rng=None, size=None, sectors=4, amount=1.0,
                    smooth=0.02, stripe_width=1, error='columns+sector'):
    """The reference a session holds when the true correction is ``correction``.

    Cases (``size`` defaults in :data:`DEFAULT_SIZES`):

    * ``exact``: the true correction itself (flat residual);
    * ``columns`` / ``rows``: off by a line pattern of RMS ``size`` (in log;
      ``stripe_width`` lines share a value);
    * ``sector``: one of ``sectors`` vertical readout sectors (column blocks)
      off by a step ``size`` (up or down at random);
    * ``rot180`` / ``rot90``: the correction rotated (90: square frames only);
    * ``part_frame``: a drift in part of the frame: a line pattern of RMS
      ``size`` in one half (columns in the top or bottom half, rows in the
      left or right one) plus a smooth 2-D field of RMS ``smooth``;
    * ``growing``: the ``error`` (cases joined by '+', default a 2 % column
      pattern and a 3 % sector step) at ``amount`` (movie k of N: k / N);
    * any cases joined by '+' (e.g. 'columns+sector') combine their errors.

    ``amount`` scales every error in log (0: exact, 1: all of it). The same
    ``rng`` seed gives the same error: give it for every movie of a growing
    session. Returns a :class:`ReferenceCase`.
    """
    rng = np.random.default_rng(rng)
    correction = np.asarray(correction, dtype=np.float64)
    shape = correction.shape
    details = {'case': case, 'amount': float(amount)}
    if case == 'growing':
        inner = wrong_reference(correction, error, rng, size, sectors, 1.0, smooth, stripe_width)
        log_residual = np.log(inner.residual.astype(np.float64))
        details.update(error=inner.details)
        reference = None
    elif case in ('rot180', 'rot90'):
        if case == 'rot90' and shape[0] != shape[1]:
            raise ValueError("a reference rotated by 90 degrees needs square frames")
        rotated = np.rot90(correction, 2 if case == 'rot180' else 1)
        log_residual = np.log(correction) - np.log(rotated)
    elif case == 'exact':
        log_residual = np.zeros(shape)
    else:
        log_residual = np.zeros(shape)
        for part in case.split('+'):
            part_size = DEFAULT_SIZES.get(part, 0.02) if size is None else size
            part_details = {}
            log_residual = log_residual + _log_error(shape, part, rng, part_size, sectors, smooth,
                                                     stripe_width, part_details)
            details[part] = part_details
        log_residual = np.broadcast_to(log_residual, shape)
    residual = np.exp(amount * log_residual)
    reference = correction / residual
    reference /= reference.mean()
    residual = correction / reference
    residual /= residual.mean()
    return ReferenceCase(name=case, reference=reference.astype(np.float32),
                         residual=residual.astype(np.float32), details=details)


def session_references(correction, case, n_movies, rng=None, **options):
    """One :class:`ReferenceCase` per movie of a session: the same one, or for
    ``growing`` the error at amount k / N for movie k = 1..N."""
    seed = np.random.default_rng(rng).integers(2 ** 63)
    if case != 'growing':
        return [wrong_reference(correction, case, seed, **options)] * n_movies
    return [wrong_reference(correction, case, seed, amount=(k + 1) / n_movies, **options)
            for k in range(n_movies)]


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
            np.dtype(np.uint16): 6, np.dtype(np.uint8): 6,
            np.dtype(np.float16): 12}[np.dtype(dtype)]


def simulate_movie(path, shape, n_frames, gain, **options):
    """Simulate a movie (see :func:`simulate_frames`) straight into an MRC file."""
    frames = simulate_frames(shape, n_frames, gain, **options)
    write_movie(path, frames, shape=shape, n_frames=n_frames)
    return path
