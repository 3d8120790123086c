"""GainAccumulator persistence: save (atomic) and load give back the same running estimate."""
import os

import numpy as np
import pytest

from scipion_gain.estimator import EstimatorSettings, GainAccumulator, estimate_gain
from scipion_gain.io import InputError
from scipion_gain.io.results import write_sums
from scipion_gain.simulate import simulate_gain, simulate_movie

SHAPE = (64, 64)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp('acc')
    gain = simulate_gain(SHAPE, rng=3)
    out = []
    for index in range(3):
        path = folder / ('movie_%d.mrc' % index)
        simulate_movie(str(path), SHAPE, 6, gain.gain, dose=2.0, rng=10 + index)
        out.append(estimate_gain([str(path)], EstimatorSettings(sigma=1.0)))
    return out


def test_save_and_load_round_trip(results, tmp_path):
    acc = GainAccumulator()
    acc.add(results[0], member=1)
    acc.add(results[1], member=3)
    path = tmp_path / 'sums.npz'
    write_sums(path, acc)
    assert sorted(os.listdir(tmp_path)) == ['sums.npz']  # no temp file left beside it
    back = GainAccumulator.load(path)
    assert back.count == 2 and back.frames == acc.frames == 12
    assert back.members == [1, 3] and back.method == 'sme'
    for name in ('numerator', 'denominator', 'alternate_sum'):
        np.testing.assert_array_equal(getattr(back, name), getattr(acc, name))
    np.testing.assert_array_equal(back.gain, acc.gain)
    np.testing.assert_array_equal(back.defects, acc.defects)
    np.testing.assert_array_equal(back.frame_sum, acc.frame_sum)  # what the verdict judges


def test_a_loaded_accumulator_goes_on_as_if_never_saved(results, tmp_path):
    straight = GainAccumulator()
    for result in results:
        straight.add(result)
    saved = GainAccumulator()
    saved.add(results[0])
    write_sums(tmp_path / 'sums.npz', saved)
    resumed = GainAccumulator.load(tmp_path / 'sums.npz')
    resumed.add(results[1])
    resumed.add(results[2])
    write_sums(tmp_path / 'sums.npz', resumed)  # overwrites in place
    again = GainAccumulator.load(tmp_path / 'sums.npz')
    assert again.count == straight.count == 3 and again.members == []
    np.testing.assert_allclose(again.gain, straight.gain, rtol=1e-6)


def test_string_members_and_bad_files(results, tmp_path):
    acc = GainAccumulator()
    acc.add(results[0], member='movie_a')
    write_sums(tmp_path / 'a.npz', acc)
    assert GainAccumulator.load(tmp_path / 'a.npz').members == ['movie_a']
    with pytest.raises(InputError, match='cannot read accumulated sums'):
        GainAccumulator.load(tmp_path / 'missing.npz')
    (tmp_path / 'broken.npz').write_bytes(b'not a zip')
    with pytest.raises(InputError, match='broken.npz'):
        GainAccumulator.load(tmp_path / 'broken.npz')
    with pytest.raises(ValueError, match='nothing accumulated'):
        GainAccumulator().npz_bytes()


def test_pixels_a_movie_could_not_use_are_marked_through_save_load_and_merge(tmp_path):
    """A NaN patch in one movie leaves the session's sums without that movie there: the
    accumulator marks those pixels (``incomplete``), so that its structure tests leave them
    out instead of seeing a patch darker than its neighbours."""
    gain = simulate_gain(SHAPE, rng=4)
    clean, spoiled = tmp_path / 'clean.mrc', tmp_path / 'spoiled.mrc'
    simulate_movie(str(clean), SHAPE, 6, gain.gain, dose=2.0, rng=20)
    simulate_movie(str(spoiled), SHAPE, 6, gain.gain, dose=2.0, rng=21,
                   spoil={'nan_patches': 1, 'patch_size': 5})
    first = estimate_gain([str(clean)], EstimatorSettings(sigma=1.0))
    second = estimate_gain([str(spoiled)], EstimatorSettings(sigma=1.0))
    assert first.unusable is None or not first.unusable.any()
    assert second.unusable.sum() == 25
    acc = GainAccumulator()
    acc.add(first, member=1)
    assert acc.incomplete is None               # nothing missing yet
    acc.add(second, member=2)
    np.testing.assert_array_equal(acc.incomplete, second.unusable)
    write_sums(tmp_path / 'sums.npz', acc)
    np.testing.assert_array_equal(GainAccumulator.load(tmp_path / 'sums.npz').incomplete,
                                  second.unusable)
    one = GainAccumulator()
    one.add(second, member=2)
    merged = GainAccumulator()
    merged.add(first, member=1)
    merged.merge(one)
    np.testing.assert_array_equal(merged.incomplete, second.unusable)


@pytest.mark.parametrize('method', ['sme', 'robust'])
def test_a_shared_first_movie_saves_the_sums_of_one_added_to_zeros(tmp_path, method):
    # the per-movie job holds the analysis's own sums (share=True) instead of copying
    # them into zeros; the robust method's first movie weighs 1 and keeps its profile
    gain = simulate_gain((96, 128), rng=4)
    path = tmp_path / 'movie.mrc'
    simulate_movie(str(path), (96, 128), 6, gain.gain, dose=3.0, rng=7)
    result = estimate_gain([str(path)], EstimatorSettings(method=method))
    shared, copied = GainAccumulator(), GainAccumulator()
    shared.add(result, member=5, share=True)
    copied.add(result, member=5)
    assert shared.numerator is result.numerator   # held, not copied
    if method == 'robust':                          # its frame sum beside them too
        assert shared.frame_total is result.frame_sum
    write_sums(tmp_path / 'shared.npz', shared)
    write_sums(tmp_path / 'copied.npz', copied)
    one, two = (np.load(tmp_path / name) for name in ('shared.npz', 'copied.npz'))
    assert sorted(one.files) == sorted(two.files)
    for name in one.files:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)
    assert shared.weights == copied.weights == ([1.0] if method == 'robust' else [])
