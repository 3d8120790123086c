"""The running estimate of GainProtMovieGain over analysed movies, a mixin of the protocol.

The sums of every analysed movie go into a GainAccumulator persisted in
extra/accumulated_sums.npz (GainAccumulator.save/load: atomic), whose
``members`` are the movie ids, so a resumed run neither loses nor counts twice
a movie. With ``accumulate`` on, after each movie: extra/accumulated_gain.mrc,
accumulated_stats.json (the paper's statistics, the noise-aware assessment
from the accumulated split halves, the defect counts), accumulated_structure.mrc
and accumulated_defects.mrc/.txt. In gain mode extra/estimated_gain.mrc is the
gain attached to the output movies. In residual mode only residuals against the
current reference are summed: the estimate restarts when the orientation check
replaces the reference.
"""
import os

from ..estimator import GainAccumulator
from ..estimator.analysis import analyse_accumulated
from ..io import write_mrc
from ..io.results import AnalysisOutputs, write_analysis


class RunningEstimate:
    """Mixin: needs the protocol's _residualMode, _thresholds, _movieReference,
    the ``accumulate`` parameter and the attributes _lock, _accumulator, _orientation."""

    def _accumulate(self, movieId, result, reference=None, referenceKind=None):
        """Add a movie's sums to the running estimate (persisted, so a resumed
        run neither loses nor counts twice a movie) and write the maps. In
        residual mode (``reference``: the one the movie used, ``referenceKind``:
        'as given' or 'oriented') only residuals against the current reference
        are summed. Takes only self._lock: never waits on the orientation check."""
        needed = self.accumulate.get() or not self._residualMode()
        if not needed or result.numerator is None:
            return
        with self._lock:
            if referenceKind is not None and referenceKind != self._currentReferenceKind():
                self.info('Movie %d: residual against the gain as it was before orientation, '
                          'not added to the running estimate.' % movieId)
                return
            accumulator = self._loadAccumulator()
            if movieId in accumulator.members:
                return
            accumulator.add(result, member=int(movieId))
            accumulator.save(self._accumulatorPath())
            analysis = analyse_accumulated(accumulator, reference, self._analysisSettings())
            kind = analysis.kind
            if self.accumulate.get():
                extra = {'movies': list(accumulator.members), 'frames': int(accumulator.frames)}
                if referenceKind is not None:
                    extra['gain_reference'] = referenceKind
                write_analysis(analysis, AnalysisOutputs(
                    gain=self._getExtraPath('accumulated_gain.mrc'),
                    json=self._getExtraPath('accumulated_stats.json'),
                    defect_labels=self._getExtraPath('accumulated_defects.mrc'),
                    defect_file=self._getExtraPath('accumulated_defects.txt'),
                    structure=self._getExtraPath('accumulated_structure.mrc')),
                    'the running %s over %d movies' % (kind, accumulator.count), extra=extra)
            if not self._residualMode():
                write_mrc(self._getExtraPath('estimated_gain.mrc'), analysis.gain,
                          label='scipion-gain: gain estimated from %d movies; multiplies raw '
                                'frames' % accumulator.count)

    def _currentReferenceKind(self):
        if not self._residualMode():
            return None
        decision = self._orientation
        return 'oriented' if decision is not None and decision.get('oriented') else 'as given'

    def _loadAccumulator(self):
        if self._accumulator is None:
            path = self._accumulatorPath()
            self._accumulator = (GainAccumulator.load(path) if os.path.exists(path)
                                 else GainAccumulator())
        return self._accumulator

    def _resetAccumulator(self, why):
        """Start the running estimate again (its movies were against another reference)."""
        with self._lock:
            accumulator = self._loadAccumulator()
            if accumulator.count:
                self.info('Running estimate restarted (%s): movies %s left out of it.'
                          % (why, ', '.join(map(str, accumulator.members))))
            self._accumulator = GainAccumulator()
            if os.path.exists(self._accumulatorPath()):
                os.remove(self._accumulatorPath())

    def _accumulatorPath(self):
        return self._getExtraPath('accumulated_sums.npz')
