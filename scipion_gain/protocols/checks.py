"""How the movie gain protocol shows an analysis: output item attributes.

The analysis itself (map, paper's flags, defects, assessment, verdict) is
``scipion_gain.estimator.analysis``, the same for the command line; this
module only turns its JSON report into what Scipion and people read: output
item attributes (the text lines are run_folder.logs). No pyworkflow import
except the attribute types (the orientation check of the movies' gain is
run_folder.reference.orient_reference).
"""
import pyworkflow.object as pwobj


#: per-item attributes from the assessment (Boolean flag, Float sizes and noise)
ASSESSMENT_ATTRIBUTES = ('_structureFlagged', '_structureColumns', '_structureRows',
                         '_structureSectors', '_structureRowSteps', '_noiseStd')
#: per-item attributes from the defect counts
DEFECT_ATTRIBUTES = {'_defectDeadPixels': 'dead_pixels', '_defectHotPixels': 'hot_pixels',
                     '_defectRows': ('dead_rows', 'broken_rows'),
                     '_defectColumns': ('dead_columns', 'broken_columns')}


def verdict_attributes(verdict):
    """``_verdictFlagged``, ``_verdictReasons``, ``_dqeLoss`` (in %) of an output item
    (``verdict``: an estimator.verdict.Verdict)."""
    loss = verdict.dqe_loss
    return {'_verdictFlagged': pwobj.Boolean(bool(verdict.flagged)),
            '_verdictReasons': pwobj.String(verdict.reasons_text or 'ok'),
            '_dqeLoss': pwobj.Float(round(100.0 * loss, 4) if loss is not None else 0.0)}


def defect_attributes(defects):
    """Integer attribute values (see DEFECT_ATTRIBUTES) from a stats 'defects' dict."""
    counts = defects.get('counts', {})
    values = {'_defectPixels': int(defects.get('pixels', 0))}
    for attribute, keys in DEFECT_ATTRIBUTES.items():
        keys = keys if isinstance(keys, tuple) else (keys,)
        values[attribute] = int(sum(counts.get(k, 0) for k in keys))
    return values


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
