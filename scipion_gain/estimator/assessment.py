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

Where the pieces live: the bands' profiles and their robust statistics in
:mod:`.band_profiles`, the step tests (whole frame and part of it) in
:mod:`.steps`, the readout boundaries a reference shows in :mod:`.readout`;
here the line patterns, one direction's whole structure
(:func:`line_structure`), :func:`assess` and :func:`structure_model`.

Pure NumPy (the sum is small next to the frames); no Scipion import.
"""
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from .arrays import in_background, quiet_nan_warnings
from .band_profiles import (band_profiles, correlate_bands, highpass, masked_values, pooled,
                            robust_combine, shot_scales, step_template)
from .filters import masked_box_mean
from .steps import (RegionalSearch, detector_step, half_bands, needed_z, pattern_runs,
                    placed, quietest_step_filter, steps_in_halves)


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


def _line_pattern(profiles, excluded, width, thresholds, scales=None, spans=()):
    """The line-to-line pattern the bands agree on: (component, pattern, errors, power, good);
    ``scales``: each band's relative shot noise per line (:func:`shot_scales`).

    The pattern's chi-square over every line, and over each of ``spans`` ((first, end)
    lines, :func:`line_spans`): a pattern on a sector's lines only (a readout sector of a
    sixteenth of the frame, wherever its edges fall) adds the same excess to both, and
    stands out over its own lines where over the whole frame a thousand lines' noise drowns
    it. Each span's z from its chi-square's own law (:func:`_wilson_hilferty`: a few tens of
    lines are far from normal); the largest z is the test's. ``size`` stays the pattern's
    RMS over the whole frame's lines (what the DQE loss counts)."""
    pattern, errors = robust_combine(highpass(profiles, width), scales=scales)
    errors = pooled(errors)
    good = np.isfinite(pattern) & ~excluded & (errors > 0)
    n = int(good.sum())
    if n < 8:
        return ({'size': 0.0, 'noise': 0.0, 'z': 0.0, 'found': False}, pattern, errors, 0.0,
                good)
    terms = np.where(good, (np.nan_to_num(pattern) / np.where(good, errors, 1.0)) ** 2, 0.0)
    chi = float(np.sum(terms))
    z = (chi - n) / np.sqrt(2.0 * n)
    component = {}
    # a span's lines within a filter's width of lines left out (a specimen edge's) hold
    # that edge's high-passed remains, a larger share of a few tens of lines than of all
    guarded = good & ~ndimage.binary_dilation(excluded, np.ones(2 * width + 1, bool)) \
        if spans and excluded.any() else good
    best = _best_span(terms, guarded, spans)
    if best is not None and best[0] > z:
        z = best[0]
        component['lines_tested'] = list(best[1])
    power = max(float(np.mean(pattern[good] ** 2) - np.mean(errors[good] ** 2)), 0.0)
    found = bool(z > thresholds.z and np.sqrt(power) > thresholds.profile_size)
    component = {'size': float(np.sqrt(power)), 'noise': float(np.sqrt(np.mean(errors[good] ** 2))),
                 'z': float(z), 'found': found, **component}
    return component, pattern, errors, power, good


#: a span of lines tested by itself holds at least this many usable lines
SPAN_LINES = 32


def line_spans(lines):
    """The spans of lines a line pattern is also tested on ((first, end) pairs): a sixteenth,
    an eighth, a quarter and a half of the lines (at least SPAN_LINES), each at steps of half
    its length. Any run of at least 3/32 of the lines holds a sixteenth-span whole, wherever
    it lies: a readout sector, of whatever width and edges."""
    spans = []
    for length in sorted({max(SPAN_LINES, lines // d) for d in (16, 8, 4, 2)}):
        if length >= lines:
            continue
        stride = max(1, length // 2)
        spans += [(first, first + length) for first in range(0, lines - length + 1, stride)]
    return spans


#: the median of chi-square with one degree of freedom, and the standard deviation of the
#: median of n such values times sqrt(n): 1 / (2 f(median)), f its density there
CHI2_1_MEDIAN = 0.45494
CHI2_1_MEDIAN_SD = 1.0622
#: a span's excess must be held by most of its lines: its median term this many standard
#: deviations above chance (one-sided, 3 sigma)
SPREAD_Z = 3.0


def _best_span(terms, good, spans):
    """(z, (first, last)) of the span whose chi-square stands highest, or None.

    A pattern of the detector's lines raises the term of every line it covers: the span's
    median term rises with its chi-square. A specimen edge's high-passed remains (a foil
    edge's, which the drift test left to the noise in a few bands) put the same excess in
    a dozen lines, a large share of a few tens of lines' chi-square, and leave the median
    where chance puts it: a span counts only when its median term stands SPREAD_Z
    standard deviations above chance."""
    best = None
    for first, end in spans:
        inside = good[first:end]
        n = int(inside.sum())
        if n < SPAN_LINES // 2:
            continue
        values = terms[first:end][inside]
        spread = (float(np.median(values)) - CHI2_1_MEDIAN) * np.sqrt(n) / CHI2_1_MEDIAN_SD
        if spread < SPREAD_Z:
            continue
        z = _wilson_hilferty(float(values.sum()), n)
        if best is None or z > best[0]:
            best = (float(z), (int(first), int(end) - 1))
    return best


def _pattern_where(pattern, errors, good, hp, model_hp, excluded, thresholds, axis, along):
    """Where a found line pattern lies: (words, or None over the whole frame; the share of
    the frame's area it covers). Its lines (:func:`lines_holding`), then the bands'
    amplitudes over those lines only (elsewhere the model is noise) (:func:`bands_holding`);
    ``along``: lines across the bands."""
    lines = pattern.size
    first, last = lines_holding(pattern, errors, good)
    outside = np.ones(lines, bool)
    outside[first:last + 1] = False
    within = _band_amplitudes(hp, model_hp, excluded | outside, thresholds)
    low, high = bands_holding(within, along)
    area = (last - first + 1) / float(lines) * (high - low + 1) / float(along)
    return _extent_words((first, last), (low, high), axis, lines, along), area


def _pattern_model(profiles, step_profile, excluded, pattern_width, width, model_hp, thresholds,
                   scales=None, spans=()):
    """The line pattern left once the steps are out (:func:`_line_pattern`), and the
    direction's log profile model and high-passed model with it (Wiener-shrunk: each line's
    value times signal / (signal + noise)). ``spans``: see :func:`_line_pattern`. Returns
    (the pattern test's five values, profile, model_hp)."""
    found = _line_pattern(profiles - step_profile[None, :], excluded, pattern_width, thresholds,
                          scales, spans)
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
    is looked for again, a few times at most. The whole frame's lines first, then the runs
    of bands over their lines and spans of them, then the whole frame's bands over spans of
    lines (:func:`line_spans`): a pattern in part of the frame is measured in the part that
    holds it. Returns (the pattern test's five values, profile, model_hp, the drifting
    features found)."""
    drifting = []
    hp = highpass(profiles - step_profile[None, :], pattern_width)
    args = (profiles, step_profile, excluded, pattern_width, width, model_hp, scales, hp)
    found, profile, model = _drift_free_pattern(*args, slice(None), thresholds, drifting)
    if not found[0]['found']:
        regional = _regional_pattern(*args, thresholds, drifting)
        if regional is not None:
            found, profile, model = regional
    spans = line_spans(profiles.shape[1])
    if not found[0]['found'] and spans:      # (a frame of a few lines has no spans)
        needed = max(float(thresholds.z), float(-ndtri(thresholds.regional_alpha / len(spans))))
        spanned = _drift_free_pattern(*args, slice(None), replace(thresholds, z=needed),
                                      drifting, spans)
        if spanned[0][0]['found']:
            found, profile, model = spanned
    return found, profile, model, drifting


def _drift_free_pattern(profiles, step_profile, excluded, pattern_width, width, model_hp,
                        scales, hp, chosen, thresholds, drifting, spans=()):
    """The pattern of the bands ``chosen`` (tested over ``spans`` of lines too,
    :func:`_line_pattern`), its drifting features' lines left out (added to ``drifting``):
    (the pattern test's five values, profile, model_hp)."""
    part = None if scales is None else scales[chosen]
    for attempt in range(5):
        found, profile, model = _pattern_model(profiles[chosen], step_profile, excluded,
                                               pattern_width, width, model_hp, thresholds,
                                               part, spans)
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


def _regional_pattern(profiles, step_profile, excluded, pattern_width, width, model_hp,
                      scales, hp, thresholds, drifting):
    """A line pattern confined to part of the frame: in one run of bands (:func:`pattern_runs`).

    The whole frame's robust combination takes a pattern held by a quarter of the bands for
    their outliers; in a run of bands that covers it, it stands out as over the whole frame.
    Each run's pattern test (:func:`_line_pattern`, the bands' own noise, over all lines and
    over each span of :func:`line_spans`) against the z of the whole frame's test or
    Bonferroni's for ``regional_alpha`` over the runs and spans, whichever is larger; the
    strongest runs are tried in turn, each with the drift test. Returns
    (the pattern test's five values, profile, model_hp) of the first found, or None."""
    t = thresholds
    runs = pattern_runs(profiles.shape[0], int(max(1, t.regional_bands)))
    if not runs:
        return None
    spans = line_spans(profiles.shape[1])
    needed = max(float(t.z), float(-ndtri(t.regional_alpha / (len(runs) * (1 + len(spans))))))
    strict = replace(t, z=needed)
    tried = []
    for first, last in runs:
        chosen = slice(first, last + 1)
        component = _line_pattern(profiles[chosen] - step_profile[None, :], excluded,
                                  pattern_width, strict,
                                  None if scales is None else scales[chosen], spans)[0]
        if component['found']:
            tried.append((component['z'], chosen))
    for _, chosen in sorted(tried, key=lambda item: -item[0])[:3]:
        found, profile, model = _drift_free_pattern(profiles, step_profile, excluded,
                                                    pattern_width, width, model_hp, scales,
                                                    hp, chosen, strict, drifting, spans)
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


def _leave_out_edge(excluded, near_edge, reach, position, width, details):
    """A specimen edge found by the step search: its lines out of the pattern (``reach``),
    and no step searched for as far as the filter carries it (its own width: drift over the
    frame, the movie's drift, blur)."""
    margin = width + 8 + int(np.ceil(abs(details.get('position_drift', 0.0))))
    excluded[reach] = True
    near_edge[max(0, position - margin):position + margin + 1] = True


def line_structure(total, usable, axis, thresholds=AssessmentThresholds(), boundaries=(),
                   halves=None, masked=None):
    """Line pattern and steps along one direction (``axis`` 0: columns, 1: rows).

    First the line-to-line pattern; then the steps, whose noise includes what a pattern of
    that power gives the step filter (a random column pattern has local means that look
    like small steps); then the pattern again with the steps taken out. Returns a dict:
    ``pattern`` (component), ``steps`` (component, with the accepted steps and the rejected
    specimen edges), ``profile`` (the detector's log profile model: steps plus the
    significant pattern, mean 0), ``bands`` (per-band amplitudes of that model and the
    localization test). ``boundaries``: the reference's readout boundaries
    (:func:`.readout.reference_boundaries`): a step there needs only ``boundary_step_z`` (a
    handful of places to look, not every line). ``halves``: for a session, the corrected
    sums of its two halves of movies: a step must have one height in both. ``masked``:
    see :func:`.band_profiles.band_profiles`.
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
    width, hp, offsets, template, per_band_steps, step_scales = quietest_step_filter(
        profiles, lines, t, sums)
    from_pattern = pattern_power / float(np.sum(template ** 2))  # variance a white pattern adds
    half_steps = None   # made when a step is first tested (most sums have none)
    # no step within half a high-pass of the frame's edges: the running mean is one-sided there
    inside = np.zeros(lines, bool)
    inside[width // 2 + 1:lines - width // 2] = True
    needed = needed_z(lines, boundaries, t)
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
            half_steps = steps_in_halves(halves, usable, bands, axis, width, offsets, template)
        same, details = detector_step(per_band_steps, residual, position, height, half_steps,
                                       offsets, template, t, scales)
        reach = slice(max(0, position - width), min(lines, position + width + 1))
        record = {'position': position, 'height': height, 'z': float(z[position]),
                  'at_boundary': bool(needed[position] < t.step_z), **details}
        if not same:
            rejected.append(record)
            _leave_out_edge(excluded, near_edge, reach, position, width, details)
            continue
        if abs(height) <= t.step_size or len(accepted) >= t.max_steps:
            excluded[reach] = True
            continue
        accepted.append(record)
        # take the step out of every band (its high-passed shape) and go on
        shape = placed(offsets, template, position, lines)
        residual -= height * shape[None, :]
        model_hp += height * shape
        step_profile[position:] += height
        per_band_steps = correlate_bands(residual, offsets, template)
    search = RegionalSearch(profiles - step_profile[None, :], sums, residual, boundaries,
                            (offsets, template), t, rows,
                            lambda w: half_bands(halves, usable, bands, axis, w, step_profile),
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
        lambda: _pattern_where(pattern, errors, good, hp, model_hp, excluded, t, axis, rows),
        lambda: _pattern_variance(profile - (step_profile - step_profile.mean()), errors,
                                  good, power, share, bands['localized']))
    return {'pattern': pattern_component, 'steps': steps_component,
            'profile': profile, 'bands': bands, 'regional': regional}


def _pattern_variance(clean, errors, good, power, share, localized):
    """The variance a line pattern confined to part of the frame adds to it: the mean
    square amplitude ``share`` of the bands that hold it times the mean square of the model
    they were measured against (its power over the frame's lines when the bands hold it
    alike). That model is the
    pattern Wiener-shrunk (each line times k = power / (power + noise^2), with the power of
    all the frame's lines: a pattern on a tenth of them is shrunk several times), so the
    amplitudes are 1 / k where it lies; what its noise leaves in the model, k^2 noise^2 a
    line, is taken out."""
    if not localized or not good.any():
        return power * share
    with np.errstate(invalid='ignore', divide='ignore'):
        k = power / (power + errors[good] ** 2)
    noise = np.nan_to_num(k ** 2 * errors[good] ** 2)
    return share * max(float(np.mean(clean[good] ** 2 - noise)), 0.0)


def _pattern_component(name, component, variance, specimen_lines, where, confined=None):
    """The line pattern's JSON component: the test's values, the variance it adds, where it
    lies (``where()``: words, or None over the whole frame, and the share of the frame's
    area) and the specimen's lines left out (drifting features, one edge's remains). A
    pattern in part of the frame has the RMS it has there as its ``size`` (what the words
    'column pattern 3 % in columns ..., rows ...' say), its RMS over the frame as
    ``frame_rms``: the square root of the variance it adds, which the DQE loss counts
    (``confined()``: that variance, :func:`_pattern_variance`)."""
    out = dict(name=name, **component, variance=float(variance) if component['found'] else 0.0)
    extent, area = where() if component['found'] else (None, 1.0)
    if extent:
        out['where'] = extent
        if confined is not None:
            out['variance'] = float(confined())
        out['frame_rms'] = float(np.sqrt(out['variance']))
        out['size'] = float(np.sqrt(out['variance'] / max(area, 1e-6)))
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
