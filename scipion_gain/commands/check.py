"""`scipion-gain check MOVIE... [--gain REFERENCE] -o DIR`: a session judged as the protocol does.

Each movie is analysed by the protocol's own per-movie path
(:func:`scipion_gain.movie_job.run_job`: the same job, the same JSON and
maps), into DIR laid out as a protocol run folder
(:class:`scipion_gain.run_folder.RunFolder`); the session, the running
estimate over the analysed movies, is judged by the same code
(:func:`scipion_gain.estimator.analysis.analyse_accumulated`). DIR then holds
what ``scipion-gain report`` reads, its report (DIR/index.html) and
DIR/session.json.

Movie ids: one number per movie wherever a person reads it. Movies are
numbered 1, 2, ... in the order they are first seen, those seen together in
order of modification time, then name; the numbering is kept in
DIR/extra/movies.json, so a second call (resume) and ``--follow`` keep it and
number only new movies.

Exit status: 0 when no movie and not the session is flagged, 1 when one is,
2 on bad input (one line on stderr; also when no movie could be analysed).
"""
import glob
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait

from . import common
from .. import movie_job
from ..io.atomic import checkpoint
from ..io.results import write_text
from ..run_folder import RunFolder

EXIT_FLAGGED = 1
SESSION_FORMAT = 1
MOVIE_SUFFIXES = ('.mrc', '.mrcs', '.tif', '.tiff', '.eer')
#: a movie is taken once its size and time have not changed for this long (--follow)
STABLE_SECONDS = 5.0
#: the report is drawn again at most this often
REPORT_SECONDS = 30.0
POLL_SECONDS = 0.5


def add_parser(subparsers, parents=()):
    parser = subparsers.add_parser(
        'check', parents=list(parents),
        help='judge a session or an archive of movies as the Scipion protocol does',
        description='Analyse each movie as the Scipion protocol "movie gain" does (its verdict, '
                    'the paper\'s statistics), judge the session (the running estimate over '
                    'the analysed movies: smooth fields, pixels, steps), and write DIR as a '
                    'protocol run folder with its report (DIR/index.html) and '
                    'DIR/session.json. A second call with the same DIR analyses only new '
                    'movies. Exit status 0: nothing flagged; 1: a movie or the session '
                    'flagged; 2: bad input.')
    parser.add_argument('movies', nargs='+', metavar='MOVIE',
                        help='movie files or glob patterns (quote them: "raw/*.tiff"); MRC, '
                             'TIFF, EER')
    parser.add_argument('-o', '--output', required=True, metavar='DIR',
                        help='run folder to write (created; never a folder of the inputs)')
    parser.add_argument('--gain', metavar='REFERENCE',
                        help='the movies\' gain reference (MRC, TIFF, Falcon .gain, DM4): each '
                             'movie\'s residual is judged; without it the gain is estimated')
    parser.add_argument('--gain-convention', choices=['auto', 'correction', 'counts'],
                        default='auto', help="'correction' multiplies raw frames, 'counts' is "
                                             "reciprocal; 'auto' (default): the format's")
    turn = parser.add_argument_group('orientation of the reference (default: found from the '
                                     'first movies, as "scipion-gain orient" does)')
    turn.add_argument('--gain-rot', type=int, choices=range(4), metavar='R',
                      help='rotate R x 90 degrees (MotionCor2 -RotGain, RELION --gain_rot); '
                           'given, no orientation is searched')
    turn.add_argument('--gain-flip', type=int, choices=range(3), metavar='F',
                      help='then flip: 1 upside down, 2 left-right (-FlipGain, --gain_flip)')
    turn.add_argument('--orientation-movies', type=common.positive_int, default=3, metavar='N',
                      help='movies whose gain the reference\'s orientation is found from '
                           '(default 3)')
    turn.add_argument('--no-orientation-check', action='store_true',
                      help='use the reference as stored (or as turned by --gain-rot/--gain-flip)')
    parser.add_argument('--dark', metavar='DARK',
                        help='dark reference subtracted from every frame (turned as the gain)')
    parser.add_argument('--movie-step', type=common.positive_int, default=1, metavar='N',
                        help='analyse one movie in every N (ids 1, N+1, ...; and the last one); '
                             'default 1: every movie')
    parser.add_argument('--frames-per-movie', type=common.nonnegative_int, default=20,
                        metavar='N', help='frames used per movie, spread over it (0: all; '
                                          'default 20, as the protocol)')
    parser.add_argument('--frame-step', type=common.nonnegative_int, default=0, metavar='N',
                        help='use every N-th frame instead (0: --frames-per-movie decides)')
    common.add_judging_options(parser)
    parser.add_argument('--device', type=common.device, default='cpu',
                        help='cpu (default), gpu, gpu:N or auto')
    parser.add_argument('--jobs', type=common.positive_int, default=1, metavar='N',
                        help='movies analysed at once, each in its own process (default 1)')
    cluster = parser.add_argument_group('cluster')
    cluster.add_argument('--slurm', action='store_true',
                         help='analyse each movie as its own SLURM job (sbatch), as the '
                              'protocol does through Scipion\'s queue; SLURM decides how '
                              'many run at once')
    cluster.add_argument('--slurm-args', default='', metavar='"OPTIONS"',
                         help='with --slurm: more sbatch options for every movie job, given with '
                              '"=", e.g. --slurm-args="--partition=gpu --time=10 --mem=4G"')
    follow = parser.add_argument_group('streaming')
    follow.add_argument('--follow', action='store_true',
                        help='watch the folders of the patterns while an acquisition writes '
                             'them; end after --quiet-time without a new movie')
    follow.add_argument('--quiet-time', type=common.finite_float(0, True, 'quiet-time'),
                        default=600.0, metavar='SECONDS',
                        help='with --follow: end this long after the last new movie '
                             '(default 600)')
    follow.add_argument('--stable-time', type=common.finite_float(0, False, 'stable-time'),
                        default=STABLE_SECONDS, metavar='SECONDS',
                        help='with --follow: a movie is taken once its size has not changed '
                             f'for this long (default {STABLE_SECONDS:g})')
    parser.add_argument('--report-interval', type=common.finite_float(0, False,
                                                                      'report-interval'),
                        default=REPORT_SECONDS, metavar='SECONDS',
                        help='draw the report at most this often while running (default 30; '
                             'always at the end)')
    parser.add_argument('-q', '--quiet', action='store_true', help='no progress on stderr')
    parser.set_defaults(func=run_check)
    return parser


# ------------------------------------------------------------------ input
def _pattern_folder(pattern):
    folder = os.path.dirname(pattern)
    while glob.has_magic(folder):
        folder = os.path.dirname(folder)
    return os.path.abspath(folder or '.')


def find_movies(patterns, follow=False, exclude=(), output=None):
    """The movie files the patterns name now (absolute paths, no duplicate). A pattern
    keeps only files with a movie suffix, never a reference (``exclude``) nor a file in
    the ``output`` folder. Without ``follow`` a missing file or a pattern that matches
    nothing is bad input."""
    from ..io import InputError
    found, seen = [], set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            paths = [p for p in sorted(glob.glob(pattern))
                     if p.lower().endswith(MOVIE_SUFFIXES) and os.path.isfile(p)
                     and not any(common.same_file(p, other) for other in exclude)
                     and not _inside(p, output)]
            if not paths and not follow:
                raise InputError(f"{pattern}: no movie matches")
        elif os.path.isfile(pattern):
            paths = [pattern]
        elif os.path.isdir(pattern):
            raise InputError(f"{pattern}: a folder; give movie files or a pattern "
                             f"such as '{os.path.join(pattern, '*.tiff')}'")
        elif follow and pattern.lower().endswith(MOVIE_SUFFIXES):
            paths = []  # not written yet
        else:
            raise InputError(f"{pattern}: no such file")
        for path in paths:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                found.append(os.path.abspath(path))
    return found


def _inside(path, folder):
    if not folder:
        return False
    folder = os.path.realpath(folder)
    return os.path.realpath(path).startswith(folder + os.sep)


def _check_paths(args, folder):
    """Refuse an output folder that holds (or would collect) an input, before any work."""
    from ..io import InputError
    inputs = [('gain reference', args.gain), ('dark reference', args.dark)]
    common.check_outputs({}, [(w, p) for w, p in inputs if p], folders={'-o': args.output})
    out = os.path.realpath(args.output)
    places = [(f"movie folder of {p}", _pattern_folder(p)) for p in args.movies]
    places += [(w, os.path.dirname(os.path.abspath(p))) for w, p in inputs if p]
    for what, place in places:
        place = os.path.realpath(place)
        if place == out or place.startswith(out + os.sep):
            raise InputError(f"{args.output}: the output folder holds the {what}; "
                             f"give another folder")
    for option in ('gain', 'dark'):
        path = getattr(args, option)
        if path and not os.path.isfile(path):
            raise InputError(f"{path}: no such file (--{option})")
    if os.path.isdir(folder.root) and os.listdir(folder.root) and \
            not os.path.exists(_settings_path(folder)):
        raise InputError(f"{args.output}: not empty and not a folder of scipion-gain check; "
                         f"give a new or empty folder")


def _settings_path(folder):
    return folder.extra('check.json')


class MovieList:
    """The movies of a check and their ids (DIR/extra/movies.json: kept for a resume).

    A movie is known by its real path; new movies get the next ids in order of
    modification time, then name."""

    def __init__(self, folder):
        self.path = folder.extra('movies.json')
        self.movies = []
        if os.path.exists(self.path):
            with open(self.path) as handle:
                self.movies = json.load(handle)['movies']
        self.known = {m['key'] for m in self.movies}

    def add(self, paths):
        """Give ids to the movies not seen before; returns their entries."""
        new = []
        for path in paths:
            key = os.path.realpath(path)
            if key in self.known:
                continue
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue   # moved away since it was found: not a movie of this session
            new.append({'file': path, 'key': key, 'size': stat.st_size,
                        'mtime': stat.st_mtime})
        new.sort(key=lambda m: (m['mtime'], os.path.basename(m['file'])))
        for number, movie in enumerate(new, start=len(self.movies) + 1):
            movie['id'] = number
            self.known.add(movie['key'])
        self.movies.extend(new)
        if new:   # landed before any of them is analysed: their ids are theirs for good
            common.write_json(self.path, {'format': SESSION_FORMAT, 'movies': self.movies})
            checkpoint()
        return new

    def by_id(self, movie_id):
        return self.movies[movie_id - 1]


class Stability:
    """Movies whose size and modification time have not changed for ``seconds``."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.seen = {}   # path -> ((size, mtime), since)
        self.last_change = 0.0   # when a movie last appeared or grew

    def stable(self, paths, now=None):
        now = time.time() if now is None else now
        out = []
        for path in paths:
            try:
                stat = os.stat(path)
            except OSError:
                continue  # moved away while we looked
            state = (stat.st_size, stat.st_mtime_ns)
            previous = self.seen.get(path)
            if previous is None or previous[0] != state:
                self.seen[path] = (state, now)
                self.last_change = now
                previous = self.seen[path]
            if stat.st_size > 0 and now - previous[1] >= self.seconds:
                out.append(path)
        return out


# ------------------------------------------------------------------ settings and reference
def analysis_settings(args):
    """The protocol's analysis settings (its defaults: the specimen-robust estimator, one
    reference histogram, sigma searched, one pass) from the command's options."""
    from ..estimator import EstimatorSettings
    from ..estimator.analysis import AnalysisSettings
    step = args.frame_step or 1
    frames = 0 if args.frame_step else args.frames_per_movie
    thresholds, verdict = common.judging_settings(args)
    return AnalysisSettings(
        estimator=EstimatorSettings(method='robust', frame_step=step,
                                    frames_per_movie=frames),
        thresholds=thresholds, verdict=verdict)


def _transform(args):
    from ..estimator.orientation import Transform
    return Transform(args.gain_rot or 0, args.gain_flip or 0)


def _orientation_searched(args):
    return bool(args.gain and not args.no_orientation_check and args.gain_rot is None
                and args.gain_flip is None)


def settings_changes(before, now, prefix=''):
    """What differs between two check.json objects, one 'key: X before, Y now' per leaf
    (dotted keys): a resume refused for 'other settings' says which, such as a default
    that a newer version changed."""
    out = []
    for key in sorted(set(now) | set(before)):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += settings_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {_setting_words(old)} before, {_setting_words(new)} now")
    return out


def _setting_words(value):
    return 'none' if value is None else json.dumps(value)


def _record_settings(args, folder, settings):
    """Write DIR/extra/check.json, or refuse a resume with other settings."""
    from ..io import InputError
    wanted = {'format': SESSION_FORMAT,
              'gain': os.path.realpath(args.gain) if args.gain else None,
              'gain_convention': args.gain_convention,
              'transform': _transform(args).to_dict(),
              'orientation_search': _orientation_searched(args),
              'dark': os.path.realpath(args.dark) if args.dark else None,
              'settings': settings.to_json()}
    path = _settings_path(folder)
    if os.path.exists(path):
        with open(path) as handle:
            before = json.load(handle)
        changed = settings_changes({k: before.get(k) for k in wanted},   # as before: only
                                   json.loads(json.dumps(wanted)))        # the keys written now
        if changed:
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ''
            raise InputError(f"{args.output}: checked before with other settings "
                             f"({'; '.join(changed[:4])}{more}); give another folder for these "
                             f"settings")
        return False
    common.write_json(path, wanted)
    return True


class Reference:
    """The movies' gain reference as the jobs use it: read and turned once, its file and
    its orientation decided as the protocol decides them (run_folder.reference), and
    kept in DIR for a resume."""

    def __init__(self, args, folder):
        from ..run_folder.reference import prepare_reference
        self.folder = folder
        self.array = self.path = None
        self.reader, self.kind, self.notes = 'image', None, []
        self.transform = _transform(args)
        self.searched = _orientation_searched(args)
        if not args.gain:
            return
        self.array = prepare_reference(folder, args.gain, self.transform, say=self.notes.append,
                                       convention=args.gain_convention)
        checkpoint()   # the copy and gain_reference.json: the jobs read what they name
        self.kind = 'as given'
        self._use()

    @property
    def decided(self):
        """No orientation to find: no reference, one given or none wanted, or found."""
        return (self.array is None or not self.searched
                or os.path.exists(self.folder.orientation))

    def decide(self, movie_files, settings, device):
        """Find the orientation from ``movie_files`` as the protocol does; returns the
        lines that say what was found."""
        from ..run_folder.reference import decide_orientation
        estimator = settings.estimator
        decision, lines = decide_orientation(self.folder, movie_files, self.array,
                                             estimator.frame_step, estimator.frames_per_movie,
                                             device=device)
        checkpoint()   # the jobs read the oriented copy
        self._use()
        return [line for _, line in lines]

    def _use(self):
        """The reference file in use (run_folder.reference.reference_file) and its array."""
        from ..io import read_image
        from ..run_folder.reference import reference_file
        self.path, self.reader = reference_file(self.folder)
        if os.path.exists(self.folder.oriented_reference):
            self.kind = 'oriented'
            self.array = read_image(self.folder.oriented_reference)[0]



def _verdict(report):
    from ..estimator.verdict import verdict_of
    return verdict_of(report)

# ------------------------------------------------------------------ analysing movies
def _run_in_process(job, device):
    """A movie job in a pool process (--jobs N): the reference is read from its file."""
    return movie_job.run_job(job, device=device)


class Analysis:
    """The movies being analysed: jobs made as the protocol makes them, run in this
    process (one at a time) or in ``jobs`` processes."""

    def __init__(self, folder, reference, settings, args):
        self.folder, self.reference, self.settings = folder, reference, settings
        self.device, self.dark = args.device, os.path.abspath(args.dark) if args.dark else None
        self.pool = (ThreadPoolExecutor(1) if args.jobs == 1 else ProcessPoolExecutor(args.jobs))
        self.jobs = args.jobs
        self.running = {}   # future -> movie id

    def job(self, movie):
        reference = self.reference
        residual = reference.array is not None
        outputs = self.folder.job_outputs(movie['id'], residual=residual, accumulate=True)
        return movie_job.make_job(movie['id'], movie['file'], movie['file'], self.settings,
                                  outputs, position=movie['id'] - 1, reference=reference.path,
                                  reference_reader=reference.reader,
                                  reference_kind=reference.kind, dark=self.dark,
                                  dark_flip=(reference.transform.to_dict() if residual
                                             else 'no'),
                                  extra={'acquired': movie['mtime']})

    def submit(self, movie):
        job = self.job(movie)
        if self.jobs == 1:
            future = self.pool.submit(movie_job.run_job, job, self.device,
                                      self.reference.array)
        else:
            future = self.pool.submit(_run_in_process, job, self.device)
        self.running[future] = movie['id']

    def finished(self, timeout):
        """[(movie id, report or None, failure line or None)] of the jobs done within
        ``timeout`` seconds."""
        if not self.running:
            return []
        done, _ = wait(list(self.running), timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        for future in done:
            movie_id = self.running.pop(future)
            try:
                out.append((movie_id, future.result(), None))
            except movie_job.MovieFailed as exc:
                out.append((movie_id, None, exc.message))
            except Exception as exc:  # a pool process that died: the movie fails, not the run
                line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                write_text(self.folder.failed(movie_id), line + '\n')
                out.append((movie_id, None, line))
        return out

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


class SlurmAnalysis(Analysis):
    """The movies analysed as SLURM jobs (--slurm): each movie's job file written as the
    protocol writes it (movie_job.write_job) and its command ``scipion-gain movie-job``
    submitted with sbatch; a job has ended when its results are there, or once SLURM no
    longer lists it as queued or running (then, after RESULT_GRACE_SECONDS for a shared
    file system to show its files, it is that movie's failed entry)."""

    #: a job SLURM lists in one of these states has ended
    ENDED = {'COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'OUT_OF_MEMORY', 'NODE_FAIL',
             'PREEMPTED', 'BOOT_FAIL', 'DEADLINE'}
    SQUEUE_SECONDS = 5.0
    RESULT_GRACE_SECONDS = 30.0

    def __init__(self, folder, reference, settings, args):
        import shlex
        self.folder, self.reference, self.settings = folder, reference, settings
        self.dark = os.path.abspath(args.dark) if args.dark else None
        self.sbatch_args = shlex.split(args.slurm_args)
        # a GPU movie job asks for one GPU, the first it sees (SLURM sets CUDA_VISIBLE_DEVICES)
        self.gres = [] if args.device == 'cpu' else ['--gres=gpu:1']
        self.device = args.device if args.device in ('cpu', 'auto') else 'gpu:0'
        self.running = {}      # SLURM job id -> movie id
        self.queued, self.polled, self.gone = set(), 0.0, {}

    def submit(self, movie):
        import shlex
        import subprocess
        from ..io import InputError
        movie_id = movie['id']
        job, job_path = self.job(movie), self.folder.job_file(movie_id)
        os.makedirs(os.path.dirname(job_path), exist_ok=True)
        movie_job.write_job(job_path, job)
        checkpoint()   # the job reads its file
        program, arguments = movie_job.command(job_path, self.device)
        sbatch = (['sbatch', '--parsable', f'--job-name=gain-{movie_id}',
                   f'--output={self._log(movie_id)}', '--cpus-per-task=1'] + self.gres
                  + self.sbatch_args + ['--wrap', f'{shlex.quote(program)} {arguments}'])
        try:
            done = subprocess.run(sbatch, capture_output=True, text=True)
        except OSError as exc:
            raise InputError(f"--slurm: cannot run sbatch ({exc})") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ['no message']
            raise InputError(f"--slurm: sbatch refused movie {movie_id}: {lines[-1]}")
        job_id = done.stdout.strip().split(';')[0]
        self.running[job_id] = movie_id
        self.queued.add(job_id)

    def _log(self, movie_id):
        return os.path.splitext(self.folder.job_file(movie_id))[0] + '.slurm.out'

    def _poll_queue(self):
        """The ids of this user's jobs SLURM lists as not ended (at most every
        SQUEUE_SECONDS; the last answer when squeue fails: no job is given up for that)."""
        import getpass
        import subprocess
        if time.time() - self.polled < self.SQUEUE_SECONDS:
            return
        try:
            done = subprocess.run(['squeue', '--noheader', '--states=all', '--format=%i %T',
                                   f'--user={getpass.getuser()}'],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return
        if done.returncode == 0:
            self.queued = {line.split()[0] for line in done.stdout.splitlines()
                           if len(line.split()) == 2 and line.split()[1] not in self.ENDED}
            self.polled = time.time()

    def _collect(self):
        self._poll_queue()
        out, now = [], time.time()
        for job_id, movie_id in list(self.running.items()):
            if not self.folder.is_done(movie_id):
                if job_id in self.queued:
                    continue
                if now - self.gone.setdefault(job_id, now) < self.RESULT_GRACE_SECONDS:
                    continue
            del self.running[job_id]
            job = movie_job.read_job(self.folder.job_file(movie_id))
            try:
                report = movie_job.job_result(job, f"SLURM job {job_id}",
                                              f"; its log: {self._log(movie_id)}")
                out.append((movie_id, report, None))
            except movie_job.MovieFailed as exc:
                out.append((movie_id, None, exc.message))
        return out

    def finished(self, timeout):
        out = self._collect()
        if not out and self.running:
            time.sleep(timeout)
            out = self._collect()
        return out

    def close(self):
        """Cancel the jobs still queued or running (an interrupted check)."""
        import subprocess
        if self.running:
            subprocess.run(['scancel'] + list(self.running), capture_output=True)


# ------------------------------------------------------------------ the session's files
def update_running_estimate(folder, reference, settings, before=None):
    """Merge the sums of newly analysed movies into the running estimate and judge it,
    with the protocol's code (run_folder.running); returns the accumulator.

    Movies are merged in id order, only those below ``before`` (the first movie still
    being analysed): which half of the session a movie falls in depends on the order
    of adding, so the session's verdict does not depend on which job ends first."""
    from ..io.results import write_sums
    from ..run_folder.running import (load_accumulator, maps_members, merge_movie_sums,
                                      write_running_maps)
    accumulator = load_accumulator(folder)
    ids = [i for i in folder.analysed_ids() if before is None or i < before]
    added, handled = merge_movie_sums(folder, ids, accumulator)
    if added:
        write_sums(folder.accumulated_sums, accumulator)
    if accumulator.count and maps_members(folder) != sorted(accumulator.members):
        write_running_maps(folder, accumulator, reference.array, settings, reference.kind)
    checkpoint()   # the sums are in the saved estimate: only now are theirs removed
    for path in handled:
        os.remove(path)
    return accumulator


def write_logs(folder):
    """summary.txt, summaryForMonitor.txt and warnings.txt in the protocol's formats, one
    line per analysed movie in id order (and a warning per flagged or failed movie)."""
    from ..run_folder.logs import failed_message, movie_lines
    lines = {'summary.txt': [], 'summaryForMonitor.txt': [], 'warnings.txt': []}
    for movie_id in folder.analysed_ids():
        for name, new in movie_lines(movie_id, _read_json(folder.stats(movie_id))).items():
            lines[name] += new
    for movie_id in folder.failed_ids():
        lines['warnings.txt'].append(
            failed_message(movie_id, _read_text(folder.failed(movie_id))) + '\n')
    write_text(folder.warnings, ''.join(lines['warnings.txt']))
    write_text(folder.summary, ''.join(lines['summary.txt']))
    write_text(folder.monitor_summary, ''.join(lines['summaryForMonitor.txt']))


def session_report(folder, movie_list, skipped):
    """DIR/session.json's content: each movie (file, id, acquisition time, state, the
    verdict with its reasons and DQE loss, the paper's statistics) and the session's
    verdict (the running estimate's); ``skipped``: ids left out by --movie-step."""
    from ..estimator.verdict import verdict_of
    movies, analysed, failed = [], set(folder.analysed_ids()), set(folder.failed_ids())
    for movie in movie_list.movies:
        movie_id = movie['id']
        entry = {'id': movie_id, 'file': movie['file'],
                 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(movie['mtime']))}
        if movie_id in analysed:
            stats = _read_json(folder.stats(movie_id))
            verdict = verdict_of(stats).to_dict()
            verdict.pop('source')
            entry.update(state='flagged' if verdict['flagged'] else 'ok', verdict=verdict,
                         kind=stats['kind'], statistics=stats['statistics'],
                         ratios=stats['ratios'], paper_flags=stats['flags'],
                         frames=stats.get('frames'))
        elif movie_id in failed:
            entry.update(state='failed', reason=_read_text(folder.failed(movie_id)))
        else:
            entry['state'] = 'not analysed' if movie_id in skipped else 'waiting'
        movies.append(entry)
    session = None
    accumulated = folder.accumulated_outputs().json
    if os.path.exists(accumulated):
        stats = _read_json(accumulated)
        verdict = verdict_of(stats).to_dict()
        verdict.pop('source')
        session = {'movies': stats.get('movies', []), 'frames': stats.get('frames'),
                   'kind': stats['kind'], 'verdict': verdict,
                   'statistics': stats['statistics'], 'ratios': stats['ratios'],
                   'paper_flags': stats['flags']}
    flagged = [m['id'] for m in movies if m['state'] == 'flagged']
    return {'format': SESSION_FORMAT, 'movies': movies, 'session': session,
            'flagged_movies': flagged, 'failed_movies': sorted(failed),
            'flagged': bool(flagged or (session and session['verdict']['flagged']))}


def _read_json(path):
    with open(path) as handle:
        return json.load(handle)


def _read_text(path):
    with open(path) as handle:
        return handle.read().strip()


# ------------------------------------------------------------------ the command
class Session:
    """One call of the command: movies found (and, with --follow, waited for), numbered,
    analysed by the step rule, and the session's files brought up to date at most every
    --report-interval seconds and at the end."""

    def __init__(self, args, folder, movies, reference, settings, terminal):
        self.args, self.folder, self.movies = args, folder, movies
        self.reference, self.settings, self.terminal = reference, settings, terminal
        self.analysis = (SlurmAnalysis if args.slurm else Analysis)(folder, reference,
                                                                    settings, args)
        self.exclude = [p for p in (args.gain, args.dark) if p]
        self.new, self.skipped, self.taken = [], set(), set()
        self.flagged = self.failed = 0
        self.published, self.changed = 0.0, False

    def run(self, candidates):
        follow = self.args.follow
        stability = Stability(self.args.stable_time)
        last_new = time.time()
        while True:
            if self.movies.add(stability.stable(candidates) if follow else candidates):
                last_new = time.time()
            # a movie still being written is not quiet (drawing the report can take
            # longer than the quiet time while the next movie arrives)
            last_new = max(last_new, stability.last_change)
            closed = not follow or time.time() - last_new >= self.args.quiet_time
            self._schedule(closed)
            if not self.analysis.running:
                if closed:
                    return
                time.sleep(POLL_SECONDS)
            for movie_id, report, failure in self.analysis.finished(POLL_SECONDS):
                self._finished(movie_id, report, failure)
            if self.changed and time.time() - self.published >= self.args.report_interval:
                self.publish()
            if follow and not closed:
                candidates = find_movies(self.args.movies, True, self.exclude, self.folder.root)

    def _wanted(self, movie_id, closed):
        last = self.movies.movies[-1]['id']
        return (movie_id - 1) % self.args.movie_step == 0 or (closed and movie_id == last)

    def _schedule(self, closed):
        """Submit the movies to analyse, once the reference's orientation is decided: all
        of them, so that the workers go on while this thread updates the session's files."""
        if not self.reference.decided:
            wanted = self.args.orientation_movies
            if len(self.movies.movies) < wanted and not (closed and self.movies.movies):
                return
            files = [m['file'] for m in self.movies.movies[:wanted]]
            for line in self.reference.decide(files, self.settings, self.args.device):
                self.terminal.say(line)
        checkpoint()   # the reference the jobs read, as decided
        for movie in self.movies.movies:
            movie_id = movie['id']
            if movie_id in self.taken:
                continue
            if self.folder.is_done(movie_id):
                self.taken.add(movie_id)
            elif self._wanted(movie_id, closed):
                self.skipped.discard(movie_id)
                self.taken.add(movie_id)
                self.analysis.submit(movie)
            else:
                self.skipped.add(movie_id)

    def _finished(self, movie_id, report, failure):
        self.new.append(movie_id)
        self.changed = True
        if failure:
            self.failed += 1
        elif _verdict(report).flagged:
            self.flagged += 1
        total = len(self.new) + len(self.analysis.running) + sum(
            1 for m in self.movies.movies if m['id'] not in self.taken
            and m['id'] not in self.skipped)
        self.terminal.movie(self.movies.by_id(movie_id), report, failure, len(self.new), total,
                            self.flagged, self.failed)

    def publish(self, final=False):
        """The running estimate, the summaries, session.json and the report; returns
        session.json's content."""
        from ..report.run_folder import load
        from .report import publish_report
        update_running_estimate(self.folder, self.reference, self.settings,
                                before=min(self.analysis.running.values(), default=None))
        write_logs(self.folder)
        result = session_report(self.folder, self.movies, self.skipped)
        common.write_json(self.folder.path('session.json'), result)
        checkpoint()
        if self.folder.analysed_ids() and (self.changed or final or not os.path.exists(
                self.folder.path('index.html'))):
            publish_report(load(self.folder.root), self.folder.root,
                           title=f"Gain check: {os.path.basename(self.folder.root)}")
        self.published, self.changed = time.time(), False
        return result


class Terminal:
    """Progress on stderr: a bar rewritten in place on a terminal, with a line above it for
    each flagged or failed movie as it comes, else one plain line per movie; nothing with
    ``quiet``."""

    def __init__(self, quiet, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.started = time.time()

    def say(self, line):
        if not self.quiet:
            self.stream.write(('\r\033[K' if self.tty else '') + line + '\n')
            self.stream.flush()

    def movie(self, movie, report, failure, done, total, flagged, failed):
        if self.quiet:
            return
        verdict = None if failure else _verdict(report)
        state = 'failed: ' + failure if failure else common.verdict_words(verdict)
        line = f"[{done}/{total}] movie {movie['id']} ({os.path.basename(movie['file'])}): {state}"
        if self.tty:
            if failure or verdict.flagged:   # which movie and why, not only a count
                self.say(line)
            width = 30
            filled = int(width * done / total) if total else width
            self.stream.write('\r\033[K[%s%s] %d/%d movies, %d flagged, %d failed, %.0f s'
                              % ('#' * filled, '.' * (width - filled), done, total, flagged,
                                 failed, time.time() - self.started))
            self.stream.flush()
            return
        self.say(line)

    def end(self):
        if self.tty and not self.quiet:
            self.stream.write('\n')
            self.stream.flush()


def run_check(args):
    from ..io import InputError
    folder = RunFolder(os.path.abspath(args.output))
    _check_paths(args, folder)
    if args.slurm and args.jobs != 1:
        raise InputError("--jobs with --slurm: SLURM decides how many movie jobs run at "
                         "once; leave --jobs out")
    exclude = [p for p in (args.gain, args.dark) if p]
    first = find_movies(args.movies, args.follow, exclude, folder.root)
    os.makedirs(folder.extra('failed'), exist_ok=True)
    settings = analysis_settings(args)
    fresh = _record_settings(args, folder, settings)
    terminal = Terminal(args.quiet)
    reference = Reference(args, folder)
    for note in reference.notes:
        terminal.say(f"note: {note}")
    movies = MovieList(folder)
    if not fresh:
        before = sum(1 for m in movies.movies if folder.is_done(m['id']))
        unseen = sum(1 for p in first if os.path.realpath(p) not in movies.known)
        terminal.say(f"resuming {args.output}: {before} movies done before are kept; "
                     f"{unseen} new movies")
    session = Session(args, folder, movies, reference, settings, terminal)
    try:
        session.run(first)
    finally:
        session.analysis.close()
    terminal.end()
    result = session.publish(final=True)
    analysed = folder.analysed_ids()
    if not analysed:
        raise InputError("no movie could be analysed" + (
            f" (movie {result['failed_movies'][0]}: "
            f"{_read_text(folder.failed(result['failed_movies'][0]))})"
            if result['failed_movies'] else ''))
    new = sum(1 for i in session.new if i in analysed)
    print(summary_line(result, new, args.output))
    return EXIT_FLAGGED if result['flagged'] else 0


def summary_line(result, new, output):
    """The one line on the terminal at the end."""
    from ..run_folder.logs import ranges
    movies = [m for m in result['movies'] if m['state'] in ('ok', 'flagged')]
    parts = [f"{len(movies)} movies checked ({new} new)"]
    if result['flagged_movies']:
        parts.append(f"flagged: movies {ranges(result['flagged_movies'])}")
    else:
        parts.append('no movie flagged')
    if result['failed_movies']:
        parts.append(f"could not be analysed: movies {ranges(result['failed_movies'])}")
    if result['session'] is not None:
        parts.append(f"session: {common.verdict_words(_verdict(result['session']))}")
    return '; '.join(parts) + f" -> {os.path.join(output, 'index.html')}"
