"""How GainProtMovieGain schedules its movies and asks a queue for resources.

Without a batch system: the number of workers, the queue variables a submission
would get (no GPU for a CPU run, one core, one GPU and a movie's memory per job,
a queue name when none was chosen), and the warning when analysis falls behind
acquisition. The runs through a real SLURM are tests/test_slurm.py.
"""
import os
import time
from pathlib import Path

import pytest

from scipion_gain import movie_job
from scipion_gain.simulate import simulate_gain, simulate_movie
from scipion_gain.run_folder.logs import run_summary_lines

import pyworkflow.project as pwproj  # noqa: E402  (conftest has set the environment)
from pyworkflow.plugin import Domain
from pwem.protocols import ProtImportMovies

GainProtMovieGain = Domain.findClass('GainProtMovieGain')
SHAPE = (256, 192)


class Movie:
    def __init__(self, movie_id):
        self.movie_id = movie_id

    def getObjId(self):
        return self.movie_id


@pytest.fixture(scope='module')
def project():
    cwd = os.getcwd()
    proj = pwproj.Manager().createProject('gain_scheduling_%d' % int(time.time() * 1000))
    os.chdir(proj.getPath())
    yield proj
    os.chdir(cwd)


@pytest.fixture(scope='module')
def imported(project, tmp_path_factory):
    folder = tmp_path_factory.mktemp('scheduling_movies')
    detector = simulate_gain(SHAPE, rng=1)
    simulate_movie(str(folder / 'movie_0.mrc'), SHAPE, 2, detector.gain, rng=1, specimen=False)
    prot = project.newProtocol(ProtImportMovies, filesPath=str(folder),
                               filesPattern='movie_*.mrc', samplingRate=1.0)
    project.launchProtocol(prot, wait=True)
    assert prot.isFinished(), prot.getErrorMessage()
    return prot


def submit_dict(project, imported, queue, **params):
    prot = project.newProtocol(GainProtMovieGain, inputMovies=imported.outputMovies, **params)
    prot.setHostConfig(project.getHostConfig(prot.getHostName()))
    prot._useQueue.set(True)
    prot.setQueueParams(['', dict(queue)])  # no queue chosen, as with SCIPION_USE_QUEUE
    return prot, prot.getSubmitDict()


def test_a_job_per_movie_asks_for_one_core_a_movie_s_memory_and_a_gpu_only_on_gpu_runs(
        project, imported):
    one_movie = movie_job.job_memory_mb(*SHAPE[::-1])
    prot, cpu = submit_dict(project, imported, {'QUEUE_FOR_JOBS': 'Y', 'JOB_MEMORY': '64'},
                            useGpu=False, gpuList='0 1', numberOfThreads=5)
    assert prot.getGpuList() == [0, 1]  # what pyworkflow would count without the protocol
    assert cpu['GPU_COUNT'] == 0 and cpu['JOB_THREADS'] == 1 and cpu['JOB_CORES'] == 1
    assert cpu['JOB_MEMORY'] == str(one_movie)   # 64 MB was too little for a movie
    assert cpu['JOB_QUEUE'] == 'debug'          # the first queue of hosts.conf
    assert prot._workerCount() == 4             # jobs at once: threads - 1
    prot, gpu = submit_dict(project, imported, {'QUEUE_FOR_JOBS': 'Y', 'JOB_MEMORY': '99999'},
                            useGpu=True, gpuList='0', numberOfThreads=5)
    assert gpu['GPU_COUNT'] == 1 and gpu['JOB_MEMORY'] == '99999'  # enough: left alone
    assert prot._workerCount() == 4             # the queue grants the GPUs, not gpuList
    assert prot._jobDevice() == 'gpu:0'         # the one GPU its batch job was granted


def test_the_whole_protocol_as_one_job_asks_for_its_workers_movies_and_the_running_sums(
        project, imported):
    prot, submit = submit_dict(project, imported, {'QUEUE_FOR_JOBS': 'N'},
                               useGpu=True, gpuList='0 1 2', numberOfThreads=3)
    assert submit['GPU_COUNT'] == 3 and submit['JOB_THREADS'] == 3
    assert prot._workerCount() == 2
    running_sums = 4 * 8 * SHAPE[0] * SHAPE[1] / 2 ** 20 + 256
    assert int(submit['JOB_MEMORY']) >= 2 * movie_job.job_memory_mb(*SHAPE) + running_sums
    prot, submit = submit_dict(project, imported, {'QUEUE_FOR_JOBS': 'N'},
                               useGpu=False, gpuList='0 1 2', numberOfThreads=3)
    assert submit['GPU_COUNT'] == 0


def test_workers_follow_threads_and_gpu_slots():
    prot = GainProtMovieGain(numberOfThreads=4, useGpu=False)
    assert prot._workerCount() == 3
    prot = GainProtMovieGain(numberOfThreads=4, useGpu=True, gpuList='0 1')
    assert prot._workerCount() == 2             # one movie per GPU slot
    prot = GainProtMovieGain(numberOfThreads=1, useGpu=False)
    assert prot._workerCount() == 1             # the main thread's worker


def test_falling_behind_acquisition_is_said_in_the_log_and_the_summary(tmp_path, monkeypatch):
    prot = GainProtMovieGain(numberOfThreads=2)
    prot.setWorkingDir(str(tmp_path))
    os.makedirs(prot._getExtraPath())
    said = []
    monkeypatch.setattr(prot, 'warning', lambda text: said.append(('warning', text)))
    monkeypatch.setattr(prot, 'info', lambda text: said.append(('info', text)))
    now = time.time()
    for movie_id in (5, 6, 7):
        prot._waiting.append(Movie(movie_id))
        prot._arrivals[movie_id] = now - 200 + movie_id
    prot._finishedTimes.extend([(now - 10, 2.0)] * 3)
    prot._checkBacklog(finished=False)
    assert [kind for kind, _ in said] == ['warning']
    assert said[0][1].startswith('Analysis is behind acquisition: 3 movies waiting, the oldest '
                                 'for 195 s; analysing about 1800 movies/h (1 at once, 2.0 s '
                                 'each)')
    lines = run_summary_lines(prot._runFolder())
    assert len(lines) == 1 and lines[0].startswith('Behind acquisition since ')
    assert '3 movies waiting, the oldest for 195 s' in lines[0]
    prot._checkBacklog(finished=False)  # still behind: said once
    assert len(said) == 1
    prot._waiting.clear()
    prot._checkBacklog(finished=False)
    assert said[-1][0] == 'info' and said[-1][1].startswith(
        'Analysis caught up with acquisition (behind since ')
    assert run_summary_lines(prot._runFolder()) == [
        'Fell behind acquisition 1 time(s), at most 3 movies waiting; caught up.']


def test_movies_waiting_briefly_are_not_behind(tmp_path, monkeypatch):
    prot = GainProtMovieGain(numberOfThreads=2)
    prot.setWorkingDir(str(tmp_path))
    os.makedirs(prot._getExtraPath())
    said = []
    monkeypatch.setattr(prot, 'warning', lambda text: said.append(text))
    prot._waiting.extend(Movie(i) for i in range(1, 20))
    prot._arrivals.update({i: time.time() - 30 for i in range(1, 20)})
    prot._checkBacklog(finished=False)
    assert said == [] and not Path(prot._getExtraPath('backlog.json')).exists()


def test_with_one_thread_the_main_loop_s_worker_also_updates_the_outputs(project, imported):
    prot = project.newProtocol(GainProtMovieGain, inputMovies=imported.outputMovies,
                               useGpu=False, numberOfThreads=1)
    project.launchProtocol(prot, wait=True)
    assert prot.isFinished(), prot.getErrorMessage()
    assert [item.getObjId() for item in prot.estimatedGains] == [1]
    assert prot.estimatedGains.isStreamClosed() and prot.outputMovies.getSize() == 1
    assert Path(prot._getPath('summaryForMonitor.txt')).read_text().startswith('movie_000001_gain:')
