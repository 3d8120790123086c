"""The verdict's thresholds, each tested just below and just above.

* A step between readout sectors is found at z > 5 at a boundary the
  reference shows (a handful of places to look) and at z > 7 anywhere else
  (``AssessmentThresholds.boundary_step_z`` and ``step_z``).
* Found structure flags a reference when it costs at least 0.1 % of the DQE
  at the movie's dose (``VerdictSettings.max_dqe_loss``).

The step cases are corrected sums of 256 x 256 pixels at 200 e/px with a
fixed noise field (Gaussian, of the shot noise's size): the noise is the same
for every step height, so the step's significance grows linearly with its
height (about 0.58 standard errors per 0.001), and heights 0.0075, 0.009,
0.0115 and 0.0125 give z of about 4.8, 5.4, 6.8 and 7.4. Each test first
checks that its input's z lies on the side of the threshold it claims.
"""
import numpy as np
import pytest

from scipion_gain.estimator.analysis import AnalysisSettings, analyse
from scipion_gain.estimator.assessment import AssessmentThresholds, assess
from scipion_gain.estimator.verdict import VerdictSettings, judge
from scipion_gain.simulate import simulate_gain, simulate_movie, wrong_reference

SHAPE = (256, 256)
ELECTRONS = 200.0
BOUNDARY = 128
NOISE = np.random.default_rng(1).standard_normal(SHAPE)


def stepped_sum(height):
    """A corrected sum with a step of ``height`` (log) between columns 127 and 128."""
    level = ELECTRONS * np.exp(np.where(np.arange(SHAPE[1]) >= BOUNDARY, height, 0.0))[None, :]
    return level + np.sqrt(level) * NOISE


def sectors(height, boundaries):
    assessment, _ = assess(stepped_sum(height), boundaries=boundaries)
    return next(c for c in assessment['components'] if c['name'] == 'sectors'), assessment


def test_the_thresholds_tested_here_are_the_defaults():
    defaults = AssessmentThresholds()
    assert (defaults.boundary_step_z, defaults.step_z) == (5.0, 7.0)
    assert VerdictSettings().max_dqe_loss == 0.001


def test_a_step_at_a_readout_boundary_needs_z_above_5():
    below, _ = sectors(0.0075, {0: [BOUNDARY]})
    assert 4.5 < below['z'] < 5.0 and not below['found']
    above, assessment = sectors(0.009, {0: [BOUNDARY]})
    assert above['found'] and assessment['flagged']
    step, = above['steps']
    assert 5.0 < step['z'] < 5.7 and step['at_boundary'] and abs(step['position'] - BOUNDARY) <= 1


def test_the_same_step_away_from_a_readout_boundary_needs_z_above_7():
    between, assessment = sectors(0.009, None)      # found at a boundary (above)
    assert 5.0 < between['z'] < 7.0 and not between['found'] and not assessment['flagged']
    below, _ = sectors(0.0115, None)
    assert 6.5 < below['z'] < 7.0 and not below['found']
    above, assessment = sectors(0.0125, None)
    step, = above['steps']
    assert 7.0 < step['z'] < 7.7 and not step['at_boundary'] and above['found']
    assert assessment['flagged']


def test_found_structure_flags_from_a_dqe_loss_of_0_1_percent():
    step, assessment = sectors(0.0125, None)
    variance = step['variance']
    assert variance > 0
    # loss = N v / (1 + N v) equals 0.001 at N v = 0.001 / 0.999
    at_threshold = 0.001 / 0.999 / variance
    below = judge(assessment, 0.99 * at_threshold)
    assert below['dqe_loss'] == pytest.approx(0.00099, rel=0.01) and not below['flagged']
    assert below['reasons'] == [] and 'costs only' in below['sentence']
    above = judge(assessment, 1.01 * at_threshold)
    assert above['dqe_loss'] == pytest.approx(0.00101, rel=0.01) and above['flagged']
    assert above['reasons'][0].startswith('step between readout sectors')
    # without a dose the cost is unknown: found structure flags
    unknown = judge(assessment, None)
    assert unknown['dqe_loss'] is None and unknown['flagged']


@pytest.fixture(scope='module')
def wrong(tmp_path_factory):
    """A movie at 2 e/px/frame, 10 frames, and a reference off by a 2 % column pattern."""
    detector = simulate_gain(SHAPE, rng=3, column_spread=0.02)
    path = tmp_path_factory.mktemp('dqe') / 'movie.mrc'
    simulate_movie(str(path), SHAPE, 10, detector.gain, dose=2.0, rng=5, specimen=False)
    reference = wrong_reference(detector.correction, 'columns', rng=7, size=0.02).reference
    return str(path), reference


def test_a_whole_analysis_flags_on_either_side_of_its_dqe_threshold(wrong):
    path, reference = wrong
    verdict = analyse([path], reference=reference).to_json()['verdict']
    loss = verdict['dqe_loss']
    assert verdict['flagged'] and loss > 0.001         # the default threshold
    for factor, flagged in ((0.99, True), (1.01, False)):
        settings = AnalysisSettings(verdict=VerdictSettings(max_dqe_loss=factor * loss))
        again = analyse([path], reference=reference, settings=settings).to_json()['verdict']
        assert again['dqe_loss'] == pytest.approx(loss, rel=1e-6)
        assert again['flagged'] is flagged, factor
