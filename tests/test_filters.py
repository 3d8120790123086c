"""The shared filters: box means the same as scipy.ndimage's on frames large enough for
the threaded float32 path, edges included."""
import numpy as np
import pytest
from scipy import ndimage

from scipion_gain.estimator.filters import box_blur, masked_box_mean


@pytest.mark.parametrize('size', [5, 15, 129])
def test_box_blur_of_a_large_float32_frame_is_scipys_uniform_filter(size):
    rng = np.random.default_rng(size)
    image = rng.poisson(20, (1030, 1100)).astype(np.float32)   # over a million pixels
    image[:, 7] = 500   # a bright column and row near the edges, where the box is reflected
    image[1025, :] = 300
    blurred = box_blur(image, size, np)
    expected = ndimage.uniform_filter(image.astype(np.float64), size, mode='reflect')
    assert blurred.dtype == np.float32 and blurred.shape == image.shape
    np.testing.assert_allclose(blurred, expected, rtol=1e-6, atol=1e-5)


def test_masked_box_mean_leaves_out_the_masked_pixels_and_is_zero_in_an_empty_box():
    rng = np.random.default_rng(3)
    values = rng.uniform(1, 2, (1024, 1100)).astype(np.float32)
    mask = np.ones(values.shape, bool)
    mask[500:540, 500:540] = False          # a hole wider than the box
    values[~mask] = 1e6                     # that must not leak into any mean
    mean, share = masked_box_mean(values, mask, 15)
    assert mean[520, 520] == 0 and share[520, 520] == 0
    expected_share = ndimage.uniform_filter(mask.astype(np.float64), 15, mode='reflect')
    expected_total = ndimage.uniform_filter(np.where(mask, values, 0.0), 15, mode='reflect')
    has = expected_share > 0
    np.testing.assert_allclose(share, expected_share, atol=1e-6)
    np.testing.assert_allclose(mean[has], expected_total[has] / expected_share[has], rtol=1e-5)
    assert mean.max() < 2


@pytest.mark.parametrize('size', [1, 2, 3, 4, 5, 16])
@pytest.mark.parametrize('shape', [(64, 96), (61, 99)])
def test_binned_sums_are_numpys_sums_over_both_cell_axes(size, shape):
    # small float64 cells are summed by strided adds: the same sums, bit for bit, as the
    # reshaped frame's sum over both cell axes (partial cells at the far edges dropped)
    from scipion_gain.estimator.filters import binned
    rng = np.random.default_rng(size)
    values = rng.gamma(4.0, 1.0, shape) * rng.uniform(0.9, 1.1, shape)
    rows, cols = shape[0] // size, shape[1] // size
    expected = values[:rows * size, :cols * size].reshape(rows, size, cols, size).sum(axis=(1, 3))
    found = binned(values, size)
    assert found.shape == (rows, cols)
    np.testing.assert_array_equal(found, expected)
