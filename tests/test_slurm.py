"""GainProtMovieGain through Scipion's queue system on a private single-node SLURM.

The module fixture starts munged, slurmctld and slurmd for one node under a
temporary folder (tests/slurm/start-slurm.sh: no systemd, private munge
socket, free ports, two placeholder GPUs declared as a SLURM gres), and stops
every daemon it started, by PID. Without root or without the Debian packages
slurm-wlm and munge (``.ci/run`` installs them), the tests are skipped and say
why. The protocol runs (a) as one queued job, (b) with one job per movie
(QUEUE_FOR_JOBS=Y), whose outputs must equal a local run's, and (c) with one
job per movie on GPUs: each movie must use the GPU SLURM granted its job;
and (d) ``scipion-gain check --slurm`` submits one job per movie and must give
the per-movie verdicts and the session of ``--jobs 1``.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from scipion_gain import movie_job
from scipion_gain.io import write_mrc
from scipion_gain.simulate import simulate_gain, simulate_movie

import pyworkflow.project as pwproj  # noqa: E402  (conftest has set the environment)
from pyworkflow.plugin import Domain
from pwem.protocols import ProtImportMovies

HERE = Path(__file__).resolve().parent / 'slurm'
SHAPE = (128, 128)
MOVIES = 4
DAEMONS = ('munged', 'slurmctld', 'slurmd')
RUN_TIMEOUT = 300

GainProtMovieGain = Domain.findClass('GainProtMovieGain')


def why_not():
    """Why SLURM cannot run here, or None."""
    if os.geteuid() != 0:
        return 'needs root: the test SLURM runs its daemons as root (SlurmUser=root)'
    missing = [p for p in DAEMONS + ('sbatch', 'squeue', 'scontrol', 'scancel', 'sinfo', 'munge')
               if not shutil.which(p)]
    if missing:
        return ('needs the Debian packages slurm-wlm and munge (.ci/run installs them): '
                'not found: %s' % ', '.join(missing))
    return None


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class Slurm:
    def __init__(self, prefix, pids):
        self.prefix = prefix
        self.pids = pids

    def job(self, job_id):
        """scontrol's description of a job (kept MinJobAge = 300 s after it ended)."""
        return subprocess.run(['scontrol', 'show', 'job', '-d', str(job_id)], check=True,
                              capture_output=True, text=True).stdout

    def state(self, job_id):
        return re.search(r'JobState=(\w+)', self.job(job_id)).group(1)


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    prefix = tmp_path_factory.mktemp('slurm')
    env = dict(os.environ, FAKE_GPUS='2', SLURM_TEST_CPUS='8',
               SLURM_TEST_CTLD_PORT=str(free_port()), SLURM_TEST_SLURMD_PORT=str(free_port()))
    started = subprocess.run(['bash', str(HERE / 'start-slurm.sh'), str(prefix)], env=env,
                             capture_output=True, text=True, timeout=120)
    pids = {}
    for daemon in DAEMONS:
        pidfile = prefix / 'run' / ('%s.pid' % daemon)
        if pidfile.exists():
            pids[daemon] = int(pidfile.read_text().split()[0])
    old = os.environ.get('SLURM_CONF')
    try:
        if started.returncode != 0:
            pytest.skip('SLURM did not start here: %s' % (started.stderr.strip()[-400:]
                                                          or started.stdout.strip()[-400:]))
        assert set(pids) == set(DAEMONS) and all(alive(pid) for pid in pids.values())
        os.environ['SLURM_CONF'] = str(prefix / 'etc' / 'slurm.conf')  # sbatch, squeue, scancel
        yield Slurm(prefix, pids)
    finally:
        subprocess.run(['bash', str(HERE / 'stop-slurm.sh'), str(prefix)], env=env,
                       capture_output=True, timeout=120)
        for daemon, pid in pids.items():  # every daemon we started, by PID
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if old is None:
            os.environ.pop('SLURM_CONF', None)
        else:
            os.environ['SLURM_CONF'] = old
        assert not [d for d, pid in pids.items() if alive(pid)]


@pytest.fixture(scope='module')
def project(slurm):
    cwd = os.getcwd()
    proj = pwproj.Manager().createProject('gain_slurm_%d' % int(time.time() * 1000))
    os.chdir(proj.getPath())  # pyworkflow writes run and job files relative to it
    yield proj
    os.chdir(cwd)


@pytest.fixture(scope='module')
def imported(project, tmp_path_factory):
    folder = tmp_path_factory.mktemp('slurm_movies')
    detector = simulate_gain(SHAPE, rng=1, sector_spread=0.1, column_spread=0.05)
    for index in range(MOVIES):
        simulate_movie(str(folder / ('movie_%d.mrc' % index)), SHAPE, 6, detector.gain,
                       rng=index, specimen=False)
    write_mrc(str(folder / 'gain.mrc'), detector.correction)
    prot = project.newProtocol(ProtImportMovies, filesPath=str(folder),
                               filesPattern='movie_*.mrc', samplingRate=1.0,
                               gainFile=str(folder / 'gain.mrc'))
    project.launchProtocol(prot, wait=True)
    assert prot.isFinished(), prot.getErrorMessage()
    return prot


def gain_run(project, imported, queue=None, **params):
    params = dict(dict(useGpu=False, estimateOrientation=False, numberOfThreads=3, movieStep=1),
                  **params)
    prot = project.newProtocol(GainProtMovieGain, inputMovies=imported.outputMovies, **params)
    if queue is not None:
        prot._useQueue.set(True)
        prot.setQueueParams(['debug', dict({'JOB_MEMORY': '256', 'JOB_TIME': '1'}, **queue)])
    project.launchProtocol(prot, wait=queue is None)
    if queue is not None:
        end = time.time() + RUN_TIMEOUT
        while time.time() < end:
            project._updateProtocol(prot)
            if not prot.isActive():
                break
            time.sleep(1)
    project._updateProtocol(prot)
    assert prot.isFinished(), prot.getErrorMessage()
    return prot


def job_scripts(prot):
    return sorted(Path(prot._getLogsPath()).glob('scipion*.job'))


def sbatch_option(script, name):
    found = re.findall(r'^#SBATCH %s[= ](\S+)' % re.escape(name), script.read_text(), re.M)
    assert len(found) == 1, (name, script)
    return found[0]


def stats(prot, movie_id):
    return json.loads(Path(prot._getExtraPath('movie_%06d_stats.json' % movie_id)).read_text())


def comparable(prot, movie_id):
    """A movie's stats without what differs between two runs of it (time, process, paths)."""
    report = stats(prot, movie_id)
    text = json.dumps({k: v for k, v in report.items() if k not in ('seconds', 'job')})
    return json.loads(text.replace(prot._getPath(), 'RUN'))


def read_map(path):
    with mrcfile.open(str(path), permissive=True) as mrc:
        return np.array(mrc.data)


@pytest.fixture(scope='module')
def local_run(project, imported):
    return gain_run(project, imported)


def test_the_whole_protocol_as_one_queued_job(slurm, project, imported):
    prot = gain_run(project, imported, queue={'QUEUE_FOR_JOBS': 'N'}, numberOfThreads=2)
    scripts = job_scripts(prot)
    assert [s.name for s in scripts] == ['scipion%d.job' % prot.getObjId()]  # one sbatch
    script = scripts[0]
    assert sbatch_option(script, '-p') == 'debug'
    assert sbatch_option(script, '--gres') == 'gpu:0'        # a CPU run asks for no GPU
    assert sbatch_option(script, '--cpus-per-task') == '2'
    needed = movie_job.job_memory_mb(*SHAPE) + 256          # a movie and the running sums
    assert int(sbatch_option(script, '--mem').rstrip('M')) >= needed
    out = Path(prot._getLogsPath('scipion%d.out' % prot.getObjId())).read_text()
    assert out.startswith('job ')
    assert prot.residualGains.getSize() == MOVIES
    assert all('slurm_job_id' in stats(prot, i)['job'] for i in range(1, MOVIES + 1))


def test_one_job_per_movie_gives_the_outputs_of_a_local_run(slurm, project, imported, local_run):
    prot = gain_run(project, imported, queue={'QUEUE_FOR_JOBS': 'Y'})
    scripts = job_scripts(prot)
    assert len(scripts) == MOVIES  # one sbatch per analysed movie, none for the protocol
    for script in scripts:
        assert sbatch_option(script, '--cpus-per-task') == '1'
        assert sbatch_option(script, '--gres') == 'gpu:0'
        assert int(sbatch_option(script, '--mem').rstrip('M')) >= movie_job.job_memory_mb(*SHAPE)
        assert 'movie-job' in script.read_text()
    jobs = {stats(prot, i)['job']['slurm_job_id'] for i in range(1, MOVIES + 1)}
    assert len(jobs) == MOVIES
    assert all(stats(local_run, i)['job'].get('slurm_job_id') is None
               for i in range(1, MOVIES + 1))
    # the same outputs as the local run
    for output in ('estimatedGains', 'residualGains', 'outputMovies'):
        assert sorted(i.getObjId() for i in getattr(prot, output)) == \
            sorted(i.getObjId() for i in getattr(local_run, output))
    for movie_id in range(1, MOVIES + 1):
        assert comparable(prot, movie_id) == comparable(local_run, movie_id)
        for name in ('movie_%06d_gain.mrc', 'movie_%06d_corrected_gain.mrc', 'defects_%06d.mrc'):
            assert np.array_equal(read_map(prot._getExtraPath(name % movie_id)),
                                  read_map(local_run._getExtraPath(name % movie_id)))
    for name in ('summary.txt', 'summaryForMonitor.txt'):
        assert sorted(Path(prot._getPath(name)).read_text().splitlines()) == \
            sorted(Path(local_run._getPath(name)).read_text().splitlines())
    assert np.allclose(read_map(prot._getExtraPath('accumulated_gain.mrc')),
                       read_map(local_run._getExtraPath('accumulated_gain.mrc')),
                       rtol=1e-6, atol=1e-6)


def test_each_movie_job_uses_the_gpu_slurm_granted_it(slurm, project, imported):
    prot = gain_run(project, imported, queue={'QUEUE_FOR_JOBS': 'Y'}, useGpu=True,
                    gpuList='0 1')
    scripts = job_scripts(prot)
    assert len(scripts) == MOVIES
    assert all(sbatch_option(script, '--gres') == 'gpu:1' for script in scripts)
    granted = set()
    for movie_id in range(1, MOVIES + 1):
        job = stats(prot, movie_id)['job']
        # what SLURM allocated the job (SLURM_JOB_GPUS: global ids) is what the job sees
        # (CUDA_VISIBLE_DEVICES), and its movie asked for the first GPU it sees: the one
        # granted (pyworkflow renumbers the worker's slot from 0; the raw gpuList entry
        # of the second slot, gpu:1, would not exist in the job)
        assert re.fullmatch(r'[01]', job['slurm_job_gpus'])
        assert job['cuda_visible_devices'] == job['slurm_job_gpus']
        assert job['device_requested'] == 'gpu:0'
        granted.add(job['slurm_job_gpus'])
        if job['device'] == 'cpu':  # placeholder devices: CuPy finds no GPU there
            assert any(n.startswith('gpu:0 requested but not usable')
                       for n in stats(prot, movie_id)['notes'])
        assert slurm.state(job['slurm_job_id']) == 'COMPLETED'
        assert 'TresPerNode=gres:gpu:1' in slurm.job(job['slurm_job_id'])
    assert granted <= {'0', '1'}


def test_check_with_slurm_gives_the_results_of_one_process(slurm, tmp_path, capsys):
    """`scipion-gain check --slurm`: one sbatch job per movie, its results read back and
    merged in movie-id order: the same per-movie verdicts and statistics and the same
    session as ``--jobs 1``; a movie that cannot be read is that movie's failed entry."""
    from scipion_gain.commands import main
    from scipion_gain.simulate import wrong_reference
    movies = tmp_path / 'movies'
    movies.mkdir()
    detector = simulate_gain(SHAPE, rng=5, sector_spread=0.1, column_spread=0.05)
    for index in range(3):
        simulate_movie(str(movies / ('movie_%d.mrc' % index)), SHAPE, 6, detector.gain,
                       rng=20 + index, specimen=False)
        os.utime(movies / ('movie_%d.mrc' % index), (1.7e9, 1.7e9 + index))
    (movies / 'movie_9_broken.mrc').write_bytes(b'not a movie' * 100)
    os.utime(movies / 'movie_9_broken.mrc', (1.7e9, 1.7e9 + 9))
    reference = tmp_path / 'columns.mrc'
    write_mrc(str(reference), wrong_reference(detector.correction, 'columns', rng=1,
                                              size=0.02).reference)
    results = {}
    for name, options in (('one', []), ('slurm', ['--slurm', '--slurm-args=--time=5'])):
        status = main(['check', str(movies / '*.mrc'), '--gain', str(reference),
                       '-o', str(tmp_path / name), '--frames-per-movie', '0',
                       '--report-interval', '0', '-q'] + options)
        printed = capsys.readouterr()
        results[name] = (status, json.loads((tmp_path / name / 'session.json').read_text()))
        assert status == 1, printed.err
    one, queued = results['one'][1], results['slurm'][1]
    assert [m['state'] for m in queued['movies']][3] == 'failed'
    assert all(m['state'] in ('ok', 'flagged') for m in queued['movies'][:3])
    assert 'movie_9_broken.mrc' in queued['movies'][3]['reason']
    keys = ('id', 'file', 'state', 'verdict', 'statistics', 'ratios', 'paper_flags')
    assert [{k: m.get(k) for k in keys} for m in queued['movies']] == \
        [{k: m.get(k) for k in keys} for m in one['movies']]
    assert queued['session'] == one['session'] and queued['session']['movies'] == [1, 2, 3]
    assert queued['flagged'] == one['flagged']
    assert queued['failed_movies'] == one['failed_movies'] == [4]
    jobs = set()
    for movie_id in (1, 2, 3):
        where = json.loads((tmp_path / 'slurm' / 'extra' /
                            ('movie_%06d_stats.json' % movie_id)).read_text())['job']
        assert slurm.state(where['slurm_job_id']) == 'COMPLETED'
        assert 'TimeLimit=00:05:00' in slurm.job(where['slurm_job_id'])   # --slurm-args
        jobs.add(where['slurm_job_id'])
    assert len(jobs) == 3
    assert all('slurm_job_id' not in json.loads(
        (tmp_path / 'one' / 'extra' / ('movie_%06d_stats.json' % i)).read_text())['job']
        for i in (1, 2, 3))
