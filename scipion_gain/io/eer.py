"""Falcon 4/4i EER movies and the Falcon ``.gain`` reference.

EER (Electron Event Representation) is a BigTIFF with one page per raw frame
(hundreds to thousands per movie, each with a few events). Pages are compressed
with scheme 65000, 65001 or 65002: a bitstream of skip codes, each event
followed by sub-pixel bits. tifffile walks the BigTIFF structure; the strips
are decoded by imagecodecs' EER decoder (``imagecodecs.eer_decode``) at the
physical pixel size (sub-pixel positions are ignored), and ``fraction`` raw
frames are summed into one counting frame, as RELION's ``--eer_grouping`` does.
Raw frames left over after the last complete group are dropped (and said so).

We call ``imagecodecs.eer_decode`` on the strip bytes ourselves rather than
``page.asarray()``: tifffile 2023.9.26 calls the decoder with the keyword
``rlebits`` while imagecodecs 2026 names that argument ``skipbits``; passing the
parameters by position works with both. The parameters per scheme are the ones
tifffile uses: 65000 -> 8 skip bits, 2 + 2 sub-pixel bits; 65001 -> 7, 2, 2;
65002 -> from tags 65007, 65008, 65009 (default 7, 2, 2).

The Falcon ``.gain`` file is a plain TIFF image that MULTIPLIES raw frames (the
convention of this project). RELION and Xmipp read it, like TIFF movies, with a
Y flip; tifffile and this reader do not. An EER gain saved as MRC by some tools
holds counts instead (reciprocal; RELION inverts it): give
``read_gain_reference(..., convention='counts')`` for those.
"""
import re
from contextlib import contextmanager

import numpy as np

from .base import InputError, MovieReader, short_error, truncation_text
from .tiff import TiffReader, open_tiff, page_extent

#: (skip bits, horizontal sub-pixel bits, vertical sub-pixel bits) per compression scheme
EER_SCHEMES = {65000: (8, 2, 2), 65001: (7, 2, 2), 65002: (7, 2, 2)}

#: raw EER frames summed into one output frame when none is given
DEFAULT_FRACTION = 32


def eer_decoder():
    """imagecodecs.eer_decode, or an InputError saying why it cannot be had."""
    try:
        import imagecodecs
    except ImportError:
        raise InputError("reading EER needs the imagecodecs package (pip install imagecodecs)") from None
    decode = getattr(imagecodecs, 'eer_decode', None)
    available = getattr(getattr(imagecodecs, 'EER', None), 'available', decode is not None)
    if decode is None or not available:
        raise InputError(f"imagecodecs {imagecodecs.__version__} has no EER decoder; "
                         f"install imagecodecs >= 2022.2.22")
    return decode


class EerReader(MovieReader):
    """An EER movie read as counting frames, ``fraction`` raw frames per frame."""

    extensions = ('.eer',)
    options = ('fraction',)
    #: not established for EER movies here (RELION renders EER itself)
    relion_flips_y = None
    gain_convention = 'correction'

    #: fraction used when none is given (see :func:`eer_fraction`)
    default_fraction = DEFAULT_FRACTION

    def __init__(self, path, fraction=None):
        super().__init__(path)
        fraction = self.default_fraction if fraction is None else int(fraction)
        if fraction < 1:
            raise InputError(f"{self.path}: EER fraction must be 1 or more raw frames, not {fraction}")
        self.fraction = fraction
        self._decode = eer_decoder()
        self._tif = open_tiff(self.path)
        self._set_up_or_close(self._setup, 'EER file')

    def _setup(self):
        tif = self._tif
        if not tif.is_bigtiff:
            raise InputError(f"{self.path}: not an EER file (EER is a BigTIFF; this is a classic TIFF)")
        pages = tif.pages
        pages.useframes = False
        raw = len(pages)
        if raw < 1:
            raise InputError(f"{self.path}: EER file holds no frames")
        extent = page_extent(tif)
        claimed = _claimed_raw_frames(tif)
        if extent['cut'] or (claimed or 0) > raw:
            raw = extent['complete']
            if raw < 1:
                raise InputError(f"{self.path}: EER file holds no complete raw frame "
                                 f"({truncation_text(0, claimed, 'raw EER frames')})")
            self._set_truncated(raw, claimed if (claimed or 0) > raw else None, 'raw EER frames')
        first = pages[0]
        self.compression = int(first.compression)
        if self.compression not in EER_SCHEMES and self.compression != 1:
            raise InputError(f"{self.path}: compression {self.compression} is not an EER scheme "
                             f"(65000, 65001, 65002)")
        self.scheme = self._scheme(first)
        rows, cols = int(first.imagelength), int(first.imagewidth)
        self.raw_frames = raw
        frames = raw // self.fraction
        if frames < 1:
            raise InputError(f"{self.path}: {raw} raw EER frame(s), fewer than one fraction of "
                             f"{self.fraction}")
        self.shape = (frames, rows, cols)
        self.dtype = np.dtype(np.uint16)
        left = raw - frames * self.fraction
        skip, horz, vert = self.scheme
        self.notes.append(f"EER {raw} raw frames of {cols} x {rows} (compression {self.compression}: "
                          f"{skip} skip bits, {horz}+{vert} sub-pixel bits ignored), summed "
                          f"{self.fraction} per frame into {frames} counting frames"
                          + (f"; last {left} raw frame(s) dropped" if left else ''))
        self.notes.append("EER frames in stored row order (no Y flip)")

    def _scheme(self, page):
        if page.compression == 65002:
            tags = page.tags
            return tuple(int(tags.valueof(code, default)) for code, default in
                         ((65007, 7), (65008, 2), (65009, 2)))
        return EER_SCHEMES.get(int(page.compression), (7, 2, 2))

    def read_raw_frame(self, index):
        """Raw EER frame ``index`` as a bool array (one event at most per pixel)."""
        page = self._tif.pages[index]
        rows, cols = self.frame_shape
        if int(page.imagelength) != rows or int(page.imagewidth) != cols:
            raise InputError(f"{self.path}: raw frame {index} is {page.imagewidth} x "
                             f"{page.imagelength}, not {cols} x {rows}")
        if page.compression == 1:
            return np.asarray(page.asarray()).reshape(rows, cols) != 0
        skip, horz, vert = self._scheme(page)
        per_strip = int(page.rowsperstrip) if len(page.dataoffsets) > 1 else rows
        out = np.zeros((rows, cols), dtype=bool)
        handle = self._tif.filehandle
        for strip, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
            top = strip * per_strip
            height = min(per_strip, rows - top)
            if height <= 0 or count == 0:
                continue
            handle.seek(offset)
            data = handle.read(count)
            if len(data) != count:
                raise InputError(f"{self.path}: raw frame {index} is truncated")
            if len(data) % 2:
                data += b'\0'  # the decoder reads 16-bit words
            try:
                # positional: the keyword is rlebits in old imagecodecs, skipbits in new
                decoded = self._decode(data, (height, cols), skip, horz, vert)
            except Exception as exc:
                raise InputError(f"{self.path}: raw frame {index} cannot be decoded "
                                 f"({short_error(exc)})") from None
            out[top:top + height] = np.asarray(decoded).reshape(height, cols) != 0
        return out

    def read_frame(self, index):
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range (0..{self.n_frames - 1})")
        total = np.zeros(self.frame_shape, dtype=np.uint16)
        start = index * self.fraction
        for raw in range(start, start + self.fraction):
            total += self.read_raw_frame(raw)
        return total.astype(np.float32)

    def close(self):
        tif, self._tif = getattr(self, '_tif', None), None
        if tif is not None:
            tif.close()


def _claimed_raw_frames(tif):
    """``numberOfFrames`` of the EER acquisition metadata (tag 65001), else None."""
    try:
        text = tif.pages.first.tags.valueof(65001)
        text = text.decode('utf-8', 'replace') if isinstance(text, bytes) else str(text or '')
    except Exception:  # metadata is a hint
        return None
    found = re.search(r'name="numberOfFrames"[^>]*>\s*(\d+)\s*<', text)
    return int(found.group(1)) if found else None


@contextmanager
def eer_fraction(fraction):
    """Within the block, EER movies opened without a fraction use ``fraction``.

    For callers that open movies through code that passes no reader options
    (e.g. ``estimate_gain``); None leaves the default as it is.
    """
    saved = EerReader.default_fraction
    if fraction is not None:
        if int(fraction) < 1:
            raise InputError(f"EER fraction must be 1 or more raw frames, not {fraction}")
        EerReader.default_fraction = int(fraction)
    try:
        yield
    finally:
        EerReader.default_fraction = saved


class EerGainReader(TiffReader):
    """The Falcon ``.gain`` reference: one TIFF image that multiplies raw frames."""

    extensions = ('.gain',)
    relion_flips_y = True
    gain_convention = 'correction'

    def _setup(self):
        super()._setup()
        self.notes[-1] = (f"Falcon .gain reference {self.shape[2]} x {self.shape[1]} {self.dtype} "
                          f"(multiplies raw frames); read in stored row order: RELION and Xmipp "
                          f"read .gain files with a Y flip")
