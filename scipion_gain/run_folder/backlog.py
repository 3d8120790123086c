"""Whether analysis keeps up with acquisition: the state kept in extra/backlog.json.

A movie waiting longer than :data:`BEHIND_SECONDS` (or five analysis times, if
longer) for a worker means analysis is behind acquisition; the state says so
until the backlog is gone (no movie waiting, or the oldest for less than half
that). No pyworkflow import: the protocol passes in what its queue holds.
"""
import time

#: a movie waiting longer than this for a worker means analysis is behind acquisition
BEHIND_SECONDS = 60


def update(state, waiting, oldest_arrival, durations, arrivals, workers, finished, now=None):
    """Bring the backlog ``state`` (a dict, changed in place) up to date.

    ``waiting``: how many movies wait for a worker; ``oldest_arrival``: when the
    oldest of them arrived; ``durations``: recent analysis times (s);
    ``arrivals``: arrival times of all movies; ``workers``: movies analysed at
    once. Returns 'behind' when analysis has just fallen behind, 'caught up'
    when it has just caught up, 'still behind' or None otherwise.
    """
    now = time.time() if now is None else now
    durations = sorted(durations)
    per_movie = durations[len(durations) // 2] if durations else None
    limit = max(BEHIND_SECONDS, 5 * per_movie if per_movie else 0)
    waited = now - (oldest_arrival if oldest_arrival is not None else now)
    if waiting and waited > limit and not finished:
        recent = sorted(t for t in arrivals if t > now - 600)
        arriving = (3600.0 * (len(recent) - 1) / (recent[-1] - recent[0])
                    if len(recent) > 2 and recent[-1] > recent[0] else None)
        state['max_waiting'] = max(state.get('max_waiting', 0), waiting)
        state.update(waiting=waiting, oldest_wait_s=round(waited),
                     seconds_per_movie=per_movie, workers=workers,
                     analysed_per_hour=(round(3600.0 * workers / per_movie)
                                        if per_movie else None),
                     arriving_per_hour=round(arriving) if arriving else None)
        if state.get('behind'):
            return 'still behind'
        state['behind'] = True
        state['episodes'] = state.get('episodes', 0) + 1
        state['since'] = time.strftime('%Y-%m-%d %H:%M:%S')
        return 'behind'
    if state.get('behind') and (not waiting or waited < limit / 2 or finished):
        state['behind'] = False
        state['waiting'] = waiting
        return 'caught up'
    return None


def behind_message(state, movie_step):
    """The log line when analysis falls behind, with what to change to keep up."""
    rates = ''
    if state.get('analysed_per_hour'):
        rates = ('; analysing about %d movies/h (%d at once, %.1f s each)'
                 % (state['analysed_per_hour'], state['workers'], state['seconds_per_movie']))
        if state.get('arriving_per_hour'):
            rates += ' while they arrive at about %d/h' % state['arriving_per_hour']
    return ('Analysis is behind acquisition: %d movies waiting, the oldest for %d s%s. '
            'To keep up: more threads (or GPUs), a larger "Analyse one movie in every" '
            '(now %d), or fewer "Frames used per movie".'
            % (state['waiting'], state['oldest_wait_s'], rates, movie_step))


def caught_up_message(state):
    return ('Analysis caught up with acquisition (behind since %s, at most %d movies waiting).'
            % (state.get('since'), state.get('max_waiting', 0)))


def summary_line(state):
    """The protocol summary's line about the backlog, or None."""
    if state.get('behind'):
        return ('Behind acquisition since %s: %d movies waiting, the oldest for %d s (see the '
                'log).' % (state.get('since'), state.get('waiting', 0),
                           state.get('oldest_wait_s', 0)))
    if state.get('episodes'):
        return ('Fell behind acquisition %d time(s), at most %d movies waiting; caught up.'
                % (state['episodes'], state.get('max_waiting', 0)))
    return None
