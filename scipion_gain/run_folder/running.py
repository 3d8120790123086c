"""The running estimate of a run folder: the analysed movies' sums, merged and judged.

Every analysed movie's job leaves its Eq. 7 sums in extra/movie_%06d_sums.npz
(a one-movie GainAccumulator; its unusable pixels add nothing).
:func:`merge_movie_sums` adds those of new movies to the run's accumulator
(persisted in extra/accumulated_sums.npz, whose ``members`` are the movie
ids); the caller removes their files only once it is saved, so a crash neither
loses nor counts twice a movie. :func:`write_running_maps` judges it with the
code that judges a movie (analysis.analyse_accumulated: the session's smooth
field and pixels besides) and writes its maps. The protocol and ``scipion-gain
check`` both keep their running estimate with these. No pyworkflow import.
"""
import os

from ..estimator import GainAccumulator
from ..estimator.analysis import analyse_accumulated
from ..io import write_mrc
from ..io.results import write_analysis, write_json
from .logs import read_json


def load_accumulator(layout):
    """The run's accumulator (extra/accumulated_sums.npz), or an empty one."""
    path = layout.accumulated_sums
    return GainAccumulator.load(path) if os.path.exists(path) else GainAccumulator()


def merge_movie_sums(layout, movie_ids, accumulator, accept=None):
    """Add to ``accumulator`` the sums of the movies ``movie_ids`` (in that order) it does
    not hold yet; ``accept(movie_id)`` may refuse one. Returns (ids added, sums files
    handled: to remove once the accumulator is saved)."""
    members = set(accumulator.members)
    added, handled = [], []
    for movie_id in movie_ids:
        path = layout.movie_sums(movie_id)
        if not os.path.exists(path):
            continue
        handled.append(path)
        if movie_id in members:
            continue  # merged before a crash that left its file behind
        if accept is not None and not accept(movie_id):
            continue
        accumulator.merge(GainAccumulator.load(path))
        added.append(movie_id)
    return added, handled


def maps_members(layout):
    """The movies the running estimate's maps were made from (sorted), or None."""
    path = layout.running_estimate
    return sorted(read_json(path)['movies']) if os.path.exists(path) else None


def write_running_maps(layout, accumulator, reference, settings, reference_kind=None,
                       accumulated=True):
    """Judge the running estimate and write its maps.

    ``reference``: the one the movies' residuals were made with (None: gain
    mode). With ``accumulated`` the accumulated_* files (the estimate, its
    stats JSON with the session's verdict, defects, structure); in gain mode
    extra/estimated_gain.mrc; running_estimate.json last (it names the movies
    the maps were made from). Returns the analysis.
    """
    analysis = analyse_accumulated(accumulator, reference, settings)
    if accumulated:
        extra = {'movies': list(accumulator.members), 'frames': int(accumulator.frames)}
        if reference is not None:
            extra['gain_reference'] = reference_kind
        write_analysis(analysis, layout.accumulated_outputs(),
                       'the running %s over %d movies' % (analysis.kind, accumulator.count),
                       extra=extra)
    if reference is None:
        write_mrc(layout.estimated_gain, analysis.gain,
                  label='scipion-gain: gain estimated from %d movies; multiplies raw '
                        'frames' % accumulator.count)
    write_json(layout.running_estimate, {'movies': sorted(accumulator.members)})
    return analysis
