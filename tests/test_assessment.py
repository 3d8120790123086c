"""The noise-aware assessment: structure found where a reference is wrong, not where it is right."""
import json

import numpy as np
import pytest

from scipion_gain.cli import main
from scipion_gain.estimator import GainAccumulator, estimate_gain
from scipion_gain.estimator.assessment import assess, split_half_maps, structure_model
from scipion_gain.simulate import simulate_gain, simulate_movie

from helpers import r_squared

SHAPE = (512, 512)


@pytest.fixture(scope='module')
def session(tmp_path_factory):
    folder = tmp_path_factory.mktemp('session')
    gain = simulate_gain(SHAPE, rng=21, sectors=4, sector_spread=0.06, column_spread=0.03,
                         row_spread=0.02, flat_field=0.05, pixel_scatter=0.02)
    movies = [simulate_movie(str(folder / f'm{k}.mrc'), SHAPE, 30, gain.gain, dose=1.5,
                             rng=300 + k) for k in range(3)]
    return gain, movies


def _found(report):
    return {c['name'] for c in report['components'] if c['found']}


def test_correct_reference_is_not_flagged_but_a_column_pattern_is(session):
    gain, movies = session
    truth = gain.correction
    right = estimate_gain(movies[:1], gain_reference=truth)
    verdict = assess(right.gain, split_half_maps(right), right.defects)
    assert verdict['flagged'] is False, verdict
    assert verdict['noise']['source'] == 'split halves'
    pattern = (1 + 0.03 * np.random.default_rng(1).standard_normal(SHAPE[1]))[None, :]
    wrong_ref = (truth * pattern).astype(np.float32)
    wrong = estimate_gain(movies[:1], gain_reference=wrong_ref)
    verdict = assess(wrong.gain, split_half_maps(wrong), wrong.defects)
    assert 'columns' in _found(verdict)
    columns = next(c for c in verdict['components'] if c['name'] == 'columns')
    assert 0.008 < columns['size'] < 0.03  # one pass recovers about half of the 3 %
    # the structure model is close to the true residual; the raw map holds noise too
    true_residual = truth / wrong_ref
    model = structure_model(wrong.gain, wrong.defects, verdict)
    assert r_squared(model, true_residual) >= 0.8
    assert r_squared(model, true_residual) > r_squared(wrong.gain, true_residual)
    # where nothing was found the model is flat
    assert np.all(structure_model(right.gain, right.defects) == 1.0)


def test_sector_step_and_broken_row_are_found_where_they_are(session):
    gain, movies = session
    truth = gain.correction
    step = truth * np.where(np.arange(SHAPE[1]) < 200, 1.0, 1.05)[None, :]
    result = estimate_gain(movies[:1], gain_reference=step.astype(np.float32))
    sectors = next(c for c in assess(result.gain, split_half_maps(result))['components']
                   if c['name'] == 'sectors')
    assert sectors['found'] and abs(sectors['position'] - 200) <= 3
    broken = truth.copy()
    broken[100, :] *= 0.7
    result = estimate_gain(movies[:1], gain_reference=broken)
    assert 'rows' in _found(assess(result.gain, split_half_maps(result)))


def test_accumulated_split_halves_shrink_the_noise(session):
    gain, movies = session
    single = estimate_gain(movies[:1], gain_reference=gain.correction)
    accumulator = GainAccumulator()
    for movie in movies:
        accumulator.add(estimate_gain([movie], gain_reference=gain.correction))
    one = assess(single.gain, split_half_maps(single))['noise']['pixel_std']
    three = assess(accumulator.gain, split_half_maps(accumulator))['noise']['pixel_std']
    assert three < 0.75 * one


def test_json_carries_the_assessment(tmp_path, session):
    gain, movies = session
    stats = tmp_path / 's.json'
    assert main(['estimate', movies[0], '-o', str(tmp_path / 'g.mrc'), '--json', str(stats),
                 '--structure', str(tmp_path / 'model.mrc'), '-q']) == 0
    report = json.loads(stats.read_text())
    assessment = report['assessment']
    assert isinstance(assessment['flagged'], bool)
    assert {c['name'] for c in assessment['components']} >= {'columns', 'rows', 'sectors', 'pixels'}
    assert all({'size', 'z', 'found'} <= set(c) for c in assessment['components'])
    assert assessment['noise']['pixel_std'] > 0
    # a raw gain with 6 % sectors: structure is found, as it should be
    assert assessment['flagged'] is True
    assert (tmp_path / 'model.mrc').exists()
