"""Noise-aware assessment of a residual gain: structure versus estimator noise.

The paper's statistics (std, p97.5/p2.5, max/p97.5 of the residual map) mix
two things: the gain structure that a wrong reference leaves, and the noise of
an estimate made from one movie. On counting movies at about 1 e/px/frame the
noise dominates, so fixed thresholds either flag every good movie or miss a
real, structured error of a few percent. This module separates them.

Noise is *measured*, not modelled: the frames of the movie are split in two
halves (even and odd frames) and estimated separately; half their difference
has the noise of the full estimate and none of its structure (the specimen and
the gain are the same in both halves). This holds for counting and integrating
data alike, without knowing the camera's conversion factor. For the column and
row profiles, what the specimen leaves is measured too, by comparing the two
halves of the frame across the profile (a detector pattern is the same in both;
particles and ice are not); the larger of the two estimates is used.

Structure is decomposed in the log of the residual map into

* ``columns``: column-to-column pattern (the column profile after removing a
  smooth trend: a quadratic, which absorbs ice gradients and illumination);
* ``sectors``: steps between readout sectors (the largest step of the column
  or row profile between two windows of ``window`` lines);
* ``rows``: row-to-row pattern (as columns);
* ``pixels``: isolated pixels far from their neighbours;

each with its size (an RMS, in relative units) and a significance z: how many
noise standard deviations the component stands above what the noise alone
gives. A component is *found* when it is both significant and large enough to
matter (``min_size``); the residual is flagged when any component is found.

Decision thresholds were set on simulated sessions (benchmarks/accuracy.py,
whose table is in benchmarks/README.md): z > 6 and an RMS above 0.4 % for
column and row patterns, a step above 1 % for sectors.
"""
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .gain import correction_from_sums


@dataclass(frozen=True)
class AssessmentThresholds:
    z: float = 6.0              # significance, in noise standard deviations
    profile_size: float = 0.004  # RMS of a column/row pattern (relative)
    step_size: float = 0.01      # height of a sector step (relative)
    pixel_z: float = 10.0       # isolated pixel, in per-pixel noise sigmas
    pixel_fraction: float = 5e-4  # fraction of such pixels that flags
    window: int = 32            # lines on each side for the step statistic


def _log_map(gain_map, defects=None):
    """log of a map, defects replaced by the median of the good pixels; and the good mask."""
    log_map = np.log(np.maximum(np.asarray(gain_map, dtype=np.float64), 1e-6))
    good = np.ones(log_map.shape, bool) if defects is None else ~np.asarray(defects, bool)
    log_map = np.where(good, log_map, np.median(log_map[good]) if good.any() else 0.0)
    return log_map, good


def _detrended_profile(log_map, axis):
    """Mean of the log map along ``axis`` with a quadratic trend removed."""
    profile = log_map.mean(axis=axis)
    x = np.linspace(-1, 1, profile.size)
    return profile - np.polyval(np.polyfit(x, profile, 2), x)


def _profile_noise(log_map, noise_map, axis):
    """What a profile holds that is not detector structure, as a profile.

    Two estimates, the larger (in power) wins: the profile of the frame-split
    noise map (the estimate's own noise), and half the difference between the
    profiles of the two halves of the frame across ``axis`` (top and bottom
    rows for the column profile). A detector pattern is the same in both
    halves and cancels; the specimen (particles, ice) differs between them and
    stays, as does the noise, so a single movie's specimen is not taken for a
    column pattern or a sector step.
    """
    from_frames = _detrended_profile(noise_map, axis)
    half = log_map.shape[axis] // 2
    first = np.take(log_map, np.arange(half), axis=axis)
    second = np.take(log_map, np.arange(half, 2 * half), axis=axis)
    across = (_detrended_profile(first, axis) - _detrended_profile(second, axis)) / 2
    return across if np.mean(across ** 2) > np.mean(from_frames ** 2) else from_frames


def _max_step(profile, window):
    """Largest difference of means of ``window`` samples right and left of a point."""
    n = profile.size
    if n < 2 * window + 1:
        return 0.0, 0
    cumulative = np.concatenate([[0.0], np.cumsum(profile)])
    positions = np.arange(window, n - window + 1)
    left = (cumulative[positions] - cumulative[positions - window]) / window
    right = (cumulative[positions + window] - cumulative[positions]) / window
    steps = np.abs(right - left)
    best = int(np.argmax(steps))
    return float(steps[best]), int(positions[best])


def _component(name, size, noise, z_threshold, min_size, **extra):
    z = min(float(size / noise), 1e6) if noise > 0 else (1e6 if size > 0 else 0.0)
    return dict(name=name, size=float(size), noise=float(noise), z=z,
                found=bool(z > z_threshold and size > min_size), **extra)


def split_half_maps(result):
    """Residual maps of the even and of the odd frames of ``result`` (log), or None."""
    if result.half_numerator is None:
        return None
    even = correction_from_sums(result.half_numerator, result.half_denominator)[0]
    odd = correction_from_sums(result.numerator - result.half_numerator,
                               result.denominator - result.half_denominator)[0]
    return np.log(np.maximum(even, 1e-6)), np.log(np.maximum(odd, 1e-6))


def assess(gain_map, halves=None, defects=None, thresholds=AssessmentThresholds()):
    """Decompose a (residual) gain map into structure components and test them.

    ``halves``: the two split-half log maps (see :func:`split_half_maps`);
    without them the noise is taken from the map's own high frequencies, a
    weaker estimate. Returns a JSON-ready dict: ``flagged``, ``components``
    (each with ``size``, ``noise``, ``z``, ``found``), ``noise`` (per-pixel
    noise std of the map). The noise-free map is :func:`structure_model`.
    """
    log_map, good = _log_map(gain_map, defects)
    if halves is not None:
        noise_map = (halves[0] - halves[1]) / 2
        noise_map = np.where(good, noise_map, 0.0)
        noise_source = 'split halves'
    else:
        noise_map = log_map - ndimage.uniform_filter(log_map, 3)
        noise_source = 'high frequencies'
    pixel_noise = float(noise_map[good].std()) if good.any() else 0.0
    components = []
    for name, axis in (('columns', 0), ('rows', 1)):
        profile = _detrended_profile(log_map, axis)
        noise_profile = _profile_noise(log_map, noise_map, axis)
        power, noise_power = float(np.mean(profile ** 2)), float(np.mean(noise_profile ** 2))
        size = np.sqrt(max(power - noise_power, 0.0))
        # two mean powers of n samples: under noise alone their difference has
        # standard deviation 2 * noise_power / sqrt(n)
        spread = 2 * noise_power / np.sqrt(profile.size)
        z = (power - noise_power) / spread if spread > 0 else 0.0
        components.append(dict(name=name, size=float(size), noise=float(np.sqrt(noise_power)),
                               z=float(min(z, 1e6)),
                               found=bool(z > thresholds.z and size > thresholds.profile_size)))
        step, where = _max_step(profile, thresholds.window)
        step_noise = float(np.sqrt(2.0 / thresholds.window) * np.std(noise_profile))
        steps_name = 'sectors' if axis == 0 else 'row_steps'
        components.append(_component(steps_name, step, step_noise, thresholds.z,
                                     thresholds.step_size, position=where))
    smooth = ndimage.median_filter(log_map, size=3)
    outliers = np.abs(log_map - smooth) > thresholds.pixel_z * max(pixel_noise, 1e-9)
    outliers &= good
    fraction = float(outliers.mean())
    components.append(dict(name='pixels', size=fraction, noise=pixel_noise,
                           z=float(fraction / thresholds.pixel_fraction),
                           found=bool(fraction > thresholds.pixel_fraction),
                           count=int(outliers.sum())))
    return {'flagged': any(c['found'] for c in components),
            'components': components,
            'noise': {'pixel_std': pixel_noise, 'source': noise_source},
            'thresholds': thresholds.__dict__}


def structure_model(gain_map, defects=None, assessment=None):
    """The residual map without its noise: the structure that the assessment found.

    The column profile (when a column pattern or sector step was found) times
    the row profile (when a row pattern or step was found); each profile is a
    mean over a whole line of pixels, so nearly free of the per-pixel noise.
    Where nothing was found the model is flat (all 1): the reference needs no
    correction. ``assessment`` defaults to :func:`assess` without split halves.
    Returns a float32 map of mean 1 that multiplies raw frames.
    """
    log_map, good = _log_map(gain_map, defects)
    found = _found_names(assessment or assess(gain_map, None, defects))
    model = np.zeros(log_map.shape)
    if found & {'columns', 'sectors'}:
        model += log_map.mean(axis=0)[None, :]
    if found & {'rows', 'row_steps'}:
        model += log_map.mean(axis=1)[:, None]
    model = np.exp(model - model.mean())
    return (model / model.mean()).astype(np.float32)


def _found_names(assessment):
    return {c['name'] for c in assessment['components'] if c['found']}
