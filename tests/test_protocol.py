"""GainProtMovieGain in a real Scipion project (pytest, no display).

Movies are simulated (256 x 256, 12 frames, counting) through a detector gain
strong enough (std about 0.1) that the paper's flags separate a right gain
reference from a wrong one. Each protocol run takes seconds: pyworkflow's
executor waits about 3 s between steps. The streaming and resume tests are
marked ``slow`` (tens of seconds each) and are part of ``make test``.
"""
import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from scipion_gain import demo
from scipion_gain.estimator.arrays import resolve_device
from scipion_gain.io import write_mrc
from scipion_gain.simulate import correction_of, simulate_gain, simulate_movie

import pyworkflow.project as pwproj  # noqa: E402  (conftest has set the environment)
from pyworkflow.plugin import Domain
from pwem.protocols import ProtImportMovies

SHAPE = (256, 256)
FRAMES = 12
DOSE = 3.0
GAIN_OPTIONS = dict(sector_spread=0.1, column_spread=0.05, row_spread=0.03, flat_field=0.1)
RUN_TIMEOUT = 300

GainProtMovieGain = Domain.findClass('GainProtMovieGain')


# ------------------------------------------------------------------ helpers
def make_movies(folder, count, gain, first=0, seed=100, specimen=True):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(first, first + count):
        write_movie_file(folder / ('movie_%03d.mrc' % index), gain, seed + index, specimen)
    return folder


def write_movie_file(path, gain, seed, specimen=True):
    """Write under a temporary name, then rename: an importer never sees half a movie."""
    tmp = path.with_name('.tmp_' + path.name)
    simulate_movie(str(tmp), SHAPE, FRAMES, gain, dose=DOSE, rng=seed, specimen=specimen)
    os.replace(tmp, path)


def sha1(path):
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def read_map(path):
    with mrcfile.open(str(path), permissive=True) as mrc:
        return np.array(mrc.data, dtype=np.float64)


@pytest.fixture(scope='module')
def project():
    cwd = os.getcwd()
    proj = pwproj.Manager().createProject('gain_protocol_%d' % int(time.time() * 1000))
    os.chdir(proj.getPath())
    yield proj
    os.chdir(cwd)


@pytest.fixture(scope='module')
def detector():
    return simulate_gain(SHAPE, rng=1, **GAIN_OPTIONS)


@pytest.fixture(scope='module')
def movies(tmp_path_factory, detector):
    # No specimen: at 256 x 256 the simulated particles show through one movie's
    # residual as a column/sector profile of about 1 %, which the noise-aware
    # assessment (tuned at 1024 x 1024) flags in about 1 movie of 3 (measured: 2 of
    # 6 with the specimen, 0 of 6 without). The other tests keep the specimen.
    return make_movies(tmp_path_factory.mktemp('movies'), 4, detector.gain, specimen=False)


def import_movies(project, folder, gain=None, streaming=False, **extra):
    params = dict(filesPath=str(folder), filesPattern='movie_*.mrc', samplingRate=1.0,
                  dataStreaming=streaming, **extra)
    if gain is not None:
        params['gainFile'] = str(gain)
    prot = project.newProtocol(ProtImportMovies, **params)
    project.launchProtocol(prot, wait=not streaming)
    if not streaming:
        assert prot.isFinished(), prot.getErrorMessage()
    return prot


def run_gain(project, imported, wait=True, **params):
    params.setdefault('useGpu', False)
    # every movie (the default, one in 10, is for keeping up with a microscope)
    params.setdefault('movieStep', 1)
    prot = project.newProtocol(GainProtMovieGain, inputMovies=imported.outputMovies, **params)
    project.launchProtocol(prot, wait=wait)
    return prot


def wait_for(condition, timeout=RUN_TIMEOUT, interval=1.0):
    return demo.wait_for(condition, timeout, interval)


def refresh(project, prot):
    project._updateProtocol(prot)
    return prot


def run_file(prot, name):
    return Path(prot._getPath(name))


def stats_of(prot, movie_id):
    return json.loads(Path(prot._getExtraPath('movie_%06d_stats.json' % movie_id)).read_text())


def ids(output):
    return sorted(item.getObjId() for item in output)


def run_log(prot):
    return Path(prot.getStdoutLog()).read_text() + Path(prot.getStderrLog()).read_text()


def parse_monitor_line(line):
    """What the facilities gain monitor (MonitorMovieGain) does with a line."""
    stddev, perc25, perc975, max_value = map(float, line.split()[1:])
    return line.split()[0], stddev, perc975 / perc25, max_value / perc975


# ------------------------------------------------------------------ plugin
def test_the_plugin_is_registered_with_its_protocol():
    plugins = Domain.getPlugins()
    assert 'scipion_gain' in plugins
    plugin = plugins['scipion_gain']._pluginInstance
    assert plugin.getName() == 'scipion_gain'
    assert Path(plugin.getPath(), 'protocols.conf').exists()
    assert 'GainProtMovieGain' in Domain.getProtocols()
    assert GainProtMovieGain._label == 'movie gain'
    conf = Path(plugin.getPath(), 'protocols.conf').read_text()
    assert '"Movies"' in conf and 'GainProtMovieGain' in conf


def test_the_defaults_that_keep_up_are_the_ones_the_readme_gives():
    # README "In Scipion" states them on one line: ``name`` = value, ...
    readme = (Path(__file__).resolve().parents[1] / 'README.rst').read_text()
    line = next(text for text in readme.splitlines() if text.startswith('Defaults: ``movieStep``'))
    stated = {name: int(value) for name, value in re.findall(r'``(\w+)`` = (\d+)', line)}
    prot = GainProtMovieGain()
    assert stated == {'movieStep': prot.movieStep.get(),
                      'framesPerMovie': prot.framesPerMovie.get(),
                      'frameStep': prot.frameStep.get()}
    assert stated == {'movieStep': 10, 'framesPerMovie': 20, 'frameStep': 0}
    # and the form's help says the same numbers
    assert 'The default, 10, keeps up' in prot.getParam('movieStep').help.get()
    assert prot._frameSelection() == (1, 20)  # the count decides, no frame step


# ------------------------------------------------------------------ batch, residual mode
@pytest.fixture(scope='module')
def right_gain_run(project, movies, detector, tmp_path_factory):
    gain_file = tmp_path_factory.mktemp('gain') / 'gain.mrc'
    write_mrc(str(gain_file), detector.correction)
    before = sha1(gain_file)
    imported = import_movies(project, movies, gain=gain_file)
    prot = run_gain(project, imported, movieStep=2)
    return prot, gain_file, before


def test_batch_with_the_right_gain_analyses_step_first_and_last_and_flags_nothing(right_gain_run):
    prot, gain_file, before = right_gain_run
    assert prot.isFinished(), prot.getErrorMessage()
    # movieStep 2 over 4 movies: positions 0 and 2, and the last one of the closed set
    assert ids(prot.estimatedGains) == [1, 3, 4]
    assert ids(prot.residualGains) == [1, 3, 4]
    assert ids(prot.outputMovies) == [1, 2, 3, 4]
    for output in (prot.estimatedGains, prot.residualGains, prot.outputMovies):
        assert output.isStreamClosed()
    for item in prot.residualGains:
        assert item._gainFlagged.get() is False
        assert item._verdictFlagged.get() is False and item._verdictReasons.get() == 'ok'
        assert 0.0 < item._gainStd.get() < 0.04
        assert item._gainP025.get() < 1 < item._gainP975.get()
        assert item._gainMin.get() <= item._gainP025.get() and item._gainMax.get() >= item._gainP975.get()
        assert item._gainMean.get() == pytest.approx(1, abs=1e-3)
        residual = read_map(item.getFileName())
        assert residual.shape == SHAPE and np.isfinite(residual).all()
        assert residual.std() == pytest.approx(item._gainStd.get(), rel=0.05)
    # the gain attached to the output is the user's (already mean 1), never rewritten
    assert os.path.samefile(prot.outputMovies.getGain(), gain_file)
    assert sha1(gain_file) == before
    assert not run_file(prot, 'warnings.txt').exists()


def test_a_right_gain_is_not_structure_flagged_and_its_orientation_left_alone(right_gain_run):
    prot, gain_file, before = right_gain_run
    for output in (prot.residualGains, prot.estimatedGains):  # the movie's assessment on both
        for item in output:
            assert item._structureFlagged.get() is False
            # the per-pixel noise of the corrected sum: shot noise of 12 frames x 3 e/px
            assert item._noiseStd.get() == pytest.approx(1 / np.sqrt(FRAMES * DOSE), rel=0.2)
            assert 0 <= item._structureColumns.get() < 0.004
            assert item._structureRows.get() >= 0 and item._structureSectors.get() >= 0
            assert stats_of(prot, item.getObjId())['assessment']['flagged'] is False
    summary = run_file(prot, 'summary.txt').read_text().splitlines()
    assert all(' verdict=ok dqe_loss=' in line and ' noise=' in line for line in summary)
    assert all(line.index('97.5%=') < line.index(' verdict=') for line in summary)
    accumulated = json.loads(Path(prot._getExtraPath('accumulated_stats.json')).read_text())
    assert accumulated['assessment']['flagged'] is False
    assert accumulated['assessment']['noise']['source'] == 'spread between bands'
    # orientation: "as stored", or no confident match; never a change to a right gain
    decision = json.loads(Path(prot._getExtraPath('orientation.json')).read_text())
    orientation = decision['orientation']
    assert decision['oriented'] is None
    assert not orientation['confident'] or (orientation['transform']['rotation'] == 0
                                            and orientation['transform']['flip'] == 0
                                            and orientation['inverted'] is False)
    assert not Path(prot._getExtraPath('oriented_gain.mrc')).exists()
    assert not hasattr(prot, 'orientedGain')
    assert 'Gain orientation (3 movies' in run_log(prot)


def test_estimated_gain_in_residual_mode_is_the_movies_gain_times_the_residual(right_gain_run, detector):
    prot = right_gain_run[0]
    for item in prot.estimatedGains:
        estimate = read_map(item.getFileName())
        residual = read_map(prot._getExtraPath('movie_%06d_gain.mrc' % item.getObjId()))
        expected = detector.correction * residual
        assert np.allclose(estimate, expected / expected.mean(), atol=1e-4)
        assert estimate.mean() == pytest.approx(1, abs=1e-4)


def test_summaries_have_the_xmipp_formats(right_gain_run):
    prot = right_gain_run[0]
    summary = run_file(prot, 'summary.txt').read_text().splitlines()
    monitor = run_file(prot, 'summaryForMonitor.txt').read_text().splitlines()
    assert len(summary) == len(monitor) == 3
    for line, movie_id in zip(monitor, [1, 3, 4]):
        label, std, p025, p975, maximum = line.split()
        assert label == 'movie_%06d_residual:' % movie_id
        s = stats_of(prot, movie_id)['statistics']
        assert float(std) == pytest.approx(s['std'], abs=1e-6)
        assert float(p025) == pytest.approx(s['p2.5'], abs=1e-6)
        assert float(p975) == pytest.approx(s['p97.5'], abs=1e-6)
        assert float(maximum) == pytest.approx(s['max'], abs=1e-6)
    assert summary[0].startswith('movie_000001_residual: mean=')
    for key in ('std=', '[min=', ',max=', '2.5%=', '25%=', '50%=', '75%=', '97.5%='):
        assert key in summary[0]


def test_stats_json_follows_the_run_folder_contract(right_gain_run):
    prot = right_gain_run[0]
    report = stats_of(prot, 3)
    assert report['movie_id'] == 3 and report['movie_index'] == 2
    assert report['kind'] == 'residual'
    assert report['movie_file'].endswith('movie_002.mrc')
    assert set(report['flags']) == {'std', 'percentile_ratio', 'max_ratio'}
    accumulated = json.loads(Path(prot._getExtraPath('accumulated_stats.json')).read_text())
    assert accumulated['movies'] == sorted(accumulated['movies']) and len(accumulated['movies']) == 3
    assert Path(prot._getExtraPath('accumulated_gain.mrc')).exists()


def test_the_facilities_monitor_parser_reads_our_summary(right_gain_run, wrong_gain_run):
    for prot, flagged in ((right_gain_run[0], False), (wrong_gain_run[0], True)):
        lines = run_file(prot, 'summaryForMonitor.txt').read_text().splitlines()
        label, stddev, ratio1, ratio2 = parse_monitor_line(lines[-1])  # the monitor checks the last line
        assert label.endswith('_residual:')
        alarm = stddev > 0.04 or ratio1 > 1.15 or ratio2 > 4.5
        assert alarm is flagged
        movie_id = int(label[len('movie_'):len('movie_') + 6])
        assert stats_of(prot, movie_id)['flagged'] is flagged


# ------------------------------------------------------------------ wrong gain
@pytest.fixture(scope='module')
def wrong_gain_run(project, movies, detector, tmp_path_factory):
    # A classic mistake: the detector's response (counts) given where a correction
    # is expected, and not scaled to mean 1 either.
    # Stored upside down as well, which the gainTransform option undoes (4: FlipGain 1).
    gain_file = tmp_path_factory.mktemp('wrong') / 'wrong_gain.mrc'
    wrong = 3.0 * correction_of(1.0 / np.maximum(detector.gain, 1e-3))
    write_mrc(str(gain_file), np.ascontiguousarray(wrong[::-1]))
    before = sha1(gain_file)
    imported = import_movies(project, movies, gain=gain_file)
    # the orientation check would find the inversion (test_protocol_checks.py): off here,
    # where the paper's flags are under test
    prot = run_gain(project, imported, gainTransform=4, estimateOrientation=False)
    return prot, gain_file, before


def test_a_wrong_gain_is_flagged_for_every_movie(wrong_gain_run):
    prot, gain_file, before = wrong_gain_run
    assert prot.isFinished(), prot.getErrorMessage()
    assert ids(prot.residualGains) == [1, 2, 3, 4]
    for item in prot.residualGains:
        assert item._gainFlagged.get() is True
        assert item._gainFlagStd.get() is True
    warnings = run_file(prot, 'warnings.txt').read_text().splitlines()
    # one line per movie: the verdict, then the paper's flags that fired
    flags = [line for line in warnings if 'residual gain flagged' in line]
    assert [line.split(':')[0] for line in flags] == ['movie_%06d' % i for i in (1, 2, 3, 4)]
    assert all("paper's flags: std" in line and 'DQE' in line for line in flags)
    assert all(item._verdictFlagged.get() is True for item in prot.residualGains)
    assert all(item._dqeLoss.get() > 0.1 for item in prot.residualGains)
    log = run_log(prot)
    assert log.count('residual gain flagged') >= 4


def test_a_gain_that_needs_scaling_is_copied_never_rewritten(wrong_gain_run):
    prot, gain_file, before = wrong_gain_run
    assert sha1(gain_file) == before
    copy = Path(prot._getExtraPath('gain_reference.mrc'))
    assert copy.exists()
    assert os.path.samefile(prot.outputMovies.getGain(), copy)
    used = read_map(copy)
    assert used.mean() == pytest.approx(1, abs=1e-4)
    stored = read_map(gain_file)
    assert np.allclose(used, stored[::-1] / stored.mean(), atol=1e-5)  # flipped back, mean 1


# ------------------------------------------------------------------ no gain
def test_movies_without_gain_get_the_estimate_attached(project, movies, detector):
    imported = import_movies(project, movies)
    assert not imported.outputMovies.getGain()
    prot = run_gain(project, imported, accumulate=False, useGpu=True)
    assert prot.isFinished(), prot.getErrorMessage()  # validation does not fail
    if not resolve_device('auto').is_gpu:  # asked for a GPU, none here: CPU, with a warning
        assert 'GPU requested but not usable' in run_log(prot)
        assert stats_of(prot, 1)['device'] == 'cpu'
    assert ids(prot.estimatedGains) == [1, 2, 3, 4]
    assert not hasattr(prot, 'residualGains')
    attached = Path(prot.outputMovies.getGain())
    assert attached == Path(prot._getExtraPath('estimated_gain.mrc')).resolve()
    estimate = read_map(attached)
    assert estimate.mean() == pytest.approx(1, abs=1e-4)
    # the estimate follows the detector's correction (one SME pass recovers it partly)
    r2 = np.corrcoef(estimate.ravel(), detector.correction.ravel())[0, 1] ** 2
    assert r2 > 0.5
    labels = [line.split(':')[0] for line in
              run_file(prot, 'summaryForMonitor.txt').read_text().splitlines()]
    assert labels == ['movie_%06d_gain' % i for i in (1, 2, 3, 4)]
    assert not Path(prot._getExtraPath('accumulated_gain.mrc')).exists()


def test_frames_used_per_movie_is_honoured_and_a_frame_step_replaces_it(project, movies):
    # 12 frames per movie: a count of 4 uses every 3rd frame (0, 3, 6, 9); a frame step, as
    # old runs (their stored frameStep, 1 before the count existed) and Xmipp workflows hold
    # one, replaces the count: 5 uses frames 0, 5, 10
    assert GainProtMovieGain(frameStep=1)._frameSelection() == (1, 0)
    imported = import_movies(project, movies)
    counted = run_gain(project, imported, framesPerMovie=4, movieStep=4, accumulate=False)
    stepped = run_gain(project, imported, framesPerMovie=4, frameStep=5, movieStep=4,
                       accumulate=False)
    for prot, frames, settings in ((counted, 4, (1, 4)), (stepped, 3, (5, 0))):
        assert prot.isFinished(), prot.getErrorMessage()
        assert ids(prot.estimatedGains) == [1, 4]
        for movie_id in (1, 4):
            stats = stats_of(prot, movie_id)
            assert stats['frames'] == frames
            assert (stats['settings']['frame_step'], stats['settings']['frames_per_movie']) \
                == settings
    # the Methods text says the frames the movies gave, not only what was asked for
    assert '4 frames of each movie, evenly spaced over it' in counted._methods()[0]
    assert 'at least 4 frames' not in counted._methods()[0]
    assert 'every 5th frame (3 frames per movie)' in stepped._methods()[0]


# ------------------------------------------------------------------ corrupt movie
def test_a_corrupt_movie_is_reported_and_the_others_go_on(project, detector, tmp_path):
    folder = make_movies(tmp_path / 'movies', 3, detector.gain, seed=300)
    imported = import_movies(project, folder)
    # the file breaks after the import (a disk or transfer problem)
    with open(folder / 'movie_001.mrc', 'r+b') as handle:
        handle.truncate(2048)
    prot = run_gain(project, imported)
    assert prot.isFinished(), prot.getErrorMessage()
    assert ids(prot.estimatedGains) == [1, 3]
    assert ids(prot.outputMovies) == [1, 3]
    warnings = run_file(prot, 'warnings.txt').read_text()
    assert 'movie_000002: could not be analysed' in warnings
    # named by the user's file (not the import's link to it) and what is wrong with it
    assert str((folder / 'movie_001.mrc').resolve()) in warnings
    assert 'ProtImportMovies' not in warnings and 'truncated: 0 of' in warnings
    assert 'could not be analysed' in run_log(prot)
    assert any('could not be read' in line for line in prot.summary())


# ------------------------------------------------------------------ streaming
@pytest.mark.slow
def test_streaming_output_grows_and_closes_with_the_input(project, detector, tmp_path):
    folder = tmp_path / 'stream'
    make_movies(folder, 1, detector.gain, seed=500)
    imported = import_movies(project, folder, streaming=True, timeout='5m', fileTimeout='1')
    assert wait_for(lambda: refresh(project, imported).hasAttribute('outputMovies'), 120)
    prot = run_gain(project, imported, wait=False, movieStep=2)
    sizes = []

    def produce():
        for index in range(1, 4):  # three more movies, one every ~3 s
            time.sleep(3)
            write_movie_file(folder / ('movie_%03d.mrc' % index), detector.gain, 500 + index)

    producer = threading.Thread(target=produce)
    producer.start()

    def estimated_size():
        refresh(project, prot)
        output = getattr(prot, 'estimatedGains', None)
        if output is not None:
            sizes.append((output.getSize(), output.isStreamOpen()))
        return prot.isFinished() or prot.isFailed()

    # the output appears while the input is still open
    assert wait_for(lambda: estimated_size() or any(open_ for _, open_ in sizes), 120)
    producer.join()
    assert wait_for(lambda: refresh(project, imported).outputMovies.getSize() == 4, 120)
    Path(imported._getExtraPath('STOP_STREAMING.TXT')).touch()  # the session ends
    assert wait_for(estimated_size, RUN_TIMEOUT)
    assert prot.isFinished(), prot.getErrorMessage()
    assert any(open_ for _, open_ in sizes)
    # movieStep 2 over 4 movies: positions 0 and 2 as they came, then the last
    # one (skipped while the input was open) once the input closed
    assert ids(prot.estimatedGains) == [1, 3, 4]
    assert ids(prot.outputMovies) == [1, 2, 3, 4]
    assert prot.estimatedGains.isStreamClosed() and prot.outputMovies.isStreamClosed()


# ------------------------------------------------------------------ resume
@pytest.mark.slow
def test_a_stopped_run_resumes_without_redoing_finished_movies(project, detector, tmp_path):
    folder = make_movies(tmp_path / 'movies', 6, detector.gain, seed=700)
    imported = import_movies(project, folder)
    prot = run_gain(project, imported, wait=False)
    first = Path(prot._getExtraPath('movie_000001_stats.json'))
    second = Path(prot._getExtraPath('movie_000002_stats.json'))
    assert wait_for(lambda: second.exists(), 120)
    project.stopProtocol(prot)
    done_before = {p.name: p.stat().st_mtime_ns for p in Path(prot._getExtraPath()).glob('movie_*_stats.json')}
    assert first.name in done_before

    project.launchProtocol(prot, wait=True)
    refresh(project, prot)
    assert prot.isFinished(), prot.getErrorMessage()
    assert ids(prot.estimatedGains) == [1, 2, 3, 4, 5, 6]
    assert ids(prot.outputMovies) == [1, 2, 3, 4, 5, 6]
    for name, mtime in done_before.items():  # finished movies were not redone
        assert Path(prot._getExtraPath(name)).stat().st_mtime_ns == mtime
    monitor = run_file(prot, 'summaryForMonitor.txt').read_text().splitlines()
    labels = [line.split(':')[0] for line in monitor]
    assert sorted(labels) == ['movie_%06d_gain' % i for i in range(1, 7)]
    accumulated = json.loads(Path(prot._getExtraPath('accumulated_stats.json')).read_text())
    assert sorted(accumulated['movies']) == [1, 2, 3, 4, 5, 6]  # none lost, none twice


# ------------------------------------------------------------------ TIFF movies
def test_tiff_movies_with_an_mrc_gain(project, detector, tmp_path):
    import tifffile
    from scipion_gain.simulate import simulate_frames
    folder = tmp_path / 'tiff'
    folder.mkdir()
    for index in range(2):
        frames = np.stack(list(simulate_frames(SHAPE, FRAMES, detector.gain, dose=DOSE,
                                               rng=900 + index)))
        tifffile.imwrite(str(folder / ('movie_%03d.tif' % index)), frames.astype(np.uint8),
                         compression='lzw')
    gain_file = tmp_path / 'gain.mrc'
    write_mrc(str(gain_file), detector.correction)
    params = dict(filesPath=str(folder), filesPattern='movie_*.tif', samplingRate=1.0,
                  gainFile=str(gain_file))
    imported = project.newProtocol(ProtImportMovies, **params)
    project.launchProtocol(imported, wait=True)
    assert imported.isFinished(), imported.getErrorMessage()
    prot = run_gain(project, imported)
    assert prot.isFinished(), prot.getErrorMessage()
    assert ids(prot.residualGains) == [1, 2]
    assert not any(item._gainFlagged.get() for item in prot.residualGains)
    # TIFF movies with an MRC gain: the log says how RELION/Xmipp would differ
    assert 'read .tif files upside down and .mrc files as stored' in run_log(prot)
