"""Training: the time split, the calibration fits and the metadata of a saved model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spot_forecast.config import Settings
from spot_forecast.grid import to_panel
from spot_forecast.model import SNAP_ALL, fit_median_threshold, fit_spread_scale
from spot_forecast.training import fit_forecaster, split_windows, truncate_panel
from synthetic import START, synthetic_events

TINY = dict(
    lookback=24, horizon=12, epochs=1, lstm_units=2, hidden_units=4, recurrent_hours=8,
    max_train_windows=256, batch_size=64, validation_days=3, calibration_days=3,
    calibration_every=6, products=("Linux/UNIX",), tf_threads=2, seed=11,
)


def shrink_cost(medians, raw_targets, last, scale, threshold):
    shrunk = medians - np.clip(medians, -threshold, threshold)
    actual = last * np.exp(raw_targets)
    return np.abs(actual - last * np.exp(shrunk * scale)).mean()


def calibration_example(seed: int = 3, n: int = 400, steps: int = 30):
    """Windows whose target is zero 70 % of the time, and medians that carry noise."""
    rng = np.random.default_rng(seed)
    raw_targets = np.where(rng.random((n, steps)) < 0.7, 0.0, rng.normal(0, 0.02, (n, steps)))
    medians = raw_targets / 0.01 + rng.normal(0, 0.5, (n, steps))
    last = rng.uniform(0.01, 1.0, n)
    quantiles = np.stack([medians - 1, medians, medians + 1], axis=-1)
    return quantiles, raw_targets, last


def test_median_threshold_beats_extremes():
    quantiles, raw_targets, last = calibration_example()
    thresholds = fit_median_threshold(quantiles, raw_targets, last, scale=0.01, median_index=1)
    medians = quantiles[..., 1]
    fitted = sum(shrink_cost(medians[:, h], raw_targets[:, h], last, 0.01, thresholds[h])
                 for h in range(30))
    unchanged = sum(shrink_cost(medians[:, h], raw_targets[:, h], last, 0.01, 0.0)
                    for h in range(30))
    last_value = sum(shrink_cost(medians[:, h], raw_targets[:, h], last, 0.01, SNAP_ALL)
                     for h in range(30))
    assert fitted < unchanged
    assert fitted < last_value


def test_running_median_removes_lone_spike():
    from spot_forecast.model import running_median

    values = np.array([9.0, 9.0, 9.0, 0.1, 0.1, 0.1, 5.0, 0.1, 0.1, 0.1, 0.1, 0.1])
    smoothed = running_median(values, 5)
    assert smoothed[6] == 0.1
    assert smoothed[0] == 9.0
    assert len(smoothed) == len(values)


def test_exact_last_value_shrinks_all():
    raw_targets = np.zeros((50, 1))
    quantiles = np.stack([np.full((50, 1), -1.0), np.full((50, 1), 0.3), np.ones((50, 1))], -1)
    thresholds = fit_median_threshold(quantiles, raw_targets, np.ones(50), scale=0.01,
                                      median_index=1)
    # Any threshold at or above the largest |median| snaps every median to the last value;
    # the search may pick the smallest such candidate rather than SNAP_ALL itself.
    assert thresholds[0] >= np.abs(quantiles[..., 1]).max()


def test_exact_median_keeps_zero_threshold():
    rng = np.random.default_rng(8)
    raw_targets = rng.normal(0, 0.02, (50, 1))
    medians = raw_targets / 0.01
    quantiles = np.stack([medians - 1, medians, medians + 1], axis=-1)
    thresholds = fit_median_threshold(quantiles, raw_targets, np.ones(50), scale=0.01,
                                      median_index=1)
    assert thresholds[0] == 0.0


def test_spread_scale_reaches_nominal_coverage():
    rng = np.random.default_rng(5)
    targets = rng.normal(0, 2.0, (4000, 1))
    # Intervals of the unit normal are too narrow by a factor of two for these targets.
    unit = np.array([-1.2816, 0.0, 1.2816])
    quantiles = np.broadcast_to(unit, (4000, 1, 3)).copy()
    factors = fit_spread_scale(quantiles, targets, (0.1, 0.5, 0.9))
    assert factors[0, 1] == 1.0
    assert factors[0, 0] == pytest.approx(2.0, rel=0.06)  # sampling error of a 4000-draw quantile
    inside = np.abs(targets[:, 0]) <= factors[0, 0] * 1.2816
    assert inside.mean() == pytest.approx(0.8, abs=0.001)


def test_spread_scale_zero_when_median_exact():
    targets = np.zeros((100, 1))
    quantiles = np.broadcast_to(np.array([-1.0, 0.0, 1.0]), (100, 1, 3)).copy()
    assert fit_spread_scale(quantiles, targets, (0.1, 0.5, 0.9))[0, 0] == 0.0


def test_truncate_panel_drops_later_points():
    panel = to_panel(synthetic_events(days=5))
    end = START + pd.Timedelta(hours=50)
    truncated = truncate_panel(panel, end)
    assert truncated.end == end
    assert all(s.end <= end for s in truncated)
    assert all(len(s.values) == 51 for s in truncated)


def test_training_targets_end_by_cutoff():
    panel = to_panel(synthetic_events())
    cutoff = START + pd.Timedelta(days=12)
    split = split_windows(panel, series_ids=panel.ids(), cutoff=cutoff, lookback=24, horizon=12,
                          max_train_windows=100_000, seed=0)
    cutoff_position = int((cutoff - START) // pd.Timedelta(hours=1))
    assert (split.train.origins + 12 <= cutoff_position).all()
    assert (split.validation.origins >= cutoff_position).all()


def test_fit_ignores_data_after_end():
    events = synthetic_events()
    end = START + pd.Timedelta(days=14)
    changed = events.copy()
    later = changed["ds"] > end
    changed.loc[later, "y"] = changed.loc[later, "y"] * 40.0
    settings = Settings(**TINY)
    fits = []
    for table in (events, changed):
        panel = to_panel(table)
        fits.append(fit_forecaster(panel, settings, series_ids=panel.ids(), end=end, verbose=0))
    assert fits[0].end == end
    assert fits[0].scaler.scale_ == fits[1].scaler.scale_
    np.testing.assert_array_equal(fits[0].empirical, fits[1].empirical)
    assert fits[0].calibration["windows"] == fits[1].calibration["windows"]


def test_train_stores_backtest_and_guard():
    from spot_forecast.store import load_bundle
    from spot_forecast.training import train

    result = train(Settings(**TINY, model_name="tiny_training_test"), events=synthetic_events(),
                   save=True, verbose=0)
    metadata = load_bundle(result.tag, load_model=False).metadata
    assert set(metadata["backtest"]["by_horizon"]) == {"1", "6"}
    assert "empirical_pinball" in metadata["backtest"]["by_horizon"]["6"]
    assert metadata["guard"]["baseline_steps"] == result.guard_steps
    assert np.shape(metadata["guard"]["empirical_log_quantiles"]) == (12, 7)
    assert set(metadata["calibration"]["interval_80_scale"]) == {"1", "6"}
    assert metadata["training_window"]["training_end"] < metadata["training_window"]["cutoff"]
