"""TIFF movies (K2/K3 counting: uint8/uint16, LZW or deflate; float32), through tifffile.

tifffile decodes the strips (LZW, deflate and the rest through imagecodecs)
and hands out one page (one frame) at a time, so a movie is never held in
memory whole. Frames come in the file's stored row order: row 0 is the first
row stored. RELION and Xmipp read TIFF files with a Y flip (their row 0 is
the last stored row); tifffile and this reader do not. A gain estimated here
from TIFF movies is therefore in stored row order; to use it with RELION or
Xmipp on the same TIFF movies, flip it upside down (the Xmipp gain protocol
flips its output for TIFF movies for this reason). See
``../shared/notes/movie-gain-facts.md``.

A TIFF file does not say how many pages it holds: a file cut short (a copy
that stopped, a full disk) still parses, with fewer pages. :func:`page_extent`
walks the pages' directories and data and finds where the file ends early:
pages whose strips end past the end of the file, or a last directory that
points to a next one beyond it. The number of frames the file should hold
comes from tifffile's shape metadata or ImageJ's ``images=`` when present.
"""
import struct

import numpy as np
import tifffile

from .base import InputError, MovieReader, short_error, truncation_text

#: sample types a camera writes; anything else (RGB, complex, 1-bit) is refused
SUPPORTED_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.int8,
                                                np.int16, np.int32, np.float32, np.float64))

Y_FLIP_NOTE = ("read in stored row order (no Y flip); RELION and Xmipp read TIFF with a Y flip, "
               "so flip a gain made from these frames upside down before giving it to them")


def open_tiff(path):
    """tifffile.TiffFile for ``path``; any failure becomes one InputError line."""
    try:
        return tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError) as exc:
        raise InputError(f"{path}: not a readable TIFF file ({short_error(exc)})") from None


class TiffReader(MovieReader):
    """A multi-page TIFF movie: one page per frame (a single page is one frame)."""

    extensions = ('.tif', '.tiff')
    #: RELION and Xmipp read this format with a Y flip relative to this reader
    relion_flips_y = True
    #: what a single image in this format means when used as a gain reference
    gain_convention = 'correction'

    def __init__(self, path):
        super().__init__(path)
        self._tif = open_tiff(self.path)
        self._set_up_or_close(self._setup, 'TIFF movie')

    def _setup(self):
        tif = self._tif
        if not tif.series:
            raise InputError(f"{self.path}: TIFF file holds no image")
        series = tif.series[0]
        page = series.keyframe
        if getattr(page, 'samplesperpixel', 1) != 1:
            raise InputError(f"{self.path}: TIFF holds {page.samplesperpixel} samples per pixel "
                             f"(colour?); a movie frame has one")
        dtype = np.dtype(series.dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise InputError(f"{self.path}: unsupported TIFF sample type {dtype}")
        shape = tuple(int(n) for n in series.shape)
        if len(shape) == 2:
            shape = (1,) + shape
        elif len(shape) > 3:
            extra = int(np.prod(shape[:-2]))
            shape = (extra,) + shape[-2:]
        if min(shape) < 1:
            raise InputError(f"{self.path}: TIFF holds an empty image {shape}")
        self._by_page = False
        extent = page_extent(tif)
        claimed = _claimed_frames(tif)
        if extent['cut'] or (claimed or 0) > max(shape[0], extent['pages']):
            complete = min(extent['complete'], claimed or extent['complete'])
            if complete < 1:
                raise InputError(f"{self.path}: TIFF holds no complete frame "
                                 f"({truncation_text(0, claimed)})")
            self._set_truncated(complete, claimed if (claimed or 0) > complete else None)
            shape = (complete,) + (int(page.imagelength), int(page.imagewidth))
            self._by_page = True  # the series is broken: read the complete pages one by one
        self.shape = shape
        self.dtype = dtype
        self.compression = _compression_name(page.compression)
        self.notes.append(f"TIFF {shape[0]} frame(s) of {shape[2]} x {shape[1]} {dtype}, "
                          f"{self.compression}; {Y_FLIP_NOTE}")

    def read_frame(self, index):
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range (0..{self.n_frames - 1})")
        try:
            if self._by_page:
                frame = self._tif.pages[index].asarray(maxworkers=1)
            else:
                frame = self._tif.asarray(key=index, series=0, maxworkers=1)
        except Exception as exc:  # codec errors come in many types
            raise InputError(f"{self.path}: frame {index} cannot be decoded ({short_error(exc)})") from None
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            frame = frame.reshape(self.frame_shape)
        return frame.astype(np.float32, copy=True)

    def close(self):
        tif, self._tif = getattr(self, '_tif', None), None
        if tif is not None:
            tif.close()


def _compression_name(code):
    try:
        return tifffile.COMPRESSION(code).name.lower()
    except ValueError:
        return f"compression {int(code)}"


def page_extent(tif):
    """How far the pages of a TIFF file are whole: {'pages', 'complete', 'cut'}.

    ``pages``: directories tifffile found; ``complete``: leading pages whose
    directory and strips lie inside the file; ``cut``: the file ends early (a
    page's data or the next directory lies past its end). Pages are read as
    tifffile pages (not frames) so that each one's strips are checked.
    """
    handle = tif.filehandle
    size = handle.size
    pages = tif.pages
    pages.useframes = False
    count = len(pages)
    complete, cut = 0, False
    for index in range(count):
        try:
            page = pages[index]
            ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts)]
        except Exception:  # a directory cut in the middle of its tag values
            cut = True
            break
        if max(ends, default=0) > size:
            cut = True
            break
        complete += 1
    if not cut and count:
        cut = _next_directory_past_end(tif, pages[count - 1].offset, size)
    return {'pages': count, 'complete': complete, 'cut': cut}


def _next_directory_past_end(tif, offset, size):
    """True when the directory at ``offset`` ends, or points to a next one, past the file's end."""
    fmt = tif.tiff
    handle = tif.filehandle
    try:
        handle.seek(offset)
        raw = handle.read(fmt.tagnosize)
        if len(raw) < fmt.tagnosize:
            return True
        tags = int(struct.unpack(fmt.tagnoformat, raw)[0])
        handle.seek(offset + fmt.tagnosize + tags * fmt.tagsize)
        raw = handle.read(fmt.offsetsize)
        if len(raw) < fmt.offsetsize:
            return True
        following = int(struct.unpack(fmt.offsetformat, raw)[0])
    except (OSError, struct.error):
        return True
    return following >= size


def _claimed_frames(tif):
    """Frames the file says it holds (tifffile's shape metadata, ImageJ), else None."""
    try:
        for meta in tif.shaped_metadata or ():
            shape = meta.get('shape') if isinstance(meta, dict) else None
            if shape and len(shape) >= 3:
                return int(np.prod(shape[:-2]))
        imagej = tif.imagej_metadata
        if imagej and int(imagej.get('images', 0)) > 0:
            return int(imagej['images'])
    except Exception:  # metadata is a hint; a damaged one is not worth an error
        return None
    return None
