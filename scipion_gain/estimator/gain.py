"""Gain estimation from movies: the fixed-point iteration of Eq. 7 and two baselines.

Model (Sorzano et al. 2018, Eq. 0): recorded_i = ideal_i * G for every frame i,
with G the physical per-pixel gain. Eq. 7 iterates

    G^(1) = 1,   G^(n+1) = sum_i recorded_i / sum_i SME(recorded_i / G^(n))

until the relative change of G falls under a tolerance. Frames are read and
processed one at a time: memory does not grow with the number of frames, and
each iteration reads the movies again.

What we return follows the Scipion / RELION / MotionCor2 convention: the
*correction* 1 / G, scaled to mean 1, which MULTIPLIES raw frames. Pixels that
never received signal (or whose equalized sum is zero) get the value 1 and are
reported in ``defects``; no NaN or inf ever leaves this module.

Residual mode: frames are multiplied by an existing gain reference (a
correction) first; the estimate is then the correction still missing, flat
(all 1) when the reference is right.

``robust`` (:mod:`.specimen`): the paper's SME on the movie's sum with the
specimen divided out first, so that a carbon or gold edge, a hole or an ice
ramp does not become line stripes of the map.

Baselines, for comparison: ``mean`` (the inverse per-pixel mean over frames,
RELION's relion_estimate_gain idea) and ``std`` (the inverse per-pixel
standard deviation, Afanasyev et al. 2015).
"""
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..io import InputError
from .arrays import resolve_device, row_blocks, to_numpy
from .estimate import EstimatorSettings, GainResult, correction_from_sums
from .frames import FrameSource
from .session import half_of, movie_tiles
from .sme import sme_frame
from .pixels import SumCounts, line_prior, pixel_detail
from .planes import plane_factor, profile_plane, shrink_plane
from .specimen import estimate_flattened, map_profile, session_weight
from .stages import default_stages
from .stages.base import frame_size as _size
from .transfer import FrameUploader

def _baseline_sums(total, squares, count, method):
    """Numerator/denominator whose ratio is the baseline's correction (up to scale)."""
    if method == 'mean':
        return total, np.full(total.shape, float(count))  # correction ~ 1 / mean
    variance = squares / count - (total / count) ** 2
    return np.sqrt(np.maximum(variance, 0.0)), np.ones(total.shape)  # correction ~ 1 / std


def estimate_gain(movies, settings=None, gain_reference=None, device='cpu', progress=None,
                  stages=None, keep_sums=True, summed=None):
    """Estimate the gain (or, with ``gain_reference``, the residual gain) of movies.

    ``movies`` is a list of movie paths; all their frames (every
    ``settings.frame_step``-th, or ``settings.frames_per_movie`` of each
    movie spread over it) give one estimate, after the conditioning
    ``stages`` (:mod:`.stages`; default: :func:`.stages.default_stages`).
    ``progress(done, total)`` is called after each frame. ``keep_sums=False``: the
    robust method drops Eq. 7's sums as soon as the map is made (the result's
    ``numerator`` and ``denominator`` are None), for a caller that adds the movie to
    no session. ``summed(frame_sum)``: called by the robust method once its frames are read
    and summed, with the sum the result will hold (the caller may start work on it that
    needs nothing else: the dose). Returns a :class:`GainResult`. Raises :class:`~scipion_gain.io.InputError` on bad
    input, and when no frame is left to estimate from.
    """
    settings = settings or EstimatorSettings()
    started = time.perf_counter()
    dev = resolve_device(device)
    source = FrameSource(movies, settings.frame_step, gain_reference,
                         default_stages() if stages is None else stages,
                         frames_per_movie=settings.frames_per_movie)
    if source.total == 0:
        raise InputError("the movies hold no frames")
    source.prepare()
    if settings.method == 'sme':
        result = _estimate_sme(source, settings, dev, progress)
    elif settings.method == 'robust':
        result = estimate_flattened(source, settings, dev, progress, keep_sums=keep_sums,
                                    summed=summed)
        if isinstance(result, str):     # the robust method declined, and says why
            why = result
            result = _estimate_sme(source, settings, dev, progress)
            result.method_notes.append(f"robust method: {why}; the map is the paper's SME")
    else:
        result = _estimate_baseline(source, settings, dev, progress)
    if source.used == 0:
        raise InputError(f"{source.describe()}: no usable frame "
                         f"({'; '.join(source.stage_notes()) or 'every frame was left out'})")
    unusable = source.unusable
    if unusable is not None and unusable.any():
        result.gain[unusable] = 1.0
        result.defects = result.defects | unusable
        good = ~result.defects
        if good.any():
            result.gain[good] /= result.gain[good].mean()
    result.unusable = unusable
    result.frames = source.used
    result.residual = source.gain_reference is not None
    result.reference = source.gain_reference
    result.input = source.info()
    result.seconds = time.perf_counter() - started
    result.notes = (list(result.notes) + list(source.notes) + source.stage_notes()
                    + ([dev.reason] if dev.reason else []))
    return result


def _estimate_sme(source, settings, dev, progress):
    """Eq. 7: G^(n+1) = sum recorded / sum SME(recorded / G^(n))."""
    xp = dev.xp
    executor = None if dev.is_gpu else ThreadPoolExecutor(max_workers=2)
    gain = None  # G^(1) = 1
    total_steps = source.total * settings.iterations
    done = 0
    converged = False
    try:
        for iteration in range(1, settings.iterations + 1):
            numerator = xp.zeros(source.shape, dtype=xp.float64)
            denominator = xp.zeros(source.shape, dtype=xp.float64)
            sigmas = []
            inverse_gain = None if gain is None else xp.asarray(_safe_inverse(gain))
            for raw in FrameUploader(dev).upload(source):  # pinned, overlapped copies on a GPU
                recorded = source.corrected(raw, xp)
                ideal = recorded if inverse_gain is None else recorded * inverse_gain
                equalized, sigma_pair = sme_frame(ideal, settings.reference, settings.sigma,
                                                  settings.sigma_grid, xp, executor, recorded=raw,
                                                  ties=settings.ties)
                numerator += recorded
                denominator += equalized
                equalized = None   # not held while the next frame's SME builds its own
                sigmas.append(sigma_pair)
                done += 1
                if progress:
                    progress(done, total_steps)
            if settings.iterations == 1:
                break  # G^(2) is what the sums give below; no G map to keep for a next pass
            with np.errstate(divide='ignore', invalid='ignore'):
                new_gain = to_numpy(numerator / denominator)
            change = _relative_change(gain, new_gain)
            gain = new_gain
            if change is not None and change < settings.tolerance:
                converged = True
                break
        # freed before the correction is built (peak memory): the G map, the last frame
        gain = inverse_gain = raw = recorded = ideal = equalized = None
    finally:
        if executor is not None:
            executor.shutdown()
    numerator, denominator = to_numpy(numerator), to_numpy(denominator)
    correction, defects = correction_from_sums(numerator, denominator)
    return GainResult(gain=correction, defects=defects, frames=len(sigmas), device=dev.label,
                      settings=settings, iterations=iteration,
                      converged=converged or settings.iterations == 1, sigmas=sigmas,
                      numerator=numerator, denominator=denominator,
                      frame_sum=numerator)


def _safe_inverse(gain):
    """1 / G where G is finite and positive, else 1 (pixels without signal stay as read)."""
    with np.errstate(divide='ignore', invalid='ignore'):
        inverse = 1.0 / gain
    return np.where(np.isfinite(inverse) & (gain > 0), inverse, 1.0).astype(np.float32)


def _relative_change(old, new):
    if old is None:
        return None
    good = np.isfinite(old) & np.isfinite(new)
    if not good.any():
        return None
    return float(np.linalg.norm(new[good] - old[good]) / max(np.linalg.norm(old[good]), 1e-30))


def _estimate_baseline(source, settings, dev, progress):
    xp = dev.xp
    total = xp.zeros(source.shape, dtype=xp.float64)
    squares = xp.zeros(source.shape, dtype=xp.float64)
    count = 0
    for raw in FrameUploader(dev).upload(source):
        recorded = source.corrected(raw, xp)
        total += recorded
        squares += recorded.astype(xp.float64) ** 2
        count += 1
        if progress:
            progress(count, source.total)
    total = to_numpy(total)
    numerator, denominator = _baseline_sums(total, to_numpy(squares), max(count, 1),
                                            settings.method)
    correction, defects = correction_from_sums(numerator, denominator)
    return GainResult(gain=correction, defects=defects, frames=count, device=dev.label,
                      settings=settings, numerator=numerator, denominator=denominator,
                      frame_sum=total)


#: methods whose numerator is the sum of the frames as estimated (the verdict judges it),
#: and those whose frame sum is kept beside their numerator
_NUMERATOR_IS_FRAME_SUM = ('sme', 'mean')
_FRAME_SUM_BESIDE = ('robust',)
#: methods whose movies are weighed in a session by their lines' agreement with the others
_WEIGHED = ('robust',)


def _lines_profile(result):
    """map_profile of a robust result's lines: of its sums' ratio (its map before the pixel
    term, whose texture is not what the session's weights compare)."""
    return map_profile(result.numerator, result.defects, denominator=result.denominator)


def _shareable(result):
    """Whether a result's sums are float64 maps of one shape (what :meth:`GainAccumulator.add`
    would add to its zeros, unchanged)."""
    numerator, denominator = result.numerator, result.denominator
    return (isinstance(numerator, np.ndarray) and isinstance(denominator, np.ndarray)
            and numerator.dtype == np.float64 and denominator.dtype == np.float64
            and numerator.shape == denominator.shape)


#: rows of the pixel term's sums added at once (no frame-sized temporary)
PIXEL_ROWS = 256


class GainAccumulator:
    """A running estimate over movies: the per-pixel sums of every added result.

    For SME this is Eq. 7's ratio over the frames of all movies added so far,
    so its per-pixel noise falls as movies are added. :meth:`save` and
    :meth:`load` persist it (an .npz), so a resumed session neither loses nor
    counts twice a movie (``members`` says which were added).
    """

    def __init__(self):
        self.numerator = None
        self.denominator = None
        self.count = 0
        self.frames = 0
        self.method = None
        self.electrons = 0.0        # electrons per pixel over all added movies (None: unknown)
        self.members = []           # optional identifiers of the added results (e.g. movie ids)
        # for what only a session shows (estimator.session): the frame sums of the movies
        # in the session's second half (session.half_of), and each movie's coarse map
        self.alternate_sum = None
        self.tiles = []
        # pixels some added movie held no usable value for (NaN or inf there): the sums
        # there miss that movie, and would look like a patch darker than its neighbours,
        # so the session's structure tests leave them out (they are not detector defects)
        self.incomplete = None
        # the frames' own sum where the estimate's numerator is not it (method 'robust':
        # its numerator has the specimen divided out), for the verdict
        self.frame_total = None
        # method 'robust': each movie's line profiles and weight (specimen.session_weight)
        self.profiles = []
        self.weights = []
        # method 'robust': the pixel term's sums (estimator.pixels), float32: the counts of
        # the pixels each movie gave a term and their levels (None: no movie gave one)
        self.pixel_counts = None
        self.pixel_level = None
        self.residual = False       # residual gains (frames corrected by a reference)

    def add(self, result, member=None, share=False):
        """Add a result's sums; ``member`` (an int or str) is recorded in ``members``.

        Pixels the result holds no usable value for (``result.unusable``: NaN
        or inf in its movie) add nothing: one bad movie cannot bias, let alone
        blank, the running estimate. ``share``: the first result's float64 sums
        may be held as they are, not copied (a caller that only saves this
        accumulator and changes neither).
        """
        if self.numerator is None:
            self.method = result.settings.method
            self.residual = bool(getattr(result, 'residual', False))
            unusable = getattr(result, 'unusable', None)
            if share and _shareable(result) and (unusable is None or not unusable.any()):
                if self.method in _WEIGHED:   # the first movie weighs 1 (session_weight)
                    self.profiles.append(_lines_profile(result))
                    self.weights.append(session_weight(self.profiles[-1], []))
                self.numerator, self.denominator = result.numerator, result.denominator
                self._add_rest(result, None, member, share=True)
                return
            self.numerator = np.zeros(result.numerator.shape)
            self.denominator = np.zeros(result.numerator.shape)
        elif result.numerator.shape != self.numerator.shape:
            raise InputError(f"cannot accumulate a {_size(result.numerator.shape)} estimate "
                             f"with {_size(self.numerator.shape)} ones")
        keep = getattr(result, 'unusable', None)
        keep = None if keep is None or not keep.any() else ~keep

        def usable(values):
            return values if keep is None else np.where(keep, values, 0.0)

        weight = 1.0
        if self.method in _WEIGHED:
            profile = _lines_profile(result)
            weight = session_weight(profile, self.profiles)
            self.profiles.append(profile)
            self.weights.append(weight)
        # (a weight of 1, every method but 'robust', adds the sums as they are: no weighted copy)
        self.numerator += usable(result.numerator) if weight == 1.0 else \
            weight * usable(result.numerator)
        self.denominator += usable(result.denominator) if weight == 1.0 else \
            weight * usable(result.denominator)
        if keep is not None:
            self._add_incomplete(~keep)
        self._add_rest(result, keep, member)

    def _add_rest(self, result, keep, member, share=False):
        """What :meth:`add` adds besides the sums (``keep``: the usable pixels, None: all;
        ``share``: a first movie's pixel levels are held, not copied)."""
        def usable(values):
            return values if keep is None else np.where(keep, values, 0.0)

        level = getattr(result, 'pixel_level', None)
        if level is not None and getattr(result, 'frame_sum', None) is not None:
            self._add_pixels(SumCounts(result.frame_sum, getattr(result, "reference", None)),
                             usable(level), share)
        frame_sum = getattr(result, 'frame_sum', None)
        if frame_sum is not None and self.method in _FRAME_SUM_BESIDE:
            self._add_total(usable(frame_sum), share)
        if frame_sum is not None:
            self.tiles.append(movie_tiles(frame_sum, ~result.defects if keep is None
                                          else ~result.defects & keep))
            if half_of(self.count):
                self._add_alternate(usable(frame_sum))
        self.count += 1
        self.frames += result.frames
        known = self.electrons is not None and getattr(result, 'electrons', None) is not None
        self.electrons = self.electrons + result.electrons if known else None
        if member is not None:
            self.members.append(member)

    def merge(self, other):
        """Add the sums of another accumulator (e.g. one movie's, saved by the job that
        analysed it: see :mod:`scipion_gain.movie_job`) and its members.

        The same sums as adding its results one by one with :meth:`add` (their
        unusable pixels were left out when they were added there).
        """
        if other.numerator is None:
            return
        if self.numerator is None:
            self.numerator = np.zeros(other.numerator.shape)
            self.denominator = np.zeros(other.numerator.shape)
        elif other.numerator.shape != self.numerator.shape:
            raise InputError(f"cannot accumulate a {_size(other.numerator.shape)} estimate "
                             f"with {_size(self.numerator.shape)} ones")
        self.residual = self.residual if self.count else other.residual
        self.method = self.method or other.method
        weight = 1.0
        if other.count == 1 and len(other.profiles) == 1:   # one movie: weighed here
            weight = session_weight(other.profiles[0], self.profiles) / other.weights[0]
            self.weights.append(weight * other.weights[0])
        else:
            self.weights.extend(other.weights)
        self.profiles.extend(other.profiles)
        self.numerator += weight * other.numerator
        self.denominator += weight * other.denominator
        if other.count == 1 and other.frame_sum is not None:
            if half_of(self.count):      # a single movie goes to the half its rank says
                self._add_alternate(other.frame_sum)
        elif other.alternate_sum is not None:
            self._add_alternate(other.alternate_sum)
        if other.frame_total is not None:
            self._add_total(other.frame_total)
        if other.pixel_level is not None:
            self._add_pixels(other.pixel_counts, other.pixel_level)
        self.tiles.extend(other.tiles)
        if other.incomplete is not None:
            self._add_incomplete(other.incomplete)
        self.count += other.count
        self.frames += other.frames
        known = self.electrons is not None and other.electrons is not None
        self.electrons = self.electrons + other.electrons if known else None
        self.members.extend(other.members)

    def _add_pixels(self, counts, level, share=False):
        """Add a movie's pixel-term sums, its counts where it has a level (unweighted: a
        movie's weight judges its lines; its pixels' own faults, edges and dim parts, are
        left out of its level), a block of rows at a time. ``share``: the first movie of a
        session, its levels held as they are and its counts written once."""
        if self.pixel_level is None and share:
            self.pixel_level = level
            self.pixel_counts = np.empty(level.shape, np.float32)
            for rows in row_blocks(level.shape[0], PIXEL_ROWS):
                self.pixel_counts[rows] = np.where(level[rows] > 0, counts[rows], 0.0)
            return
        if self.pixel_level is None:
            self.pixel_counts = np.zeros(self.numerator.shape, np.float32)
            self.pixel_level = np.zeros(self.numerator.shape, np.float32)
        for rows in row_blocks(level.shape[0], PIXEL_ROWS):
            self.pixel_counts[rows] += np.where(level[rows] > 0, counts[rows], 0.0)
            self.pixel_level[rows] += level[rows]

    def _add_incomplete(self, mask):
        if self.incomplete is None:
            self.incomplete = np.zeros(self.numerator.shape, bool)
        self.incomplete |= mask

    def _add_total(self, values, share=False):
        """Add a movie's frame sum (``share``: the first movie's float64 sum is held as it
        is, what its zeros plus it would be)."""
        if self.frame_total is None and share and isinstance(values, np.ndarray) \
                and values.dtype == np.float64 and values.shape == self.numerator.shape:
            self.frame_total = values
            return
        if self.frame_total is None:
            self.frame_total = np.zeros(self.numerator.shape)
        self.frame_total += values

    def _add_alternate(self, values):
        if self.alternate_sum is None:
            self.alternate_sum = np.zeros(self.numerator.shape)
        self.alternate_sum += values

    @property
    def frame_sum(self):
        """Per-pixel sum of the frames as estimated (the numerator of SME and of the
        inverse-mean baseline, the frames' sum kept beside the robust method's
        flattened numerator), for the verdict; None for the std baseline."""
        if self.method in _NUMERATOR_IS_FRAME_SUM:
            return self.numerator
        return self.frame_total

    def correction(self):
        """(gain, defects) of the running estimate: Eq. 7's ratio of the sums and, for the
        robust method, the pixel term of the session's counts against their levels
        (:func:`.pixels.pixel_detail`: one movie's gives that movie's map)."""
        correction, defects = correction_from_sums(self.numerator, self.denominator)
        if self.profiles:
            # the plane the movies share, as much of it as their scatter lets the session
            # tell from their ramps (planes.py); one movie's: that movie's map
            factor = plane_factor([profile_plane(p) for p in self.profiles], self.weights,
                                  sectors=not self.residual)
            correction = shrink_plane(correction, defects, factor)
        if self.pixel_level is not None:
            correction, _ = pixel_detail(line_prior(correction, defects), self.pixel_counts,
                                         self.pixel_level, defects)
        return correction, defects

    @property
    def gain(self):
        return self.correction()[0]

    @property
    def defects(self):
        return self.correction()[1]

    def npz_bytes(self):
        """The sums as the bytes of a NumPy .npz, which :meth:`load` reads back."""
        buffer = io.BytesIO()
        self.write_npz(buffer)
        return buffer.getvalue()

    def write_npz(self, file):
        """Write the sums as a NumPy .npz to ``file`` (a path or a binary file), which
        :meth:`load` reads back; the front-ends write them with ``io.results.write_sums``
        (atomically, straight to the file: no copy of the sums in memory)."""
        if self.numerator is None:
            raise ValueError("nothing accumulated yet: no sums to save")
        arrays = {'numerator': self.numerator, 'denominator': self.denominator,
                  'count': np.array(self.count), 'frames': np.array(self.frames),
                  'electrons': np.array(np.nan if self.electrons is None else self.electrons),
                  'method': np.array(self.method or ''), 'residual': np.array(self.residual),
                  'members': np.array([str(m) for m in self.members], dtype=str),
                  'member_ints': np.array(all(isinstance(m, (int, np.integer))
                                              for m in self.members))}
        if self.alternate_sum is not None:
            arrays['alternate_sum'] = self.alternate_sum
        if self.tiles:
            arrays['tiles'] = np.stack(self.tiles)
        if self.incomplete is not None:
            arrays['incomplete'] = self.incomplete
        if self.frame_total is not None:
            arrays['frame_total'] = self.frame_total
        if self.pixel_level is not None:
            arrays['pixel_counts'] = self.pixel_counts
            arrays['pixel_level'] = self.pixel_level
        if self.profiles:
            arrays['profile_columns'] = np.stack([p[0] for p in self.profiles])
            arrays['profile_rows'] = np.stack([p[1] for p in self.profiles])
            arrays['profile_noise'] = np.stack([p[2] for p in self.profiles])
            arrays['weights'] = np.array(self.weights, dtype=np.float64)
        np.savez(file, **arrays)

    @classmethod
    def load(cls, path):
        """An accumulator from a file written by :meth:`save`.

        Raises :class:`~scipion_gain.io.InputError` when the file is missing or unreadable.
        """
        path = os.fspath(path)
        accumulator = cls()
        try:
            with np.load(path, allow_pickle=False) as data:
                accumulator.numerator = np.array(data['numerator'], dtype=np.float64)
                accumulator.denominator = np.array(data['denominator'], dtype=np.float64)
                if 'alternate_sum' in data:
                    accumulator.alternate_sum = np.array(data['alternate_sum'], np.float64)
                if 'tiles' in data:
                    accumulator.tiles = [np.array(t) for t in data['tiles']]
                if 'profile_columns' in data:
                    accumulator.profiles = [
                        (np.array(c), np.array(r), np.array(n)) for c, r, n in
                        zip(data['profile_columns'], data['profile_rows'], data['profile_noise'])]
                    accumulator.weights = [float(w) for w in data['weights']]
                if 'frame_total' in data:
                    accumulator.frame_total = np.array(data['frame_total'], dtype=np.float64)
                if 'incomplete' in data:
                    accumulator.incomplete = np.array(data['incomplete'], dtype=bool)
                if 'pixel_level' in data:    # (files from before the pixel term have none)
                    accumulator.pixel_counts = np.array(data['pixel_counts'], np.float32)
                    accumulator.pixel_level = np.array(data['pixel_level'], np.float32)
                accumulator.residual = bool(data['residual']) if 'residual' in data else False
                accumulator.count = int(data['count'])
                accumulator.frames = int(data['frames'])
                electrons = float(data['electrons']) if 'electrons' in data else np.nan
                accumulator.electrons = None if np.isnan(electrons) else electrons
                accumulator.method = str(data['method']) if 'method' in data else None
                accumulator.method = accumulator.method or None
                members = [str(m) for m in data['members']] if 'members' in data else []
                if 'member_ints' in data and bool(data['member_ints']):
                    members = [int(m) for m in members]
                elif 'ids' in data:  # the protocol's earlier file layout
                    members = [int(i) for i in data['ids']]
                accumulator.members = members
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: cannot read accumulated sums "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                             ) from None
        return accumulator
