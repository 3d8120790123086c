"""Orientation of an experimental gain reference with respect to the movies.

A gain reference is often stored rotated, mirrored or inverted (1/x) with
respect to the movies: MotionCor2 (``-RotGain``, ``-FlipGain``) and RELION
(``--gain_rot``, ``--gain_flip``) take options for exactly this. Given the gain
estimated from the movies (a correction, mean 1) we try the 8 rotations and
flips of the reference, each as it is and inverted, and keep the one whose
fine structure agrees best with the estimate.

Agreement is the normalised correlation of the *detail* of both maps: the log
of the map with the smooth low-frequency field removed (a box filter, applied
twice, of about 1/32 of the frame subtracted; float32), clipped at its 0.5 and 99.5
percentiles so that a few defects do not decide. In the log domain an inverted
reference has exactly the negated detail, so one correlation per transform
gives both signs (Xmipp's "negative peak means inverted" idea; the transform
set is the same as Xmipp's 4 rotations x 2 mirrors).

How sure: ``confidence = 1 - second / best`` says how far the best candidate
stands above the runner-up, but a gain made mostly of column factors is
nearly unchanged by an upside-down flip, so the runner-up of a right answer
can be close in ratio while far apart in significance. We therefore also
measure the chance level: the correlations of the estimate with the best
candidate shifted circularly by 16 large, irregular offsets (same structure,
no alignment), whose RMS ``null`` is the spread that chance alone gives.
``significance = (best - second) / null``. A match is confident when the best
correlation reaches ``min_score`` and its lead over the runner-up reaches
``min_significance`` chance spreads. A reference unrelated to the movies has
no candidate above chance: "no confident match".

Transforms are given as MotionCor2 and RELION give them (RELION's
``ImageOp::rotate90`` is documented as MotionCor2's ``-RotGain 1``): with
arrays indexed [row, column] in file order, ``-RotGain r`` is
``numpy.rot90(a, -r)`` (counter-clockwise with row 0 at the bottom, as MRC
viewers show it; clockwise in relion_display), then ``-FlipGain 1`` reverses
the rows (upside down) and ``-FlipGain 2`` the columns (left-right). RELION's
``--gain_rot`` / ``--gain_flip`` take the same numbers. Non-square frames: only
the transforms that give the reference the movies' shape are candidates.

No pyworkflow/pwem import; arrays may be NumPy or CuPy (the module of the
estimate is used; results are plain Python numbers).
"""
from dataclasses import dataclass, field

import numpy as np

from .filters import array_module, box_blur

#: default acceptance: best correlation at least this ...
MIN_SCORE = 0.05
#: ... and a lead over the runner-up of at least this many chance spreads
MIN_SIGNIFICANCE = 5.0
#: circular shifts that measure the chance level
NULL_SHIFTS = 16


@dataclass(frozen=True)
class Transform:
    """A MotionCor2 gain transform: rotate ``rotation`` x 90 degrees, then flip.

    ``flip``: 0 none, 1 upside down (rows reversed), 2 left-right (columns reversed).
    """
    rotation: int = 0
    flip: int = 0

    def apply(self, image):
        """The transformed image (NumPy or CuPy, same module as ``image``)."""
        xp = array_module(image)
        out = xp.rot90(image, -self.rotation) if self.rotation % 4 else image
        if self.flip == 1:
            out = out[::-1, :]
        elif self.flip == 2:
            out = out[:, ::-1]
        return xp.ascontiguousarray(out)

    def output_shape(self, shape):
        rows, cols = shape[-2:]
        return (cols, rows) if self.rotation % 2 else (rows, cols)

    @property
    def is_identity(self):
        return self.rotation == 0 and self.flip == 0

    @property
    def motioncor2(self):
        return f"-RotGain {self.rotation} -FlipGain {self.flip}"

    @property
    def relion(self):
        return f"--gain_rot {self.rotation} --gain_flip {self.flip}"

    def describe(self):
        steps = []
        if self.rotation:
            steps.append(f"rotate {90 * self.rotation} degrees counter-clockwise as an MRC viewer "
                         f"shows it (row 0 at the bottom)")
        if self.flip:
            steps.append('flip upside down' if self.flip == 1 else 'flip left-right')
        return ', then '.join(steps) if steps else 'as stored'

    def to_dict(self):
        return {'rotation': self.rotation, 'flip': self.flip, 'motioncor2': self.motioncor2,
                'relion': self.relion, 'description': self.describe()}


#: the 8 distinct transforms, each in its simplest MotionCor2 spelling
#: (a mirror after rotation r + 2 equals the other mirror after rotation r)
TRANSFORMS = (Transform(0, 0), Transform(1, 0), Transform(2, 0), Transform(3, 0),
              Transform(0, 1), Transform(0, 2), Transform(1, 1), Transform(1, 2))


@dataclass
class OrientationResult:
    """The best transform and how sure we are of it."""
    transform: Transform
    inverted: bool
    score: float                      # normalised correlation of the best candidate
    second_score: float               # ... of the runner-up
    second: dict                      # the runner-up: transform and inversion
    confidence: float                 # 1 - second_score / score (0 when score <= 0)
    null: float                       # RMS correlation by chance (shifted best candidate)
    significance: float               # (score - second_score) / null
    confident: bool
    candidates: list = field(default_factory=list)  # every candidate with its score
    notes: list = field(default_factory=list)
    min_score: float = MIN_SCORE
    min_significance: float = MIN_SIGNIFICANCE

    @property
    def message(self):
        figures = (f"correlation {self.score:.3f} against {self.second_score:.3f} for the "
                   f"runner-up and {self.null:.3f} by chance: a lead of "
                   f"{self.significance:.1f} chance spreads")
        if not self.confident:
            return (f"no confident match (best: {self._label(self.transform, self.inverted)}; "
                    f"{figures}; a match needs correlation >= {self.min_score:g} and a lead "
                    f"of {self.min_significance:g} chance spreads)")
        return f"{self._label(self.transform, self.inverted)} ({figures})"

    @staticmethod
    def _label(transform, inverted):
        return transform.describe() + (', inverted (1/x)' if inverted else '')

    def to_dict(self):
        return {'confident': self.confident, 'message': self.message,
                'transform': self.transform.to_dict(), 'inverted': self.inverted,
                'score': self.score, 'second_score': self.second_score, 'second': self.second,
                'confidence': self.confidence, 'null': self.null,
                'significance': self.significance, 'min_score': self.min_score,
                'min_significance': self.min_significance, 'candidates': self.candidates,
                'notes': list(self.notes)}


def smoothing_size(shape):
    """Box size of the low-frequency field: about 1/32 of the smaller side, odd, >= 5."""
    size = max(5, int(min(shape[-2:]) // 32))
    return size + 1 - size % 2


def detail(image, valid=None, size=None):
    """log(image) minus its smooth field, clipped, zero-mean over valid pixels, 0 elsewhere.

    ``valid``: bool mask of usable pixels (finite, positive and not masked are
    required anyway). Same array module as ``image``; float32.
    """
    xp = array_module(image)
    image = xp.asarray(image, dtype=xp.float32)
    good = xp.isfinite(image) & (image > 0)
    if valid is not None:
        good &= xp.asarray(valid, dtype=bool)
    count = int(good.sum())
    if count < 16:
        return xp.zeros(image.shape, dtype=xp.float32), good
    logs = xp.log(xp.where(good, image, xp.float32(1)))
    values = logs[good]
    values = values[::max(1, values.size // 1_000_000)]  # a million values set the clip well
    low, high, middle = (float(v) for v in xp.percentile(values, xp.asarray([0.5, 99.5, 50.0])))
    logs = xp.where(good, xp.clip(logs, low, high), xp.float32(middle))
    size = size or smoothing_size(image.shape)
    smooth = box_blur(box_blur(logs, size, xp), size, xp)
    out = xp.where(good, logs - smooth, xp.float32(0))
    mean = float(out.sum(dtype=xp.float64)) / count
    out = xp.where(good, out - xp.float32(mean), xp.float32(0))
    return out, good


def candidate_transforms(movie_shape, reference_shape):
    """(transforms, note): those that give the reference the movies' shape."""
    movie_shape = tuple(movie_shape[-2:])
    reference_shape = tuple(reference_shape[-2:])
    chosen = [t for t in TRANSFORMS if t.output_shape(reference_shape) == movie_shape]
    note = None
    if not chosen:
        return [], (f"reference is {reference_shape[1]} x {reference_shape[0]}, movies are "
                    f"{movie_shape[1]} x {movie_shape[0]}: no rotation or flip makes them match "
                    f"(binned or super-resolution references are not handled)")
    if len(chosen) < len(TRANSFORMS):
        note = (f"frames are not square ({movie_shape[1]} x {movie_shape[0]}): only the "
                f"{len(chosen)} transforms that give the reference this shape were tried")
    return chosen, note


def null_shifts(shape, count=NULL_SHIFTS):
    """Large, irregular circular shifts (rows, columns), none near 0 or a quarter of a side."""
    rows, cols = shape[-2:]
    shifts = []
    for k in range(1, 4 * count):
        fy = (0.5 + k * 0.6180339887) % 1.0
        fx = (0.25 + k * 0.4142135624) % 1.0
        if min(abs(fy * 4 - round(fy * 4)), abs(fx * 4 - round(fx * 4))) < 0.2:
            continue  # keep away from 0 and from quarter shifts (readout sector period)
        shifts.append((int(round(fy * rows)) % rows, int(round(fx * cols)) % cols))
        if len(shifts) == count:
            break
    return shifts


def find_orientation(estimate, reference, valid=None, min_score=MIN_SCORE,
                     min_significance=MIN_SIGNIFICANCE, size=None):
    """Which transform (and inversion) of ``reference`` agrees with ``estimate``.

    estimate: the gain estimated from the movies (a correction, mean 1; NumPy
    or CuPy). reference: the experimental reference, as read (a correction,
    or its inverse). valid: pixels of the estimate that can be trusted (e.g.
    ``~result.defects``). Returns an :class:`OrientationResult`; raises
    ValueError when no transform gives the reference the movies' shape.
    """
    xp = array_module(estimate)
    transforms, note = candidate_transforms(estimate.shape, reference.shape)
    if not transforms:
        raise ValueError(note)
    notes = [note] if note else []
    a, good_a = detail(estimate, valid, size)
    b, good_b = detail(xp.asarray(reference), None, size)
    norm_a = float(xp.sqrt((a * a).sum(dtype=xp.float64)))
    norm_b = float(xp.sqrt((b * b).sum(dtype=xp.float64)))
    if norm_a == 0 or norm_b == 0:
        notes.append("one of the maps has no detail left after removing its smooth field")
    candidates = []
    for transform in transforms:
        c = (float((a * transform.apply(b)).sum(dtype=xp.float64)) / (norm_a * norm_b)
             if norm_a and norm_b else 0.0)
        for inverted, score in ((False, c), (True, -c)):
            candidates.append({'rotation': transform.rotation, 'flip': transform.flip,
                               'inverted': inverted, 'score': score,
                               'motioncor2': transform.motioncor2, 'relion': transform.relion})
    candidates.sort(key=lambda item: item['score'], reverse=True)
    best, runner_up = candidates[0], candidates[1]
    score, second_score = best['score'], runner_up['score']
    confidence = 1.0 - second_score / score if score > 0 else 0.0
    aligned = Transform(best['rotation'], best['flip']).apply(b)
    chance = [float((a * xp.roll(aligned, shift, axis=(0, 1))).sum(dtype=xp.float64))
              / (norm_a * norm_b)
              for shift in null_shifts(a.shape)] if norm_a and norm_b else [0.0]
    floor = 1.0 / np.sqrt(max(1, int(good_a.sum())))
    null = max(float(np.sqrt(np.mean(np.square(chance)))), floor)
    significance = (score - second_score) / null
    confident = bool(score >= min_score and significance >= min_significance)
    return OrientationResult(
        transform=Transform(best['rotation'], best['flip']), inverted=best['inverted'],
        score=score, second_score=second_score,
        second={'transform': Transform(runner_up['rotation'], runner_up['flip']).to_dict(),
                'inverted': runner_up['inverted']},
        confidence=confidence, null=null, significance=significance, confident=confident,
        candidates=candidates, notes=notes, min_score=min_score,
        min_significance=min_significance)


def apply_orientation(reference, transform=None, inverted=False):
    """The reference in the movies' orientation, as a correction (mean 1, no NaN/inf).

    ``transform`` is a :class:`Transform` or an :class:`OrientationResult`
    (whose ``inverted`` is then used). With ``inverted`` the stored values
    are taken 1/x. Pixels that are not finite or not positive become 1.
    """
    if isinstance(transform, OrientationResult):
        inverted = transform.inverted
        transform = transform.transform
    transform = transform or Transform()
    xp = array_module(reference)
    image = transform.apply(xp.asarray(reference, dtype=xp.float64))
    good = xp.isfinite(image) & (image > 0)
    if not bool(good.any()):
        raise ValueError("reference holds no finite positive value")
    values = xp.where(good, image, 1.0)
    if inverted:
        values = 1.0 / values
    mean = float(values[good].mean())
    return xp.where(good, values / mean, 1.0).astype(xp.float32)
