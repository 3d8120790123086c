"""Gain references as this project uses them: a correction that MULTIPLIES raw frames.

``read_gain_reference`` reads any supported format, turns a reciprocal
reference (counts: the detector's response) into a correction, replaces
pixels that cannot be used (NaN, inf, zero or negative) with 1 and scales the
good pixels to mean 1; every such step is listed in the notes it returns.

``read_dark_reference`` is its twin for dark references (the offset that
integrating cameras add to every raw frame): the same reading, an offset
image's policy (values kept as they are, NaN/inf set to the median dark level
and masked).
"""
import numpy as np

from .base import InputError
from .readers import read_image, reader_class

CONVENTIONS = ('auto', 'correction', 'counts')


def format_conventions(reader_or_class):
    """What a reader's format means for RELION/Xmipp and as a gain reference (JSON-ready)."""
    return {
        'relion_xmipp_flip_y': getattr(reader_or_class, 'relion_flips_y', False),
        'gain_convention': getattr(reader_or_class, 'gain_convention', 'correction'),
    }


class GainReference(tuple):
    """What :func:`read_gain_reference` returns: the pair (correction, notes).

    It unpacks as that pair (``correction, notes = read_gain_reference(p)``)
    and also carries ``unusable`` (bool map of the pixels that were NaN, inf,
    zero or negative: set to 1 in ``correction``, where the movies' own defect
    test then judges them: a dead pixel stays dead in the residual),
    ``counts`` (how many of each kind), ``convention`` and ``path``.
    """

    def __new__(cls, correction, notes, unusable, counts, convention, path=None, scale=1.0):
        self = super().__new__(cls, (correction, notes))
        self.correction, self.notes = correction, notes
        self.unusable, self.counts = unusable, counts
        self.convention, self.path, self.scale = convention, path, scale
        return self

    def to_json(self):
        """JSON-ready account of what reading did (the ``input`` part of a stats JSON)."""
        return {'path': None if self.path is None else str(self.path),
                'convention': self.convention,
                'unusable_pixels': int(self.unusable.sum()),
                'unusable': {k: int(v) for k, v in self.counts.items() if v},
                'policy': 'unusable pixels (NaN, inf, zero, negative) set to 1: the movies\' '
                          'defect test judges them',
                'scaled_from_mean': float(self.scale),
                'notes': list(self.notes)}


def read_gain_reference(path, convention='auto', flip_y=False, stored=None):
    """Read a gain reference: the one door for the command line and the protocol.

    Returns a :class:`GainReference`, which unpacks as (correction, notes).
    ``correction`` is float32, multiplies raw frames, has mean 1 over its good
    pixels and holds no NaN/inf; pixels that were NaN, inf, zero or negative
    are set to 1, counted in the notes and marked in ``.unusable``.
    ``convention``: 'correction' (values multiply raw frames: Scipion, RELION,
    MotionCor2, Falcon .gain), 'counts' (values are the detector's response,
    reciprocal: taken 1/x), or 'auto' (the format's convention, see the
    readers' ``gain_convention``). ``flip_y`` flips the image upside down
    after reading (e.g. to match what RELION does with TIFF/.gain files).
    Raises :class:`InputError` (one line naming ``path``) on a file that is
    not one readable image or has no usable pixel. ``stored``: the file's
    ``read_image`` (image, notes) when the caller has read it already.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown gain convention {convention!r} (use {', '.join(CONVENTIONS)})")
    image, notes = stored if stored is not None else read_image(path)
    notes = list(notes)
    if convention == 'auto':
        convention = getattr(reader_class(path), 'gain_convention', 'correction')
        notes.append(f"gain convention of the format: {convention}")
    correction, more, good, counts, scale = _correction(image, convention == 'counts', str(path))
    notes += more
    if flip_y:
        correction = np.ascontiguousarray(correction[::-1])
        good = np.ascontiguousarray(good[::-1])
        notes.append("flipped upside down (Y) after reading, as asked")
    return GainReference(correction, notes, ~good, counts, convention, path, scale)


def as_correction(image, reciprocal=False, name='gain reference'):
    """(correction, notes): ``image`` as a mean-1 correction without NaN/inf.

    With ``reciprocal`` the image holds counts and the correction is 1 / image.
    """
    correction, notes, _, _, _ = _correction(image, reciprocal, name)
    return correction, notes


def _correction(image, reciprocal, name):
    """(correction, notes, good mask, counts of unusable kinds, mean before scaling).

    The one policy for unusable pixels (NaN, inf, zero, negative): set to 1,
    excluded from the mean, counted.
    """
    image = np.asarray(image, dtype=np.float64)
    notes = []
    good = np.isfinite(image) & (image > 0)
    counts = {'NaN': int(np.isnan(image).sum()), 'inf': int(np.isinf(image).sum()),
              'zero': int((image == 0).sum()), 'negative': int((image < 0).sum())}
    if not good.any():
        raise InputError(f"{name}: gain reference holds no finite positive value")
    bad = int(image.size - good.sum())
    if bad:
        listed = ', '.join(f"{n} {kind}" for kind, n in counts.items() if n)
        notes.append(f"{bad} pixel(s) unusable ({listed}) set to 1, so that the movies' "
                     f"own defect test judges them (of {image.size})")
    values = image[good]
    if reciprocal:
        values = 1.0 / values
        notes.append("reference holds counts (reciprocal): took 1/x to get a correction")
    mean = values.mean()
    if not np.isfinite(mean) or mean <= 0:
        raise InputError(f"{name}: gain reference has no usable mean")
    if abs(mean - 1) > 1e-3:
        notes.append(f"scaled to mean 1 (was {mean:.6g})")
    correction = np.ones(image.shape, dtype=np.float64)
    correction[good] = values / mean
    return correction.astype(np.float32), notes, good, counts, float(mean)


class DarkReference(tuple):
    """What :func:`read_dark_reference` returns: the pair (dark, notes).

    It unpacks as that pair (``dark, notes = read_dark_reference(p)``) and also
    carries ``unusable`` (bool map of the pixels that were NaN or inf: set to
    the median of the others, to be treated as unusable), ``counts`` and
    ``path``.
    """

    def __new__(cls, dark, notes, unusable, counts, path=None, flip=None):
        self = super().__new__(cls, (dark, notes))
        self.dark, self.notes = dark, notes
        self.unusable, self.counts, self.path, self.flip = unusable, counts, path, flip
        return self

    @property
    def image(self):
        return self.dark

    def to_json(self):
        """JSON-ready account of what reading did (goes under ``input.dark``)."""
        return {'path': None if self.path is None else str(self.path),
                'mean': float(self.dark.mean(dtype=np.float64)),
                'std': float(self.dark.std(dtype=np.float64)),
                'unusable_pixels': int(self.unusable.sum()),
                'unusable': {k: int(v) for k, v in self.counts.items() if v},
                'policy': 'subtracted from every frame first (corrected = (raw - dark) x gain); '
                          'NaN/inf pixels set to the median dark level and masked',
                'flip': self.flip,
                'notes': list(self.notes)}


def read_dark_reference(path, flip_y=False, flip_x=False):
    """Read a dark reference: the offset that integrating cameras add to every raw frame.

    The same door as :func:`read_gain_reference` (any supported format, DE's
    camera-server headers handled by the MRC reader, one image only), with the
    policy of an offset image: values are ADU of the raw frames and are kept as
    they are (zero and negative values are legitimate offsets); NaN and inf
    cannot be subtracted, so such pixels get the median of the finite values, are
    counted in the notes and marked in ``.unusable`` (the analysis masks them).
    ``flip_y`` / ``flip_x`` flip the image after reading (as the gain is
    flipped). Returns a :class:`DarkReference`, which unpacks as (dark, notes);
    ``dark`` is float32. Raises :class:`InputError` (one line naming ``path``) on
    a file that is not one readable image or holds no finite value.
    """
    image, notes = read_image(path)
    notes = list(notes)
    image = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(image)
    counts = {'NaN': int(np.isnan(image).sum()), 'inf': int(np.isinf(image).sum())}
    if not finite.any():
        raise InputError(f"{path}: dark reference holds no finite value")
    if not finite.all():
        level = float(np.median(image[finite]))
        image = np.where(finite, image, np.float32(level))
        listed = ', '.join(f"{n} {kind}" for kind, n in counts.items() if n)
        notes.append(f"{int(image.size - finite.sum())} dark pixel(s) unusable ({listed}) set to "
                     f"the median dark level {level:.6g} and masked (of {image.size})")
    flip = None
    if flip_y:
        image, finite = image[::-1], finite[::-1]
        notes.append("dark flipped upside down (Y) after reading, as asked")
        flip = 'upside down'
    if flip_x:
        image, finite = image[:, ::-1], finite[:, ::-1]
        notes.append("dark flipped left-right after reading, as asked")
        flip = 'left-right' if flip is None else 'both'
    return DarkReference(np.ascontiguousarray(image, dtype=np.float32), notes,
                         np.ascontiguousarray(~finite), counts, path, flip)
