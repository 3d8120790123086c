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
"""
import numpy as np
import tifffile

from .base import InputError, MovieReader, short_error

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
        self.shape = shape
        self.dtype = dtype
        self.compression = _compression_name(page.compression)
        self.notes.append(f"TIFF {shape[0]} frame(s) of {shape[2]} x {shape[1]} {dtype}, "
                          f"{self.compression}; {Y_FLIP_NOTE}")

    def read_frame(self, index):
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range (0..{self.n_frames - 1})")
        try:
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
