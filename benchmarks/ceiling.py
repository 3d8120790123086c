"""The count-limited ceiling of one movie's gain estimate (``accuracy.py --gain-rows``).

What it is. An *oracle* estimate of the detector's gain from the same counts as the
movie, by an estimator that knows the specimen exactly: the expected dose of every pixel
(the rendered scene, cropped at every frame's drift offset and summed over the frames,
times the dose: lambda(p), electrons a pixel of gain 1 would have counted) and the
detector's statistical model (which columns form a readout sector, the variances of the
column, row, pixel-scatter and texture factors, the texture's correlation kernel), but
not the gain itself. Pixels under dark carbon or gold receive fewer electrons, so its
R^2 to the true gain falls with them: that part of an edge movie's loss is physics, not
method; what is left between our estimate and this ceiling is method.

How (a Gaussian linear model, relative deviations; counts C(p) ~ Poisson(lambda(p) G(p))):

1. The line and smooth part L = rows x columns (sectors included) x flat field, by
   Poisson maximum likelihood given lambda: alternating ratios of sums
   (column j: sum_i C / sum_i lambda rows F, rows alike; the flat field F the ratio of
   Gaussian-blurred sums, sigma size / 32, smooth next to a 0.6-size flat-field blob),
   then each column's and row's deviation from its running trend (33 lines, within its
   sector) shrunk by its Wiener factor var / (var + its Poisson variance 1 / sum C +
   the pixel variance / n) with the true line variances.
2. The pixel part: y = C / (lambda L) - 1, noise variance 1 / (lambda L) per pixel
   (Poisson), prior covariance sigma_s^2 I (pixel scatter) + sigma_t^2 K (the texture:
   white noise through the simulator's Gaussian filter, unit variance; K its
   autocorrelation, applied by FFT). The posterior mean p = S (S + N)^-1 y by
   preconditioned conjugate gradients (exact for the Gaussian model, whatever the
   specimen does to N); without texture the per-pixel Wiener factor.
3. G = L (1 + p); the correction 1 / G (mean 1) against the true correction, R^2 over the
   same pixels as the estimate it is compared with.

Where it is not a bound: the gain's factors multiply, the model adds their deviations
(second order: a 0.25 % error of R^2 at 10 % factors); the flat field is smoothed, not
modelled; the line trends keep 1/33 of a white column pattern. An estimator could come
within these of it, not beyond by more; ours lies below it everywhere measured.
"""
import mrcfile
import numpy as np
from scipy import ndimage

#: the flat field's smoothing (Gaussian sigma, in frame sizes) and the line trends' window
FLAT_SIGMA = 1 / 32
TREND_LINES = 33


def frame_offsets(n_frames, drift, margin, frame_seed):
    """(dy, dx) of every frame's crop of the scene, as simulate.simulate_frames draws them
    (its rng's first draw is the drift's direction when the specimen is an image)."""
    angle = np.random.default_rng(frame_seed).uniform(0, 2 * np.pi)
    offsets = []
    for index in range(n_frames):
        dy = int(round(margin + drift * index * np.sin(angle)))
        dx = int(round(margin + drift * index * np.cos(angle)))
        offsets.append((min(max(dy, 0), 2 * margin), min(max(dx, 0), 2 * margin)))
    return offsets


def expected_dose(scene, shape, offsets, dose):
    """lambda: what each pixel of gain 1 counts on average over the movie (float64)."""
    total = np.zeros(shape)
    for dy, dx in offsets:
        total += scene[dy:dy + shape[0], dx:dx + shape[1]]
    return dose * total


def ever_covered(mask, shape, offsets):
    """Pixels that lie under ``mask`` (carbon, gold) in any frame."""
    out = np.zeros(shape, bool)
    for dy, dx in offsets:
        out |= mask[dy:dy + shape[0], dx:dx + shape[1]]
    return out


def movie_counts(path):
    """The movie's counts summed over its frames (float64)."""
    with mrcfile.mmap(path, mode='r') as mrc:
        data = mrc.data
        total = np.zeros(data.shape[-2:])
        for frame in data if data.ndim == 3 else [data]:
            total += frame
    return total


def gain_prior(gain):
    """The detector's statistics an oracle may know (from a simulate.SimulatedGain's
    components): sector of each column, variances of the column, row, pixel-scatter and
    texture factors (relative)."""
    parts = gain.components
    sector_factor = np.asarray(parts['sectors'])[0]
    sector = np.concatenate([[0], np.cumsum(np.diff(sector_factor) != 0)])
    return {'sector': sector,
            'columns': float(np.var(np.log(np.asarray(parts['columns'])[0]))),
            'rows': float(np.var(np.log(np.asarray(parts['rows'])[:, 0]))),
            'scatter': float(np.var(parts['pixels'])),
            'texture': float(np.var(parts['texture'])) if 'texture' in parts else 0.0}


def _shrunk_lines(factor, variance, poisson, pixel_variance, count, groups):
    """log factors' deviations from their running trend (within groups) shrunk by Wiener."""
    logs = np.log(np.maximum(factor, 1e-12))
    trend = np.empty_like(logs)
    for group in np.unique(groups):
        part = groups == group
        trend[part] = ndimage.uniform_filter1d(logs[part], TREND_LINES, mode='nearest')
    noise = poisson + pixel_variance / np.maximum(count, 1)
    weight = variance / (variance + noise) if variance > 0 else 0.0
    return np.exp(trend + weight * (logs - trend))


def line_part(counts, dose, good, prior, iterations=4):
    """L: the gain's rows x columns x flat field from counts and the known dose (step 1)."""
    c = np.where(good, counts, 0.0)
    lam = np.where(good, dose, 0.0)
    rows, cols = c.shape
    a, b = np.ones(cols), np.ones(rows)
    sigma = FLAT_SIGMA * min(rows, cols)
    for _ in range(iterations):
        flat = (ndimage.gaussian_filter(c / np.outer(b, a), sigma, mode='nearest')
                / np.maximum(ndimage.gaussian_filter(lam, sigma, mode='nearest'), 1e-12))
        a = c.sum(0) / np.maximum((lam * flat * b[:, None]).sum(0), 1e-12)
        b = c.sum(1) / np.maximum((lam * flat * a[None, :]).sum(1), 1e-12)
    pixel_variance = prior['scatter'] + prior['texture']
    a = _shrunk_lines(a, prior['columns'], 1 / np.maximum(c.sum(0), 1), pixel_variance,
                      good.sum(0), prior['sector'])
    b = _shrunk_lines(b, prior['rows'], 1 / np.maximum(c.sum(1), 1), pixel_variance,
                      good.sum(1), np.zeros(rows, int))
    return np.outer(b, a) * flat


def _texture_transfer(shape, scale=1.0):
    """The Fourier transfer of the texture's covariance (unit variance at lag 0): white
    noise through the simulator's Gaussian filter (``simulate._unit_noise``)."""
    delta = np.zeros(shape)
    delta[0, 0] = 1.0
    kernel = ndimage.gaussian_filter(delta, scale, mode='wrap')
    return np.abs(np.fft.rfft2(kernel)) ** 2 / float(np.sum(kernel ** 2))


def pixel_part(y, noise, prior, iterations=80, tolerance=1e-5):
    """The posterior mean of the pixel factor's deviation (step 2)."""
    scatter, texture = prior['scatter'], prior['texture']
    if texture <= 0:
        return scatter / (scatter + noise) * y
    transfer = _texture_transfer(y.shape)

    def covariance(x):
        return scatter * x + texture * np.fft.irfft2(np.fft.rfft2(x) * transfer, s=x.shape)

    def system(x):
        return covariance(x) + noise * x

    inverse_diagonal = 1.0 / (scatter + texture + noise)
    x = np.zeros_like(y)
    residual = y.copy()
    z = inverse_diagonal * residual
    direction = z.copy()
    rz = float(np.sum(residual * z))
    norm = float(np.sqrt(np.sum(y * y))) or 1.0
    for _ in range(iterations):
        applied = system(direction)
        step = rz / float(np.sum(direction * applied))
        x += step * direction
        residual -= step * applied
        if np.sqrt(float(np.sum(residual * residual))) < tolerance * norm:
            break
        z = inverse_diagonal * residual
        rz, previous = float(np.sum(residual * z)), rz
        direction = z + (rz / previous) * direction
    return covariance(x)


def ceiling_correction(counts, dose, gain):
    """The oracle's correction (1 / G, mean 1 over live pixels) of one movie."""
    good = ~gain.dead & ~gain.hot
    prior = gain_prior(gain)
    lines = line_part(counts, dose, good, prior)
    expected = dose * lines
    usable = good & (expected > 0)
    y = np.where(usable, counts / np.maximum(expected, 1e-12) - 1.0, 0.0)
    noise = np.where(usable, 1.0 / np.maximum(expected, 1e-12), 1e6)
    estimate = lines * (1.0 + pixel_part(y, noise, prior))
    correction = 1.0 / np.maximum(estimate, 1e-6)
    correction[~good] = 1.0
    return correction / correction[good].mean()
