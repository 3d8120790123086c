"""The power spectrum of a summed movie and the strength of its "cross".

Microscopists recognise a gain problem in the power spectrum of the sum of a
movie's corrected frames: a detector pattern that is constant along columns
(column factors, a readout sector's step) puts all its power on the
horizontal axis of the spectrum (k_y = 0), one constant along rows on the
vertical axis (k_x = 0): a bright cross. Shot noise, dead pixels and the
specimen spread their power over all directions, so just beside the axes the
spectrum shows what the axes would hold without a pattern.

:func:`power_spectrum` returns the log amplitude of the 2-D FFT (centred, for
display) and :func:`cross_strength` the ratio of the mean power on the axes to
the mean power on the lines 2-6 frequency pixels beside them, over the same
frequencies, leaving out the lowest (|k| < 1/32 of Nyquist: ice gradients and
flat-field shading) and the centre, for each axis; the cross strength is the
stronger of the two. 1 means no cross. It compares the pattern's power with
the shot noise, so the same pattern gives a stronger cross in a sum of more
counts: measured on simulated 512 x 512 sums of 30 counts per pixel, a 1 %
column pattern gives 3, a 3 % one 18, a correct reference 1.00.

The image is first split into its periodic and smooth components (Moisan,
"Periodic plus smooth image decomposition", J. Math. Imaging Vis. 39:161,
2011) and only the periodic one is transformed: the jump between opposite
edges of a frame that is not periodic (any ice gradient) would otherwise draw
a cross of its own on both axes. Pixels marked in ``mask`` (defects without
signal) are set to the mean of the others first.

No pyworkflow/pwem import; ``image`` may be a NumPy or CuPy array (its module
does the FFTs); the results are NumPy arrays and Python floats.
"""
from dataclasses import dataclass

import numpy as np

from .filters import array_module

#: frequencies (in pixels of the spectrum) beside the axes that give the reference level
OFF_AXIS = (2, 6)
#: frequencies below this fraction of Nyquist are left out of the cross strength
LOW_CUT = 1 / 32


@dataclass
class Spectrum:
    log_amplitude: np.ndarray   # log10 |FFT|, centred (zero frequency at [rows // 2, cols // 2])
    cross_strength: float       # the stronger arm: max(horizontal, vertical); 1: no cross
    horizontal: float           # mean power on k_y = 0 / beside it (column patterns)
    vertical: float             # mean power on k_x = 0 / beside it (row patterns)

    def to_dict(self):
        return {'cross_strength': self.cross_strength, 'horizontal': self.horizontal,
                'vertical': self.vertical, 'off_axis': list(OFF_AXIS), 'low_cut': LOW_CUT}


def _fft(xp):
    """The FFT module that keeps single precision: SciPy's for NumPy arrays (NumPy's turns
    float32 into complex128: a 4096 x 4096 spectrum took 770 MB), CuPy's own."""
    if xp is np:
        import scipy.fft
        return scipy.fft
    return xp.fft


def _to_numpy(array):
    return array.get() if hasattr(array, 'get') else np.asarray(array)


def periodic_component(image, xp=None):
    """The periodic component of ``image`` (Moisan 2011): ``image`` minus the smooth
    component whose Laplacian equals the jumps across the frame's opposite edges."""
    xp = xp or array_module(image)
    # single precision (a display and a ratio of mean powers), on a copy: the smooth part
    # is taken out in place
    return _periodic_in_place(xp.array(image, dtype=xp.float32), xp)


def _periodic_in_place(u, xp):
    """:func:`periodic_component` of the float32 array ``u``, computed in ``u``."""
    fft = _fft(xp)
    rows, cols = u.shape
    v = xp.zeros_like(u)
    v[0, :] += u[-1, :] - u[0, :]
    v[-1, :] += u[0, :] - u[-1, :]
    v[:, 0] += u[:, -1] - u[:, 0]
    v[:, -1] += u[:, 0] - u[:, -1]
    q = xp.arange(rows).reshape(-1, 1)
    r = xp.arange(cols).reshape(1, -1)
    denominator = (2 * xp.cos(2 * np.pi * q / rows) + 2 * xp.cos(2 * np.pi * r / cols)
                   - 4).astype(xp.float32)
    denominator[0, 0] = 1.0
    smooth_hat = fft.fft2(v)
    smooth_hat /= denominator
    smooth_hat[0, 0] = 0.0
    u -= xp.real(fft.ifft2(smooth_hat))
    return u


def _prepared(image, mask, xp):
    values = xp.asarray(image, dtype=xp.float32)
    if values.ndim != 2:
        raise ValueError(f"a power spectrum needs a 2-D image, not {values.ndim}-D")
    if min(values.shape) < 16:
        raise ValueError(f"a {values.shape[1]} x {values.shape[0]} image is too small for a "
                         f"power spectrum (16 x 16 at least)")
    bad = ~xp.isfinite(values)
    if mask is not None:
        bad = bad | xp.asarray(mask, dtype=bool)
    good = ~bad
    fill = float(values[good].mean(dtype=xp.float64)) if bool(good.any()) else 0.0
    values = xp.where(good, values, xp.float32(fill))
    values -= xp.float32(fill)
    return values


def power(image, mask=None, xp=None):
    """|FFT|^2 of the periodic component of ``image`` (mean removed), not centred."""
    xp = xp or array_module(image)
    transform = _fft(xp).fft2(_periodic_in_place(_prepared(image, mask, xp), xp))
    p = xp.abs(transform)
    del transform
    p *= p
    return p


def cross_strength(power_map):
    """(strength, horizontal, vertical): mean power on each axis over the mean power
    beside it; the strength is the stronger of the two arms.

    ``power_map``: an uncentred power spectrum (:func:`power`). The horizontal
    axis is k_y = 0 (patterns constant along columns), the vertical one k_x = 0.
    """
    p = _to_numpy(power_map)
    rows, cols = p.shape
    first, last = OFF_AXIS

    def along(axis_lines, length, other):
        # frequencies along the axis: |k| from the low cut to Nyquist, both signs
        k = np.fft.fftfreq(length) * 2  # in units of Nyquist
        keep = np.abs(k) >= LOW_CUT
        on = axis_lines(0)[keep]
        offsets = [d for d in range(first, last + 1) if d < other // 2]
        beside = np.concatenate([axis_lines(s * d)[keep] for d in offsets for s in (1, -1)])
        return float(on.mean()), float(beside.mean())

    h_on, h_off = along(lambda d: p[d % rows, :], cols, rows)
    v_on, v_off = along(lambda d: p[:, d % cols], rows, cols)
    tiny = np.finfo(float).tiny
    horizontal, vertical = h_on / max(h_off, tiny), v_on / max(v_off, tiny)
    return max(horizontal, vertical), horizontal, vertical


def power_spectrum(image, mask=None, xp=None):
    """The :class:`Spectrum` of a 2-D image (a movie's summed corrected frames).

    ``mask``: True where a pixel has no usable signal (set to the mean first).
    """
    xp = xp or array_module(image)
    p = power(image, mask, xp)
    strength, horizontal, vertical = cross_strength(p)
    shifted = _to_numpy(xp.fft.fftshift(p))
    del p
    np.maximum(shifted, np.finfo(np.float32).tiny, out=shifted)
    log_amplitude = np.log10(shifted, out=shifted)
    log_amplitude *= 0.5
    return Spectrum(log_amplitude=log_amplitude.astype(np.float32, copy=False),
                    cross_strength=strength, horizontal=horizontal, vertical=vertical)


def cross_numbers(image, mask=None, xp=None):
    """The :class:`Spectrum` of ``image`` without its picture (``log_amplitude`` None): the
    cross strength alone, without the centred log amplitude (a 4K float32 image)."""
    strength, horizontal, vertical = cross_strength(power(image, mask, xp))
    return Spectrum(log_amplitude=None, cross_strength=strength, horizontal=horizontal,
                    vertical=vertical)
