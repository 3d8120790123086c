"""GPU (CuPy) against CPU (NumPy): the same map, for every mode.

Marked ``gpu``; skipped with the reason in the summary (pytest -ra) where
CuPy or a CUDA device is missing. Run only these with ``pytest -m gpu``.
The estimator is one code path for both devices, so the maps must agree to
float32 rounding: max |GPU - CPU| <= 1e-4 on the mean-1 map.
"""
import numpy as np
import pytest

from scipion_gain.estimator import EstimatorSettings, estimate_gain
from scipion_gain.estimator.arrays import DeviceError, resolve_device
from scipion_gain.simulate import simulate_gain, simulate_movie


def _gpu_or_reason():
    try:
        device = resolve_device('gpu')
    except DeviceError as exc:
        return None, str(exc)
    return device, ''


GPU, REASON = _gpu_or_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPU is None, reason=f"no GPU: {REASON}")]

SHAPE = (192, 256)   # not square: a swapped axis would show
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def movies(tmp_path_factory):
    folder = tmp_path_factory.mktemp('gpu-movies')
    truth = simulate_gain(SHAPE, rng=11, pixel_scatter=0.02, dead_pixels=5, hot_pixels=3,
                          dead_column=True, broken_row=True)
    counting = simulate_movie(str(folder / 'counting.mrc'), SHAPE, 6, truth.gain, dose=1.0,
                              mode='counting', rng=12)
    integrating = simulate_movie(str(folder / 'integrating.mrc'), SHAPE, 4, truth.gain, dose=2.0,
                                 mode='integrating', rng=13)
    return {'counting': counting, 'integrating': integrating, 'truth': truth}


MODES = [
    # (movie, settings, residual)
    ('counting', dict(reference='single', sigma=1.0), False),
    ('counting', dict(reference='single', sigma='auto'), False),
    ('counting', dict(reference='local', sigma=1.0), False),
    ('counting', dict(reference='local', sigma='auto'), False),
    ('counting', dict(reference='single', sigma=0.0), False),
    ('counting', dict(reference='single', sigma='auto', iterations=3, tolerance=0), False),
    ('counting', dict(reference='local', sigma='auto', iterations=2, tolerance=0), False),
    ('counting', dict(reference='single', sigma='auto', frame_step=2), False),
    ('counting', dict(reference='single', sigma='auto'), True),
    ('counting', dict(reference='local', sigma=1.5), True),
    ('counting', dict(reference='single', sigma='auto', ties='last'), False),
    ('integrating', dict(reference='single', sigma='auto'), False),
    ('integrating', dict(reference='local', sigma='auto'), False),
    ('counting', dict(method='mean'), False),
    ('counting', dict(method='std'), False),
    ('integrating', dict(method='std'), True),
]


@pytest.mark.parametrize('movie, options, residual', MODES,
                         ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items())}{'-residual' if r else ''}"
                              for m, o, r in MODES])
def test_gpu_and_cpu_give_the_same_map(movies, movie, options, residual):
    settings = EstimatorSettings(**options)
    reference = movies['truth'].correction if residual else None
    cpu = estimate_gain([movies[movie]], settings, gain_reference=reference, device='cpu')
    gpu = estimate_gain([movies[movie]], settings, gain_reference=reference, device='gpu')
    assert cpu.device == 'cpu' and gpu.device.startswith('gpu:')
    assert isinstance(gpu.gain, np.ndarray) and gpu.gain.dtype == np.float32
    assert np.all(np.isfinite(gpu.gain))
    np.testing.assert_array_equal(gpu.defects, cpu.defects)
    assert gpu.sigmas == cpu.sigmas
    assert gpu.iterations == cpu.iterations
    difference = float(np.max(np.abs(gpu.gain.astype(np.float64) - cpu.gain)))
    assert difference <= TOLERANCE, f"max |GPU - CPU| = {difference:.3g}"


def test_auto_device_uses_the_gpu(movies):
    result = estimate_gain([movies['counting']], EstimatorSettings(sigma=1.0), device='auto')
    assert result.device.startswith('gpu:')


def test_order_strategies_agree_on_the_gpu():
    from scipion_gain.estimator.kernels import order_lines
    cupy = GPU.xp
    rng = np.random.default_rng(5)
    for high in (3, 65535):
        keys = rng.integers(0, high + 1, (300, 257)).astype(np.uint16)
        expected = order_lines(keys, np, 'rows')
        for strategy in ('rows', 'flat'):
            got = cupy.asnumpy(order_lines(cupy.asarray(keys), cupy, strategy))
            np.testing.assert_array_equal(got, expected)


def test_uploader_streams_every_frame_intact_through_pinned_buffers():
    from scipion_gain.estimator.transfer import FrameUploader
    cupy = GPU.xp
    frames = [np.full((513, 700), i, dtype=np.uint16) for i in range(9)]
    frames[4] = frames[4].astype(np.float32) + 0.5
    uploader = FrameUploader(GPU, buffers=2)
    seen = []
    for frame in uploader.upload(iter(frames)):
        assert isinstance(frame, cupy.ndarray) and frame.dtype == np.float32
        seen.append(float(frame.mean()))
    assert seen == [float(i) for i in range(4)] + [4.5] + [float(i) for i in range(5, 9)]


def test_movies_spread_over_every_visible_gpu_match_the_cpu(movies):
    from scipion_gain.estimator.transfer import map_over_devices
    cupy = GPU.xp
    devices = [f'gpu:{i}' for i in range(cupy.cuda.runtime.getDeviceCount())]
    settings = EstimatorSettings(sigma='auto')
    paths = [movies['counting'], movies['integrating']] * 2
    results = map_over_devices(lambda path, device: estimate_gain([path], settings, device=device),
                               paths, devices)
    for path, (result, error) in zip(paths, results):
        assert error is None
        cpu = estimate_gain([path], settings, device='cpu')
        assert float(np.max(np.abs(result.gain.astype(np.float64) - cpu.gain))) <= TOLERANCE
