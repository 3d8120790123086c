"""How the movie gain protocol runs its movies, a mixin of GainProtMovieGain.

Every movie runs the one per-movie path, ``movie_job.run_job``: in a worker
thread of this process, or as the command ``scipion-gain movie-job`` through
runJob (``movie_job.run_as_command``; one batch job per movie with
QUEUE_FOR_JOBS=Y, or a local process with ``movieProcesses``). Its result
files are all the protocol reads afterwards. This module holds the Scipion
side of it: the job's reference and device, GPU slots, the queue's variables.
"""
import os
import threading
import traceback

from pwem.protocols import ProtProcessMovies
from pyworkflow.constants import QUEUE_FOR_JOBS

from .. import movie_job
from ..estimator.verdict import verdict_of
from ..run_folder.logs import offset_message, verdict_message


class MovieExecution:
    """Mixin: needs the protocol's inputMovies, numberOfThreads, movieProcesses, the
    path methods, _residualMode, _movieReference, _accumulationNeeded, _gainTransform,
    _analysisSettings and the attributes _lock, _positions, _deviceWarned."""

    def _workerCount(self, queueForJobs=None):
        """Movies analysed at once: the executor's threads (numberOfThreads - 1: one
        thread is pyworkflow's main loop), one at least; with GPUs in this process no
        more than the GPU slots pyworkflow makes of gpuList (a GPU listed twice gives
        two slots); with a batch job per movie, as many jobs as those threads."""
        threads = max(1, self.numberOfThreads.get() - 1)
        if queueForJobs is None:
            queueForJobs = self._queueForJobs()
        if self.usesGpu() and self.getGpuList() and not queueForJobs:
            threads = min(threads, len(self.getGpuList()))
        return threads

    def _processMovie(self, movie):
        """Analyse one movie (movie_job.run_job, the same in every mode): in this
        thread, or as the command ``scipion-gain movie-job`` through runJob (one
        batch job per movie with QUEUE_FOR_JOBS=Y). Its result files are all the
        protocol reads afterwards; a movie that cannot be analysed gets
        extra/failed/movie_%06d.txt instead, with the reason."""
        movieId = movie.getObjId()
        if os.path.exists(self._statsPath(movieId)):
            self.info('Movie %d: already analysed, results kept.' % movieId)
            return
        movieFile = self._userFile(movie)
        job, reference = self._movieJob(movie, movieFile)
        try:
            if self._moviesAsCommands():
                report = movie_job.run_as_command(
                    job, self._runFolder().job_file(movieId), self._runJobCommand,
                    self._jobDevice(), self._jobLogHint())
            else:
                report = movie_job.run_job(job, device=self._device(), reference=reference)
        except movie_job.MovieFailed as exc:
            if not exc.expected and exc.__cause__ is not None:
                self.info(''.join(traceback.format_exception(exc.__cause__)))
            self.error('Movie %d (%s) could not be analysed: %s' % (movieId, movieFile,
                                                                     exc.message))
            return
        self._logMovie(movieId, report)

    def _logMovie(self, movieId, report):
        stats = report['statistics']
        self.info('Movie %d: %s std=%.4f p2.5=%.4f p97.5=%.4f max=%.4f (%d frames, %s, %.1f s)'
                  % (movieId, report['kind'], stats['std'], stats['p2.5'], stats['p97.5'],
                     stats['max'], report['frames'], report['device'], report['seconds']))
        for note in report['notes']:
            self.info('Movie %d: %s' % (movieId, note))
        if verdict_of(report).flagged:
            self.warning(verdict_message(movieId, report))
        offset = offset_message(movieId, report)
        if offset:
            self.warning(offset)
        counts = report['defects']['counts']
        if report['defects']['pixels']:
            lines = any(v for k, v in counts.items() if k.endswith(('_rows', '_columns')))
            self.info('Movie %d: %d defective pixels (%s%s) -> %s, the defect list for motion '
                      'correction'
                      % (movieId, report['defects']['pixels'],
                         ', '.join('%s %d' % (k.replace('_', ' '), v)
                                   for k, v in counts.items() if v),
                         '; a row or column counts all its pixels' if lines else '',
                         self._runFolder().defect_file(movieId)))

    def _userFile(self, movie):
        """The user's file of a movie: the import's link resolved (messages name it)."""
        original = getattr(movie, '_originalFileName', None)
        path = original.get() if original is not None else movie.getFileName()
        return os.path.realpath(path)

    def _movieJob(self, movie, movieFile):
        """(job, reference array or None): the movie's job (movie_job.make_job) and the
        reference it uses, as this process holds it."""
        movieId = movie.getObjId()
        reference = referencePath = referenceKind = None
        reader = 'image'
        if self._residualMode():
            reference, referenceKind = self._movieReference()
            referencePath, reader = self._referenceFile(referenceKind)
        outputs = self._runFolder().job_outputs(movieId, residual=reference is not None,
                                                accumulate=self._accumulationNeeded())
        dark = self.inputMovies.get().getDark()
        job = movie_job.make_job(movieId, movie.getFileName(), movieFile,
                                 self._analysisSettings(), outputs,
                                 position=self._positions.get(movieId, movieId - 1),
                                 reference=referencePath, reference_reader=reader,
                                 reference_kind=referenceKind,
                                 dark=os.path.abspath(dark) if dark else None,
                                 dark_flip=self._gainTransform().to_dict())
        return job, reference

    def _moviesAsCommands(self):
        """Each movie as the command ``scipion-gain movie-job``: always when the queue
        takes each job (QUEUE_FOR_JOBS=Y), else when ``movieProcesses`` asks for it."""
        return self._queueForJobs() or bool(self.getAttributeValue('movieProcesses', False))

    def _queueForJobs(self):
        """QUEUE_FOR_JOBS=Y: every runJob command (here, every movie) is a batch job."""
        if not hasattr(self, '_perMovieJobs'):
            self._perMovieJobs = bool(self.useQueueForSteps())
        return self._perMovieJobs

    def _runJobCommand(self, program, args):
        self.runJob(program, args, env=self._getEnviron(), numberOfThreads=1)

    def _jobLogHint(self):
        if not self._queueForJobs():
            return ''
        return '; see the batch job logs in %s' % os.path.abspath(self._getLogsPath())

    def _device(self, position=None):
        """The device of a movie analysed in this process: 'gpu:N' with N the first GPU
        of the calling worker's slot (as pyworkflow's executor grants it: renumbered
        from 0 when the protocol runs as a queue job, where CUDA_VISIBLE_DEVICES holds
        the GPUs granted), or 'cpu'; falls back to the CPU, with one warning, when no
        GPU or CuPy can be used. ``position`` is ignored (kept for callers)."""
        if not self.usesGpu() or self._queueForJobs():
            return 'cpu'  # with a job per movie this process is granted no GPU
        gpus = self._workerGpus()
        request = 'gpu:%d' % gpus[0] if gpus else 'gpu'
        device, note = movie_job.device_for(request)
        if note is not None:
            with self._lock:
                if not self._deviceWarned:
                    self._deviceWarned = True
                    self.warning('GPU requested but not usable (%s): running on the CPU.'
                                 % note.split('(', 1)[-1].rsplit(')', 1)[0])
        return device

    def _jobDevice(self):
        """The device a movie job asks for: 'cpu'; with QUEUE_FOR_JOBS=Y 'gpu:0', the one
        GPU its batch job was granted (CUDA_VISIBLE_DEVICES lists only it); as a local
        process the first GPU of the worker's executor slot."""
        if not self.usesGpu():
            return 'cpu'
        if self._queueForJobs():
            return 'gpu:0'
        gpus = self._workerGpus()
        return 'gpu:%d' % gpus[0] if gpus else 'gpu:0'

    def _workerGpus(self):
        """The GPUs pyworkflow's executor grants the calling thread (never the raw
        gpuList: under a queue the executor renumbers them)."""
        executor = getattr(self, '_stepsExecutor', None)
        if executor is None:
            return list(self.getGpuList())
        try:
            if hasattr(threading.current_thread(), 'needsGPU'):  # a step thread
                return list(executor.getGpuList() or [])
            return list(executor.gpuList or [])
        except Exception:
            return list(executor.gpuList or [])

    def getSubmitDict(self):
        """Scipion's queue variables, with what a movie gain run needs: a queue name
        (the first of hosts.conf when none was chosen), no GPU asked for a CPU run
        (pyworkflow counts gpuList even with 'Use GPU' off); with
        QUEUE_FOR_JOBS=Y each movie job asks for one core, one GPU (GPU runs) and
        the memory one movie of this frame size needs; as one job for the whole
        protocol, that memory for each movie analysed at once."""
        submit = ProtProcessMovies.getSubmitDict(self)
        perMovie = submit.get(QUEUE_FOR_JOBS) == 'Y'
        if not submit.get('JOB_QUEUE'):
            # no queue chosen (SCIPION_USE_QUEUE in a script): the first of hosts.conf, so
            # that a template's '-p %_(JOB_QUEUE)s' still names one
            queues = self.getHostConfig().getQueueSystem().getQueues() or {}
            submit['JOB_QUEUE'] = next(iter(queues), '')
        if not self.usesGpu():
            submit['GPU_COUNT'] = 0
        elif perMovie:
            submit['GPU_COUNT'] = 1
        if perMovie:
            submit['JOB_THREADS'] = 1
            submit['JOB_CORES'] = 1
        needed = self._jobMemory(1 if perMovie else self._workerCount(perMovie), not perMovie)
        if needed:
            try:
                given = int(float(submit.get('JOB_MEMORY') or 0))
            except (TypeError, ValueError):
                given = 0
            if given < needed:
                submit['JOB_MEMORY'] = str(needed)
        return submit

    def _jobMemory(self, movies, withRunningEstimate):
        """Memory (MB) for ``movies`` analysed at once, plus the running estimate's sums
        (4 arrays of 8 bytes per pixel) when this process keeps it; None when the
        frame size is not known yet."""
        try:
            x, y, _ = self.inputMovies.get().getDim()
        except Exception:
            return None
        if not x or not y:
            return None
        need = movies * movie_job.job_memory_mb(x, y)
        if withRunningEstimate:
            need += int(4 * 8 * x * y / 2 ** 20) + 256
        return int(-(-need // 256) * 256)
