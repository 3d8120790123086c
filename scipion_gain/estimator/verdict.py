"""The verdict on a gain reference: ok, or flagged with its reasons, in physical units.

A wrong reference leaves a fixed pattern r (the residual, mean 1) in every
corrected frame. In a sum of frames holding N electrons per pixel, shot
noise has variance N and the pattern adds (N sigma_r)^2, sigma_r being the
pattern's relative RMS. The detective quantum efficiency of the summed
image is therefore derated by

    DQE_with / DQE_without = 1 / (1 + N sigma_r^2),

the sense of Gatan's "derating" of a gain reference (a 4 % derating takes a
DQE of 50 % to 48 %). ``dqe_loss`` is 1 - that ratio, at the movie's own dose
(electrons per pixel summed over its frames). Only structure that the
assessment found beyond noise counts: sigma_r^2 is the sum of the found
components' variances (each estimated without its noise: a pattern's power
less the noise power, a step profile's variance, the cross-power of a session's two
independent halves), not the variance of the Wiener-shrunk map. A movie is
flagged when such structure exists and costs at least ``max_dqe_loss``.
"""
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from .statistics import Thresholds

#: names people read for the assessment's components (every view words them so)
COMPONENT_WORDS = {'columns': 'column pattern', 'rows': 'row pattern',
                   'sectors': 'step between readout sectors', 'row_steps': 'step between row blocks',
                   'pixels': 'pixel-to-pixel structure', 'smooth': 'smooth field'}
#: the paper's three flags: key in 'flags' -> the statistic or ratio it tests
PAPER_FLAGS = {'std': 'std', 'percentile_ratio': 'p97.5/p2.5', 'max_ratio': 'max/p97.5'}
#: ratios of a map whose denominator is 0 are stored as the largest float (JSON has no inf)
HUGE_RATIO = 1e300


@dataclass(frozen=True)
class VerdictSettings:
    max_dqe_loss: float = 0.001   # flag when the reference costs at least this fraction of DQE


def dqe_loss(electrons, pattern_variance):
    """1 - 1 / (1 + N sigma^2): the fraction of DQE a fixed pattern costs at N electrons/pixel."""
    if electrons is None or not np.isfinite(electrons) or electrons <= 0:
        return None
    excess = float(electrons) * float(pattern_variance)
    return excess / (1.0 + excess)


def judge(assessment, electrons, settings=VerdictSettings(), kind='residual'):
    """The verdict (JSON-ready): flagged, reasons, dqe_loss, sentence.

    ``kind`` 'residual' judges a gain reference (what it leaves); 'gain' judges
    movies used without one (the structure a reference would have to correct).
    """
    # a smooth field is reported and mapped, not judged: the illumination (fixed on the
    # detector too) and what the specimens of a session have in common share it
    found = [c for c in assessment['components'] if c['found'] and c['name'] != 'smooth']
    variance = float(sum(c.get('variance', c['size'] ** 2) for c in found))
    loss = dqe_loss(electrons, variance)
    local, where = _local_loss(found, electrons)
    costly = loss is None or loss >= settings.max_dqe_loss or (
        local is not None and local >= settings.max_dqe_loss)
    flagged = bool(found) and costly
    reasons = [_reason(c) for c in found]
    if flagged:
        cost = (f"; it costs {dqe_percent(loss)} of the DQE at {electrons:.3g} e/px"
                if loss is not None else '')
        if cost and local is not None and local > loss:
            cost += f" ({dqe_percent(local)} in {where})"
        if kind == 'residual':
            sentence = ("the reference leaves structure beyond noise: " + '; '.join(reasons)
                        + cost + ": check or replace the gain reference")
        else:
            sentence = ("the movies (no gain reference applied) hold detector structure: "
                        + '; '.join(reasons) + cost + ": correct them with a gain reference")
    elif found:
        sentence = (f"structure found ({'; '.join(reasons)}) but it costs only "
                    f"{100 * loss:.3f} % of the DQE at {electrons:.3g} e/px "
                    f"(threshold {100 * settings.max_dqe_loss:g} %): ok")
    else:
        sentence = (f"no structure beyond the estimate's noise "
                    f"(pixel noise {100 * assessment['noise']['pixel_std']:.2g} % of the "
                    f"local level): ok")
    out = {'flagged': flagged, 'reasons': reasons if flagged else [],
           'dqe_loss': loss, 'pattern_rms': float(np.sqrt(variance)),
           'electrons_per_pixel': float(electrons) if electrons else None,
           'max_dqe_loss': settings.max_dqe_loss, 'sentence': sentence}
    if local is not None:   # a line pattern in part of the frame: its cost where it lies
        out['local_dqe_loss'] = local
    return out


def _local_loss(found, electrons):
    """(DQE loss, words) where a line pattern confined to part of the frame lies, or (None,
    None): within its extent it has its own RMS (``size``), and every particle there loses
    1 - 1 / (1 + N size^2), however small a share of the frame the extent is. (A step in
    part of the frame is a level, not a pattern, inside its region: its cost is the
    frame's.)"""
    local = [(dqe_loss(electrons, c['size'] ** 2), c['where']) for c in found
             if c['name'] in ('columns', 'rows') and c.get('where')]
    local = [item for item in local if item[0] is not None]
    return max(local, key=lambda item: item[0]) if local else (None, None)


def _reason(component):
    """'column pattern 3.10 % (40 times its noise)': a found component in words, its size
    and its significance (the assessment's z: the size over its noise's standard deviation)."""
    name = COMPONENT_WORDS.get(component['name'], component['name'])
    text = f"{name} {100 * component['size']:.2f} %"
    if component.get('where'):   # confined to part of the frame
        text += f" in {component['where']}"
    return text + (_significance(component['z']) if component.get('z') is not None else '')


def _significance(z):
    return f" ({z:.0f} times its noise)"


#: the significance as files written before these words put it: ' (z 40)'
_OLD_SIGNIFICANCE = re.compile(r" \(z (-?[0-9.]+)\)")


def plain_words(text):
    """A reason or sentence of a stats file in today's words: ' (z 40)' of files written
    before reads ' (40 times its noise)', as :func:`judge` words it now."""
    return _OLD_SIGNIFICANCE.sub(lambda m: _significance(float(m.group(1))), text)


def dqe_percent(loss):
    """A DQE loss (a fraction) as every view writes it: '33.05 %', '0.004 %' below 0.1 %."""
    return f"{100 * loss:.{2 if loss >= 0.001 else 3}f} %"


# ------------------------------------------------------------------ the one verdict read
@dataclass
class Verdict:
    """The verdict of a movie (or of the accumulated estimate) that every view shows.

    ``source`` says where it came from: 'verdict' (the stats' own ``verdict``
    key, made by :func:`judge`), 'assessment' (the noise-aware assessment of
    files written before the verdict existed) or 'paper flags' (files older
    than both).
    """
    flagged: bool
    reasons: list = field(default_factory=list)
    dqe_loss: float = None
    sentence: str = ''
    source: str = 'verdict'

    @property
    def word(self):
        return 'flagged' if self.flagged else 'ok'

    @property
    def reasons_text(self):
        return '; '.join(self.reasons) if self.reasons else ''

    def to_dict(self):
        return asdict(self)


def verdict_of(stats):
    """The verdict of a stats dict: the one place that decides which verdict a person reads.

    The stats' ``verdict`` (``flagged``, ``reasons``, ``dqe_loss``,
    ``sentence``) when there is one; else the noise-aware ``assessment``;
    else, for files older than both, the paper's ``flagged``.
    """
    stats = stats or {}
    given = stats.get('verdict')
    if isinstance(given, dict) and 'flagged' in given:
        reasons = [plain_words(str(r)) for r in (given.get('reasons') or [])]
        flagged = bool(given['flagged'])
        loss = given.get('dqe_loss')
        return Verdict(flagged, reasons, None if loss is None else float(loss),
                       plain_words(str(given.get('sentence')
                                       or _fallback_sentence(flagged, reasons))),
                       'verdict')
    assessment = stats.get('assessment')
    if isinstance(assessment, dict) and 'flagged' in assessment:
        flagged = bool(assessment['flagged'])
        reasons = ([_reason(c) for c in assessment.get('components', []) if c.get('found')]
                   if flagged else [])
        return Verdict(flagged, reasons, None, _fallback_sentence(flagged, reasons),
                       'assessment')
    flagged = bool(stats.get('flagged', False))
    reasons = paper_flag_reasons(stats) if flagged else []
    return Verdict(flagged, reasons, None, _fallback_sentence(flagged, reasons), 'paper flags')


def _fallback_sentence(flagged, reasons):
    if not flagged:
        return 'no problem found'
    return 'flagged: ' + ('; '.join(reasons) if reasons else 'see the statistics')


# ------------------------------------------------------------------ the paper's flags
def _thresholds_of(stats):
    given = stats.get('thresholds') or {}
    defaults = asdict(Thresholds())
    return {key: float(given.get(key, defaults[key])) for key in PAPER_FLAGS}


def stat_value(stats, key):
    """A statistic ('std', 'p2.5', ...) or ratio ('p97.5/p2.5', ...) of a stats dict, NaN if absent."""
    for group in ('statistics', 'ratios'):
        if key in (stats.get(group) or {}):
            return float(stats[group][key])
    return float('nan')


def _number(value):
    return 'inf' if value >= HUGE_RATIO else f"{value:.4f}"


def paper_flag_reasons(stats):
    """The paper's flags raised in a stats dict, in words: ['std 0.0500 > 0.04', ...]."""
    thresholds = _thresholds_of(stats)
    return [f"{name} {_number(stat_value(stats, name))} > {thresholds[key]:g}"
            for key, name in PAPER_FLAGS.items() if (stats.get('flags') or {}).get(key)]


def paper_over(stats):
    """The paper's flags that are raised, as {flag key: (value, threshold)}; only values
    really above their threshold (a flag is never shown for a value below it)."""
    thresholds = _thresholds_of(stats)
    out = {}
    for key, name in PAPER_FLAGS.items():
        value = stat_value(stats, name)
        if value == value and value > thresholds[key]:
            out[key] = (value, thresholds[key])
    return out
