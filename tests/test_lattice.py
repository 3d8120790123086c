"""Movies gain-corrected at acquisition: counts and applied factors recovered exactly.

Simulated counting movies written as counts x correction (float32, float16;
simulate.py's ``correction``/``output``) must give back their counts and the
applied reference, and the residual the same counts give with ``--gain`` on
the raw frames. Integer (raw or rounded) and integrating movies are not
lattices and say so. Hot pixels, all-zero frames and NaN patches do not spoil
the recovery.
"""
import json

import mrcfile
import numpy as np
import pytest

from scipion_gain.cli import main
from scipion_gain.estimator import estimate_gain
from scipion_gain.estimator.analysis import analyse
from scipion_gain.estimator.frames import FrameSource
from scipion_gain.estimator.stages import BadValues
from scipion_gain.estimator.stages.lattice import Lattice, approximate_gcd, precision_of
from scipion_gain.estimator.orientation import Transform
from scipion_gain.simulate import Spoiler, simulate_gain, simulate_movie, wrong_reference

SMALL = (128, 128)
SHAPE = (256, 256)


def _gain(shape, spread, rng=3):
    return simulate_gain(shape, rng=rng, sector_spread=0.04, column_spread=0.05,
                         row_spread=0.03, pixel_scatter=spread)


def _movies(folder, shape, gain, frames, dose, reference=None, output='float32', seed=5, **options):
    """(pre-corrected movie, the same counts raw): the reference applied at acquisition."""
    reference = gain.correction if reference is None else reference
    pre = simulate_movie(str(folder / f'pre_{output}.mrc'), shape, frames, gain.gain, dose=dose,
                         mode='counting', rng=seed, correction=reference, output=output, **options)
    raw = simulate_movie(str(folder / 'raw.mrc'), shape, frames, gain.gain, dose=dose,
                         mode='counting', rng=seed, **options)
    return pre, raw


def _conditioned(path, stage=None):
    """The frames as the estimator gets them from the default conditioning."""
    stage = stage or Lattice()
    source = FrameSource([path], stages=[BadValues(), stage])
    return [frame.copy() for frame in source], stage, source


@pytest.mark.parametrize('output', ['float32', 'float16'])
@pytest.mark.parametrize('spread', [0.02, 0.05, 0.2])
@pytest.mark.parametrize('dose', [1.0, 3.0])
def test_counts_and_applied_factors_are_recovered(tmp_path, output, spread, dose):
    gain = _gain(SMALL, spread)
    pre, raw = _movies(tmp_path, SMALL, gain, 20, dose, output=output)
    frames, lattice, source = _conditioned(pre)
    counts, _, _ = _conditioned(raw, BadValues())
    assert lattice.path == 'lattice' and lattice.precision == output
    # the counts, exactly (a pixel with a few even counts only can stay ambiguous: at most
    # 0.05 % of the pixels; measured: none at 20 frames)
    wrong = np.zeros(SMALL, bool)
    values = np.zeros(SMALL, int)
    for got, expected in zip(frames, counts):
        wrong |= got != expected
        values += expected > 0
    assert wrong.mean() <= 0.0005
    # the applied reference: multiplies raw frames, mean 1; correlation > 0.999 with the
    # one applied on the pixels with enough counts (6 non-zero values or more)
    info = lattice.info()
    applied = lattice.applied_reference
    assert applied.dtype == np.float32 and applied.mean() == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(applied).all()
    enough = values >= 6
    assert enough.mean() > 0.9
    assert np.corrcoef(applied[enough], gain.correction[enough])[0, 1] > 0.999
    assert np.array_equal(source.gain_reference, applied)
    assert info['path'] == 'lattice' and info['precision'] == output
    assert info['off_lattice_share'] <= 0.001


def test_a_lattice_gives_the_residual_of_the_same_counts_with_the_reference(tmp_path):
    # the Done-when: std within 1.5x of the raw counts with --gain (here: equal), flags and
    # verdict quiet on the exact reference; a 3 % column pattern applied instead: the verdict fires
    gain = _gain(SHAPE, 0.05)
    pre, raw = _movies(tmp_path, SHAPE, gain, 20, 1.5)
    lattice = analyse([pre])
    counted = analyse([raw], reference=gain.correction)
    report = lattice.to_json()
    assert report['kind'] == 'residual' and report['input']['lattice']['path'] == 'lattice'
    assert lattice.gain.std() <= 1.5 * counted.gain.std()
    np.testing.assert_allclose(lattice.gain, counted.gain, atol=1e-4)
    assert not report['flagged'] and not report['verdict']['flagged']
    assert report['input']['dose']['counting'] is True
    assert any('gain-corrected at acquisition' in note for note in report['notes'])
    off = wrong_reference(gain.correction, 'columns', rng=4, size=0.03)
    pre_off, _ = _movies(tmp_path, SHAPE, gain, 20, 1.5, reference=off.reference)
    flagged = analyse([pre_off]).to_json()
    assert flagged['input']['lattice']['path'] == 'lattice'
    assert flagged['verdict']['flagged']
    assert any('column' in reason for reason in flagged['verdict']['reasons'])


def test_without_recovery_a_pre_corrected_movie_is_misjudged(tmp_path):
    # what the lattice stage prevents: the same frames taken as recorded re-create the
    # applied correction
    gain = _gain(SHAPE, 0.05)
    pre, _ = _movies(tmp_path, SHAPE, gain, 20, 1.5)
    as_recorded = estimate_gain([pre], stages=[BadValues()])
    recovered = estimate_gain([pre])
    truth = np.log(gain.correction.ravel())
    assert np.corrcoef(np.log(as_recorded.gain.ravel()), truth)[0, 1] > 0.5
    assert abs(np.corrcoef(np.log(recovered.gain.ravel()), truth)[0, 1]) < 0.2
    assert recovered.gain.std() < 0.5 * as_recorded.gain.std()


def test_integer_and_integrating_movies_are_not_lattices(tmp_path):
    gain = simulate_gain(SHAPE, rng=3, pixel_scatter=0.2)
    # raw counts: whole numbers, Poisson
    raw = simulate_movie(str(tmp_path / 'raw.mrc'), SHAPE, 20, gain.gain, dose=3.0,
                         mode='counting', rng=5)
    report = analyse([raw]).to_json()
    lattice = report['input']['lattice']
    assert lattice['path'] == 'raw' and 'whole numbers' in lattice['why']
    assert lattice['rounded']['suspected'] is False
    assert report['kind'] == 'gain'
    assert not any('gain-corrected' in note or 'rounded' in note for note in report['notes'])
    # gain-normalised, then rounded to integers: not a lattice, and said to look rounded
    rounded = simulate_movie(str(tmp_path / 'rounded.mrc'), SHAPE, 20, gain.gain, dose=3.0,
                             mode='counting', rng=5, correction=gain.correction,
                             output='rounded')
    report = analyse([rounded]).to_json()
    lattice = report['input']['lattice']
    assert lattice['path'] == 'raw' and lattice['rounded']['suspected'] is True
    assert lattice['rounded']['ratio_n1n3_n2n2'] < 0.62
    assert any('rounded to integers' in note for note in report['notes'])
    # integrating frames (read noise: negative values), raw and gain-corrected
    for name, options in (('integrating', {}),
                          ('integrating_corrected', dict(correction=gain.correction,
                                                         output='float32'))):
        movie = simulate_movie(str(tmp_path / f'{name}.mrc'), SHAPE, 10, gain.gain, dose=10.0,
                               mode='integrating', rng=6, **options)
        result = estimate_gain([movie])
        assert result.input['lattice']['path'] == 'raw'
        assert 'negative values' in result.input['lattice']['why']
        assert any(note.startswith('not gain-corrected counts: frames hold negative values')
                   for note in result.notes)
        assert not result.residual


def test_float_frames_off_any_lattice_are_estimated_as_recorded(tmp_path):
    # non-negative float frames with zeros that are not counts x factors (e.g. integrating
    # data clipped at zero): surveyed, found off the lattice, said so
    rng = np.random.default_rng(7)
    frames = np.maximum(rng.normal(2.0, 1.5, (8,) + SMALL), 0).astype(np.float32)
    path = str(tmp_path / 'clipped.mrc')
    with mrcfile.new(path) as mrc:
        mrc.set_data(frames)
    result = estimate_gain([path])
    lattice = result.input['lattice']
    assert lattice['path'] == 'raw' and lattice['checked'] is True
    assert 'not whole multiples' in lattice['why']
    assert lattice['off_lattice_share'] > 0.5
    assert any('not whole multiples' in note for note in result.notes)
    assert not result.residual


def test_a_hot_pixel_on_a_lattice_is_masked_and_the_rest_recovered(tmp_path):
    gain = _gain(SHAPE, 0.05)
    spoil = Spoiler(hot=[(40, 70)], hot_value=50000.0)
    pre = simulate_movie(str(tmp_path / 'hot.mrc'), SHAPE, 20, gain.gain, dose=1.5,
                         mode='counting', rng=5, correction=gain.correction, output='float32',
                         spoil=spoil)
    clean, _ = _movies(tmp_path, SHAPE, gain, 20, 1.5)
    hot = analyse([pre])
    reference = analyse([clean])
    report = hot.to_json()
    pixels = report['input']['lattice']['pixels']
    assert pixels['implausible'] + pixels['off_lattice'] == 1
    assert report['defects']['counts']['unusable_pixels'] == 1
    assert hot.gain[40, 70] == 1.0
    away = np.ones(SHAPE, bool)
    away[30:51, :] = False
    away[:, 60:81] = False
    # away from it, the map is as close to the truth (the movie was corrected with the exact
    # reference: a residual of 1) as the clean movie's. Not the same map: the robust method
    # (the default) thins the sum with a random draw, and the hot pixel changes which
    # draws the other pixels get (their difference is about half the map's noise, for the
    # same error). A map spoiled by the pixel would carry noise of its own beside the
    # estimate's: sqrt(2) times the error or more
    error = np.sqrt(np.mean((hot.gain[away] - 1.0) ** 2))
    clean_error = np.sqrt(np.mean((reference.gain[away] - 1.0) ** 2))
    assert error < 1.1 * clean_error, (error, clean_error)
    assert not report['verdict']['flagged']


def test_all_zero_frames_and_nan_patches_leave_the_lattice_intact(tmp_path):
    gain = _gain(SMALL, 0.05)
    spoil = Spoiler(zero_frames=(3,), patches=[(5, 10, 10, 10, float('nan'))])
    pre = simulate_movie(str(tmp_path / 'spoilt.mrc'), SMALL, 12, gain.gain, dose=1.5,
                         mode='counting', rng=5, correction=gain.correction, output='float32',
                         spoil=spoil)
    report = analyse([pre]).to_json()
    assert report['input']['lattice']['path'] == 'lattice'
    assert report['input']['bad_values']['frames_left_out'] == {'3': 'all zero'}
    assert report['input']['bad_values']['unusable_pixels'] == 100
    assert report['frames'] == 11
    assert any('all-zero frame' in note for note in report['notes'])


def test_a_divisor_that_is_a_multiple_of_the_factor_is_caught(tmp_path):
    # pixel A never saw 1 electron, only 2s and 3s: Euclid's algorithm finds the factor;
    # pixel B only 2s and 4s (all even, as a pixel at 1.5 e/px shows by chance): its
    # neighbours (a 2 % scatter: none at twice the others) and its counts say the divisor
    # is twice the factor
    gain = simulate_gain(SHAPE, rng=3, sectors=1, sector_spread=0.0, column_spread=0.0,
                         row_spread=0.0, pixel_scatter=0.02)
    rng = np.random.default_rng(8)
    counts = rng.poisson(1.5 / gain.correction, (16,) + SHAPE).astype(np.float32)
    counts[:, 20, 30] = rng.choice([0, 2, 3], 16, p=[0.3, 0.4, 0.3])
    counts[:, 60, 90] = [2, 0, 2, 4, 2, 0, 0, 2, 4, 2, 0, 2, 2, 0, 4, 2]
    frames = counts * gain.correction
    path = str(tmp_path / 'multiples.mrc')
    with mrcfile.new(path) as mrc:
        mrc.set_data(frames.astype(np.float32))
    got, lattice, _ = _conditioned(path)
    got = np.stack(got)
    np.testing.assert_array_equal(got[:, 20, 30], counts[:, 20, 30])
    np.testing.assert_array_equal(got[:, 60, 90], counts[:, 60, 90])
    assert (got != counts).any(axis=0).mean() <= 0.001
    applied = lattice.applied_reference
    ratio = applied / gain.correction
    ratio /= np.median(ratio)
    assert ratio[20, 30] == pytest.approx(1.0, abs=1e-4)
    assert ratio[60, 90] == pytest.approx(1.0, abs=1e-4)
    assert lattice.info()['pixels']['multiples'] >= 1


def test_approximate_gcd_at_the_frames_precision():
    f = np.array([0.8731, 1.2043, 0.9517], np.float32)
    a, b = (2 * f).astype(np.float32), (3 * f).astype(np.float32)
    divisor, ok = approximate_gcd(a, b, 2.0 ** -24)
    assert ok.all()
    np.testing.assert_allclose(divisor, f, rtol=1e-6)
    # float16 values: the tolerance follows their precision
    a16, b16 = (7 * f).astype(np.float16), (5 * f).astype(np.float16)
    divisor, ok = approximate_gcd(a16.astype(np.float32), b16.astype(np.float32), 2.0 ** -11)
    assert ok.all()  # to float16 precision (the survey then refines it from every value)
    np.testing.assert_allclose(divisor, f, rtol=2e-2)
    np.testing.assert_allclose(a16 / divisor, 7, atol=0.1)
    # unrelated reals: no common factor
    divisor, ok = approximate_gcd(np.array([1.0, 2.3]), np.array([0.7316, 1.1893]), 2.0 ** -24)
    assert not ok.any()
    assert precision_of(np.array([[0.5, 1.25]], np.float32))[0] == 'float16'
    assert precision_of(np.array([[0.1, 1.25]], np.float32))[0] == 'float32'


def test_the_given_reference_is_compared_with_the_applied_one(tmp_path):
    gain = _gain(SHAPE, 0.05)
    pre, _ = _movies(tmp_path, SHAPE, gain, 16, 1.5, output='float16')
    plain = analyse([pre])
    # the applied one, stored rotated by 90 degrees and at another scale
    stored = np.ascontiguousarray(np.rot90(gain.correction, -1)) * np.float32(3)
    same = analyse([pre], reference=stored)
    given = same.to_json()['input']['lattice']['given_reference']
    assert given['same'] is True and given['agreeing_share'] > 0.999
    assert given['correlation'] > 0.99 and given['inverted'] is False
    # the orientation found takes the stored file back to the applied one
    found = Transform(given['orientation']['rotation'], given['orientation']['flip'])
    back = found.apply(stored)
    assert np.corrcoef(back.ravel(), gain.correction.ravel())[0, 1] > 0.999
    assert 'IS the one applied' in given['sentence']
    # the residual is the applied reference's, whatever was given
    np.testing.assert_array_equal(same.gain, plain.gain)
    other = wrong_reference(gain.correction, 'columns', rng=4, size=0.03).reference
    different = analyse([pre], reference=simulate_gain(SHAPE, rng=9, pixel_scatter=0.05).correction)
    given = different.to_json()['input']['lattice']['given_reference']
    assert given['same'] is False and 'NOT the one applied' in given['sentence']
    np.testing.assert_array_equal(different.gain, plain.gain)
    # off by a 3 % column pattern: not the one applied
    close = analyse([pre], reference=other).to_json()['input']['lattice']['given_reference']
    assert close['same'] is False and close['ratio_spread'] > 0.02


def test_command_line_writes_the_applied_reference(tmp_path):
    gain = _gain(SMALL, 0.05)
    pre, raw = _movies(tmp_path, SMALL, gain, 20, 1.5, output='float16')
    before = open(pre, 'rb').read()
    applied = tmp_path / 'applied.mrc'
    stats = tmp_path / 'stats.json'
    assert main(['estimate', pre, '-o', str(tmp_path / 'residual.mrc'), '--applied-reference',
                 str(applied), '--json', str(stats), '-q']) == 0
    written = mrcfile.read(str(applied))
    assert written.dtype == np.float32 and written.mean() == pytest.approx(1.0, abs=1e-5)
    assert np.corrcoef(written.ravel(), gain.correction.ravel())[0, 1] > 0.999
    report = json.loads(stats.read_text())
    assert report['kind'] == 'residual'
    assert report['input']['lattice']['applied_reference'] == str(applied)
    assert open(pre, 'rb').read() == before
    # checked against the inputs like every output: exit 2, nothing written
    assert main(['estimate', pre, '-o', str(tmp_path / 'x.mrc'), '--applied-reference', pre,
                 '-q']) == 2
    assert open(pre, 'rb').read() == before
    assert not (tmp_path / 'x.mrc').exists()
    # a raw movie: nothing written, a note says why
    none = tmp_path / 'none.mrc'
    stats = tmp_path / 'raw.json'
    assert main(['estimate', raw, '-o', str(tmp_path / 'gain.mrc'), '--applied-reference',
                 str(none), '--json', str(stats), '-q']) == 0
    assert not none.exists()
    notes = json.loads(stats.read_text())['notes']
    assert any('--applied-reference' in note and 'not gain-corrected' in note for note in notes)


def test_protocol_movie_job_writes_the_applied_reference(tmp_path):
    # the protocol's per-movie work (movie_job): extra/movie_%06d_applied_reference.mrc,
    # the residual against the applied reference, the gain to use from the applied one
    import os
    from scipion_gain import movie_job
    from scipion_gain.estimator.analysis import AnalysisSettings
    from scipion_gain.io import write_mrc
    gain = _gain(SMALL, 0.05)
    pre, _ = _movies(tmp_path, SMALL, gain, 20, 1.5)
    write_mrc(str(tmp_path / 'gain.mrc'), gain.correction)
    out = tmp_path / 'extra'
    out.mkdir()
    outputs = {'gain': str(out / 'movie_000003_gain.mrc'),
               'json': str(out / 'movie_000003_stats.json'),
               'applied_reference': str(out / 'movie_000003_applied_reference.mrc'),
               'corrected_gain': str(out / 'movie_000003_corrected_gain.mrc'),
               'failed': str(out / 'failed.txt')}
    job = movie_job.make_job(3, pre, os.path.realpath(pre), AnalysisSettings(), outputs,
                             reference=str(tmp_path / 'gain.mrc'),
                             reference_reader='gain_reference', reference_kind='as given')
    report = movie_job.run_job(job)
    assert report['kind'] == 'residual'
    lattice = report['input']['lattice']
    assert lattice['path'] == 'lattice' and lattice['given_reference']['same'] is True
    applied = mrcfile.read(outputs['applied_reference'])
    assert np.corrcoef(applied.ravel(), gain.correction.ravel())[0, 1] > 0.999
    residual = mrcfile.read(outputs['gain'])
    corrected = mrcfile.read(outputs['corrected_gain'])
    expected = applied * residual
    np.testing.assert_allclose(corrected, expected / expected.mean(), rtol=1e-4)
    assert json.loads(open(outputs['json']).read())['input']['lattice']['applied_reference'] \
        == outputs['applied_reference']


def test_float16_precision_limits_the_counts_that_can_be_verified():
    # half precision carries 11 bits: a value of 100 counts x factor cannot be told from
    # 99 or 101 counts, so such values are not taken as lattice evidence (the pixel is
    # off the lattice); 20 counts still are
    from scipion_gain.estimator.stages.lattice import LatticeSurvey
    factor = np.float32(1.0371)
    low = LatticeSurvey((1, 2), 2.0 ** -11)
    for counts in ([1, 20], [2, 19], [3, 17]):
        low.add((np.array([counts], np.float32) * factor).astype(np.float16).astype(np.float32))
    assert not low.off.any()
    assert np.all(np.abs(low.factor / factor - 1) < 2e-3)
    high = LatticeSurvey((1, 1), 2.0 ** -11)
    for counts in (1, 100):
        high.add((np.array([[counts]], np.float32) * factor).astype(np.float16)
                 .astype(np.float32))
    assert high.off.all()
