"""Every path of a movie gain run folder, and the movie ids in its file names.

One movie, one id (``movie_id``): the number in its file names, the label of
its summary lines and what the report calls it. The layout::

    RUN/summary.txt, summaryForMonitor.txt, warnings.txt   one line per movie (logs)
    RUN/extra/movie_%06d_stats.json     the movie's analysis (written last: complete)
    RUN/extra/movie_%06d_gain.mrc       its estimate (residual, with a reference)
    RUN/extra/movie_%06d_corrected_gain.mrc, _sum.mrc, _structure.mrc, _sums.npz, ...
    RUN/extra/defects_%06d.mrc / .txt   defect labels, MotionCor2 defect file
    RUN/extra/failed/movie_%06d.txt     one line: why the movie could not be analysed
    RUN/extra/accumulated_*             the running estimate over the analysed movies
    RUN/extra/gain_reference.json/.mrc, orientation.json, oriented_gain.mrc

Paths are joined to ``root`` as given (the protocol's are relative to its
project), never resolved here.
"""
import os
import re

from ..io.results import AnalysisOutputs

STATS_NAME = re.compile(r'^movie_(\d+)_stats\.json$')
FAILED_NAME = re.compile(r'^movie_(\d+)\.txt$')
LABEL = re.compile(r'^movie_(\d+)_')


def movie_id_of_label(line):
    """The movie id of a summary or warnings line 'movie_%06d_...', or None."""
    match = LABEL.match(line)
    return int(match.group(1)) if match else None


class RunFolder:
    """The paths of one run folder (``root``); ``extra``: the folder of the per-movie
    files below it ('' for a folder that holds them itself, e.g. copied stats)."""

    def __init__(self, root, extra='extra'):
        self.root = os.fspath(root)
        self.extra_folder = extra

    def path(self, *names):
        return os.path.join(self.root, *names)

    def extra(self, *names):
        return os.path.join(self.root, self.extra_folder, *names)

    # --------------------------------------------------------------- per movie
    def stats(self, movie_id):
        return self.extra('movie_%06d_stats.json' % movie_id)

    def gain(self, movie_id):
        return self.extra('movie_%06d_gain.mrc' % movie_id)

    def corrected_gain(self, movie_id):
        return self.extra('movie_%06d_corrected_gain.mrc' % movie_id)

    def defects(self, movie_id):
        return self.extra('defects_%06d.mrc' % movie_id)

    def defect_file(self, movie_id):
        return self.extra('defects_%06d.txt' % movie_id)

    def corrected_sum(self, movie_id):
        return self.extra('movie_%06d_sum.mrc' % movie_id)

    def structure(self, movie_id):
        return self.extra('movie_%06d_structure.mrc' % movie_id)

    def applied_reference(self, movie_id):
        """Movies gain-corrected at acquisition: the reference applied, recovered."""
        return self.extra('movie_%06d_applied_reference.mrc' % movie_id)

    def failed(self, movie_id):
        return self.extra('failed', 'movie_%06d.txt' % movie_id)

    def movie_sums(self, movie_id):
        """The movie's share of the running estimate (a one-movie GainAccumulator)."""
        return self.extra('movie_%06d_sums.npz' % movie_id)

    def job_file(self, movie_id):
        return self.extra('jobs', 'movie_%06d.json' % movie_id)

    def movie_outputs(self, movie_id):
        """The AnalysisOutputs of a movie (io.results.write_analysis)."""
        return AnalysisOutputs(gain=self.gain(movie_id), json=self.stats(movie_id),
                               defect_labels=self.defects(movie_id),
                               defect_file=self.defect_file(movie_id),
                               structure=self.structure(movie_id),
                               corrected_sum=self.corrected_sum(movie_id),
                               applied_reference=self.applied_reference(movie_id))

    def job_outputs(self, movie_id, residual, accumulate):
        """{role: path} of a movie job (movie_job.make_job): the analysis's files, the
        ``failed`` line, in residual mode the corrected gain, and with a running
        estimate the movie's sums."""
        outputs = dict(self.movie_outputs(movie_id).paths())
        outputs['failed'] = self.failed(movie_id)
        if residual:
            outputs['corrected_gain'] = self.corrected_gain(movie_id)
        if accumulate:
            outputs['sums'] = self.movie_sums(movie_id)
        return outputs

    def is_done(self, movie_id):
        """Analysed (its stats JSON) or failed (its reason): nothing more to do for it."""
        return os.path.exists(self.stats(movie_id)) or os.path.exists(self.failed(movie_id))

    def analysed_ids(self):
        """Ids of the movies whose stats JSON exists, sorted."""
        return _ids(self.extra(), STATS_NAME)

    def failed_names(self):
        """The file names in extra/failed (one per movie that could not be analysed), sorted."""
        try:
            return sorted(os.listdir(self.extra('failed')))
        except FileNotFoundError:
            return []

    def failed_ids(self):
        """Ids of the movies that could not be analysed (and were not analysed since)."""
        analysed = set(self.analysed_ids())
        return [i for i in _ids(self.extra('failed'), FAILED_NAME) if i not in analysed]

    # --------------------------------------------------------------- the run
    @property
    def summary(self):
        return self.path('summary.txt')

    @property
    def monitor_summary(self):
        return self.path('summaryForMonitor.txt')

    @property
    def warnings(self):
        return self.path('warnings.txt')

    @property
    def accumulated_sums(self):
        return self.extra('accumulated_sums.npz')

    @property
    def running_estimate(self):
        """Names the movies the running estimate's maps were made from (written last)."""
        return self.extra('running_estimate.json')

    def accumulated_outputs(self):
        """The AnalysisOutputs of the running estimate."""
        return AnalysisOutputs(gain=self.extra('accumulated_gain.mrc'),
                               json=self.extra('accumulated_stats.json'),
                               defect_labels=self.extra('accumulated_defects.mrc'),
                               defect_file=self.extra('accumulated_defects.txt'),
                               structure=self.extra('accumulated_structure.mrc'))

    @property
    def estimated_gain(self):
        """Gain mode: the running estimate attached to the output movies."""
        return self.extra('estimated_gain.mrc')

    @property
    def reference_copy(self):
        """The movies' gain reference as used, when it differs from the user's file."""
        return self.extra('gain_reference.mrc')

    @property
    def reference_info(self):
        return self.extra('gain_reference.json')

    @property
    def orientation(self):
        """The orientation decision (its presence: taken)."""
        return self.extra('orientation.json')

    @property
    def oriented_reference(self):
        return self.extra('oriented_gain.mrc')

    @property
    def backlog(self):
        return self.extra('backlog.json')


def _ids(folder, pattern):
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, names) if m)
