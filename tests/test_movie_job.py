"""One movie of the protocol as a job (scipion_gain.movie_job, ``scipion-gain movie-job``).

The per-movie work of the movie gain protocol runs the same
in a thread, as a local command or as a batch job, and writes exactly the
result files the protocol reads (the running estimate's sums among them).
A movie that cannot be judged fails with its reason, naming
the user's file, and leaves nothing else behind.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from scipion_gain import movie_job
from scipion_gain.estimator import EstimatorSettings, GainAccumulator, Thresholds
from scipion_gain.estimator.analysis import AnalysisSettings, analyse
from scipion_gain.estimator.verdict import VerdictSettings
from scipion_gain.io import read_gain_reference, write_mrc
from scipion_gain.simulate import simulate_frames, simulate_gain

SHAPE = (128, 128)
FRAMES = 8
ROLES = {'gain': 'gain.mrc', 'json': 'stats.json', 'defect_labels': 'defects.mrc',
         'defect_file': 'defects.txt', 'structure': 'structure.mrc',
         'corrected_sum': 'sum.mrc', 'corrected_gain': 'corrected_gain.mrc',
         'sums': 'sums.npz', 'failed': 'failed.txt'}


@pytest.fixture(scope='module')
def session(tmp_path_factory):
    """Three movies of one detector (the second with an 8 x 8 NaN patch in one frame),
    one of NaN frames, the user's files behind links (as an import makes them)."""
    folder = tmp_path_factory.mktemp('session')
    detector = simulate_gain(SHAPE, rng=4, sector_spread=0.05, column_spread=0.03)
    write_mrc(str(folder / 'gain.mrc'), detector.correction)
    movies = {}
    for index in range(3):
        frames = np.stack(list(simulate_frames(SHAPE, FRAMES, detector.gain, dose=3.0,
                                               rng=50 + index))).astype(np.float32)
        if index == 1:
            frames[2, 60:68, 60:68] = np.nan
        movies[index] = write_movie(folder, 'movie_%d.mrc' % index, frames)
    movies['nan'] = write_movie(folder, 'movie_nan.mrc',
                                np.full((FRAMES,) + SHAPE, np.nan, np.float32))
    return folder, movies


def write_movie(folder, name, frames):
    user = folder / 'user' / name
    user.parent.mkdir(exist_ok=True)
    with mrcfile.new(str(user), overwrite=True) as mrc:
        mrc.set_data(frames)
    link = folder / 'import' / name  # the import protocol's link to the user's file
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(user)
    return link


def settings():
    return AnalysisSettings(estimator=EstimatorSettings(sigma=1.0),
                            thresholds=Thresholds(std=0.05),
                            verdict=VerdictSettings(max_dqe_loss=0.002))


def job_for(folder, movie, out, movie_id=7, reference=True):
    out.mkdir(parents=True, exist_ok=True)
    outputs = {role: str(out / name) for role, name in ROLES.items()}
    if not reference:
        outputs.pop('corrected_gain')
    return movie_job.make_job(movie_id, str(movie), os.path.realpath(movie), settings(),
                              outputs, position=movie_id - 1,
                              reference=str(folder / 'gain.mrc') if reference else None,
                              reference_reader='gain_reference', reference_kind='as given')


def scipion_gain(*args):
    env = dict(os.environ, PYTHONPATH=str(Path(movie_job.__file__).parents[1]))
    return subprocess.run([sys.executable, '-m', 'scipion_gain.cli', *args], env=env,
                          capture_output=True, text=True, timeout=300)


def read_map(path):
    with mrcfile.open(str(path), permissive=True) as mrc:
        return np.array(mrc.data)


def comparable(report):
    """A stats report without what differs between two runs of the same job."""
    return {k: v for k, v in report.items() if k not in ('seconds', 'job')}


def test_settings_survive_the_job_file():
    original = settings()
    again = movie_job.settings_from_json(json.loads(json.dumps(
        movie_job.settings_to_json(original))))
    assert again == original
    assert isinstance(again.estimator.sigma_grid, tuple)


def test_a_job_writes_the_files_the_protocol_reads(session, tmp_path):
    folder, movies = session
    job = job_for(folder, movies[0], tmp_path)
    report = movie_job.run_job(job)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(name for role, name in ROLES.items() if role != 'failed')
    stats = json.loads((tmp_path / 'stats.json').read_text())
    assert stats == json.loads(json.dumps(report))
    assert stats['movie_id'] == 7 and stats['movie_index'] == 6
    assert stats['movie_file'] == os.path.realpath(movies[0])       # the user's file
    assert stats['gain_reference'] == 'as given' and stats['kind'] == 'residual'
    assert stats['job']['device'] == 'cpu' and stats['job']['pid'] == os.getpid()
    assert set(stats['corrected_gain']) >= {'statistics', 'flags'}
    # the same analysis as the library's, with the reference as the protocol reads it
    reference = read_gain_reference(str(folder / 'gain.mrc'))[0]
    direct = analyse([str(movies[0])], reference=reference, settings=settings())
    assert np.array_equal(read_map(tmp_path / 'gain.mrc'), direct.gain)
    assert stats['statistics'] == direct.report['statistics']
    # the running estimate's share: one member, the sums of GainAccumulator.add
    sums = GainAccumulator.load(tmp_path / 'sums.npz')
    added = GainAccumulator()
    added.add(direct.result, member=7)
    assert sums.members == [7] and sums.count == 1 and sums.frames == FRAMES
    # (saved before the judging, which then runs without them: the same sums, dose included)
    for name in ('numerator', 'denominator', 'frame_total', 'pixel_level', 'pixel_counts'):
        assert np.array_equal(getattr(sums, name), getattr(added, name)), name
    assert np.array_equal(np.stack(sums.tiles), np.stack(added.tiles))
    assert sums.electrons == added.electrons and sums.weights == added.weights


def test_a_robust_job_saves_the_sums_of_its_analysis(tmp_path):
    # the robust method's sums (Eq. 7's, its frame sum beside them, the pixel term's levels
    # and counts, the movie's line profile) are saved before the judging, which then runs
    # without them: the sums of the analysis's own result added, the same map
    shape = (256, 256)
    detector = simulate_gain(shape, rng=6, column_spread=0.03)
    frames = np.stack(list(simulate_frames(shape, 6, detector.gain, dose=3.0, rng=9)))
    movie = write_movie(tmp_path, 'robust.mrc', frames.astype(np.float32))
    robust = AnalysisSettings(estimator=EstimatorSettings(method='robust'))
    (tmp_path / 'out').mkdir()
    outputs = {role: str(tmp_path / 'out' / name) for role, name in ROLES.items()
               if role != 'corrected_gain'}
    movie_job.run_job(movie_job.make_job(3, str(movie), str(movie), robust, outputs))
    direct = analyse([str(movie)], settings=robust)
    added = GainAccumulator()
    added.add(direct.result, member=3)
    sums = GainAccumulator.load(tmp_path / 'out' / 'sums.npz')
    assert sums.method == 'robust' and sums.frame_total is not None
    assert sums.pixel_level is not None and sums.profiles
    for name in ('numerator', 'denominator', 'frame_total', 'pixel_level', 'pixel_counts'):
        assert np.array_equal(getattr(sums, name), getattr(added, name)), name
    for mine, theirs in zip(sums.profiles[0], added.profiles[0]):
        assert np.array_equal(mine, theirs)
    assert sums.electrons == added.electrons and sums.weights == added.weights == [1.0]
    assert np.array_equal(read_map(tmp_path / 'out' / 'gain.mrc'), direct.gain)


def test_the_command_writes_the_same_files_as_a_thread(session, tmp_path):
    folder, movies = session
    inside = job_for(folder, movies[1], tmp_path / 'thread')
    report = movie_job.run_job(inside)
    job = job_for(folder, movies[1], tmp_path / 'command')
    movie_job.write_job(str(tmp_path / 'job.json'), job)
    done = scipion_gain('movie-job', str(tmp_path / 'job.json'))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('movie 7: residual std=')
    stats = json.loads((tmp_path / 'command' / 'stats.json').read_text())
    threaded = (tmp_path / 'thread' / 'stats.json').read_text()
    assert json.loads(threaded) == json.loads(json.dumps(report))
    same_paths = json.loads(threaded.replace(str(tmp_path / 'thread'), str(tmp_path / 'command')))
    assert comparable(stats) == comparable(same_paths)
    assert stats['job']['pid'] != os.getpid()
    for name in ('gain.mrc', 'defects.mrc', 'structure.mrc', 'sum.mrc', 'corrected_gain.mrc'):
        assert np.array_equal(read_map(tmp_path / 'command' / name),
                              read_map(tmp_path / 'thread' / name)), name
    assert (tmp_path / 'command' / 'defects.txt').read_text() == \
        (tmp_path / 'thread' / 'defects.txt').read_text()
    # the movie with a NaN patch is judged on the rest: its 64 pixels unusable, in no sum
    assert stats['input']['bad_values']['unusable_pixels'] == 64
    sums = GainAccumulator.load(tmp_path / 'command' / 'sums.npz')
    assert (sums.numerator[60:68, 60:68] == 0).all() and (sums.numerator[:60] > 0).mean() > 0.9


def test_a_movie_that_cannot_be_judged_fails_with_its_reason_and_nothing_else(session, tmp_path):
    folder, movies = session
    job = job_for(folder, movies['nan'], tmp_path / 'out')
    with pytest.raises(movie_job.MovieFailed) as failure:
        movie_job.run_job(job)
    assert failure.value.expected
    line = (tmp_path / 'out' / 'failed.txt').read_text()
    assert line.count('\n') == 1 and line == failure.value.message + '\n'
    user = os.path.realpath(movies['nan'])
    assert user in line and str(movies['nan']) not in line  # the user's file, not the link
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['failed.txt']
    # the command: one line, exit status 2
    job = job_for(folder, movies['nan'], tmp_path / 'command')
    movie_job.write_job(str(tmp_path / 'job.json'), job)
    done = scipion_gain('movie-job', str(tmp_path / 'job.json'))
    assert done.returncode == 2
    assert done.stderr.count('\n') == 1
    assert done.stderr.startswith('scipion-gain movie-job: error: movie 7 (%s): ' % user)
    assert sorted(p.name for p in (tmp_path / 'command').iterdir()) == ['failed.txt']


def test_merged_sums_give_the_running_estimate_of_added_results(session, tmp_path):
    folder, movies = session
    merged, added = GainAccumulator(), GainAccumulator()
    for movie_id, index in ((1, 0), (2, 1), (3, 2)):
        job = job_for(folder, movies[index], tmp_path / str(movie_id), movie_id, reference=False)
        movie_job.run_job(job)
        merged.merge(GainAccumulator.load(tmp_path / str(movie_id) / 'sums.npz'))
        added.add(analyse([str(movies[index])], settings=settings()).result, member=movie_id)
    assert merged.members == added.members == [1, 2, 3]
    assert merged.count == added.count == 3 and merged.frames == added.frames
    assert merged.electrons == pytest.approx(added.electrons)
    for name in ('numerator', 'denominator', 'alternate_sum'):
        assert np.array_equal(getattr(merged, name), getattr(added, name))
    assert np.array_equal(merged.correction()[0], added.correction()[0])


def test_an_unusable_gpu_falls_back_to_the_cpu_with_a_note():
    device, note = movie_job.device_for('gpu:0')
    if device == 'gpu:0':
        pytest.skip('a GPU is usable here')
    assert device == 'cpu' and note.startswith('gpu:0 requested but not usable (')
    assert movie_job.device_for('cpu') == ('cpu', None)


def test_job_memory_grows_with_the_frame_not_the_frames():
    small, large = movie_job.job_memory_mb(512, 512), movie_job.job_memory_mb(4096, 4096)
    assert small % 256 == 0 and large % 256 == 0
    assert movie_job.BASE_MB <= small < large
    assert large >= movie_job.BYTES_PER_PIXEL * 4096 * 4096 / 2 ** 20
    # the measured peak of a 4096 x 4096 job (0.84-0.91 GB) and half again, not the 2.5 GB
    # that held a batch node's memory idle; 8192 x 8192: 2.97 GB measured
    assert 1.3 * 914 <= large <= 1536
    assert movie_job.job_memory_mb(8192, 8192) >= 1.3 * 2972


def test_a_job_file_of_another_format_is_refused(tmp_path):
    path = tmp_path / 'job.json'
    path.write_text(json.dumps({'format': 99}))
    done = scipion_gain('movie-job', str(path))
    assert done.returncode == 2
    assert done.stderr.strip() == ('scipion-gain movie-job: error: %s: job file format 99, '
                                   'this version reads 1' % path)
