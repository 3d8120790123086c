"""Defects from count sums and from a gain estimate, and the MotionCor2 -DefectFile text."""
import json
import re

import numpy as np
import pytest

from scipion_gain.estimator import EstimatorSettings, estimate_gain
from scipion_gain.estimator.defects import (BROKEN_COLUMN, BROKEN_ROW, DEAD_COLUMN, DEAD_PIXEL,
                                            DEAD_ROW, HOT_PIXEL, DefectMap, level_without,
                                            find_defects)
from scipion_gain.estimator.filters import masked_box_mean
from scipion_gain.simulate import simulate_gain, simulate_movie
from scipion_gain.io.results import write_text

from helpers import SHARED_DATA

SHAPE = (256, 256)


@pytest.fixture(scope='module')
def defective(tmp_path_factory):
    gain = simulate_gain(SHAPE, rng=7, sectors=4, sector_spread=0.06, column_spread=0.03,
                         row_spread=0.02, flat_field=0.05, pixel_scatter=0.03, dead_pixels=40,
                         hot_pixels=40, dead_column=True, broken_row=True)
    path = tmp_path_factory.mktemp('defects') / 'movie.mrc'
    simulate_movie(str(path), SHAPE, 30, gain.gain, dose=1.5, rng=3)
    result = estimate_gain([str(path)], EstimatorSettings())
    dead_column = int(np.nonzero(gain.dead.all(axis=0))[0][0])
    broken_row = int(np.nonzero(gain.gain.mean(axis=1) < 0.5)[0][0])
    return gain, result, dead_column, broken_row


def rasterise(rectangles, shape):
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in rectangles:
        assert 0 <= x and 0 <= y and w >= 1 and h >= 1
        assert x + w <= shape[1] and y + h <= shape[0]
        mask[y:y + h, x:x + w] = True
    return mask


def test_counts_find_every_defect_and_nothing_else(defective):
    gain, result, dead_column, broken_row = defective
    found = find_defects(counts=result.numerator, no_signal=result.defects)
    assert found.source == 'counts'
    assert found.columns == {dead_column: 'dead'} and found.rows == {broken_row: 'broken'}
    in_lines = np.zeros(SHAPE, bool)
    in_lines[:, dead_column] = True
    in_lines[broken_row, :] = True
    np.testing.assert_array_equal(found.labels == DEAD_PIXEL, gain.dead & ~in_lines)
    np.testing.assert_array_equal(found.labels == HOT_PIXEL, gain.hot & ~in_lines)
    counts = found.counts
    assert counts == {'dead_pixels': int((gain.dead & ~in_lines).sum()),
                      'hot_pixels': int((gain.hot & ~in_lines).sum()), 'dead_rows': 0,
                      'broken_rows': 1, 'dead_columns': 1, 'broken_columns': 0,
                      'unusable_pixels': 0}
    assert (found.labels[:, dead_column] == DEAD_COLUMN).all()
    assert (found.labels[broken_row, np.arange(SHAPE[1]) != dead_column] == BROKEN_ROW).all()


def test_gain_estimate_finds_dead_pixels_and_lines_without_false_alarms(defective):
    gain, result, dead_column, broken_row = defective
    found = find_defects(gain=result.gain, no_signal=result.defects)
    assert found.source == 'gain'
    assert found.columns == {dead_column: 'dead'} and found.rows == {broken_row: 'broken'}
    outside = np.ones(SHAPE, bool)
    outside[:, dead_column] = False
    outside[broken_row, :] = False
    np.testing.assert_array_equal((found.labels == DEAD_PIXEL)[outside], gain.dead[outside])
    # the SME estimate attenuates hot pixels; those it flags are real
    assert not ((found.labels == HOT_PIXEL) & ~gain.hot).any()


def test_defect_file_is_motioncor2_format_and_covers_the_map(defective, tmp_path):
    gain, result, dead_column, broken_row = defective
    found = find_defects(counts=result.numerator, no_signal=result.defects)
    write_text(tmp_path / 'defects.txt', found.defect_file_text())
    text = (tmp_path / 'defects.txt').read_text()
    lines = text.splitlines()
    assert lines and all(re.fullmatch(r'\d+ \d+ \d+ \d+', line) for line in lines)
    rectangles = [tuple(int(v) for v in line.split()) for line in lines]
    assert (dead_column, 0, 1, SHAPE[0]) in rectangles  # the full column, one rectangle
    assert (0, broken_row, SHAPE[1], 1) in rectangles
    np.testing.assert_array_equal(rasterise(rectangles, SHAPE), found.mask)
    assert not list(tmp_path.glob('.*tmp'))
    json.dumps(found.to_dict())


def test_adjacent_lines_and_pixel_runs_merge():
    labels = np.zeros((10, 12), np.uint8)
    labels[:, 3] = labels[:, 4] = DEAD_COLUMN
    labels[6, :] = BROKEN_ROW
    labels[2, 7:10] = DEAD_PIXEL
    labels[8, 0] = HOT_PIXEL
    found = DefectMap(labels=labels, rows={6: 'broken'}, columns={3: 'dead', 4: 'dead'})
    assert found.rectangles() == [(3, 0, 2, 10), (0, 6, 12, 1), (7, 2, 3, 1), (0, 8, 1, 1)]
    assert found.defect_file_text() == '3 0 2 10\n0 6 12 1\n7 2 3 1\n0 8 1 1\n'
    assert found.counts == {'dead_pixels': 3, 'hot_pixels': 1, 'dead_rows': 0, 'broken_rows': 1,
                            'dead_columns': 2, 'broken_columns': 0, 'unusable_pixels': 0}


def test_pure_shot_noise_is_not_a_defect():
    rng = np.random.default_rng(11)
    counts = rng.poisson(45.0, (512, 512)).astype(float)
    found = find_defects(counts=counts)
    assert not found.mask.any() and found.defect_file_text() == ''
    sparse = rng.poisson(2.0, (128, 128)).astype(float)  # zeros are common: cannot call them dead
    found = find_defects(counts=sparse)
    assert not found.mask.any()
    assert any('a dead pixel cannot be told from shot noise' in note for note in found.notes)


def test_a_zero_is_dead_only_where_shot_noise_cannot_give_it():
    # the estimate's pixels without signal (no_signal) were all called dead: at 10 counts
    # a pixel 512 x 512 movie's 12 chance zeros, and every pixel of gold foil (which the
    # robust method leaves out whatever it recorded), went into the MotionCor2 defect file
    rng = np.random.default_rng(13)
    counts = rng.poisson(10.0, (512, 512)).astype(float)
    assert (counts == 0).sum() >= 5
    found = find_defects(counts=counts, no_signal=counts == 0)
    assert not found.mask.any() and found.defect_file_text() == ''
    bright = rng.poisson(40.0, (512, 512)).astype(float)
    bright[100, 200] = bright[300, 511] = 0.0
    bright[:, 400] = 0.0                                   # a dead column
    foil = np.zeros(bright.shape, bool)
    foil[:, :150] = True                                   # gold foil: 0.6 counts a pixel
    bright[foil] = rng.poisson(0.6, int(foil.sum()))
    found = find_defects(counts=bright, no_signal=foil | (bright == 0))
    assert found.labels[100, 200] == DEAD_PIXEL and found.labels[300, 511] == DEAD_PIXEL
    assert found.columns == {400: 'dead'}
    assert int((found.labels[:, :150] != 0).sum()) == 0    # the foil is not the detector's
    assert found.counts['dead_pixels'] == 2


def test_a_zero_between_four_bright_and_four_dark_neighbours_takes_their_median():
    # lambda is the median of the 8 neighbours, (4th + 5th) / 2: with four at 0 and four
    # at c it is c / 2, dead where that exceeds ln(N / zero_alpha) (ln(4096 / 0.01) = 12.9)
    for bright, dead in ((24.0, False), (28.0, True)):
        counts = np.full((64, 64), 40.0)
        counts[30:33, 30:33] = [[bright, bright, bright], [bright, 0.0, 0.0], [0.0, 0.0, 0.0]]
        found = find_defects(counts=counts, no_signal=counts == 0)
        assert bool(found.labels[31, 31] == DEAD_PIXEL) is dead, bright


def test_dead_row_and_broken_column_from_a_gain_map():
    rng = np.random.default_rng(12)
    response = rng.normal(1, 0.03, (128, 160))
    response[40, :] = 0                   # dead row: no signal
    response[:, 90] *= 2.5                # a column that records 2.5 x too much
    correction = np.where(response > 0, 1 / np.where(response > 0, response, 1), 1.0)
    found = find_defects(gain=correction, no_signal=response == 0)
    assert found.rows == {40: 'dead'} and found.columns == {90: 'broken'}
    assert (found.labels[40, np.arange(160) != 90] == DEAD_ROW).all()  # the crossing: column
    assert (found.labels[np.arange(128) != 40, 90] == BROKEN_COLUMN).all()


def test_needs_an_input():
    with pytest.raises(ValueError):
        find_defects()


@pytest.mark.skipif(not (SHARED_DATA / 'de-celeritas').is_dir(), reason='real detector files absent')
def test_real_celeritas_gain_has_no_defects():
    from scipion_gain.io import read_gain_reference
    correction, _ = read_gain_reference(SHARED_DATA / 'de-celeritas' / 'celeritas_128x256_gain.mrc')
    found = find_defects(gain=correction)
    assert found.counts == {kind: 0 for kind in found.counts}


def test_unusable_pixels_are_their_own_kind_in_labels_counts_and_defect_file():
    from scipion_gain.estimator.defects import UNUSABLE
    counts = np.full((32, 32), 400.0)
    found = find_defects(counts=counts)
    assert found.counts['unusable_pixels'] == 0 and found.defect_file_text() == ''
    mask = np.zeros((32, 32), bool)
    mask[3:5, 7] = True
    found.mark_unusable(mask)
    assert found.counts['unusable_pixels'] == 2
    assert (found.labels[mask] == UNUSABLE).all()
    assert found.defect_file_text() == '7 3 1 1\n7 4 1 1\n'


def test_one_extreme_hot_pixel_is_hot_and_its_lines_are_not_broken():
    """A pixel at 50000 counts per frame raises its whole box's local level: its
    neighbours looked dead next to it, the second pass then had no level left there
    and called the pixel's row and column broken (a MotionCor2 defect file would have
    dropped both lines)."""
    rng = np.random.default_rng(1)
    counts = rng.poisson(100, (256, 256)).astype(np.float64)
    counts[100, 50] = 1e6
    counts[30:33, 30:33] = 0
    found = find_defects(counts=counts)
    assert found.rows == {} and found.columns == {}
    assert found.counts['hot_pixels'] == 1 and found.counts['dead_pixels'] == 9
    assert found.labels[100, 50] == HOT_PIXEL


def test_second_pass_around_hot_pixels_equals_a_second_pass_everywhere(monkeypatch):
    """The second pass recomputes the level only in windows around the first pass's hot
    pixels: at the frame's corners and edges (where the box is reflected) and in a
    cluster it must find what recomputing the whole frame finds."""
    rng = np.random.default_rng(5)
    counts = rng.poisson(60, (300, 280)).astype(np.float64)
    for y, x in ((0, 0), (299, 279), (0, 140), (150, 279), (2, 3), (120, 100), (121, 104),
                 (125, 100)):
        counts[y, x] = 40000
    hot = counts > 1000
    response = counts.astype(np.float32)
    first = masked_box_mean(response, response > 0, 15)[0]
    passed = first.copy()
    level, changed = level_without(response, ~hot, passed, hot, 15, np)
    assert level is passed      # the windows written into it: no copy of the frame's level
    # the windows hold the frame's own values, bit for bit (one blur scheme at every size)
    np.testing.assert_array_equal(level, masked_box_mean(response, ~hot, 15)[0])
    assert len(changed) == 8 and not np.allclose(level, first)
    windowed = find_defects(counts=counts)
    monkeypatch.setattr('scipion_gain.estimator.defects._WINDOWED_SHARE', 0.0)
    everywhere = find_defects(counts=counts)
    assert windowed.counts['hot_pixels'] == 8 and windowed.counts['dead_pixels'] == 0
    np.testing.assert_array_equal(windowed.labels, everywhere.labels)
    assert windowed.rows == everywhere.rows == {} and windowed.columns == everywhere.columns == {}
