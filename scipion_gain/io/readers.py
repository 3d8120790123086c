"""The doors to every format: :func:`open_movie` picks the reader by file name
extension (``READERS``), :func:`read_image` reads one image (a reference),
:func:`reading` sets how movies opened deeper down are read (strict or lenient,
EER frame grouping).
"""
import os
from contextlib import contextmanager

from .base import InputError, TruncatedInput, truncation_text
from .dm4 import Dm4Reader
from .eer import EerGainReader, EerReader, eer_fraction as fraction_default
from .mrc import MrcReader
from .tiff import TiffReader

#: what open_movie does when not told: strict (refuse truncated files); see :func:`reading`
_DEFAULTS = {'strict': True}

READERS = [MrcReader, TiffReader, EerReader, EerGainReader, Dm4Reader]


def reader_class(path):
    ext = os.path.splitext(str(path))[1].lower()
    for cls in READERS:
        if ext in cls.extensions:
            return cls
    known = ', '.join(sorted(e for cls in READERS for e in cls.extensions))
    raise InputError(f"{path}: unknown movie format '{ext}' (known: {known})")


@contextmanager
def reading(strict=None, eer_fraction=None):
    """Within the block, movies opened without saying so are read ``strict`` (or
    lenient) and EER movies with ``eer_fraction`` raw frames per frame.

    For front-ends whose movies are opened deeper down (``estimate_gain``);
    None leaves a setting as it is. Process-wide (reader threads see it too):
    meant for a command's one run, not for concurrent callers with different
    wishes (they pass ``strict=`` to :func:`open_movie`).
    """
    saved = dict(_DEFAULTS)
    if strict is not None:
        _DEFAULTS['strict'] = bool(strict)
    try:
        with fraction_default(eer_fraction):
            yield
    finally:
        _DEFAULTS.clear()
        _DEFAULTS.update(saved)


def open_movie(path, strict=None, **options):
    """Open a movie for frame-by-frame reading; raises InputError on bad input.

    ``strict`` (default: True, or what :func:`reading` set): a truncated file
    raises :class:`TruncatedInput` ("truncated: N of M frames complete");
    lenient (False) reads its complete frames, and the reader's first note
    and ``truncation`` say so. ``options`` go to readers that list them in
    their ``options`` attribute (e.g. ``fraction=`` raw EER frames per frame)
    and are ignored by others.
    """
    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a movie")
    cls = reader_class(path)
    accepted = {k: v for k, v in options.items() if k in getattr(cls, 'options', ())}
    reader = cls(path, **accepted)
    if reader.n_frames < 1:
        reader.close()
        raise InputError(f"{path}: movie holds no frames")
    cut = reader.truncation
    if cut:
        text = truncation_text(cut['complete'], cut['claimed'], cut['unit'])
        if _DEFAULTS['strict'] if strict is None else strict:
            reader.close()
            raise TruncatedInput(f"{path}: {text}", cut['complete'], cut['claimed'], cut['unit'])
        cut['used'] = 'complete frames (lenient)'
        used = (f"{reader.n_frames} frame(s)" if cut['unit'] == 'frames'
                else f"{cut['complete']} {cut['unit']} ({reader.n_frames} frame(s))")
        reader.notes.insert(0, f"{text}; lenient: using the {used} that are complete")
    return reader


def read_image(path):
    """Read a single 2-D image (a gain reference), as float32.

    Returns (image, notes). A file of several images is refused: a gain
    reference is one image.
    """
    with open_movie(path) as reader:
        if reader.n_frames != 1:
            raise InputError(f"{path}: expected one image, found {reader.n_frames}")
        return reader.read_frame(0), list(reader.notes)
