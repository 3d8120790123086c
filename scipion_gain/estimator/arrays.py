"""Choosing the array module: NumPy on the CPU, CuPy on a GPU.

The estimator is written once against an array module ``xp``; this module
resolves a device request ('cpu', 'gpu', 'gpu:N', 'auto') into that module.
CuPy is optional (the ``gpu`` extra): without it, or without a device, 'auto'
falls back to the CPU and says why.
"""
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np


class DeviceError(RuntimeError):
    """A GPU was asked for explicitly but none can be used."""


def _cupy_or_reason():
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return None, f"CuPy is not available ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"no usable CUDA device ({type(exc).__name__})"
    if count < 1:
        return None, "no CUDA device found"
    return cupy, None


class Device:
    """A resolved device: ``xp`` (numpy or cupy), a label, and why it was chosen."""

    def __init__(self, xp, label, reason=''):
        self.xp = xp
        self.label = label
        self.reason = reason

    @property
    def is_gpu(self):
        return self.xp is not np

    def asarray(self, array, dtype=np.float32):
        return self.xp.asarray(array, dtype=dtype)

    def __repr__(self):
        return f"Device({self.label!r})"


def resolve_device(request='cpu'):
    """Resolve 'cpu' | 'gpu' | 'gpu:N' | 'auto' into a :class:`Device`.

    'gpu' without CuPy or a device raises :class:`DeviceError`; 'auto' falls
    back to the CPU and records the reason.
    """
    if isinstance(request, Device):
        return request
    request = (request or 'cpu').lower()
    if request == 'cpu':
        return Device(np, 'cpu')
    if request not in ('auto', 'gpu') and not request.startswith('gpu:'):
        raise ValueError(f"unknown device {request!r} (use cpu, gpu, gpu:N or auto)")
    cupy, reason = _cupy_or_reason()
    if cupy is None:
        if request == 'auto':
            return Device(np, 'cpu', reason=f"GPU not used: {reason}")
        raise DeviceError(f"GPU requested but {reason}")
    index = int(request.split(':')[1]) if ':' in request else 0
    count = cupy.cuda.runtime.getDeviceCount()
    if not 0 <= index < count:
        raise DeviceError(f"GPU {index} requested but only {count} CUDA device(s) are visible")
    cupy.cuda.Device(index).use()  # current device of this thread (one thread per GPU)
    return Device(cupy, f'gpu:{index}')


def to_numpy(array):
    """A NumPy copy of a NumPy or CuPy array."""
    get = getattr(array, 'get', None)
    return get() if callable(get) else np.asarray(array)


@contextmanager
def quiet_nan_warnings():
    """No RuntimeWarning from NumPy's nan-functions on all-NaN slices (lines or tiles
    without usable pixels are expected, and handled by the caller)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        yield


def in_background(function, *args, **kwargs):
    """Start ``function(*args, **kwargs)`` on a thread of its own and return its future:
    NumPy releases the GIL in its array loops, so on a second core it runs beside what
    the caller does meanwhile (the caller takes ``future.result()`` when it needs it)."""
    executor = ThreadPoolExecutor(max_workers=1)
    future = executor.submit(function, *args, **kwargs)
    executor.shutdown(wait=False)   # its thread ends with the function
    return future


def row_blocks(rows, size):
    """Slices of ``size`` rows covering ``rows`` rows, in order: a frame worked a block of
    rows at a time, so that no frame-sized temporary (a 4K float64 frame: 128 MB) is made."""
    return [slice(first, min(first + size, rows)) for first in range(0, rows, size)]


def in_row_blocks(work, rows, size, threads):
    """``work(part)`` for every block of ``size`` rows (:func:`row_blocks`) of ``rows``, on
    ``threads`` threads at once: NumPy's and SciPy's loops release the GIL, so the blocks
    run on as many cores; each ``work`` must write only its own rows. Returns what each
    ``work`` returned, in the blocks' order (a caller that adds them up in that order gets
    the same sums as one loop over the blocks)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(work, row_blocks(rows, size)))
