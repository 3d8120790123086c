"""The output sets of the movie gain protocol and the run's text files, a mixin.

Everything the outputs hold is derived from the per-movie result files (the
stats JSON and maps of ``movie_job``), whoever analysed the movie: each update
compares each output with those files and gives it what it lacks, so that a
crash at any point followed by Continue gives each movie exactly once in each.
"""
import os

import pyworkflow.object as pwobj
import pyworkflow.protocol.constants as pwcts
from pwem.objects import Image, SetOfMovies

from ..estimator.verdict import verdict_of
from ..objects import SetOfGainMaps
from ..run_folder.logs import AppendOnce, failed_message, movie_lines, read_json, read_text
from .checks import assessment_attributes, defect_attributes, verdict_attributes

OUTPUT_ESTIMATED = 'estimatedGains'
OUTPUT_RESIDUAL = 'residualGains'
OUTPUT_MOVIES = 'outputMovies'

#: the test hook of _crashPoint: resume after a crash at any point of an output update
CRASH_VARIABLE = 'SCIPION_GAIN_CRASH_AT'

#: per-item attributes of estimatedGains / residualGains, from the statistics dict
STAT_ATTRIBUTES = {'_gainMean': 'mean', '_gainStd': 'std', '_gainMin': 'min', '_gainMax': 'max',
                   '_gainP025': 'p2.5', '_gainP975': 'p97.5'}
FLAG_ATTRIBUTES = {'_gainFlagStd': 'std', '_gainFlagPercentileRatio': 'percentile_ratio',
                   '_gainFlagMaxRatio': 'max_ratio'}
#: Scipion's table of a SetOfGainMaps: these columns first and visible (the viewers
#: register them for the class); the others follow, hidden until asked for
GAIN_MAP_COLUMNS = ('id', '_verdictFlagged', '_verdictReasons', '_gainStdPercent',
                    '_gainPercentileRatio', '_gainMaxRatio', '_dqeLoss',
                    '_defectDeadPixels', '_defectHotPixels', '_defectRows', '_defectColumns',
                    '_filename')


class OutputSets:
    """Mixin: needs the protocol's listOfMovies, insertedDict, inputMovies, _inputDone,
    _lock, _known, _updateWork, the path methods, _residualMode, _attachedGain,
    _orientationWanted, _orientationDecision, _updateOrientedOutput,
    _updateRunningEstimate and _checkBacklog."""

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
                elif os.path.exists(self._runFolder().failed(movieId)):
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
        """A test hook of resuming after a crash: with SCIPION_GAIN_CRASH_AT set to
        ``where``, fail here once this update has written something, as a crash at that
        point would."""
        if self._updateWork and os.environ.get(CRASH_VARIABLE) == where:
            raise RuntimeError('injected crash in the output update at: %s' % where)

    def _updateGainSets(self, movies, state):
        residual = self._residualMode()
        sets = [(OUTPUT_ESTIMATED, 'estimated_gains.sqlite', 'corrected' if residual else 'gain')]
        if residual:
            sets.append((OUTPUT_RESIDUAL, 'residual_gains.sqlite', 'gain'))
        for outputName, fileName, which in sets:
            def item(movie, which=which):
                report = read_json(self._statsPath(movie.getObjId()))
                if which == 'corrected':
                    return self._gainImage(movie, self._runFolder().corrected_gain(movie.getObjId()),
                                           report['corrected_gain'], report)
                return self._gainImage(movie, self._runFolder().gain(movie.getObjId()), report, report)
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
        for attribute, value in assessment_attributes(report.get('assessment')).items():
            setattr(image, attribute, (pwobj.Boolean if isinstance(value, bool)
                                       else pwobj.Float)(value))
        for attribute, value in defect_attributes(report.get('defects', {})).items():
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
        """Append one line per newly analysed movie (in completion order) to summary.txt
        and summaryForMonitor.txt, and one per flag or failure to warnings.txt: in each
        file only what it lacks (run_folder.logs.AppendOnce), so a resumed run writes no
        movie twice."""
        files = self._runLogs()
        lines = {name: [] for name in files}
        for movie in gains:
            movieId = movie.getObjId()
            if movieId in files['summary.txt'] and movieId in files['summaryForMonitor.txt']:
                continue
            for name, new in movie_lines(movieId, read_json(self._statsPath(movieId))).items():
                lines[name] += new
        for movie in failed:
            reason = read_text(self._runFolder().failed(movie.getObjId()))
            lines['warnings.txt'].append(failed_message(movie.getObjId(), reason) + '\n')
        # warnings first: a movie in both summaries has had its warning written
        for name in ('warnings.txt', 'summary.txt', 'summaryForMonitor.txt'):
            if files[name].append(lines[name]):
                self._updateWork = True
            if name == 'summary.txt':
                self._crashPoint('summary.txt')

    def _runLogs(self):
        """The run's three text files (AppendOnce: what each holds is read once per process)."""
        if 'logs' not in self._known:
            self._known['logs'] = {name: AppendOnce(self._getPath(name), by_movie=(name != 'warnings.txt'))
                                   for name in ('summary.txt', 'summaryForMonitor.txt',
                                                'warnings.txt')}
        return self._known['logs']


def gain_map_display_attributes(stats, report):
    """The attributes Scipion's table of gain maps shows first, in this order: the verdict
    (``report``: the movie's stats; verdict_attributes), then this map's std in
    per cent and its two ratios (``stats``: this map's statistics)."""
    verdict = verdict_attributes(verdict_of(report))
    s, r = stats['statistics'], stats['ratios']
    return {'_verdictFlagged': verdict['_verdictFlagged'],
            '_verdictReasons': verdict['_verdictReasons'],
            '_gainStdPercent': pwobj.Float(100.0 * s['std']),
            '_gainPercentileRatio': pwobj.Float(min(r['p97.5/p2.5'], 1e6)),
            '_gainMaxRatio': pwobj.Float(min(r['max/p97.5'], 1e6)),
            '_dqeLoss': verdict['_dqeLoss']}


#: Scipion's table of a SetOfGainMaps: these columns first and visible (the viewers
#: register them for the class); the others follow, hidden until asked for
