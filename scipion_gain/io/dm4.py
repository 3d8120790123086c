"""Gatan Digital Micrograph (DM4, DM3) gain references, through ncempy.

ncempy (``ncempy.io.dm.fileDM``) parses the tag tree and reads the image
data; the first data set of a Gatan file is usually a small RGB thumbnail,
which ncempy skips. Rows come in stored order, as ncempy returns them.

Conventions, as we record them (see ``../shared/notes/movie-gain-facts.md``):
Scipion's RELION plugin warns that DM4 gains must be flipped upside down for
RELION (RELION itself refuses DM files), and some tools treat K2 DM4 gain
references as reciprocal. We read the values as a correction that multiplies
raw frames and say so; ``scipion-gain orient`` tests the flips and the
inversion against the movies, which settles both for a given data set.
"""
import numpy as np

from .base import InputError, MovieReader

DM_NOTE = ("DM gain read in stored row order as a correction that multiplies raw frames; "
           "Scipion's RELION plugin flips DM4 gains upside down and some tools treat K2 DM4 "
           "gains as reciprocal: check with `scipion-gain orient`")


class Dm4Reader(MovieReader):
    extensions = ('.dm4', '.dm3')
    relion_flips_y = True
    gain_convention = 'correction'

    def __init__(self, path):
        super().__init__(path)
        try:
            from ncempy.io import dm
        except ImportError:
            raise InputError(f"{self.path}: reading DM4 needs the ncempy package (pip install ncempy)") from None
        try:
            with open(self.path, 'rb') as handle:
                head = handle.read(4)
            if len(head) < 4 or int.from_bytes(head, 'big') not in (3, 4):
                raise InputError(f"{self.path}: not a DM3/DM4 file (bad version field)")
            with dm.fileDM(self.path, on_memory=False) as dmfile:  # no mmap: nothing pinned at close
                if dmfile.numObjects < 1:
                    raise InputError(f"{self.path}: DM file holds no image")
                data = np.asarray(dmfile.getDataset(0)['data'])
        except InputError:
            raise
        except Exception as exc:  # ncempy raises IOError, AssertionError, IndexError, ...
            text = ' '.join(str(exc).split()) or type(exc).__name__
            raise InputError(f"{self.path}: not a readable DM file ({text[:160]})") from None
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3 or min(data.shape) < 1:
            raise InputError(f"{self.path}: DM data set of shape {data.shape} is not an image or stack")
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise InputError(f"{self.path}: unsupported DM data type {data.dtype}")
        self._data = data
        self.shape = tuple(int(n) for n in data.shape)
        self.dtype = data.dtype
        self.notes.append(f"DM {self.shape[0]} image(s) of {self.shape[2]} x {self.shape[1]} "
                          f"{data.dtype}; {DM_NOTE}")

    def read_frame(self, index):
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range (0..{self.n_frames - 1})")
        return np.array(self._data[index], dtype=np.float32)

    def close(self):
        self._data = None
