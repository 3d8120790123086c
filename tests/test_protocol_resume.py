"""Resuming and failing movies: the protocol's cases, against a real Scipion project.

A set of six movies with two bad ones in the middle: movie 3 is all NaN (it
cannot be judged: failed with its reason, in no output, not in the running
estimate) and movie 4 has an 8 x 8 NaN patch in one frame (judged on the
rest). The protocol is made to fail at each point of its output update in
turn (``SCIPION_GAIN_CRASH_AT``, a test hook: an exception there, as a crash
would; each Continue starts from what the previous crash left), then
continued: every good movie must be exactly once in every output set and in
both summaries, the bad one reported once and nowhere else, and the running
estimate that of the good movies alone.
"""
import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from scipion_gain import movie_job
from scipion_gain.estimator import GainAccumulator
from scipion_gain.estimator.analysis import AnalysisSettings
from scipion_gain.io import write_mrc
from scipion_gain.simulate import simulate_frames, simulate_gain

import pyworkflow.project as pwproj  # noqa: E402  (conftest has set the environment)
from pyworkflow.plugin import Domain
from pwem.protocols import ProtImportMovies

SHAPE = (128, 128)
FRAMES = 6
GOOD = [1, 2, 4, 5, 6]
CRASH_POINTS = ['accumulated sums', 'summary.txt', 'summaries', 'estimatedGains written',
                'gain sets', 'outputMovies written', 'output movies']

GainProtMovieGain = Domain.findClass('GainProtMovieGain')


def _maps_behind_sums(prot):
    merged = GainAccumulator.load(prot._getExtraPath('accumulated_sums.npz')).members
    maps = Path(prot._getExtraPath('running_estimate.json'))
    return bool(merged) and (not maps.exists() or
                             json.loads(maps.read_text())['movies'] != sorted(merged))


def _sqlite_not_registered(fileName, output):
    return lambda prot: (Path(prot._getPath(fileName)).exists()
                         and not prot.hasAttribute(output))


#: what a crash at a point leaves half done (the window the Continue must repair)
LEFT_BEHIND = {
    'accumulated sums': _maps_behind_sums,
    'summary.txt': lambda prot: len(labels(prot._getPath('summary.txt')))
    > len(labels(prot._getPath('summaryForMonitor.txt'))),
    'estimatedGains written': _sqlite_not_registered('estimated_gains.sqlite', 'estimatedGains'),
    'outputMovies written': _sqlite_not_registered('movies.sqlite', 'outputMovies'),
}


@pytest.fixture(scope='module')
def session(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bad_session')
    detector = simulate_gain(SHAPE, rng=8, sector_spread=0.05, column_spread=0.03)
    gain = folder / 'gain.mrc'
    write_mrc(str(gain), detector.correction)
    movies = folder / 'movies'
    movies.mkdir()
    for index in range(6):
        frames = np.stack(list(simulate_frames(SHAPE, FRAMES, detector.gain, dose=3.0,
                                               rng=80 + index))).astype(np.float32)
        if index == 2:
            frames[:] = np.nan                 # movie 3: NaN frames
        if index == 3:
            frames[1, 60:68, 60:68] = np.nan   # movie 4: an 8 x 8 NaN patch
        with mrcfile.new(str(movies / ('movie_%d.mrc' % index))) as mrc:
            mrc.set_data(frames)
    return folder, gain, movies


@pytest.fixture(scope='module')
def project():
    cwd = os.getcwd()
    proj = pwproj.Manager().createProject('gain_resume_%d' % id(session))
    os.chdir(proj.getPath())
    yield proj
    os.chdir(cwd)


@pytest.fixture(scope='module')
def imported(project, session):
    folder, gain, movies = session
    prot = project.newProtocol(ProtImportMovies, filesPath=str(movies),
                               filesPattern='movie_*.mrc', samplingRate=1.0,
                               gainFile=str(gain))
    project.launchProtocol(prot, wait=True)
    assert prot.isFinished(), prot.getErrorMessage()
    return prot


@pytest.fixture(scope='module')
def expected_running_estimate(session, tmp_path_factory):
    """The running estimate of the good movies alone, from the library."""
    folder, gain, movies = session
    out = tmp_path_factory.mktemp('expected')
    accumulator = GainAccumulator()
    for movie_id in GOOD:
        movie = movies / ('movie_%d.mrc' % (movie_id - 1))
        job = movie_job.make_job(movie_id, str(movie), str(movie), AnalysisSettings(),
                                 {'sums': str(out / ('%d.npz' % movie_id))},
                                 reference=str(gain), reference_reader='gain_reference')
        movie_job.run_job(job)
        accumulator.merge(GainAccumulator.load(out / ('%d.npz' % movie_id)))
    return accumulator


def run(project, imported, crash=None):
    prot = project.newProtocol(GainProtMovieGain, inputMovies=imported.outputMovies,
                               useGpu=False, estimateOrientation=False, numberOfThreads=2,
                               movieStep=1)
    if crash:
        os.environ['SCIPION_GAIN_CRASH_AT'] = crash
    try:
        project.launchProtocol(prot, wait=True)
    finally:
        os.environ.pop('SCIPION_GAIN_CRASH_AT', None)
    return prot


def labels(path):
    path = Path(path)
    return [line.split(':')[0] for line in path.read_text().splitlines()] if path.exists() else []


def check_every_good_movie_exactly_once(prot, session, expected):
    folder, gain, movies = session
    assert prot.isFinished(), prot.getErrorMessage()
    for name in ('estimatedGains', 'residualGains', 'outputMovies'):
        output = getattr(prot, name)
        ids = [item.getObjId() for item in output]
        assert ids == GOOD, name
        assert output.getSize() == len(GOOD) and output.isStreamClosed(), name
    for name in ('summary.txt', 'summaryForMonitor.txt'):
        assert labels(prot._getPath(name)) == ['movie_%06d_residual' % i for i in GOOD], name
    # the movie of NaN frames: failed with its reason (the user's file), reported once
    failed = Path(prot._getExtraPath('failed', 'movie_000003.txt')).read_text()
    assert str(movies / 'movie_2.mrc') in failed and failed.count('\n') == 1
    warnings = Path(prot._getPath('warnings.txt')).read_text().splitlines()
    assert [w for w in warnings if w.startswith('movie_000003')] == \
        ['movie_000003: could not be analysed: ' + failed.strip()]
    assert len(warnings) == len(set(warnings))
    assert not Path(prot._getExtraPath('movie_000003_stats.json')).exists()
    assert any('movie_000003: ' in line and str(movies / 'movie_2.mrc') in line
               for line in prot.summary())
    # the movie with a NaN patch: judged on the rest
    patched = json.loads(Path(prot._getExtraPath('movie_000004_stats.json')).read_text())
    assert patched['input']['bad_values']['unusable_pixels'] == 64
    assert patched['defects']['counts']['unusable_pixels'] == 64
    # the running estimate: the good movies', never the bad one's
    accumulated = json.loads(Path(prot._getExtraPath('accumulated_stats.json')).read_text())
    assert sorted(accumulated['movies']) == GOOD
    sums = GainAccumulator.load(prot._getExtraPath('accumulated_sums.npz'))
    assert sorted(sums.members) == GOOD and sums.frames == expected.frames
    assert np.allclose(sums.numerator, expected.numerator, rtol=1e-12, atol=0)
    assert np.allclose(sums.denominator, expected.denominator, rtol=1e-12, atol=0)
    with mrcfile.open(prot._getExtraPath('accumulated_gain.mrc')) as mrc:
        assert np.allclose(mrc.data, expected.correction()[0], rtol=1e-6, atol=1e-6)
    assert not list(Path(prot._getExtraPath()).glob('movie_*_sums.npz'))  # all merged


def test_bad_movies_in_the_middle_of_a_set(project, imported, session, expected_running_estimate):
    prot = run(project, imported)
    check_every_good_movie_exactly_once(prot, session, expected_running_estimate)
    log = Path(prot.getStdoutLog()).read_text() + Path(prot.getStderrLog()).read_text()
    folder, gain, movies = session
    assert 'Movie 3 (%s) could not be analysed' % (movies / 'movie_2.mrc') in log
    assert 'Movie 4: 64 pixel(s) hold NaN or inf in 1 frame(s)' in log  # the notes reach the log
    assert any(line.startswith('Notes on reading 1 movies') and 'movie 4: 64 pixel(s) hold NaN'
               in line for line in prot.summary())                  # and the summary


def test_a_crash_at_each_point_of_an_update_then_continue(project, imported, session,
                                                          expected_running_estimate):
    """One run, failed at each point in turn (in the update's order, so that every
    Continue starts from the state the previous crash left), then continued to the end."""
    prot = None
    for point in CRASH_POINTS:
        if prot is None:
            prot = run(project, imported, crash=point)
        else:
            os.environ['SCIPION_GAIN_CRASH_AT'] = point
            try:
                project.launchProtocol(prot, wait=True)  # Continue
            finally:
                os.environ.pop('SCIPION_GAIN_CRASH_AT', None)
        project._updateProtocol(prot)
        assert prot.isFailed(), 'the crash at %r did not happen' % point
        assert 'injected crash in the output update at: %s' % point in \
            Path(prot.getStdoutLog()).read_text() + Path(prot.getStderrLog()).read_text()
        assert LEFT_BEHIND.get(point, lambda p: True)(prot), 'nothing left behind at %r' % point
    project.launchProtocol(prot, wait=True)  # Continue, no crash
    project._updateProtocol(prot)
    check_every_good_movie_exactly_once(prot, session, expected_running_estimate)
