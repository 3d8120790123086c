"""MRC / MRCS movies and gain references, through mrcfile.

Direct Electron's camera server writes reference MRCs whose header says
nz=32766 while the file holds one image; mrcfile then returns no data, even in
permissive mode. We read the header with mrcfile and, when the header promises
more data than the file holds, take the number of images from the file size
(the header's own nx, ny and mode are trusted) and say so in ``notes``.
"""
import os
import warnings

import mrcfile
import mrcfile.utils
import numpy as np

from .base import InputError, MovieReader

HEADER_BYTES = 1024


class MrcReader(MovieReader):
    extensions = ('.mrc', '.mrcs', '.st', '.map')

    def __init__(self, path):
        super().__init__(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # permissive mode warns on odd headers
                with mrcfile.open(self.path, header_only=True, permissive=True) as mrc:
                    header = mrc.header.copy()
        except (OSError, ValueError) as exc:
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
        offset = HEADER_BYTES + int(header.nsymbt)
        frame_bytes = nx * ny * dtype.itemsize
        available = (os.path.getsize(self.path) - offset) // frame_bytes
        if available < 1:
            raise InputError(f"{self.path}: MRC file holds no complete {nx} x {ny} image")
        if nz > available:
            self.notes.append(f"header claims nz={nz} but the file holds {available} image(s); "
                              f"read {available} (camera-server header)")
            nz = available
        if nz < 1:
            raise InputError(f"{self.path}: MRC file holds no frames")
        self.shape = (nz, ny, nx)
        self.dtype = dtype
        self._data = np.memmap(self.path, dtype=dtype, mode='r', offset=offset,
                               shape=self.shape)

    def read_frame(self, index):
        return np.array(self._data[index], dtype=np.float32)

    def close(self):
        self._data = None


def write_mrc(path, image, label=None):
    """Write a 2-D float32 image to ``path`` atomically (temp file + rename).

    Nothing half-written is ever left at ``path``: the temp file lives in the
    same folder and is removed if anything fails.
    """
    path = str(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(image, dtype=np.float32))
            mrc.voxel_size = 1.0
            if label:
                mrc.header.label[1] = label[:80].encode('ascii', 'replace')
                mrc.header.nlabl = 2
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
