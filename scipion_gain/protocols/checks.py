"""The checks the movie gain protocol runs beside the paper's flags (issues 6 and 7).

Plain functions of an estimator result, no pyworkflow import:

* defects (estimator.defects): from the raw count sums of the movie when the
  method keeps them (sme, mean), else from the estimate; written as a label
  image (extra/defects_%06d.mrc, the name the report reads) and as a
  MotionCor2 ``-DefectFile`` (extra/defects_%06d.txt, ``x y w h`` per line);
* the noise-aware assessment (estimator.assessment): the one ``result.report()``
  made from the split halves, or one from the map alone for the baselines;
  its structure model is written as extra/movie_%06d_structure.mrc;
* the orientation of the movies' gain reference (estimator.orientation),
  against the inverse per-pixel mean of the first movies (the estimate that
  tells the flips apart best, as in ``scipion-gain orient``).
"""
import numpy as np

from ..estimator import EstimatorSettings, estimate_gain
from ..estimator.assessment import assess, split_half_maps, structure_model
from ..estimator.defects import find_defects
from ..estimator.orientation import apply_orientation, find_orientation
from ..io import write_mrc

#: per-item attributes from the assessment (Boolean flag, Float sizes and noise)
ASSESSMENT_ATTRIBUTES = ('_structureFlagged', '_structureColumns', '_structureRows',
                         '_structureSectors', '_structureRowSteps', '_noiseStd')
#: per-item attributes from the defect counts
DEFECT_ATTRIBUTES = {'_defectDeadPixels': 'dead_pixels', '_defectHotPixels': 'hot_pixels',
                     '_defectRows': ('dead_rows', 'broken_rows'),
                     '_defectColumns': ('dead_columns', 'broken_columns')}


def good_mask(defects):
    """The mask of usable pixels for the statistics, or None when all (or none) are."""
    return ~defects if defects.any() and not defects.all() else None


# ------------------------------------------------------------------ defects
def raw_count_sums(numerator, method, reference=None):
    """Per-pixel sums of the raw frames, or None when the method keeps no such sums.

    For ``sme`` and ``mean`` the numerator is the sum of the frames as the
    estimator saw them: multiplied by the gain reference in residual mode,
    which is divided out again here (the defect test is a Poisson test on raw
    counts). ``std`` keeps standard deviations, not sums.
    """
    if numerator is None or method not in ('sme', 'mean'):
        return None
    counts = np.asarray(numerator, dtype=np.float64)
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float64)
        safe = np.isfinite(reference) & (reference > 0)
        counts = np.where(safe, counts / np.where(safe, reference, 1.0), 0.0)
    return counts


def write_defects(numerator, no_signal, gain, method, reference, mrc_path, txt_path):
    """Find the defects, write the label image and the -DefectFile; return a JSON dict."""
    counts = raw_count_sums(numerator, method, reference)
    found = find_defects(gain=None if counts is not None else gain, counts=counts,
                         no_signal=no_signal)
    write_mrc(mrc_path, found.labels, label='scipion-gain defects: labels 0 good, 1 dead, 2 hot, '
                                            '3/4 dead/broken row, 5/6 dead/broken column')
    found.write_defect_file(txt_path)
    info = found.to_dict()
    info.update({'pixels': int(found.mask.sum()), 'map': str(mrc_path),
                 'defect_file': str(txt_path)})
    return info


def defect_attributes(defects):
    """Integer attribute values (see DEFECT_ATTRIBUTES) from a stats 'defects' dict."""
    counts = defects.get('counts', {})
    values = {'_defectPixels': int(defects.get('pixels', 0))}
    for attribute, keys in DEFECT_ATTRIBUTES.items():
        keys = keys if isinstance(keys, tuple) else (keys,)
        values[attribute] = int(sum(counts.get(k, 0) for k in keys))
    return values


# ------------------------------------------------------------------ assessment
def assessment_of(result, report):
    """The report's assessment (split halves), or one from the map alone (baselines)."""
    if 'assessment' in report:
        return report['assessment']
    return assess(result.gain, None, result.defects)


def accumulated_assessment(accumulator):
    """Assessment of a running estimate, its noise from the accumulated split halves."""
    gain, defects = accumulator.correction()
    return assess(gain, split_half_maps(accumulator), defects)


def write_structure(gain, defects, assessment, path, what):
    write_mrc(path, structure_model(gain, defects, assessment),
              label='scipion-gain structure model of %s; multiplies raw frames' % what)


def _component(assessment, name):
    for component in assessment.get('components', []):
        if component['name'] == name:
            return component
    return {'size': 0.0, 'found': False}


def assessment_attributes(assessment):
    """Attribute values (see ASSESSMENT_ATTRIBUTES): flagged, component sizes, noise.

    ``None`` (statistics written before the assessment existed) gives False and zeros:
    every item of a set must carry the same attributes.
    """
    if assessment is None:
        return {name: (False if name == '_structureFlagged' else 0.0)
                for name in ASSESSMENT_ATTRIBUTES}
    return {'_structureFlagged': bool(assessment['flagged']),
            '_structureColumns': float(_component(assessment, 'columns')['size']),
            '_structureRows': float(_component(assessment, 'rows')['size']),
            '_structureSectors': float(_component(assessment, 'sectors')['size']),
            '_structureRowSteps': float(_component(assessment, 'row_steps')['size']),
            '_noiseStd': float(assessment['noise']['pixel_std'])}


def found_components(assessment):
    return [c['name'] for c in assessment['components'] if c['found']]


def summary_column(assessment):
    """The column appended to a summary.txt line: structure=ok|flagged[...] noise=..."""
    if assessment is None:
        return ''
    state = ('flagged[%s]' % ','.join(found_components(assessment))
             if assessment['flagged'] else 'ok')
    return ' structure=%s noise=%f' % (state, assessment['noise']['pixel_std'])


def structure_message(label, assessment):
    parts = []
    for component in assessment['components']:
        if component['found']:
            size = ('%.2f %%' % (100 * component['size']) if component['name'] != 'pixels'
                    else '%d pixels' % component.get('count', 0))
            parts.append('%s %s (z %.0f)' % (component['name'], size, component['z']))
    return '%s: structure flagged by the noise-aware assessment: %s' % (label, ', '.join(parts))


# ------------------------------------------------------------------ orientation
def orient_reference(movie_paths, reference, frame_step=1, device='cpu'):
    """(OrientationResult, oriented map or None, frames used).

    The movies' gain is estimated without the reference (inverse per-pixel
    mean) and the 8 rotations/flips of ``reference``, direct and inverted, are
    compared with it. The oriented map (a correction, mean 1) is returned when
    the match is confident and changes something: not the identity, or inverted.
    """
    result = estimate_gain(list(movie_paths), EstimatorSettings(method='mean',
                                                               frame_step=frame_step),
                           device=device)
    found = find_orientation(result.gain, reference, valid=~result.defects)
    oriented = None
    if found.confident and (not found.transform.is_identity or found.inverted):
        oriented = apply_orientation(np.asarray(reference), found)
    return found, oriented, result.frames
