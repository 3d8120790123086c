"""The one reader interface that every movie or gain format implements.

A reader opens a file, checks it, and hands out frames one at a time so that
memory never grows with the number of frames. Errors are raised as
:class:`InputError` with one line that names the file and what is wrong.
"""
import numpy as np


class InputError(Exception):
    """Bad input: missing, unreadable, corrupt, empty or of the wrong size.

    The message is one line, fit to show a user as it is.
    """


def short_error(exc):
    """An exception as one short line, for an InputError message."""
    text = ' '.join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + '...'


class MovieReader:
    """Base class of the format readers.

    Subclasses set ``shape`` (frames, rows, columns) and ``dtype`` in
    ``__init__`` and implement :meth:`read_frame`. ``notes`` lists what the
    reader did to the data (a flip, an inversion, a header repair) so that the
    command line and the protocol can report it.
    """

    #: file name extensions (lower case, with the dot) this reader takes
    extensions = ()

    def __init__(self, path):
        self.path = str(path)
        self.shape = (0, 0, 0)
        self.dtype = np.dtype(np.float32)
        self.notes = []

    @property
    def n_frames(self):
        return self.shape[0]

    @property
    def frame_shape(self):
        return self.shape[1:]

    def read_frame(self, index):
        """Return frame ``index`` as a 2-D float32 array (a copy)."""
        raise NotImplementedError

    def iter_frames(self, step=1, start=0):
        """Yield (index, frame) for frames start, start + step, ..."""
        for index in range(start, self.n_frames, max(1, int(step))):
            yield index, self.read_frame(index)

    def close(self):
        pass

    def _set_up_or_close(self, set_up, what):
        """Run ``set_up()``; on any failure close the reader and raise one
        InputError line saying the file is not a readable ``what``."""
        try:
            set_up()
        except InputError:
            self.close()
            raise
        except Exception as exc:  # a corrupt IFD chain, an odd layout, a decoder error
            self.close()
            raise InputError(f"{self.path}: not a readable {what} ({short_error(exc)})") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
