"""Forecast metrics against small hand-computed numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from spot_forecast import metrics

ACTUAL = np.array([[1.0, 2.0, np.nan], [4.0, 5.0, 6.0]])
FORECAST = np.array([[1.5, 1.0, 9.0], [4.0, 6.0, 3.0]])


def test_mae_skips_missing_actuals():
    # |0.5| + |1| + |0| + |1| + |3| over 5 known steps.
    assert metrics.mae(ACTUAL, FORECAST) == pytest.approx(5.5 / 5)


def test_mae_by_step():
    np.testing.assert_allclose(metrics.mae(ACTUAL, FORECAST, axis=0), [0.25, 1.0, 3.0])


def test_mape_in_percent():
    expected = 100 * np.mean([0.5 / 1, 1 / 2, 0 / 4, 1 / 5, 3 / 6])
    assert metrics.mape(ACTUAL, FORECAST) == pytest.approx(expected)


def test_pinball_matches_definition():
    levels = [0.1, 0.5, 0.9]
    actual = np.array([[2.0]])
    quantiles = np.array([[[1.0, 2.5, 3.0]]])
    # tau * (y - q) when y >= q, else (tau - 1) * (y - q).
    expected = np.mean([0.1 * 1.0, 0.5 * 0.5, 0.1 * 1.0])
    assert metrics.pinball(actual, quantiles, levels) == pytest.approx(expected)


def test_coverage_counts_bounds_inside():
    lower = np.array([[0.0, 2.0, 0.0], [5.0, 0.0, 0.0]])
    upper = np.array([[1.0, 3.0, 1.0], [9.0, 4.0, 7.0]])
    # Inside: 1 in [0, 1], 2 in [2, 3], 6 in [0, 7]; outside: 4 and 5. Step 3 of row 1 is missing.
    assert metrics.coverage(ACTUAL, lower, upper) == pytest.approx(3 / 5)


def test_mean_width_skips_missing_actuals():
    lower = np.zeros((2, 3))
    upper = np.array([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    assert metrics.mean_width(lower, upper, ACTUAL) == pytest.approx(15 / 5)


def test_mase_scale_of_flat_series_is_missing():
    assert metrics.mase_scale(np.full(200, 0.0345)) is None


def test_mase_scale_is_naive_error():
    assert metrics.mase_scale(np.array([1.0, 2.0, 2.0, 5.0])) == pytest.approx(4 / 3)


def test_mase_leaves_out_undefined_scales():
    scales = np.array([0.5, np.nan])
    # Row 0 divides by 0.5; row 1 has no scale and is left out.
    assert metrics.mase(ACTUAL, FORECAST, scales) == pytest.approx(np.mean([1.0, 2.0]))


def test_mase_never_returns_infinity():
    with pytest.warns(RuntimeWarning):
        result = metrics.mase(ACTUAL, FORECAST, np.array([0.0, np.nan]))
    assert np.isnan(result)


def score_sums_example():
    sums = metrics.ScoreSums(2, 3, (0.1, 0.5, 0.9))
    actual = np.array([[1.0, 2.0, np.nan], [4.0, 5.0, 6.0], [2.0, 2.0, 2.0]])
    last = np.array([1.0, 4.0, 2.0])
    median = np.array([[1.5, 1.0, 9.0], [4.0, 6.0, 3.0], [2.0, 2.0, 2.0]])
    quantiles = np.stack([median - 1.0, median, median + 0.5], axis=-1)
    sums.add(np.array([0, 0, 1]), actual, last, median, quantiles, np.array([0.5, 2.0, np.nan]))
    return sums, actual, last, median, quantiles


def test_score_sums_mae_by_step():
    sums, actual, _, median, _ = score_sums_example()
    table = sums.table()
    np.testing.assert_allclose(table["mae"], metrics.mae(actual, median, axis=0))


def test_score_sums_ratio_to_last_value():
    sums, actual, last, median, _ = score_sums_example()
    table = sums.table()
    baseline = metrics.mae(actual, np.repeat(last[:, None], 3, axis=1), axis=0)
    np.testing.assert_allclose(table["last_value_mae"], baseline)
    np.testing.assert_allclose(table["mae_ratio"][1:], metrics.mae(actual, median, axis=0)[1:]
                               / baseline[1:])


def test_score_sums_ratio_missing_when_last_value_exact():
    # The last value has no error, so the ratio has no denominator and stays missing.
    sums = metrics.ScoreSums(1, 1, None)
    sums.add(np.array([0]), np.array([[2.0]]), np.array([2.0]), np.array([[2.5]]))
    assert np.isnan(sums.table()["mae_ratio"][0])


def test_score_sums_interval_metrics():
    sums, actual, last, median, quantiles = score_sums_example()
    table = sums.table()
    np.testing.assert_allclose(table["pinball"],
                               metrics.pinball(actual, quantiles, (0.1, 0.5, 0.9), axis=0))
    np.testing.assert_allclose(table["coverage_80"], metrics.coverage(
        actual, quantiles[..., 0], quantiles[..., 2], axis=0))
    np.testing.assert_allclose(table["width_80"], metrics.mean_width(
        quantiles[..., 0], quantiles[..., 2], actual, axis=0))


def test_score_sums_mase_leaves_out_flat():
    sums, actual, _, median, _ = score_sums_example()
    table = sums.table()
    expected = metrics.mase(actual[:2], median[:2], np.array([0.5, 2.0]), axis=0)
    np.testing.assert_allclose(table["mase"], expected)
    np.testing.assert_array_equal(table["mase_windows"], [2, 2, 1])


def test_score_sums_by_group():
    sums, actual, _, median, _ = score_sums_example()
    np.testing.assert_allclose(sums.table(0)["mae"], metrics.mae(actual[:2], median[:2], axis=0))
    np.testing.assert_allclose(sums.table(1)["mae"], [0.0, 0.0, 0.0])


def test_score_sums_group_without_scale():
    sums, *_ = score_sums_example()
    assert np.isnan(sums.table(1)["mase"]).all()


def test_score_sums_point_forecast_has_no_interval():
    sums = metrics.ScoreSums(1, 2, None)
    sums.add(np.array([0]), np.array([[1.0, 2.0]]), np.array([1.0]), np.array([[1.0, 1.5]]))
    table = sums.table()
    assert np.isnan(table["pinball"]).all()
    assert np.isnan(table["coverage_80"]).all()


def test_score_sums_add_in_parts_equals_once():
    _, actual, last, median, quantiles = score_sums_example()
    groups = np.array([0, 0, 1])
    scales = np.array([0.5, 2.0, np.nan])
    whole = metrics.ScoreSums(2, 3, (0.1, 0.5, 0.9))
    whole.add(groups, actual, last, median, quantiles, scales)
    parts = metrics.ScoreSums(2, 3, (0.1, 0.5, 0.9))
    for rows in (slice(0, 1), slice(1, 3)):
        parts.add(groups[rows], actual[rows], last[rows], median[rows], quantiles[rows],
                  scales[rows])
    for key, value in whole.table().items():
        np.testing.assert_allclose(parts.table()[key], value, err_msg=key)
