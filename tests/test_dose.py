"""The dose measured from the data's own noise, for every kind of input the verdict meets.

Each case knows its true dose (the electrons the simulator drew, or the
expected ones); the measured one must be within 20 % of it, and the verdict
must be given at it.
"""
import mrcfile
import numpy as np
import pytest

from helpers import SHARED_DATA
from scipion_gain.estimator.analysis import AnalysisSettings, analyse
from scipion_gain.estimator.dose import spatial_transfer
from scipion_gain.estimator.stages.integrating import IntegratingSettings
from scipion_gain.simulate import random_specimen, simulate_frames, simulate_gain, write_movie

SHAPE = (256, 256)
FRAMES = 16
MICROGRAPH = SHARED_DATA / 'micrograph' / 'Ucsf_stack_1142_DW.mrc'


@pytest.fixture(scope='module')
def detector():
    return simulate_gain(SHAPE, rng=1).gain


def movie(tmp_path, name, frames):
    path = str(tmp_path / f'{name}.mrc')
    write_movie(path, frames, shape=frames[0].shape, n_frames=len(frames))
    return path


def counts(gain, shape=SHAPE, dose=1.0, frames=FRAMES, **options):
    return list(simulate_frames(shape, frames, gain, dose=dose, rng=2,
                                specimen=random_specimen(3), **options))


def electrons(frames, pixels):
    return sum(float(f.astype(np.float64).sum()) for f in frames) / pixels


def test_counts_are_their_own_electrons_and_their_noise_agrees(tmp_path, detector):
    frames = counts(detector)
    dose = analyse([movie(tmp_path, 'c', frames)]).to_json()['dose']
    assert dose['source'] == 'counts' and dose['values'] == 'counts'
    assert dose['electrons_per_pixel'] == pytest.approx(electrons(frames, detector.size), rel=1e-6)
    assert dose['adu_per_electron'] == pytest.approx(1.0, abs=0.05)


def test_counts_times_100_stored_as_uint16_are_measured_not_read(tmp_path, detector):
    frames = counts(detector)
    scaled = [(f.astype(np.uint32) * 100).astype(np.uint16) for f in frames]
    report = analyse([movie(tmp_path, 'x100', scaled)]).to_json()
    dose, truth = report['dose'], electrons(frames, detector.size)
    assert dose['electrons_per_pixel'] == pytest.approx(truth, rel=0.2)
    assert dose['source'] == 'photon transfer' and dose['values'] == 'not counts'
    assert dose['adu_per_electron'] == pytest.approx(100, rel=0.2)
    assert dose['values_read_as_counts'] == pytest.approx(100 * truth, rel=1e-3)
    assert report['verdict']['electrons_per_pixel'] == dose['electrons_per_pixel']
    assert sum(n.startswith('the values are not counts: their noise (photon transfer) gives ')
               for n in report['notes']) == 1


def test_integrating_frames_without_a_stated_conversion(tmp_path, detector):
    spread = 0.7
    frames = counts(detector, mode='integrating', adu_per_electron=300.0,
                    electron_spread=spread, read_noise=3.0)
    dose = analyse([movie(tmp_path, 'i', frames)]).to_json()['dose']
    truth = FRAMES * float(detector.mean())   # 1 e/px per frame through the gain
    assert dose['electrons_arrived_per_pixel'] == pytest.approx(truth, rel=0.2)
    # the DQE's electrons: shot-noise equivalent, fewer by the spread of the deposits
    assert dose['electrons_per_pixel'] == pytest.approx(truth / (1 + spread ** 2), rel=0.2)
    assert dose['adu_per_electron'] == pytest.approx(300 * (1 + spread ** 2), rel=0.2)


@pytest.mark.parametrize('binning', ['sum', 'mean'])
def test_super_resolution_counts_binned_2x2(tmp_path, binning):
    fine = (2 * SHAPE[0], 2 * SHAPE[1])
    frames = counts(simulate_gain(fine, rng=1).gain, shape=fine, dose=0.25)
    binned = [getattr(f.reshape(SHAPE[0], 2, SHAPE[1], 2).astype(np.float32),
                      binning)(axis=(1, 3)) for f in frames]
    if binning == 'sum':
        binned = [b.astype(np.uint16) for b in binned]
    dose = analyse([movie(tmp_path, binning, binned)]).to_json()['dose']
    assert dose['electrons_per_pixel'] == pytest.approx(electrons(frames, SHAPE[0] * SHAPE[1]),
                                                        rel=0.2)


def test_a_k2_like_summed_micrograph_is_judged_at_its_real_dose(tmp_path):
    # EPU-like: a gain-normalised counting sum written at about 100 ADU per electron, whole
    # numbers, holding a 0.4 % row pattern: 5 % of the DQE read as 3400 counts, 0.05 % at
    # the 34 electrons it holds
    shape = (1024, 1024)
    gain = simulate_gain(shape, rng=1).gain
    total = next(simulate_frames(shape, 34, gain, dose=1.0, rng=2, summed=True,
                                 specimen=random_specimen(3)))
    rows = 1 + 0.004 * np.random.default_rng(4).standard_normal((shape[0], 1))
    image = np.rint(total * 100.0 / gain * rows).astype(np.uint16)
    report = analyse([movie(tmp_path, 'k2', [image])]).to_json()
    dose, verdict = report['dose'], report['verdict']
    truth = float(total.astype(np.float64).mean())
    assert dose['source'] == 'high-frequency noise' and dose['values'] == 'not counts'
    assert dose['electrons_per_pixel'] == pytest.approx(truth, rel=0.2)
    assert dose['adu_per_electron'] == pytest.approx(100, rel=0.2)
    found = [c['name'] for c in report['assessment']['components'] if c['found']]
    assert 'rows' in found
    assert verdict['electrons_per_pixel'] == dose['electrons_per_pixel']
    assert verdict['dqe_loss'] < verdict['max_dqe_loss'] and not verdict['flagged']


def test_a_stated_conversion_that_the_noise_contradicts_is_said(tmp_path, detector):
    total = next(simulate_frames(SHAPE, 30, detector, dose=1.0, rng=2, summed=True,
                                 specimen=False))
    image = (total * 100.0 / detector).astype(np.float32)
    settings = AnalysisSettings(integrating=IntegratingSettings(stated_adu_per_electron=300.0))
    report = analyse([movie(tmp_path, 'm', [image])], settings=settings).to_json()
    assert report['dose']['measured_over_stated'] == pytest.approx(1 / 3, rel=0.2)
    assert any(n.startswith('the noise gives ') and 'the stated conversion 300' in n
               for n in report['notes'])


@pytest.mark.skipif(not MICROGRAPH.exists(), reason='../shared/data is not there')
def test_a_filtered_micrograph_has_no_dose_from_its_noise():
    # a real dose-weighted, motion-corrected sum: its noise is not white, so it says nothing
    # about the electrons (its 6800 mean over its 2 ADU^2 of high frequencies would say 2e7)
    with mrcfile.open(str(MICROGRAPH), permissive=True) as mrc:
        measured = spatial_transfer(mrc.data)
    assert measured['adu_per_electron'] is None
    assert measured['scales'][1] > 1.5 and 'the noise is not white' in measured['reason']


def test_white_noise_gives_its_variance_per_unit_mean_at_every_scale():
    rng = np.random.default_rng(0)
    smooth = 50 + 20 * np.sin(np.linspace(0, 3, 512))[:, None]   # a ramp the filter ignores
    image = 7.0 * rng.poisson(smooth * np.ones((512, 512)))      # 7 ADU per electron
    measured = spatial_transfer(image)
    assert measured['adu_per_electron'] == pytest.approx(7.0, rel=0.03)
    assert all(abs(s - 1) < 0.1 for s in measured['scales'])
