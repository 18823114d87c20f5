"""Baselines on small synthetic series: values, shapes, missing steps and the cut-off."""

from __future__ import annotations

import numpy as np
import pytest

from spot_forecast import baselines

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def test_last_value_repeats_origin_price():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    forecast = baselines.last_value(values, np.array([1, 3]), 2)
    np.testing.assert_array_equal(forecast, [[2.0, 2.0], [4.0, 4.0]])


def test_seasonal_naive_takes_same_phase():
    values = np.arange(10, dtype=float)
    forecast = baselines.seasonal_naive(values, np.array([5]), 5, 3)
    # Steps 1-3 read hours 3, 4, 5; steps 4-5 read hours 3 and 4 again (one season back).
    np.testing.assert_array_equal(forecast, [[3.0, 4.0, 5.0, 3.0, 4.0]])


def test_seasonal_naive_missing_without_season():
    forecast = baselines.seasonal_naive(np.arange(10, dtype=float), np.array([1, 2]), 2, 3)
    assert np.isnan(forecast[0]).all()
    assert np.isfinite(forecast[1]).all()


def test_empirical_forecast_scales_last_price():
    table = np.log(np.array([[0.9, 1.0, 1.2], [0.8, 1.0, 1.5]]))
    forecast = baselines.empirical_quantile_forecast(np.array([2.0]), table)
    np.testing.assert_allclose(forecast[0], [[1.8, 2.0, 2.4], [1.6, 2.0, 3.0]])


def test_ets_levels_pair_quantiles():
    assert baselines.ets_levels(QUANTILES) == [50, 80, 90]


def test_auto_ets_flat_series_stays_flat():
    pytest.importorskip("statsforecast")
    values = np.full(200, 0.0345)
    forecast, failures = baselines.auto_ets(values, np.array([150, 199]), 6, QUANTILES)
    assert failures == 0
    assert forecast.shape == (2, 6, len(QUANTILES))
    # A constant history gives a constant forecast up to the fit's float rounding.
    np.testing.assert_allclose(forecast, 0.0345, atol=1e-9)


def test_auto_ets_quantiles_ordered():
    pytest.importorskip("statsforecast")
    rng = np.random.default_rng(0)
    values = 0.05 * np.exp(np.cumsum(rng.normal(0, 0.01, 400)))
    forecast, _ = baselines.auto_ets(values, np.array([350]), 24, QUANTILES)
    assert (np.diff(forecast, axis=-1) >= 0).all()
    assert forecast[0, 0, 0] < forecast[0, 0, -1]


def test_lag_changes_values():
    log_prices = np.log(np.array([1.0, 2.0, 4.0, 8.0]))
    features = baselines.lag_changes(log_prices, np.array([3, 1]), lags=(1, 2))
    np.testing.assert_allclose(features[0], [np.log(2), np.log(4)])
    assert features[1, 0] == pytest.approx(np.log(2))
    assert np.isnan(features[1, 1])


def trending_series(count: int = 6, length: int = 300, seed: int = 0) -> list[np.ndarray]:
    """Prices that rise 1 % at every change, with changes every few hours."""
    rng = np.random.default_rng(seed)
    series = []
    for _ in range(count):
        steps = (rng.random(length) < 0.3) * 0.01
        series.append(0.05 * np.exp(np.cumsum(steps)))
    return series


def test_boosting_learns_rising_prices():
    series = trending_series()
    model = baselines.LagChangeBoosting(horizons=(6,), origins_per_series=100, max_iter=50)
    model.fit(series, [len(s) - 1 for s in series])
    forecast = model.predict(series[0], np.array([250]), 6)
    assert forecast[0, 5] > series[0][250]
    assert np.isnan(forecast[0, :5]).all()


def test_boosting_ignores_prices_after_cutoff():
    series = trending_series()
    cutoffs = [200] * len(series)
    changed = [np.concatenate([s[:201], s[201:] * 50.0]) for s in series]
    first = baselines.LagChangeBoosting(horizons=(6,), origins_per_series=50, max_iter=30)
    second = baselines.LagChangeBoosting(horizons=(6,), origins_per_series=50, max_iter=30)
    first.fit(series, cutoffs)
    second.fit(changed, cutoffs)
    origins = np.array([100, 150, 194])
    np.testing.assert_array_equal(first.predict(series[1], origins, 6),
                                  second.predict(series[1], origins, 6))


def test_boosting_predict_many_stacks_series():
    series = trending_series()
    model = baselines.LagChangeBoosting(horizons=(1, 3), origins_per_series=50, max_iter=20)
    model.fit(series, [250] * len(series))
    stacked = model.predict_many([(series[0], np.array([100])), (series[1], np.array([120, 130]))],
                                 3)
    np.testing.assert_array_equal(stacked[1:], model.predict(series[1], np.array([120, 130]), 3))
