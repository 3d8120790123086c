"""Readers for movies and gain references, one small module per format.

``open_movie(path)`` picks the reader by file name extension; adding a format
means adding a module with a :class:`MovieReader` subclass and listing it in
``READERS`` (:mod:`.readers`). ``read_gain_reference`` is the one door for gain references (the
command line and the protocol both use it: one policy for unusable pixels),
``read_dark_reference`` the one for dark references (offsets of integrating
cameras: the same reading, an offset image's policy for NaN and inf).

Truncated files (fewer complete frames than the file announces) are refused in
strict mode, the default, with one line "truncated: N of M frames complete";
in lenient mode the complete frames are used and a note says so. Callers that
open movies through code that passes no options (the estimator) set the mode
with :func:`reading`.
"""
from .base import InputError, MovieReader, TruncatedInput
from .dm4 import Dm4Reader
from .eer import EerGainReader, EerReader, eer_fraction
from .gain import (DarkReference, GainReference, as_correction, format_conventions,
                   read_dark_reference, read_gain_reference)
from .mrc import MrcReader, write_mrc
from .readers import READERS, open_movie, read_image, reader_class, reading
from .tiff import TiffReader

__all__ = ['InputError', 'TruncatedInput', 'MovieReader', 'open_movie', 'reading', 'read_image',
           'write_mrc', 'READERS', 'reader_class', 'read_gain_reference', 'GainReference',
           'read_dark_reference', 'DarkReference',
           'as_correction', 'format_conventions', 'eer_fraction', 'TiffReader', 'EerReader',
           'EerGainReader', 'Dm4Reader']
