"""Gain recovery, residual flatness, baselines, statistics and streaming of the estimator."""
import json

import mrcfile
import numpy as np
import pytest

from scipion_gain.cli import main
from scipion_gain.estimator import (EstimatorSettings, GainAccumulator, Thresholds, estimate_gain,
                                    map_statistics)
from scipion_gain.simulate import simulate_gain, simulate_movie

from helpers import r_squared

SHAPE = (512, 512)


@pytest.fixture(scope='module')
def structured_gain():
    # readout sectors, column and row factors (about 6 % std): the structure SME is built to see
    return simulate_gain(SHAPE, rng=11, sectors=4, sector_spread=0.06, column_spread=0.03,
                         row_spread=0.02, flat_field=0.0)


def _specimen_movie(path, gain, mode, dose, rng, **options):
    # particles and a mild ice gradient, drifting: a realistic nuisance for SME
    return simulate_movie(str(path), SHAPE, 40, gain, dose=dose, mode=mode, rng=rng, **options)


@pytest.mark.parametrize('mode, dose, floor', [('counting', 1.0, 0.6), ('integrating', 10.0, 0.9)])
def test_command_line_recovers_a_structured_gain(tmp_path, structured_gain, mode, dose, floor):
    movie = _specimen_movie(tmp_path / f'{mode}.mrc', structured_gain.gain, mode, dose, rng=5)
    out = tmp_path / 'gain.mrc'
    assert main(['estimate', str(movie), '-o', str(out), '-q']) == 0
    estimate = mrcfile.read(str(out))
    assert estimate.dtype == np.float32
    assert r_squared(estimate, structured_gain.correction) >= floor


def test_estimate_multiplies_raw_frames_in_the_right_direction(tmp_path, structured_gain):
    # the estimate is a correction: high where the detector is weak
    movie = _specimen_movie(tmp_path / 'm.mrc', structured_gain.gain, 'integrating', 10.0, rng=6)
    result = estimate_gain([movie])
    slope = np.polyfit(np.log(structured_gain.correction.ravel()), np.log(result.gain.ravel()), 1)[0]
    assert slope > 0.3
    assert result.gain.mean() == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(result.gain).all()


def test_iterations_move_the_estimate_towards_the_full_gain(tmp_path, structured_gain):
    # one pass of Eq. 6 corrects a row-times-column pattern about halfway; Eq. 7 iterates
    movie = simulate_movie(str(tmp_path / 'm.mrc'), SHAPE, 20, structured_gain.gain, dose=30.0,
                           mode='integrating', rng=7, specimen=False)
    log_truth = np.log(structured_gain.correction.ravel())

    def slope(result):
        return np.polyfit(log_truth, np.log(result.gain.ravel()), 1)[0]

    one = estimate_gain([movie], EstimatorSettings(iterations=1))
    three = estimate_gain([movie], EstimatorSettings(iterations=3, tolerance=0))
    assert 0.35 < slope(one) < 0.65
    assert slope(three) > slope(one) + 0.15
    assert three.iterations == 3


def test_residual_of_a_correctly_corrected_counting_movie_is_flat(tmp_path, structured_gain):
    movie = simulate_movie(str(tmp_path / 'm.mrc'), SHAPE, 30, structured_gain.gain, dose=1.5,
                           mode='counting', rng=8)
    right = estimate_gain([movie], gain_reference=structured_gain.correction)
    none = estimate_gain([movie], gain_reference=np.ones(SHAPE, np.float32))
    assert right.residual and right.reference is not None
    assert right.gain.std() < 0.02
    assert abs(np.corrcoef(right.gain.ravel(), structured_gain.correction.ravel())[0, 1]) < 0.2
    # with a flat (wrong) reference the structure shows up in the residual
    assert none.gain.std() > 1.5 * right.gain.std()
    assert r_squared(none.gain, structured_gain.correction) > 0.5


def test_baselines_mean_and_std_are_inverse_pixel_mean_and_std(tmp_path):
    frames = np.random.default_rng(9).poisson(5.0, (12, 16, 16)).astype(np.uint16)
    path = tmp_path / 'm.mrc'
    with mrcfile.new(str(path)) as mrc:
        mrc.set_data(frames)
    mean = estimate_gain([path], EstimatorSettings(method='mean')).gain
    expected = 1 / frames.mean(axis=0)
    np.testing.assert_allclose(mean, expected / expected.mean(), rtol=1e-5)
    std = estimate_gain([path], EstimatorSettings(method='std')).gain
    expected = 1 / frames.std(axis=0)
    np.testing.assert_allclose(std, expected / expected.mean(), rtol=1e-4)


def test_pixels_without_signal_are_one_and_reported(tmp_path):
    gain = simulate_gain((128, 128), rng=3, dead_pixels=20, dead_column=True)
    movie = simulate_movie(str(tmp_path / 'm.mrc'), (128, 128), 10, gain.gain, dose=2.0, rng=4)
    result = estimate_gain([movie])
    assert np.isfinite(result.gain).all()
    assert result.defects[gain.dead].all()
    assert (result.gain[result.defects] == 1.0).all()
    assert result.gain[~result.defects].mean() == pytest.approx(1.0, abs=1e-5)
    from scipion_gain.estimator.analysis import analyse
    report = analyse([movie]).to_json()
    assert report['defects']['no_signal'] == int(result.defects.sum())
    assert report['defects']['counts']['dead_pixels'] + report['defects']['counts']['dead_columns'] > 0


def test_frame_step_and_several_movies(tmp_path, structured_gain):
    small = simulate_gain((64, 64), rng=1)
    a = simulate_movie(str(tmp_path / 'a.mrc'), (64, 64), 9, small.gain, rng=1)
    b = simulate_movie(str(tmp_path / 'b.mrc'), (64, 64), 5, small.gain, rng=2)
    assert estimate_gain([a, b]).frames == 14
    assert estimate_gain([a, b], EstimatorSettings(frame_step=4)).frames == 3 + 2


def test_frames_per_movie_spreads_a_count_over_each_movie(tmp_path):
    # a count, not a step: each movie gets every (n // N)-th frame, at least N of them
    small = simulate_gain((64, 64), rng=1)
    a = simulate_movie(str(tmp_path / 'a.mrc'), (64, 64), 40, small.gain, rng=1)
    b = simulate_movie(str(tmp_path / 'b.mrc'), (64, 64), 7, small.gain, rng=2)
    assert estimate_gain([a], EstimatorSettings(frames_per_movie=20)).frames == 20   # step 2
    assert estimate_gain([a], EstimatorSettings(frames_per_movie=5)).frames == 5     # step 8
    assert estimate_gain([a], EstimatorSettings(frames_per_movie=15)).frames == 20   # step 2: >= 15
    assert estimate_gain([b], EstimatorSettings(frames_per_movie=20)).frames == 7    # all it has
    # per movie, and frame_step is not used with a count
    both = estimate_gain([a, b], EstimatorSettings(frames_per_movie=5, frame_step=3))
    assert both.frames == 5 + 7
    # the frames used are those of the step: the same sums as frame_step 8
    by_step = estimate_gain([a], EstimatorSettings(frame_step=8, sigma=1.0))
    by_count = estimate_gain([a], EstimatorSettings(frames_per_movie=5, sigma=1.0))
    assert np.array_equal(by_step.numerator, by_count.numerator)


def test_accumulator_sums_movies_like_one_estimate_of_all_frames(tmp_path):
    small = simulate_gain((64, 64), rng=1)
    a = simulate_movie(str(tmp_path / 'a.mrc'), (64, 64), 6, small.gain, rng=1)
    b = simulate_movie(str(tmp_path / 'b.mrc'), (64, 64), 6, small.gain, rng=2)
    settings = EstimatorSettings(sigma=1.0)
    accumulator = GainAccumulator()
    accumulator.add(estimate_gain([a], settings))
    accumulator.add(estimate_gain([b], settings))
    together = estimate_gain([a, b], settings)
    np.testing.assert_allclose(accumulator.gain, together.gain, rtol=1e-5)
    assert accumulator.count == 2 and accumulator.frames == 12


def test_statistics_and_the_papers_flags():
    values = np.linspace(0.9, 1.1, 1001).reshape(7, 143)
    report = map_statistics(values)
    stats = report['statistics']
    assert stats['std'] == pytest.approx(np.std(values))
    assert stats['p2.5'] == pytest.approx(np.percentile(values, 2.5))
    assert report['ratios']['p97.5/p2.5'] == pytest.approx(stats['p97.5'] / stats['p2.5'])
    assert report['flags'] == {'std': True, 'percentile_ratio': True, 'max_ratio': False}
    assert report['flagged'] is True
    flat = map_statistics(np.ones((10, 10)))
    assert flat['flagged'] is False
    hot = np.ones((10, 10))
    hot[3, 3] = 10
    assert map_statistics(hot)['flags']['max_ratio'] is True
    relaxed = map_statistics(values, Thresholds(std=0.1, percentile_ratio=1.3, max_ratio=4.5))
    assert relaxed['flagged'] is False
    json.dumps(report)  # JSON-ready


def test_statistics_masks_leave_out_pixels_unless_they_leave_none():
    values = np.ones((10, 10))
    values[0, :] = 5.0                     # a bad row
    good = np.ones(values.shape, bool)
    good[0, :] = False
    assert map_statistics(values, mask=good)['statistics']['max'] == 1.0
    everything = map_statistics(values)['statistics']
    assert map_statistics(values, mask=np.zeros(values.shape, bool))['statistics'] == everything


def test_memory_does_not_grow_with_the_number_of_frames(tmp_path):
    import tracemalloc
    small = simulate_gain((256, 256), rng=1)

    def peak(frames):
        movie = simulate_movie(str(tmp_path / f'm{frames}.mrc'), (256, 256), frames, small.gain,
                               rng=2)
        tracemalloc.start()
        estimate_gain([movie], EstimatorSettings(sigma=1.0))
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak_bytes

    assert peak(24) < 1.25 * peak(4)


def _correction_whole_frame(numerator, denominator):
    # the correction as one quotient of the whole frame (before it was made a block at a time)
    with np.errstate(divide='ignore', invalid='ignore'):
        correction = denominator / numerator
    good = np.isfinite(correction) & (correction > 0)
    correction[~good] = 0.0
    correction /= correction[good].mean()
    correction[~good] = 1.0
    return correction.astype(np.float32), ~good


@pytest.mark.parametrize('shape', [(300, 257), (64, 64), (1000,)])
def test_correction_from_sums_a_block_at_a_time_equals_the_whole_frame_quotient(shape):
    from scipion_gain.estimator import correction_from_sums
    rng = np.random.default_rng(3)
    numerator = rng.poisson(3.0, shape).astype(np.float64)   # 5 % zeros: 0 / 0, x / 0
    denominator = numerator * rng.uniform(0.8, 1.2, shape)
    flat_numerator, flat_denominator = numerator.reshape(-1), denominator.reshape(-1)
    flat_denominator[:7] = [-1.0, np.nan, np.inf, 0.0, -0.0, 1e-300, 2.0]
    flat_numerator[:7] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    correction, bad = correction_from_sums(numerator, denominator)
    expected, expected_bad = _correction_whole_frame(numerator, denominator)
    assert correction.dtype == np.float32 and correction.shape == numerator.shape
    np.testing.assert_array_equal(bad, expected_bad)
    assert bad.reshape(-1)[:7].tolist() == [True, True, True, True, True, False, True]
    assert np.all(correction[bad] == 1.0)
    # the mean from the blocks' sums: equal to float64 rounding, so the float32 map to 1 ulp
    np.testing.assert_array_max_ulp(correction, expected, maxulp=1)
    assert np.count_nonzero(correction != expected) <= 2
    # every pixel good: the mean of the whole frame
    whole, none_bad = correction_from_sums(np.full((130, 7), 2.0), np.full((130, 7), 3.0))
    assert not none_bad.any() and np.all(whole == 1.0)
    # no pixel good: ones, all marked
    ones, all_bad = correction_from_sums(np.zeros((3, 3)), np.zeros((3, 3)))
    assert all_bad.all() and np.all(ones == 1.0)
