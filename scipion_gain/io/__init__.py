"""Readers for movies and gain references, one small module per format.

``open_movie(path)`` picks the reader by file name extension; adding a format
means adding a module with a :class:`MovieReader` subclass and listing it in
``READERS``.
"""
import os

from .base import InputError, MovieReader
from .mrc import MrcReader, write_mrc
# issue 6: TIFF, EER (+ Falcon .gain) and DM4 readers, gain references
from .dm4 import Dm4Reader
from .eer import EerGainReader, EerReader
from .gain import as_correction, format_conventions, read_gain_reference
from .tiff import TiffReader

READERS = [MrcReader, TiffReader, EerReader, EerGainReader, Dm4Reader]


def reader_class(path):
    ext = os.path.splitext(str(path))[1].lower()
    for cls in READERS:
        if ext in cls.extensions:
            return cls
    known = ', '.join(sorted(e for cls in READERS for e in cls.extensions))
    raise InputError(f"{path}: unknown movie format '{ext}' (known: {known})")


def open_movie(path, **options):
    """Open a movie for frame-by-frame reading; raises InputError on bad input.

    ``options`` go to readers that list them in their ``options`` attribute
    (e.g. ``fraction=`` raw EER frames per frame) and are ignored by others.
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


__all__ = ['InputError', 'MovieReader', 'open_movie', 'read_image', 'write_mrc',
           'READERS', 'reader_class', 'read_gain_reference', 'as_correction',
           'format_conventions', 'TiffReader', 'EerReader', 'EerGainReader', 'Dm4Reader']
