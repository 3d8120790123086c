"""The specimen-robust estimate (estimator.specimen, method 'robust') against the paper's SME.

Named cases, 512 x 512 x 20 counting frames at 1 e/px/frame, one structured
detector: a carbon edge across 30 % of the frame at 32 degrees (transmission
0.72) against the same specimen without it.
"""
import numpy as np
import pytest

from scipion_gain.estimator import EstimatorSettings, GainAccumulator, estimate_gain
from scipion_gain.estimator.analysis import AnalysisSettings, analyse
from scipion_gain.estimator.statistics import map_statistics
from scipion_gain.io.results import write_sums
from scipion_gain.simulate import random_specimen, simulate_frames, simulate_gain, write_movie

from helpers import specimen_movie

SIZE = 512
FRAMES = 20


def r_squared(estimate, truth, good):
    return float(np.corrcoef(estimate[good], truth[good])[0, 1] ** 2)


@pytest.fixture(scope='module')
def session(tmp_path_factory):
    """One detector; movies of one specimen with and without a carbon edge, and another
    specimen (no edge)."""
    folder = tmp_path_factory.mktemp('specimen')
    detector = simulate_gain((SIZE, SIZE), rng=5, sectors=4, sector_spread=0.05,
                             column_spread=0.03, row_spread=0.015, pixel_scatter=0.01)
    movies = {}
    for name, seed, carbon in (('plain', 11, False), ('carbon', 11, 0.3),
                               ('other', 21, False)):
        spec = random_specimen(seed, carbon=carbon, hole=False)
        path = folder / f'{name}.mrc'
        write_movie(str(path), simulate_frames((SIZE, SIZE), FRAMES, detector.gain, dose=1.0,
                                               rng=seed + 1, specimen=spec),
                    shape=(SIZE, SIZE), n_frames=FRAMES)
        movies[name] = str(path)
    return detector, movies


def _r2(result, detector):
    good = ~result.defects & ~detector.dead & ~detector.hot
    return r_squared(result.gain, detector.correction, good)


def test_carbon_edge_keeps_r2_where_the_paper_loses_it(session):
    detector, movies = session
    robust = EstimatorSettings(method='robust')
    plain = _r2(estimate_gain([movies['plain']], robust), detector)
    carbon = _r2(estimate_gain([movies['carbon']], robust), detector)
    paper_plain = _r2(estimate_gain([movies['plain']], EstimatorSettings()), detector)
    paper_carbon = _r2(estimate_gain([movies['carbon']], EstimatorSettings()), detector)
    # the criterion: 85 % of the R^2 of the movie without the edge; the paper's
    # SME, which spreads the edge along the lines it crosses, misses it
    assert carbon >= 0.85 * plain
    assert paper_carbon < 0.85 * paper_plain
    assert plain >= 0.9 * paper_plain          # nothing lost on a movie without an edge


def test_adding_an_edge_movie_does_not_lower_the_accumulated_r2(session):
    detector, movies = session
    settings = EstimatorSettings(method='robust')
    accumulator = GainAccumulator()
    scores = []
    for name in ('plain', 'carbon', 'other'):
        accumulator.add(estimate_gain([movies[name]], settings))
        gain, defects = accumulator.correction()
        good = ~defects & ~detector.dead & ~detector.hot
        scores.append(r_squared(gain, detector.correction, good))
    assert scores[1] >= scores[0]
    assert scores[2] >= scores[1]


def test_residual_with_an_edge_is_as_flat_as_without(session):
    detector, movies = session
    settings = EstimatorSettings(method='robust')
    stats = {}
    for name in ('plain', 'carbon'):
        result = estimate_gain([movies[name]], settings, gain_reference=detector.correction)
        stats[name] = map_statistics(result.gain, mask=~result.defects)
    assert stats['carbon']['statistics']['std'] <= 1.3 * stats['plain']['statistics']['std']
    assert not stats['carbon']['flagged']
    paper = estimate_gain([movies['carbon']], EstimatorSettings(),
                          gain_reference=detector.correction)
    assert map_statistics(paper.gain, mask=~paper.defects)['flagged']   # the case bites


def test_a_column_error_is_still_found_beside_a_carbon_edge(session):
    detector, movies = session
    rng = np.random.default_rng(3)
    error = 1 + 0.02 * rng.standard_normal(SIZE)
    reference = detector.correction * error[None, :]
    settings = AnalysisSettings(estimator=EstimatorSettings(method='robust'))
    analysis = analyse([movies['carbon']], reference, settings=settings)
    columns = np.log(analysis.gain).mean(axis=0)
    # the residual is the correction still missing: 1 / error
    assert np.corrcoef(columns, -np.log(error))[0, 1] > 0.8
    assert analysis.verdict['flagged']


def test_a_robust_session_keeps_the_frames_sum_for_the_verdict(session, tmp_path):
    detector, movies = session
    settings = EstimatorSettings(method='robust')
    accumulator = GainAccumulator()
    results = [estimate_gain([movies[name]], settings) for name in ('plain', 'carbon')]
    for result in results:
        accumulator.add(result)
    total = results[0].frame_sum + results[1].frame_sum
    np.testing.assert_allclose(accumulator.frame_sum, total)
    write_sums(tmp_path / 'sums.npz', accumulator)
    again = GainAccumulator.load(tmp_path / 'sums.npz')
    assert again.weights == accumulator.weights and len(again.profiles) == 2
    np.testing.assert_allclose(again.frame_sum, total)
    merged = GainAccumulator()
    merged.merge(again)
    np.testing.assert_allclose(merged.frame_sum, total)


def test_a_movie_whose_lines_stand_out_is_weighed_down_in_a_session():
    """Three movies of one detector, then one whose column profile carries a 30 % step
    that no other movie has (a carbon edge along a column: one movie cannot tell it
    from a readout step); the session weighs it down and keeps its R^2."""
    from scipion_gain.estimator.specimen import map_profile, session_weight
    rng = np.random.default_rng(8)
    truth = 1 + 0.03 * rng.standard_normal(SIZE)[None, :] + 0.01 * rng.standard_normal((SIZE, SIZE))

    def movie_map(step):
        noisy = truth * (1 + 0.05 * rng.standard_normal((SIZE, SIZE)))
        noisy[:, SIZE // 2:] *= step
        return noisy

    previous = [map_profile(movie_map(1.0)) for _ in range(3)]
    assert session_weight(map_profile(movie_map(1.0)), previous) > 0.5
    assert session_weight(map_profile(movie_map(0.7)), previous) < 0.05


def test_a_robust_session_reports_its_weights_and_noise(session):
    from scipion_gain.estimator.analysis import analyse_accumulated
    detector, movies = session
    settings = EstimatorSettings(method='robust')
    accumulator = GainAccumulator()
    for name in ('plain', 'carbon', 'other'):
        accumulator.add(estimate_gain([movies[name]], settings))
    quality = analyse_accumulated(accumulator).to_json()['session_quality']
    assert len(quality['weights']) == 3 and quality['weights'][:2] == [1.0, 1.0]
    assert 1.0 < quality['effective_movies'] <= 3.0
    one = GainAccumulator()
    one.add(estimate_gain([movies['plain']], settings))
    alone = analyse_accumulated(one).to_json()['session_quality']
    assert quality['column_noise'] < alone['column_noise']    # more movies, less noise


# ---------------------------------------------------------------- edges near a pixel axis
# A straight edge a degree or two off a pixel axis shares its step among all bands of
# coarse cells, as a readout step does; band by band at full resolution it moves (an edge
# 1.5 degrees off moves 13 px over 512 lines), a readout step does not.

def _near_axis_movie(folder, detector_gain, name, seed, angle, transmission):
    from dataclasses import replace
    rng = np.random.default_rng(seed)
    spec = random_specimen(rng, carbon=0.3 if angle is not None else False, hole=False,
                           ice=0.05)
    if angle is not None:
        spec = replace(spec, carbon_angle=angle, carbon_curvature=0.0,
                       carbon_transmission=transmission)
    return specimen_movie(folder / f'{name}.mrc', detector_gain, spec, rng, FRAMES)


@pytest.fixture(scope='module')
def near_axis(tmp_path_factory):
    """A detector with readout sectors; a specimen without an edge, the same with a carbon
    edge 1.5 degrees off the column axis, another with gold foil 2.5 degrees off the row
    axis."""
    folder = tmp_path_factory.mktemp('near_axis')
    detector = simulate_gain((SIZE, SIZE), rng=8, sectors=4, sector_spread=0.05,
                             column_spread=0.03, row_spread=0.015, pixel_scatter=0.01)
    # the same specimen without and with the edge: the ice and particles cost both alike
    movies = {'plain': _near_axis_movie(folder, detector.gain, 'plain', 32, None, None),
              'carbon': _near_axis_movie(folder, detector.gain, 'carbon', 32, 1.5, 0.6),
              'gold': _near_axis_movie(folder, detector.gain, 'gold', 33, 92.5, 0.05)}
    return detector, movies


def test_an_edge_a_degree_off_a_pixel_axis_keeps_the_r2_of_a_movie_without(near_axis):
    detector, movies = near_axis
    robust = EstimatorSettings(method='robust')
    plain = _r2(estimate_gain([movies['plain']], robust), detector)
    carbon = _r2(estimate_gain([movies['carbon']], robust), detector)
    paper = _r2(estimate_gain([movies['carbon']], EstimatorSettings()), detector)
    # measured 0.81 of the movie without the edge (0.34 before the edge was traced); the
    # issue's 85 % is not met by every edge movie (see benchmarks/README.md)
    assert carbon >= 0.75 * plain
    assert paper < 0.5 * plain           # the paper's SME takes it for stripes


def test_gold_near_an_axis_keeps_the_papers_flags_quiet_with_the_exact_reference(near_axis):
    detector, movies = near_axis
    robust = EstimatorSettings(method='robust')
    stats = {}
    for name in ('plain', 'gold'):
        result = estimate_gain([movies[name]], robust, gain_reference=detector.correction)
        stats[name] = map_statistics(result.gain, mask=~result.defects)
    assert not stats['gold']['flagged'], stats['gold']['flags']
    assert stats['gold']['statistics']['std'] <= 1.3 * stats['plain']['statistics']['std']
    # the pixels under gold are not estimable from this movie: marked, and said so
    gain_mode = estimate_gain([movies['gold']], robust)
    assert 0.2 < gain_mode.defects.mean() < 0.6
    assert any('nearly opaque' in note for note in gain_mode.method_notes)


def test_gold_over_most_of_the_frame_is_not_taken_for_its_typical_level(near_axis, tmp_path):
    # the exposed part of a gold-foil hole under half the frame: the median of the
    # specimen model lay in the gold (T 0.03), no pixel was 'nearly opaque' against it, and
    # the gold's pixels (0.6 counts) entered the map: with the exact reference a residual
    # std of 0.07 to 0.1 and the paper's std flag (measured on an independent simulator,
    # 1024 px: 0.098 at 50 % gold without drift). The typical level is the one the typical
    # count arrived at (specimen.typical_level)
    from dataclasses import replace
    detector, movies = near_axis
    rng = np.random.default_rng(34)
    spec = replace(random_specimen(rng, carbon=0.6, hole=False, ice=0.05),
                   carbon_angle=200.0, carbon_curvature=0.5, carbon_transmission=0.03)
    gold = specimen_movie(tmp_path / 'foil.mrc', detector.gain, spec, rng, FRAMES, drift=0.0)
    _assert_exact_residual_as_flat(detector, movies['plain'], gold, 1.3)
    robust = EstimatorSettings(method='robust')
    gain_mode = estimate_gain([gold], robust)
    assert 0.55 < gain_mode.defects.mean() < 0.85         # the foil and its rim
    assert _r2(gain_mode, detector) >= 0.3 * _r2(estimate_gain([movies['plain']], robust),
                                                 detector)


@pytest.mark.parametrize('drift, ratio', [(0.0, 1.3), (0.3, 1.9)])
def test_a_gold_sliver_along_the_frames_edge_is_not_taken_for_exposed(near_axis, tmp_path,
                                                                      drift, ratio):
    # a hole in gold foil (T 0.03) whose rim passes 3 pixels inside the frame's left edge:
    # a sliver of gold a few pixels wide along it, which the specimen model's median (21
    # pixels, the window reflected at the frame's edge) passes over; its pixels, with one
    # count where the model expects 20, took values far off in the map: the exact
    # reference's residual std 0.16 / 0.11 and the paper's std flag (an independent
    # simulator, 1024 px: 0.098). A cell that recorded far less than the model is dim
    # (specimen._missed_dark): 0.011 / 0.013. With drift the rim's pixels, exposed in
    # some frames, still stand off (1.5x the std of the movie without gold; open)
    from scipion_gain.simulate import simulate_frames
    detector, movies = near_axis
    margin, radius = 8, 0.465 * SIZE
    y, x = np.mgrid[0:SIZE + 2 * margin, 0:SIZE + 2 * margin].astype(np.float32)
    hole = (y - SIZE / 2 - margin) ** 2 + (x - radius - 3 - margin) ** 2 < radius ** 2
    image = np.where(hole, 1.0, 0.03).astype(np.float32) * (1 + 0.1 * x / SIZE)
    sliver = str(tmp_path / 'sliver.mrc')
    write_movie(sliver, simulate_frames((SIZE, SIZE), FRAMES, detector.gain, dose=1.0, rng=36,
                                        specimen=image, drift=drift),
                shape=(SIZE, SIZE), n_frames=FRAMES)
    _assert_exact_residual_as_flat(detector, movies['plain'], sliver, ratio)


def _assert_exact_residual_as_flat(detector, plain, movie, ratio):
    """The robust residual map of ``movie`` with the exact reference: the paper's flags
    quiet, its std within ``ratio`` of the movie ``plain``'s (no nearly opaque specimen)."""
    stats = []
    for path in (plain, movie):
        result = estimate_gain([path], EstimatorSettings(method='robust'),
                               gain_reference=detector.correction)
        stats.append(map_statistics(result.gain, mask=~result.defects))
    assert not stats[1]['flagged'], stats[1]['flags']
    assert stats[1]['statistics']['std'] <= ratio * stats[0]['statistics']['std']


@pytest.mark.parametrize('angle', [-0.66, 88.0])
def test_a_gold_line_near_an_axis_keeps_the_r2_of_a_movie_without(near_axis, tmp_path, angle):
    # a gold line (a strip of 5 % of the frame, T 0.05) 0.66 degrees off a column / 2
    # degrees off a row: its two edges 26 pixels apart. Measured on a 10 % texture detector
    # (512 px): R^2 0.003 / 0.20 against 0.39 without it, the profile took the second edge
    # as a line step (its exclusion undone by the first edge's, or never traced); now
    # 0.43 / 0.38. Here: the same specimen as the movie without an edge
    from dataclasses import replace
    detector, movies = near_axis
    rng = np.random.default_rng(32)
    spec = replace(random_specimen(rng, carbon=0.05, hole=False, ice=0.05), carbon_gap=0.4,
                   carbon_angle=angle, carbon_curvature=0.0, carbon_transmission=0.05)
    line = specimen_movie(tmp_path / 'line.mrc', detector.gain, spec, rng, FRAMES)
    robust = EstimatorSettings(method='robust')
    plain = _r2(estimate_gain([movies['plain']], robust), detector)
    result = estimate_gain([line], robust)
    assert 0.04 < result.defects.mean() < 0.2          # the line and its rim, not estimable
    assert _r2(result, detector) >= 0.85 * plain


@pytest.mark.parametrize('angle', [0.0, 90.0])
def test_a_gold_line_on_a_pixel_axis_is_left_out_not_taken_for_a_readout_step(near_axis,
                                                                              tmp_path, angle):
    # a gold strip (T 0.05) along a pixel line to within a pixel: every band cuts it alike,
    # so the line profile took it for a readout step 20 times deep, and the map had
    # 1 / transmission in its lines (an independent simulator, 1024 px, a 38 px strip at
    # 90.0 / 89.96 / 180.0 degrees: the exact reference's residual std 0.56-0.61 and the
    # paper's flags, gain-mode R^2 0.000 against 0.23). A line that weak is no sensor's
    # (specimen._detector_lines): the strip is dim, left out
    from dataclasses import replace
    detector, movies = near_axis
    rng = np.random.default_rng(37)
    spec = replace(random_specimen(rng, carbon=0.05, hole=False, ice=0.05), carbon_gap=0.4,
                   carbon_angle=angle, carbon_curvature=0.0, carbon_transmission=0.05)
    line = specimen_movie(tmp_path / 'line.mrc', detector.gain, spec, rng, FRAMES)
    _assert_exact_residual_as_flat(detector, movies['plain'], line, 1.3)
    robust = EstimatorSettings(method='robust')
    result = estimate_gain([line], robust)
    assert 0.04 < result.defects.mean() < 0.2          # the line and its rim, not estimable
    assert _r2(result, detector) >= 0.85 * _r2(estimate_gain([movies['plain']], robust),
                                               detector)


def test_only_lines_no_sensor_has_are_taken_out_of_the_line_profile():
    from scipion_gain.estimator.specimen import _detector_lines
    rng = np.random.default_rng(5)
    profile = 0.01 * rng.standard_normal(300)
    profile[200:] += 0.05                        # a readout step: the sensor's, kept
    assert np.array_equal(_detector_lines(profile, 21), profile)
    strip = profile.copy()
    strip[100:130] -= np.log(20.0)               # a gold strip along the lines (T 0.05)
    strip[130:] += 0.4                           # its sides linked only through its rims
    out = _detector_lines(strip, 21)
    # the strip and 10 lines either side interpolated, the far side levelled back
    assert np.abs(out[90:140] - profile[90:140]).max() < 0.05
    np.testing.assert_allclose(out[140:] - out[140:].mean(), profile[140:] - profile[140:].mean(),
                               atol=1e-12)
    assert abs(out[140:170].mean() - profile[140:170].mean()) < 0.02


def test_a_strip_steeper_than_the_traced_paths_is_left_to_the_coarse_cuts(tmp_path):
    # a carbon strip (7.5 % of the frame, T 0.5) 7.5 degrees off a column at 1024 px moves
    # 135 pixels over the frame, beyond the traced paths' 6 cells (66 pixels): partial
    # straight paths matched it over a few bands each, and their exclusions missed it in the
    # others. Measured on a 10 % texture detector with a steep ramp: R^2 0.226 against 0.416
    # without the strip (a gold strip: 0.105), now 0.431 (0.343). Here the column profile:
    # its largest error 0.094 before, 0.043 now (0.023 without the strip)
    from dataclasses import replace
    import mrcfile
    from scipion_gain.estimator import line_profiles
    size = 1024
    detector = simulate_gain((size, size), rng=5, sectors=8, sector_spread=0.03,
                             column_spread=0.03, row_spread=0.015, pixel_scatter=0.02)
    rng = np.random.default_rng(44)
    spec = replace(random_specimen(rng, carbon=0.075, hole=False, ice=0.05), carbon_gap=0.3,
                   carbon_angle=7.5, carbon_curvature=0.0, carbon_transmission=0.5,
                   ice=0.25, ice_tilt=0.9, ice_angle=30.0)
    path = specimen_movie(tmp_path / 'strip.mrc', detector.gain, spec, rng, FRAMES)
    with mrcfile.open(path) as movie:
        total = movie.data.sum(axis=0, dtype=np.float64)
    cell = line_profiles.coarse_bin(total.shape, line_profiles.counts_per_pixel(total))
    assert not line_profiles.sloped_edges(total, cell, 1)
    columns, _ = line_profiles.line_profiles(total)
    truth = np.log(detector.components['sectors'][0] * detector.components['columns'][0])
    error = columns - truth            # less its smooth part (the flat field, the ice's ramp)
    error -= np.polyval(np.polyfit(np.arange(size), error, 2), np.arange(size))
    assert np.abs(error).max() < 0.06, np.abs(error).max()


def test_a_readout_step_over_part_of_the_frame_is_not_taken_for_an_edge():
    """A sector boundary over the lower half of the frame only, and a column gradient
    over the top third: detector structure on fixed pixel lines, kept in the profile."""
    from scipion_gain.estimator.line_profiles import (coarse_bin, counts_per_pixel,
                                                      line_profiles, sloped_edges)
    detector = simulate_gain((SIZE, SIZE), rng=3, sectors=4, sector_spread=0.05,
                             column_spread=0.03, row_spread=0.015, pixel_scatter=0.01)
    gain = detector.gain.copy()
    gain[SIZE // 2:, SIZE // 3:] *= 1.08
    gain[:SIZE // 3, :] *= np.linspace(0.95, 1.05, SIZE)[None, :]
    spec = random_specimen(4, carbon=False, hole=False)
    total = sum(np.asarray(frame, np.float64) for frame in
                simulate_frames((SIZE, SIZE), FRAMES, gain, dose=1.0, rng=5, specimen=spec))
    size = coarse_bin(total.shape, counts_per_pixel(total))
    assert sloped_edges(total, size, 1) == [] and sloped_edges(total, size, 0) == []
    columns, _ = line_profiles(total, size)
    true = np.log(gain).mean(axis=0)
    at = SIZE // 3

    def step(profile):
        return profile[at:at + 8].mean() - profile[at - 8:at].mean()
    assert abs(step(columns) - step(true)) < 0.4 * abs(step(true))


def test_a_dead_pixel_under_gold_stays_a_defect_of_the_session(near_axis, tmp_path):
    """Under gold a pixel enters SME as a stand-in; a dead pixel there recorded nothing,
    and must add nothing to the session's sums: with a stand-in's small share in the
    numerator and the other movies' equalized zeros in the denominator it became a
    'good' pixel with a correction in the hundreds."""
    detector, movies = near_axis
    robust = EstimatorSettings(method='robust')
    under_gold = np.argwhere(estimate_gain([movies['gold']], robust).defects)
    dead = np.zeros(detector.gain.shape, bool)
    dead[tuple(under_gold[::max(1, len(under_gold) // 5)][:5].T)] = True
    gain = np.where(dead, 0.0, detector.gain)
    accumulator = GainAccumulator()
    for name, seed, angle, transmission in (('gold', 33, 92.5, 0.05), ('plain', 32, None, None),
                                            ('other', 34, None, None)):
        movie = _near_axis_movie(tmp_path, gain, name, seed, angle, transmission)
        accumulator.add(estimate_gain([movie], robust))
    defects = accumulator.defects
    assert defects[dead].all()
    assert accumulator.gain[~defects].max() < 3.0


def test_the_expected_sums_are_the_mean_of_many_thinning_draws():
    # Eq. 7's sums of a thinned counting sum: their expectation over all draws (from one
    # draw's SME tables) against the mean of 400 draws mapped with the same tables
    from scipion_gain.estimator import thinning
    from scipion_gain.estimator.sme import scaled_count_tables
    rng = np.random.default_rng(3)
    shape = (64, 96)
    gain = 1.0 + 0.05 * rng.standard_normal(shape[1])[None, :] + 0.02 * rng.standard_normal(shape)
    model = np.where(np.arange(shape[1])[None, :] < 40, 12.0, 6.0) * np.ones(shape)
    whole = rng.poisson(model * gain).astype(np.int32)
    target = 5.0
    draw = rng.binomial(whole, target / model).astype(np.float32)
    columns, rows, _, _ = scaled_count_tables(draw, draw.copy(), sigma=1.0)
    numerator, denominator = thinning._expected_sums(whole, whole, model, target, columns, rows)
    half_c, half_r = thinning._filled_tables(columns), thinning._filled_tables(rows)
    draws = rng.binomial(whole[None], (target / model)[None], size=(400,) + shape)
    line, col = np.arange(shape[0])[:, None], np.arange(shape[1])[None, :]
    keys = np.minimum(draws, columns.shape[1] - 1)
    mapped = np.where(draws > 0, draws * (half_c[col, keys] + half_r[line, keys]),
                      half_c[col, 0] + half_r[line, 0])
    assert np.allclose(numerator, (target / model) * whole)
    # 400 draws: the mean's own scatter is 1/20 of a draw's; the expectation sits within it
    spread = mapped.std(axis=0) / np.sqrt(400)
    assert np.mean(np.abs(denominator - mapped.mean(axis=0)) < 4 * spread + 1e-9) > 0.999


def test_a_thinning_draw_in_bands_of_its_own_streams_is_binomial_and_repeatable():
    # the draw is made in THINNING_STREAMS bands of rows, each from a child stream of the
    # generator on its own thread: the same draw from the same seed, each band its own
    # (not a copy of the other's), each pixel Binomial(N, target / model) (mean N p,
    # variance N p (1 - p)), a raw sum's draw its own counts and a reference's sum's draw
    # the counts times its factor
    from scipion_gain.estimator import thinning
    shape = (160, 200)
    whole = np.full(shape, 20, np.int32)
    model = np.where(np.arange(shape[1])[None, :] < 100, 40.0, 25.0) * np.ones(shape)
    target = 10.0

    def draw(seed, total=whole, own=True):
        return next(thinning._thinned(total, whole, model, target, 1,
                                      np.random.default_rng(seed), own=own))

    first, kept = draw(0)
    assert kept is first and first.dtype == np.float32
    again, _ = draw(0)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, draw(1)[0])
    assert not np.array_equal(first[:80], first[80:])
    for columns, p in ((slice(0, 100), 0.25), (slice(100, None), 0.4)):
        values = first[:, columns].astype(np.float64)
        for rows in (slice(0, 80), slice(80, None)):     # each band on its own
            part = values[rows]
            # 8000 pixels: the mean within 4 of its standard errors, the variance within 4
            # of its own (about sqrt(2 / n) of it)
            assert abs(part.mean() - 20 * p) < 4 * np.sqrt(20 * p * (1 - p) / part.size)
            assert abs(part.var() / (20 * p * (1 - p)) - 1) < 4 * np.sqrt(2.0 / part.size)
    scaled, counts = draw(0, whole * 1.5, own=False)
    assert np.array_equal(counts, first) and np.allclose(scaled, 1.5 * first)


def test_the_expected_sums_over_the_pixels_in_play_are_those_over_the_whole_block():
    # once few pixels are still in play the levels add only at theirs: the same terms in
    # the same order as over the whole block (the pixels' zeros, a pixel kept whole, counts
    # above the top level included), bit for bit
    from scipion_gain.estimator import thinning
    rng = np.random.default_rng(21)
    shape, top = (24, 70), 12
    counts = rng.poisson(4.0, shape).astype(np.float64)
    counts[0, :4] = (0, 15, 40, 3)
    share = np.clip(rng.uniform(0.3, 1.2, shape), 0.0, 1.0)
    share[1, :3] = 1.0
    scaled_columns = rng.uniform(0.5, 2.0, (shape[1], top + 1)) * np.arange(top + 1)
    scaled_rows = rng.uniform(0.5, 2.0, (shape[0], top + 1)) * np.arange(top + 1)
    zero, mapped = thinning._expected_block(counts, share, scaled_columns, scaled_rows, top)
    chances = thinning._chances(counts, share, top)
    certain, expected_zero = next(chances)
    expected = np.zeros(shape)
    for value, (chance, scale, where) in enumerate(chances, 1):
        assert where is None
        expected += (scaled_columns[:, value][None, :] / scale
                     + scaled_rows[:, value][:, None] / scale) * chance
    whole = certain & (counts >= 1) & (counts <= top)
    line, column = np.nonzero(whole)
    value = counts[whole].astype(int)
    expected[whole] = scaled_columns[column, value] + scaled_rows[line, value]
    np.testing.assert_array_equal(zero, expected_zero)
    np.testing.assert_array_equal(mapped, expected)
    assert (mapped[0, 1:3] > 0).all() and mapped[0, 0] == 0


def test_the_line_fit_gives_the_same_profile_either_way_it_eliminates():
    # the profile eliminated first (few pieces) and the offsets eliminated first (many)
    # solve the same normal equations
    from scipion_gain.estimator import line_profiles as fit
    rng = np.random.default_rng(8)
    bands, length = 12, 200
    profile = 0.03 * rng.standard_normal(length)
    level = rng.uniform(2, 3, size=(bands, 1))
    logs = level + profile[None, :] + 0.01 * rng.standard_normal((bands, length))
    excluded = np.zeros((bands, length), bool)
    excluded[3:6, 80:90] = True                       # an edge's gap in three bands
    weights = rng.uniform(50, 100, size=(bands, length))
    solved = []
    for limit in (10 ** 6, 0):
        fit.PIECES_BY_PROFILE, saved = limit, fit.PIECES_BY_PROFILE
        try:
            solved.append(fit.line_profile(logs, weights, excluded))
        finally:
            fit.PIECES_BY_PROFILE = saved
    assert np.max(np.abs(solved[0] - solved[1])) < 1e-10
    assert np.corrcoef(solved[0], profile)[0, 1] > 0.95
    # the offsets' system a panel of columns at a time (several panels, one, and panels
    # that do not divide the length), its product a few pieces at a time: the same profile
    paneled = []
    for columns, pieces in ((length, 10 ** 6), (7, 5), (64, 2)):
        saved = (fit.PIECES_BY_PROFILE, fit.PANEL_COLUMNS, fit.PIECES_PER_PRODUCT)
        fit.PIECES_BY_PROFILE, fit.PANEL_COLUMNS, fit.PIECES_PER_PRODUCT = 0, columns, pieces
        try:
            paneled.append(fit.line_profile(logs, weights, excluded))
        finally:
            fit.PIECES_BY_PROFILE, fit.PANEL_COLUMNS, fit.PIECES_PER_PRODUCT = saved
    assert max(np.max(np.abs(p - solved[1])) for p in paneled) < 1e-12


def _pieces_case(rng, bands=10, length=150):
    """Log-levels, weights and pieces of a line fit with pieces of every span: random cuts
    (an edge's gap of 1 to 12 columns) in most bands."""
    logs = rng.uniform(2, 3, size=(bands, 1)) + 0.03 * rng.standard_normal(length)[None, :]
    logs = logs + 0.01 * rng.standard_normal((bands, length))
    excluded = np.zeros((bands, length), bool)
    for band in range(bands):
        for start in rng.integers(0, length, size=rng.integers(0, 4)):
            excluded[band, start:start + rng.integers(1, 12)] = True
    starts = np.concatenate([np.ones((bands, 1), bool), excluded[:, 1:] != excluded[:, :-1]],
                            axis=1) | excluded
    piece = np.cumsum(starts.ravel()).reshape(bands, length) - 1
    weights = np.where(excluded, 0.0, rng.uniform(50, 100, size=(bands, length)))
    return logs, weights, piece, int(piece.max()) + 1


def test_the_offsets_elimination_solves_the_least_squares_problem_it_states():
    # sum w (log - profile - offset)^2 + penalty sum (profile step)^2, solved as one dense
    # least-squares problem (the profile's mean is free, pinned there at 0 and by a tiny
    # ridge in the fit): the same profile up to its mean, the offsets up to the opposite
    # shift
    from scipy import linalg
    from scipion_gain.estimator import line_profiles as fit
    rng = np.random.default_rng(21)
    logs, weights, piece, n_pieces = _pieces_case(rng)
    bands, length = logs.shape
    penalty = fit.SMOOTHNESS * float(np.median(weights.sum(axis=0)))
    cells = np.flatnonzero(weights.ravel() > 0)
    # one more row, the profile's sum = 0: picks the mean-0 solution (the mean is free)
    design = np.zeros((cells.size + length, length + n_pieces))
    design[-1, :length] = 1.0
    root = np.sqrt(weights.ravel()[cells])
    design[np.arange(cells.size), cells % length] = root
    design[np.arange(cells.size), length + piece.ravel()[cells]] = root
    steps = np.arange(length - 1)
    design[cells.size + steps, steps] = -np.sqrt(penalty)
    design[cells.size + steps, steps + 1] = np.sqrt(penalty)
    target = np.r_[root * logs.ravel()[cells], np.zeros(length)]
    # the pieces with weight only (an empty column leaves lstsq 1e-5 off)
    used = np.bincount(piece.ravel(), weights.ravel(), minlength=n_pieces) > 0
    exact = linalg.lstsq(design[:, np.r_[np.ones(length, bool), used]], target)[0]
    saved = (fit.PIECES_BY_PROFILE, fit.PANEL_COLUMNS, fit.PIECES_PER_PRODUCT)
    fit.PIECES_BY_PROFILE, fit.PANEL_COLUMNS, fit.PIECES_PER_PRODUCT = 0, 32, 4
    try:
        profile, offsets = fit._solve_pieces(logs, weights, piece, n_pieces)
    finally:
        fit.PIECES_BY_PROFILE, fit.PANEL_COLUMNS, fit.PIECES_PER_PRODUCT = saved
    shift = profile.mean() - exact[:length].mean()
    assert np.max(np.abs(profile - shift - exact[:length])) < 1e-9
    assert np.max(np.abs(offsets[used] + shift - exact[length:])) < 1e-9


def test_the_offsets_elimination_falls_back_where_cholesky_fails(monkeypatch):
    # a system Cholesky refuses (near-singular in floating point) is solved as symmetric
    # indefinite, from the whole system made again: the same profile where both succeed
    from scipy import linalg
    from scipion_gain.estimator import line_profiles as fit
    logs, weights, piece, n_pieces = _pieces_case(np.random.default_rng(5))
    monkeypatch.setattr(fit, 'PIECES_BY_PROFILE', 0)
    monkeypatch.setattr(fit, 'PANEL_COLUMNS', 40)
    direct, _ = fit._solve_pieces(logs, weights, piece, n_pieces)

    def refused(panels):
        panels[0][1][:] = np.nan             # what a failed factor leaves: made again
        raise linalg.LinAlgError("not positive definite")
    monkeypatch.setattr(fit, '_factor_panels', refused)
    fallback, _ = fit._solve_pieces(logs, weights, piece, n_pieces)
    assert np.max(np.abs((fallback - fallback.mean()) - (direct - direct.mean()))) < 1e-9


def _dark_carbon_twins(folder, seed):
    """(detector, the movie with dark carbon, its twin without): carbon of transmission 0.3
    over 45 % of the frame, one specimen rendered with and without it over a steep ice
    ramp, the same frame noise; a detector with 8 unequal sectors, line patterns and a
    texture (benchmarks' 'patterned')."""
    from dataclasses import replace
    from scipion_gain.simulate import Specimen, render_specimen
    detector = simulate_gain((SIZE, SIZE), rng=seed, sectors=8, sector_spread=0.03,
                             column_spread=0.03, row_spread=0.015, flat_field=0.05,
                             pixel_scatter=0.02, texture=0.1, unequal_sectors=0.5)
    base = Specimen(ice=0.15, ice_tilt=0.9, ice_angle=40.0 + 50 * seed, particle_density=0.1)
    paths = []
    for name, spec in (('dark', replace(base, carbon=0.45, carbon_transmission=0.3,
                                        carbon_angle=30.0)), ('twin', base)):
        image = render_specimen(spec, (SIZE, SIZE), seed * 11 + 1, margin=FRAMES + 1)
        path = str(folder / f'{name}_{seed}.mrc')
        write_movie(path, simulate_frames((SIZE, SIZE), FRAMES, detector.gain, dose=1.0,
                                          rng=seed * 11 + 2, specimen=image.image, drift=0.5),
                    shape=(SIZE, SIZE), n_frames=FRAMES)
        paths.append(path)
    return detector, paths


def test_dark_carbon_costs_the_exact_residual_little_more_than_its_counts(tmp_path):
    # with the exact reference the residual map is the lines' noise; dark carbon makes the
    # thinning keep fewer counts of every pixel, and one draw's SME tables carry that
    # draw's noise: 1.36x the twin's std with one draw's tables, 1.20x with the mean of
    # several draws' (seeds 1-8: 1.25-1.36x and 1.12-1.21x; the counts alone would allow
    # about 1.07x of the twin's line noise)
    detector, (dark, twin) = _dark_carbon_twins(tmp_path, 5)
    stds = []
    for path in (dark, twin):
        result = estimate_gain([path], EstimatorSettings(method='robust'),
                               gain_reference=detector.correction)
        stats = map_statistics(result.gain, mask=~result.defects)
        assert not stats['flagged']
        stds.append(stats['statistics']['std'])
    assert stds[0] <= 1.3 * stds[1]


def test_a_light_carbon_edge_off_an_axis_is_cut_in_every_band_it_crosses():
    """Carbon of T 0.8 (a 0.22 step) 14 degrees off a column under crowded particles: the
    coarse cells' step falls below CUT_Z in about 40 % of the bands it crosses; an uncut band
    links the two sides and the column profile takes part of the carbon's step (on seeds
    7-9: 39-42 of 93 bands uncut, the column profile's error std 0.032-0.040 before the edge
    was followed across the bands, 1-7 uncut and 0.014-0.024 after; about 0.015 is the
    particles' and the ramp's share)."""
    from scipion_gain.estimator import line_profiles
    from scipion_gain.simulate import Specimen, render_specimen
    size = 1024
    detector = simulate_gain((size, size), rng=5, sectors=8, sector_spread=0.03,
                             column_spread=0.03, row_spread=0.015, pixel_scatter=0.02)
    spec = Specimen(ice=0.2, ice_tilt=0.9, ice_angle=30.0, particle_density=0.45,
                    particle_radius=0.012, carbon=0.45, carbon_transmission=0.8,
                    carbon_angle=14.0, carbon_curvature=0.0)
    image = render_specimen(spec, (size, size), 8, margin=12)
    total = sum(np.asarray(frame, np.float64) for frame in
                simulate_frames((size, size), FRAMES, detector.gain, dose=1.0, rng=8,
                                specimen=image.image, drift=0.5, drift_angle=0.0))
    cell = line_profiles.coarse_bin(total.shape, line_profiles.counts_per_pixel(total))
    cut_x, _ = line_profiles.specimen_cuts(total, cell)
    carbon = image.crop(image.carbon)
    # the cell where the carbon starts in each band's middle row (the frame's first view)
    edge = np.argmax(carbon[cell // 2::cell][:cut_x.shape[0]], axis=1) // cell
    uncut = [band for band, at in enumerate(edge) if not cut_x[band, max(at - 2, 0):at + 2].any()]
    assert len(uncut) <= 3, uncut
    columns, _ = line_profiles.line_profiles(total)
    error = columns - np.log(detector.components['sectors'][0] *
                             detector.components['columns'][0])
    error -= np.polyval(np.polyfit(np.arange(size), error, 2), np.arange(size))
    assert error.std() < 0.025, error.std()
