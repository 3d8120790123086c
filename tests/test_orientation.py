"""Orientation of a gain reference: all 8 rotations/flips, inverted or not, on simulated movies.

The unit tests use 256 x 256 movies (30 frames at 1.5 e/px/frame); the
1024 x 1024 case runs in benchmarks/orientation.py. The
movies' gain is estimated as `scipion-gain orient` does by default (method
'mean', the inverse per-pixel mean: it keeps the pixel texture that tells the
flips apart); one test checks the SME estimate of counting movies as well.
"""
import numpy as np
import pytest

from scipion_gain.estimator import EstimatorSettings, estimate_gain
from scipion_gain.estimator.orientation import (TRANSFORMS, Transform, apply_orientation,
                                                candidate_transforms, find_orientation)
from scipion_gain.simulate import simulate_gain, simulate_movie

SHAPE = (256, 256)


def stored_as(truth, transform, inverted):
    """The reference as a careless pipeline stores it: transform(stored) == truth."""
    for candidate in TRANSFORMS:
        if np.array_equal(transform.apply(candidate.apply(truth)), truth):
            stored = candidate.apply(truth)
            return (1.0 / stored) if inverted else stored
    raise AssertionError('no inverse transform')


def structured_gain(shape, rng):
    return simulate_gain(shape, rng=rng, sectors=4, sector_spread=0.06, column_spread=0.03,
                         row_spread=0.02, flat_field=0.05, pixel_scatter=0.03, dead_pixels=20,
                         hot_pixels=20)


@pytest.fixture(scope='module', params=[('counting', 1.5), ('integrating', 1.5)])
def movie_estimate(request, tmp_path_factory):
    mode, dose = request.param
    gain = structured_gain(SHAPE, 21)
    path = tmp_path_factory.mktemp(mode) / 'movie.mrc'
    simulate_movie(str(path), SHAPE, 30, gain.gain, dose=dose, mode=mode, rng=3)
    result = estimate_gain([str(path)], EstimatorSettings(method='mean'))
    return gain, result


def test_transforms_are_the_eight_distinct_ones():
    image = np.arange(12.0).reshape(3, 4)
    square = np.arange(16.0).reshape(4, 4)
    outputs = {Transform(r, f).apply(square).tobytes() for r in range(4) for f in range(3)}
    assert len(outputs) == 8 == len({t.apply(square).tobytes() for t in TRANSFORMS})
    # MotionCor2 / RELION: RotGain 1 takes element (y, x) to (x, ydim - 1 - y)
    rotated = Transform(1, 0).apply(image)
    assert rotated.shape == (4, 3)
    for y in range(3):
        for x in range(4):
            assert rotated[x, 3 - 1 - y] == image[y, x]
    np.testing.assert_array_equal(Transform(0, 1).apply(image), image[::-1])
    np.testing.assert_array_equal(Transform(0, 2).apply(image), image[:, ::-1])
    # the flip comes after the rotation
    np.testing.assert_array_equal(Transform(1, 1).apply(image), np.rot90(image, -1)[::-1])
    assert Transform(3, 2).motioncor2 == '-RotGain 3 -FlipGain 2'
    assert Transform(3, 2).relion == '--gain_rot 3 --gain_flip 2'


@pytest.mark.parametrize('transform', TRANSFORMS, ids=lambda t: f'rot{t.rotation}flip{t.flip}')
@pytest.mark.parametrize('inverted', [False, True], ids=['direct', 'inverted'])
def test_finds_every_transform_and_inversion(movie_estimate, transform, inverted):
    gain, result = movie_estimate
    truth = gain.correction
    reference = stored_as(truth, transform, inverted)
    found = find_orientation(result.gain, reference, valid=~result.defects)
    assert found.confident, found.message
    assert (found.transform, found.inverted) == (transform, inverted), found.message
    oriented = apply_orientation(reference, found)
    good = ~(gain.dead | gain.hot)
    np.testing.assert_allclose(oriented[good], truth[good] / truth[good].mean(), rtol=2e-3)
    assert oriented.dtype == np.float32 and np.isfinite(oriented).all()
    assert oriented.mean() == pytest.approx(1, abs=1e-4)


def test_sme_estimate_of_counting_movies_orients_too(tmp_path):
    gain = structured_gain(SHAPE, 21)
    simulate_movie(str(tmp_path / 'm.mrc'), SHAPE, 30, gain.gain, dose=1.5, rng=3)
    result = estimate_gain([str(tmp_path / 'm.mrc')], EstimatorSettings(method='sme'))
    for transform, inverted in ((Transform(0, 0), False), (Transform(1, 1), True)):
        found = find_orientation(result.gain, stored_as(gain.correction, transform, inverted),
                                 valid=~result.defects)
        assert found.confident and (found.transform, found.inverted) == (transform, inverted), \
            found.message


def test_unrelated_reference_is_no_confident_match(movie_estimate):
    gain, result = movie_estimate
    other = structured_gain(SHAPE, 99).correction
    found = find_orientation(result.gain, other, valid=~result.defects)
    assert not found.confident
    assert found.message.startswith('no confident match')
    flat_noise = np.random.default_rng(0).uniform(0.95, 1.05, SHAPE)
    assert not find_orientation(result.gain, flat_noise, valid=~result.defects).confident


def test_result_reports_both_conventions(movie_estimate):
    gain, result = movie_estimate
    found = find_orientation(result.gain, stored_as(gain.correction, Transform(1, 2), False))
    data = found.to_dict()
    assert data['transform']['motioncor2'] == '-RotGain 1 -FlipGain 2'
    assert data['transform']['relion'] == '--gain_rot 1 --gain_flip 2'
    assert data['confident'] and data['significance'] >= data['min_significance']
    assert len(data['candidates']) == 16
    scores = [c['score'] for c in data['candidates']]
    assert scores == sorted(scores, reverse=True)


def test_non_square_frames_try_only_shape_keeping_transforms():
    rng = np.random.default_rng(4)
    estimate = structured_gain((96, 160), 5).correction * rng.normal(1, 0.02, (96, 160))
    same, note = candidate_transforms((96, 160), (96, 160))
    assert len(same) == 4 and all(t.rotation in (0, 2) for t in same) and 'not square' in note
    turned, _ = candidate_transforms((96, 160), (160, 96))
    assert len(turned) == 4 and all(t.rotation in (1, 3) for t in turned)
    reference = np.rot90(estimate, 1)  # stored turned: RotGain 1 brings it back
    found = find_orientation(estimate, reference)
    assert found.transform == Transform(1, 0) and found.confident
    assert any('not square' in n for n in found.notes)
    with pytest.raises(ValueError, match='no rotation or flip'):
        find_orientation(estimate, np.ones((100, 100)))


def test_apply_orientation_repairs_bad_pixels():
    reference = np.array([[1.0, 2.0], [np.nan, 0.0]])
    out = apply_orientation(reference, Transform(0, 0), inverted=True)
    assert np.isfinite(out).all() and out[1, 0] == 1 and out[1, 1] == 1
    assert out[0, 0] / out[0, 1] == pytest.approx(2.0)


# --- the command line -------------------------------------------------------------------------

@pytest.fixture(scope='module')
def orient_files(tmp_path_factory):
    """A TIFF movie (LZW, as a K2/K3 writes it), its MRC twin and the true correction."""
    import mrcfile

    from formats import write_tiff_movie
    folder = tmp_path_factory.mktemp('orient')
    gain = structured_gain(SHAPE, 21)
    simulate_movie(str(folder / 'movie.mrc'), SHAPE, 30, gain.gain, dose=1.5, rng=3)
    with mrcfile.open(str(folder / 'movie.mrc')) as mrc:
        write_tiff_movie(folder / 'movie.tif', mrc.data, compression='lzw')
    return folder, gain


def _write(path, image):
    import mrcfile
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(image, dtype=np.float32))


def test_command_orients_and_writes_a_new_file(orient_files, tmp_path, capsys):
    import json

    from formats import write_gain_tiff
    from scipion_gain.cli import main
    from scipion_gain.io import read_image
    folder, gain = orient_files
    truth = gain.correction
    transform = Transform(1, 1)
    write_gain_tiff(tmp_path / 'ref.gain', stored_as(truth, transform, inverted=True))
    before = (tmp_path / 'ref.gain').read_bytes()
    status = main(['orient', str(folder / 'movie.tif'), '--gain', str(tmp_path / 'ref.gain'),
                   '-o', str(tmp_path / 'oriented.mrc'), '--json', str(tmp_path / 'r.json'), '-q'])
    out = capsys.readouterr().out
    assert status == 0
    assert 'MotionCor2: -RotGain 1 -FlipGain 1' in out and 'RELION: --gain_rot 1 --gain_flip 1' in out
    assert 'inverted' in out
    assert (tmp_path / 'ref.gain').read_bytes() == before  # the input is never touched
    oriented, _ = read_image(tmp_path / 'oriented.mrc')
    good = ~(gain.dead | gain.hot)
    np.testing.assert_allclose(oriented[good], truth[good] / truth[good].mean(), rtol=2e-3)
    report = json.loads((tmp_path / 'r.json').read_text())
    assert report['orientation']['confident'] and report['orientation']['inverted']
    assert report['orientation']['transform']['relion'] == '--gain_rot 1 --gain_flip 1'
    assert report['conventions']['reference'] == {'relion_xmipp_flip_y': True,
                                                  'gain_convention': 'correction'}
    assert report['conventions']['movies']['relion_xmipp_flip_y'] is True
    assert any('Y flip' in note for note in report['notes'])
    assert report['output'] == str(tmp_path / 'oriented.mrc')


def test_command_says_no_confident_match_and_writes_nothing(orient_files, tmp_path, capsys):
    import json

    from scipion_gain.cli import main
    folder, _ = orient_files
    _write(tmp_path / 'other.mrc', structured_gain(SHAPE, 99).correction)
    status = main(['orient', str(folder / 'movie.mrc'), '--gain', str(tmp_path / 'other.mrc'),
                   '-o', str(tmp_path / 'o.mrc'), '--json', str(tmp_path / 'r.json'), '-q'])
    out = capsys.readouterr().out
    assert status == 1 and 'no confident match' in out
    assert not (tmp_path / 'o.mrc').exists()
    report = json.loads((tmp_path / 'r.json').read_text())
    assert report['output'] is None and not report['orientation']['confident']
    status = main(['orient', str(folder / 'movie.mrc'), '--gain', str(tmp_path / 'other.mrc'),
                   '-o', str(tmp_path / 'o.mrc'), '--force', '-q'])
    assert status == 1 and (tmp_path / 'o.mrc').exists()


def test_command_bad_input_is_one_line(orient_files, tmp_path, capsys):
    from scipion_gain.cli import main
    folder, _ = orient_files
    (tmp_path / 'bad.dm4').write_bytes(b'\x00\x00\x00\x09garbage')
    status = main(['orient', str(folder / 'movie.mrc'), '--gain', str(tmp_path / 'bad.dm4'),
                   '-o', str(tmp_path / 'o.mrc'), '-q'])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and 'bad.dm4' in err
    _write(tmp_path / 'small.mrc', np.ones((100, 100)))
    status = main(['orient', str(folder / 'movie.mrc'), '--gain', str(tmp_path / 'small.mrc'),
                   '-o', str(tmp_path / 'o.mrc'), '-q'])
    err = capsys.readouterr().err.strip()
    assert status == 2 and 'no rotation or flip' in err and len(err.splitlines()) == 1
    status = main(['orient', str(folder / 'movie.mrc'), '--gain', str(tmp_path / 'small.mrc'),
                   '-o', str(tmp_path / 'small.mrc'), '-q'])
    assert status == 2 and 'refusing to overwrite' in capsys.readouterr().err
    assert not (tmp_path / 'o.mrc').exists()


def test_the_orientation_message_says_its_figures_in_words():
    # it read 'confidence 0.22, significance 5.1': two unexplained numbers (README review)
    from scipion_gain.estimator.orientation import OrientationResult
    result = OrientationResult(transform=Transform(1, 0), inverted=False, score=0.412,
                               second_score=0.321, second={}, confidence=0.22, null=0.018,
                               significance=5.1, confident=False, min_score=0.05,
                               min_significance=6.0)
    figures = ("correlation 0.412 against 0.321 for the runner-up and 0.018 by chance: a lead "
               "of 5.1 chance spreads")
    assert result.message == (f"no confident match (best: {Transform(1, 0).describe()}; "
                              f"{figures}; a match needs correlation >= 0.05 and a lead of 6 "
                              "chance spreads)")
    result.confident = True
    assert result.message == f"{Transform(1, 0).describe()} ({figures})"
