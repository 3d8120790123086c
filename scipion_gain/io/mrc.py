"""MRC / MRCS movies and gain references, through mrcfile.

The header is read with mrcfile; frames are then read one at a time with
explicit reads (``os.preadv`` into a fresh array) rather than through a memory
map: the pages of a mapped file stay charged to the process (``ps``, ``time``,
a batch system's accounting) until it is unmapped, so a 4096 x 4096 x 40
float32 movie read through ``np.memmap`` grew the resident size by 2.7 GB. With
explicit reads the resident size stays flat in the number of frames.

Direct Electron's camera server writes reference MRCs whose header says
nz=32766 while the file holds one image; mrcfile then returns no data, even in
permissive mode. That value (32766 and above) with a file of whole images is
taken as the camera server's header: the number of images comes from the file
size (the header's own nx, ny and mode are trusted) and a note says so. Any
other file shorter than its header's nz is *truncated*: ``truncation`` says how
many frames are complete (see :func:`scipion_gain.io.open_movie`).
"""
import os
import threading
import warnings

import mrcfile
import mrcfile.utils
import numpy as np

from .atomic import atomic_path
from .base import InputError, MovieReader, truncation_text

HEADER_BYTES = 1024
#: nz written by Direct Electron's camera server into single-image references
CAMERA_SERVER_NZ = 32766


class MrcReader(MovieReader):
    extensions = ('.mrc', '.mrcs', '.st', '.map')

    def __init__(self, path):
        super().__init__(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # permissive mode warns on odd headers
                with mrcfile.open(self.path, header_only=True, permissive=True) as mrc:
                    header = None if mrc.header is None else mrc.header.copy()
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"{self.path}: not a readable MRC file ({exc})") from None
        if header is None:
            raise InputError(f"{self.path}: not a readable MRC file (no header)")
        nx, ny, nz = (int(header.nx), int(header.ny), int(header.nz))
        try:
            dtype = mrcfile.utils.data_dtype_from_header(header)
        except ValueError:
            raise InputError(f"{self.path}: unsupported MRC mode {int(header.mode)}") from None
        if nx <= 0 or ny <= 0:
            raise InputError(f"{self.path}: MRC header gives an empty image ({nx} x {ny})")
        if nz < 1:
            raise InputError(f"{self.path}: MRC file holds no frames (header nz={nz})")
        offset = HEADER_BYTES + max(0, int(header.nsymbt))
        frame_bytes = nx * ny * dtype.itemsize
        data_bytes = os.path.getsize(self.path) - offset
        available = max(0, data_bytes) // frame_bytes
        camera_server = nz >= CAMERA_SERVER_NZ and data_bytes > 0 and data_bytes % frame_bytes == 0
        if available < 1:
            cut = '' if camera_server else f" ({truncation_text(0, nz)})"
            raise InputError(f"{self.path}: MRC file holds no complete {nx} x {ny} image{cut}")
        if nz > available:
            if camera_server:
                self.notes.append(f"header claims nz={nz} but the file holds {available} image(s); "
                                  f"read {available} (camera-server header)")
            else:
                self._set_truncated(available, nz)
            nz = available
        self.shape = (nz, ny, nx)
        self.dtype = dtype
        self._offset = offset
        self._frame_bytes = frame_bytes
        self._lock = threading.Lock()
        self._handle = open(self.path, 'rb', buffering=0)

    def read_frame(self, index):
        """Frame ``index`` as float32, read on its own: nothing stays mapped afterwards."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range (0..{self.n_frames - 1})")
        frame = np.empty(self.frame_shape, dtype=self.dtype)
        position = self._offset + index * self._frame_bytes
        view = memoryview(frame).cast('B')
        got = 0
        with self._lock:  # one reader may be shared by a read-ahead thread
            handle = self._handle
            if handle is None:
                raise ValueError(f"{self.path}: reader is closed")
            while got < self._frame_bytes:
                if hasattr(os, 'preadv'):
                    count = os.preadv(handle.fileno(), [view[got:]], position + got)
                else:  # pragma: no cover (Windows, macOS < 11)
                    handle.seek(position + got)
                    count = handle.readinto(view[got:])
                if not count:
                    raise InputError(f"{self.path}: frame {index} ends early (the file shrank "
                                     f"while it was read?)")
                got += count
        if frame.dtype == np.float32:  # native float32: the fresh array is already the copy
            return frame
        return frame.astype(np.float32)

    def close(self):
        handle, self._handle = getattr(self, '_handle', None), None
        if handle is not None:
            handle.close()


class _MrcWriter(mrcfile.mrcfile.MrcFile):
    """mrcfile's writer (what ``mrcfile.new`` opens) whose header statistics come from
    :func:`header_stats`: the same values without the frame-sized temporary of NumPy's std
    (0.2-0.3 s of CPU for each 4096 x 4096 map the command writes)."""

    def update_header_stats(self):
        data = self.data
        if data.dtype != np.float32 or not data.flags.c_contiguous or data.size == 0:
            return super().update_header_stats()
        stats = header_stats(data)
        if not all(np.isfinite(stats)):     # mrcfile's own warnings
            return super().update_header_stats()
        self.header.dmin, self.header.dmax, self.header.dmean, self.header.rms = stats


#: elements of :func:`header_stats`' blocks (a multiple of NumPy's buffer of 8192 elements)
STATS_BLOCK = 1 << 18


def header_stats(data):
    """(min, max, mean, rms) of a C-contiguous float32 array as mrcfile writes them in the
    header (``min()``, ``max()``, ``mean(dtype=float32)``, ``std(dtype=float32)``), the same
    float32 values, with no temporary larger than a block.

    NumPy sums a contiguous float32 array through its ufunc buffer: each chunk of
    ``np.getbufsize()`` elements summed pairwise, the chunks' sums added in order in float32.
    The sums here are made alike, a block of chunks at a time: the deviations from the mean
    squared (std's frame-sized temporary) a block at a time, in the cache."""
    flat = data.reshape(-1)
    count = flat.size
    chunk = np.getbufsize()
    block = max(chunk, STATS_BLOCK // chunk * chunk)

    def ordered_sum(part_sums):
        total = np.float32(0)
        for value in part_sums:
            total = np.float32(total + value)
        return total

    def chunk_sums(part):
        whole = part.size // chunk * chunk
        sums = list(np.add.reduce(part[:whole].reshape(-1, chunk), axis=1, dtype=np.float32))
        if whole < part.size:
            sums.append(np.add.reduce(part[whole:], dtype=np.float32))
        return sums

    starts = range(0, count, block)
    total = ordered_sum(s for start in starts for s in chunk_sums(flat[start:start + block]))
    mean = total.dtype.type(total / count)                  # NumPy's _mean
    centre = np.array(total, np.float32).reshape((1,) * data.ndim)
    centre = np.true_divide(centre, count, out=centre, casting='unsafe')  # NumPy's _var
    squares = []
    for start in starts:
        deviation = flat[start:start + block] - centre.reshape(1)
        np.multiply(deviation, deviation, out=deviation)
        squares += chunk_sums(deviation)
    variance = ordered_sum(squares)
    variance = variance.dtype.type(variance / count)
    rms = variance.dtype.type(np.sqrt(variance))
    return np.float32(flat.min()), np.float32(flat.max()), mean, rms


def write_mrc(path, image, label=None):
    """Write a 2-D float32 image to ``path`` atomically (see :mod:`.atomic`).

    Nothing half-written is ever left at ``path``: the data go to a temporary
    file in the same folder, which replaces ``path`` only once complete (at
    the end of an open :func:`~.atomic.transaction`).
    """
    with atomic_path(path) as tmp:
        with _MrcWriter(tmp, mode='w+', overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(image, dtype=np.float32))
            mrc.voxel_size = 1.0
            if label:
                mrc.header.label[1] = label[:80].encode('ascii', 'replace')
                mrc.header.nlabl = 2
