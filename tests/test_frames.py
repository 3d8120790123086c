"""Frame conditioning (estimator/stages/cleaning.py): NaN, inf and all-zero frames never decide a map.

One NaN or inf patch must be masked and reported, never turn
the map into "all 1"; a movie that is mostly unusable or all zero cannot be
judged (InputError: one line, exit 2 in the command line); one bad movie does
not poison a running estimate.
"""
import mrcfile
import numpy as np
import pytest

from scipion_gain.estimator import EstimatorSettings, GainAccumulator, estimate_gain
from scipion_gain.estimator.analysis import analyse
from scipion_gain.io import InputError
from scipion_gain.simulate import simulate_frames, simulate_gain

SHAPE = (128, 128)


@pytest.fixture(scope='module')
def gain():
    return simulate_gain(SHAPE, rng=3, sector_spread=0.05, column_spread=0.03)


def frames_of(gain, n=10, seed=1, dose=3.0):
    return np.stack(list(simulate_frames(SHAPE, n, gain.gain, dose=dose, rng=seed))).astype(
        np.float32)


def write(path, frames):
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(frames, dtype=np.float32))
    return str(path)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_a_non_finite_patch_is_masked_and_reported_not_all_ones(tmp_path, gain, bad):
    frames = frames_of(gain)
    clean = analyse([write(tmp_path / 'clean.mrc', frames)])
    frames[3, 20:30, 40:50] = bad
    dirty = analyse([write(tmp_path / 'dirty.mrc', frames)])
    report = dirty.to_json()
    patch = np.zeros(SHAPE, bool)
    patch[20:30, 40:50] = True
    assert report['input']['bad_values']['unusable_pixels'] == 100
    assert report['input']['bad_values']['frames_with_nan_or_inf'] == ['3']
    assert report['defects']['counts']['unusable_pixels'] == 100
    assert any('100 pixel(s) hold NaN or inf in 1 frame(s)' in note for note in report['notes'])
    assert np.isfinite(dirty.gain).all() and (dirty.gain[patch] == 1).all()
    # the rest of the map is the clean run's (only the masked pixels' lines see a change)
    away = np.ones(SHAPE, bool)
    away[15:35, :] = False
    away[:, 35:55] = False
    assert np.abs(dirty.gain[away] - clean.gain[away]).max() < 0.02
    assert dirty.gain[~patch].std() == pytest.approx(clean.gain[~patch].std(), rel=0.05)


def test_mostly_nan_frames_are_left_out_and_all_zero_frames_noted(tmp_path, gain):
    frames = frames_of(gain)
    frames[2] = np.nan
    frames[5] = 0
    report = analyse([write(tmp_path / 'm.mrc', frames)]).to_json()
    assert report['frames'] == 8
    assert report['input']['bad_values']['frames_left_out'] == {'2': '100 % NaN/inf',
                                                                '5': 'all zero'}
    assert any('1 all-zero frame(s) left out (5)' in note for note in report['notes'])
    assert report['input']['bad_values']['unusable_pixels'] == 0


@pytest.mark.parametrize('fill', [np.nan, 0.0])
def test_a_movie_without_usable_frames_cannot_be_judged(tmp_path, gain, fill):
    frames = np.full((4,) + SHAPE, fill, np.float32)
    path = write(tmp_path / 'm.mrc', frames)
    with pytest.raises(InputError, match='no usable frame'):
        analyse([path])


def test_a_movie_with_mostly_unusable_pixels_cannot_be_judged(tmp_path, gain):
    frames = frames_of(gain, n=4)
    frames[1, :, :48] = np.inf        # 38 % of the pixels in one frame,
    frames[2, :, 48:96] = np.nan      # another 38 % in another: 75 % unusable
    with pytest.raises(InputError, match='75 % of the pixels are NaN or inf in some frame'):
        analyse([write(tmp_path / 'm.mrc', frames)])


def test_a_movie_with_a_nan_patch_adds_nothing_there_to_a_running_estimate(tmp_path, gain):
    good = [write(tmp_path / f'g{k}.mrc', frames_of(gain, seed=10 + k)) for k in range(2)]
    dirty = frames_of(gain, seed=20)
    dirty[0, 50:60, 50:60] = np.nan
    bad = write(tmp_path / 'bad.mrc', dirty)
    settings = EstimatorSettings()
    only_good, with_bad = GainAccumulator(), GainAccumulator()
    for path in good:
        only_good.add(estimate_gain([path], settings))
        with_bad.add(estimate_gain([path], settings))
    with_bad.add(estimate_gain([bad], settings))
    patch = (slice(50, 60), slice(50, 60))
    np.testing.assert_allclose(with_bad.numerator[patch], only_good.numerator[patch])
    np.testing.assert_allclose(with_bad.denominator[patch], only_good.denominator[patch])
    assert not with_bad.defects.any()
