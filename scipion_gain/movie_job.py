"""One movie of the movie gain protocol, as a job that any process can run.

The protocol (``GainProtMovieGain``) describes each movie to analyse in a small
JSON *job file* (:func:`write_job`): the movie, the gain reference as the
protocol uses it, the analysis settings and the result paths in the run
folder. :func:`run_job` does the work and writes the movie's result files:

* the maps and files of :func:`scipion_gain.io.results.write_analysis` (the
  estimate, defect labels and MotionCor2 defect file, structure model, sum of
  the corrected frames);
* in residual mode, the gain to use from now on (the reference times the
  residual, mean 1) and its statistics;
* ``sums``: the movie's Eq. 7 sums as a one-movie
  :class:`~scipion_gain.estimator.GainAccumulator` (.npz), from which the
  protocol's running estimate is built; unusable pixels add nothing;
* the stats JSON LAST: its presence means the movie's results are complete;
* or, when the movie cannot be judged (unreadable, truncated, all NaN, all
  zero, too few usable pixels), the ``failed`` file: one line, naming the
  user's file, and nothing else.

The same function runs in a protocol's worker thread, or as the command
``scipion-gain movie-job JOB.json`` (a local process, or one batch job per
movie through Scipion's queue system with ``QUEUE_FOR_JOBS=Y``): the files
are the same either way, so the protocol's outputs, summaries and running
estimate are derived from them alone.

No pyworkflow import (the command starts in a fraction of a second).
"""
import json
import os
import socket
import sys
import threading
import traceback
from dataclasses import fields, is_dataclass

import numpy as np

JOB_FORMAT = 1

#: result roles of a job, besides those of io.results.AnalysisOutputs
EXTRA_ROLES = ('corrected_gain', 'sums', 'failed')

#: bytes of memory per frame pixel at the peak of one movie's analysis, and a base for
#: the interpreter and libraries: the per-movie job's peak, measured with
#: ``benchmarks/command_cost.py`` (job-residual; benchmarks/README.md "The protocol's
#: per-movie job and 8192 x 8192 frames" and "At the end of this stop"), is 0.84-0.91 GB
#: at 4096 x 4096 (10 and 40 frames) and 2.97 GB at 8192 x 8192 x 10: 39-41 bytes per pixel
#: above 256 MB; 64 leaves half again for what was not measured (it was 140, from the
#: paper's SME before the memory work: a 4096 x 4096 job asked for 2.5 GB and used 0.9)
BYTES_PER_PIXEL = 64
BASE_MB = 256


def job_memory_mb(width, height):
    """Memory (MB) to ask a batch system for one movie job of ``width`` x ``height`` frames.

    Memory does not grow with the number of frames (they stream one at a
    time); it is the per-pixel working set of the estimator and the
    analysis, plus the interpreter. Rounded up to 256 MB.
    """
    need = BASE_MB + BYTES_PER_PIXEL * int(width) * int(height) / 2 ** 20
    return int(-(-need // 256) * 256)


# ------------------------------------------------------------------ job files
def settings_to_json(settings):
    """An AnalysisSettings as JSON-ready data (the job file's ``settings``)."""
    return settings.to_json()


def settings_from_json(data):
    """The AnalysisSettings of ``settings_to_json`` (the same values, the same types)."""
    from .estimator.analysis import AnalysisSettings
    parts = {}
    for part in fields(AnalysisSettings):
        default = part.default_factory()
        values = dict(data.get(part.name, {}))
        known = {f.name: f for f in fields(default)} if is_dataclass(default) else {}
        kwargs = {}
        for name, value in values.items():
            if name not in known:
                continue  # a setting this version does not know: left at its default
            if isinstance(getattr(default, name), tuple) and isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        parts[part.name] = type(default)(**kwargs)
    return AnalysisSettings(**parts)


def write_job(path, job):
    """Write a job (a dict, see :func:`make_job`) atomically."""
    from .io.results import write_json
    write_json(path, job)


def read_job(path):
    from .io import InputError
    try:
        with open(path) as handle:
            job = json.load(handle)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the job file ({exc})") from None
    if job.get('format') != JOB_FORMAT:
        raise InputError(f"{path}: job file format {job.get('format')!r}, this version reads "
                         f"{JOB_FORMAT}")
    return job


def make_job(movie_id, movie, movie_file, settings, outputs, position=None, reference=None,
             reference_reader='image', reference_kind=None, extra=None, dark=None,
             dark_flip='no'):
    """A job: what :func:`run_job` needs, JSON-ready.

    ``movie``: the path to read (e.g. the import's link); ``movie_file``: the
    user's file, named in messages; ``settings``: an AnalysisSettings;
    ``outputs``: {role: path} (the roles of AnalysisOutputs and
    ``EXTRA_ROLES``); ``reference``: the gain reference's path, read with
    ``reference_reader`` ('gain_reference': the user's file, through
    read_gain_reference; 'image': a copy the protocol wrote, as stored);
    ``reference_kind`` goes into the stats JSON as ``gain_reference``;
    ``extra``: more keys for the stats JSON; ``dark``: a dark reference's path
    (read with read_dark_reference, turned by ``dark_flip``: 'no', 'upside
    down', 'left-right' or the gain's Transform dict, see :func:`load_dark`),
    subtracted from every frame first.
    """
    return {'format': JOB_FORMAT, 'movie_id': int(movie_id), 'movie': os.path.abspath(movie),
            'movie_file': movie_file, 'position': None if position is None else int(position),
            'reference': os.path.abspath(reference) if reference else None,
            'reference_reader': reference_reader, 'reference_kind': reference_kind,
            'dark': os.path.abspath(dark) if dark else None, 'dark_flip': dark_flip,
            'settings': settings_to_json(settings),
            'outputs': {role: os.path.abspath(path) for role, path in outputs.items() if path},
            'extra': dict(extra or {})}


# ------------------------------------------------------------------ references
_references = {}
_references_lock = threading.Lock()


def load_reference(path, reader='image'):
    """The gain reference of a job as a float32 array; read once per process and file
    version (path, size, mtime), since every movie of a session uses the same one."""
    from .io import read_gain_reference, read_image
    stat = os.stat(path)
    key = (os.path.abspath(path), reader, stat.st_size, stat.st_mtime_ns)
    with _references_lock:
        if key not in _references:
            if reader == 'gain_reference':
                image = read_gain_reference(path)[0]
            elif reader == 'image':
                image = read_image(path)[0]
            else:
                raise ValueError(f"unknown reference reader {reader!r}")
            _references.clear()  # one reference at a time (it may be large)
            _references[key] = np.ascontiguousarray(image, dtype=np.float32)
        return _references[key]


def load_dark(path, flip='no'):
    """The dark reference of a job (an io.DarkReference), read once per process and file
    version, as :func:`load_reference`. ``flip``: 'no', 'upside down', 'left-right', or
    the gain's rotation/flip as an orientation.Transform dict ({'rotation': r, 'flip':
    f}, the protocol's gainTransform): the dark is turned as the gain is."""
    from .io import read_dark_reference
    stat = os.stat(path)
    turn = None
    if isinstance(flip, dict):
        turn = (int(flip.get('rotation', 0)), int(flip.get('flip', 0)))
        flip = 'no'
    key = ('dark', os.path.abspath(path), flip, turn, stat.st_size, stat.st_mtime_ns)
    with _references_lock:
        if key not in _darks:
            _darks.clear()
            dark = read_dark_reference(path, flip_y=(flip == 'upside down'),
                                       flip_x=(flip == 'left-right'))
            if turn is not None and turn != (0, 0):
                dark = _turned_dark(dark, turn)
            _darks[key] = dark
        return _darks[key]


def _turned_dark(dark, turn):
    """A DarkReference turned by MotionCor2's -RotGain/-FlipGain (estimator.orientation)."""
    from .estimator.orientation import Transform
    from .io.gain import DarkReference
    transform = Transform(*turn)
    notes = list(dark.notes) + [f"dark turned as the gain: {transform.describe()} "
                                f"({transform.motioncor2})"]
    return DarkReference(transform.apply(dark.dark), notes,
                         transform.apply(dark.unusable), dark.counts, dark.path,
                         transform.motioncor2)


_darks = {}


# ------------------------------------------------------------------ running a job
class MovieFailed(Exception):
    """The movie could not be analysed; ``message`` is the one line written to ``failed``."""

    def __init__(self, message, expected=True):
        super().__init__(message)
        self.message = message
        self.expected = expected  # an InputError (bad input) rather than a bug or a crash


def device_for(request):
    """(device, note): ``request`` if usable, else 'cpu' and why (a GPU that is not there
    must not fail the movie)."""
    if not request or request == 'cpu':
        return 'cpu', None
    from .estimator.arrays import resolve_device
    try:
        resolve_device(request)
        return request, None
    except Exception as exc:  # DeviceError, or a CUDA library that fails to load
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return 'cpu', f"{request} requested but not usable ({reason}): ran on the CPU"


def run_job(job, device='cpu', reference=None):
    """Analyse the job's movie and write its result files; returns the stats report.

    ``reference``: the reference array when the caller has it already (the
    same as :func:`load_reference` gives). Raises :class:`MovieFailed` after
    writing the ``failed`` file when the movie cannot be analysed.
    """
    from .io import InputError
    outputs = job['outputs']
    movie, movie_file = job['movie'], job.get('movie_file') or job['movie']
    try:
        return _run(job, device, reference)
    except Exception as exc:  # a corrupt or unreadable movie: report it, go on
        expected = isinstance(exc, InputError)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = message.replace(movie, movie_file)
        if not expected:
            message = f"{type(exc).__name__}: {message}"
        if outputs.get('failed'):
            _write_failed(outputs['failed'], message)
        raise MovieFailed(message, expected) from exc


def _run(job, device, reference):
    from .estimator import GainAccumulator, map_statistics
    from .estimator.analysis import analyse
    from .io import write_mrc
    from .io.results import AnalysisOutputs, write_analysis, write_sums

    outputs = job['outputs']
    movie_id = job['movie_id']
    settings = settings_from_json(job['settings'])
    if job.get('reference') and reference is None:
        reference = load_reference(job['reference'], job.get('reference_reader', 'image'))
    requested = device
    device, device_note = device_for(device)
    dark = load_dark(job['dark'], job.get('dark_flip') or 'no') if job.get('dark') else None

    def save_sums(result):
        # the movie's share of the running estimate (its unusable pixels add nothing),
        # saved before the judging, which then runs without them (at 4096 x 4096 two
        # float64 maps and a float32 one)
        if result.numerator is None:
            return
        sums = GainAccumulator()
        sums.add(result, member=int(movie_id), share=True)
        write_sums(outputs['sums'], sums)

    analysis = analyse([job['movie']], reference=reference, dark=dark, settings=settings,
                       device=device, keep_sums=False,
                       sums_to=save_sums if outputs.get('sums') else None)
    result = analysis.result
    extra = {'movie_id': movie_id, 'movie_file': job.get('movie_file') or job['movie'],
             'dark_reference': job.get('dark')}
    if job.get('position') is not None:
        extra['movie_index'] = job['position']
    extra.update(job.get('extra', {}))
    extra['job'] = _where(requested, device)
    notes = list(analysis.report['notes'])
    if device_note:
        notes.insert(0, device_note)
    extra['notes'] = [note.replace(job['movie'], extra['movie_file']) for note in notes]
    # what reading and conditioning the frames said (the protocol's summary shows them)
    extra['input_notes'] = [note.replace(job['movie'], extra['movie_file'])
                            for note in getattr(result, 'notes', [])]
    if reference is not None:
        extra['gain_reference'] = job.get('reference_kind') or 'as given'
        if outputs.get('corrected_gain'):
            # the gain to use from now on: the reference times the correction still
            # missing (both multiply raw frames), mean 1
            good = ~result.defects
            # the reference the residual is of: the given one, or (movies gain-corrected at
            # acquisition) the one applied, recovered from the frames
            used = result.reference if result.reference is not None else reference
            corrected = _normalised(used * analysis.gain, good)
            write_mrc(outputs['corrected_gain'], corrected,
                      label='scipion-gain: movies gain x residual of movie %d' % movie_id)
            extra['corrected_gain'] = map_statistics(corrected, settings.thresholds, good)
            corrected = good = None   # written: not held while the analysis is
    roles = {f.name for f in fields(AnalysisOutputs)}
    report = write_analysis(analysis, AnalysisOutputs(**{r: p for r, p in outputs.items()
                                                        if r in roles}),
                            'movie %d' % movie_id, extra=extra)
    if outputs.get('failed') and os.path.exists(outputs['failed']):
        os.remove(outputs['failed'])  # an earlier attempt's failure no longer holds
    return report


def run_as_command(job, job_path, run, device='cpu', hint=''):
    """Run a job as the command ``scipion-gain movie-job`` (:func:`command`) and read its
    result back: the same :func:`run_job`, in another process or a batch job.

    Writes the job file ``job_path``, calls ``run(program, arguments)`` (the
    protocol's runJob: a batch job with QUEUE_FOR_JOBS=Y) and returns the stats
    report the job wrote, or raises :class:`MovieFailed` with the reason from its
    ``failed`` file; a job that ended without either is reported like a corrupt
    movie (``hint`` says where its logs are) and gets a ``failed`` file too
    (:func:`job_result`).
    """
    # concurrent workers make the folder at once: no check-then-create
    os.makedirs(os.path.dirname(os.path.abspath(job_path)), exist_ok=True)
    write_job(job_path, job)
    error = None
    try:
        run(*command(os.path.abspath(job_path), device))
    except Exception as exc:  # CalledProcessError (exit status 2: the movie failed)
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return job_result(job, error, hint)


def job_result(job, error=None, hint=''):
    """The stats report of a job that has ended (its command, wherever it ran), or
    :class:`MovieFailed` with the reason from its ``failed`` file; a job that ended
    without either is reported like a corrupt movie (``error``: what its runner said,
    ``hint``: where its logs are) and gets a ``failed`` file too."""
    from .io.results import write_text
    stats_path, failed_path = job['outputs']['json'], job['outputs']['failed']
    if os.path.exists(stats_path):
        with open(stats_path) as handle:
            return json.load(handle)
    if os.path.exists(failed_path):
        with open(failed_path) as handle:
            raise MovieFailed(handle.read().strip())
    message = ('the job ended without results (%s; killed for its time or memory?)%s'
               % (error or 'no error reported', hint))
    write_text(failed_path, message + '\n')
    raise MovieFailed(message, expected=False)


def _where(requested, device):
    """Where and how the job ran (the stats JSON's ``job``): host, process, the device
    asked for and the one used, and what a batch system granted (SLURM job id, the
    GPUs SLURM allocated, CUDA_VISIBLE_DEVICES: a job's 'gpu:0' is the first listed)."""
    where = {'host': socket.gethostname(), 'pid': os.getpid(),
             'device_requested': requested or 'cpu', 'device': device}
    for name, key in (('SLURM_JOB_ID', 'slurm_job_id'), ('SLURM_JOB_GPUS', 'slurm_job_gpus'),
                      ('CUDA_VISIBLE_DEVICES', 'cuda_visible_devices')):
        if os.environ.get(name) is not None:
            where[key] = os.environ[name]
    return where


def _normalised(image, good):
    """``image`` over its mean on ``good`` (and finite, positive) pixels, float32; 1 on the
    rest. The mean is taken over the float64 values (as ``image[good].mean()`` of a
    float64 copy would), the quotient in float64 rounded once to float32; the only
    float64 array is the 1-D copy of the good values the mean needs (a 4096 x 4096 map:
    128 MB, not the four float64 copies of the plain expressions)."""
    image = np.asarray(image)
    good = good & np.isfinite(image) & (image > 0)
    if good.all():   # the usual case: no copy of the good pixels
        mean = image.astype(np.float64).mean()
        out = np.empty(image.shape, dtype=np.float32)
        np.divide(image, mean, out=out, dtype=np.float64, casting='same_kind')
        return out
    out = np.ones(image.shape, dtype=np.float32)
    if good.any():
        values = image[good].astype(np.float64)
        np.divide(values, values.mean(), out=values)
        out[good] = values
    return out


def _write_failed(path, message):
    """The failure line, written at once and atomically, also inside a command's output
    transaction (which then drops whatever else the failed run had written)."""
    from .io.atomic import write_text
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, message + '\n', now=True)


# ------------------------------------------------------------------ the command
def command(job_path, device='cpu'):
    """(program, arguments) that run a job file: ``scipion-gain movie-job JOB --device D``,
    with the ``scipion-gain`` of this Python's environment (``python -m scipion_gain.cli``
    where that script is not installed)."""
    import shlex
    script = os.path.join(os.path.dirname(sys.executable), 'scipion-gain')
    args = 'movie-job %s --device %s' % (shlex.quote(job_path), shlex.quote(device))
    if os.access(script, os.X_OK):
        return script, args
    return sys.executable, '-m scipion_gain.cli ' + args


def add_parser(subparsers, parents=()):
    parser = subparsers.add_parser(
        'movie-job', parents=list(parents),
        help='internal: one movie of a movie gain protocol run, as the protocol starts it',
        description='Analyse one movie as the Scipion protocol "movie gain" does, from the job '
                    'file the protocol wrote, and write the result files the protocol reads. '
                    'This is how each movie runs as its own batch job (QUEUE_FOR_JOBS=Y). '
                    'Exit status 2 when the movie cannot be analysed (the reason is in the '
                    'job\'s "failed" file and on stderr).')
    parser.add_argument('job', metavar='JOB.json', help='job file written by the protocol')
    parser.add_argument('--device', default='cpu',
                        help="cpu (default), gpu:N (N counts the GPUs this process sees: a batch "
                             "job's granted GPU is gpu:0), gpu or auto; an unusable GPU falls "
                             "back to the CPU with a note")
    parser.set_defaults(func=run_command)
    return parser


def run_command(args):
    from .estimator.verdict import verdict_of
    from .io import InputError
    job = read_job(args.job)
    try:
        report = run_job(job, device=args.device)
    except MovieFailed as exc:
        if not exc.expected:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        raise InputError(f"movie {job['movie_id']} ({job.get('movie_file')}): {exc.message}") \
            from None
    for note in report.get('notes', []):
        print(f"note: {note}", file=sys.stderr)
    stats = report['statistics']
    print(f"movie {job['movie_id']}: {report['kind']} std={stats['std']:.4f} "
          f"p2.5={stats['p2.5']:.4f} p97.5={stats['p97.5']:.4f} max={stats['max']:.4f} "
          f"({report['frames']} frames, {report['device']}, {report['seconds']:.1f} s); "
          f"verdict: {verdict_of(report).sentence}")
    return 0
