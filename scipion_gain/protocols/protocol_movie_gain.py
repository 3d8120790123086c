"""Scipion protocol "movie gain": gain and residual gain of a SetOfMovies, in streaming.

For every analysed movie it runs the estimator of ``scipion_gain.estimator``
(Sorzano et al. 2018: smooth midway equalization and the Eq. 7 iteration):

* residual mode (the movies carry a gain reference and ``estimateResidualGain``
  is on): the frames are first MULTIPLIED by the movies' gain (the Scipion
  convention: a gain reference multiplies raw frames), so the estimate is the
  correction still missing, flat (all 1) when the reference is right;
* gain mode (no gain on the movies, or ``estimateResidualGain`` off): the
  estimate is the gain itself.

pwem defines no gain flip or rotation, so movie and gain are read as stored;
``gainTransform`` applies one of the 8 rotations/flips MotionCor2 and RELION
know, and the orientation check finds one itself. A dark reference on the
movies is subtracted from every frame first (corrected = (raw - dark) x gain).

This file holds the form, the steps and the info methods. The rest lives
beside it: the streaming scheduler (``streaming.py``), how each movie runs
(``execution.py`` over ``movie_job``, the one per-movie path), the output sets
and text files (``outputs.py``), the reference and its orientation check
(``orientation_check.py``), the running estimate (``running_estimate.py``), and
the run folder's contract (``scipion_gain.run_folder``: its paths, text
formats, reference and backlog).
"""
import inspect
import os
import threading
import time

import numpy as np

import pyworkflow.protocol.params as params
import pyworkflow.utils as pwutils
from pyworkflow import BETA

from pwem.objects import SetOfImages, SetOfMovies
from pwem.protocols import ProtProcessMovies

from ..estimator import EstimatorSettings, Thresholds
from ..estimator.analysis import AnalysisSettings
from ..estimator.orientation import TRANSFORMS
from ..estimator.verdict import VerdictSettings, verdict_of
from ..objects import SetOfGainMaps
from ..report.methods import methods_sentences
from ..report.run_folder import conclusion, load as loadRunFolder
from ..run_folder import RunFolder
from ..run_folder.logs import movies_summary_lines, read_json, session_quality_line
from .execution import MovieExecution
from .orientation_check import OUTPUT_ORIENTED, OrientationCheck
from .outputs import (OUTPUT_ESTIMATED, OUTPUT_MOVIES,
                      OUTPUT_RESIDUAL, OutputSets)
from .running_estimate import RunningEstimate
from .streaming import MovieStream

#: the defaults that keep a 4096 x 4096 x 40-frame residual session up with the camera
#: on 2 CPU cores
DEFAULT_MOVIE_STEP = 10
DEFAULT_FRAMES_PER_MOVIE = 20
#: the paper's thresholds and the verdict's DQE loss, as the estimator defines them
PAPER_THRESHOLDS = Thresholds()
DEFAULT_MAX_DQE_LOSS_PERCENT = 100 * VerdictSettings().max_dqe_loss

METHODS = ['sme', 'mean', 'std', 'robust']
REFERENCES = ['single', 'local']
#: the form's words for the methods and references (same order as METHODS / REFERENCES)
METHOD_CHOICES = ['column/row equalization (the paper)', 'per-pixel mean (RELION idea)',
                  'per-pixel spread (Afanasyev)',
                  'column/row equalization, specimen divided out (carbon, gold, ice)']
REFERENCE_CHOICES = ['whole frame', 'neighbouring lines']
#: the default method's index (the form keeps the order above: saved runs store the index)
ROBUST = METHODS.index('robust')


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


class GainProtMovieGain(MovieStream, MovieExecution, OutputSets, OrientationCheck,
                        RunningEstimate, ProtProcessMovies):
    """Estimate the gain of a direct detector, or the residual gain left after
    the movies' gain reference, from the movies themselves (Sorzano et al. 2018),
    and flag movies whose residual gain is not flat. Works in streaming.
    """
    _label = 'movie gain'
    _devStatus = BETA
    _possibleOutputs = {OUTPUT_ESTIMATED: SetOfGainMaps, OUTPUT_RESIDUAL: SetOfGainMaps,
                        OUTPUT_MOVIES: SetOfMovies, OUTPUT_ORIENTED: SetOfImages}

    @classmethod
    def getClassLabel(cls, prependPackageName=True):
        """'scipion-gain - movie gain', the default run name: pyworkflow writes a run's name
        between underscores (its italics) in the Summary and Methods headers, and the
        package's own underscore ('scipion_gain') ended the italics after 'scipion'."""
        return super().getClassLabel(prependPackageName).replace('_', '-')

    @classmethod
    def getDoc(cls):
        """The help the protocol's form shows: the docstring without its indentation."""
        return inspect.cleandoc(cls.__doc__ or '')

    def __init__(self, **kwargs):
        ProtProcessMovies.__init__(self, **kwargs)
        self._lock = threading.RLock()
        self._reference = None        # the movies' gain as used (np array), loaded once
        self._accumulator = None      # running sums over analysed movies (GainAccumulator)
        self._deviceWarned = False
        self._orientLock = threading.Lock()
        self._orientation = None      # the orientation decision (dict), once taken
        self._oriented = None         # the oriented reference (np array), when one was written
        self._known = {}              # output name -> ids (or labels) it holds
        self._updateWork = False
        self._initStream()

    # -------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label=pwutils.Message.LABEL_INPUT)
        self._defineInputParams(form)
        self._defineSamplingParams(form)
        form.addSection(label='Estimation')
        self._defineEstimationParams(form)
        form.addSection(label='Verdict')
        self._defineVerdictParams(form)
        self._defineExecutionParams(form)

    def _defineInputParams(self, form):
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
    def _defineSamplingParams(self, form):
        """Which movies, and which of their frames, are analysed."""
        form.addParam('movieStep', params.IntParam, default=DEFAULT_MOVIE_STEP,
                      validators=[params.Positive], label='Analyse one movie in every',
                      help='1 analyses every movie; N the 1st, the (N+1)th, ... in order of '
                           'arrival (the first and last movies always; the others still go to '
                           'the output movies). The default, %d, keeps up with a fast camera on '
                           '2 CPU cores (a 4096 x 4096 movie takes about half a minute): a '
                           'reference that goes wrong is caught at most %d movies later. Choose '
                           '1 for a small or finished set, or with a GPU.'
                           % (DEFAULT_MOVIE_STEP, DEFAULT_MOVIE_STEP - 1))
        form.addParam('framesPerMovie', params.IntParam, default=DEFAULT_FRAMES_PER_MOVIE,
                      validators=[params.GE(0)], label='Frames used per movie',
                      help='How many frames of each analysed movie are used, evenly spaced '
                           'over it (a movie shorter than twice this is used whole); 0: every '
                           'frame. Fewer frames are faster but hold fewer electrons, so subtle '
                           'errors are missed more often: on simulated movies a 3 % step in one '
                           'readout sector was caught in 18 of 20 movies with 20 frames, 13 '
                           'with 10 and 1 with 5; a 2 % column pattern in every movie with 5 '
                           'frames or more.')
        form.addParam('frameStep', params.IntParam, default=0,
                      validators=[params.GE(0)], expertLevel=params.LEVEL_ADVANCED,
                      label='Or use one frame in every',
                      help='0: "Frames used per movie" decides. N uses every N-th frame of '
                           'every movie instead, whatever its length (Xmipp\'s frameStep). '
                           'Runs and workflows made before "Frames used per movie" existed '
                           'keep the frame step they had (1: every frame).')

    def _defineEstimationParams(self, form):
        form.addParam('method', params.EnumParam, choices=METHOD_CHOICES, default=ROBUST,
                      label='Estimation method',
                      help='specimen divided out (default): the paper\'s column/row '
                           'equalization on the movie\'s sum after a model of the specimen '
                           '(carbon, gold, holes, ice, particles) is divided out, so that a '
                           'specimen edge does not become stripes of the map; pixels under gold '
                           'are marked not estimable. '
                           'column/row equalization: the paper\'s method as published (smooth midway '
                           'equalization, SME): in every frame the histogram of each column, '
                           'and of each row, is matched to a common reference; what a line '
                           'records consistently more or less than the others is its gain. '
                           'per-pixel mean: the inverse of each pixel\'s mean over the frames '
                           '(RELION\'s idea; needs many frames). per-pixel spread: the inverse '
                           'of each pixel\'s standard deviation (Afanasyev et al. 2015).')
        form.addParam('reference', params.EnumParam, choices=REFERENCE_CHOICES, default=0,
                      condition='method == 0 or method == %d' % ROBUST,
                      label='Compare each line with',
                      help='whole frame: one reference histogram for the whole frame (the '
                           'paper\'s Eq. 3, used for its results). neighbouring lines: a '
                           'reference from the columns (rows) around each one, weighted by a '
                           'Gaussian, which follows a smooth illumination better.')
        form.addParam('sigma', params.StringParam, default='auto',
                      condition='method == 0 or method == %d' % ROBUST,
                      label='Neighbourhood width (pixels)',
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
        form.addParam('movieProcesses', params.BooleanParam, default=False,
                      expertLevel=params.LEVEL_ADVANCED,
                      label='Analyse each movie in its own process?',
                      help='Each movie is analysed by a worker thread of this protocol (one per '
                           'thread beyond the first). Yes: each runs as the command '
                           '"scipion-gain movie-job" instead, as it always does when the queue '
                           'runs each job (QUEUE_FOR_JOBS=Y); it costs about a second per movie '
                           'to start, and keeps one movie\'s memory out of this process.')

    def _defineVerdictParams(self, form):
        form.addParam('maxDqeLoss', params.FloatParam, default=DEFAULT_MAX_DQE_LOSS_PERCENT,
                      validators=[params.Positive],
                      label='Flag when the reference costs at least (% of DQE)',
                      help='The verdict: a movie is flagged when what is left over holds '
                           'structure beyond the estimate\'s noise (columns, rows, readout '
                           'sectors, pixels) that costs at least this percentage of the '
                           'detector\'s DQE (detective quantum efficiency) at the movie\'s '
                           'dose, as Gatan\'s "derating" of a gain reference.')
        form.addParam('stdThreshold', params.FloatParam, default=PAPER_THRESHOLDS.std,
                      validators=[params.Positive], label="Paper's threshold: spread (std) above",
                      help='Standard deviation of the (residual) gain map (the paper: 0.04). '
                           'The paper\'s three statistics are shown beside the verdict, their '
                           'values over these thresholds marked, and written to '
                           'summaryForMonitor.txt for the facilities monitor; they do not make '
                           'the verdict.')
        form.addParam('percentileRatioThreshold', params.FloatParam,
                      default=PAPER_THRESHOLDS.percentile_ratio,
                      validators=[params.Positive], label="Paper's threshold: p97.5 / p2.5 above",
                      help='Ratio of the 97.5th and 2.5th percentiles of the map (the paper: '
                           '1.15).')
        form.addParam('maxRatioThreshold', params.FloatParam,
                      default=PAPER_THRESHOLDS.max_ratio,
                      validators=[params.Positive], label="Paper's threshold: max / p97.5 above",
                      help='Ratio of the maximum and the 97.5th percentile of the map (the '
                           'paper: 4.5): hot pixels.')

    def _defineExecutionParams(self, form):
        form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                       label='Use GPU?',
                       help='Use a CUDA GPU through CuPy (the "gpu" extra). Without CuPy or '
                            'a GPU the protocol warns and runs on the CPU.')
        form.addHidden(params.GPU_LIST, params.StringParam, default='0',
                       label='GPU IDs', help='GPUs to use, e.g. "0" or "0 1"; movies are '
                                             'spread over them in arrival order.')
        # pyworkflow draws no tab for the parallel section: a parameter of ours declared
        # after it would be in no tab at all (tests/test_protocol_form.py)
        form.addParallelSection(threads=2, mpi=0)

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

    def createOutputStep(self):
        """Runs once the input is closed and every movie is done."""
        self._checkNewOutput()
        if not self._analysedIds():
            raise Exception('No movie could be analysed: see the errors above and '
                            '%s.' % self._getExtraPath('failed'))

    # --------------------------- estimator settings -------------------------
    def _settings(self):
        sigma = 'auto'
        if self.method.get() in (0, ROBUST):
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

    # --------------------------- paths and INFO functions --------------------
    def _runFolder(self):
        """The run folder's layout (run_folder.RunFolder), paths relative to the project."""
        return RunFolder(self._getPath())

    def _statsPath(self, movieId):
        return self._runFolder().stats(movieId)

    def _failedPath(self, movieId):
        return self._runFolder().failed(movieId)

    def _analysedIds(self):
        return self._runFolder().analysed_ids()

    def _validate(self):
        errors = []
        if self.method.get() in (0, ROBUST):
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
        summary += movies_summary_lines(self._runFolder(), self._conclusionLines)
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
            quality = session_quality_line(data.accumulated_stats)
            if quality:   # in gain mode that estimate is the gain the output movies carry
                lines.append(quality)
        return lines

    def _methods(self):
        """The Methods paragraph of the chosen method with its parameter values and the
        reference written out (report.methods, shared with the HTML report)."""
        settings = {'method': METHODS[self.method.get()],
                    'reference': REFERENCES[self.reference.get()],
                    'sigma': _parseSigmaOr(self.sigma.get()),
                    'iterations': self.iterations.get()}
        settings['frame_step'], settings['frames_per_movie'] = self._frameSelection()
        analysed = len(self._analysedIds())
        movies = self.inputMovies.get()
        reference = (os.path.basename(movies.getGain())
                     if movies is not None and movies.getGain() and self._residualMode()
                     else None)
        first = self._firstStats()
        return [' '.join(methods_sentences(
            settings, 'residual' if self._residualMode() else 'gain', self._thresholds(),
            movies=analysed or None, frames=first.get('frames'),
            movie_step=self.movieStep.get(), reference_name=reference,
            verdict_source=verdict_of(first).source if first else 'verdict',
            max_dqe_loss=self.maxDqeLoss.get() / 100.0))]

    def _firstStats(self):
        """The first analysed movie's statistics ({} before any): the Methods text says the
        frames it used and where its verdict came from."""
        ids = self._analysedIds()
        if not ids:
            return {}
        try:
            return read_json(self._statsPath(ids[0]))
        except (OSError, ValueError):
            return {}

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
