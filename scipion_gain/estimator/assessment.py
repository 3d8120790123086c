"""Detector structure in a sum of corrected frames, told apart from the specimen.

A gain reference that is wrong leaves a fixed pattern in every corrected frame.
Its sum over a movie (the frames multiplied by the reference) is

    S(y, x) = N x specimen(y, x) x pattern(y, x) + noise,

and the specimen is the problem: carbon edges and holes at any angle, ice
thickness, particles. What belongs to the detector is told apart by where it
lives, not by how large it is:

* it is **fixed to the pixel grid and axis-aligned**: column and row patterns,
  steps between readout sectors, are the same in every band of rows (for
  columns) or of columns (for rows). The frame is cut into ``bands`` bands;
  each gives a profile (log of the band's masked mean per line), and the
  detector's part of the profile is what the bands agree on: a robust
  combination (Huber's M-estimate, started from the median) leaves out a band
  where a carbon edge, a hole's rim or a crowded patch crosses, since those
  cross each band at another line;
* it is **sharp**: the specimen's profile holds power at long wavelengths
  (ice, particles tens of pixels across), while a column pattern or a
  sector boundary is sharp to the pixel. Profiles are high-passed (a running
  mean of ``highpass`` lines subtracted) before anything is tested, and a step
  is found by the matched filter of a high-passed step;
* a step that looks like one in the combined profile but moves from band to
  band (a carbon edge a few degrees off the axis) is the specimen: its
  position is measured band by band and a drift or scatter beyond the
  positions' own precision rejects it.

Noise is measured, not modelled: the spread between bands (median absolute
deviation, pooled over neighbouring lines) holds the shot noise, the
camera's own noise and whatever the specimen leaves, for counting and
integrating frames alike, from one frame or many. A component's ``z`` is how
many of those standard errors it stands above zero.

Components (each with ``size`` (relative RMS, or the step's height),
``noise``, ``z``, ``found``): ``columns`` / ``rows`` (line-to-line
patterns), ``sectors`` / ``row_steps`` (steps at fixed lines; ``steps``
lists them), and for each direction whether the pattern is the same over the
whole frame or confined to part of it (``localized``: the per-band
amplitudes). :func:`structure_model` turns them into the residual map without
its noise (the localized map the viewer shows); the verdict (:mod:`.verdict`)
turns its variance into a DQE loss.

Pure NumPy (the sum is small next to the frames); no Scipion import.
"""
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from .arrays import in_background, quiet_nan_warnings
from .filters import masked_box_mean


@dataclass(frozen=True)
class AssessmentThresholds:
    z: float = 7.0               # significance of a line pattern (standard errors)
    step_z: float = 7.0          # significance of a step anywhere (standard errors)
    boundary_step_z: float = 5.0  # ... at a readout boundary the reference itself shows
    profile_size: float = 0.002  # a line pattern smaller than this RMS is not reported
    step_size: float = 0.004     # a step smaller than this is not reported
    bands: int = 16              # bands of lines whose profiles must agree
    highpass: tuple = (17, 33, 49, 97)  # lines: step filters tried (the quietest wins)
    pattern_highpass: int = 17   # lines: the same for line-to-line patterns
    max_steps: int = 8           # steps looked for per direction
    position_slack: float = 1.5  # pixels a step may wander between bands (beyond noise)
    height_disagreement_z: float = 5.0  # the bands' step heights disagree beyond this
    halves_disagreement_z: float = 5.0  # a session's two halves disagree on a step beyond this
    halves_each_z: float = 3.0   # ... and each half must see a step in part of the frame this well
    localized_z: float = 6.0     # significance of a pattern's variation between bands
    sharp_z: float = 5.0         # a step's profile departs from a sharp step beyond this: specimen
    regional_alpha: float = 0.001  # chance of a false step over all the regions and lines tried
    regional_bands: int = 4      # a step in part of the frame spans at least this many bands
    sector_level_z: float = 3.0  # ... and in one movie its sector's level must move this well
    drift_alpha: float = 0.001   # chance of calling a detector's line pattern drifting, all lags
    drift_lags: int = 24         # lines a band's features may lie off the pattern's

    def to_json(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# ------------------------------------------------------------------ profiles
def masked_values(total, usable):
    """``total`` where ``usable``, else 0 (float32 or wider): what :func:`band_profiles` sums."""
    return np.where(usable, total, 0).astype(np.result_type(total, np.float32), copy=False)


def band_profiles(total, usable, bands, axis, masked=None, electrons=False):
    """(B, L) log of the masked mean of ``total`` over B bands, per line.

    ``axis`` 0: the lines are the columns (bands of rows); 1: the rows.
    Lines of a band without a usable pixel are NaN. Sums in float64, band by
    band (a block of the frame each, never the frame transposed or widened).
    ``masked``: :func:`masked_values` of ``total`` and ``usable``, when the caller has it
    (both directions sum the same map). ``electrons``: also return the (B, L) sums
    themselves (what each value of the profile rests on: its shot noise is 1 / sqrt of it
    when the sum is in electrons, and proportional to that in any other unit).
    """
    usable = np.asarray(usable, dtype=bool)
    masked = masked_values(total, usable) if masked is None else masked
    edges = np.linspace(0, total.shape[axis], bands + 1).astype(int)
    sums, counts = [], []
    for start, stop in zip(edges[:-1], edges[1:]):
        block = (slice(start, stop), slice(None)) if axis == 0 else (slice(None), slice(start, stop))
        sums.append(masked[block].sum(axis=axis, dtype=np.float64))
        counts.append(np.count_nonzero(usable[block], axis=axis))
    sums = np.stack(sums)
    with np.errstate(divide='ignore', invalid='ignore'):
        profiles = np.log(sums / np.stack(counts))
    profiles[~np.isfinite(profiles)] = np.nan
    return (profiles, sums) if electrons else profiles


def shot_scales(sums, width=1):
    """(B, L) relative shot noise of each band's profile value (1 / sqrt of what it rests on,
    averaged over ``width`` lines: what a filter of that reach sees), up to one factor that
    the robust combination measures. A band under nearly opaque foil rests on few counts:
    its values are noisier, and weighing it like the others would make its noise structure."""
    sums = np.where(np.isfinite(sums) & (sums > 0), sums, 0.0)
    if width > 1:
        sums = ndimage.uniform_filter1d(sums, width, axis=-1, mode='reflect')
    with np.errstate(divide='ignore'):
        scales = 1.0 / np.sqrt(sums)
    scales[~np.isfinite(scales)] = np.nan
    typical = np.nanmedian(scales)
    return scales / typical if np.isfinite(typical) and typical > 0 else scales


def highpass(profiles, width):
    """Profiles minus their running mean over ``width`` lines (NaN-aware, edges reflected)."""
    ok = np.isfinite(profiles)
    values = np.where(ok, profiles, 0.0)
    num = ndimage.uniform_filter1d(values, width, axis=-1, mode='reflect')
    den = ndimage.uniform_filter1d(ok.astype(np.float64), width, axis=-1, mode='reflect')
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(ok & (den > 0.2), profiles - num / np.maximum(den, 1e-9), np.nan)


def step_template(width):
    """What :func:`highpass` makes of a unit step between lines -1 and 0: (offsets, values)."""
    half = width // 2 + 1
    offsets = np.arange(-half - width, half + width)
    step = (offsets >= 0).astype(np.float64)
    shape = highpass(step[None, :], width)[0]
    keep = np.abs(offsets) <= half
    return offsets[keep], shape[keep]


def robust_combine(values, iterations=3, c=1.5, scales=None):
    """Per column of ``values`` (B, L): Huber's M-estimate over the B rows, and its standard error.

    Started from the median, rows farther than ``c`` MADs get weights c MAD / |r|;
    NaN rows are left out. The standard error is 1.05 x MAD / sqrt(n) (Huber's
    efficiency at the normal, 95 %), pooled later over neighbouring lines.
    ``scales`` (B, L): each value's relative noise (:func:`shot_scales`), when the
    rows are not equally noisy (a band under nearly opaque foil): per line, the rows
    whose unweighted mean is the least noisy are kept (:func:`_quietest_rows`: the
    others, under the foil, add more noise than they average away); the MAD is taken
    of the residuals in those units and the error is that of a mean of rows so
    noisy, 1.05 x MAD x sqrt(mean scale^2 / n) (the same as without them when the
    scales are equal). The rows are not weighed by them: a band's counts say
    nothing of whether a specimen edge crosses it, and the bands with the most
    counts beside a foil are those the foil's edge crosses.
    """
    if scales is not None:
        values = np.where(_quietest_rows(scales), values, np.nan)
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    with np.errstate(invalid='ignore'):
        estimate = np.nanmedian(np.where(finite, values, np.nan), axis=0)
        spread = 1.4826 * np.nanmedian(np.abs(values - estimate), axis=0)
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, np.nan)
    noise = spread if scales is None else _scaled_spread(values, estimate, scales, spread)
    for _ in range(iterations):
        residual = np.abs(values - estimate)
        with np.errstate(invalid='ignore', divide='ignore'):
            weight = np.where(finite, np.minimum(1.0, c * spread / np.maximum(residual, 1e-300)),
                              0.0)
        weight = np.nan_to_num(weight, nan=1.0)
        total = (weight * np.where(finite, values, 0.0)).sum(axis=0)
        norm = weight.sum(axis=0)
        with np.errstate(invalid='ignore', divide='ignore'):
            estimate = np.where(norm > 0, total / norm, np.nan)
    with np.errstate(invalid='ignore', divide='ignore'):
        error = 1.05 * noise * _mad_bias(count) / np.sqrt(np.maximum(count, 1))
    estimate = np.where(count >= 3, estimate, np.nan)
    return estimate, error


#: Croux and Rousseeuw's (1992) small-sample factors of the normal MAD, n = 2..9
_MAD_FACTORS = np.array([1.0, 1.0, 1.196, 1.495, 1.363, 1.206, 1.200, 1.140, 1.129, 1.107])


def _mad_bias(count):
    """How much 1.4826 MAD underestimates the spread of ``count`` normal values, relative to
    16 values (the bands the noise was first calibrated on, where 1.05 takes it in): Croux
    and Rousseeuw's factors, n / (n - 0.8) above 9: a run of 4 bands' spread is taken
    1.29 times larger."""
    n = np.asarray(count, dtype=np.float64)
    factor = np.where(n > 9, n / np.maximum(n - 0.8, 1e-9),
                      _MAD_FACTORS[np.clip(n, 0, 9).astype(int)])
    return factor / (16.0 / 15.2)


def _quietest_rows(scales):
    """(B, L) the rows (bands) kept per line: the set of least noisy rows whose unweighted
    mean is the least noisy, sum(s^2) / n^2 smallest (a row with the variance s^2 lowers
    it while s^2 is under about twice the mean of those before it), at least half the
    rows (3 or more: a spread between fewer is a poor yardstick). Equally noisy rows are
    all kept; rows under nearly opaque foil (a few percent of the counts, s 5 or more)
    are left out while enough others remain. Rows of unknown scale are kept."""
    rows = scales.shape[0]
    variance = np.where(np.isfinite(scales) & (scales > 0), scales, np.inf) ** 2
    ordered = np.sort(variance, axis=0)
    n = np.arange(1, rows + 1, dtype=np.float64)[:, None]
    with np.errstate(invalid='ignore'):
        noise = np.cumsum(ordered, axis=0) / n ** 2
    least = min(rows, max(3, rows // 2))
    noise[:least - 1] = np.inf
    noise = np.where(np.isfinite(noise), noise, np.inf)
    best = np.argmin(noise, axis=0)
    limit = np.take_along_axis(ordered, best[None, :], axis=0)[0]
    unknown = ~np.isfinite(limit)   # no finite scale to choose by on this line
    return (variance <= limit[None, :]) | unknown[None, :] | ~np.isfinite(variance)


def _scaled_spread(values, estimate, scales, spread):
    """The spread of a mean of rows of unequal noise: the MAD of the residuals in units of
    ``scales`` times the RMS of the scales (``spread`` where the scales are unknown)."""
    ok = np.isfinite(values) & np.isfinite(scales) & (scales > 0)
    with np.errstate(invalid='ignore', divide='ignore'):
        standard = np.where(ok, np.abs(values - estimate) / np.where(ok, scales, 1.0), np.nan)
        unit = 1.4826 * np.nanmedian(standard, axis=0)
        rms = np.sqrt(np.nanmean(np.where(ok, scales, np.nan) ** 2, axis=0))
    scaled = unit * rms
    return np.where(np.isfinite(scaled) & (scaled > 0), scaled, spread)


def pooled(error, width=33):
    """Standard errors pooled over ``width`` neighbouring lines (RMS; NaN filled by the median)."""
    error = np.asarray(error, dtype=np.float64)
    fill = np.nanmedian(error) if np.isfinite(error).any() else 1.0
    error = np.where(np.isfinite(error), error, fill)
    return np.sqrt(ndimage.uniform_filter1d(error ** 2, min(width, error.size), mode='reflect'))


# ------------------------------------------------------------------ one direction
def _correlate_bands(values, offsets, template):
    """Per band, the least-squares height of ``template`` at every boundary (B, L); NaN-aware.

    One correlation of the band profiles (NaN as 0, nothing beyond the ends) with the
    template, and one of their validity with its square: the fit's numerator and norm.
    """
    ok = np.isfinite(values)
    filled = np.where(ok, values, 0.0)
    first = int(np.min(offsets))
    weights = np.zeros(int(np.max(offsets)) - first + 1)
    weights[np.asarray(offsets) - first] = template
    origin = -(weights.size // 2) - first   # line l meets offset first + j of the weights
    out = ndimage.correlate1d(filled, weights, axis=1, mode='constant', origin=origin)
    norm = ndimage.correlate1d(ok.astype(np.float64), weights ** 2, axis=1, mode='constant',
                               origin=origin)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(norm > 0.5 * float((template ** 2).sum()), out / norm, np.nan)


def _step_position_check(per_band, position, sign, bands_z, slack, lines):
    """Does a step found at ``position`` sit at the same line in every band?

    For the bands where the step alone is strong (z >= 6), its line is the
    best one within the template's reach. A detector boundary is at the same
    line in all of them; a carbon edge or a hole's rim a few degrees off the
    axis moves from band to band. How far a position may wander depends on
    how well each band places it: ``slack`` lines (and a drift over the frame
    of 2 slack) for moderate steps, but half a line (a drift of 1.5) where
    every band sees the step at z 12 or more, so that a carbon edge a third
    of a degree off the axis is not taken for a readout boundary. Returns
    (same, details).
    """
    reach = 12
    lo, hi = max(0, position - reach), min(lines, position + reach + 1)
    strong = np.flatnonzero(bands_z >= 6)
    if strong.size < 3:
        return True, {'bands_checked': int(strong.size)}
    window = sign * per_band[strong, lo:hi]
    window = np.where(np.isfinite(window), window, -np.inf)
    where = lo + np.argmax(window, axis=1)
    centre = np.median(where)
    spread = float(np.median(np.abs(where - centre)))
    y = strong.astype(np.float64)
    drift = float(np.polyfit(y, where, 1)[0] * (per_band.shape[0] - 1)) if np.ptp(y) > 0 else 0.0
    sharp = float(np.median(bands_z[strong])) >= 12
    spread_limit, drift_limit = (0.5, 1.5) if sharp else (slack, 2 * slack)
    same = spread <= spread_limit and abs(drift) <= drift_limit
    return same, {'bands_checked': int(strong.size), 'position_spread': spread,
                  'position_drift': drift, 'sharp': sharp}


def _step_height_check(per_band, position, height, band_noise, limit):
    """Do the bands agree on the step's height, as a detector boundary's do?

    A boundary changes the gain by the same factor along its whole length:
    every band sees the same height, to within its noise. A carbon edge or a
    hole's rim crosses the line in some bands and not in others: large
    heights in a few, none in the rest. The heights' chi-square about the
    combined height, in each band's own noise, against its degrees of
    freedom; above ``limit`` standard deviations the bands disagree.
    Returns (agree, details).
    """
    heights = per_band[:, position]
    ok = np.isfinite(heights) & np.isfinite(band_noise) & (band_noise > 0)
    n = int(ok.sum())
    if n < 4:
        return True, {}
    chi = float(np.sum(((heights[ok] - height) / band_noise[ok]) ** 2))
    z = (chi - (n - 1)) / np.sqrt(2.0 * (n - 1))
    return z <= limit, {'height_disagreement_z': float(z)}


def _bands_agree(per_band, position, height, thresholds, lines):
    """The position and height checks of a step at ``position``: (agree, details)."""
    # each band's own noise: the spread of its step statistic along the profile
    centred = per_band - np.nanmedian(per_band, axis=1, keepdims=True)
    band_noise = 1.4826 * np.nanmedian(np.abs(centred), axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        band_z = np.abs(per_band[:, position]) / band_noise
    band_z = np.where(np.isfinite(band_z), band_z, 0.0)
    same, details = _step_position_check(per_band, position, np.sign(height), band_z,
                                         thresholds.position_slack, lines)
    agree, more = _step_height_check(per_band, position, height, band_noise,
                                     thresholds.height_disagreement_z)
    details.update(more)
    return same and agree, details


def _sharp_step(profile, position, height, offsets, template, noise, limit):
    """Is the profile at ``position`` a step sharp to the pixel, as a detector boundary's is?

    A readout boundary lies between two pixel lines along its whole length: the
    (high-passed) profile is the high-passed sharp step there, to within the
    noise, in the lines next to it. A specimen edge is not on one pixel line: it
    falls inside pixels, it is a few degrees off the axis or curved, and it
    drifted during the movie, so its step is a ramp over several lines, which
    the step filter sees as several steps side by side; the larger it is
    (carbon: tens of percent, gold foil: nearly all the signal), the clearer.
    The chi-square of the profile less the fitted sharp step over the 9 lines
    around the position, in the profile's own noise, against its degrees of
    freedom; beyond ``limit`` it is not sharp. Where lines around it are missing
    (lines the defect test left out: a shallow edge fools its line test), the step
    could lie anywhere in the gap and pin itself to the gap's border in every band: the
    lines are taken as far as 4 present ones on each side, and the sharp step expected
    there is the high-passed step with the same lines missing. Returns (sharp, z).
    """
    reach = 4
    missing = ~np.isfinite(profile[max(0, position - 2 * reach):position + 2 * reach + 1])
    if missing.any():
        offsets, template, reach = _gapped_template(profile, position, offsets, reach)
    near = np.abs(offsets) <= reach
    where = position + offsets[near]
    inside = (where >= 0) & (where < profile.size)
    values = profile[where[inside]]
    expected = height * template[near][inside]
    ok = np.isfinite(values)
    if ok.sum() < 5 or not noise > 0:
        return True, 0.0
    chi = float(np.sum(((values[ok] - expected[ok]) / noise) ** 2))
    dof = int(ok.sum())
    z = (chi - dof) / np.sqrt(2.0 * dof)
    return bool(z <= limit), float(z)


def _gapped_template(profile, position, offsets, reach):
    """(offsets, values, reach) of the high-passed unit step at ``position`` with the
    profile's missing lines missing, over enough lines to hold ``reach`` present lines on
    each side (:func:`_sharp_step`); the high-pass's width is the template's."""
    width = 2 * int(np.max(offsets)) - 1   # step_template keeps |offset| <= width // 2 + 1
    present = np.isfinite(profile)
    below = np.flatnonzero(present[:position])[::-1][:reach]
    above = position + np.flatnonzero(present[position:])[:reach]
    span = int(max(position - (below[-1] if below.size else position),
                   (above[-1] if above.size else position) - position, reach))
    lines = np.arange(profile.size)
    step = np.where(present, (lines >= position).astype(np.float64), np.nan)
    shape = highpass(step[None, :], width)[0]
    offsets = np.arange(-span, span + 1)
    where = np.clip(position + offsets, 0, profile.size - 1)
    return offsets, np.nan_to_num(shape[where]), span


def _line_noise(profile):
    """Noise of one line of a profile, from the differences of neighbouring lines (robust)."""
    differences = np.diff(profile[np.isfinite(profile)])
    if differences.size < 8:
        return np.nan
    return float(1.4826 * np.median(np.abs(differences - np.median(differences))) / np.sqrt(2))


def _half_steps(halves, usable, bands, axis, width, offsets, template):
    """Per half of a session, the band-combined step statistic and its error, per line.

    ``halves``: the corrected sums of a session's two halves of movies
    (:func:`.session.half_of`). Returns per half {'heights', 'errors'}, or None.
    """
    if halves is None:
        return None
    out = []
    for half in halves:
        per_band = _correlate_bands(highpass(band_profiles(half, usable, bands, axis), width),
                                    offsets, template)
        heights, errors = robust_combine(per_band)
        out.append({'heights': heights, 'errors': pooled(errors)})
    return out


def _step_halves_check(half_steps, position, limit):
    """Do a session's two halves of movies see the same step?

    The detector is the same in every movie: a readout boundary steps by the
    same height in both halves. A carbon edge or a hole's rim of one movie
    is in one half only, and what it leaves in the session's sum (diluted
    by the other movies, so weak in every band and not caught by the
    position and height checks) is twice as high in its half and absent
    from the other. The difference of the two heights in its noise; above
    ``limit`` the halves disagree. Returns (agree, details).
    """
    if half_steps is None:
        return True, {}
    (h1, e1), (h2, e2) = ((h['heights'][position], h['errors'][position]) for h in half_steps)
    noise = float(np.hypot(e1, e2))
    if not (np.isfinite(h1) and np.isfinite(h2) and noise > 0):
        return True, {}
    z = abs(float(h1) - float(h2)) / noise
    return z <= limit, {'halves_disagreement_z': z,
                        'halves_heights': [float(h1), float(h2)]}


def _line_pattern(profiles, excluded, width, thresholds, scales=None):
    """The line-to-line pattern the bands agree on: (component, pattern, errors, power, good);
    ``scales``: each band's relative shot noise per line (:func:`shot_scales`)."""
    pattern, errors = robust_combine(highpass(profiles, width), scales=scales)
    errors = pooled(errors)
    good = np.isfinite(pattern) & ~excluded & (errors > 0)
    n = int(good.sum())
    if n < 8:
        return ({'size': 0.0, 'noise': 0.0, 'z': 0.0, 'found': False}, pattern, errors, 0.0,
                good)
    chi = float(np.sum((pattern[good] / errors[good]) ** 2))
    z = (chi - n) / np.sqrt(2.0 * n)
    power = max(float(np.mean(pattern[good] ** 2) - np.mean(errors[good] ** 2)), 0.0)
    found = bool(z > thresholds.z and np.sqrt(power) > thresholds.profile_size)
    component = {'size': float(np.sqrt(power)), 'noise': float(np.sqrt(np.mean(errors[good] ** 2))),
                 'z': float(z), 'found': found}
    return component, pattern, errors, power, good


def _quietest_step_filter(profiles, lines, thresholds, sums=None):
    """The step filter (high-pass width) that sees a step best in these profiles.

    A wide filter averages more shot noise away but lets more of the
    specimen in (particles tens of pixels across); which wins depends on the
    specimen. Each width's expected significance for a unit step (the
    template's norm over the median standard error of the band-combined
    estimate) is compared and the best is used: chosen from the noise alone,
    before any step is looked for. ``sums``: what each band's profile value rests on
    (:func:`band_profiles`); the bands are then weighed by their shot noise over the
    filter's reach (:func:`shot_scales`). Returns (width, high-passed profiles,
    offsets, template, per-band step heights, scales).
    """
    best = None
    widths = sorted({int(max(5, min(w, lines // 3))) | 1 for w in thresholds.highpass})
    for width in widths:
        hp = highpass(profiles, width)
        offsets, template = step_template(width)
        per_band = _correlate_bands(hp, offsets, template)
        scales = None if sums is None else shot_scales(sums, 2 * width + 1)
        errors = robust_combine(per_band, scales=scales)[1]
        noise = float(np.nanmedian(errors)) if np.isfinite(errors).any() else np.inf
        score = 1.0 / noise if noise > 0 else 0.0
        if best is None or score > best[0]:
            best = (score, width, hp, offsets, template, per_band, scales)
    return best[1:]


def _needed_z(lines, boundaries, thresholds):
    """The z a step needs at each line: ``step_z``, or ``boundary_step_z`` at the reference's
    readout boundaries, give or take their reach (a few places to look, not every line)."""
    needed = np.full(lines, float(thresholds.step_z))
    for boundary in boundaries:
        if 0 < boundary < lines:
            needed[boundary_lines(boundary)] = min(thresholds.step_z,
                                                   thresholds.boundary_step_z)
    return needed


def _placed(offsets, template, position, lines):
    """The step filter's template placed at ``position`` on ``lines`` lines (cut at the edges)."""
    shape = np.zeros(lines)
    for offset, value in zip(offsets, template):
        if 0 <= position + offset < lines:
            shape[position + offset] = value
    return shape


def _detector_step(per_band, residual, position, height, half_steps, offsets, template,
                   thresholds, scales=None):
    """Is the step at ``position`` the detector's rather than a specimen edge? (same, details)

    The bands place it on one line and agree on its height (:func:`_bands_agree`), a
    session's two halves see it alike (:func:`_step_halves_check`), and the bands'
    combined profile is a step sharp to the pixel there (:func:`_sharp_step`).
    """
    t = thresholds
    same, details = _bands_agree(per_band, position, height, t, per_band.shape[1])
    shared, more = _step_halves_check(half_steps, position, t.halves_disagreement_z)
    details.update(more)
    combined = robust_combine(residual, scales=scales)[0]
    sharp, details['sharpness_z'] = _sharp_step(combined, position, height, offsets, template,
                                                _line_noise(combined), t.sharp_z)
    return same and shared and sharp, details


def _pattern_where(pattern, errors, good, hp, model_hp, excluded, thresholds, axis, along):
    """Where a found line pattern lies, in words, or None over the whole frame: its lines
    (:func:`lines_holding`), then the bands' amplitudes over those lines only (elsewhere
    the model is noise) (:func:`bands_holding`); ``along``: lines across the bands."""
    lines = pattern.size
    first, last = lines_holding(pattern, errors, good)
    outside = np.ones(lines, bool)
    outside[first:last + 1] = False
    within = _band_amplitudes(hp, model_hp, excluded | outside, thresholds)
    return _extent_words((first, last), bands_holding(within, along), axis, lines, along)


def _pattern_model(profiles, step_profile, excluded, pattern_width, width, model_hp, thresholds,
                   scales=None):
    """The line pattern left once the steps are out (:func:`_line_pattern`), and the
    direction's log profile model and high-passed model with it (Wiener-shrunk: each line's
    value times signal / (signal + noise)). Returns (the pattern test's five values,
    profile, model_hp)."""
    found = _line_pattern(profiles - step_profile[None, :], excluded, pattern_width, thresholds,
                          scales)
    component, pattern, errors, power, good = found
    profile = step_profile - step_profile.mean()
    if component['found']:
        clean = np.where(good, pattern * power / (power + errors ** 2), 0.0)
        profile = profile + clean
        model_hp = model_hp + highpass(clean[None, :], width)[0]
    return found, profile, model_hp


def _pattern_on_lines(profiles, step_profile, excluded, pattern_width, width, model_hp,
                      thresholds, scales):
    """:func:`_pattern_model` of the lines whose pattern stays on its lines from band to band,
    over the whole frame or, when none is found there, in a run of bands
    (:func:`_regional_pattern`).

    A found pattern is tested for drift (:func:`drifting_lines`); the lines of a feature that
    moves (a specimen edge's remains) are excluded (``excluded`` is updated) and the pattern
    is looked for again, a few times at most. Returns (the pattern test's five values,
    profile, model_hp, the drifting features found)."""
    drifting = []
    hp = highpass(profiles - step_profile[None, :], pattern_width)
    args = (profiles, step_profile, excluded, pattern_width, width, model_hp, scales, hp)
    found, profile, model = _drift_free_pattern(*args, slice(None), thresholds, drifting)
    if not found[0]['found']:
        regional = _regional_pattern(*args, thresholds, drifting)
        if regional is not None:
            found, profile, model = regional
    return found, profile, model, drifting


def _drift_free_pattern(profiles, step_profile, excluded, pattern_width, width, model_hp,
                        scales, hp, chosen, thresholds, drifting):
    """The pattern of the bands ``chosen``, its drifting features' lines left out (added to
    ``drifting``): (the pattern test's five values, profile, model_hp)."""
    part = None if scales is None else scales[chosen]
    for attempt in range(5):
        found, profile, model = _pattern_model(profiles[chosen], step_profile, excluded,
                                               pattern_width, width, model_hp, thresholds,
                                               part)
        component, pattern, errors, _, good = found
        if not component['found'] or attempt == 4:
            break
        feature = drifting_lines(hp, scales, pattern, errors, good, thresholds)
        if feature is None or feature['lines'] is None:
            if feature is not None:
                component['drift_z'] = feature['drift_z']
            feature = one_edge(pattern, errors, good, pattern_width, thresholds.z,
                               thresholds)
            if feature is None:
                break
        drifting.append(feature)
        excluded[feature['lines'][0]:feature['lines'][1] + 1] = True
    return found, profile, model


def pattern_runs(bands, least):
    """The runs of bands a pattern in part of the frame is looked for in: a quarter, half
    and three quarters of the bands (at least ``least``), each at steps of half its length:
    any part of at least a quarter of the frame's bands holds one of them over at least
    half its own length. [(first, last)]."""
    runs = []
    for length in sorted({max(least, bands // 4), bands // 2, (3 * bands) // 4}):
        if not least <= length < bands:
            continue
        stride = max(1, length // 2)
        runs += [(first, first + length - 1) for first in range(0, bands - length + 1, stride)]
    return runs


def _regional_pattern(profiles, step_profile, excluded, pattern_width, width, model_hp,
                      scales, hp, thresholds, drifting):
    """A line pattern confined to part of the frame: in one run of bands (:func:`pattern_runs`).

    The whole frame's robust combination takes a pattern held by a quarter of the bands for
    their outliers; in a run of bands that covers it, it stands out as over the whole frame.
    Each run's pattern test (:func:`_line_pattern`, the bands' own noise) against the z of
    the whole frame's test or Bonferroni's for ``regional_alpha`` over the runs, whichever
    is larger; the strongest runs are tried in turn, each with the drift test. Returns
    (the pattern test's five values, profile, model_hp) of the first found, or None."""
    t = thresholds
    runs = pattern_runs(profiles.shape[0], int(max(1, t.regional_bands)))
    if not runs:
        return None
    needed = max(float(t.z), float(-ndtri(t.regional_alpha / len(runs))))
    strict = replace(t, z=needed)
    tried = []
    for first, last in runs:
        chosen = slice(first, last + 1)
        component = _line_pattern(profiles[chosen] - step_profile[None, :], excluded,
                                  pattern_width, strict,
                                  None if scales is None else scales[chosen])[0]
        if component['found']:
            tried.append((component['z'], chosen))
    for _, chosen in sorted(tried, key=lambda item: -item[0])[:3]:
        found, profile, model = _drift_free_pattern(profiles, step_profile, excluded,
                                                    pattern_width, width, model_hp, scales,
                                                    hp, chosen, strict, drifting)
        if found[0]['found']:
            found[0]['bands_tested'] = [int(chosen.start), int(chosen.stop - 1)]
            return found, profile, model
    return None


def _lag_asymmetry(one, two, error_one, error_two, lag):
    """Antisymmetric cross-product of two profiles at ``lag``, and its standard deviation.

    A(d) = sum_l one(l) two(l + d) - two(l) one(l + d). Two groups of bands that see one
    pattern on the same lines, at any amplitudes (one = a s + noise, two = b s + noise),
    give A(d) = 0 but for the noise, whatever the shape of s; a feature that lies d lines
    further in the second group gives a b (R(d' - d) - R(d' + d)), of the sign of d. The
    variance to first order in each profile's noise, the profiles standing for their
    means (their noise included: a little larger, as the product of the noises is)."""
    n = one.size
    a, b = one[:n - lag], one[lag:]
    c, d = two[:n - lag], two[lag:]
    value = float(np.sum(a * d - c * b))
    shift_one = np.zeros(n + 2 * lag)
    shift_two = np.zeros(n + 2 * lag)
    shift_one[lag:lag + n], shift_two[lag:lag + n] = one, two
    # dA/dtwo(j) = one(j - lag) - one(j + lag); dA/done(j) = two(j + lag) - two(j - lag)
    d_two = shift_one[:n] - shift_one[2 * lag:]
    d_one = shift_two[2 * lag:] - shift_two[:n]
    variance = float(np.sum(error_two ** 2 * d_two ** 2 + error_one ** 2 * d_one ** 2))
    return value, np.sqrt(variance)


def _band_errors(hp, scales, errors, kept):
    """(B, L) each band's noise per line: the combination's error (:func:`robust_combine`,
    pooled) times sqrt(n) / 1.05, in proportion to the band's shot-noise scale."""
    finite = np.isfinite(hp)
    count = finite.sum(axis=0)
    if scales is None:
        relative = np.ones(hp.shape)
    else:
        ok = finite & np.isfinite(scales) & (scales > 0)
        with np.errstate(invalid='ignore', divide='ignore'):
            rms = np.sqrt(np.nanmean(np.where(ok, scales, np.nan) ** 2, axis=0))
            relative = np.where(ok, scales / rms, 1.0)
        relative = np.where(np.isfinite(relative), relative, 1.0)
    unit = errors * np.sqrt(np.maximum(count, 1)) / 1.05
    return np.where(kept[None, :] & finite, unit[None, :] * relative, 0.0)


def _wilson_hilferty(chi, dof):
    """The normal z of a chi-square ``chi`` with ``dof`` degrees of freedom."""
    k = float(dof)
    return ((chi / k) ** (1.0 / 3.0) - (1.0 - 2.0 / (9.0 * k))) / np.sqrt(2.0 / (9.0 * k))


def drifting_lines(hp, scales, pattern, errors, good, thresholds):
    """The lines of a found line pattern that move across the lines from band to band, or None.

    The detector's structure is fixed to the pixel grid: wherever it lies, it is on the
    same lines in every band it covers. A specimen edge a few degrees off the axis or
    curved, whose step the step tests could not place (it falls between masked lines, or
    its own remains count as pattern noise), leaves high-passed remains that move by a
    line or so from band to band. Over the pattern's lines (:func:`lines_holding`,
    widened by ``drift_lags``) and the bands that hold it (at least 6), each band's
    profile is compared with the combined pattern by their antisymmetric cross-product
    (:func:`_lag_asymmetry`): 0 but for the noise, at any lag and any amplitude, for a
    pattern on the same lines in both, and not for a feature the band holds elsewhere.
    At each lag 1 to ``drift_lags`` the bands' squared z add to a chi-square (curved
    edges move either way); its largest z (Wilson-Hilferty) against Bonferroni's for
    ``drift_alpha`` over the lags. Returns {'lines': [first, last] (the feature's lines,
    as far as the pattern filter carries it; None when nothing moved), 'shift', 'drift_z',
    'needed_z', 'bands'}, or None when there are too few bands to tell.
    """
    lines = pattern.size
    bands = hp.shape[0]
    if bands < 6:
        return None
    first, last = lines_holding(pattern, errors, good)
    lags = int(max(1, min(thresholds.drift_lags, lines // 8)))
    kept = np.zeros(lines, bool)
    kept[max(0, first - lags):min(lines, last + lags + 1)] = True
    kept &= good
    low, high = _holding_bands(hp, pattern, errors, good, first, last)
    if high - low + 1 < 6:   # widened about its centre to 6 bands
        low = int(min(max(0, (low + high) // 2 - 2), bands - 6))
        high = low + 5
    chosen = slice(low, high + 1)
    band_errors = _band_errors(hp[chosen], None if scales is None else scales[chosen],
                               errors, kept)
    values = np.where(band_errors > 0, np.nan_to_num(hp[chosen]), 0.0)
    combined = np.where(kept, np.nan_to_num(pattern), 0.0)
    combined_errors = np.where(kept, errors, 0.0)
    needed = float(-ndtri(thresholds.drift_alpha / lags))
    best = (0.0, 0, None)
    for lag in range(1, lags + 1):
        z = np.zeros(values.shape[0])
        for b in range(values.shape[0]):
            value, sd = _lag_asymmetry(values[b], combined, band_errors[b], combined_errors,
                                       lag)
            z[b] = value / sd if sd > 0 else 0.0
        score = _wilson_hilferty(float(np.sum(z ** 2)), z.size)
        if score > best[0]:
            best = (score, lag, z)
    if not best[0] > needed:
        return {'lines': None, 'drift_z': float(best[0]), 'needed_z': needed}
    lag, z = best[1], best[2]
    # the feature: where the bands that moved most hold their product with the pattern
    worst = int(np.argmax(np.abs(z)))
    shift = lag if z[worst] < 0 else -lag   # the band's feature lies lag lines past the pattern's
    power = np.abs(values[worst] * np.roll(combined, shift))
    power = ndimage.uniform_filter1d(power, 2 * lag + 1, mode='constant')
    centre = int(np.argmax(power))
    reach = 2 * lag + hp_reach(thresholds)   # the band's and the pattern's, moved
    return {'lines': [int(max(0, centre - reach)), int(min(lines - 1, centre + reach))],
            'shift': int(lag), 'drift_z': float(best[0]), 'needed_z': needed,
            'bands': [int(low), int(high)]}


def one_edge(pattern, errors, good, width, z, thresholds):
    """The lines of a found line pattern in part of the frame that are one edge's remains, or
    None.

    A line pattern is many lines' own values; a specimen edge close to an axis (carbon or
    foil a fraction of a degree off it, or curved), which the step tests could not place
    and which hardly moves from band to band (:func:`drifting_lines`), leaves in the
    high-passed profile the shape of one step, blurred by its slant, curvature and the
    movie's drift over a few lines. Over the pattern's lines (:func:`lines_holding`, widened
    by the filter's reach), the single high-passed step (:func:`step_template`, boxcar-
    blurred over 1 to 15 lines) at the position and height that take most of the
    chi-square out; when what is left is no longer a pattern at ``z`` (the test that found
    it: the whole frame's or a run of bands'), the lines are the edge's. A pattern over
    the whole frame, or of many independent lines, keeps nearly all of its excess.
    Returns {'lines', 'edge_position', 'blur', 'z_left'} or None."""
    lines = pattern.size
    first, last = lines_holding(pattern, errors, good)
    if first == 0 and last == lines - 1:
        return None
    reach = int(width) // 2 + 1
    inside = np.zeros(lines, bool)
    inside[max(0, first - reach):min(lines, last + reach + 1)] = True
    inside &= good & np.isfinite(pattern) & (errors > 0)
    n = int(inside.sum())
    if n < 8:
        return None
    values = np.where(inside, pattern, 0.0)
    weight = np.where(inside, 1.0 / np.where(inside, errors, 1.0) ** 2, 0.0)
    chi = float(np.sum(values ** 2 * weight))
    offsets, template = step_template(int(width))
    best = (0.0, 0, 1)
    where = np.flatnonzero(inside)
    positions = np.arange(int(where[0]), int(where[-1]) + 1)
    for blur in (1, 3, 5, 9, 15):
        taken = _step_taken(values * weight, weight, offsets[0] - (blur - 1) // 2,
                            np.convolve(template, np.full(blur, 1.0 / blur)), positions)
        if taken.size and taken.max() > best[0]:
            best = (float(taken.max()), int(positions[np.argmax(taken)]), blur)
    dof = n - 3   # height, position and blur fitted
    left = (chi - best[0] - dof) / np.sqrt(2.0 * dof)
    if not left < z or not best[0] > 0:
        return None
    return {'lines': [int(max(0, first - reach)), int(min(lines - 1, last + reach))],
            'edge_position': int(best[1]), 'blur': int(best[2]), 'z_left': float(left)}


def _step_taken(weighted, weight, first, shape, positions):
    """At each of ``positions``, the chi-square a step of ``shape`` (its values from offset
    ``first`` on) placed there and fitted in height takes out of a profile: (sum w v s)^2 /
    sum w s^2, the sums by correlation (``weighted``: the profile times its weights ``w``;
    lines beyond the profile's ends count as weightless)."""
    pad = shape.size
    start = positions + first + pad   # index of the shape's first value, padded profile
    fit = np.correlate(np.pad(weighted, pad), shape, 'valid')[start]
    norm = np.correlate(np.pad(weight, pad), shape ** 2, 'valid')[start]
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(norm > 0, fit ** 2 / np.where(norm > 0, norm, 1.0), 0.0)


def hp_reach(thresholds):
    """Lines a feature's high-passed remains reach on each side (the pattern filter's)."""
    return int(thresholds.pattern_highpass) // 2 + 1


def _holding_bands(hp, pattern, errors, good, first, last):
    """(low, high): the run of bands holding the pattern over its lines ``first``-``last``
    (:func:`bands_holding`'s rule, in band indices), every band when it is not confined."""
    bands = hp.shape[0]
    outside = np.ones(pattern.size, bool)
    outside[first:last + 1] = False
    model = np.where(good, np.nan_to_num(pattern), 0.0)
    within = _band_amplitudes(hp, model, ~good | outside, AssessmentThresholds())
    low_high = _holding_run(within)
    return (0, bands - 1) if low_high is None else low_high


def line_structure(total, usable, axis, thresholds=AssessmentThresholds(), boundaries=(),
                   halves=None, masked=None):
    """Line pattern and steps along one direction (``axis`` 0: columns, 1: rows).

    First the line-to-line pattern; then the steps, whose noise includes what
    a pattern of that power gives the step filter (a random column pattern
    has local means that look like small steps); then the pattern again with
    the steps taken out. Returns a dict: ``pattern`` (component), ``steps``
    (component, with the accepted steps and the rejected specimen edges),
    ``profile`` (the detector's log profile model: steps plus the significant
    pattern, mean 0), ``bands`` (per-band amplitudes of that model and the
    localization test). ``boundaries``: lines where the detector has readout
    boundaries (from the reference, :func:`reference_boundaries`): a step
    there needs only ``boundary_step_z`` (a handful of places to look, not
    every line). ``halves``: for a session, the corrected sums of its two
    halves of movies: a step must have one height in both. ``masked``: see band_profiles.
    """
    t = thresholds
    rows = total.shape[0] if axis == 0 else total.shape[1]
    bands = int(max(3, min(t.bands, rows // 8)))
    lines = total.shape[1] if axis == 0 else total.shape[0]
    pattern_width = int(max(5, min(t.pattern_highpass, lines // 3))) | 1
    profiles, sums = band_profiles(total, usable, bands, axis, masked, electrons=True)
    scales = shot_scales(sums, pattern_width)
    excluded = np.zeros(lines, bool)
    near_edge = np.zeros(lines, bool)   # lines a rejected specimen edge reaches through the filter
    first, _, _, pattern_power, _ = _line_pattern(profiles, excluded, pattern_width, t, scales)
    pattern_power = pattern_power if first['found'] else 0.0
    width, hp, offsets, template, per_band_steps, step_scales = _quietest_step_filter(
        profiles, lines, t, sums)
    from_pattern = pattern_power / float(np.sum(template ** 2))  # variance a white pattern adds
    half_steps = None   # made when a step is first tested (most sums have none)
    # no step within half a high-pass of the frame's edges: the running mean is one-sided there
    inside = np.zeros(lines, bool)
    inside[width // 2 + 1:lines - width // 2] = True
    needed = _needed_z(lines, boundaries, t)
    accepted, rejected = [], []
    model_hp = np.zeros(lines)
    step_profile = np.zeros(lines)
    residual = hp.copy()
    best_z = 0.0
    step_noise = 0.0
    for _ in range(int(t.max_steps) + 4):
        heights, errors = robust_combine(per_band_steps, scales=step_scales)
        errors = np.sqrt(pooled(errors) ** 2 + from_pattern)
        step_noise = step_noise or float(np.median(errors))
        with np.errstate(invalid='ignore', divide='ignore'):
            z = np.abs(heights) / errors
        z = np.where(np.isfinite(z) & ~excluded & ~near_edge & inside, z, 0.0)
        best_z = max(best_z, float(z.max()))
        position = int(np.argmax(z / needed))
        if z[position] <= needed[position]:
            break
        height = float(heights[position])
        if half_steps is None:
            half_steps = _half_steps(halves, usable, bands, axis, width, offsets, template)
        same, details = _detector_step(per_band_steps, residual, position, height, half_steps,
                                       offsets, template, t, scales)
        reach = slice(max(0, position - width), min(lines, position + width + 1))
        record = {'position': position, 'height': height, 'z': float(z[position]),
                  'at_boundary': bool(needed[position] < t.step_z), **details}
        if not same:
            rejected.append(record)   # a specimen edge: its lines out; no step as far as the
            # filter carries it (its own width: drift over the frame, the movie's drift, blur)
            margin = width + 8 + int(np.ceil(abs(details.get('position_drift', 0.0))))
            excluded[reach] = True
            near_edge[max(0, position - margin):min(lines, position + margin + 1)] = True
            continue
        if abs(height) <= t.step_size or len(accepted) >= t.max_steps:
            excluded[reach] = True
            continue
        accepted.append(record)
        # take the step out of every band (its high-passed shape) and go on
        shape = _placed(offsets, template, position, lines)
        residual -= height * shape[None, :]
        model_hp += height * shape
        step_profile[position:] += height
        per_band_steps = _correlate_bands(residual, offsets, template)
    search = RegionalSearch(profiles - step_profile[None, :], sums, residual, boundaries,
                            (offsets, template), t, rows,
                            lambda w: _half_bands(halves, usable, bands, axis, w, step_profile),
                            session=halves is not None)
    regional, regional_edges = search.run(len(accepted))
    # the line-to-line pattern left once the steps are out, on lines not excluded and not
    # on a feature that moves across the lines from band to band
    (component, pattern, errors, power, good), profile, model_hp, drifting = _pattern_on_lines(
        profiles - search.step_map(lines), step_profile, excluded, pattern_width, width,
        model_hp, t, scales)
    name = 'columns' if axis == 0 else 'rows'
    bands = _band_amplitudes(hp, model_hp, excluded, thresholds)
    # how much of the frame holds the pattern: the mean square of the band amplitudes
    # (1 when the same everywhere; the combined estimate is scaled by them when localized)
    share = float(np.mean(np.square(bands['amplitudes']))) if bands['localized'] else 1.0
    steps_component = _steps_component(axis, accepted, rejected, regional, regional_edges,
                                       step_profile, search.step_map(lines), share, best_z,
                                       step_noise)
    pattern_component = _pattern_component(
        name, component, power * share, drifting,
        lambda: _pattern_where(pattern, errors, good, hp, model_hp, excluded, t, axis, rows))
    return {'pattern': pattern_component, 'steps': steps_component,
            'profile': profile, 'bands': bands, 'regional': regional}


def _pattern_component(name, component, variance, specimen_lines, where):
    """The line pattern's JSON component: the test's values, the variance it adds, where it
    lies (``where()``: words, or None over the whole frame) and the specimen's lines left
    out (drifting features, one edge's remains)."""
    out = dict(name=name, **component, variance=float(variance) if component['found'] else 0.0)
    extent = where() if component['found'] else None
    if extent:
        out['where'] = extent
    if specimen_lines:
        out['specimen_lines'] = specimen_lines
    return out


def _steps_component(axis, accepted, rejected, regional, regional_edges, step_profile,
                     regional_map, share, best_z, step_noise):
    """The steps of one direction as a component: over the whole frame and in part of it.

    Its variance is that of the steps' log map over the frame (bands x lines): a step in
    part of the frame counts for the part it covers. ``where``: the extent of the largest
    step when that one lies in part of the frame."""
    lines, across = ('column', 'rows') if axis == 0 else ('row', 'columns')
    for step in regional:
        step['where'] = f"{lines} {step['position']}, {across} {step['extent'][0]}-{step['extent'][1]}"
    steps = accepted + regional
    largest = max(steps, key=lambda s: abs(s['height'])) if steps else None
    step_map = step_profile[None, :] * np.sqrt(share) + regional_map
    component = {
        'name': 'sectors' if axis == 0 else 'row_steps',
        'size': abs(largest['height']) if largest else 0.0, 'noise': step_noise,
        'z': float(max([best_z] + [s['z'] for s in regional])), 'found': bool(steps),
        'steps': steps, 'specimen_edges': rejected + regional_edges,
        'variance': float(np.var(step_map)) if steps else 0.0}
    if largest is not None and largest.get('where'):
        component['where'] = largest['where']
    return component


def _half_bands(halves, usable, bands, axis, window, step_profile=0.0):
    """Per half of a session, each band's detrended step (B, L) (:func:`_detrended_bands`),
    the steps over the whole frame already found (``step_profile``, the detector's: the
    same in both halves) taken out, or None."""
    if halves is None:
        return None
    return [_detrended_bands(band_profiles(half, usable, bands, axis) - step_profile, window)[0]
            for half in halves]


def _detrended_bands(profiles, window):
    """(B, L) each band's step at every line from the ``window`` lines on each side, its level
    and slope fitted with it (:func:`_detrended_step`: a smooth specimen does not bias it),
    and the lines where it can be taken (a full window, no line missing)."""
    offsets, weights = _detrended_step(window)
    ok = np.isfinite(profiles)
    filled = np.where(ok, profiles, 0.0)
    lines = profiles.shape[1]
    out = np.full(profiles.shape, np.nan)
    if lines < 2 * window + 2:
        return out, np.zeros(lines, bool)
    valid = np.correlate(np.ones(lines), np.ones(2 * window), mode='valid') > 0
    for band in range(profiles.shape[0]):
        out[band, window:window + lines - 2 * window + 1] = np.correlate(filled[band], weights,
                                                                         mode='valid')
        bad = np.correlate((~ok[band]).astype(np.float64), np.ones(2 * window), mode='valid')
        out[band, window:window + bad.size][bad > 0] = np.nan
    usable = np.zeros(lines, bool)
    usable[window:lines - window] = valid[:lines - 2 * window]
    return out, usable


def _sector_level_check(profiles, position, boundaries, run, height, limit):
    """Does the level of the readout sector next to a step in part of the frame change over
    the step's bands, as a region of the detector whose gain is off does?

    A sector (between two readout boundaries, or a boundary and the frame's edge) whose gain
    drifted in some of its rows is darker or brighter over its whole width there: the mean
    of its lines less the mean of the neighbouring sector's lines (``d``, per band) changes
    between the run's bands and the others by the step's height, with its sign. The edge of
    a dark blob (contamination, a crowded patch of particles) that happens to lie on a
    boundary over a few bands makes a step of the same height at the boundary, but darkens
    only the blob's few lines of the sector: ``d`` barely moves. The change in ``d``, in
    the noise of its band-to-band differences (robust: a smooth specimen's ramp moves ``d``
    slowly), must reach ``limit`` with the step's sign: a blob's is about 0, a detector's
    the step's height over that noise. ``limit`` asks only the sign to be known (the
    search's Bonferroni z guards against chance); a specimen that moves the sector's level
    too (gold foil over part of it) can hide a true step from this test. Returns (level,
    details)."""
    count, lines = profiles.shape
    first, last = run
    inside = np.zeros(count, bool)
    inside[first:last + 1] = True
    if inside.all():
        return True, {}
    before = max([b for b in boundaries if b < position - 1], default=0)
    after = min([b for b in boundaries if b > position + 1], default=lines)
    with np.errstate(invalid='ignore'), quiet_nan_warnings():
        d = (np.nanmean(profiles[:, position:after], axis=1)
             - np.nanmean(profiles[:, before:position], axis=1))
    ok = np.isfinite(d)
    if ok[inside].sum() < 1 or ok[~inside].sum() < 2:
        return True, {}
    # medians: one band's blob, or a band under gold, moves a mean but not them
    change = float(np.median(d[inside & ok]) - np.median(d[~inside & ok]))
    rest = np.where(inside, d - height, d)[ok]
    steps = np.diff(rest)
    spread = 1.4826 * float(np.median(np.abs(steps - np.median(steps)))) / np.sqrt(2.0)
    # a median's standard error is sqrt(pi / 2) = 1.2533 times the mean's (normal law)
    error = 1.2533 * spread * np.sqrt(1.0 / (inside & ok).sum() + 1.0 / (~inside & ok).sum())
    z = float(np.sign(height) * change / error) if error > 0 else np.inf
    return bool(z >= limit), {'sector_level_change': change, 'sector_level_z': z}


class RegionalSearch:
    """Steps in part of the frame: at one line, over a run of neighbouring bands.

    A detector step confined to part of the frame (one tile, a sector that drifted in some
    of its rows) is sharp to the pixel and at one line in every band it covers, with one
    height there; outside, nothing. Every run of at least ``regional_bands`` neighbouring
    bands is tried, at the lines next to the reference's readout boundaries in one movie
    and at every line in a session (:meth:`_needed`), and so are blocks: two boundaries
    with steps of opposite sign over one run (a sector, or part of one, whose level is
    off). A run's height is the inverse-variance mean of its bands' detrended steps (each
    band's noise its shot noise, :func:`shot_scales`, times a factor measured along its
    profile), its error the larger of that mean's and the spread of the run's heights
    along the lines (what the bands share: a line pattern, the specimen). The z needed is
    Bonferroni's over every run, line and pair of lines tried (``regional_alpha`` for a
    false step anywhere). A candidate is the detector's when its bands place it on one
    line and agree on its height (:func:`_step_position_check`, :func:`_step_height_check`),
    the run's profile is a sharp step (:func:`_sharp_step`), and a session's two halves
    each see it, alike; a run whose bands disagree on the height only gives way to its
    shorter runs; otherwise it is a specimen edge, and no step is looked for as far as
    the filter carries it.
    """

    def __init__(self, profiles, sums, residual, boundaries, step_filter, thresholds, along,
                 half_bands, session=False):
        self.profiles = profiles.copy()
        self.residual = residual.copy()   # the high-passed profiles, for the sharpness test
        self.offsets, self.template = step_filter
        self.t = thresholds
        self.half_bands, self._halves = half_bands, False
        self.boundaries = sorted(b if isinstance(b, ReadoutBoundary) else int(b)
                                 for b in boundaries)
        self.session = session
        count, lines = profiles.shape
        self.edges = np.linspace(0, along, count + 1).astype(int)
        least = int(min(max(1, thresholds.regional_bands), count))
        self.runs = np.array([(i, j) for i in range(count) for j in range(i + least - 1, count)])
        self.window, self.per_band, self.sigma, inside = self._quietest(sums)
        self.allowed = inside.copy()
        self.run_out = np.zeros((len(self.runs), lines), bool)   # a run whose bands disagree
        self.needed = self._needed(inside if session else np.zeros(lines, bool), inside,
                                   boundaries, lines)
        self.found = []

    def _quietest(self, sums):
        """The detrended step's half-width (32, 64 or 128 lines) with the smallest noise in
        these bands (a wider one averages more shot noise, and lets in more specimen):
        (window, per-band steps, their noise, the lines where they can be taken)."""
        lines = self.profiles.shape[1]
        best = None
        for window in sorted({int(min(w, max(8, lines // 6))) for w in (32, 64, 128)}):
            per_band, inside = _detrended_bands(self.profiles, window)
            if not inside.any():
                continue
            sigma = self._band_noise(per_band, shot_scales(sums, 2 * window), inside)
            noise = float(np.nanmedian(sigma[:, inside]))
            if best is None or noise < best[0]:
                best = (noise, window, per_band, sigma, inside)
        if best is None:
            return 32, np.full(self.profiles.shape, np.nan), np.ones(self.profiles.shape), \
                np.zeros(lines, bool)
        return best[1:]

    @staticmethod
    def _band_noise(per_band, scales, inside):
        """(B, L) each band's noise: its shot-noise scale times the band's robust spread in
        those units along its lines."""
        with np.errstate(invalid='ignore', divide='ignore'):
            standard = per_band[:, inside] / scales[:, inside]
            centre = np.nanmedian(standard, axis=1, keepdims=True)
            factor = 1.4826 * np.nanmedian(np.abs(standard - centre), axis=1)
        return factor[:, None] * scales

    def _needed(self, anywhere, inside, boundaries, lines):
        """The z a step needs at each line: Bonferroni's over the runs and the lines tried,
        infinite elsewhere. In one movie those are the lines next to the reference's readout
        boundaries, within their reach (where a reference goes wrong): away from them the specimen's own sharp
        features (a hole's rim, an edge on the axis, blurred less than the shot noise of a
        part of the frame can tell) pass every test one movie allows. In a session
        (``anywhere``: every line inside) a step must also be seen alike by its two halves
        of movies, which a specimen's feature, in one movie, is not."""
        near = np.zeros(lines, bool)
        spans = [boundary_lines(b) for b in self.boundaries if 0 < b < lines]
        for span in spans:
            near[span] = True
        near &= inside
        groups = [np.flatnonzero(near[span]) + span.start for span in spans]
        groups = [g for g in groups if g.size]
        self.pairs = np.array([(a, b) for i, one in enumerate(groups) for two in groups[i + 1:]
                               for a in one for b in two if a < b], dtype=int).reshape(-1, 2)
        needed = np.full(lines, np.inf)
        self.at_boundary = near.copy()
        near |= anywhere
        # Bonferroni over every run and every line or pair of lines tried
        tests = 2 * len(self.runs) * (int(near.sum()) + len(self.pairs))
        self.block_needed = float(-ndtri(self.t.regional_alpha / tests)) if tests else np.inf
        needed[near] = self.block_needed
        return needed

    def statistics(self):
        """(runs x lines) heights and errors of every run of bands."""
        ok = np.isfinite(self.per_band) & np.isfinite(self.sigma) & (self.sigma > 0)
        weight = np.where(ok, 1.0 / np.where(ok, self.sigma, 1.0) ** 2, 0.0)
        weighted = np.where(ok, self.per_band, 0.0) * weight
        lines = weight.shape[1]
        cum_w = np.vstack([np.zeros(lines), np.cumsum(weight, axis=0)])
        cum_h = np.vstack([np.zeros(lines), np.cumsum(weighted, axis=0)])
        first, last = self.runs[:, 0], self.runs[:, 1] + 1
        total = cum_w[last] - cum_w[first]
        with np.errstate(invalid='ignore', divide='ignore'):
            heights = (cum_h[last] - cum_h[first]) / total
            model = 1.0 / total
            inner = np.where(self.allowed[None, :], heights, np.nan)
            centre = np.nanmedian(inner, axis=1, keepdims=True)
            shared = (1.4826 * np.nanmedian(np.abs(inner - centre), axis=1)) ** 2
        errors = np.sqrt(np.maximum(model, shared[:, None]))
        return heights, errors

    def run(self, already=0):
        """Search until nothing is left beyond the z needed: (steps, specimen edges).

        Single steps, and blocks: two steps of opposite sign over the same bands at two of
        the reference's boundaries (a sector, or a part of one, whose level is off), whose
        evidence adds up (z of the difference of the two heights)."""
        edges = []
        for _ in range(4 * int(self.t.max_steps) + 8):
            if len(self.found) + already >= self.t.max_steps:
                break
            heights, errors = self.statistics()
            with np.errstate(invalid='ignore', divide='ignore'):
                z = np.abs(heights) / errors
            z = np.where(np.isfinite(z) & self.allowed[None, :] & ~self.run_out, z, 0.0)
            k, position = np.unravel_index(int(np.argmax(z / self.needed[None, :])), z.shape)
            single = z[k, position] / self.needed[position]
            block = self._best_block(heights, errors)
            if not max(single, block[0]) > 1:
                break
            if block[0] > single:
                _, k, pair, block_z = block
                records = [self._check(k, line, float(heights[k, line]), block_z,
                                       float(errors[k, line])) for line in pair]
                if all(r['detector'] for r in records):
                    for record in records:
                        record['block_z'] = block_z
                        self._commit(k, record)
                    continue
                records = [r for r in records if not r['detector']]
            else:
                records = [self._check(int(k), int(position), float(heights[k, position]),
                                       float(z[k, position]), float(errors[k, position]))]
            for record in records:
                edge = self._commit(int(k), record)
                if edge is not None:
                    edges.append(edge)
        return self.found, edges

    def _best_block(self, heights, errors):
        """(z over the z needed, run, (line, line), z) of the strongest block, or (0, ...)."""
        if not self.pairs.size:
            return (0.0, 0, (0, 0), 0.0)
        one, two = self.pairs[:, 0], self.pairs[:, 1]
        with np.errstate(invalid='ignore', divide='ignore'):
            z = np.abs(heights[:, one] - heights[:, two]) / np.hypot(errors[:, one], errors[:, two])
        opposite = heights[:, one] * heights[:, two] < 0
        z = np.where(np.isfinite(z) & opposite & self.allowed[one][None, :]
                     & self.allowed[two][None, :] & ~self.run_out[:, one]
                     & ~self.run_out[:, two], z, 0.0)
        k, which = np.unravel_index(int(np.argmax(z)), z.shape)
        return (float(z[k, which]) / self.block_needed, int(k),
                (int(one[which]), int(two[which])), float(z[k, which]))

    def _check(self, k, position, height, z, error):
        """Is the step of run ``k`` at ``position`` the detector's? Its record, with
        'detector' (:meth:`_commit` updates the search)."""
        t = self.t
        first, last = (int(v) for v in self.runs[k])
        chosen = slice(first, last + 1)
        per_band, sigma = self.per_band[chosen], self.sigma[chosen]
        with np.errstate(invalid='ignore', divide='ignore'):
            band_z = np.nan_to_num(np.abs(per_band[:, position]) / sigma[:, position])
        lines = per_band.shape[1]
        same, details = _step_position_check(per_band, position, np.sign(height), band_z,
                                             t.position_slack, lines)
        agree, more = _step_height_check(per_band, position, height, sigma[:, position],
                                         t.height_disagreement_z)
        details.update(more)
        weight = np.where(np.isfinite(sigma) & (sigma > 0), 1.0 / sigma ** 2, 0.0)
        residual = self.residual[chosen]
        ok = np.isfinite(residual) & (weight > 0)
        with np.errstate(invalid='ignore', divide='ignore'):
            combined = (np.where(ok, residual, 0) * weight).sum(0) / np.where(ok, weight, 0).sum(0)
        sharp, details['sharpness_z'] = _sharp_step(combined, position, height, self.offsets,
                                                    self.template, _line_noise(combined),
                                                    t.sharp_z)
        shared, halves = self._halves_agree(chosen, position, weight, error, np.sign(height))
        details.update(halves)
        level = True
        if not self.session:   # a session's halves tell a specimen's blob instead
            level, more = _sector_level_check(self.profiles, position, self.boundaries,
                                              (first, last), height, t.sector_level_z)
            details.update(more)
        span = [int(self.edges[first]), int(self.edges[last + 1]) - 1]
        return {'position': position, 'height': height, 'z': z, 'extent': span,
                'at_boundary': bool(self.at_boundary[position]), **details,
                'detector': bool(same and agree and sharp and shared and level),
                'uneven': bool(same and sharp and shared and not agree),
                'flat_sector': bool(same and sharp and shared and not level)}

    def _commit(self, k, record):
        """A detector step is taken out of its bands; a specimen edge's lines are left out
        as far as the filter carries it."""
        first, last = (int(v) for v in self.runs[k])
        chosen = slice(first, last + 1)
        position, height, details = record['position'], record['height'], record
        lines = self.profiles.shape[1]
        flat_sector = record.pop('flat_sector')
        if flat_sector and not record['uneven']:
            # a step whose sector keeps its level: a specimen's blob on the boundary in
            # these bands; the line stays open to runs elsewhere in the frame
            overlapping = (self.runs[:, 0] <= last) & (self.runs[:, 1] >= first)
            self.run_out[overlapping, max(0, position - 1):position + 2] = True
            record.pop('uneven')
            record.pop('detector')
            return record
        if record.pop('uneven') and not record['detector']:
            # a sharp step on one line whose bands disagree on its height: the run may
            # reach beyond the step's extent; its shorter runs are tried
            self.run_out[k, max(0, position - 1):position + 2] = True
            record.pop('detector')
            return None
        if record.pop('detector'):
            self.found.append(record)
            self.residual[chosen] -= height * _placed(self.offsets, self.template, position,
                                                      lines)[None, :]
            self.profiles[chosen, position:] -= height
            self.per_band[chosen] = _detrended_bands(self.profiles[chosen], self.window)[0]
            self.allowed[max(0, position - 1):position + 2] = False   # one step per line
            return None
        margin = self.window + 8 + int(np.ceil(abs(details.get('position_drift', 0.0))))
        self.allowed[max(0, position - margin):position + margin + 1] = False
        return record

    def _halves_agree(self, chosen, position, weight, error, sign):
        """A session's two halves of movies see the run's step alike: heights within
        ``halves_disagreement_z`` of each other, and each half sees it by itself,
        ``halves_each_z`` above 0 with the step's sign. The detector is in every movie; a
        specimen's edge in part of the frame, in one movie, leaves the other half nothing
        (a test the difference alone passes when the step is weak in the session's sum).
        Each half's error is the larger of sqrt(2) the whole's and the half's own spread of
        the run's height along the lines (the steps found and its own taken out): a half holds half the movies, and the specimen
        of a few of them (crowded particles) can be rougher there than in the whole, where
        the whole's error would let its chance bumps pass for the detector's step.
        ``weight``: (bands of the run, lines) the whole's inverse variances."""
        if self._halves is False:
            self._halves = self.half_bands(self.window)
        if self._halves is None or not weight[:, position].sum() > 0:
            return True, {}
        # the steps found so far taken out of the halves as the detrended step carries them
        # (a window of lines on each side), and for the spread the half's own step too
        lines = weight.shape[1]
        unit = np.zeros((weight.shape[0], lines))
        unit[:, position:] = 1.0
        found, unit = (_detrended_bands(m, self.window)[0]
                       for m in (self.step_map(lines)[chosen], unit))
        heights, errors = [], []
        for half in self._halves:
            ok = np.isfinite(half[chosen]) & np.isfinite(found) & np.isfinite(unit) & (weight > 0)
            with np.errstate(invalid='ignore', divide='ignore'):
                along = (np.where(ok, half[chosen] - found, 0.0) * weight).sum(0) / \
                    np.where(ok, weight, 0).sum(0)
                shape = (np.where(ok, unit, 0.0) * weight).sum(0) / np.where(ok, weight, 0).sum(0)
            heights.append(float(along[position]))
            rest = along - heights[-1] * shape
            inner = rest[self.allowed & np.isfinite(rest)]
            spread = (1.4826 * float(np.median(np.abs(inner - np.median(inner))))
                      if inner.size else 0.0)
            errors.append(max(np.sqrt(2.0) * error, spread))
        z = abs(heights[0] - heights[1]) / float(np.hypot(*errors))
        each = min(sign * h / e for h, e in zip(heights, errors))
        return (z <= self.t.halves_disagreement_z and each >= self.t.halves_each_z,
                {'halves_disagreement_z': float(z), 'halves_heights': heights,
                 'halves_each_z': float(each), 'halves_errors': [float(e) for e in errors]})

    def step_map(self, lines):
        """(B, L) the log profile the steps found make in each band."""
        out = np.zeros((self.edges.size - 1, lines))
        for step in self.found:
            bands = (self.edges[:-1] >= step['extent'][0]) & (self.edges[1:] - 1 <= step['extent'][1])
            out[bands, step['position']:] += step['height']
        return out


def _band_amplitudes(hp, model_hp, excluded, thresholds):
    """How strongly each band holds the direction's pattern: the same everywhere, or localized.

    Each band's high-passed profile is regressed on the model's; the
    amplitudes' spread is tested against their noise (chi-square).
    """
    good = ~excluded & np.isfinite(hp).all(axis=0)
    norm = float(np.sum(model_hp[good] ** 2))
    if norm <= 0 or good.sum() < 8:
        return {'amplitudes': [1.0] * hp.shape[0], 'localized': False, 'z': 0.0}
    values = hp[:, good]
    amplitudes = values @ model_hp[good] / norm
    residual = values - amplitudes[:, None] * model_hp[good][None, :]
    noise = 1.4826 * np.median(np.abs(residual - np.median(residual, axis=1, keepdims=True)),
                               axis=1)
    errors = noise / np.sqrt(norm)
    weights = 1.0 / np.maximum(errors, 1e-12) ** 2
    mean = float(np.sum(weights * amplitudes) / np.sum(weights))
    chi = float(np.sum(weights * (amplitudes - mean) ** 2))
    dof = max(1, amplitudes.size - 1)
    z = (chi - dof) / np.sqrt(2.0 * dof)
    return {'amplitudes': [float(a) for a in amplitudes], 'errors': [float(e) for e in errors],
            'localized': bool(z > thresholds.localized_z), 'z': float(z)}


def _run_around(holding, centre, gap=0):
    """(first, last) of the run of True values around ``centre``, gaps of up to ``gap``
    False values bridged."""
    if gap > 0:   # padded: a closing erodes what lies within ``gap`` of the array's ends
        holding = ndimage.binary_closing(np.pad(holding, gap),
                                         structure=np.ones(2 * gap + 1, bool))[gap:-gap]
    first = last = int(centre)
    while first > 0 and holding[first - 1]:
        first -= 1
    while last < holding.size - 1 and holding[last + 1]:
        last += 1
    return first, last


def lines_holding(pattern, errors, good):
    """(first, last): the lines a line pattern lies on, the whole frame when it is not confined.

    Each line's excess ``(value / error)^2 - 1`` (noise alone gives 0 on
    average, with variance 2) averaged over ``s`` neighbouring lines (``s`` =
    1/32 of the lines, at least 8); the lines where that mean is 3 standard
    deviations above 0, gaps of up to ``s`` lines bridged, around the
    most significant. The whole frame when none holds it, when the run comes
    within ``s`` lines of both edges, or when the lines outside it still hold
    excess power 3 standard deviations above 0 and, per line, above a tenth of
    the lines' inside.
    """
    lines = pattern.size
    width = max(8, lines // 32)
    excess = np.where(good, (np.nan_to_num(pattern) / np.where(errors > 0, errors, 1.0)) ** 2
                      - 1.0, 0.0)
    counted = ndimage.uniform_filter1d(good.astype(np.float64), width, mode='constant')
    with np.errstate(invalid='ignore', divide='ignore'):
        mean = ndimage.uniform_filter1d(excess, width, mode='constant') / counted
        significance = mean / (3.0 * np.sqrt(2.0 / (width * counted)))
    holding = np.nan_to_num(significance) > 1.0
    if not holding.any():
        return 0, lines - 1
    # around the most significant line (beside a gap of excluded lines, few lines are
    # counted: their mean is the noisiest, not the largest signal)
    first, last = _run_around(holding, int(np.argmax(np.where(holding, significance, -np.inf))),
                              width)
    outside, inside = good.copy(), np.zeros(lines, bool)
    outside[first:last + 1] = False
    inside[first:last + 1] = good[first:last + 1]
    # not confined when the lines outside hold excess power beyond noise (3 standard
    # deviations) and beyond a tenth of the lines' inside (a specimen leaves some)
    spread_out = (outside.any() and inside.any()
                  and excess[outside].sum() > 3.0 * np.sqrt(2.0 * outside.sum())
                  and excess[outside].mean() > 0.1 * excess[inside].mean())
    if spread_out or (first <= width and last >= lines - 1 - width):
        return 0, lines - 1
    return first, last


def bands_holding(bands, along):
    """(first, last) line across the bands that hold a pattern: those whose amplitude is 3
    standard errors above 0 and at least half the largest, around the strongest; every
    line when the bands outside still hold some of it (their weighted mean amplitude is
    3 standard errors above 0 and above a quarter of the amplitude inside)."""
    run = _holding_run(bands)
    if run is None:
        return 0, along - 1
    edges = np.linspace(0, along, len(bands['amplitudes']) + 1).astype(int)
    return int(edges[run[0]]), int(edges[run[1] + 1]) - 1


def _holding_run(bands):
    """(low, high) band indices of :func:`bands_holding`'s run, or None for every band."""
    amplitudes = np.asarray(bands.get('amplitudes', []), dtype=np.float64)
    errors = np.asarray(bands.get('errors', []), dtype=np.float64)
    if not amplitudes.size or amplitudes.size != errors.size or not amplitudes.max() > 0:
        return None
    holding = (amplitudes > 3.0 * errors) & (amplitudes >= 0.5 * amplitudes.max())
    low, high = _run_around(holding, int(np.argmax(amplitudes)))
    rest = np.ones(amplitudes.size, bool)
    rest[low:high + 1] = False
    weights = 1.0 / np.maximum(errors[rest], 1e-12) ** 2
    if rest.any():
        # each band's own noise is in the model it is regressed on: a band without the
        # pattern gets a small positive amplitude, so 'none' is below a quarter of the rest
        mean = float(np.sum(weights * amplitudes[rest]) / weights.sum())
        inside = float(np.mean(amplitudes[low:high + 1]))
        if mean > 3.0 / np.sqrt(weights.sum()) and mean > 0.25 * inside:
            return None
    return int(low), int(high)


def _extent_words(lines_span, bands_span, axis, lines, along):
    """'columns 768-1023, rows 512-1023' (axis 0) or 'rows ..., columns ...'; None when
    both spans are the whole frame."""
    if tuple(lines_span) == (0, lines - 1) and tuple(bands_span) == (0, along - 1):
        return None
    names = ('columns', 'rows') if axis == 0 else ('rows', 'columns')
    return (f"{names[0]} {lines_span[0]}-{lines_span[1]}, "
            f"{names[1]} {bands_span[0]}-{bands_span[1]}")


# ------------------------------------------------------------------ both directions
class ReadoutBoundary(int):
    """A readout boundary's line (an int wherever one is expected) and ``reach``: how many
    lines either side of it the reference's own line pattern leaves its place uncertain
    (a plain int: 1)."""

    def __new__(cls, line, reach=1, z=0.0):
        boundary = super().__new__(cls, line)
        boundary.reach, boundary.z = int(reach), float(z)
        return boundary


def boundary_lines(boundary):
    """The lines where a step at ``boundary`` may lie: it, give or take its reach
    (:class:`ReadoutBoundary`; a plain int: one line), never the frame's first."""
    reach = int(getattr(boundary, 'reach', 1))
    return slice(max(1, boundary - reach), boundary + reach + 1)


#: a boundary's place is uncertain over the lines whose step fits worse than the best by
#: less than this chi-square (3 standard deviations), at most MAX_REACH lines either side
REACH_CHI2 = 9.0
MAX_REACH = 4
#: a reference is searched for steps over its whole length and in this many bands of it: a
#: sector whose reference is wrong in part of its length steps the other way there, and
#: the profile over the whole length can lose its boundary (a median between two levels)
REFERENCE_BANDS = 8


def reference_boundaries(reference, thresholds=AssessmentThresholds(), window=96,
                         min_step=0.01, min_z=6.0, most=32):
    """Lines where a gain reference itself steps: the detector's readout boundaries.

    A reference is measured with far more electrons than a movie, so its own
    profiles show the detector's sector boundaries: the mean level of the
    lines changes there and stays changed for hundreds of lines. Along each
    direction the profile (median over the other direction, robust to
    defects) is compared ``window`` lines on each side of every line, each
    side's linear trend removed (the flat field: the least-squares step of a
    (level, slope, step) model); what the reference's line-to-line pattern
    alone gives that comparison (the pattern's RMS, from the differences of
    neighbouring lines, times the weights' norm) is the yardstick. Boundaries
    are taken one at a time, strongest first, each subtracted from the profile
    before the next is looked for (a step seen through a detrended window also
    answers, weaker, about 2/3 of a window away: those echoes went with it),
    while one stands ``min_z`` times the yardstick and ``min_step`` high.

    The line pattern leaves a weak boundary's place uncertain by a few lines (a
    2 % pattern against a 4 % step: the fit at 3 lines off is worse by a
    chi-square of about 3 a line): each boundary carries its ``reach``, the lines
    either side whose fit is worse than the best by less than REACH_CHI2
    (:class:`ReadoutBoundary`). A wrong reference is most likely wrong there (a
    sector whose gain drifted), so those few lines are where a residual step is
    looked for with the lower ``boundary_step_z``. Returns {0: [columns], 1: [rows]}.
    """
    reference = np.asarray(reference, dtype=np.float32)   # a 4K map: float32 logs
    usable = np.isfinite(reference) & (reference > 0)
    logs = np.log(np.where(usable, reference, np.float32(1)))
    median = np.median
    if not usable.all():
        logs[~usable] = np.nan
        median = np.nanmedian
    out = {}
    with quiet_nan_warnings():
        for axis in (0, 1):
            # a line's median from contiguous values (the columns' from the transpose),
            # over each of REFERENCE_BANDS bands of its length, then over the whole length
            # reordered in place (the transpose is ours, and the rows' pass is the last)
            lines_first = np.ascontiguousarray(logs.T) if axis == 0 else logs
            length = lines_first.shape[1]
            cuts = np.linspace(0, length, REFERENCE_BANDS + 1).astype(int)
            profiles = [median(lines_first[:, a:b], axis=1) for a, b in zip(cuts, cuts[1:])
                        if b - a >= 8]
            profiles.append(median(lines_first, axis=1, overwrite_input=True))
            del lines_first
            found = []
            for profile in profiles:
                profile = np.asarray(profile, np.float64)
                w = int(min(window, profile.size // 4))
                if w < 8 or not np.isfinite(profile).any():
                    continue
                profile = np.where(np.isfinite(profile), profile, np.nanmedian(profile))
                found.extend(_strongest_steps(profile, w, min_step, min_z, most))
            out[axis] = _merged_boundaries(found)
    return out


def _merged_boundaries(found):
    """One boundary for each group of boundaries found within each other's reach (in
    several bands): the strongest's line, and a reach that holds every line of the group."""
    merged = []
    for boundary in sorted(found, key=lambda b: -b.z):
        if any(abs(boundary - other) <= max(boundary.reach, other.reach) for other in merged):
            continue
        group = [b for b in found if abs(b - boundary) <= max(b.reach, boundary.reach)]
        reach = max(abs(int(b) - int(boundary)) + b.reach for b in group)
        merged.append(ReadoutBoundary(boundary, min(reach, MAX_REACH), boundary.z))
    return sorted(merged)


def _strongest_steps(profile, w, min_step, min_z, most):
    """The boundaries of one profile, strongest first, each subtracted before the next
    (:func:`reference_boundaries`): sorted :class:`ReadoutBoundary` lines."""
    offsets, weights = _detrended_step(w)
    differences = np.diff(profile)
    pattern = 1.4826 * np.median(np.abs(differences - np.median(differences))) / np.sqrt(2)
    spread = pattern * float(np.sqrt(np.sum(weights ** 2)))
    rest, found = profile.copy(), []
    for _ in range(most):
        steps = np.correlate(rest, weights, mode='valid')   # boundary at x: lines x-w..x+w-1
        best = int(np.argmax(np.abs(steps)))
        if not abs(steps[best]) > max(min_z * spread, min_step):
            break
        line = w + best
        # the step's z at each line near it: chi-square worse than the best by z_best^2 - z^2
        z = np.abs(steps[max(0, best - MAX_REACH):best + MAX_REACH + 1]) / max(spread, 1e-30)
        near = np.flatnonzero(z ** 2 >= z.max() ** 2 - REACH_CHI2) + max(0, best - MAX_REACH)
        reach = int(max(1, np.max(np.abs(near - best))))
        found.append(ReadoutBoundary(line, reach, z.max()))
        rest[line:] -= steps[best]
    return sorted(found)


def _detrended_step(window):
    """Weights over lines -window..window-1 that give the height of a step between -1 and 0
    in a model (level, slope, step): least squares."""
    t = np.arange(-window, window) + 0.5
    design = np.stack([np.ones_like(t), t, (t > 0).astype(np.float64)], axis=1)
    return np.arange(-window, window), np.linalg.pinv(design)[-1]


def assess(total, usable=None, thresholds=AssessmentThresholds(), boundaries=None,
           halves=None):
    """Detector structure of a corrected sum: JSON-ready components and the profiles.

    ``total``: per-pixel sum of the frames multiplied by the reference (the
    residual's inverse times the specimen); ``usable``: pixels to use (not
    defects); ``boundaries``: the readout boundaries of the detector
    ({0: columns, 1: rows}, from :func:`reference_boundaries`), if known;
    ``halves``: for a session, the corrected sums of its two halves of movies
    (their sum is ``total``): steps must be seen alike in both.
    Returns (assessment dict, model) where ``model`` holds what
    :func:`structure_model` needs.
    """
    total = np.asarray(total, dtype=np.float32)   # the sums are taken in float64
    usable = np.ones(total.shape, bool) if usable is None else np.asarray(usable, bool)
    # a zero is a value: under nearly opaque foil most pixels record nothing, and the mean
    # of those that did is biased by the reference's own pattern (see analysis's
    # shot_noise_zeros); the caller leaves out the pixels that hold no signal
    usable = usable & np.isfinite(total) & (total >= 0)
    boundaries = boundaries or {}
    components, model = [], {}
    pixel_noise = in_background(_pixel_noise, total, usable)   # beside the line structure
    masked = masked_values(total, usable)   # what both directions' band profiles sum
    for axis in (0, 1):
        with quiet_nan_warnings():
            found = line_structure(total, usable, axis, thresholds, boundaries.get(axis, ()),
                                   halves, masked)
        components += [found['pattern'], found['steps']]
        model[axis] = found
    del masked
    flagged = any(c['found'] for c in components)
    pixel_noise = pixel_noise.result()
    localized = {('columns' if axis == 0 else 'rows'): model[axis]['bands']
                 for axis in (0, 1)}
    return ({'flagged': flagged, 'components': components, 'localized': localized,
             'boundaries': {('columns' if a == 0 else 'rows'): list(v)
                            for a, v in boundaries.items()},
             'noise': {'pixel_std': pixel_noise, 'source': 'spread between bands'},
             'method': 'band profiles of the corrected sum', 'thresholds': thresholds.to_json()},
            model)


#: frames of more pixels than this have their pixel noise measured on every few rows:
#: a median absolute deviation of millions of ratios is known to well under 0.1 %
PIXEL_NOISE_SAMPLE = 4_000_000


def _pixel_noise(total, usable, box=5):
    """Relative per-pixel noise of the sum (what one pixel's value is known to): the robust
    spread (1.4826 MAD) of each usable pixel over the mean of the usable pixels of its
    ``box`` x ``box`` neighbourhood, taken on every ``step``-th row of large frames."""
    if not usable.any():
        return 0.0
    rows = total.shape[0]
    half = box // 2
    step = min(total.size // PIXEL_NOISE_SAMPLE, (rows - 2 * half) // 8)
    if step <= 1:
        local, share = masked_box_mean(total, usable, box)
        centre_total, centre_usable = total, usable
    else:   # every step-th row, away from the edges (the box needs no reflection there)
        sample = slice(half, rows - half, step)
        local, share = _sampled_box_mean(total, usable, sample, box)
        centre_total, centre_usable = total[sample], usable[sample]
    with np.errstate(invalid='ignore', divide='ignore'):
        ratio = centre_total / local
    ratio = ratio[centre_usable & (share > 0.5) & np.isfinite(ratio)]
    if ratio.size == 0:
        return 0.0
    ratio -= np.median(ratio)
    return float(1.4826 * np.median(np.abs(ratio, out=ratio), overwrite_input=True))


def _sampled_box_mean(values, mask, sample, box):
    """:func:`masked_box_mean` on the rows ``sample`` (a slice at least box // 2 rows
    from both edges) only: (mean, share) there, the box's rows summed, then its columns."""
    half = box // 2
    total = count = 0
    for offset in range(-half, half + 1):
        rows = slice(sample.start + offset, sample.stop + offset, sample.step)
        total = total + np.where(mask[rows], values[rows], np.float32(0))
        count = count + mask[rows].astype(np.float32)
    total = ndimage.uniform_filter1d(total, box, axis=1, mode='reflect')
    count = ndimage.uniform_filter1d(count, box, axis=1, mode='reflect')
    with np.errstate(invalid='ignore', divide='ignore'):
        mean = np.where(count > 1e-9, total / np.maximum(count, 1e-9), 0.0)
    return mean, count / box


def _add_regional_steps(log_map, steps, axis):
    """Add to ``log_map`` the steps found in part of the frame (:class:`RegionalSearch`):
    each step's height from its line on, over the lines across it covers."""
    for step in steps:
        first, last = step['extent']
        if axis == 0:
            log_map[first:last + 1, step['position']:] += np.float32(step['height'])
        else:
            log_map[step['position']:, first:last + 1] += np.float32(step['height'])


def structure_model(shape, model, sign=-1.0):
    """The structure found, as a map of mean 1 (float32).

    Line profiles (steps plus the significant pattern) of both directions,
    each band scaled by its amplitude when the pattern is localized. ``sign``
    -1 gives the residual correction (the sum holds the inverse of what the
    reference misses); +1 the pattern as the sum shows it.
    """
    rows, cols = shape
    log_map = np.zeros(shape, np.float32)   # a 4K map: float32, values of order 0.01
    for axis in (0, 1):
        found = model[axis]
        _add_regional_steps(log_map, found.get('regional', ()), axis)
        profile = np.asarray(found['profile'], dtype=np.float32)
        if not np.any(profile):
            continue
        amplitudes = np.ones(1)
        if found['bands'].get('localized'):
            amplitudes = np.clip(np.asarray(found['bands']['amplitudes']), 0.0, None)
        along = rows if axis == 0 else cols
        band_of = np.minimum((np.arange(along) * amplitudes.size) // along, amplitudes.size - 1)
        scale = (amplitudes[band_of] if amplitudes.size > 1 else np.ones(along)).astype(np.float32)
        if amplitudes.size == 1:   # the same profile on every line: no outer product needed
            log_map += profile[None, :] if axis == 0 else profile[:, None]
        elif axis == 0:
            log_map += scale[:, None] * profile[None, :]
        else:
            log_map += profile[:, None] * scale[None, :]
    log_map *= np.float32(sign)
    log_map -= np.float32(log_map.mean(dtype=np.float64))
    model_map = np.exp(log_map, out=log_map)
    model_map /= np.float32(model_map.mean(dtype=np.float64))
    return model_map
