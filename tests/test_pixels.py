"""The robust estimate's pixel term (estimator.pixels): each pixel's gain from its counts
against the specimen's local level, shrunk by the texture the data show.

Named cases, 256 x 256 x 20 counting frames at 1 e/px/frame: a texture-dominated
detector (pixel scatter 5 % and a texture of 8 % correlated over a pixel, as real
K2, K3 and Falcon references have; lines and sectors of 1.5 to 3 %), movies of ice
and particles, with a carbon edge in every second one.
"""
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from scipion_gain.estimator import EstimatorSettings, GainAccumulator, estimate_gain, pixels
from scipion_gain.estimator.estimate import correction_from_sums
from scipion_gain.estimator.statistics import map_statistics
from scipion_gain.io.results import write_sums
from scipion_gain.simulate import random_specimen, simulate_frames, simulate_gain, write_movie

SIZE = 256
FRAMES = 20
ROBUST = EstimatorSettings(method='robust')


def high_passed(values):
    logs = np.log(np.maximum(np.asarray(values, np.float64), 1e-6))
    return logs - ndimage.uniform_filter(logs, 9, mode='reflect')


def high_r2(estimate, detector, defects):
    good = ~defects & ~detector.dead & ~detector.hot
    a, b = high_passed(estimate)[good], high_passed(detector.correction)[good]
    return float(np.corrcoef(a, b)[0, 1] ** 2)


def lines_only(result):
    """The robust map without its pixel term: its sums' ratio (Eq. 7), as before."""
    correction, defects = correction_from_sums(result.numerator, result.denominator)
    defects = defects | result.defects
    correction = correction / correction[~defects].mean()
    return np.where(defects, 1.0, correction)


@pytest.fixture(scope='module')
def textured(tmp_path_factory):
    """A texture-dominated detector and four movies (a carbon edge in the 2nd and 4th)."""
    folder = tmp_path_factory.mktemp('pixels')
    detector = simulate_gain((SIZE, SIZE), rng=8, sectors=4, sector_spread=0.03,
                             column_spread=0.03, row_spread=0.015, flat_field=0.03,
                             pixel_scatter=0.05, texture=0.08, dead_pixels=10, hot_pixels=4)
    movies = []
    for index in range(4):
        spec = random_specimen(40 + index, carbon=0.3 if index % 2 else False, hole=False)
        path = folder / f'movie_{index}.mrc'
        write_movie(str(path), simulate_frames((SIZE, SIZE), FRAMES, detector.gain, dose=1.0,
                                               rng=60 + index, specimen=spec, drift=0.3),
                    shape=(SIZE, SIZE), n_frames=FRAMES)
        movies.append(str(path))
    return detector, movies


def test_the_pixel_term_doubles_the_pixel_detail_of_a_textured_detector(textured):
    # measured: 0.21 against 0.09 (512 px, 10 % pixel variation); the lines' map keeps
    # only what the equalization tables' nonlinearity lets through
    detector, movies = textured
    for path in movies[:2]:                      # ice, and ice with a carbon edge
        result = estimate_gain([path], ROBUST)
        with_term = high_r2(result.gain, detector, result.defects)
        without = high_r2(lines_only(result), detector, result.defects)
        assert with_term >= 1.6 * without and with_term >= without + 0.06


def test_the_pixel_term_weighs_its_neighbours_by_the_texture_they_share(textured, monkeypatch):
    # measured: high-passed R^2 0.309 / 0.308 (ice / carbon) with the 5 x 5 Wiener filter,
    # 0.219 / 0.215 from each pixel's own counts alone (KERNEL_REACH 0: the term before)
    detector, movies = textured
    scores, default = {}, pixels.KERNEL_REACH
    for reach in (default, 0):
        monkeypatch.setattr(pixels, 'KERNEL_REACH', reach)
        scores[reach] = [high_r2(result.gain, detector, result.defects) for result in
                         (estimate_gain([path], ROBUST) for path in movies[:2])]
    for spatial, own in zip(scores[default], scores[0]):
        assert spatial >= own + 0.06 and spatial >= 1.3 * own, scores


@pytest.mark.parametrize('texture, scatter, lag_one', [(0.08, 0.0, (0.6, 0.95)),
                                                       (0.0, 0.08, (-0.12, 0.12))])
def test_the_textures_covariance_is_its_own_not_the_counts(texture, scatter, lag_one):
    # a texture filtered over a pixel shares ~0.78 of its variance with the next pixel; a
    # white pixel scatter none; the counts' Poisson noise (20 a pixel, 8 times the
    # texture's variance) adds nothing off lag 0 but what two pixels' levels share
    # (measured: 0.11 of the white scatter's variance at one pixel before it is taken out)
    detector = simulate_gain((SIZE, SIZE), rng=3, sectors=1, sector_spread=0.0,
                             column_spread=0.0, row_spread=0.0, flat_field=0.0,
                             pixel_scatter=scatter, texture=texture)
    counts = np.random.default_rng(4).poisson(20.0 * detector.gain).astype(np.float32)
    prior = np.ones(counts.shape, np.float32)
    defects = np.zeros(counts.shape, bool)
    level = pixels.local_level(counts, prior, ~defects)     # the ring's mean, as estimated
    tau2 = pixels.texture_variance(prior, counts, level, defects)
    covariance, shared = pixels.texture_covariance(prior, counts, level, defects, tau2)
    texture = covariance - shared      # off lag 0: what the two levels share taken out
    centre = covariance.shape[0] // 2
    own = covariance[centre, centre]
    assert 0.7 * 0.08 ** 2 < own < 1.2 * 0.08 ** 2
    # (each lag of 256 x 256 pixels is known to about 0.035 of ``own``: their mean)
    lag = (texture[centre, centre + 1] + texture[centre + 1, centre]) / 2
    assert lag_one[0] * own < lag < lag_one[1] * own, (lag / own, own)


def test_a_sessions_pixel_detail_rises_with_every_movie_edges_or_not(textured, tmp_path):
    detector, movies = textured
    session, curve = GainAccumulator(), []
    for path in movies:
        session.add(estimate_gain([path], ROBUST))
        correction, defects = session.correction()
        curve.append(high_r2(correction, detector, defects))
    assert all(b > a for a, b in zip(curve, curve[1:])), curve
    # and a resumed session goes on with the same pixel sums
    write_sums(tmp_path / 'sums.npz', session)
    back = GainAccumulator.load(tmp_path / 'sums.npz')
    np.testing.assert_array_equal(back.pixel_level, session.pixel_level)
    np.testing.assert_array_equal(back.gain, session.gain)


def test_one_movies_session_is_its_map_and_merging_is_adding(textured):
    detector, movies = textured
    results = [estimate_gain([path], ROBUST) for path in movies[:2]]
    one = GainAccumulator()
    one.add(results[0])
    np.testing.assert_allclose(one.gain, results[0].gain, rtol=2e-6)
    added, merged = GainAccumulator(), GainAccumulator()
    for result in results:
        added.add(result)
        single = GainAccumulator()
        single.add(result)
        merged.merge(single)
    np.testing.assert_allclose(merged.gain, added.gain, rtol=2e-6)


def test_a_session_saved_before_the_pixel_term_loads_and_goes_on(textured, tmp_path):
    detector, movies = textured
    old = GainAccumulator()
    old.add(estimate_gain([movies[0]], ROBUST))
    old.pixel_counts = old.pixel_level = None        # what an older file held
    write_sums(tmp_path / 'old.npz', old)
    assert 'pixel_level' not in np.load(tmp_path / 'old.npz').files
    resumed = GainAccumulator.load(tmp_path / 'old.npz')
    assert resumed.pixel_level is None
    np.testing.assert_array_equal(resumed.gain, old.gain)     # the lines' map, as it was
    resumed.add(estimate_gain([movies[1]], ROBUST))           # the new movie's pixel sums
    assert resumed.pixel_level is not None and resumed.count == 2


def test_the_exact_references_residual_gets_no_texture(textured):
    # the texture is measured beyond the Poisson variance of the pixel and of its ring:
    # with the exact reference there is none, and the residual map stays as flat
    detector, movies = textured
    for path in movies[:2]:
        result = estimate_gain([path], ROBUST, gain_reference=detector.correction)
        good = ~result.defects
        with_term = map_statistics(result.gain, mask=good)['statistics']['std']
        without = map_statistics(lines_only(result), mask=good)['statistics']['std']
        assert with_term <= 1.03 * without


def test_integrating_frames_get_no_pixel_term(tmp_path):
    # their Poisson variance per unit level (ADU per electron) is not known to the term
    detector = simulate_gain((128, 128), rng=2, pixel_scatter=0.05, texture=0.08)
    path = tmp_path / 'integrating.mrc'
    write_movie(str(path), simulate_frames((128, 128), 10, detector.gain, dose=8.0,
                                           mode='integrating', rng=3),
                shape=(128, 128), n_frames=10)
    result = estimate_gain([str(path)], ROBUST)
    assert result.pixel_level is None


def test_with_the_exact_reference_a_carbon_movie_s_low_count_pixels_do_not_flag_the_map(
        tmp_path):
    """Carbon letting half the beam through over 40 % of a 512 x 512 x 20 movie (10 counts a
    pixel there): some of its pixels recorded 0-2 counts. With the exact reference the
    residual map is the lines' and a pixel term of no texture: those pixels stand nowhere
    (the map's max over its p97.5 under 1.2, where a map shrunk toward the equalized map
    kept them far off: 2.9 here; on the benchmark's carbon and gold movies past the paper's
    max / p97.5 flag, 4.5)."""
    detector = simulate_gain((512, 512), rng=3, sectors=8, sector_spread=0.03,
                             column_spread=0.03, row_spread=0.015, flat_field=0.03,
                             dead_pixels=30, hot_pixels=15)
    specimen = random_specimen(11, carbon=0.4, hole=False, ice=0.05, particles=0.1)
    specimen = replace(specimen, carbon_transmission=0.5, carbon_angle=14.0,
                       carbon_curvature=0.0)
    path = str(tmp_path / 'carbon.mrc')
    write_movie(path, simulate_frames((512, 512), FRAMES, detector.gain, dose=1.0,
                                      rng=5, specimen=specimen, drift=0.5),
                shape=(512, 512), n_frames=FRAMES)
    result = estimate_gain([path], ROBUST, gain_reference=detector.correction)
    stats = map_statistics(result.gain, mask=~result.defects)
    assert stats['ratios']['max/p97.5'] < 1.2, stats['ratios']
    assert not stats['flagged'], stats['flags']


def test_an_analysis_that_adds_to_no_session_judges_the_same_without_its_sums(textured):
    """keep_sums=False (the estimate command's single estimate): the session sums are not
    held through the judging, and the map, the verdict and every reported number are those
    of an analysis that kept them."""
    from scipion_gain.estimator.analysis import AnalysisSettings, analyse
    detector, movies = textured
    settings = AnalysisSettings(estimator=ROBUST)
    kept = analyse([movies[1]], reference=detector.correction, settings=settings)
    dropped = analyse([movies[1]], reference=detector.correction, settings=settings,
                      keep_sums=False)
    assert kept.result.pixel_level is not None and kept.result.denominator is not None
    assert dropped.result.pixel_level is None and dropped.result.denominator is None
    np.testing.assert_array_equal(dropped.gain, kept.gain)
    volatile = {'seconds', 'timing'}
    assert {k: v for k, v in dropped.report.items() if k not in volatile} == \
        {k: v for k, v in kept.report.items() if k not in volatile}


def _texture_estimate_tap_by_tap(prior, counts, level, defects, part, kernels):
    """The pixel term's Wiener filter as its docstring writes it: each of its (2 R + 1)^2
    taps gathered and added on its own, in float64 (what the paired taps are checked
    against)."""
    reach = pixels.KERNEL_REACH
    first, last = max(part.start - reach, 0), min(part.stop + reach, prior.shape[0])
    u, poisson, take = pixels._residuals(prior[first:last], counts[first:last],
                                         level[first:last], defects[first:last])
    residual = np.pad(np.where(take, u - 1.0, 0.0), reach).astype(np.float64)
    top, height, width = part.start - first + reach, part.stop - part.start, u.shape[1]
    own = slice(part.start - first, part.stop - first)
    grid = pixels.VARIANCE_GRID
    index = np.clip(np.rint(np.log(np.maximum(poisson[own], grid[0]) / grid[0])
                            / np.log(grid[1] / grid[0])), 0, len(grid) - 1).astype(np.intp)
    estimate = np.zeros((height, width))
    taps = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    for tap, (dy, dx) in enumerate(taps):
        estimate += (pixels.LINE_AMPLITUDE * kernels[:, tap][index]
                     * residual[top + dy:top + dy + height, reach + dx:reach + dx + width])
    estimate[~take[own]] = 0.0
    return estimate


def test_the_paired_taps_and_threads_give_the_tap_by_tap_filter(monkeypatch):
    """The filter's mirrored taps share one weight (its kernels are point-symmetric) and
    its blocks run in threads: the pixel term is the tap-by-tap filter's within float32's
    rounding, and the same bit for bit in one thread or two."""
    rng = np.random.default_rng(5)
    shape = (300, 256)
    texture = (1.0 + 0.2 * ndimage.uniform_filter(rng.standard_normal(shape), 2)
               ).astype(np.float32)
    level = np.full(shape, 12.0, np.float32) * np.linspace(0.5, 1.5, shape[1])[None, :]
    level = level.astype(np.float32)
    counts = rng.poisson(level * texture).astype(np.float32)
    defects = np.zeros(shape, bool)
    defects[40:43, 100] = True
    prior = np.ones(shape, np.float32)
    tau2 = pixels.texture_variance(prior, counts, level, defects)
    assert tau2 > 0
    kernels = pixels.wiener_kernels(*pixels.texture_covariance(prior, counts, level, defects,
                                                               tau2))
    assert np.allclose(kernels, kernels[:, ::-1], rtol=1e-9, atol=1e-12)
    for part in (slice(0, 128), slice(128, 256), slice(256, 300)):
        paired = pixels._texture_estimate(prior, counts, level, defects, part, kernels)
        direct = _texture_estimate_tap_by_tap(prior, counts, level, defects, part, kernels)
        assert paired.dtype == np.float32
        assert np.max(np.abs(paired - direct)) <= 1e-6 * (1.0 + np.max(np.abs(direct)))
    maps = {}
    for threads in (1, 2, 3):
        monkeypatch.setattr(pixels, 'BLOCK_THREADS', threads)
        maps[threads], _ = pixels.pixel_detail(prior.copy(), counts, level, defects)
    assert np.array_equal(maps[1], maps[2]) and np.array_equal(maps[1], maps[3])
    # the threads' map is the sequential tap-by-tap one's within float32's rounding
    sequential = prior.astype(np.float64)
    for part in pixels.row_blocks(shape[0], pixels.BLOCK_ROWS):
        sequential[part] /= 1.0 + _texture_estimate_tap_by_tap(prior, counts, level, defects,
                                                               part, kernels)
    good = ~defects
    sequential[good] /= sequential[good].mean()      # defects keep the prior (1)
    assert np.max(np.abs(maps[2] / sequential - 1.0)) < 1e-6


def test_the_local_level_is_the_same_bit_for_bit_in_one_thread_or_two(monkeypatch):
    rng = np.random.default_rng(8)
    shape = (300, 200)
    total = rng.poisson(20.0 * np.linspace(0.3, 1.7, shape[0])[:, None], shape).astype(float)
    correction = (1.0 + 0.02 * rng.standard_normal(shape)).astype(np.float32)
    usable = np.ones(shape, bool)
    usable[150:160, 50:70] = False
    reference = (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    levels = {}
    for threads in (1, 2):
        monkeypatch.setattr(pixels, 'BLOCK_THREADS', threads)
        levels[threads] = pixels.local_level(total, correction, usable, reference)
    assert (levels[1] > 0).mean() > 0.5
    assert np.array_equal(levels[1], levels[2])
