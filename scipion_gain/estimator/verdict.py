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
from dataclasses import dataclass

import numpy as np

#: names people read for the assessment's components
COMPONENT_WORDS = {'columns': 'column pattern', 'rows': 'row pattern',
                   'sectors': 'step between readout sectors', 'row_steps': 'step between row blocks',
                   'pixels': 'pixel-to-pixel structure', 'smooth': 'smooth field'}


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
    costly = loss is None or loss >= settings.max_dqe_loss
    flagged = bool(found) and costly
    reasons = [_reason(c) for c in found]
    if flagged:
        cost = (f"; it costs {100 * loss:.2f} % of the DQE at {electrons:.3g} e/px"
                if loss is not None else '')
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
    return {'flagged': flagged, 'reasons': reasons if flagged else [],
            'dqe_loss': loss, 'pattern_rms': float(np.sqrt(variance)),
            'electrons_per_pixel': float(electrons) if electrons else None,
            'max_dqe_loss': settings.max_dqe_loss, 'sentence': sentence}


def _reason(component):
    name = COMPONENT_WORDS.get(component['name'], component['name'])
    return f"{name} {100 * component['size']:.2f} % (z {component['z']:.0f})"
