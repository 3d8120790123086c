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


class TruncatedInput(InputError):
    """A movie whose file ends before all the frames it announces are complete.

    Raised in strict mode (the default); ``complete`` and ``claimed`` are frame
    counts (``claimed`` None when the file does not say how many it should
    hold), ``unit`` what is counted ('frames', 'raw EER frames').
    """

    def __init__(self, message, complete=0, claimed=None, unit='frames'):
        super().__init__(message)
        self.complete, self.claimed, self.unit = complete, claimed, unit


def truncation_text(complete, claimed, unit='frames'):
    """'truncated: 4 of 10 frames complete' (or '... of more than 4 ...' when unknown)."""
    if claimed is None:
        return f"truncated: {complete} of more than {complete} {unit} complete"
    return f"truncated: {complete} of {claimed} {unit} complete"


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
        #: None, or {'complete': N, 'claimed': M or None, 'unit': 'frames'} when the file
        #: ends before the frames it announces are complete; ``shape`` then counts the
        #: complete frames only (see :func:`scipion_gain.io.open_movie` for strict/lenient)
        self.truncation = None

    def _set_truncated(self, complete, claimed, unit='frames'):
        """Record that the file is cut short: ``complete`` of ``claimed`` frames are whole."""
        self.truncation = {'complete': int(complete),
                           'claimed': None if claimed is None else int(claimed), 'unit': unit}

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
