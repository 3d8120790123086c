"""Scipion protocol "movie gain": gain and residual gain of a SetOfMovies, in streaming.

For every analysed movie it runs the estimator of ``scipion_gain.estimator``
(Sorzano et al. 2018: smooth midway equalization and the Eq. 7 iteration):

* residual mode (the movies carry a gain reference and ``estimateResidualGain``
  is on): the frames are first MULTIPLIED by the movies' gain (the Scipion
  convention: a gain reference multiplies raw frames), so the estimate is the
  correction still missing, flat (all 1) when the reference is right. The
  paper's three flags are evaluated on it.
* gain mode (no gain on the movies, or ``estimateResidualGain`` off): the
  estimate is the gain itself.

Gain orientation: pwem defines no gain flip or rotation (``SetOfMovies.getGain``
is a plain file name, and pwem's own gain correction multiplies frame and gain
pixel by pixel). The protocol therefore reads movie and gain in the order they
are stored in their files and uses them as they are; the ``gainTransform``
option applies one of the 8 rotations/flips MotionCor2 and RELION know
(estimator.orientation.TRANSFORMS; the copy goes to the run folder) for a gain
known to be stored rotated or mirrored (e.g. a Gatan DM4 reference for TIFF
movies). A wrongly oriented gain shows up as a flagged residual.

Integrating cameras (issue 14): when the movies carry a dark reference
(``SetOfMovies.getDark``, ProtImportMovies' dark file) every movie job reads it
with ``io.read_dark_reference`` (turned as the gain is) and subtracts it from
every frame first (corrected = (raw - dark) x gain); the stats JSON says which
(``dark_reference``, ``input.dark``). Movies without electron signal (taken
without beam) are refused as not analysable (failed, kept out of the outputs
and of the running estimate); an offset found in the frames (no dark, or the
wrong one) is a warning; the camera's conversion measured by photon transfer
(``input.conversion``) is in the summary.

Files (the run-folder contract the viewer and the report read):
run folder: summary.txt, summaryForMonitor.txt (the formats of Xmipp's movie
gain, read unchanged by the facilities gain monitor), warnings.txt;
extra/: movie_%06d_gain.mrc (the estimate, or the residual in residual mode),
movie_%06d_stats.json, accumulated_gain.mrc + accumulated_stats.json
(``accumulate``), gain_reference.mrc (the movies' gain, flipped and/or
normalised, when it needed either), estimated_gain.mrc (gain mode: the running
estimate over all analysed movies, attached to ``outputMovies``),
defects_%06d.mrc / .txt (defect labels and the MotionCor2 -DefectFile),
movie_%06d_structure.mrc (the structure the noise-aware assessment found),
accumulated_defects.mrc / .txt and accumulated_structure.mrc (``accumulate``),
orientation.json and oriented_gain.mrc (the orientation check, issue 6),
movie_%06d_applied_reference.mrc (movies gain-corrected at acquisition: the
reference applied, recovered from the frames; issue 10).

Orientation check (``estimateOrientation``, residual mode): as soon as the
first ``orientationMovies`` movies have arrived (or the input closed with
fewer), the movies' gain is estimated without the reference (inverse
per-pixel mean) and the 8 rotations/flips of the reference, direct and
inverted, are compared with it (estimator.orientation). A confident match that
changes something gives extra/oriented_gain.mrc, used for the residuals of the
movies analysed from then on, attached to ``outputMovies`` and output as
``orientedGain``; otherwise the reference is kept as it is. Beside the paper's
flags every analysed movie gets the noise-aware assessment (issue 7) and a
defect map (the checks live in ``checks.py``, the file helpers in
``run_files.py``).
"""
import collections
import os
import threading
import time
import traceback

import numpy as np

import pyworkflow.object as pwobj
import pyworkflow.protocol.constants as pwcts
import pyworkflow.protocol.params as params
import pyworkflow.utils as pwutils
from pyworkflow import BETA
from pyworkflow.constants import QUEUE_FOR_JOBS

from pwem.objects import Image, SetOfImages, SetOfMovies
from pwem.protocols import ProtProcessMovies

from .. import movie_job
from ..estimator import EstimatorSettings, Thresholds
from ..estimator.analysis import AnalysisSettings
from ..estimator.verdict import VerdictSettings, verdict_of
from ..estimator.arrays import resolve_device
from ..estimator.orientation import TRANSFORMS
from ..io import (InputError, format_conventions, read_gain_reference, read_image,
                  reader_class, write_mrc)
from ..objects import SetOfGainMaps
from ..report.methods import methods_sentences
from ..report.run_folder import conclusion, load as loadRunFolder, ranges
from ..run_folder import RunFolder, movie_id_of_label as _movieIdOfLabel
from . import checks
from .orientation_check import OUTPUT_ORIENTED, OrientationCheck
from .running_estimate import RunningEstimate
from .run_files import (monitor_line, read_json as _readJson, read_lines as _readLines,
                        read_text as _readText, summary_line, write_json as _writeJson,
                        write_text as _writeText)

OUTPUT_ESTIMATED = 'estimatedGains'
OUTPUT_RESIDUAL = 'residualGains'
OUTPUT_MOVIES = 'outputMovies'

#: seconds an idle worker waits for new movies before it looks at the input again
WORKER_POLL_SECONDS = 1.0
#: what an idle worker's _takeMovie returns (no movie yet, more may come)
_IDLE = object()
#: a movie waiting longer than this for a worker means analysis is behind acquisition
BEHIND_SECONDS = 60
#: the test hook of _crashPoint (issue 12: resume after a crash at any point of an update)
CRASH_VARIABLE = 'SCIPION_GAIN_CRASH_AT'

#: the defaults that keep a 4096 x 4096 x 40-frame residual session up with the camera on
#: 2 CPU cores (benchmarks/frames_needed.py; README "In Scipion" and benchmarks/README.md)
DEFAULT_MOVIE_STEP = 10
DEFAULT_FRAMES_PER_MOVIE = 20
#: measured seconds per 4096 x 4096 movie in the protocol with DEFAULT_FRAMES_PER_MOVIE frames
#: used, residual mode, 2 shared cores (benchmarks/throughput.py --frames-per-movie 20)
SECONDS_PER_4K_MOVIE = 32

METHODS = ['sme', 'mean', 'std', 'robust']
REFERENCES = ['single', 'local']
#: the form's words for the methods and references (same order as METHODS / REFERENCES)
METHOD_CHOICES = ['column/row equalization (the paper)', 'per-pixel mean (RELION idea)',
                  'per-pixel spread (Afanasyev)',
                  'column/row equalization, specimen divided out (carbon, gold, ice)']
REFERENCE_CHOICES = ['whole frame', 'neighbouring lines']


def _transformLabel(transform):
    """'rotate 90, flip upside down (RotGain 1, FlipGain 1)' for the form."""
    words = []
    if transform.rotation:
        words.append('rotate %d' % (90 * transform.rotation))
    if transform.flip:
        words.append('flip upside down' if transform.flip == 1 else 'flip left-right')
    return '%s (RotGain %d, FlipGain %d)' % (', '.join(words) or 'as stored',
                                             transform.rotation, transform.flip)


#: the 8 rotations/flips of the gain reference, in MotionCor2/RELION terms
TRANSFORM_CHOICES = [_transformLabel(t) for t in TRANSFORMS]

#: per-item attributes of estimatedGains / residualGains, from the statistics dict
STAT_ATTRIBUTES = {'_gainMean': 'mean', '_gainStd': 'std', '_gainMin': 'min', '_gainMax': 'max',
                   '_gainP025': 'p2.5', '_gainP975': 'p97.5'}
FLAG_ATTRIBUTES = {'_gainFlagStd': 'std', '_gainFlagPercentileRatio': 'percentile_ratio',
                   '_gainFlagMaxRatio': 'max_ratio'}



class GainProtMovieGain(OrientationCheck, RunningEstimate, ProtProcessMovies):
    """Estimate the gain of a direct detector, or the residual gain left after
    the movies' gain reference, from the movies themselves (Sorzano et al. 2018),
    and flag movies whose residual gain is not flat. Works in streaming.
    """
    _label = 'movie gain'
    _devStatus = BETA
    _possibleOutputs = {OUTPUT_ESTIMATED: SetOfGainMaps, OUTPUT_RESIDUAL: SetOfGainMaps,
                        OUTPUT_MOVIES: SetOfMovies, OUTPUT_ORIENTED: SetOfImages}

    def __init__(self, **kwargs):
        ProtProcessMovies.__init__(self, **kwargs)
        self._lock = threading.RLock()
        self._reference = None        # the movies' gain as used (np array), loaded once
        self._accumulator = None      # running sums over analysed movies (GainAccumulator)
        self._deviceWarned = False
        self._positions = {}          # movie id -> position in arrival order (0-based)
        self._orientLock = threading.Lock()
        self._orientation = None      # the orientation decision (dict), once taken
        self._oriented = None         # the oriented reference (np array), when one was written
        # the movies' queue (see analyseMoviesStep): waiting movies in arrival order, the
        # ones being analysed (id -> start time), whether the input closed and all of it
        # is queued; arrival and completion times for the backlog warning
        self._queue = threading.Condition(threading.Lock())
        self._inputLock = threading.RLock()
        self._waiting = collections.deque()
        self._taken = {}
        self._inputDone = False
        self._arrivals = {}
        self._finishedTimes = collections.deque(maxlen=50)
        self._known = {}              # output name -> ids (or labels) it holds
        self._updateWork = False

    # -------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label=pwutils.Message.LABEL_INPUT)
        form.addParam('inputMovies', params.PointerParam, pointerClass='SetOfMovies',
                      important=True, label=pwutils.Message.LABEL_INPUT_MOVS,
                      help='Movies, of a finished session or still arriving (streaming): '
                           'new movies are analysed as they come, until the session ends.')
        form.addParam('estimateResidualGain', params.BooleanParam, default=True,
                      label='Check the gain reference the movies carry?',
                      help='Yes: the frames of each analysed movie are multiplied by the '
                           'movies\' gain reference, and what is left over is estimated. It is '
                           'flat (1 everywhere) while the reference still fits the detector, '
                           'and shows columns, rows, readout sectors or pixels when it does not '
                           '(the paper calls it the residual gain). Each movie gets a verdict. '
                           'No, or movies without a gain reference: the detector\'s gain '
                           'itself is estimated and attached to the output movies.')
        form.addParam('gainTransform', params.EnumParam, choices=TRANSFORM_CHOICES, default=0,
                      display=params.EnumParam.DISPLAY_COMBO,
                      expertLevel=params.LEVEL_ADVANCED,
                      label='Orientation of the gain reference',
                      help='How the gain reference must be turned to lie like the movies, as '
                           'MotionCor2 (-RotGain r -FlipGain f) and RELION (--gain_rot r '
                           '--gain_flip f) give it: first rotate r x 90 degrees '
                           '(counter-clockwise as an MRC viewer shows it, row 0 at the '
                           'bottom), then flip: 1 upside down, 2 left-right. These 8 cover '
                           'every rotation and mirror. Keep "as stored" when unsure: the '
                           'automatic check below finds the orientation itself. The turned '
                           'reference is written to the run folder; the file you gave is '
                           'never changed. The movies\' dark reference, if any, is turned the '
                           'same way.')
        form.addParam('estimateOrientation', params.BooleanParam, default=True,
                      condition='estimateResidualGain',
                      label='Check the orientation automatically?',
                      help='Estimate the gain of the first movies without the reference and '
                           'find which of the 8 rotations/flips of the reference, as stored or '
                           'inverted (1/x), agrees with it. A confident match that changes the '
                           'reference gives a new, turned reference in the run folder (your '
                           'file is never changed), used for the movies from then on, '
                           'attached to the output movies and output as "orientedGain"; the '
                           'log gives the transform in MotionCor2 and RELION terms. Without a '
                           'confident match the reference is kept as it is.')
        form.addParam('orientationMovies', params.IntParam, default=3,
                      validators=[params.Positive], condition='estimateOrientation',
                      expertLevel=params.LEVEL_ADVANCED, label='Movies for the orientation check',
                      help='The first N movies to arrive give the estimate the reference is '
                           'compared with; fewer when the session ends with fewer.')
        form.addParam('movieStep', params.IntParam, default=DEFAULT_MOVIE_STEP,
                      validators=[params.Positive], label='Analyse one movie in every',
                      help='1 analyses every movie; N the 1st, the (N+1)th, ... in order of '
                           'arrival. The first movie and the last one of a finished session '
                           'are always analysed; movies not analysed still go to the output '
                           'movies. The default, %d, keeps up with a fast camera on a modest '
                           'CPU node: a 4096 x 4096 movie (%d frames used) takes about %d s '
                           'on 2 CPU cores, and a Falcon 4i or K3 session writes a '
                           'movie every 5 s or so. A reference that goes wrong is then caught '
                           'at the next analysed movie (at most %d movies later: about a '
                           'minute), and the running estimate collects every analysed movie. '
                           'Choose 1 for a small or finished set checked movie by movie, or '
                           'with a GPU; the log and summary say when analysis falls behind '
                           'acquisition. Measured: benchmarks/README.md, "Frames and movies '
                           'analysed".'
                           % (DEFAULT_MOVIE_STEP, DEFAULT_FRAMES_PER_MOVIE,
                              SECONDS_PER_4K_MOVIE, DEFAULT_MOVIE_STEP - 1))
        form.addParam('framesPerMovie', params.IntParam, default=DEFAULT_FRAMES_PER_MOVIE,
                      validators=[params.GE(0)], label='Frames used per movie',
                      help='How many frames of each analysed movie are used, spread over the '
                           'whole movie (every (frames in the movie // N)-th frame: at least '
                           'N, all of them when the movie has fewer than 2 N). 0 uses every '
                           'frame. Fewer frames take less time, but the check judges the sum '
                           'of the frames used: fewer frames are fewer electrons, and subtle '
                           'errors are missed more often. Measured on simulated 40-frame '
                           'movies at 1 electron per pixel and frame: a 2 % column pattern '
                           'and a reference turned by 180 degrees were caught in every movie '
                           'with 5 frames used or more; a 3 % step in one readout sector in '
                           '19 of 20 movies with 40 frames, 18 with 20, 13 with 10 and 1 '
                           'with 5; the exact reference was never flagged. The paper found 4-5 '
                           'frames per movie enough for its percentiles (its three '
                           'thresholds), which catch coarse errors only. The verdict\'s DQE '
                           'loss is given at the dose of the frames used. Time per 4096 x 4096 '
                           'movie on 2 CPU cores: about 34 s of analysis with 40 frames, 20 s '
                           'with 20, 14 s with 10, 11 s with 5 (a fixed part, the check of '
                           'the sum, plus each frame used).')
        form.addParam('frameStep', params.IntParam, default=0,
                      validators=[params.GE(0)], expertLevel=params.LEVEL_ADVANCED,
                      label='Or use one frame in every',
                      help='0: "Frames used per movie" decides. N uses every N-th frame of '
                           'every movie instead, whatever its length (Xmipp\'s frameStep). '
                           'Runs and workflows made before "Frames used per movie" existed '
                           'keep the frame step they had (1: every frame).')

        form.addSection(label='Estimation')
        form.addParam('method', params.EnumParam, choices=METHOD_CHOICES, default=0,
                      label='Estimation method',
                      help='column/row equalization: the paper\'s method (smooth midway '
                           'equalization, SME): in every frame the histogram of each column, '
                           'and of each row, is matched to a common reference; what a line '
                           'records consistently more or less than the others is its gain. '
                           'per-pixel mean: the inverse of each pixel\'s mean over the frames '
                           '(RELION\'s idea; needs many frames). per-pixel spread: the inverse '
                           'of each pixel\'s standard deviation (Afanasyev et al. 2015).')
        form.addParam('reference', params.EnumParam, choices=REFERENCE_CHOICES, default=0,
                      condition='method == 0', label='Compare each line with',
                      help='whole frame: one reference histogram for the whole frame (the '
                           'paper\'s Eq. 3, used for its results). neighbouring lines: a '
                           'reference from the columns (rows) around each one, weighted by a '
                           'Gaussian, which follows a smooth illumination better.')
        form.addParam('sigma', params.StringParam, default='auto',
                      condition='method == 0', label='Neighbourhood width (pixels)',
                      help='How many neighbouring columns and rows are pooled, as the width '
                           '(sigma) of a Gaussian. "auto" chooses it per frame as the width '
                           'that leaves the least variation between lines (the paper\'s '
                           'Eq. 5); a number fixes it.')
        form.addParam('iterations', params.IntParam, default=1,
                      validators=[params.Positive], condition='method == 0',
                      label='Refinement passes',
                      help='How many times the estimate is refined at most (the paper\'s '
                           'fixed-point iteration, Eq. 7). One is usually enough; more correct a '
                           'strong pattern further, at the price of more noise.')
        form.addParam('accumulate', params.BooleanParam, default=True,
                      label='Also keep a running estimate over all movies?',
                      help='Besides the estimate of each movie, keep one from the frames of '
                           'all analysed movies, less noisy and with its own verdict, written '
                           'to extra/accumulated_gain.mrc as movies are analysed (at most every '
                           '30 s, and at the end).')

        form.addSection(label='Verdict')
        form.addParam('maxDqeLoss', params.FloatParam, default=0.1,
                      validators=[params.Positive],
                      label='Flag when the reference costs at least (% of DQE)',
                      help='The verdict: a movie is flagged when what is left over holds '
                           'structure beyond the estimate\'s noise (columns, rows, readout '
                           'sectors, pixels) that costs at least this percentage of the '
                           'detector\'s DQE (detective quantum efficiency) at the movie\'s '
                           'dose: 1 - 1 / (1 + N s^2), N electrons per pixel, s the relative '
                           'RMS of the structure; Gatan\'s "derating" of a gain reference.')
        form.addParam('stdThreshold', params.FloatParam, default=0.04,
                      validators=[params.Positive], label="Paper's threshold: spread (std) above",
                      help='Standard deviation of the (residual) gain map (the paper: 0.04). '
                           'The paper\'s three statistics are shown beside the verdict, their '
                           'values over these thresholds marked, and written to '
                           'summaryForMonitor.txt for the facilities monitor; they do not make '
                           'the verdict.')
        form.addParam('percentileRatioThreshold', params.FloatParam, default=1.15,
                      validators=[params.Positive], label="Paper's threshold: p97.5 / p2.5 above",
                      help='Ratio of the 97.5th and 2.5th percentiles of the map (the paper: '
                           '1.15).')
        form.addParam('maxRatioThreshold', params.FloatParam, default=4.5,
                      validators=[params.Positive], label="Paper's threshold: max / p97.5 above",
                      help='Ratio of the maximum and the 97.5th percentile of the map (the '
                           'paper: 4.5): hot pixels.')

        form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                       label='Use GPU?',
                       help='Use a CUDA GPU through CuPy (the "gpu" extra). Without CuPy or '
                            'a GPU the protocol warns and runs on the CPU.')
        form.addHidden(params.GPU_LIST, params.StringParam, default='0',
                       label='GPU IDs', help='GPUs to use, e.g. "0" or "0 1"; movies are '
                                             'spread over them in arrival order.')
        form.addParallelSection(threads=2, mpi=0)
        form.addParam('movieProcesses', params.BooleanParam, default=False,
                      expertLevel=params.LEVEL_ADVANCED,
                      label='Analyse each movie in its own process?',
                      help='Each movie is analysed by a worker thread of this protocol (one per '
                           'thread beyond the first). Yes: each runs as the command '
                           '"scipion-gain movie-job" instead, as it always does when the queue '
                           'runs each job (QUEUE_FOR_JOBS=Y); it costs about a second per movie '
                           'to start, and keeps one movie\'s memory out of this process.')

    # -------------------------- INSERT steps functions ----------------------
    def _insertAllSteps(self):
        """The conversion step, one worker step per movie that can be analysed at once
        (see ``_workerCount``) and the output step. Movies are not steps: a worker takes
        the next waiting movie as soon as it is free, so pyworkflow's step-check interval
        does not pace the analysis. The workers' ``started`` argument makes them new
        steps on every run, so that Continue starts them again."""
        self.insertedDict = {}   # movie id -> True (to analyse) / False (passed through)
        self.samplingRate = self.inputMovies.get().getSamplingRate()
        convert = self._insertFunctionStep(self._convertInputStep, prerequisites=[],
                                           needsGPU=False)
        self.convertCIStep = [convert]
        started = time.strftime('%Y-%m-%d %H:%M:%S')
        # with a batch job per movie the jobs get their GPUs from the queue: the workers
        # that submit them hold no GPU slot of pyworkflow's executor
        needsGpu = self.usesGpu() and not self._queueForJobs()
        workers = [self._insertFunctionStep(self.analyseMoviesStep, worker, started,
                                            prerequisites=[convert], needsGPU=needsGpu)
                   for worker in range(self._workerCount())]
        self._insertFunctionStep(self.createOutputStep, prerequisites=workers, wait=True,
                                 needsGPU=False)

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

    def _isAnalysed(self, position, count, closed):
        return (position % max(1, self.movieStep.get()) == 0
                or (closed and position == count - 1))

    def _checkNewInput(self):
        """Load the input when it changed and queue its new movies for the workers
        (every movieStep-th in arrival order, the first, and the last once the input
        is closed). Called by pyworkflow's main loop and by idle workers."""
        with self._inputLock:
            inputFile = self.inputMovies.get().getFileName()
            mTime = os.path.getmtime(inputFile)
            if hasattr(self, 'listOfMovies') and getattr(self, '_lastInputCheck', 0) > mTime:
                return
            self._lastInputCheck = time.time()
            self._loadInputList()
            self._queueNewMovies(self.listOfMovies, self.streamClosed)

    def _queueNewMovies(self, inputMovies, closed):
        movies = sorted(inputMovies, key=lambda m: m.getObjId())
        now = time.time()
        with self._queue:
            for position, movie in enumerate(movies):
                movieId = movie.getObjId()
                self._positions[movieId] = position
                self._arrivals.setdefault(movieId, now)
                if self.insertedDict.get(movieId):
                    continue  # queued, taken or analysed already
                analysed = self._isAnalysed(position, len(movies), closed)
                self.insertedDict[movieId] = analysed
                if analysed and not self._isMovieDone(movie):
                    self._waiting.append(movie)
            self._inputDone = bool(closed)
            self._queue.notify_all()

    def _isMovieDone(self, movie):
        """Analysed (its stats JSON) or failed (its reason): nothing more to do for it."""
        movieId = movie.getObjId()
        return os.path.exists(self._statsPath(movieId)) or \
            os.path.exists(self._failedPath(movieId))

    # --------------------------- STEPS functions ----------------------------
    def _convertInputStep(self):
        """pwem's conversion step (checks that the gain file exists), then our
        copy of the gain when it must be flipped or normalised."""
        ProtProcessMovies._convertInputStep(self)
        pwutils.makePath(self._getExtraPath('failed'))
        if self._residualMode():
            self._loadReference()
        self._checkDark()
        if self.usesGpu() and not self._queueForJobs():
            self._device()  # warn once, early, if the GPU cannot be used

    def analyseMoviesStep(self, worker, started):
        """A worker: analyse waiting movies, one after the other, until the input is
        closed and no movie is left. Idle, it looks at the input itself (a cheap
        check of the input file's time) rather than waiting for pyworkflow's main
        loop; run by the main thread (numberOfThreads 1), it also updates the
        outputs, which the main loop cannot do meanwhile."""
        inMainThread = threading.current_thread() is threading.main_thread()
        lastOutputs = time.time()
        while True:
            movie = self._takeMovie()
            if movie is None:
                return
            if movie is not _IDLE:
                try:
                    self._processMovie(movie)
                finally:
                    self._movieFinished(movie)
            if inMainThread and time.time() - lastOutputs > self._stepsCheckSecs:
                self._checkNewOutput()
                lastOutputs = time.time()

    def _takeMovie(self):
        """The next waiting movie; None when the input is closed and none is left;
        _IDLE after waiting a moment in vain."""
        with self._queue:
            if self._waiting:
                movie = self._waiting.popleft()
                self._taken[movie.getObjId()] = time.time()
                return movie
            if self._inputDone:
                return None
        self._checkNewInput()  # nothing waiting: has the input grown?
        with self._queue:
            if not self._waiting and not self._inputDone:
                self._queue.wait(WORKER_POLL_SECONDS)
        return _IDLE

    def _movieFinished(self, movie):
        with self._queue:
            started = self._taken.pop(movie.getObjId(), None)
            now = time.time()
            if started is not None:
                self._finishedTimes.append((now, now - started))
            self._queue.notify_all()

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
                report = self._runMovieCommand(job)
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
            self.warning(checks.verdict_message(movieId, report))
        offset = _offsetMessage(movieId, report)
        if offset:
            self.warning(offset)
        counts = report['defects']['counts']
        if report['defects']['pixels']:
            self.info('Movie %d: %d defective pixels (%s) -> %s'
                      % (movieId, report['defects']['pixels'],
                         ', '.join('%s %d' % (k.replace('_', ' '), v)
                                   for k, v in counts.items() if v),
                         self._defectFilePath(movieId)))

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

    def _referenceFile(self, kind):
        """(path, reader) of the reference of ``kind`` for a job: the oriented one, our
        flipped/normalised copy, or the user's file read as the protocol reads it."""
        if kind == 'oriented':
            return self._orientedPath(), 'image'
        copy = self._getExtraPath('gain_reference.mrc')
        if os.path.exists(copy):
            return copy, 'image'
        return os.path.abspath(self.inputMovies.get().getGain()), 'gain_reference'

    def _moviesAsCommands(self):
        """Each movie as the command ``scipion-gain movie-job``: always when the queue
        takes each job (QUEUE_FOR_JOBS=Y), else when ``movieProcesses`` asks for it."""
        return self._queueForJobs() or bool(self.getAttributeValue('movieProcesses', False))

    def _queueForJobs(self):
        """QUEUE_FOR_JOBS=Y: every runJob command (here, every movie) is a batch job."""
        if not hasattr(self, '_perMovieJobs'):
            self._perMovieJobs = bool(self.useQueueForSteps())
        return self._perMovieJobs

    def _runMovieCommand(self, job):
        """Write the job file and run ``scipion-gain movie-job`` on it through runJob (a
        batch job with QUEUE_FOR_JOBS=Y); the report, or MovieFailed with the reason
        (a job that ended without results is reported like a corrupt movie)."""
        movieId = job['movie_id']
        jobFile = self._runFolder().job_file(movieId)
        # the workers make it at the same time: pyworkflow's makePath checks, then creates
        os.makedirs(os.path.dirname(jobFile), exist_ok=True)
        movie_job.write_job(jobFile, job)
        device = self._jobDevice()
        program, args = movie_job.command(os.path.abspath(jobFile), device)
        error = None
        try:
            self.runJob(program, args, env=self._getEnviron(), numberOfThreads=1)
        except Exception as exc:  # CalledProcessError (exit status 2: the movie failed)
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        statsPath, failedPath = self._statsPath(movieId), self._failedPath(movieId)
        if os.path.exists(statsPath):
            return _readJson(statsPath)
        if os.path.exists(failedPath):
            raise movie_job.MovieFailed(_readText(failedPath))
        message = ('the job ended without results (%s; killed for its time or memory?)%s'
                   % (error or 'no error reported', self._jobLogHint()))
        _writeText(failedPath, message + '\n')
        raise movie_job.MovieFailed(message, expected=False)

    def _jobLogHint(self):
        if not self._queueForJobs():
            return ''
        return '; see the batch job logs in %s' % os.path.abspath(self._getLogsPath())

    def _movieOutputs(self, movieId):
        return self._runFolder().movie_outputs(movieId)

    def createOutputStep(self):
        """Runs once the input is closed and every movie is done."""
        self._checkNewOutput()
        if not self._analysedIds():
            raise Exception('No movie could be analysed: see the errors above and '
                            '%s.' % self._getExtraPath('failed'))

    # --------------------------- OUTPUT handling (main thread) ---------------
    def _stepsCheck(self):
        self._checkNewInput()
        self._checkNewOutput()

    def _checkNewOutput(self):
        if getattr(self, 'finished', False) or not hasattr(self, 'listOfMovies'):
            return
        with self._lock:
            self._updateOutputs()

    def _updateOutputs(self):
        """Bring every output up to date with the per-movie result files.

        Idempotent: each output (running estimate, summary.txt,
        summaryForMonitor.txt, warnings.txt, each output set) is compared with
        the result files and gets what it lacks, so that a crash at any point
        followed by Continue gives each movie exactly once in each. Movies
        that could not be analysed are reported and left out of every output.
        """
        analysed, failed, passed, pending = [], [], [], False
        for movie in sorted(self.listOfMovies, key=lambda m: m.getObjId()):
            movieId = movie.getObjId()
            decision = self.insertedDict.get(movieId)
            if decision is None:
                pending = True  # not queued yet
                continue
            if decision:
                if os.path.exists(self._statsPath(movieId)):
                    analysed.append(movie)
                elif os.path.exists(self._failedPath(movieId)):
                    failed.append(movie)
                    continue  # a movie that could not be analysed is not passed on
                else:
                    pending = True
                    continue
            passed.append(movie)

        finished = self._inputDone and not pending
        state = pwobj.Set.STREAM_CLOSED if finished else pwobj.Set.STREAM_OPEN
        self._updateWork = False
        if finished and self._orientationWanted():
            # the input closed before the orientation could be decided by a movie
            self._orientationDecision(wait=False)
        self._updateOrientedOutput()

        self._updateRunningEstimate(analysed, finished)
        self._writeSummaries(analysed, failed)
        self._crashPoint('summaries')
        self._updateGainSets(analysed, state)
        self._crashPoint('gain sets')
        attached = self._attachedGain()
        if attached is not None:
            self._updateMovieSet(passed, attached, state)
        elif finished and passed:
            self.warning('No gain could be estimated: the output movies are not produced.')
        self._crashPoint('output movies')
        self._checkBacklog(finished)

        if finished:
            self.finished = True
            outputStep = self._getFirstJoinStep()
            if outputStep and outputStep.isWaiting():
                outputStep.setStatus(pwcts.STATUS_NEW)

    def _crashPoint(self, where):
        """A test hook (issue 12): with SCIPION_GAIN_CRASH_AT set to ``where``, fail here
        once this update has written something, as a crash at that point would."""
        if self._updateWork and os.environ.get(CRASH_VARIABLE) == where:
            raise RuntimeError('injected crash in the output update at: %s' % where)

    def _updateGainSets(self, movies, state):
        residual = self._residualMode()
        sets = [(OUTPUT_ESTIMATED, 'estimated_gains.sqlite', 'corrected' if residual else 'gain')]
        if residual:
            sets.append((OUTPUT_RESIDUAL, 'residual_gains.sqlite', 'gain'))
        for outputName, fileName, which in sets:
            def item(movie, which=which):
                report = _readJson(self._statsPath(movie.getObjId()))
                if which == 'corrected':
                    return self._gainImage(movie, self._correctedGainPath(movie.getObjId()),
                                           report['corrected_gain'], report)
                return self._gainImage(movie, self._gainPath(movie.getObjId()), report, report)
            self._appendMissing(outputName, SetOfGainMaps, fileName, movies, item, state)

    def _gainImage(self, movie, path, stats, report):
        """An output item: the map, its statistics and the paper's flags (``stats``),
        the movie's verdict, noise-aware assessment and defect counts (``report``).

        The first attributes are those Scipion's table shows first (the viewers
        register that order for SetOfGainMaps): the verdict, then the paper's
        statistics on scales where the table's two decimals say something (std
        in per cent, the two ratios), the DQE loss (per cent), then the defects."""
        image = Image(location=path)
        image.setObjId(movie.getObjId())
        image.setSamplingRate(movie.getSamplingRate())
        for attribute, value in gain_map_display_attributes(stats, report).items():
            setattr(image, attribute, value)
        for attribute, key in STAT_ATTRIBUTES.items():
            setattr(image, attribute, pwobj.Float(stats['statistics'][key]))
        for attribute, key in FLAG_ATTRIBUTES.items():
            setattr(image, attribute, pwobj.Boolean(bool(stats['flags'][key])))
        image._gainFlagged = pwobj.Boolean(bool(stats['flagged']))
        for attribute, value in checks.assessment_attributes(report.get('assessment')).items():
            setattr(image, attribute, (pwobj.Boolean if isinstance(value, bool)
                                       else pwobj.Float)(value))
        for attribute, value in checks.defect_attributes(report.get('defects', {})).items():
            setattr(image, attribute, pwobj.Integer(value))
        return image

    def _updateMovieSet(self, movies, attached, state):
        def item(movie):
            return movie.clone()
        self._appendMissing(OUTPUT_MOVIES, SetOfMovies, 'movies.sqlite', movies, item, state,
                            gain=attached)

    def _appendMissing(self, outputName, SetClass, fileName, movies, makeItem, state,
                       gain=None):
        """Append to an output set the movies it lacks (by id: what its sqlite holds,
        read once per process), publish it when it changed, was never published (a
        crash after its sqlite was written) or closes. Idempotent."""
        known = self._knownIds(outputName, SetClass, fileName)
        new = [m for m in movies if m.getObjId() not in known]
        closing = (state == pwobj.Set.STREAM_CLOSED
                   and outputName not in getattr(self, '_closedOutputs', set()))
        if not new and not closing and (self.hasAttribute(outputName) or not known):
            return
        outputSet = self._loadOutputSet(SetClass, fileName)
        if gain is not None:
            outputSet.setGain(gain)
        for movie in new:
            outputSet.append(makeItem(movie))
        self._updateWork = True
        self._publish(outputName, outputSet, state)
        known.update(m.getObjId() for m in new)
        if state == pwobj.Set.STREAM_CLOSED:
            self._closedOutputs = getattr(self, '_closedOutputs', set()) | {outputName}

    def _knownIds(self, outputName, SetClass, fileName):
        if outputName not in self._known:
            path = self._getPath(fileName)
            ids = set()
            if os.path.exists(path):
                outputSet = SetClass(filename=path)
                ids = set(outputSet.getIdSet())
                outputSet.close()
            self._known[outputName] = ids
        return self._known[outputName]

    def _loadOutputSet(self, SetClass, fileName):
        path = self._getPath(fileName)
        exists = os.path.exists(path)
        outputSet = SetClass(filename=path)
        if exists:
            outputSet.loadAllProperties()
            outputSet.enableAppend()
        else:
            outputSet.setStreamState(outputSet.STREAM_OPEN)
            inputMovies = self.inputMovies.get()
            if isinstance(outputSet, SetOfMovies):
                outputSet.copyInfo(inputMovies)
            else:
                outputSet.setSamplingRate(inputMovies.getSamplingRate())
                outputSet.setAcquisition(inputMovies.getAcquisition().clone())
        return outputSet

    def _publish(self, outputName, outputSet, state):
        first = not self.hasAttribute(outputName)
        if first:
            outputSet.write()
            self._crashPoint('%s written' % outputName)  # its sqlite, not yet the protocol's
        self._updateOutputSet(outputName, outputSet, state)
        if first:
            self._defineSourceRelation(self.inputMovies, getattr(self, outputName))

    def _writeSummaries(self, gains, failed):
        """Append one line per newly analysed movie (in completion order) to
        summary.txt and summaryForMonitor.txt, and one per flag or failure to
        warnings.txt: in each file only what it lacks (its lines are read once
        per process), so a resumed run writes no movie twice."""
        lines = {'summary.txt': [], 'summaryForMonitor.txt': [], 'warnings.txt': []}
        summaryKnown = self._knownLines('summary.txt', label=True)
        monitorKnown = self._knownLines('summaryForMonitor.txt', label=True)
        for movie in gains:
            movieId = movie.getObjId()
            if movieId in summaryKnown and movieId in monitorKnown:
                continue
            report = _readJson(self._statsPath(movieId))
            label = 'movie_%06d_%s' % (movieId, report['kind'])
            if movieId not in summaryKnown:
                # the verdict's column comes after the Xmipp fields; the monitor file
                # keeps exactly Xmipp's format (the paper's statistics)
                lines['summary.txt'].append(summary_line(label, report['statistics'],
                                                         checks.summary_column(report)))
            if movieId not in monitorKnown:
                lines['summaryForMonitor.txt'].append(monitor_line(label, report['statistics']))
            if verdict_of(report).flagged:
                lines['warnings.txt'].append(checks.verdict_message(movieId, report) + '\n')
            offset = _offsetMessage(movieId, report)
            if offset:
                lines['warnings.txt'].append(offset + '\n')
        for movie in failed:
            lines['warnings.txt'].append('movie_%06d: could not be analysed: %s\n'
                                         % (movie.getObjId(),
                                            _readText(self._failedPath(movie.getObjId()))))
        # warnings first: a movie in both summaries has had its warning written
        self._appendLines('warnings.txt', lines['warnings.txt'], self._knownLines('warnings.txt'))
        self._appendLines('summary.txt', lines['summary.txt'], summaryKnown, label=True)
        self._crashPoint('summary.txt')
        self._appendLines('summaryForMonitor.txt', lines['summaryForMonitor.txt'], monitorKnown,
                          label=True)

    def _knownLines(self, name, label=False):
        """The movie ids (``label``: of lines 'movie_%06d_...: ...') or the lines a run
        file holds; read once per process. A last line without its newline (a write
        cut short) is dropped from the file first."""
        key = 'file:' + name
        if key not in self._known:
            path = self._getPath(name)
            text = _readText(path, strip=False) if os.path.exists(path) else ''
            if text and not text.endswith('\n'):
                text = text[:text.rfind('\n') + 1]
                _writeText(path, text)
            lines = text.splitlines()
            if label:
                self._known[key] = {_movieIdOfLabel(line) for line in lines} - {None}
            else:
                self._known[key] = set(lines)
        return self._known[key]

    def _appendLines(self, name, lines, known, label=False):
        new = []
        for line in lines:
            key = _movieIdOfLabel(line) if label else line.rstrip('\n')
            if key in known:
                continue
            known.add(key)
            new.append(line)
        if new:
            with open(self._getPath(name), 'a') as handle:
                handle.write(''.join(new))
            self._updateWork = True


    # --------------------------- keeping up with acquisition ------------------
    def _checkBacklog(self, finished):
        """Warn, in the log and the summary, when analysis falls behind acquisition: a
        movie has waited more than BEHIND_SECONDS (or 5 analysis times, if longer) for
        a worker; say so again when the backlog is gone. The state is kept in
        extra/backlog.json for the summary."""
        now = time.time()
        with self._queue:
            waiting = [m.getObjId() for m in self._waiting]
            oldest = min((self._arrivals.get(i, now) for i in waiting), default=now)
            durations = sorted(d for _, d in self._finishedTimes)
            arrivals = sorted(self._arrivals.values())
        perMovie = durations[len(durations) // 2] if durations else None
        limit = max(BEHIND_SECONDS, 5 * perMovie if perMovie else 0)
        waited = now - oldest
        state = self._backlogState()
        behind = bool(waiting) and waited > limit and not finished
        if behind:
            workers = self._workerCount()
            recent = [t for t in arrivals if t > now - 600]
            arriving = (3600.0 * (len(recent) - 1) / (recent[-1] - recent[0])
                        if len(recent) > 2 and recent[-1] > recent[0] else None)
            state['max_waiting'] = max(state.get('max_waiting', 0), len(waiting))
            state.update(waiting=len(waiting), oldest_wait_s=round(waited),
                         seconds_per_movie=perMovie, workers=workers,
                         analysed_per_hour=(round(3600.0 * workers / perMovie)
                                            if perMovie else None),
                         arriving_per_hour=round(arriving) if arriving else None)
            if not state.get('behind'):
                state['behind'] = True
                state['episodes'] = state.get('episodes', 0) + 1
                state['since'] = time.strftime('%Y-%m-%d %H:%M:%S')
                self.warning(self._backlogMessage(state))
            self._writeBacklogState(state)
        elif state.get('behind') and (not waiting or waited < limit / 2 or finished):
            state['behind'] = False
            state['waiting'] = len(waiting)
            self.info('Analysis caught up with acquisition (behind since %s, at most %d '
                      'movies waiting).' % (state.get('since'), state.get('max_waiting', 0)))
            self._writeBacklogState(state)

    def _backlogMessage(self, state):
        rates = ''
        if state.get('analysed_per_hour'):
            rates = ('; analysing about %d movies/h (%d at once, %.1f s each)'
                     % (state['analysed_per_hour'], state['workers'],
                        state['seconds_per_movie']))
            if state.get('arriving_per_hour'):
                rates += ' while they arrive at about %d/h' % state['arriving_per_hour']
        return ('Analysis is behind acquisition: %d movies waiting, the oldest for %d s%s. '
                'To keep up: more threads (or GPUs), a larger "Analyse one movie in every" '
                '(now %d), or fewer "Frames used per movie".'
                % (state['waiting'], state['oldest_wait_s'], rates,
                   self.getAttributeValue('movieStep', 1)))

    def _backlogState(self):
        if not hasattr(self, '_backlog'):
            path = self._getExtraPath('backlog.json')
            self._backlog = _readJson(path) if os.path.exists(path) else {}
        return self._backlog

    def _writeBacklogState(self, state):
        self._backlog = state
        _writeJson(self._getExtraPath('backlog.json'), state)


    # --------------------------- gain reference ----------------------------
    def _residualMode(self):
        return bool(self.estimateResidualGain.get() and self.inputMovies.get().getGain())

    def _loadReference(self):
        """The movies' gain as used: read once, turned as asked (gainTransform: one of
        the 8 rotations/flips, estimator.orientation.TRANSFORMS), mean 1. A copy is
        written to the run folder when it differs from the input file."""
        with self._lock:
            if self._reference is not None:
                return self._reference
            copy = self._getExtraPath('gain_reference.mrc')
            if os.path.exists(copy):
                self._reference, _ = read_image(copy)
                return self._reference
            source = os.path.abspath(self.inputMovies.get().getGain())
            transform = self._gainTransform()
            try:
                raw, _ = read_image(source)
                gain, notes = read_gain_reference(source)
            except InputError as exc:
                raise InputError('movies\' gain reference: %s' % exc) from None
            if not transform.is_identity:
                gain = transform.apply(gain)
                notes.append('turned as asked: %s (MotionCor2 %s, RELION %s)'
                             % (transform.describe(), transform.motioncor2, transform.relion))
            for note in notes:
                self.info('Movies\' gain %s: %s' % (source, note))
            hint = self._orientationHint(source)
            if hint:
                self.info(hint)
            info = {'source': source, 'transform': transform.to_dict(), 'notes': notes}
            if gain.shape != raw.shape or not np.allclose(gain, raw, rtol=1e-5, atol=1e-6):
                # flipped, inverted, scaled to mean 1 or with unusable pixels
                # set to 1: a new file, never the user's
                write_mrc(copy, gain, label='scipion-gain: movies gain as used, %s, '
                                            'mean 1' % transform.motioncor2)
                info['used'] = os.path.abspath(copy)
                self.info('Movies\' gain as used written to %s' % copy)
            else:
                info['used'] = source
            _writeJson(self._getExtraPath('gain_reference.json'), info)
            self._reference = np.ascontiguousarray(gain, dtype=np.float32)
            return self._reference

    def _checkDark(self):
        """Read the movies' dark reference once, before any movie (every movie job reads
        it again): an unreadable dark fails the run with one line, not every movie."""
        path = self.inputMovies.get().getDark()
        if not path:
            return
        source = os.path.abspath(path)
        try:
            dark = movie_job.load_dark(source, self._gainTransform().to_dict())
        except InputError as exc:
            raise InputError('movies\' dark reference: %s' % exc) from None
        for note in dark.notes:
            self.info('Movies\' dark %s: %s' % (source, note))

    def _gainTransform(self):
        """The rotation/flip asked for the gain reference (an orientation.Transform)."""
        return TRANSFORMS[self.gainTransform.get() or 0]

    def _orientationHint(self, gainPath):
        """A hint when movies and gain are of formats that RELION and Xmipp read
        with different Y orientations (TIFF/EER vs MRC); we read both as stored."""
        movies = self.inputMovies.get()
        try:
            movie = movies.getFirstItem().getFileName()
            flips = [format_conventions(reader_class(path))['relion_xmipp_flip_y']
                     for path in (movie, gainPath)]
        except Exception:
            return None
        finally:
            # With the set's mapper already open (the base class iterates the set when
            # it inserts the steps), getFirstItem leaves its SELECT unfinished: a read
            # lock on the import's movies.sqlite that blocks a streaming import from
            # ever writing it again (seen when started on a set of 2 movies or more).
            movies.close()
        if None in flips or flips[0] == flips[1]:
            return None
        flipped, stored = (movie, gainPath) if flips[0] else (gainPath, movie)
        return ('Note: RELION and Xmipp read %s files upside down and %s files as stored; '
                'this protocol reads both as stored. If the residual gains are flagged, '
                'try "Orientation of the gain reference: flip upside down (RotGain 0, '
                'FlipGain 1)", or the automatic orientation check.'
                % (os.path.splitext(flipped)[1], os.path.splitext(stored)[1]))

    def _attachedGain(self):
        """The gain for outputMovies: the oriented reference, or the movies' own (or
        our flipped/normalised copy) when they have one, else the running estimate;
        None until known."""
        inputGain = self.inputMovies.get().getGain()
        if inputGain and self._orientationWanted():
            if not os.path.exists(self._orientationPath()):
                return None  # wait for the orientation check
            if os.path.exists(self._orientedPath()):
                return os.path.abspath(self._orientedPath())
        if inputGain:
            copy = self._getExtraPath('gain_reference.mrc')
            if os.path.exists(copy):
                return os.path.abspath(copy)
            info = self._getExtraPath('gain_reference.json')
            if os.path.exists(info):
                return _readJson(info)['used']
            if self.gainTransform.get():
                return None  # the turned copy is not written yet
            return os.path.abspath(inputGain)
        estimate = self._getExtraPath('estimated_gain.mrc')
        return os.path.abspath(estimate) if os.path.exists(estimate) else None

    # --------------------------- estimator settings -------------------------
    def _settings(self):
        sigma = 'auto'
        if self.method.get() == 0:
            sigma = _parseSigma(self.sigma.get())
        step, frames = self._frameSelection()
        return EstimatorSettings(method=METHODS[self.method.get()],
                                 reference=REFERENCES[self.reference.get()],
                                 sigma=sigma, iterations=self.iterations.get(),
                                 frame_step=step, frames_per_movie=frames)

    def _frameSelection(self):
        """(frame step, frames per movie) for EstimatorSettings: a frame step set (> 0:
        old runs, Xmipp workflows) wins; else the count (0: every frame)."""
        step = self.getAttributeValue('frameStep', 0) or 0
        if step > 0:
            return step, 0
        return 1, self.getAttributeValue('framesPerMovie', 0) or 0

    def _analysisSettings(self):
        return AnalysisSettings(estimator=self._settings(), thresholds=self._thresholds(),
                                verdict=VerdictSettings(max_dqe_loss=self.maxDqeLoss.get() / 100.0))

    def _thresholds(self):
        return Thresholds(std=self.stdThreshold.get(),
                          percentile_ratio=self.percentileRatioThreshold.get(),
                          max_ratio=self.maxRatioThreshold.get())

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

    # --------------------------- queue system --------------------------------
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

    # --------------------------- paths -------------------------------------
    def _runFolder(self):
        """The run folder's layout (run_folder.RunFolder), paths relative to the project."""
        return RunFolder(self._getPath())

    def _gainPath(self, movieId):
        return self._runFolder().gain(movieId)

    def _correctedGainPath(self, movieId):
        return self._runFolder().corrected_gain(movieId)

    def _defectsPath(self, movieId):
        return self._runFolder().defects(movieId)

    def _defectFilePath(self, movieId):
        return self._runFolder().defect_file(movieId)

    def _sumPath(self, movieId):
        return self._runFolder().corrected_sum(movieId)

    def _structurePath(self, movieId):
        return self._runFolder().structure(movieId)

    def _appliedReferencePath(self, movieId):
        """Movies gain-corrected at acquisition: the reference applied, recovered."""
        return self._runFolder().applied_reference(movieId)

    def _statsPath(self, movieId):
        return self._runFolder().stats(movieId)

    def _failedPath(self, movieId):
        return self._runFolder().failed(movieId)

    def _movieSumsPath(self, movieId):
        return self._runFolder().movie_sums(movieId)

    def _analysedIds(self):
        return self._runFolder().analysed_ids()

    def _validate(self):
        errors = []
        if self.method.get() == 0:
            try:
                _parseSigma(self.sigma.get())
            except ValueError as exc:
                errors.append(str(exc))
        movies = self.inputMovies.get()
        if movies is not None and movies.getGain() and self.estimateResidualGain.get() \
                and not os.path.exists(movies.getGain()):
            errors.append('The movies\' gain reference %s does not exist.' % movies.getGain())
        if movies is not None and movies.getDark() and not os.path.exists(movies.getDark()):
            errors.append('The movies\' dark reference %s does not exist.' % movies.getDark())
        return errors

    def _warnings(self):
        movies = self.inputMovies.get()
        if movies is not None and self.estimateResidualGain.get() and not movies.getGain():
            return ['The movies carry no gain reference: the gain itself will be estimated '
                    'and attached to the output movies.']
        return []

    def _summary(self):
        summary = []
        movies = self.inputMovies.get()
        if movies is not None:
            summary.append('Mode: %s.' % ('checking the movies\' gain reference (residual '
                                          'gain: frames multiplied by it first)'
                                          if self._residualMode()
                                          else 'estimating the detector gain'))
            if movies.getDark():
                summary.append('Dark reference: %s (subtracted from every frame first%s).'
                               % (movies.getDark(), ', turned as the gain'
                                  if self.gainTransform.get() else ''))
        analysed = self._analysedIds() if os.path.exists(self._getExtraPath()) else []
        failedDir = self._getExtraPath('failed')
        failed = sorted(os.listdir(failedDir)) if os.path.exists(failedDir) else []
        flagged, offsets, camera, applied = [], [], None, []
        for movieId in analysed:
            try:
                report = _readJson(self._statsPath(movieId))
                if verdict_of(report).flagged:
                    flagged.append(movieId)
                if ((report.get('input') or {}).get('lattice') or {}).get('path') == 'lattice':
                    applied.append(movieId)
                if _offsetMessage(movieId, report):
                    offsets.append(movieId)
                camera = _cameraLine(movieId, report) or camera
            except (OSError, ValueError, KeyError, AttributeError, TypeError):
                pass
        if analysed:
            summary.append('%d movies analysed, %d flagged%s.'
                           % (len(analysed), len(flagged),
                              ' (movies %s)' % ranges(flagged) if flagged else ''))
            summary += self._conclusionLines()
        else:
            summary.append('No movie analysed yet.')
        if offsets:
            summary.append('%d movies carry an offset that a dark reference should remove '
                           '(ids %s; see warnings.txt).'
                           % (len(offsets), ', '.join(map(str, offsets[:20]))
                              + (' ...' if len(offsets) > 20 else '')))
        if applied:
            summary.append('%d movies were gain-corrected at acquisition (ids %s): their '
                           'residuals are those of the reference applied, recovered from the '
                           'frames (extra/movie_%%06d_applied_reference.mrc).'
                           % (len(applied), ', '.join(map(str, applied[:20]))
                              + (' ...' if len(applied) > 20 else '')))
        if camera:
            summary.append(camera)
        if failed:
            summary.append('%d movies could not be read (see warnings.txt).' % len(failed))
        summary += self._runSummaryLines(analysed, failed)
        summary.append('Per-movie statistics: summary.txt in the run folder; the viewer '
                       '(Analyze Results) draws them.')
        return summary

    def _conclusionLines(self):
        """The conclusion sentence the report opens with (run_folder.conclusion, from the
        same verdicts) and the running estimate's verdict."""
        try:
            data = loadRunFolder(self._getPath())
        except Exception:  # a file being written: the summary waits for the next refresh
            return []
        lines = [conclusion(data)] if data.movies else []
        accumulated = data.accumulated_verdict
        if accumulated is not None:
            lines.append('Running estimate over all movies: %s.' % accumulated.sentence)
        return lines

    def _runSummaryLines(self, analysed, failed):
        """Summary lines of issue 12 and 16: why movies failed, the notes on reading the
        movies (also in the log), and whether analysis kept up with acquisition."""
        lines = []
        for name in failed[:3]:
            try:
                lines.append('%s: %s' % (name.replace('.txt', ''),
                                         _readText(self._getExtraPath('failed', name))))
            except OSError:
                pass
        if len(failed) > 3:
            lines.append('... and %d more (warnings.txt).' % (len(failed) - 3))
        noted = []
        for movieId in analysed:
            try:
                notes = _readJson(self._statsPath(movieId)).get('input_notes') or []
            except (OSError, ValueError):
                continue
            if notes:
                noted.append((movieId, notes[0]))
        if noted:
            lines.append('Notes on reading %d movies (all in the log and the stats JSON), '
                         'e.g. movie %d: %s' % (len(noted), noted[0][0], noted[0][1]))
        path = self._getExtraPath('backlog.json')
        if os.path.exists(path):
            try:
                state = _readJson(path)
            except (OSError, ValueError):
                state = {}
            if state.get('behind'):
                lines.append('Behind acquisition since %s: %d movies waiting, the oldest for '
                             '%d s (see the log).' % (state.get('since'), state.get('waiting', 0),
                                                      state.get('oldest_wait_s', 0)))
            elif state.get('episodes'):
                lines.append('Fell behind acquisition %d time(s), at most %d movies waiting; '
                             'caught up.' % (state['episodes'], state.get('max_waiting', 0)))
        return lines

    def _methods(self):
        """The Methods paragraph of the chosen method with its parameter values and the
        reference written out (report.methods, shared with the HTML report)."""
        settings = {'method': METHODS[self.method.get()],
                    'reference': REFERENCES[self.reference.get()],
                    'sigma': _parseSigmaOr(self.sigma.get()),
                    'iterations': self.iterations.get()}
        settings['frame_step'], settings['frames_per_movie'] = self._frameSelection()
        analysed = (len(self._analysedIds()) if os.path.exists(self._getExtraPath()) else None)
        movies = self.inputMovies.get()
        reference = (os.path.basename(movies.getGain())
                     if movies is not None and movies.getGain() and self._residualMode()
                     else None)
        return [' '.join(methods_sentences(
            settings, 'residual' if self._residualMode() else 'gain', self._thresholds(),
            movies=analysed or None, movie_step=self.movieStep.get(),
            reference_name=reference, verdict_source=self._verdictSource(),
            max_dqe_loss=self.maxDqeLoss.get() / 100.0))]

    def _verdictSource(self):
        """Where the verdicts come from (Verdict.source) for the Methods text."""
        ids = self._analysedIds() if os.path.exists(self._getExtraPath()) else []
        if not ids:
            return 'verdict'
        try:
            return verdict_of(_readJson(self._statsPath(ids[0]))).source
        except (OSError, ValueError):
            return 'verdict'


# ------------------------------ helpers ------------------------------------
def _offsetMessage(movieId, report):
    """The warning for a movie whose frames carry an offset (input.offset), or None."""
    offset = (report.get('input') or {}).get('offset') or {}
    if not offset.get('detected'):
        return None
    if offset.get('relative_to') == 'dark reference':
        return ('movie_%06d: after the dark reference the frames still sit about %.0f ADU from '
                'the level of no electron: is it the right dark reference?'
                % (movieId, offset['offset_adu']))
    return ('movie_%06d: frames carry an offset of about %.0f ADU: give the dark reference'
            % (movieId, offset['offset_adu']))


def _cameraLine(movieId, report):
    """The summary's line about the camera's conversion (input.conversion), or None."""
    conversion = (report.get('input') or {}).get('conversion') or {}
    if not conversion.get('measured'):
        return None
    slope = conversion['variance_slope_adu']
    factor = conversion.get('adu_per_electron')
    if factor is None and 0.5 < slope < 2.0:
        return None  # counting frames
    parts = (['%.4g ADU per electron (spread %.2f)' % (factor, conversion['electron_spread'])]
             if factor is not None else [])
    parts.append('variance slope %.4g ADU' % slope)
    if conversion.get('read_noise_adu') is not None:
        parts.append('read noise %.3g ADU' % conversion['read_noise_adu'])
    parts.append('%.3g e/px per frame (shot-noise equivalent)'
                 % conversion['electrons_per_pixel_per_frame'])
    return 'Camera (photon transfer, movie %d): %s.' % (movieId, ', '.join(parts))


def gain_map_display_attributes(stats, report):
    """The attributes Scipion's table of gain maps shows first, in this order: the verdict
    (``report``: the movie's stats; checks.verdict_attributes), then this map's std in
    per cent and its two ratios (``stats``: this map's statistics)."""
    verdict = checks.verdict_attributes(verdict_of(report))
    s, r = stats['statistics'], stats['ratios']
    return {'_verdictFlagged': verdict['_verdictFlagged'],
            '_verdictReasons': verdict['_verdictReasons'],
            '_gainStdPercent': pwobj.Float(100.0 * s['std']),
            '_gainPercentileRatio': pwobj.Float(min(r['p97.5/p2.5'], 1e6)),
            '_gainMaxRatio': pwobj.Float(min(r['max/p97.5'], 1e6)),
            '_dqeLoss': verdict['_dqeLoss']}


#: Scipion's table of a SetOfGainMaps: these columns first and visible (the viewers
#: register them for the class); the others follow, hidden until asked for
GAIN_MAP_COLUMNS = ('id', '_verdictFlagged', '_verdictReasons', '_gainStdPercent',
                    '_gainPercentileRatio', '_gainMaxRatio', '_dqeLoss',
                    '_defectDeadPixels', '_defectHotPixels', '_defectRows', '_defectColumns',
                    '_filename')


def _parseSigmaOr(value):
    try:
        return _parseSigma(value)
    except ValueError:
        return value


def _parseSigma(value):
    text = (value or 'auto').strip().lower()
    if text == 'auto':
        return 'auto'
    try:
        sigma = float(text)
    except ValueError:
        raise ValueError("Sigma must be 'auto' or a number >= 0, not %r." % value) from None
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError("Sigma must be 'auto' or a number >= 0, not %r." % value)
    return sigma
