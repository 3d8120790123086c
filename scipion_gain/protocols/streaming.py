"""The streaming scheduler of the movie gain protocol, a mixin of GainProtMovieGain.

Movies are not steps: ``analyseMoviesStep`` runs one worker per movie that can
be analysed at once, and each worker takes the next waiting movie as soon as
it is free, so pyworkflow's step-check interval does not pace the analysis.
The input is looked at by pyworkflow's main loop and by idle workers (a cheap
check of the input file's time); every ``movieStep``-th movie in arrival order
is queued, the first always and the last once the input is closed. The queue
also knows when analysis falls behind acquisition (run_folder.backlog).
"""
import collections
import os
import threading
import time

from ..run_folder import backlog
from ..run_folder.logs import read_json
from ..io.results import write_json

#: seconds an idle worker waits for new movies before it looks at the input again
WORKER_POLL_SECONDS = 1.0
#: what an idle worker's _takeMovie returns (no movie yet, more may come)
_IDLE = object()


class MovieStream:
    """Mixin: needs the protocol's inputMovies, movieStep, _loadInputList, listOfMovies,
    streamClosed, _processMovie, _checkNewOutput, _workerCount, _runFolder and
    insertedDict (movie id -> True: to analyse, False: passed through)."""

    def _initStream(self):
        """The movies' queue: waiting movies in arrival order, the ones being analysed
        (id -> start time), whether the input closed and all of it is queued; arrival
        and completion times for the backlog warning."""
        self._positions = {}          # movie id -> position in arrival order (0-based)
        self._queue = threading.Condition(threading.Lock())
        self._inputLock = threading.RLock()
        self._waiting = collections.deque()
        self._taken = {}
        self._inputDone = False
        self._arrivals = {}
        self._finishedTimes = collections.deque(maxlen=50)

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
        return self._runFolder().is_done(movie.getObjId())

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

    def _checkBacklog(self, finished):
        """Warn, in the log and the summary, when analysis falls behind acquisition, and
        say so again when the backlog is gone (run_folder.backlog); the state is kept
        in extra/backlog.json for the summary."""
        with self._queue:
            waiting = [m.getObjId() for m in self._waiting]
            oldest = min((self._arrivals.get(i, time.time()) for i in waiting), default=None)
            durations = [d for _, d in self._finishedTimes]
            arrivals = list(self._arrivals.values())
        state = self._backlogState()
        event = backlog.update(state, len(waiting), oldest, durations, arrivals,
                               self._workerCount(), finished)
        if event == 'behind':
            self.warning(backlog.behind_message(state, self.getAttributeValue('movieStep', 1)))
        elif event == 'caught up':
            self.info(backlog.caught_up_message(state))
        if event is not None:
            self._backlog = state
            write_json(self._runFolder().backlog, state)

    def _backlogState(self):
        if not hasattr(self, '_backlog'):
            path = self._runFolder().backlog
            self._backlog = read_json(path) if os.path.exists(path) else {}
        return self._backlog
