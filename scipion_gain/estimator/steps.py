"""Steps at fixed lines: a readout step told from a specimen edge, over the whole frame
and in part of it.

A detector step is sharp to the pixel, at one line in every band it covers, with one
height there (:func:`detector_step`: :func:`_bands_agree`, :func:`_sharp_step`, and a
session's two halves alike, :func:`_step_halves_check`); a specimen edge moves from
band to band, is blurred, or is in one movie only. :class:`RegionalSearch` looks for
steps confined to part of the frame (a run of bands), with Bonferroni's z over every
run and line tried. The whole frame's search is in :func:`.assessment.line_structure`.
"""
import numpy as np
from scipy.special import ndtri

from .arrays import quiet_nan_warnings
from .band_profiles import (band_profiles, correlate_bands, highpass, pooled, robust_combine,
                            shot_scales, step_template)
from .readout import ReadoutBoundary, boundary_lines, detrended_step


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


def steps_in_halves(halves, usable, bands, axis, width, offsets, template):
    """Per half of a session, the band-combined step statistic and its error, per line.

    ``halves``: the corrected sums of a session's two halves of movies
    (:func:`.session.half_of`). Returns per half {'heights', 'errors'}, or None.
    """
    if halves is None:
        return None
    out = []
    for half in halves:
        per_band = correlate_bands(highpass(band_profiles(half, usable, bands, axis), width),
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


def quietest_step_filter(profiles, lines, thresholds, sums=None):
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
        per_band = correlate_bands(hp, offsets, template)
        scales = None if sums is None else shot_scales(sums, 2 * width + 1)
        errors = robust_combine(per_band, scales=scales)[1]
        noise = float(np.nanmedian(errors)) if np.isfinite(errors).any() else np.inf
        score = 1.0 / noise if noise > 0 else 0.0
        if best is None or score > best[0]:
            best = (score, width, hp, offsets, template, per_band, scales)
    return best[1:]


def needed_z(lines, boundaries, thresholds):
    """The z a step needs at each line: ``step_z``, or ``boundary_step_z`` at the reference's
    readout boundaries, give or take their reach (a few places to look, not every line)."""
    needed = np.full(lines, float(thresholds.step_z))
    for boundary in boundaries:
        if 0 < boundary < lines:
            needed[boundary_lines(boundary)] = min(thresholds.step_z,
                                                   thresholds.boundary_step_z)
    return needed


def placed(offsets, template, position, lines):
    """The step filter's template placed at ``position`` on ``lines`` lines (cut at the edges)."""
    shape = np.zeros(lines)
    for offset, value in zip(offsets, template):
        if 0 <= position + offset < lines:
            shape[position + offset] = value
    return shape


def detector_step(per_band, residual, position, height, half_steps, offsets, template,
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


def half_bands(halves, usable, bands, axis, window, step_profile=0.0):
    """Per half of a session, each band's detrended step (B, L) (:func:`detrended_bands`),
    the steps over the whole frame already found (``step_profile``, the detector's: the
    same in both halves) taken out, or None."""
    if halves is None:
        return None
    return [detrended_bands(band_profiles(half, usable, bands, axis) - step_profile, window)[0]
            for half in halves]


def detrended_bands(profiles, window):
    """(B, L) each band's step at every line from the ``window`` lines on each side, its level
    and slope fitted with it (:func:`detrended_step`: a smooth specimen does not bias it),
    and the lines where it can be taken (a full window, no line missing)."""
    offsets, weights = detrended_step(window)
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
    usable = np.zeros(lines, bool)   # a step at x rests on lines x - window .. x + window - 1
    usable[window:lines - window + 1] = valid
    return out, usable


def sector_flanks(position, boundaries, lines, partner=None):
    """(before, after): the lines of the readout sectors on each side of a step at
    ``position``, up to the nearest boundary beyond its reach on each side (a boundary within
    its reach is the step's own, placed a few lines off by the reference), or the frame's
    edge; ``partner``: the other edge of a block (:meth:`RegionalSearch.run`), which bounds
    the sector between them."""
    def clear(b):
        return abs(int(b) - position) > int(getattr(b, 'reach', 1))
    before = max([int(b) for b in boundaries if b < position and clear(b)], default=0)
    after = min([int(b) for b in boundaries if b > position and clear(b)], default=lines)
    if partner is not None:
        before, after = (max(before, partner), after) if partner < position else \
            (before, min(after, partner))
    return before, after


def _sector_level_check(profiles, position, flanks, run, height, limit):
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
    count = profiles.shape[0]
    first, last = run
    inside = np.zeros(count, bool)
    inside[first:last + 1] = True
    if inside.all():
        return True, {}
    before, after = flanks   # :func:`sector_flanks`
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


def pattern_runs(bands, least):
    """The runs of bands a pattern or a step in part of the frame is looked for in: a
    quarter, half and three quarters of the bands (at least ``least``), each at steps of
    half its length: any part of at least a quarter of the frame's bands holds one of them
    over at least half its own length. [(first, last)]."""
    runs = []
    for length in sorted({max(least, bands // 4), bands // 2, (3 * bands) // 4}):
        if not least <= length < bands:
            continue
        stride = max(1, length // 2)
        runs += [(first, first + length - 1) for first in range(0, bands - length + 1, stride)]
    return runs


class RegionalSearch:
    """Steps in part of the frame: at one line, over a run of neighbouring bands.

    A detector step confined to part of the frame (one tile, a sector that drifted in some
    of its rows) is sharp to the pixel and at one line in every band it covers, with one
    height there; outside, nothing. The runs of :func:`pattern_runs` (a quarter, half and
    three quarters of the bands at half-length strides, at least ``regional_bands``) and
    all the bands are tried, at the lines next to the reference's readout boundaries in one
    movie and at every line in a session (:meth:`_needed`), and so are blocks: two
    neighbouring boundaries with steps of opposite sign over one run (a sector, or part of
    one, whose level is off; its level is then that between them, :func:`sector_flanks`). A run's height is the inverse-variance mean of its bands' detrended steps (each
    band's noise its shot noise, :func:`shot_scales`, times a factor measured along its
    profile), its error the larger of that mean's and the spread of the run's heights
    along the lines (what the bands share: a line pattern, the specimen). The z needed is
    Bonferroni's over every run, line and pair of lines tried (``regional_alpha`` for a
    false step anywhere). A candidate is the detector's when its bands place it on one
    line and agree on its height (:func:`_step_position_check`, :func:`_step_height_check`),
    the run's profile is a sharp step (:func:`_sharp_step`), and a session's two halves
    each see it, alike, or in one movie the sector's level moves with it
    (:func:`_sector_level_check`); a run whose bands disagree on the height only gives way
    to its shorter runs; otherwise it is a specimen edge, and no step is looked for as far as
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
        # the runs of :func:`pattern_runs` and every band, not every run of neighbouring
        # bands: they overlap so much that Bonferroni over all of them (91 of 16 bands) asked
        # a z of 5.6-5.9 where a twelfth of the tests asks 0.4 less
        self.runs = np.array(pattern_runs(count, least) + [(0, count - 1)], dtype=int)
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
            per_band, inside = detrended_bands(self.profiles, window)
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
        # a block is one sector's level off: its two edges are neighbouring boundaries
        self.pairs = np.array([(a, b) for one, two in zip(groups, groups[1:])
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
                                       float(errors[k, line]), partner)
                           for line, partner in (pair, pair[::-1])]
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

    def _check(self, k, position, height, z, error, partner=None):
        """Is the step of run ``k`` at ``position`` the detector's? Its record, with
        'detector' (:meth:`_commit` updates the search); ``partner``: a block's other edge
        (its sector lies between them)."""
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
            flanks = sector_flanks(position, self.boundaries, lines, partner)
            level, more = _sector_level_check(self.profiles, position, flanks,
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
            self.residual[chosen] -= height * placed(self.offsets, self.template, position,
                                                      lines)[None, :]
            self.profiles[chosen, position:] -= height
            self.per_band[chosen] = detrended_bands(self.profiles[chosen], self.window)[0]
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
        found, unit = (detrended_bands(m, self.window)[0]
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
