"""Files written whole or not at all, alone or as a set.

Every writer of this package writes through :func:`atomic_path`: the data go to
a temporary file in the destination's folder, which then replaces the
destination with one ``os.replace`` (atomic on POSIX file systems). A failure
or an interruption while writing leaves the destination as it was and removes
the temporary file.

A command that writes several files (a map, its defects, its JSON) opens a
:func:`transaction` around its writes: the replacements are then deferred to
the end of the block and done together, in the order written, only when the
block ends without an exception. A failed or interrupted run therefore leaves
every earlier output in place, not a new map beside an old JSON. The
transaction belongs to the thread that opened it; other threads (a protocol's
steps) write as usual.

A process killed outright (SIGKILL, power loss) can leave a temporary file
``.NAME.PID.N.tmp`` beside the destination, never a damaged destination.
"""
import itertools
import os
import threading
from contextlib import contextmanager

_local = threading.local()
_serial = itertools.count()


def _forget_transaction():
    _local.transaction = None


# A forked process (a pool of movie jobs) starts with no open transaction: the pending
# files are its parent's, and its own writes must land as it makes them.
os.register_at_fork(after_in_child=_forget_transaction)


def temp_path(path):
    """A new temporary file name beside ``path`` (unique in this process)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{next(_serial)}.tmp")


class WriteError(OSError):
    """An output could not be written (disk full, read-only, ...); the destination is as it was.

    ``filename`` is the destination (not the temporary file); str() is one line.
    """

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


def _write_error(exc, path):
    if isinstance(exc, WriteError):
        return exc
    return WriteError(exc.errno, exc.strerror or str(exc), path)


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(path, now=False):
    """Yield a temporary path to write; it then replaces ``path`` whole.

    Inside a :func:`transaction` of this thread the replacement waits for the
    transaction's commit, unless ``now`` (a line that must land even when the
    transaction is then rolled back: why a movie failed). On any exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        yield tmp
        open_transaction = getattr(_local, 'transaction', None)
        if open_transaction is not None and not now:
            open_transaction.defer(tmp, path)
        else:
            os.replace(tmp, path)
        tmp = None
    except OSError as exc:  # ENOSPC, EROFS, EFBIG, EACCES...: name the destination
        raise _write_error(exc, path) from None
    finally:
        if tmp is not None:
            _remove(tmp)


class Transaction:
    """Temporary files waiting to replace their destinations (see :func:`transaction`)."""

    def __init__(self):
        self.pending = []  # [(temporary, destination)] in the order written

    def defer(self, tmp, path):
        for index, (old_tmp, old_path) in enumerate(self.pending):
            if old_path == path:  # written twice: the last version wins
                _remove(old_tmp)
                del self.pending[index]
                break
        self.pending.append((tmp, path))

    def commit(self):
        """Replace every destination, in the order written (a JSON written last lands last)."""
        try:
            while self.pending:
                tmp, path = self.pending[0]
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    raise _write_error(exc, path) from None
                self.pending.pop(0)
        finally:
            self.rollback()

    def rollback(self):
        """Remove the temporary files not committed; the destinations stay as they were."""
        for tmp, _ in self.pending:
            _remove(tmp)
        self.pending = []


@contextmanager
def transaction():
    """All files written atomically in this thread inside the block land together at its end,
    or none does (an exception, KeyboardInterrupt included, removes them all).

    A failure while writing raises :class:`WriteError` naming the destination.
    """
    if getattr(_local, 'transaction', None) is not None:
        yield _local.transaction  # nested: the outer block commits
        return
    current = _local.transaction = Transaction()
    try:
        yield current
    except BaseException:
        current.rollback()
        raise
    else:
        current.commit()
    finally:
        _local.transaction = None


def checkpoint():
    """Land now what this thread's open transaction holds (nothing without one).

    For a long command that updates its outputs as it goes (``scipion-gain
    check --follow``): each update's files land together at its checkpoint,
    and a failure later leaves the last complete update in place.
    """
    current = getattr(_local, 'transaction', None)
    if current is not None:
        current.commit()


def write_bytes(path, data, now=False):
    """Write ``data`` to ``path`` atomically (``now``: see :func:`atomic_path`)."""
    with atomic_path(path, now=now) as tmp:
        with open(tmp, 'wb') as handle:
            handle.write(data)


def write_text(path, text, now=False):
    """Write ``text`` (UTF-8) to ``path`` atomically (``now``: see :func:`atomic_path`)."""
    write_bytes(path, text.encode('utf-8'), now=now)


def move_into_place(source, path):
    """Put a finished file (written whole elsewhere in the same file system) at ``path``
    in one step; a failure raises :class:`WriteError` naming ``path``."""
    try:
        os.replace(source, path)
    except OSError as exc:
        raise _write_error(exc, os.fspath(path)) from None
