"""Smooth midway equalization pieces, checked against hand-computed small arrays.

Through the package's public names (sme_frame, equalize_lines, rank_keys,
total_variation) where they show the property; the tests of one private part
(the kernel's radius, the implementations' block tables, the path a frame
takes) import that part from its private module.
"""
import numpy as np
import pytest

from scipion_gain.estimator.sme import equalize_lines, rank_keys, sme_frame, total_variation
from scipion_gain.estimator.sme._kernel import gaussian_kernel
from scipion_gain.estimator.sme._sorted import SortedLines


def test_gaussian_kernel_radius_is_ceil_three_sigma():
    offsets, weights = gaussian_kernel(0.5)
    assert list(offsets) == [-2, -1, 0, 1, 2]
    assert weights[2] == 1.0
    assert weights[1] == pytest.approx(np.exp(-1 / (2 * 0.25)))
    offsets, _ = gaussian_kernel(1.1)
    assert offsets[-1] == 4  # ceil(3.3)


def test_smoothing_renormalises_at_the_borders_without_wrap():
    # three lines of constant inverse CDFs 0, 3, 6; sigma 1 -> g1 = exp(-1/2)
    # (each line one tie block: the local reference maps it to its smoothed value)
    lines = np.array([[0.0, 0.0], [3.0, 3.0], [6.0, 6.0]], dtype=np.float32)
    g1, g2 = np.exp(-0.5), np.exp(-2.0)
    out, _ = equalize_lines(lines, rank_keys(lines), 'local', 1.0)
    # first line: only itself (w 1), line 1 (g1) and line 2 (g2) exist
    first = (0 * 1 + 3 * g1 + 6 * g2) / (1 + g1 + g2)
    middle = (0 * g1 + 3 * 1 + 6 * g1) / (1 + 2 * g1)
    assert out[0, 0] == pytest.approx(first, rel=1e-6)
    assert out[1, 1] == pytest.approx(middle, rel=1e-6)
    assert out[2, 0] == pytest.approx(6 - first, rel=1e-6)  # mirror image of the first


def test_the_single_reference_averages_the_smoothed_lines():
    # without ties the local reference maps rank r of line l to smoothed line l at r (Eq. 2)
    # and the single one to the mean of the smoothed lines at r (Eq. 3)
    rng = np.random.default_rng(0)
    lines = rng.random((7, 5)).astype(np.float32)
    for sigma in (0.0, 0.7, 2.0):
        local, _ = equalize_lines(lines, rank_keys(lines), 'local', sigma)
        single, _ = equalize_lines(lines, rank_keys(lines), 'single', sigma)
        expected = np.sort(local, axis=1).mean(axis=0)
        for line in np.sort(single, axis=1):
            np.testing.assert_allclose(line, expected, rtol=1e-5)


def test_sigma_zero_single_reference_is_midway_equalization():
    # two lines with no ties: each value goes to the mean of the two sorted lines at its rank
    lines = np.array([[3.0, 1.0, 2.0], [10.0, 30.0, 20.0]], dtype=np.float32)
    out, sigma = equalize_lines(lines, rank_keys(lines), 'single', 0.0)
    midway = np.array([5.5, 11.0, 16.5])  # mean of [1,2,3] and [10,20,30]
    np.testing.assert_allclose(out[0], [midway[2], midway[0], midway[1]])
    np.testing.assert_allclose(out[1], [midway[0], midway[2], midway[1]])
    assert sigma == 0.0


def test_local_reference_at_sigma_zero_is_the_identity():
    rng = np.random.default_rng(1)
    lines = rng.poisson(2.0, (6, 50)).astype(np.float32)
    out, _ = equalize_lines(lines, rank_keys(lines), 'local', 0.0)
    np.testing.assert_allclose(out, lines, atol=1e-6)


def test_tied_values_map_to_the_mean_of_their_block():
    # line 0: [0, 0, 1, 1]; line 1: [0, 1, 1, 2]; reference (sigma 0) = [0, 0.5, 1, 1.5]
    lines = np.array([[1, 0, 1, 0], [2, 1, 0, 1]], dtype=np.float32)
    out, _ = equalize_lines(lines, rank_keys(lines), 'single', 0.0)
    # line 0: zeros hold ranks 0-1 -> mean(0, 0.5) = 0.25; ones ranks 2-3 -> mean(1, 1.5) = 1.25
    np.testing.assert_allclose(out[0], [1.25, 0.25, 1.25, 0.25])
    # line 1: the zero rank 0 -> 0; ones ranks 1-2 -> 0.75; the two rank 3 -> 1.5
    np.testing.assert_allclose(out[1], [1.5, 0.75, 0.0, 0.75])
    # each line's total is preserved exactly: the reference's total
    np.testing.assert_allclose(out.sum(axis=1), [3.0, 3.0])



def _column_gain(ties):
    rng = np.random.default_rng(2)
    rows, cols, frames = 4096, 64, 20
    factor = np.ones(cols)
    factor[10] = 1.03
    numerator = np.zeros(cols)
    denominator = np.zeros(cols)
    for _ in range(frames):
        frame = rng.poisson(1.0 * factor[None, :], (rows, cols)).astype(np.float32)
        columns = np.ascontiguousarray(frame.T)
        out, _ = equalize_lines(columns, rank_keys(columns), 'single', 0.0, ties=ties)
        numerator += columns.sum(axis=1)
        denominator += out.sum(axis=1)
    gain = numerator / denominator
    return gain / np.median(gain)


def test_poisson_column_three_percent_high_is_corrected_by_three_percent():
    # Counting frames at 1 e/px: one column's counts run 3 % high. Tie-aware SME
    # brings it down by about 3 % and leaves the others alone.
    gain = _column_gain('mean')
    assert gain[10] == pytest.approx(1.03, abs=0.01)
    assert np.abs(np.delete(gain, 10) - 1).max() < 0.015


def test_mapping_ties_to_the_last_rank_misjudges_the_same_column():
    # Xmipp's mapping (whole tie to the last rank of its block) sees the 3 %
    # column as tens of percent off, and the others as several percent off
    gain = _column_gain('last')
    assert abs(gain[10] - 1.03) > 0.1
    assert np.abs(np.delete(gain, 10) - 1).max() > 0.03


def test_total_variation_across_lines():
    lines = np.array([[0, 1], [2, 1], [2, 4]], dtype=np.float32)
    assert total_variation(lines) == 2 + 0 + 0 + 3


def test_sigma_search_picks_the_least_total_variation():
    rng = np.random.default_rng(3)
    lines = rng.normal(100, 10, (40, 200)).astype(np.float32)
    lines *= (1 + 0.05 * rng.standard_normal(40))[:, None]
    grid = (0.0, 1.0, 2.0)
    out, chosen = equalize_lines(lines, rank_keys(lines), 'local', 'auto', grid)
    tvs = {s: total_variation(equalize_lines(lines, rank_keys(lines), 'local', s)[0]) for s in grid}
    assert chosen == min(tvs, key=tvs.get)
    assert total_variation(out) == pytest.approx(tvs[chosen])


def test_rank_keys_are_exact_for_counts_and_order_preserving_for_floats():
    counts = np.array([[0, 3, 2, 65535]], dtype=np.float32)
    assert rank_keys(counts).tolist() == [[0, 3, 2, 65535]]
    floats = np.array([[0.5, -1.0, 2.25, 0.75]], dtype=np.float32)
    keys = rank_keys(floats).astype(int)
    assert list(np.argsort(keys[0])) == list(np.argsort(floats[0]))


def test_sme_frame_averages_columns_and_rows():
    rng = np.random.default_rng(4)
    frame = rng.normal(50, 5, (30, 40)).astype(np.float32)
    out, sigmas = sme_frame(frame, 'single', 0.0)
    by_cols, _ = equalize_lines(np.ascontiguousarray(frame.T), rank_keys(frame.T), 'single', 0.0)
    by_rows, _ = equalize_lines(frame, rank_keys(frame), 'single', 0.0)
    np.testing.assert_allclose(out, (by_cols.T + by_rows) / 2, rtol=1e-6)
    assert sigmas == (0.0, 0.0)


def test_ties_follow_the_recorded_counts_not_the_corrected_values():
    # a pre-corrected frame: counts times a per-pixel reference. The block of
    # recorded 1s keeps its internal spread and moves as a whole.
    counts = np.array([[1, 1, 0, 2]], dtype=np.float32)
    corrected = counts * np.array([[0.9, 1.1, 1.0, 1.0]], dtype=np.float32)
    ranked = SortedLines(corrected, rank_keys(corrected), rank_keys(counts))
    assert ranked.n_blocks == 3
    out = ranked.equalize(np.array([0.0, 2.0, 2.0, 4.0]))
    # ones block: reference mean 2 over their own mean 1 -> scaled by 2
    np.testing.assert_allclose(out[0], [1.8, 2.2, 0.0, 4.0], rtol=1e-6)


def test_last_rank_ties_reproduce_xmipp_and_lose_the_line_totals():
    lines = np.array([[1, 0, 1, 0], [2, 1, 0, 1]], dtype=np.float32)
    out, _ = equalize_lines(lines, rank_keys(lines), 'single', 0.0, ties='last')
    # reference [0, 0.5, 1, 1.5]: zeros of line 0 hold ranks 0-1 -> 0.5, ones ranks 2-3 -> 1.5
    np.testing.assert_allclose(out[0], [1.5, 0.5, 1.5, 0.5])
    np.testing.assert_allclose(out[1], [1.5, 1.0, 0.0, 1.0])
    assert out[0].sum() != pytest.approx(3.0)


# --------------------------------------------------------------------------- counting fast path
def _poisson_frame(seed, shape=(96, 130), dose=1.2):
    rng = np.random.default_rng(seed)
    gain = 1 + 0.05 * rng.standard_normal(shape[1])  # column structure, so sigma matters
    return rng.poisson(dose * gain[None, :], shape).astype(np.float32)


@pytest.mark.parametrize('mode', ['single', 'local'])
@pytest.mark.parametrize('sigma', [0.0, 1.0, 2.5, 'auto'])
@pytest.mark.parametrize('dose', [0.3, 1.2, 6.0])
def test_counting_fast_path_gives_the_general_path_map_and_sigmas(mode, sigma, dose):
    # the frame as its own recording takes the fast path (histograms); passing a copy as
    # the recording takes the general one (sorts) with the same ties
    frame = _poisson_frame(7, dose=dose)
    fast, fast_sigmas = sme_frame(frame, mode, sigma)
    general, general_sigmas = sme_frame(frame, mode, sigma, recorded=frame.copy())
    assert fast_sigmas == general_sigmas
    np.testing.assert_allclose(fast, general, rtol=1e-6, atol=1e-6)


def test_counting_fast_path_is_taken_and_falls_back_for_large_values(monkeypatch):
    from scipion_gain.estimator.sme import _dispatch
    calls = []
    original = _dispatch.equalize_counts
    monkeypatch.setattr(_dispatch, 'equalize_counts', lambda *a, **k: calls.append(1) or original(*a, **k))
    frame = _poisson_frame(8)
    sme_frame(frame, 'single', 'auto')
    assert len(calls) == 2  # columns and rows
    calls.clear()
    frame[5, 7] = _dispatch.COUNT_LEVELS  # one value too large for the fast path: the general path
    out, sigmas = sme_frame(frame, 'single', 'auto')
    assert not calls
    general, general_sigmas = sme_frame(frame, 'single', 'auto', recorded=frame.copy())
    np.testing.assert_array_equal(out, general)
    assert sigmas == general_sigmas
    frame[5, 7] = _dispatch.COUNT_LEVELS - 1  # the largest value it takes: fast path, same map
    out, sigmas = sme_frame(frame, 'local', 'auto')
    assert len(calls) == 2
    general, general_sigmas = sme_frame(frame, 'local', 'auto', recorded=frame.copy())
    np.testing.assert_allclose(out, general, rtol=1e-6, atol=1e-6)
    assert sigmas == general_sigmas


def test_counting_fast_path_is_not_taken_for_pre_corrected_or_float_frames(monkeypatch):
    from scipion_gain.estimator.sme import _dispatch
    calls = []
    monkeypatch.setattr(_dispatch, 'equalize_counts', lambda *a, **k: calls.append(1))
    monkeypatch.setattr(_dispatch, 'equalize_scaled_counts', lambda *a, **k: calls.append(2))
    frame = _poisson_frame(9)
    sme_frame(frame * np.float32(1.01), 'single', 1.0)            # not integers, no recording
    sme_frame(frame, 'single', 1.0, ties='last')                    # Xmipp's ties
    sme_frame(frame / np.float32(2), 'single', 1.0, recorded=frame / np.float32(3))  # not counts
    assert not calls
    sme_frame(frame / np.float32(2), 'single', 1.0, recorded=frame)  # scaled counts
    assert calls == [2]


# --------------------------------------------------------------------------- scaled counts
def _scaled_frame(seed, dose, spread, shape=(96, 130)):
    """Counts x a per-pixel reference (log-normal spread, a 5 % column pattern): residual mode."""
    rng = np.random.default_rng(seed)
    scale = np.exp(spread * rng.standard_normal(shape))
    scale *= (1 + 0.05 * rng.standard_normal(shape[1]))[None, :]
    scale = (scale / scale.mean()).astype(np.float32)
    counts = rng.poisson(dose / scale).astype(np.float32)
    return counts * scale, counts


@pytest.mark.parametrize('mode', ['single', 'local'])
@pytest.mark.parametrize('sigma', [0.0, 1.0, 2.5, 'auto'])
@pytest.mark.parametrize('dose, spread', [(0.5, 0.02), (1.5, 0.05), (6.0, 0.2), (1.5, 0.2),
                                          (6.0, 0.02)])
def test_scaled_counts_fast_path_gives_the_general_path_map_and_sigmas(mode, sigma, dose, spread):
    # residual frames (counts x a static reference): histograms (fast) against sorts (general),
    # one definition: the same sigmas, and the same map to float rounding (stated tolerance:
    # 1e-6 of the map's largest value; measured at most 3e-7)
    frame, counts = _scaled_frame(11, dose, spread)
    fast, fast_sigmas = sme_frame(frame, mode, sigma, recorded=counts)
    general, general_sigmas = sme_frame(frame, mode, sigma, recorded=counts, fast=False)
    assert fast_sigmas == general_sigmas
    np.testing.assert_allclose(fast, general, rtol=0, atol=1e-6 * np.abs(general).max())


def test_scaled_counts_ties_are_the_values_in_whole_counts():
    from scipion_gain.estimator.sme._scaled import count_keys, count_unit
    counts = np.array([[0, 1, 1, 2, 3, 1]], np.float32)
    scale = np.array([[1.0, 0.9, 1.6, 0.7, 1.0, 0.3]], np.float32)
    frame = counts * scale
    unit = count_unit(frame, counts)
    assert unit == pytest.approx(frame.sum() / counts.sum())
    keys, levels = count_keys(frame, 1.0)
    # values 0, 0.9, 1.6, 1.4, 3, 0.3: the zero alone in key 0; 0.9 and 1.4 (two counts at 0.7)
    # in key 1; 1.6 (one count at 1.6) in key 2; 3 in key 3; 0.3 in key 1 (never with the zeros)
    assert keys.tolist() == [[0, 1, 2, 1, 3, 1]]
    assert levels == 4


def test_scaled_counts_of_a_flat_reference_are_the_counting_path():
    # a reference of all ones: the scaled counts are the counts, ramps are flat, and the map
    # is the counting fast path's (which the general path matches, tested above)
    frame = _poisson_frame(12)
    for mode in ('single', 'local'):
        for sigma in (1.0, 'auto'):
            scaled, scaled_sigmas = sme_frame(frame.copy(), mode, sigma, recorded=frame)
            counted, counted_sigmas = sme_frame(frame, mode, sigma)
            np.testing.assert_allclose(scaled, counted, rtol=1e-5, atol=1e-6)
            assert scaled_sigmas == counted_sigmas


@pytest.mark.parametrize('sigma', [1.0, 'auto'])
@pytest.mark.parametrize('shape, dose', [((96, 130), 2.0), ((61, 40), 9.0)])
def test_tables_of_a_frame_that_is_its_own_recording_are_those_of_a_copy(shape, dose, sigma):
    # a frame of whole counts given as its own recording takes its blocks' sums from their
    # counts (unit 1, its values its keys); a copy of it as the recording takes the weighted
    # histograms: the same tables, bit for bit, and the same sigmas
    from scipion_gain.estimator.sme import scaled_count_tables
    frame = _poisson_frame(13, shape=shape, dose=dose)
    frame[3, :5] = 0.0
    own = scaled_count_tables(frame, frame, sigma=sigma)
    copied = scaled_count_tables(frame, frame.copy(), sigma=sigma)
    for mine, theirs in zip(own[:2], copied[:2]):
        np.testing.assert_array_equal(mine, theirs)
    assert own[2] == copied[2] == 1.0
    assert own[3] == copied[3]


@pytest.mark.parametrize('axis', [0, 1])
@pytest.mark.parametrize('mode', ['single', 'local'])
def test_counted_lines_blocks_and_total_variation_match_the_sorted_lines(axis, mode):
    from scipion_gain.estimator.sme._counted import CountedLines
    frame = _poisson_frame(10, shape=(37, 53), dose=2.0)
    keys = rank_keys(frame)
    levels = int(frame.max()) + 1
    lines = frame if axis == 0 else np.ascontiguousarray(frame.T)
    ranked = SortedLines(lines, rank_keys(lines))
    counted = CountedLines(keys, levels, axis, pairs=True)
    for name in ('block_line', 'block_start', 'block_stop'):
        np.testing.assert_array_equal(getattr(counted, name), getattr(ranked, name))
    for sigma in (0.0, 1.5):
        table = counted.table(counted.block_means(mode, sigma))
        mapped = counted.map(table)
        expected = ranked.equalize_to(mode, sigma)
        np.testing.assert_allclose(mapped if axis == 0 else mapped.T, expected, rtol=1e-6, atol=1e-6)
        # the pair histogram's total variation is that of the mapped samples
        tv = total_variation(mapped if axis == 0 else np.ascontiguousarray(mapped.T))
        assert counted.total_variation(table) == pytest.approx(tv, rel=1e-12)


# --------------------------------------------------------------------------- robust ranks
def test_one_hot_value_does_not_squeeze_the_otherframe_keys():
    from scipion_gain.estimator.sme._keys import frame_keys
    rng = np.random.default_rng(13)
    frame = (50 + 7 * rng.standard_normal((64, 80))).astype(np.float32)
    clean, _, clean_bounds = frame_keys(frame)
    hot = frame.copy()
    hot[10, 20] = 50000.0
    keys, levels, bounds = frame_keys(hot)
    assert clean_bounds is None and levels is None
    assert bounds is not None and bounds[1] < 200
    assert keys[10, 20] == keys.max() >= 65534
    others = np.ones(frame.shape, bool)
    others[10, 20] = False
    # the other values keep (nearly) all their distinct keys: not squeezed into a few levels
    assert len(np.unique(keys[others])) >= 0.9 * len(np.unique(clean[others]))
    assert np.array_equal(np.argsort(keys[others], kind='stable'),
                          np.argsort(clean[others], kind='stable')) or \
        np.corrcoef(keys[others].astype(float), clean[others].astype(float))[0, 1] > 0.9999


def test_a_hot_pixel_in_a_float_movie_changes_the_map_only_around_it(tmp_path):
    # float frames averaging about 50 (not counts); one pixel at 50000 in every frame
    import mrcfile
    from scipion_gain.estimator import estimate_gain
    from scipion_gain.simulate import simulate_frames, simulate_gain
    shape = (128, 128)
    gain = simulate_gain(shape, rng=3, sector_spread=0.05, column_spread=0.03)
    frames = np.stack(list(simulate_frames(shape, 10, gain.gain, dose=50.0, rng=1)))
    frames = frames.astype(np.float32) * np.float32(1.0173)
    paths = []
    for name, hot in (('clean', False), ('hot', True)):
        data = frames.copy()
        if hot:
            data[:, 40, 70] = 50000.0
        path = str(tmp_path / f'{name}.mrc')
        with mrcfile.new(path) as mrc:
            mrc.set_data(data)
        paths.append(path)
    clean, dirty = (estimate_gain([p]) for p in paths)
    away = np.ones(shape, bool)
    away[35:46, :] = False
    away[:, 65:76] = False
    difference = np.abs(dirty.gain - clean.gain)[away]
    assert difference.max() < 0.01 and difference.mean() < 0.001   # map noise: std ~0.05
    assert dirty.gain.std() == pytest.approx(clean.gain.std(), rel=0.05)
    assert dirty.gain[40, 70] < 0.01 * np.median(dirty.gain)      # the hot pixel: a tiny correction


def test_a_sigma_pair_sets_each_direction():
    # sme_frame(sigma=(columns, rows)): the columns' and the rows' own sigma, on every path
    rng = np.random.default_rng(12)
    counts = rng.poisson(6.0, size=(48, 64)).astype(np.float32)
    factors = rng.uniform(0.9, 1.1, size=counts.shape).astype(np.float32)
    for frame, recorded in ((counts, None), (counts * factors, counts), (counts + 0.25, None)):
        _, chosen = sme_frame(frame, sigma=(0.5, 2.0), recorded=recorded)
        assert chosen == (0.5, 2.0)
        same, _ = sme_frame(frame, sigma=(1.5, 1.5), recorded=recorded)
        single, _ = sme_frame(frame, sigma=1.5, recorded=recorded)
        assert np.array_equal(same, single)


def test_expected_total_variation_in_chunks_is_the_whole_lists_sum(monkeypatch):
    # the pairs' terms a chunk at a time in threads, summed at once: the same float64 sum
    from scipion_gain.estimator.sme import _scaled
    rng = np.random.default_rng(5)
    blocks, count = 500, 10007
    own = rng.uniform(0.0, 20.0, blocks)
    own[:20] = 0.0                                        # blocks of zeros
    square_means = own * own + rng.uniform(0.0, 3.0, blocks)
    square_means[20:40] = own[20:40] ** 2                 # no spread: |D|
    means = own * rng.uniform(0.9, 1.1, blocks)
    first, second = rng.integers(0, blocks, count), rng.integers(0, blocks, count)
    pairs = rng.integers(1, 50, count)
    whole = _scaled.expected_total_variation(pairs, first, second, means, own, square_means)
    monkeypatch.setattr(_scaled, 'EXPECTED_TV_CHUNK', 1000)
    chunked = _scaled.expected_total_variation(pairs, first, second, means, own, square_means)
    assert chunked == whole and whole > 0


@pytest.mark.parametrize('axis', [0, 1])
def test_the_pair_list_made_a_few_lines_at_a_time_is_the_histograms_nonzero_bins(axis,
                                                                                   monkeypatch):
    # the sigma search's pairs listed PAIR_LIST_LINES lines' bins at a time, as int32: the
    # same (count, first block, second block) in the bins' order as the whole histogram's
    # nonzero bins, and the same expected total variation; the scaled path then lets the
    # histogram go
    from scipion_gain.estimator.sme import _counted
    frame = _poisson_frame(21, shape=(45, 38), dose=3.0)
    keys = frame.astype(np.uint8)
    levels = int(keys.max()) + 1
    monkeypatch.setattr(_counted, 'PAIR_LIST_LINES', 4)
    counted = _counted.CountedLines(keys, levels, axis, pairs=True, values=frame, integral=True)
    flat = counted.pairs.ravel()
    ids = np.flatnonzero(flat)
    where = np.full(counted.shape[0] * levels, -1)
    where[counted.present] = np.arange(counted.n_blocks)
    line_value = ids // levels
    expected = (flat[ids], where[line_value],
                where[line_value - line_value % levels + levels + ids % levels])
    means = counted.block_means('single', 1.0)
    tv = counted.expected_total_variation(means)
    assert counted.pairs is None
    for listed, whole in zip(counted._pair_blocks, expected):
        assert listed.dtype == np.int32
        np.testing.assert_array_equal(listed, whole)
    assert tv == _counted.expected_total_variation(*expected, means, counted._own,
                                                   counted._square_means)
