"""The device strategies of estimator.kernels agree with their NumPy twins exactly."""
import numpy as np
import pytest

from scipion_gain.estimator.kernels import ORDER_STRATEGIES, order_lines
from scipion_gain.estimator.sme import rank_keys
from scipion_gain.estimator.sme._sorted import SortedLines


@pytest.mark.parametrize('shape, high', [((7, 13), 3), ((64, 50), 65535), ((1, 9), 2), ((33, 1), 5)])
def test_flat_and_row_orders_are_identical_and_stable(shape, high):
    rng = np.random.default_rng(3)
    keys = rng.integers(0, high + 1, shape).astype(np.uint16)
    orders = {strategy: order_lines(keys, np, strategy) for strategy in ORDER_STRATEGIES}
    np.testing.assert_array_equal(orders['rows'], orders['flat'])
    n = shape[1]
    expected = np.argsort(keys, axis=1, kind='stable') + np.arange(shape[0])[:, None] * n
    np.testing.assert_array_equal(orders['flat'], expected)
    # each line's indices stay in that line, and sort its keys
    assert np.all(orders['flat'] // n == np.arange(shape[0])[:, None])
    assert np.all(np.diff(keys.ravel()[orders['flat']], axis=1) >= 0)


def test_sorted_lines_do_not_depend_on_the_strategy(monkeypatch):
    from scipion_gain.estimator.sme import _sorted
    rng = np.random.default_rng(4)
    lines = rng.poisson(1.5, (40, 60)).astype(np.float32)
    gain = 1 + 0.05 * rng.standard_normal(lines.shape).astype(np.float32)
    ideal = lines / gain
    results = {}
    for strategy in ORDER_STRATEGIES:
        monkeypatch.setattr(_sorted, 'order_lines', lambda k, xp, s=strategy: order_lines(k, xp, s))
        ranked = SortedLines(ideal, rank_keys(ideal), rank_keys(lines))
        results[strategy] = (ranked.sorted, ranked.block_of, ranked.block_start, ranked.block_stop,
                             ranked.equalize(ranked.reference('local', 1.0)))
    for a, b in zip(results['rows'], results['flat']):
        np.testing.assert_array_equal(a, b)


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError):
        order_lines(np.zeros((2, 2), np.uint16), np, 'bogus')


@pytest.mark.parametrize('sigma', [0.0, 0.5, 1.0, 2.5])
@pytest.mark.parametrize('counting', [True, False])
def test_local_block_means_without_the_smoothed_lines_match_smoothing(sigma, counting):
    # Eq. 2 is linear in the sorted lines: the block means of the local reference can be
    # taken from the sorted lines' running sum without building the (L, n) reference
    rng = np.random.default_rng(6)
    if counting:
        lines = rng.poisson(1.2, (23, 40)).astype(np.float32)
    else:
        lines = (100 + 10 * rng.standard_normal((23, 40))).astype(np.float32)
    ranked = SortedLines(lines, rank_keys(lines))
    built = ranked._block_means(ranked.reference('local', sigma))
    np.testing.assert_allclose(ranked.local_reference_block_means(sigma), built, rtol=1e-6)
    np.testing.assert_allclose(ranked.equalize_to('local', sigma),
                               ranked.equalize(ranked.reference('local', sigma)), rtol=1e-6, atol=1e-6)
