"""Writing an analysis to files: the one writer the command line and the protocol share.

An analysis (``scipion_gain.estimator.analysis.MovieAnalysis``: maps and a
JSON-ready report) becomes, at the paths a front-end chooses
(:class:`AnalysisOutputs`; any may be None):

* ``gain``: the estimate (a correction that multiplies raw frames, mean 1);
* ``defect_labels``: the defect label image (estimator.defects.LABELS) and
  ``defect_file``: the MotionCor2 ``-DefectFile`` (``x y w h`` per line);
* ``structure``: the estimate without its noise (multiplies raw frames, mean 1);
* ``corrected_sum``: the sum of the frames as judged (for the power spectrum);
* ``applied_reference``: for movies gain-corrected at acquisition, the
  reference that was applied, recovered from their lattice (multiplies raw
  frames, mean 1); nothing for other movies;
* ``json``: the report, written LAST, so that its presence means the rest is
  complete.

Every file is written atomically (:mod:`.atomic`): nothing half-written is
ever left at a path, and inside a :func:`~.atomic.transaction` a failed run
leaves every earlier file in place.
"""
import json
from dataclasses import dataclass

import numpy as np

from .atomic import atomic_path, write_bytes, write_text  # noqa: F401 (write_text: one of this module's writers)
from .mrc import write_mrc


@dataclass
class AnalysisOutputs:
    gain: str = None
    json: str = None
    defect_labels: str = None
    defect_file: str = None
    structure: str = None
    corrected_sum: str = None
    applied_reference: str = None

    def paths(self):
        """The paths given, by role."""
        return {role: path for role, path in vars(self).items() if path}


def write_json(path, data):
    """Write JSON atomically (see :mod:`.atomic`): never half-written at ``path``."""
    write_text(path, json.dumps(data, indent=1, sort_keys=True) + '\n')


def write_sums(path, accumulator):
    """Write a GainAccumulator's sums (its .npz, ``GainAccumulator.load`` reads it back)
    atomically, straight to the file (a 4K movie's sums are hundreds of MB)."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as handle:
            accumulator.write_npz(handle)


def write_analysis(analysis, outputs, what='', extra=None):
    """Write the maps and files of ``analysis`` to ``outputs``; returns the report written.

    ``what`` names the data in the MRC labels (e.g. 'movie 7'); ``extra`` is
    merged into the report before it is written (a front-end's own keys: a
    movie id, the file names). The JSON comes last.
    """
    report = analysis.to_json()
    kind = 'residual gain' if report['kind'] == 'residual' else 'gain'
    of = f" of {what}" if what else ''
    if outputs.gain:
        write_mrc(outputs.gain, analysis.gain,
                  label=f"scipion-gain {kind}{of}: multiplies raw frames, mean 1")
    if outputs.defect_labels:
        write_mrc(outputs.defect_labels, analysis.defects.labels.astype(np.float32),
                  label='scipion-gain defects: ' + ', '.join(
                      f"{k} {v}" for k, v in report['defects']['labels'].items()))
        report['defects']['map'] = str(outputs.defect_labels)
    if outputs.defect_file:
        write_text(outputs.defect_file, analysis.defects.defect_file_text())
        report['defects']['defect_file'] = str(outputs.defect_file)
    if outputs.structure:
        write_mrc(outputs.structure, analysis.structure,
                  label=f"scipion-gain {kind} structure{of}: multiplies raw frames, mean 1")
    applied = getattr(analysis, 'applied_reference', None)
    if outputs.applied_reference and applied is not None:
        write_mrc(outputs.applied_reference, applied,
                  label=f"scipion-gain reference applied at acquisition{of}, recovered: "
                        f"multiplies raw frames, mean 1")
        report['input']['lattice']['applied_reference'] = str(outputs.applied_reference)
    if outputs.corrected_sum is not None and analysis.corrected_sum is not None:
        write_mrc(outputs.corrected_sum, analysis.corrected_sum,
                  label=f"scipion-gain sum of the corrected frames{of}")
    if extra:
        report.update(extra)
    if outputs.json:
        write_json(outputs.json, report)
    return report
