"""The power spectrum of a summed movie and its cross strength (estimator/spectrum.py)."""
import numpy as np
import pytest

from scipion_gain.estimator.spectrum import (cross_strength, periodic_component,
                                             power_spectrum)

N = 256


def counts(rng, pattern=None, rows=N, cols=N, dose=30.0):
    """A summed counting movie: Poisson counts under an ice gradient (not periodic)."""
    y, x = np.mgrid[:rows, :cols]
    level = dose * (1 + 0.3 * x / cols + 0.2 * y / rows)
    if pattern is not None:
        level = level * pattern
    return rng.poisson(level).astype(np.float32)


def test_a_flat_detector_under_an_ice_gradient_has_no_cross():
    found = power_spectrum(counts(np.random.default_rng(1)))
    assert 0.9 < found.cross_strength < 1.1
    assert 0.9 < found.horizontal < 1.1 and 0.9 < found.vertical < 1.1


def test_without_the_periodic_component_the_gradient_itself_draws_a_cross():
    image = counts(np.random.default_rng(1))
    naive = np.abs(np.fft.fft2(image - image.mean())) ** 2
    assert cross_strength(naive)[0] > 3          # the edges' jump, not the detector
    periodic = np.abs(np.fft.fft2(periodic_component(image - image.mean()))) ** 2
    assert cross_strength(periodic)[0] < 1.1


def test_a_column_pattern_is_a_horizontal_arm_and_a_row_pattern_a_vertical_one():
    rng = np.random.default_rng(2)
    factors = 1 + 0.03 * rng.standard_normal(N)
    columns = power_spectrum(counts(rng, factors[None, :]))
    rows = power_spectrum(counts(rng, factors[:, None]))
    assert columns.horizontal > 5 and columns.vertical < 1.2
    assert rows.vertical > 5 and rows.horizontal < 1.2
    assert columns.cross_strength == columns.horizontal
    weaker = power_spectrum(counts(rng, (1 + 0.01 * rng.standard_normal(N))[None, :]))
    assert 1.3 < weaker.cross_strength < columns.cross_strength


def test_masked_dead_column_is_not_a_cross_and_the_display_is_centred():
    rng = np.random.default_rng(3)
    image = counts(rng, cols=N + 64)
    image[:, 100] = 0
    mask = np.zeros(image.shape, bool)
    mask[:, 100] = True
    assert power_spectrum(image).cross_strength > 5
    found = power_spectrum(image, mask=mask)
    assert found.cross_strength < 1.3
    assert found.log_amplitude.shape == image.shape and found.log_amplitude.dtype == np.float32
    assert np.all(np.isfinite(found.log_amplitude))
    # mean removed: the zero frequency, at the centre after the shift, is the darkest pixel
    centre = found.log_amplitude[image.shape[0] // 2, image.shape[1] // 2]
    assert centre == found.log_amplitude.min()


def test_bad_shapes_say_so():
    with pytest.raises(ValueError, match='2-D'):
        power_spectrum(np.zeros((3, 32, 32)))
    with pytest.raises(ValueError, match='too small'):
        power_spectrum(np.zeros((8, 32)))
