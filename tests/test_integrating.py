"""Integrating cameras: dark references, offsets, movies without beam, photon transfer.

Real files: the DE Celeritas camera's 512-frame movie taken without beam, its
dark reference (camera-server header, nz=32766) and a 128 x 256 gain/dark pair
(../shared/data/de-celeritas). Simulated integrating movies go through the
real Celeritas gain with its real dark added as the camera adds it (raw uint16
frames), with a known conversion factor, electron spread and read noise.
"""
import hashlib
import json
import subprocess
import sys

import mrcfile
import numpy as np
import pytest

from helpers import SHARED_DATA, r_squared
from scipion_gain.cli import main
from scipion_gain.estimator.analysis import AnalysisSettings, analyse
from scipion_gain.estimator.defects import find_defects
from scipion_gain.estimator.stages.integrating import IntegratingSettings
from scipion_gain.io import InputError, read_dark_reference, read_gain_reference, read_image
from scipion_gain.simulate import (random_specimen, simulate_frames, simulate_gain,
                                   simulate_movie, write_movie)

CELERITAS = SHARED_DATA / 'de-celeritas'
NOBEAM = CELERITAS / 'celeritas_64x64_nobeam_movie.mrcs'
NOBEAM_DARK = CELERITAS / 'celeritas_64x64_dark_deheader.mrc'
DARK = CELERITAS / 'celeritas_128x256_dark_deheader.mrc'
GAIN = CELERITAS / 'celeritas_128x256_gain.mrc'
needs_shared = pytest.mark.skipif(not CELERITAS.is_dir(), reason='../shared/data is not there')

SHAPE = (128, 256)
#: the Celeritas as its metadata states it (300 ADU per electron), a Landau-like spread, and
#: about its read noise (the no-beam movie's temporal noise is 2.3 ADU)
CAMERA = dict(mode='integrating', adu_per_electron=300.0, electron_spread=0.7, read_noise=3.0)


def sha1(path):
    return hashlib.sha1(open(path, 'rb').read()).hexdigest()


def cli(*args):
    return subprocess.run([sys.executable, '-m', 'scipion_gain.cli'] + [str(a) for a in args],
                          capture_output=True, text=True)


@pytest.fixture(scope='module')
def celeritas():
    """The real Celeritas gain as a physical gain G (mean 1), its correction and its dark."""
    correction, _ = read_gain_reference(GAIN)
    gain = 1.0 / correction.astype(np.float64)
    return {'gain': (gain / gain.mean()).astype(np.float32), 'correction': correction,
            'dark': read_dark_reference(DARK)}


@pytest.fixture(scope='module')
def movies(tmp_path_factory, celeritas):
    """The same integrating movie (same electrons) offset-free and as the camera writes it."""
    folder = tmp_path_factory.mktemp('integrating')
    # 2 e/px per frame: enough frames without electrons to show the offset; 100 frames:
    # enough electrons for the map to follow the true gain (R^2 about 0.3)
    options = dict(CAMERA, dose=2.0, specimen=random_specimen(7, carbon=False, hole=False),
                   rng=11)
    free = simulate_movie(str(folder / 'free.mrc'), SHAPE, 100, celeritas['gain'],
                          output='float32', **options)
    raw = simulate_movie(str(folder / 'raw.mrc'), SHAPE, 100, celeritas['gain'],
                         output='rounded', dark=celeritas['dark'].dark, **options)
    return {'free': free, 'raw': raw, 'folder': folder}


# ------------------------------------------------------------------ reading darks
@needs_shared
def test_a_camera_server_dark_reads_as_its_fixed_header_twin():
    broken = read_dark_reference(DARK)
    fixed, fixed_notes = read_dark_reference(CELERITAS / 'celeritas_128x256_dark.mrc')
    assert np.array_equal(broken.dark, fixed) and broken.dark.shape == SHAPE
    assert any('nz=32766' in note for note in broken.notes) and not fixed_notes
    info = broken.to_json()
    assert info['path'] == str(DARK) and info['unusable_pixels'] == 0
    assert info['mean'] == pytest.approx(338.66, abs=0.01)


def test_a_dark_keeps_zero_and_negative_offsets_and_masks_nan(tmp_path):
    image = np.full((16, 16), 100.0, np.float32)
    image[0, 0], image[1, 1], image[2, 2], image[3, 3] = 0.0, -5.0, np.nan, np.inf
    path = tmp_path / 'dark.mrc'
    with mrcfile.new(str(path)) as mrc:
        mrc.set_data(image)
    before = sha1(path)
    dark = read_dark_reference(path)
    assert dark.dark[0, 0] == 0 and dark.dark[1, 1] == -5  # legitimate offsets
    assert dark.dark[2, 2] == 100 and dark.dark[3, 3] == 100  # the median dark level
    assert np.argwhere(dark.unusable).tolist() == [[2, 2], [3, 3]]
    assert any('2 dark pixel(s) unusable (1 NaN, 1 inf)' in note for note in dark.notes)
    assert sha1(path) == before


def test_a_dark_stack_or_a_dark_of_the_wrong_size_is_one_line_and_exit_2(tmp_path):
    movie = simulate_movie(str(tmp_path / 'm.mrc'), (32, 32), 10, np.ones((32, 32), np.float32),
                           rng=1, **dict(CAMERA, dose=1.0))
    stack, small = tmp_path / 'stack.mrc', tmp_path / 'small.mrc'
    with mrcfile.new(str(stack)) as mrc:
        mrc.set_data(np.zeros((2, 32, 32), np.float32))
    with mrcfile.new(str(small)) as mrc:
        mrc.set_data(np.zeros((16, 32), np.float32))
    for dark, message in ((stack, 'expected one image, found 2'),
                          (small, 'dark reference is 32 x 16, the movie frames are 32 x 32')):
        proc = cli('estimate', movie, '-o', tmp_path / 'g.mrc', '--dark', dark, '-q')
        assert proc.returncode == 2
        assert proc.stderr.count('\n') == 1 and message in proc.stderr
        assert str(dark) in proc.stderr
        assert not (tmp_path / 'g.mrc').exists()


# ------------------------------------------------------------------ no beam
@needs_shared
def test_the_real_no_beam_movie_is_refused_by_the_command_with_one_line(tmp_path):
    out, stats = tmp_path / 'g.mrc', tmp_path / 's.json'
    before = sha1(NOBEAM)
    for extra in ([], ['--dark', NOBEAM_DARK]):
        proc = cli('estimate', NOBEAM, '-o', out, '--json', stats, *extra)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"scipion-gain estimate: error: {NOBEAM}: no electron signal "
                                   f"in the first 32 frames: temporal noise 2.2")
        assert 'ADU that does not follow the mean across the frame (variance slope ' in lines[0]
        assert 'standard errors from 0) and no electron events (read noise only)' in lines[0]
        assert lines[0].endswith('taken without beam (blanked, valves closed)? not analysable')
        assert ('after the dark reference' in lines[0]) == bool(extra)
        assert 'mean 332.3 ADU, the dark level' in lines[0] or extra
        assert proc.stdout == '' and not out.exists() and not stats.exists()
    assert sha1(NOBEAM) == before


@needs_shared
def test_the_no_beam_movie_is_refused_from_its_first_frames_before_the_estimate():
    calls = []
    with pytest.raises(InputError, match='no electron signal in the first 32 frames'):
        analyse([str(NOBEAM)], progress=lambda done, total: calls.append(done))
    assert calls == []  # the estimator never ran over the 512 frames


@needs_shared
def test_simulated_dark_frames_are_refused_and_a_trickle_of_electrons_is_not(tmp_path):
    dark = read_dark_reference(NOBEAM_DARK).dark
    flat = np.ones(dark.shape, np.float32)
    for dose, refused in ((0.0, True), (0.01, False)):
        path = simulate_movie(str(tmp_path / f'd{dose}.mrc'), dark.shape, 40, flat, rng=3,
                              output='rounded', dark=dark, **dict(CAMERA, dose=dose))
        if refused:
            with pytest.raises(InputError, match='no electron signal'):
                analyse([path])
        else:
            analyse([path])  # 0.01 e/px per frame: sparse electron events, analysed



@pytest.mark.parametrize('dose,dtype', [(0.5, np.uint8), (0.5, np.float16), (50, np.uint16),
                                        (200, np.float32), (400, np.uint16), (400, np.float32),
                                        (400, np.float16)])
def test_counting_movies_are_analysed_at_any_dose_their_variance_following_their_mean(
        tmp_path, dose, dtype):
    # a flat field on a flat detector: the pixels' means differ only by their own noise, the
    # hardest case for photon transfer (the slope comes from the shot noise's third cumulant)
    shape = (256, 256)
    frames = [f.astype(dtype) for f in simulate_frames(shape, 10, np.ones(shape, np.float32),
                                                       dose=dose, specimen=False, rng=5)]
    path = str(tmp_path / 'flat.mrc')
    write_movie(path, frames, shape=shape, n_frames=len(frames))
    report = analyse([path]).to_json()
    assert report['dose']['electrons_per_pixel'] == pytest.approx(10 * dose, rel=0.02)
    signal = report['input']['offset'].get('signal')
    if dose >= 50:  # no zero counts: surveyed as integrating frames would be
        assert signal['variance_slope_adu'] == pytest.approx(1.0, abs=0.3)
        assert signal['variance_slope_z'] > 5
    else:
        assert signal is None  # whole counts with many zeros: counting, no survey


# ------------------------------------------------------------------ dark and offset
@needs_shared
def test_with_the_dark_the_map_is_the_offset_free_one_without_it_the_offset_is_reported(
        tmp_path, movies, celeritas):
    truth = celeritas['correction']
    results = {}
    for name, movie, dark in (('free', movies['free'], None), ('dark', movies['raw'], DARK),
                              ('raw', movies['raw'], None)):
        stats = tmp_path / f'{name}.json'
        args = ['estimate', movie, '-o', str(tmp_path / f'{name}.mrc'), '--json', str(stats), '-q']
        assert main(args + (['--dark', str(dark)] if dark else [])) == 0
        with mrcfile.open(str(tmp_path / f'{name}.mrc')) as mrc:
            results[name] = (r_squared(mrc.data, truth), json.loads(stats.read_text()))
    (free, _), (dark, with_dark), (raw, without) = (results[k] for k in ('free', 'dark', 'raw'))
    assert abs(dark - free) < 0.01
    print(f"R^2 to the true gain: offset-free {free:.3f}, with --dark {dark:.3f}, "
          f"without {raw:.3f}")
    assert raw < free - 0.05  # the offset costs the map
    assert with_dark['dark_reference'] == str(DARK)
    assert with_dark['input']['dark']['path'] == str(DARK)
    assert with_dark['input']['offset']['detected'] is False
    offset = without['input']['offset']
    assert offset['detected'] is True and offset['relative_to'] == 'raw frames'
    assert offset['offset_adu'] == pytest.approx(float(np.median(celeritas['dark'].dark)), abs=5)
    note = f"frames carry an offset of about {offset['offset_adu']:.0f} ADU"
    assert any(n.startswith(note) and n.endswith('give the dark reference')
               for n in without['notes'])
    assert not any('offset' in n for n in with_dark['notes'])


@needs_shared
def test_the_wrong_dark_leaves_an_offset_that_is_reported(movies):
    wrong = read_dark_reference(DARK).dark - 40.0  # a dark 40 ADU too low
    report = analyse([movies['raw']], dark=wrong).to_json()
    offset = report['input']['offset']
    assert offset['detected'] and offset['relative_to'] == 'dark reference'
    assert offset['offset_adu'] == pytest.approx(40, abs=2)
    assert any('is it the right dark reference?' in n for n in report['notes'])


# ------------------------------------------------------------------ photon transfer
@pytest.mark.parametrize('factor,spread,read_noise,separated', [
    (300.0, 0.7, 3.0, True),    # DE-like: one electron is 100 read-noise sigmas
    (30.0, 0.4, 4.0, False)])   # deposits too close to the read noise to count empty frames
def test_the_conversion_factor_and_read_noise_are_recovered(tmp_path, factor, spread, read_noise,
                                                            separated):
    shape = (128, 128)
    gain = simulate_gain(shape, rng=4, texture=0.03).gain
    offset = 200 + 20 * np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    path = simulate_movie(str(tmp_path / 'm.mrc'), shape, 40, gain, mode='integrating',
                          adu_per_electron=factor, electron_spread=spread,
                          read_noise=read_noise, dose=0.5, rng=6, output='rounded', dark=offset,
                          specimen=random_specimen(8))
    settings = AnalysisSettings(integrating=IntegratingSettings(stated_adu_per_electron=factor))
    report = analyse([path], dark=offset, settings=settings).to_json()
    conversion = report['input']['conversion']
    slope = factor * (1 + spread ** 2)   # what photon transfer measures
    assert conversion['measured'] is True
    assert conversion['variance_slope_adu'] == pytest.approx(slope, rel=0.05)
    if separated:  # the mean ADU per electron itself, from the frames without electrons
        assert conversion['adu_per_electron'] == pytest.approx(factor, rel=0.05)
        assert conversion['electron_spread'] == pytest.approx(spread, abs=0.05)
    else:
        assert conversion['adu_per_electron'] is None
    assert conversion['spread_implied_by_stated'] == pytest.approx(spread, abs=0.05)
    # uint16 rounding adds 1/12 ADU^2
    assert conversion['read_noise_adu'] == pytest.approx(np.hypot(read_noise, 0.29), rel=0.05)
    # the DQE loss's electrons: shot-noise equivalent, dose / (1 + spread^2) per frame
    per_frame = 0.5 * float(gain[gain > 0].sum() / gain.size) / (1 + spread ** 2)
    assert conversion['electrons_per_pixel_per_frame'] == pytest.approx(per_frame, rel=0.05)
    assert report['dose']['source'] == 'photon transfer'
    assert report['dose']['electrons_per_pixel'] == pytest.approx(40 * per_frame, rel=0.05)
    assert report['verdict']['electrons_per_pixel'] == report['dose']['electrons_per_pixel']
    start = (f"photon transfer: {conversion['adu_per_electron']:.4g} ADU per electron (spread "
             f"{conversion['electron_spread']:.2f}), variance slope" if separated
             else f"photon transfer: variance slope {conversion['variance_slope_adu']:.4g} ADU")
    assert sum(n.startswith(start) for n in report['notes']) == 1
    assert sum(f"the camera's stated {factor:.4g} ADU per electron implies a spread of "
               f"{conversion['spread_implied_by_stated']:.2f}" in n for n in report['notes']) == 1


def test_counting_movies_keep_their_counts_and_get_no_offset(tmp_path):
    gain = simulate_gain((128, 128), rng=2).gain
    path = simulate_movie(str(tmp_path / 'c.mrc'), (128, 128), 16, gain, dose=0.8, rng=3)
    report = analyse([path]).to_json()
    with mrcfile.open(path) as mrc:
        total = float(mrc.data.astype(np.float64).sum() / (128 * 128))
    assert report['dose']['electrons_per_pixel'] == pytest.approx(total, rel=1e-9)
    assert report['dose']['source'] == 'counts' and report['dose']['values'] == 'counts'
    assert report['input']['offset'] == {
        'checked': False, 'reason': 'counting frames (whole counts, many zeros): no offset'}
    assert report['input']['conversion']['variance_slope_adu'] == pytest.approx(1.0, abs=0.05)
    assert not any('photon transfer' in n or 'offset' in n for n in report['notes'])


def test_the_defect_test_counts_electrons_not_adu(tmp_path):
    shape = (128, 128)
    path = simulate_movie(str(tmp_path / 'low.mrc'), shape, 20, np.ones(shape, np.float32),
                          specimen=False, rng=9, **dict(CAMERA, dose=0.3))
    analysis = analyse([path])
    defects = analysis.report['defects']
    # a flat detector has no dead pixel: at 6 electrons per pixel the pixels that got none
    # (no signal in this movie) are the shot noise's zeros (exp(-6) of them), not dead
    assert defects['no_signal'] > 0
    assert defects['counts']['dead_pixels'] == 0
    assert defects['counts']['hot_pixels'] == 0
    # the same sums fed in ADU: the shot noise of 4 electrons per pixel is called defects
    in_adu = find_defects(counts=analysis.corrected_sum, no_signal=analysis.result.defects)
    assert in_adu.counts['dead_pixels'] > defects['no_signal'] + 100


def test_simulated_darks_add_to_the_same_frames():
    gain = np.ones((16, 16), np.float32)
    options = dict(CAMERA, dose=1.0, rng=2)
    plain = list(simulate_frames((16, 16), 3, gain, **options))
    darker = list(simulate_frames((16, 16), 3, gain, dark=250.0, **options))
    assert all(np.allclose(d - p, 250.0, atol=1e-3) for d, p in zip(darker, plain))
    with pytest.raises(ValueError, match='only integrating frames'):
        next(simulate_frames((16, 16), 1, gain, dark=1.0))
