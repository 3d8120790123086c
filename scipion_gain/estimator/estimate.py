"""What an estimate is: its settings, its result, and the correction its sums give.

Shared by every estimation method (:mod:`.gain`: Eq. 7 and the baselines;
:mod:`.specimen`: the specimen-robust estimate). No Scipion import.
"""
from dataclasses import dataclass, field

import numpy as np

from .arrays import in_row_blocks
from .sme import DEFAULT_SIGMA_GRID

METHODS = ('sme', 'mean', 'std', 'robust')
REFERENCES = ('single', 'local')


@dataclass
class EstimatorSettings:
    method: str = 'sme'
    reference: str = 'single'
    sigma: object = 'auto'          # 'auto' (search sigma_grid, Eq. 5) or a number
    sigma_grid: tuple = DEFAULT_SIGMA_GRID
    iterations: int = 1             # Eq. 7 iterations at most
    tolerance: float = 1e-3         # stop when ||G_new - G|| / ||G|| falls below
    frame_step: int = 1             # use frames 0, step, 2 step, ...
    frames_per_movie: int = 0       # N > 0: at least N frames per movie, evenly spaced
                                    # (step n // N per movie; frame_step is then not used)
    ties: str = 'mean'              # 'mean' (ours); 'last' (Xmipp's, for comparison only)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r} (use {', '.join(METHODS)})")
        if self.reference not in REFERENCES:
            raise ValueError(f"unknown reference {self.reference!r} (use {', '.join(REFERENCES)})")
        if self.sigma != 'auto':
            self.sigma = float(self.sigma)
            if self.sigma < 0:
                raise ValueError("sigma must be 'auto' or a number >= 0")
        self.sigma_grid = tuple(float(s) for s in self.sigma_grid)
        if self.ties not in ('mean', 'last'):
            raise ValueError(f"unknown tie handling {self.ties!r} (use mean or last)")
        self.iterations = max(1, int(self.iterations))
        self.frame_step = max(1, int(self.frame_step))
        self.frames_per_movie = max(0, int(self.frames_per_movie or 0))


@dataclass
class GainResult:
    """An estimated gain (a correction that multiplies raw frames, mean 1).

    ``numerator`` and ``denominator`` are the per-pixel sums behind it
    (recorded and equalized sums for SME; see :func:`correction_from_sums`),
    kept so that estimates of several movies can be accumulated.
    """
    gain: np.ndarray
    defects: np.ndarray
    frames: int
    device: str
    settings: EstimatorSettings
    iterations: int = 1
    converged: bool = True
    sigmas: list = field(default_factory=list)
    numerator: np.ndarray = None
    denominator: np.ndarray = None
    residual: bool = False
    seconds: float = 0.0
    notes: list = field(default_factory=list)     # what reading and conditioning the frames said
    # what the method said of itself (the robust method's pixels under gold, or why it
    # left the map to the paper's SME): in the analysis's notes, not among the reading's
    method_notes: list = field(default_factory=list)
    reference: np.ndarray = None         # the reference the frames were multiplied by, if any
    unusable: np.ndarray = None          # pixels masked by the frame conditioning (NaN/inf), or None
    input: dict = field(default_factory=dict)  # what the frame conditioning did (frames.FrameSource.info)
    # per-pixel sum of the frames as the estimator saw them (corrected, in residual mode):
    # what the verdict judges (for SME and the inverse mean it is the numerator)
    frame_sum: np.ndarray = None
    electrons: float = None              # electrons per pixel over the frames used, when known
    # the robust method's pixel term (estimator.pixels), float32, 0 where a pixel got none
    # from this movie: the counts a pixel of correction 1 would have recorded there (its
    # counts are the frame sum's, over the reference if any: what a session adds up), None
    # where the method has none
    pixel_level: np.ndarray = None


#: rows of the sums turned into the correction at once: only a block's float64 quotient is
#: held (a 4K float64 quotient and its masks were the estimate's peak: 160 MB at 4096 x 4096)
CORRECTION_ROWS = 64
#: blocks of rows handled at once, one a thread
CORRECTION_THREADS = 2


def correction_from_sums(numerator, denominator):
    """The mean-1 correction and the defect mask from accumulated sums.

    The correction is denominator / numerator, scaled to mean 1 over the good
    pixels. For SME the sums are those of Eq. 7 (recorded, equalized), so the
    correction is 1 / G; the baselines pass sums whose ratio is theirs (see
    :func:`_baseline_sums`). Pixels without a finite positive value get 1 and
    are returned as defects. Works on numpy arrays, a block of rows at a time
    (the quotient twice: once for the mean, once scaled; the mean is the blocks'
    sums added, equal to one sum over the frame to float64 rounding).
    """
    numerator, denominator = np.asarray(numerator), np.asarray(denominator)
    shape = numerator.shape
    bad = np.empty(shape, bool)

    def blocks(work):
        """``work(rows)`` over the blocks of rows, on CORRECTION_THREADS threads (NumPy's
        loops release the GIL; each block writes its own rows), its results in the
        blocks' order."""
        if numerator.ndim < 2:
            return [work(Ellipsis)]
        return in_row_blocks(work, shape[0], CORRECTION_ROWS, CORRECTION_THREADS)

    def quotient_of(rows):     # (NumPy's error state is each thread's own: set here)
        with np.errstate(divide='ignore', invalid='ignore'):
            return denominator[rows] / numerator[rows]

    def good_sum(rows):
        quotient = quotient_of(rows)
        good = np.isfinite(quotient)
        good &= quotient > 0
        np.logical_not(good, out=bad[rows])
        kept = int(np.count_nonzero(good))
        return float(quotient.sum() if kept == good.size else quotient[good].sum()), kept

    total, count = 0.0, 0
    for part, kept in blocks(good_sum):     # added in the blocks' order: one loop's sums
        total += part
        count += kept
    if not count:
        return np.ones(shape, np.float32), bad
    mean = total / count
    correction = np.empty(shape, np.float32)

    def scaled(rows):
        quotient = quotient_of(rows)
        quotient /= mean
        quotient[bad[rows]] = 1.0
        correction[rows] = quotient

    blocks(scaled)
    return correction, bad
