"""The simulator's options do what they say (cheap sizes only)."""
import numpy as np
import pytest

from scipion_gain.io import open_movie
from scipion_gain.simulate import (DEFAULT_SIZES, WRONG_REFERENCES, Specimen, Spoiler,
                                   random_specimen, render_specimen, session_references,
                                   simulate_frames, simulate_gain, smooth_field, write_movie,
                                   wrong_reference)

SHAPE = (96, 128)


@pytest.fixture(scope='module')
def detector():
    return simulate_gain(SHAPE, rng=4, pixel_scatter=0.02, dead_pixels=3)


def plain(**options):
    """A specimen with nothing but what ``options`` add (no ice, no particles)."""
    return Specimen(**dict(dict(ice=0.0, particle_density=0.0), **options))


# ------------------------------------------------------------------ gains
def test_gain_texture_is_an_extra_factor_drawn_last():
    plain_gain = simulate_gain((64, 64), rng=1, pixel_scatter=0.01)
    textured = simulate_gain((64, 64), rng=1, pixel_scatter=0.01, texture=0.03)
    texture = textured.components['texture']
    assert 'texture' not in plain_gain.components
    np.testing.assert_allclose(textured.gain, plain_gain.gain * texture, rtol=1e-5)
    assert abs(np.std(texture) - 0.03) < 1e-3
    # correlated over about a pixel: neighbours agree, far pixels do not
    t = texture - 1
    near = np.corrcoef(t[:, :-1].ravel(), t[:, 1:].ravel())[0, 1]
    far = np.corrcoef(t[:, :-8].ravel(), t[:, 8:].ravel())[0, 1]
    assert near > 0.4 and abs(far) < 0.1


def test_smooth_field_is_smooth_and_normalised():
    field = smooth_field((200, 150), 40, rng=2)
    assert field.shape == (200, 150)
    assert abs(field.mean()) < 1e-5 and abs(field.std() - 1) < 1e-4
    assert np.abs(np.diff(field, axis=1)).max() < 0.2  # no pixel-scale jumps


# ------------------------------------------------------------------ specimens
@pytest.mark.parametrize('angle', [0.0, 35.0, 120.0, 250.0])
def test_carbon_edge_angle_fraction_and_transmission(angle):
    spec = plain(carbon=0.3, carbon_angle=angle, carbon_transmission=0.6)
    image = render_specimen(spec, (128, 128), rng=1)
    assert abs(image.carbon_fraction - 0.3) < 0.01
    carbon = image.carbon
    # the edge's normal points into the carbon along the angle (x right, y down)
    gy, gx = np.gradient(carbon.astype(float))
    direction = np.rad2deg(np.arctan2(gy.sum(), gx.sum())) % 360
    assert min(abs(direction - angle), 360 - abs(direction - angle)) < 2
    # two levels, carbon at 0.6 of the ice, and a sharp edge (a one-pixel ramp)
    values = image.image
    ice_level, carbon_level = np.median(values[~carbon]), np.median(values[carbon])
    assert carbon_level / ice_level == pytest.approx(0.6, abs=1e-4)
    between = (values > carbon_level * 1.001) & (values < ice_level * 0.999)
    assert between.sum() <= 2 * 128


def test_curved_carbon_edge_keeps_its_fraction():
    straight = render_specimen(plain(carbon=0.25, carbon_angle=90), (128, 128), rng=1)
    curved = render_specimen(plain(carbon=0.25, carbon_angle=90, carbon_curvature=0.5),
                             (128, 128), rng=1)
    assert abs(curved.carbon_fraction - 0.25) < 0.01
    # edge row per column: constant when straight, bent when curved
    straight_edge = straight.carbon.argmax(axis=0)
    curved_edge = curved.carbon.argmax(axis=0)
    assert np.ptp(straight_edge) <= 1 and np.ptp(curved_edge) > 8


def test_hole_is_brighter_flat_and_free_of_particles():
    spec = Specimen(ice=0.1, particle_density=0.4, contrast=0.1, hole=0.2,
                    hole_brightness=1.3, hole_angle=45, texture=0.02)
    image = render_specimen(spec, (128, 128), rng=3)
    assert abs(image.hole_fraction - 0.2) < 0.01
    inside = np.pad(image.hole, 1)  # pixels whose neighbours are all in the hole
    core = image.hole & inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
    hole_values = image.image[core]
    assert np.ptp(hole_values) < 1e-5  # vacuum: no particles, no ice, no texture
    assert hole_values[0] / image.image[~image.hole].mean() == pytest.approx(1.3, rel=0.01)
    ys, xs = np.nonzero(image.hole)
    assert ys.mean() > 64 and xs.mean() > 64  # at 45 degrees: lower right


def test_particles_from_sparse_to_crowded_and_ice_amplitude():
    sparse = render_specimen(Specimen(ice=0.0, particle_density=0.02), (128, 128), rng=1)
    crowded = render_specimen(Specimen(ice=0.0, particle_density=0.6), (128, 128), rng=1)
    dark = [np.mean(image.image < 0.97 * np.median(image.image)) for image in (sparse, crowded)]
    assert dark[0] < 0.1 < 0.3 < dark[1]
    ice = render_specimen(Specimen(ice=0.15, particle_density=0.0), (128, 128), rng=1)
    assert np.ptp(ice.image) / ice.image.mean() == pytest.approx(0.15, rel=0.05)


def test_random_specimens_are_seeded_and_forced_parts_stay_in_range():
    assert random_specimen(7) == random_specimen(7)
    assert random_specimen(7) != random_specimen(8)
    specs = [random_specimen(seed) for seed in range(60)]
    assert 10 < sum(s.carbon > 0 for s in specs) < 50
    assert 5 < sum(s.hole > 0 for s in specs) < 40
    for s in specs:
        assert 0.02 <= s.ice <= 0.2 and s.carbon <= 1 / 3 + 1e-9
        assert s.carbon == 0 or 0.5 <= s.carbon_transmission <= 0.85
    forced = random_specimen(7, carbon=0.3, hole=False, texture=True)
    assert forced.carbon == 0.3 and forced.hole == 0 and forced.texture > 0
    assert forced.ice == random_specimen(7).ice  # forcing leaves the other draws alone


def test_frames_drift_over_a_rendered_specimen(detector):
    spec = plain(carbon=0.3, carbon_angle=0, carbon_transmission=0.5)
    frames = list(simulate_frames(SHAPE, 5, np.ones(SHAPE), dose=200, rng=1, specimen=spec,
                                  drift=2.0, drift_angle=180.0))
    # the edge is vertical; drifting the view left moves it right in the frame
    edges = [int(np.argmax(np.diff(frame.mean(axis=0).astype(float)) < -50)) for frame in frames]
    assert edges == sorted(edges) and edges[-1] - edges[0] == 8


# ------------------------------------------------------------------ frames as users get them
def test_pre_corrected_frames_are_exactly_counts_times_correction(detector):
    correction = detector.correction
    raw = list(simulate_frames(SHAPE, 3, detector.gain, dose=1.5, rng=9))
    corrected = list(simulate_frames(SHAPE, 3, detector.gain, dose=1.5, rng=9,
                                     correction=correction))
    half = list(simulate_frames(SHAPE, 3, detector.gain, dose=1.5, rng=9, correction=correction,
                                output='float16'))
    rounded = list(simulate_frames(SHAPE, 3, detector.gain, dose=1.5, rng=9,
                                   correction=correction, output='rounded'))
    for counts, frame, frame16, whole in zip(raw, corrected, half, rounded):
        assert frame.dtype == np.float32 and frame16.dtype == np.float16
        assert np.array_equal(frame, counts.astype(np.float32) * correction)
        assert np.array_equal(frame16, (counts.astype(np.float32) * correction).astype(np.float16))
        assert whole.dtype == np.uint16
        assert np.array_equal(whole, np.rint(counts.astype(np.float32) * correction))
    # float16 rounding: relative error within half a unit in the last place (2^-11)
    nonzero = corrected[0] > 0
    error = np.abs(half[0][nonzero].astype(np.float32) / corrected[0][nonzero] - 1)
    assert 0 < error.max() <= 2.0 ** -11


def test_summed_micrograph_is_one_gain_normalised_frame(detector):
    raw = list(simulate_frames(SHAPE, 6, detector.gain, dose=1.0, rng=5))
    summed = list(simulate_frames(SHAPE, 6, detector.gain, dose=1.0, rng=5, summed=True,
                                  correction=detector.correction))
    assert len(summed) == 1 and summed[0].dtype == np.float32
    expected = np.sum([f.astype(np.float64) for f in raw], axis=0) * detector.correction
    np.testing.assert_allclose(summed[0], expected, rtol=1e-6)
    counts = list(simulate_frames(SHAPE, 6, detector.gain, dose=1.0, rng=5, summed=True))
    assert counts[0].dtype == np.uint16
    assert np.array_equal(counts[0], np.sum(raw, axis=0))


def test_spoiled_frames_hold_hot_pixels_nan_inf_and_zero_frames(detector):
    spoiler = Spoiler.random(SHAPE, 6, rng=2, hot_pixels=2, nan_patches=1, inf_patches=1,
                             patch_size=10, zero_frames=1)
    frames = list(simulate_frames(SHAPE, 6, detector.gain, dose=1.0, rng=5, spoil=spoiler))
    assert all(f.dtype == np.float32 for f in frames)  # counts promoted for NaN/inf
    (nan_frame, *_), (inf_frame, *_) = spoiler.patches
    for index, frame in enumerate(frames):
        assert np.isnan(frame).sum() == (100 if index == nan_frame else 0)
        assert np.isposinf(frame).sum() == (100 if index == inf_frame else 0)
        for row, col in spoiler.hot:
            assert frame[row, col] == 50000
        finite = np.isfinite(frame)
        hot = np.zeros(SHAPE, bool)
        hot[tuple(zip(*spoiler.hot))] = True
        if index in spoiler.zero_frames:
            assert not frame[finite & ~hot].any()
        else:
            assert frame[finite & ~hot].max() < 100
    only_hot = list(simulate_frames(SHAPE, 2, detector.gain, rng=5, spoil=dict(hot_pixels=1)))
    assert all(f.dtype == np.uint16 for f in only_hot)  # 50000 does not fit uint8


@pytest.mark.parametrize('output', ['float16', 'rounded', None])
def test_written_movies_read_back_as_simulated(detector, tmp_path, output):
    frames = list(simulate_frames(SHAPE, 3, detector.gain, rng=5, correction=detector.correction,
                                  output=output))
    path = tmp_path / 'movie.mrc'
    write_movie(path, iter(frames), shape=SHAPE, n_frames=3)
    with open_movie(str(path)) as movie:
        back = [movie.read_frame(i) for i in range(movie.n_frames)]
    assert len(back) == 3
    for frame, read in zip(frames, back):
        assert np.array_equal(frame.astype(np.float32), read)


# ------------------------------------------------------------------ wrong references
@pytest.mark.parametrize('case', WRONG_REFERENCES)
def test_true_residual_is_mean_one_and_correction_over_reference(detector, case):
    correction = detector.correction if case != 'rot90' else detector.correction[:, :96]
    made = wrong_reference(correction, case, rng=3, amount=0.5 if case == 'growing' else 1.0)
    assert made.reference.dtype == np.float32 and made.residual.dtype == np.float32
    assert made.reference.mean() == pytest.approx(1, abs=1e-5)
    assert made.residual.mean() == pytest.approx(1, abs=1e-5)
    ratio = correction.astype(np.float64) / made.reference
    np.testing.assert_allclose(made.residual, ratio / ratio.mean(), rtol=1e-5)
    if case == 'exact':
        assert np.allclose(made.residual, 1)
    else:
        assert np.std(made.residual) > 0.005


def test_line_pattern_and_sector_step_have_the_asked_size(detector):
    columns = wrong_reference(detector.correction, 'columns', rng=1, size=0.02)
    log = np.log(columns.residual.astype(np.float64))
    assert np.ptp(log, axis=0).max() < 1e-5  # the same in every row
    assert np.std(log[0]) == pytest.approx(0.02, rel=1e-3)
    sector = wrong_reference(detector.correction, 'sector', rng=1, size=0.03, sectors=4)
    profile = sector.residual[0]
    levels = np.unique(np.round(profile, 5))
    assert len(levels) == 2
    step, which = sector.details['sector']['step'], sector.details['sector']['sector']
    assert abs(step) == 0.03
    inside = np.arange(which * 32, which * 32 + 32)
    outside = np.setdiff1d(np.arange(128), inside)
    assert np.ptp(profile[inside]) < 1e-6 and np.ptp(profile[outside]) < 1e-6
    assert profile[inside[0]] / profile[outside[0]] == pytest.approx(1 + step, abs=1e-5)


def test_rotated_reference_is_the_rotated_correction(detector):
    made = wrong_reference(detector.correction, 'rot180', rng=1)
    rotated = np.rot90(detector.correction, 2)
    np.testing.assert_allclose(made.reference, rotated / rotated.mean(), rtol=1e-5)
    with pytest.raises(ValueError):
        wrong_reference(detector.correction, 'rot90')  # 96 x 128 is not square


def test_part_frame_drift_is_lines_in_one_half_plus_a_smooth_field(detector):
    made = wrong_reference(detector.correction, 'part_frame', rng=2, size=0.02, smooth=0.0)
    half = made.details['part_frame']['half']
    log = np.log(made.residual.astype(np.float64))
    rows, cols = SHAPE
    affected = {'top': log[:rows // 2], 'bottom': log[rows // 2:],
                'left': log[:, :cols // 2], 'right': log[:, cols // 2:]}[half]
    untouched = {'top': log[rows // 2:], 'bottom': log[:rows // 2],
                 'left': log[:, cols // 2:], 'right': log[:, :cols // 2]}[half]
    assert np.ptp(untouched) < 1e-5 and np.std(affected) > 0.015
    with_smooth = wrong_reference(detector.correction, 'part_frame', rng=2, size=0.02,
                                  smooth=0.02)
    other = {'top': slice(rows // 2, None), 'bottom': slice(None, rows // 2)}.get(half)
    region = (np.log(with_smooth.residual[other]) if other is not None else
              np.log(with_smooth.residual[:, {'left': slice(cols // 2, None),
                                              'right': slice(None, cols // 2)}[half]]))
    assert np.std(region) > 0.005  # the smooth term reaches the other half


def test_growing_error_scales_with_the_movie(detector):
    references = session_references(detector.correction, 'growing', 4, rng=8)
    sizes = [np.std(np.log(r.residual.astype(np.float64))) for r in references]
    np.testing.assert_allclose(sizes, [sizes[-1] * k / 4 for k in range(1, 5)], rtol=1e-3)
    full = references[-1].details['error']
    assert full['columns']['rms'] == DEFAULT_SIZES['columns']
    assert abs(full['sector']['step']) == DEFAULT_SIZES['sector']
    same = session_references(detector.correction, 'columns', 3, rng=8)
    assert all(r is same[0] for r in same)
