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
are stored in their files and uses them as they are; the ``gainFlip`` option
flips the gain (into a new file in the run folder) for the cases where a gain
is known to be stored upside down or mirrored (e.g. a Gatan DM4 reference for
TIFF movies). A wrongly oriented gain shows up as a flagged residual.

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
orientation.json and oriented_gain.mrc (the orientation check, issue 6).

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

from pwem.objects import Image, SetOfImages, SetOfMovies
from pwem.protocols import ProtProcessMovies

from ..estimator import EstimatorSettings, Thresholds, map_statistics
from ..estimator.analysis import AnalysisSettings, analyse
from ..estimator.verdict import VerdictSettings
from ..estimator.arrays import resolve_device
from ..io import (InputError, format_conventions, read_gain_reference, read_image,
                  reader_class, write_mrc)
from ..io.results import AnalysisOutputs, write_analysis
from . import checks
from .checks import good_mask as _goodMask
from .orientation_check import OUTPUT_ORIENTED, OrientationCheck
from .running_estimate import RunningEstimate
from .run_files import (monitor_line, read_json as _readJson, read_lines as _readLines,
                        read_text as _readText, summary_line, write_json as _writeJson,
                        write_text as _writeText)

OUTPUT_ESTIMATED = 'estimatedGains'
OUTPUT_RESIDUAL = 'residualGains'
OUTPUT_MOVIES = 'outputMovies'

METHODS = ['sme', 'mean', 'std']
REFERENCES = ['single', 'local']
FLIPS = ['no', 'upside down', 'left-right']

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
    _possibleOutputs = {OUTPUT_ESTIMATED: SetOfImages, OUTPUT_RESIDUAL: SetOfImages,
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

    # -------------------------- DEFINE param functions ----------------------
    def _defineParams(self, form):
        form.addSection(label=pwutils.Message.LABEL_INPUT)
        form.addParam('inputMovies', params.PointerParam, pointerClass='SetOfMovies',
                      important=True, label=pwutils.Message.LABEL_INPUT_MOVS,
                      help='Movies, in a closed set or in streaming. Open sets are followed '
                           'until they close.')
        form.addParam('estimateResidualGain', params.BooleanParam, default=True,
                      label='Estimate the residual gain?',
                      help='Used when the movies carry a gain reference: the frames are '
                           'multiplied by it and the estimate is the gain still missing '
                           '(flat when the reference is right); the three flags tell when it '
                           'is not. When the movies carry no gain (or this is off), the gain '
                           'itself is estimated and attached to the output movies.')
        form.addParam('gainFlip', params.EnumParam, choices=FLIPS, default=0,
                      expertLevel=params.LEVEL_ADVANCED, label='Flip the movies\' gain',
                      help='Flip the movies\' gain reference before using it, for a gain '
                           'stored upside down or mirrored relative to the movies (e.g. a '
                           'Gatan DM4 reference with TIFF movies). The flipped gain is '
                           'written to the run folder; the input file is never changed.')
        form.addParam('estimateOrientation', params.BooleanParam, default=True,
                      condition='estimateResidualGain',
                      label='Check the gain orientation?',
                      help='When the movies carry a gain: estimate the gain of the first '
                           'movies without it and find which of the 8 rotations/flips of the '
                           'reference, as stored or inverted (1/x), agrees with it. A confident '
                           'match that changes the reference gives a new, oriented reference in '
                           'the run folder (the input file is never changed), used for the '
                           'residuals from then on, attached to the output movies and output as '
                           '"orientedGain"; the log gives the transform in MotionCor2 and RELION '
                           'terms. Without a confident match the reference is kept as it is.')
        form.addParam('orientationMovies', params.IntParam, default=3,
                      validators=[params.Positive], condition='estimateOrientation',
                      expertLevel=params.LEVEL_ADVANCED, label='Movies for the orientation',
                      help='The first N movies (arrival order) give the estimate the reference '
                           'is compared with; fewer when the input closes with fewer.')
        form.addParam('movieStep', params.IntParam, default=1,
                      validators=[params.Positive], label='Analyse every N-th movie',
                      help='Movies are counted in arrival order; 1 analyses all. The first '
                           'movie and the last movie of a closed set are always analysed. '
                           'Movies not analysed still go to the output movies.')
        form.addParam('frameStep', params.IntParam, default=1,
                      validators=[params.Positive], label='Use every N-th frame',
                      help='1 uses all frames; 2 every second frame, and so on.')

        form.addSection(label='Estimator')
        form.addParam('method', params.EnumParam, choices=METHODS, default=0,
                      label='Method',
                      help='sme: smooth midway equalization of columns and rows (the '
                           'paper\'s method). mean: inverse per-pixel mean (RELION\'s idea). '
                           'std: inverse per-pixel standard deviation (Afanasyev et al. 2015).')
        form.addParam('reference', params.EnumParam, choices=REFERENCES, default=0,
                      condition='method == 0', label='Reference histogram',
                      help='single: one reference histogram for the whole frame (Eq. 3, '
                           'used for the paper\'s results). local: Gaussian-weighted '
                           'neighbouring columns/rows.')
        form.addParam('sigma', params.StringParam, default='auto',
                      condition='method == 0', label='Sigma (auto or a value)',
                      help='Width of the Gaussian over neighbouring columns/rows. "auto" '
                           'searches it per frame, minimising the total variation (Eq. 5); '
                           'a number fixes it.')
        form.addParam('iterations', params.IntParam, default=1,
                      validators=[params.Positive], condition='method == 0',
                      label='Iterations (Eq. 7)',
                      help='Fixed-point iterations at most; one is often enough.')
        form.addParam('accumulate', params.BooleanParam, default=True,
                      label='Keep a running estimate?',
                      help='Besides the estimate of each movie, keep one from the frames of '
                           'all analysed movies (sums over movies), written after each movie '
                           'to extra/accumulated_gain.mrc.')

        form.addSection(label='Flags')
        form.addParam('maxDqeLoss', params.FloatParam, default=0.1,
                      validators=[params.Positive], label='Flag when DQE loss (%) >=',
                      help='The verdict: a movie is flagged when its residual gain holds '
                           'structure beyond the estimate\'s noise that costs at least this '
                           'percentage of the detective quantum efficiency (DQE) at the movie\'s '
                           'dose (1 - 1 / (1 + N s^2): N electrons per pixel, s the relative RMS '
                           'of the structure; Gatan\'s "derating" of a gain reference).')
        form.addParam('stdThreshold', params.FloatParam, default=0.04,
                      validators=[params.Positive], label='Flag when std >',
                      help='Standard deviation of the (residual) gain (paper: 0.04).')
        form.addParam('percentileRatioThreshold', params.FloatParam, default=1.15,
                      validators=[params.Positive], label='Flag when p97.5 / p2.5 >',
                      help='Ratio of the 97.5 and 2.5 percentiles (paper: 1.15).')
        form.addParam('maxRatioThreshold', params.FloatParam, default=4.5,
                      validators=[params.Positive], label='Flag when max / p97.5 >',
                      help='Ratio of the maximum and the 97.5 percentile (paper: 4.5).')

        form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                       label='Use GPU?',
                       help='Use a CUDA GPU through CuPy (the "gpu" extra). Without CuPy or '
                            'a GPU the protocol warns and runs on the CPU.')
        form.addHidden(params.GPU_LIST, params.StringParam, default='0',
                       label='GPU IDs', help='GPUs to use, e.g. "0" or "0 1"; movies are '
                                             'spread over them in arrival order.')
        form.addParallelSection(threads=2, mpi=0)

    # -------------------------- INSERT steps functions ----------------------
    def _insertNewMoviesSteps(self, insertedDict, inputMovies):
        """Insert a step for each new movie to analyse (every movieStep-th in
        arrival order, the first, and the last once the input is closed).
        ``insertedDict`` maps a movie id to its step id, or to None for a
        movie that is passed through without analysis."""
        movies = sorted((m.clone() for m in inputMovies), key=lambda m: m.getObjId())
        closed = getattr(self, 'streamClosed', None)
        if closed is None:
            closed = self.inputMovies.get().isStreamClosed()
        deps = []
        for position, movie in enumerate(movies):
            movieId = movie.getObjId()
            self._positions[movieId] = position
            if insertedDict.get(movieId) is not None:
                continue  # already has its step
            if self._isAnalysed(position, len(movies), closed):
                insertedDict[movieId] = self._insertMovieStep(movie)
                deps.append(insertedDict[movieId])
            else:
                insertedDict[movieId] = None
        return deps

    def _isAnalysed(self, position, count, closed):
        return (position % max(1, self.movieStep.get()) == 0
                or (closed and position == count - 1))

    def _checkNewInput(self):
        """Load the input when it changed and insert steps for new movies; also
        when the stream just closed, so that its last movie gets analysed."""
        inputFile = self.inputMovies.get().getFileName()
        mTime = os.path.getmtime(inputFile)
        if hasattr(self, 'listOfMovies') and getattr(self, '_lastInputCheck', 0) > mTime:
            return
        self._lastInputCheck = time.time()
        self._loadInputList()
        deps = self._insertNewMoviesSteps(self.insertedDict, self.listOfMovies)
        if deps:
            outputStep = self._getFirstJoinStep()
            if outputStep is not None:
                outputStep.addPrerequisites(*deps)
            self.updateSteps()

    # --------------------------- STEPS functions ----------------------------
    def _convertInputStep(self):
        """pwem's conversion step (checks that the gain file exists), then our
        copy of the gain when it must be flipped or normalised."""
        ProtProcessMovies._convertInputStep(self)
        pwutils.makePath(self._getExtraPath('failed'))
        if self._residualMode():
            self._loadReference()
        if self.usesGpu():
            self._device(0)  # warn once, early, if the GPU cannot be used

    def _processMovie(self, movie):
        movieId = movie.getObjId()
        if os.path.exists(self._statsPath(movieId)):
            self.info('Movie %d: already analysed, results kept.' % movieId)
            return
        position = self._positions.get(movieId, movieId - 1)
        movieFile = getattr(movie, '_originalFileName', None)
        movieFile = movieFile.get() if movieFile is not None else movie.getFileName()
        movieFile = os.path.realpath(movieFile)  # the user's file, not the import's link to it
        residual = self._residualMode()
        try:
            reference, referenceKind = self._movieReference() if residual else (None, None)
            analysis = analyse([movie.getFileName()], reference=reference,
                               settings=self._analysisSettings(), device=self._device(position))
        except Exception as exc:  # a corrupt or unreadable movie: report it, go on
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            message = message.replace(movie.getFileName(), movieFile)
            if not isinstance(exc, InputError):
                self.info(traceback.format_exc())
            self.error('Movie %d (%s) could not be analysed: %s' % (movieId, movieFile, message))
            _writeText(self._failedPath(movieId), message + '\n')
            return

        result = analysis.result
        extra = {'movie_id': int(movieId), 'movie_index': int(position), 'movie_file': movieFile}
        if residual:
            extra['gain_reference'] = referenceKind  # 'as given' or 'oriented'
            # The gain to use from now on: the movies' gain times the correction
            # still missing (both multiply raw frames), mean 1.
            corrected = _normalised(reference * analysis.gain, ~result.defects)
            write_mrc(self._correctedGainPath(movieId), corrected,
                      label='scipion-gain: movies gain x residual of movie %d' % movieId)
            extra['corrected_gain'] = map_statistics(corrected, self._thresholds(),
                                                     _goodMask(result.defects))
        self._accumulate(movieId, result, reference, referenceKind)
        # the stats JSON is written last: its presence marks the results complete
        report = write_analysis(analysis, self._movieOutputs(movieId), 'movie %d' % movieId,
                                extra=extra)

        stats = report['statistics']
        self.info('Movie %d: %s std=%.4f p2.5=%.4f p97.5=%.4f max=%.4f (%d frames, %s, %.1f s)'
                  % (movieId, report['kind'], stats['std'], stats['p2.5'], stats['p97.5'],
                     stats['max'], report['frames'], report['device'], report['seconds']))
        for note in report['notes']:
            self.info('Movie %d: %s' % (movieId, note.replace(movie.getFileName(), movieFile)))
        if report['verdict']['flagged']:
            self.warning(checks.verdict_message(movieId, report))
        counts = report['defects']['counts']
        if report['defects']['pixels']:
            self.info('Movie %d: %d defective pixels (%s) -> %s'
                      % (movieId, report['defects']['pixels'],
                         ', '.join('%s %d' % (k.replace('_', ' '), v)
                                   for k, v in counts.items() if v),
                         self._defectFilePath(movieId)))

    def _movieOutputs(self, movieId):
        return AnalysisOutputs(gain=self._gainPath(movieId), json=self._statsPath(movieId),
                               defect_labels=self._defectsPath(movieId),
                               defect_file=self._defectFilePath(movieId),
                               structure=self._structurePath(movieId),
                               corrected_sum=self._sumPath(movieId))

    def createOutputStep(self):
        """Runs once the input is closed and every movie is done."""
        self._checkNewOutput()
        if not self._readIds(self._gainsDoneFile()) or not self._analysedIds():
            raise Exception('No movie could be analysed: see the errors above and '
                            '%s.' % self._getExtraPath('failed'))

    # --------------------------- OUTPUT handling (main thread) ---------------
    def _checkNewOutput(self):
        if getattr(self, 'finished', False) or not hasattr(self, 'listOfMovies'):
            return
        with self._lock:
            self._updateOutputs()

    def _updateOutputs(self):
        moviesDone = set(self._readIds(self._moviesDoneFile()))
        gainsDone = set(self._readIds(self._gainsDoneFile()))
        newGains, newFailed, newMovies, pending = [], [], [], False
        for movie in sorted(self.listOfMovies, key=lambda m: m.getObjId()):
            movieId = movie.getObjId()
            if movieId not in self.insertedDict:
                pending = True
                continue
            failed = os.path.exists(self._failedPath(movieId))
            if self.insertedDict[movieId] is not None and movieId not in gainsDone:
                if not self._isMovieDone(movie):
                    pending = True
                    continue
                if os.path.exists(self._statsPath(movieId)):
                    newGains.append(movie)
                elif failed:
                    newFailed.append(movie)
                else:  # done marker without results: should not happen
                    self.warning('Movie %d: step done but no results found.' % movieId)
                    _writeText(self._failedPath(movieId), 'no results were written\n')
                    newFailed.append(movie)
                    failed = True
            if failed or movieId in moviesDone:
                continue  # unreadable movies are not passed on
            newMovies.append(movie)

        finished = self.streamClosed and not pending
        state = pwobj.Set.STREAM_CLOSED if finished else pwobj.Set.STREAM_OPEN
        if finished and self._orientationWanted():
            # the input closed before the orientation could be decided by a movie
            self._orientationDecision(wait=False)
        self._updateOrientedOutput()

        if newGains or newFailed:
            self._writeSummaries(newGains, newFailed)
        if newGains or (finished and gainsDone):
            self._updateGainSets(newGains, state)
        if newGains or newFailed:
            self._appendIds(self._gainsDoneFile(), newGains + newFailed)

        attached = self._attachedGain()
        if attached is not None and (newMovies or finished):
            self._updateMovieSet(newMovies, attached, state)
            self._appendIds(self._moviesDoneFile(), newMovies)
        elif attached is None and finished and newMovies:
            self.warning('No gain could be estimated: the output movies are not produced.')

        if finished:
            self.finished = True
            outputStep = self._getFirstJoinStep()
            if outputStep and outputStep.isWaiting():
                outputStep.setStatus(pwcts.STATUS_NEW)

    def _updateGainSets(self, movies, state):
        residual = self._residualMode()
        sets = [(OUTPUT_ESTIMATED, 'estimated_gains.sqlite', 'corrected' if residual else 'gain')]
        if residual:
            sets.append((OUTPUT_RESIDUAL, 'residual_gains.sqlite', 'gain'))
        for outputName, fileName, which in sets:
            imageSet = self._loadOutputSet(SetOfImages, fileName)
            for movie in movies:
                report = _readJson(self._statsPath(movie.getObjId()))
                if which == 'corrected':
                    path = self._correctedGainPath(movie.getObjId())
                    stats = report['corrected_gain']
                else:
                    path = self._gainPath(movie.getObjId())
                    stats = report
                imageSet.append(self._gainImage(movie, path, stats, report))
            self._publish(outputName, imageSet, state)

    def _gainImage(self, movie, path, stats, report):
        """An output item: the map, its statistics and the paper's flags (``stats``),
        the movie's noise-aware assessment and defect counts (``report``)."""
        image = Image(location=path)
        image.setObjId(movie.getObjId())
        image.setSamplingRate(movie.getSamplingRate())
        for attribute, key in STAT_ATTRIBUTES.items():
            setattr(image, attribute, pwobj.Float(stats['statistics'][key]))
        for attribute, key in FLAG_ATTRIBUTES.items():
            setattr(image, attribute, pwobj.Boolean(bool(stats['flags'][key])))
        image._gainFlagged = pwobj.Boolean(bool(stats['flagged']))
        for attribute, value in checks.verdict_attributes(report.get('verdict')).items():
            setattr(image, attribute, value)
        for attribute, value in checks.assessment_attributes(report.get('assessment')).items():
            setattr(image, attribute, (pwobj.Boolean if isinstance(value, bool)
                                       else pwobj.Float)(value))
        for attribute, value in checks.defect_attributes(report.get('defects', {})).items():
            setattr(image, attribute, pwobj.Integer(value))
        return image

    def _updateMovieSet(self, movies, attached, state):
        movieSet = self._loadOutputSet(SetOfMovies, 'movies.sqlite')
        movieSet.setGain(attached)
        for movie in movies:
            movieSet.append(movie.clone())
        self._publish(OUTPUT_MOVIES, movieSet, state)

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
        self._updateOutputSet(outputName, outputSet, state)
        if first:
            self._defineSourceRelation(self.inputMovies, getattr(self, outputName))

    def _writeSummaries(self, gains, failed):
        """Append one line per newly analysed movie (in completion order) to
        summary.txt and summaryForMonitor.txt, and one per flag to warnings.txt.
        Lines already there (a resumed run) are not written again."""
        summaryFile, monitorFile = self._getPath('summary.txt'), self._getPath('summaryForMonitor.txt')
        known = {line.split(':')[0] for line in _readLines(monitorFile)}
        warnings = []
        with open(summaryFile, 'a') as summary, open(monitorFile, 'a') as monitor:
            for movie in gains:
                report = _readJson(self._statsPath(movie.getObjId()))
                label = 'movie_%06d_%s' % (movie.getObjId(), report['kind'])
                if label in known:
                    continue
                # the verdict's column comes after the Xmipp fields; the monitor file
                # keeps exactly Xmipp's format (the paper's statistics)
                summary.write(summary_line(label, report['statistics'],
                                           checks.summary_column(report)))
                monitor.write(monitor_line(label, report['statistics']))
                if report.get('verdict', {}).get('flagged'):
                    warnings.append(checks.verdict_message(movie.getObjId(), report))
        for movie in failed:
            warnings.append('movie_%06d: could not be analysed: %s'
                            % (movie.getObjId(), _readText(self._failedPath(movie.getObjId()))))
        if warnings:
            known = set(_readLines(self._getPath('warnings.txt')))
            with open(self._getPath('warnings.txt'), 'a') as handle:
                for line in warnings:
                    if line not in known:
                        handle.write(line + '\n')

    # --------------------------- gain reference ----------------------------
    def _residualMode(self):
        return bool(self.estimateResidualGain.get() and self.inputMovies.get().getGain())

    def _loadReference(self):
        """The movies' gain as used: read once, flipped if asked, mean 1. A copy
        is written to the run folder when it differs from the input file."""
        with self._lock:
            if self._reference is not None:
                return self._reference
            copy = self._getExtraPath('gain_reference.mrc')
            if os.path.exists(copy):
                self._reference, _ = read_image(copy)
                return self._reference
            source = os.path.abspath(self.inputMovies.get().getGain())
            flip = self.gainFlip.get()
            try:
                raw, _ = read_image(source)
                gain, notes = read_gain_reference(source, flip_y=(flip == 1))
            except InputError as exc:
                raise InputError('movies\' gain reference: %s' % exc) from None
            if flip == 2:
                gain = np.ascontiguousarray(gain[:, ::-1])
                notes.append('flipped left-right, as asked')
            for note in notes:
                self.info('Movies\' gain %s: %s' % (source, note))
            hint = self._orientationHint(source)
            if hint:
                self.info(hint)
            info = {'source': source, 'flip': FLIPS[flip], 'notes': notes}
            if gain.shape != raw.shape or not np.allclose(gain, raw, rtol=1e-5, atol=1e-6):
                # flipped, inverted, scaled to mean 1 or with unusable pixels
                # set to 1: a new file, never the user's
                write_mrc(copy, gain, label='scipion-gain: movies gain as used, flip=%s, '
                                            'mean 1' % FLIPS[flip])
                info['used'] = os.path.abspath(copy)
                self.info('Movies\' gain as used written to %s' % copy)
            else:
                info['used'] = source
            _writeJson(self._getExtraPath('gain_reference.json'), info)
            self._reference = np.ascontiguousarray(gain, dtype=np.float32)
            return self._reference

    def _orientationHint(self, gainPath):
        """A hint when movies and gain are of formats that RELION and Xmipp read
        with different Y orientations (TIFF/EER vs MRC); we read both as stored."""
        try:
            movie = self.inputMovies.get().getFirstItem().getFileName()
            flips = [format_conventions(reader_class(path))['relion_xmipp_flip_y']
                     for path in (movie, gainPath)]
        except Exception:
            return None
        if None in flips or flips[0] == flips[1]:
            return None
        flipped, stored = (movie, gainPath) if flips[0] else (gainPath, movie)
        return ('Note: RELION and Xmipp read %s files upside down and %s files as stored; '
                'this protocol reads both as stored. If the residual gains are flagged, '
                'try "Flip the movies\' gain: upside down".'
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
            if self.gainFlip.get():
                return None  # the flipped copy is not written yet
            return os.path.abspath(inputGain)
        estimate = self._getExtraPath('estimated_gain.mrc')
        return os.path.abspath(estimate) if os.path.exists(estimate) else None

    # --------------------------- estimator settings -------------------------
    def _settings(self):
        sigma = 'auto'
        if self.method.get() == 0:
            sigma = _parseSigma(self.sigma.get())
        return EstimatorSettings(method=METHODS[self.method.get()],
                                 reference=REFERENCES[self.reference.get()],
                                 sigma=sigma, iterations=self.iterations.get(),
                                 frame_step=self.frameStep.get())

    def _analysisSettings(self):
        return AnalysisSettings(estimator=self._settings(), thresholds=self._thresholds(),
                                verdict=VerdictSettings(max_dqe_loss=self.maxDqeLoss.get() / 100.0))

    def _thresholds(self):
        return Thresholds(std=self.stdThreshold.get(),
                          percentile_ratio=self.percentileRatioThreshold.get(),
                          max_ratio=self.maxRatioThreshold.get())

    def _device(self, position):
        """'gpu:N' (GPUs of gpuList in turn by arrival order) or 'cpu'; falls
        back to the CPU, with one warning, when no GPU or CuPy can be used."""
        if not self.usesGpu():
            return 'cpu'
        gpus = self.getGpuList() or [0]
        request = 'gpu:%d' % gpus[position % len(gpus)]
        try:
            resolve_device(request)
            return request
        except Exception as exc:  # DeviceError, or a CUDA library that fails to load
            with self._lock:
                if not self._deviceWarned:
                    self._deviceWarned = True
                    self.warning('GPU requested but not usable (%s): running on the CPU.'
                                 % str(exc).splitlines()[0])
            return 'cpu'

    # --------------------------- paths -------------------------------------
    def _gainPath(self, movieId):
        return self._getExtraPath('movie_%06d_gain.mrc' % movieId)

    def _correctedGainPath(self, movieId):
        return self._getExtraPath('movie_%06d_corrected_gain.mrc' % movieId)

    def _defectsPath(self, movieId):
        return self._getExtraPath('defects_%06d.mrc' % movieId)

    def _defectFilePath(self, movieId):
        return self._getExtraPath('defects_%06d.txt' % movieId)

    def _sumPath(self, movieId):
        return self._getExtraPath('movie_%06d_sum.mrc' % movieId)

    def _structurePath(self, movieId):
        return self._getExtraPath('movie_%06d_structure.mrc' % movieId)

    def _statsPath(self, movieId):
        return self._getExtraPath('movie_%06d_stats.json' % movieId)

    def _failedPath(self, movieId):
        return self._getExtraPath('failed', 'movie_%06d.txt' % movieId)

    def _gainsDoneFile(self):
        return self._getExtraPath('gains_done.txt')

    def _moviesDoneFile(self):
        return self._getExtraPath('movies_done.txt')

    def _analysedIds(self):
        ids = []
        for name in os.listdir(self._getExtraPath()):
            if name.startswith('movie_') and name.endswith('_stats.json'):
                ids.append(int(name[6:12]))
        return sorted(ids)

    @staticmethod
    def _readIds(path):
        return [int(line) for line in _readLines(path) if line.strip()]

    @staticmethod
    def _appendIds(path, movies):
        if movies:
            with open(path, 'a') as handle:
                handle.writelines('%d\n' % m.getObjId() for m in movies)

    # --------------------------- INFO functions -----------------------------
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
            summary.append('Mode: %s.' % ('residual gain (frames multiplied by the movies\' '
                                          'gain first)' if self._residualMode()
                                          else 'gain estimate'))
        analysed = self._analysedIds() if os.path.exists(self._getExtraPath()) else []
        failedDir = self._getExtraPath('failed')
        failed = sorted(os.listdir(failedDir)) if os.path.exists(failedDir) else []
        flagged = []
        for movieId in analysed:
            try:
                if checks.verdict_of(_readJson(self._statsPath(movieId)))['flagged']:
                    flagged.append(movieId)
            except (OSError, ValueError, KeyError):
                pass
        if analysed:
            summary.append('%d movies analysed, %d flagged%s.'
                           % (len(analysed), len(flagged),
                              (' (ids %s)' % ', '.join(map(str, flagged[:20]))
                               + (' ...' if len(flagged) > 20 else '')) if flagged else ''))
        else:
            summary.append('No movie analysed yet.')
        if failed:
            summary.append('%d movies could not be read (see warnings.txt).' % len(failed))
        summary.append('Per-movie statistics: summary.txt in the run folder.')
        return summary

    def _methods(self):
        return ['The gain of the detector (or the residual gain after the movies\' gain '
                'reference) was estimated from the movies with smooth midway equalization '
                '[Sorzano2018].']


# ------------------------------ helpers ------------------------------------
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


def _normalised(image, good):
    image = np.asarray(image, dtype=np.float64)
    good = good & np.isfinite(image) & (image > 0)
    out = np.ones(image.shape, dtype=np.float32)
    if good.any():
        out[good] = image[good] / image[good].mean()
    return out
