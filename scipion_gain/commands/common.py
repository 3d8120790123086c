"""What every ``scipion-gain`` command shares: argument checks, output paths, one-line errors.

* :class:`OneLineParser`: argparse whose errors are one line (no usage block),
  exit status 2; argument types that refuse NaN, inf and out-of-range values.
* :func:`check_outputs`: every output path against every input and against the
  other outputs (the same file also through symbolic or hard links), and its
  folder there and writable, before any work.
* :func:`run_command`: runs a command inside an output transaction
  (:func:`scipion_gain.io.atomic.transaction`: all its files land together at
  the end, or none), with the numerical libraries' warnings and tifffile's log
  lines off the terminal unless ``--verbose``, and every failure a user can
  cause as one line on stderr with exit status 2 (130 on Ctrl-C, 143 on
  SIGTERM; earlier outputs stay as they were).
"""
import argparse
import errno
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
EXIT_TERMINATED = 143   # 128 + SIGTERM

#: errors that only writing gives (full disk, quota, file size limit, read-only file system)
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT}

DEVICE_PATTERN = re.compile(r'^(cpu|gpu|auto|gpu:\d+)$')

#: loggers of the libraries we read files with; their messages repeat what a reader says in a note
LIBRARY_LOGGERS = ('tifffile', 'imagecodecs', 'ncempy', 'mrcfile')


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors on one line: 'PROG: error: MESSAGE (see PROG --help)'."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- argument types ----------------------------------------------------------------------------

def finite_float(minimum=None, strictly=False, what='value'):
    """An argparse type: a finite number, at least (or above, ``strictly``) ``minimum``."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{what} must be a finite number, not {text!r}")
        if minimum is not None and (value <= minimum if strictly else value < minimum):
            raise argparse.ArgumentTypeError(
                f"{what} must be {'>' if strictly else '>='} {minimum:g}, not {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in some messages
    return parse


def sigma(text):
    """'auto' or a finite sigma >= 0 (columns/lines, Eq. 2)."""
    if text == 'auto':
        return text
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"sigma must be 'auto' or a finite number >= 0, "
                                         f"not {text!r}")
    return value


def _whole_number(text, minimum):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
    return value


def positive_int(text):
    return _whole_number(text, 1)


def nonnegative_int(text):
    return _whole_number(text, 0)


def device(text):
    """cpu, gpu, gpu:N or auto (whether a GPU is there is checked when the run starts)."""
    value = text.strip().lower()
    if not DEVICE_PATTERN.match(value):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (use cpu, gpu, gpu:N or auto)")
    return value


def add_common_options(parser):
    """Options of every command: --verbose."""
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='show the warnings of the numerical libraries and the log lines of '
                             'the file readers (off by default: what matters is in the notes)')


def add_judging_options(parser, dqe_loss_may_be_zero=False):
    """The verdict's DQE threshold and the paper's three thresholds, with the estimator's
    defaults (``VerdictSettings``, ``Thresholds``): one declaration for every command.
    ``estimate`` accepts a DQE threshold of 0 (flag any structure beyond noise); ``check``,
    like the protocol's form, wants it above 0."""
    from ..estimator.statistics import Thresholds
    from ..estimator.verdict import VerdictSettings
    defaults, verdict = Thresholds(), VerdictSettings()
    dqe_percent = 100 * verdict.max_dqe_loss
    parser.add_argument('--max-dqe-loss', default=dqe_percent, metavar='PERCENT',
                        type=finite_float(0, not dqe_loss_may_be_zero, 'max-dqe-loss'),
                        help='verdict: flag structure beyond noise that costs at least this '
                             f'percentage of the DQE at the movie\'s dose (default {dqe_percent:g})')
    for options, default, what in ((('--std-threshold',), defaults.std, "the map's std"),
                                   (('--ratio-threshold', '--percentile-ratio-threshold'),
                                    defaults.percentile_ratio, "the map's p97.5 / p2.5"),
                                   (('--max-ratio-threshold',), defaults.max_ratio,
                                    "the map's max / p97.5 (hot pixels)")):
        parser.add_argument(*options, default=default, metavar='X',
                            type=finite_float(0, True, options[0][2:]),
                            help=f"the paper's flag: {what} above this (default {default:g}); "
                                 "reported beside the verdict, not part of it")


def judging_settings(args):
    """(Thresholds, VerdictSettings) from the options of ``add_judging_options``."""
    from ..estimator.statistics import Thresholds
    from ..estimator.verdict import VerdictSettings
    return (Thresholds(std=args.std_threshold, percentile_ratio=args.ratio_threshold,
                       max_ratio=args.max_ratio_threshold),
            VerdictSettings(max_dqe_loss=args.max_dqe_loss / 100.0))


def add_reading_options(parser):
    """--strict / --lenient: what to do with a truncated movie."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--strict', dest='strict', action='store_true', default=True,
                       help='refuse a truncated movie (fewer complete frames than the file '
                            'announces): the default')
    group.add_argument('--lenient', dest='strict', action='store_false',
                       help='use the complete frames of a truncated movie (a note says so)')


# --- paths -------------------------------------------------------------------------------------

def same_file(a, b):
    """True when paths ``a`` and ``b`` name one file: through symbolic links, hard links
    (the same inode) or different spellings; also for paths that do not exist yet."""
    a, b = os.fspath(a), os.fspath(b)
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs, inputs, folders=()):
    """Refuse, before any work, output paths that would destroy something or cannot be written.

    ``outputs``: {option: path or None} (files); ``folders``: {option: path or
    None} (output folders, created if missing); ``inputs``: [(what, path)].
    Raises :class:`~scipion_gain.io.InputError` with one line when an output is
    an input (also through links), two outputs are the same file, a file
    output is an existing folder (or a folder output an existing file), or an
    output's folder is missing or cannot be written.
    """
    from ..io import InputError
    files = [(option, os.fspath(path)) for option, path in outputs.items() if path]
    dirs = [(option, os.fspath(path)) for option, path in dict(folders).items() if path]
    inputs = [(what, os.fspath(path)) for what, path in inputs if path]
    for option, path in files + dirs:
        for what, source in inputs:
            if same_file(path, source):
                also = '' if path == source else f" {source}"
                raise InputError(f"{path}: refusing to overwrite the input {what}{also} "
                                 f"with {option}")
    for number, (option, path) in enumerate(files):
        for other, other_path in files[number + 1:]:
            if same_file(path, other_path):
                raise InputError(f"{path}: refusing to write {option} and {other} to the same file")
    for option, path in files:
        if os.path.isdir(path):
            raise InputError(f"{path}: {option} is a folder; give a file name")
        if os.path.exists(path) and not os.path.isfile(path):
            raise InputError(f"{path}: {option} exists and is not a regular file")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise InputError(f"{path}: output folder {folder} does not exist")
        probe_writable(folder)
    for option, path in dirs:
        if os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{path}: {option} exists and is not a folder")
        existing = path
        while not os.path.isdir(existing):  # the nearest folder that exists: it will hold ours
            parent = os.path.dirname(os.path.abspath(existing))
            if parent == existing:
                break
            existing = parent
        probe_writable(existing)


def probe_writable(folder):
    """Create and remove a file in ``folder``; an InputError line if that cannot be done."""
    from ..io import InputError
    try:
        handle, name = tempfile.mkstemp(prefix='.scipion-gain-probe-', suffix='.tmp', dir=folder)
        os.close(handle)
        os.remove(name)
    except OSError as exc:
        raise InputError(f"{folder}: cannot write there ({exc.strerror or exc})") from None


# --- running a command -------------------------------------------------------------------------

@contextmanager
def quiet_libraries(verbose):
    """Within the block, warnings (NumPy RuntimeWarning, RankWarning, ...) and the readers'
    libraries' log lines stay off the terminal unless ``verbose``: the notes say what
    matters, once. Everything is restored afterwards (``main`` may run in a test process)."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for logger in loggers:
            logger.setLevel(logging.CRITICAL + 1)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises :class:`Terminated` in the main thread, so cleanup runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame):
    raise Terminated()


# glibc's mallopt parameters (malloc.h): the number of arenas, and the sizes above which a
# request is mapped on its own and above which freed memory at the heap's top is given back
M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
# a 4096 x 4096 x 4 float64 block is 512 MB: everything the estimate allocates stays below
HEAP_KEEPS_BELOW = 1 << 30


def tune_allocator():
    """Set this process's allocator for a few large arrays made and freed many times; True
    where glibc's part was set.

    A 4096 x 4096 movie is judged with a few hundred arrays of 16-64 MB, each made, filled
    and freed. Two defaults made the kernel, not the arithmetic, take most of the time
    (raw 4096 x 4096 x 4: 10.6-11.0 s of system time against 8.3-9.0 s of user time when the
    page cache is full, as it is at a microscope), a third the memory:

    - NumPy asks for transparent huge pages on every large array (``madvise``); with the
      machine's memory full of cached movies the kernel compacts memory to find each one.
      ``NUMPY_MADVISE_HUGEPAGE=0`` (NumPy's own switch, read when NumPy is imported) turns
      that off unless the user set it.
    - glibc maps every request over 32 MB on its own and unmaps it when freed, so the next
      array of that size faults in its pages again (a 64 MB array: 16384 page faults, each
      zeroing a page). Raising the mmap and trim thresholds to 1 GB keeps freed arrays in
      the heap for the next one (``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``).
    - Threads (the two directions of the line profiles and the SME tables, the dose beside
      the specimen model) each allocate from an arena of their own under glibc's default of
      up to 8 a core, and what they free there stays resident beside the main heap: the
      estimate's peak rose from 889 to 1059 MB (raw 4096 x 4096 x 10) when those threads were
      tried. One arena (``mallopt(M_ARENA_MAX, 1)``) lets them reuse what the other freed.

    glibc fixes its arena limit the first time a thread asks for an arena of its own, and
    NumPy reads its switch when imported: this is called at the command's start, before NumPy
    is imported and any thread is made (the command and the protocol's per-movie job,
    ``scipion-gain movie-job``, both start in :func:`scipion_gain.commands.main`). Not called
    in a host process (Scipion's, the in-process job): its heap is not ours to set. glibc's
    part is a no-op without glibc (macOS, musl)."""
    os.environ.setdefault('NUMPY_MADVISE_HUGEPAGE', '0')
    if not sys.platform.startswith('linux'):
        return False
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all([mallopt(M_ARENA_MAX, 1) == 1,
                mallopt(M_MMAP_THRESHOLD, HEAP_KEEPS_BELOW) == 1,
                mallopt(M_TRIM_THRESHOLD, HEAP_KEEPS_BELOW) == 1])


def run_command(args):
    """Run ``args.func(args)`` as described in this module; returns the exit status."""
    from ..estimator.arrays import DeviceError
    from ..io import InputError, TruncatedInput
    from ..io.atomic import WriteError, transaction

    name = f"scipion-gain {args.command}"
    try:
        with sigterm_as_interrupt(), quiet_libraries(getattr(args, 'verbose', False)), \
                transaction():
            return args.func(args)
    except TruncatedInput as exc:
        hint = (f"; --lenient uses the {exc.complete} complete {exc.unit}"
                if getattr(args, 'strict', None) is not None else '')
        return _fail(name, f"{exc}{hint}")
    except (InputError, DeviceError, WriteError) as exc:
        return _fail(name, str(exc))
    except OSError as exc:  # permissions, I/O errors, a file that vanished
        writing = exc.errno in WRITE_ERRNOS
        where = exc.filename or ('an output' if writing else 'a file')
        return _fail(name, f"cannot {'write' if writing else 'read'} {where}: "
                           f"{exc.strerror or exc}")
    except MemoryError:
        return _fail(name, "out of memory (try fewer or smaller movies, or --frame-step)")
    except Terminated:
        print(f"{name}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _fail(name, message):
    print(f"{name}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_BAD_INPUT


class Progress:
    """Progress of a long run on stderr: a rewritten line on a terminal, else every 10 %.

    ``then``: what follows the last frame, said on its line (the estimate's own passes
    and the judging take seconds after it at 4096 x 4096, with nothing else to show)."""

    def __init__(self, label, stream=None, quiet=False, then=None, unit='frame'):
        self.label = label
        self.then = then
        self.unit = unit
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.started = time.perf_counter()
        self.last_decile = -1

    def __call__(self, done, total):
        if self.quiet or total <= 0:
            return
        elapsed = time.perf_counter() - self.started
        line = (f"{self.label}: {self.unit} {done}/{total} ({100 * done / total:.0f} %), "
                f"{elapsed:.1f} s")
        if done == total and self.then:
            line += f"; {self.then}"
        if self.stream.isatty():
            self.stream.write('\r' + line + ('\n' if done == total else ''))
        else:
            decile = int(10 * done / total)
            if decile == self.last_decile:
                return
            self.last_decile = decile
            self.stream.write(line + '\n')
        self.stream.flush()


def verdict_words(verdict):
    """A verdict on the terminal: 'FLAGGED: <sentence>' or 'ok: <sentence>'. A quiet
    verdict's sentence ends ': ok'; it is said once, up front, where a log is scanned."""
    sentence = verdict.sentence
    if verdict.flagged:
        return f"FLAGGED: {sentence}"
    if sentence.endswith(': ok'):
        sentence = sentence[:-len(': ok')]
    return f"ok: {sentence}"


def print_notes(notes):
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def write_json(path, data):
    """Write JSON atomically: the one JSON writer (:func:`scipion_gain.io.results.write_json`)."""
    from ..io.results import write_json as write
    write(path, data)
