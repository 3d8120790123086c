"""The running estimate of GainProtMovieGain over analysed movies, a mixin of the protocol.

Every analysed movie's job leaves its Eq. 7 sums in extra/movie_%06d_sums.npz
(a one-movie GainAccumulator; its unusable pixels add nothing). The main
loop's output update merges the sums of the movies analysed since the last
update into one GainAccumulator persisted in extra/accumulated_sums.npz
(io.results.write_sums, GainAccumulator.load: atomic), whose ``members`` are the movie ids, and
only then removes their sums files: a crash at any point neither loses nor
counts twice a movie, and the estimate is derived from the per-movie result
files alone, whoever analysed them (a thread, a process, a batch job). Movies
that could not be analysed leave no sums and never enter it.

With ``accumulate`` on, after updates that added movies (at most every
RUNNING_MAPS_SECONDS, and at the end):
extra/accumulated_gain.mrc, accumulated_stats.json (the paper's statistics,
the verdict of the accumulated estimate (analyse_accumulated), the defect
counts), accumulated_structure.mrc and accumulated_defects.mrc/.txt. In gain
mode extra/estimated_gain.mrc is the gain attached to the output movies. In
residual mode only residuals against the current reference are summed: the
estimate restarts when the orientation check replaces the reference.
extra/running_estimate.json (written last) names the movies the maps were
made from, so that maps a crash left behind the sums are made again.
"""
import os
import time

from ..estimator import GainAccumulator
from ..io.results import write_sums
from ..run_folder.logs import read_json
from ..run_folder.running import (load_accumulator, maps_members, merge_movie_sums,
                                  write_running_maps)

#: the running estimate's maps are made again at most this often (and at the end)
RUNNING_MAPS_SECONDS = 30


class RunningEstimate:
    """Mixin: needs the protocol's _residualMode, _analysisSettings, _loadReference,
    _orientedReference, _statsPath, _runFolder, _crashPoint, the ``accumulate``
    parameter and the attributes _lock, _accumulator, _orientation."""

    def _accumulationNeeded(self):
        """The running estimate is kept with ``accumulate``, and always in gain mode
        (its gain is the one attached to the output movies)."""
        return bool(self.accumulate.get() or not self._residualMode())

    def _updateRunningEstimate(self, analysed, finished=False):
        """Merge the sums of newly analysed movies (``analysed``: movies whose stats JSON
        exists) into the running estimate, then write its maps: at most every
        RUNNING_MAPS_SECONDS (judging the running estimate takes as long as judging a
        movie; the main loop must not spend its time on it), and when the input is
        finished. Idempotent."""
        if not self._accumulationNeeded():
            return
        with self._lock:
            accumulator = self._loadAccumulator()
            current = self._currentReferenceKind()

            def accept(movieId):
                kind = read_json(self._statsPath(movieId)).get('gain_reference')
                if kind is not None and kind != current:
                    self.info('Movie %d: residual against the gain as it was before '
                              'orientation, not added to the running estimate.' % movieId)
                    return False
                return True

            added, handled = merge_movie_sums(self._runFolder(),
                                              [movie.getObjId() for movie in analysed],
                                              accumulator, accept)
            if added:
                write_sums(self._accumulatorPath(), accumulator)
                self._updateWork = True
            self._crashPoint('accumulated sums')
            due = finished or time.time() - getattr(self, '_mapsWritten', 0) >= \
                RUNNING_MAPS_SECONDS
            if accumulator.count and due and self._mapsMembers() != sorted(accumulator.members):
                self._writeRunningMaps(accumulator)
                self._mapsWritten = time.time()
                self._updateWork = True
            for path in handled:
                os.remove(path)

    def _writeRunningMaps(self, accumulator):
        reference = None
        if self._residualMode():
            reference = (self._orientedReference() if self._currentReferenceKind() == 'oriented'
                         else self._loadReference())
        write_running_maps(self._runFolder(), accumulator, reference, self._analysisSettings(),
                           self._currentReferenceKind(), accumulated=bool(self.accumulate.get()))

    def _mapsMembers(self):
        return maps_members(self._runFolder())

    def _currentReferenceKind(self):
        if not self._residualMode():
            return None
        decision = self._orientation
        if decision is None and os.path.exists(self._orientationPath()):
            decision = read_json(self._orientationPath())  # taken (by a worker, or before a resume)
        return 'oriented' if decision is not None and decision.get('oriented') else 'as given'

    def _loadAccumulator(self):
        if self._accumulator is None:
            self._accumulator = load_accumulator(self._runFolder())
        return self._accumulator

    def _resetAccumulator(self, why):
        """Start the running estimate again (its movies were against another reference)."""
        with self._lock:
            accumulator = self._loadAccumulator()
            if accumulator.count:
                self.info('Running estimate restarted (%s): movies %s left out of it.'
                          % (why, ', '.join(map(str, accumulator.members))))
            self._accumulator = GainAccumulator()
            for path in (self._accumulatorPath(), self._runningMapsPath()):
                if os.path.exists(path):
                    os.remove(path)

    def _accumulatorPath(self):
        return self._runFolder().accumulated_sums

    def _runningMapsPath(self):
        return self._runFolder().running_estimate
