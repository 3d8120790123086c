"""The readout boundaries a gain reference shows (estimator.readout.reference_boundaries),
for sectors of unequal width whose edges fall at any column."""
import numpy as np
import pytest

from scipion_gain.estimator.readout import reference_boundaries
from scipion_gain.simulate import sector_edges, sector_of, simulate_gain

SHAPE = (512, 512)


def unequal_reference(edges, levels, seed=4, column_spread=0.02):
    """A correction (mean 1) of sectors starting at ``edges`` with log levels ``levels``,
    under a white column pattern, a row pattern, a flat field and a per-pixel scatter."""
    rng = np.random.default_rng(seed)
    rows, cols = SHAPE
    sectors = np.asarray(levels)[sector_of(list(edges) + [cols])]
    x = np.arange(cols) / cols
    log = (sectors + column_spread * rng.standard_normal(cols) + 0.05 * (x - 0.5) ** 2)[None, :] \
        + 0.01 * rng.standard_normal(rows)[:, None] + 0.02 * rng.standard_normal(SHAPE)
    correction = np.exp(log)
    return (correction / correction.mean()).astype(np.float32)


def near(found, line):
    return any(abs(int(b) - line) <= b.reach for b in found)


def test_boundaries_at_columns_that_are_no_multiple_of_anything_are_found():
    """Five sectors, 60, 140, 45, 155 and 112 columns wide, their steps 4 to 5.5 % under a
    2 % column pattern: every boundary is found within its reach, the first 60 columns from
    the frame's edge and the narrow sector's two (a window of 96 lines on each side never
    tested the first, and crossed the next boundary at the others), and nothing else."""
    edges = (60, 200, 245, 400)
    reference = unequal_reference((0,) + edges, [0.0, 0.04, -0.01, 0.035, -0.02])
    found = reference_boundaries(reference)
    for line in edges:
        assert near(found[0], line), (line, found[0])
    assert all(any(abs(int(b) - line) <= b.reach for line in edges) for b in found[0]), found
    assert found[1] == []


@pytest.mark.parametrize('seed', range(3))
def test_a_flat_reference_of_unequal_pattern_gives_no_boundary(seed):
    """No sector steps, the same column pattern, flat field and scatter: no boundary (the
    yardstick holds the pattern; the flat field is the smooth term's)."""
    reference = unequal_reference((0,), [0.0], seed=seed, column_spread=0.03)
    found = reference_boundaries(reference)
    assert found[0] == [] and found[1] == [], found


def test_unequal_sectors_of_the_simulator():
    """``unequal_sectors``: edges at random columns, each sector at least the least width;
    without it, the equal sectors at multiples of cols / sectors, and the same gain."""
    edges = sector_edges(1024, 8, np.random.default_rng(1), 0.5)
    assert edges[0] == 0 and edges[-1] == 1024 and len(edges) == 9
    assert min(np.diff(edges)) >= 64 and any(e % 128 for e in edges)
    assert sector_edges(1000, 3) == (0, 334, 667, 1000)
    gain = simulate_gain((64, 96), rng=2, sectors=3, unequal_sectors=20)
    assert min(np.diff(gain.sector_edges)) >= 20
    factors = gain.components['sectors'][0]
    assert all(len(set(factors[a:b])) == 1 for a, b in zip(gain.sector_edges,
                                                             gain.sector_edges[1:]))
    plain = simulate_gain((64, 96), rng=2, sectors=3)
    assert plain.sector_edges == (0, 32, 64, 96)


@pytest.mark.parametrize('seed', range(3))
def test_a_beam_narrower_than_the_frame_is_no_boundary(seed):
    """A flat field that is a bump a third of the frame across (6 %, as a small ROI of a
    real camera shows its beam), no sector steps, a 2 % column pattern: a quadratic flat
    field leaves the bump's shoulders as steps; the splines, chosen by Schwarz's criterion,
    take it, and no boundary is found."""
    rng = np.random.default_rng(seed)
    rows, cols = SHAPE
    x = np.arange(cols)
    bump = 0.06 * np.exp(-0.5 * ((x - 200 - 40 * seed) / 60.0) ** 2)
    log = (bump + 0.02 * rng.standard_normal(cols))[None, :] \
        + 0.01 * rng.standard_normal(rows)[:, None] + 0.02 * rng.standard_normal(SHAPE)
    found = reference_boundaries(np.exp(log).astype(np.float32))
    assert found[0] == [] and found[1] == [], found
