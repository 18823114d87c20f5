"""The rolling-origin backtest: origins, actuals, the guard, the cut-off and the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from spot_forecast.config import Settings
from spot_forecast.evaluate import (
    BacktestConfig,
    actual_prices,
    apply_guard,
    evaluation_origins,
    run_backtest,
    write_report,
)
from spot_forecast.grid import to_panel
from synthetic import START, synthetic_events

CUTOFF = START + pd.Timedelta(days=14)
TINY = dict(
    lookback=24, horizon=12, epochs=1, lstm_units=2, hidden_units=4, recurrent_hours=8,
    max_train_windows=256, batch_size=64, calibration_days=3, calibration_every=6,
    products=("Linux/UNIX",), tf_threads=2, seed=11,
)


def test_origins_every_day_from_cutoff():
    panel = to_panel(synthetic_events())
    config = BacktestConfig(cutoff=CUTOFF, min_history=48)
    series = evaluation_origins(panel, panel.ids(), config)
    cutoff_position = int((CUTOFF - START) // pd.Timedelta(hours=1))
    origins = series[0].origins
    assert origins[0] == cutoff_position
    assert (np.diff(origins) == 24).all()
    assert origins[-1] <= len(series[0].values) - 2


def test_origins_need_min_history():
    panel = to_panel(synthetic_events())
    config = BacktestConfig(cutoff=START + pd.Timedelta(hours=30), min_history=100)
    series = evaluation_origins(panel, panel.ids(), config)
    assert series[0].origins[0] == 30 + 3 * 24


def test_actual_prices_missing_past_end():
    actual = actual_prices(np.array([1.0, 2.0, 3.0]), np.array([0, 1]), 3)
    np.testing.assert_array_equal(actual[0, :2], [2.0, 3.0])
    assert np.isnan(actual[0, 2])
    assert np.isnan(actual[1, 1:]).all()


def test_guard_matches_service_assemble():
    from spot_forecast.forecast import Guard, assemble
    from spot_forecast.windows import LogRatioScaler

    levels = (0.1, 0.5, 0.9)
    scaler = LogRatioScaler(scale_=0.05)
    table = np.tile(np.array([[-0.02, 0.0, 0.03]]), (3, 1))
    scaled = np.full((3, 3), 0.4)
    served = assemble("x", scaled, last_price=0.04, end=START, horizon=3, quantiles=levels,
                      scaler=scaler, guard=Guard(frozenset({2}), table))
    prices = 0.04 * np.exp(scaled * 0.05)[None]
    guarded = apply_guard(prices, np.array([0.04]), [2], table, levels)
    np.testing.assert_allclose(guarded[0], served.values, rtol=1e-12)


@pytest.fixture(scope="module")
def backtest():
    settings = Settings(**TINY)
    config = BacktestConfig(cutoff=CUTOFF, min_history=48, ets_series=1, fan_series=2)
    return run_backtest(synthetic_events(), settings, config)


def test_backtest_trains_before_cutoff(backtest):
    assert pd.Timestamp(backtest["split"]["training_targets_end"]) < CUTOFF
    assert pd.Timestamp(backtest["split"]["calibration"]["end"]) <= CUTOFF


def test_backtest_scores_every_model(backtest):
    rows = backtest["by_horizon"]["all"]
    assert set(rows) == {"lstm", "last_value", "seasonal_naive_24", "seasonal_naive_168",
                         "boosting", "auto_ets", "lstm_ets_sample"}
    assert rows["lstm"]["6"]["windows"] == rows["last_value"]["6"]["windows"]
    assert rows["auto_ets"]["6"]["windows"] < rows["lstm"]["6"]["windows"]


def test_backtest_pairs_lstm_with_ets_sample(backtest):
    pytest.importorskip("statsforecast")
    rows = backtest["by_horizon"]["all"]
    assert rows["lstm_ets_sample"]["6"]["windows"] == rows["auto_ets"]["6"]["windows"]
    assert rows["lstm_ets_sample"]["6"]["last_value_mae"] == rows["auto_ets"]["6"]["last_value_mae"]


def test_backtest_point_models_lack_pinball(backtest):
    rows = backtest["by_horizon"]["all"]
    assert rows["boosting"]["6"]["pinball"] is None
    assert rows["lstm"]["6"]["pinball"] is not None


def test_targets_past_horizon_not_met(backtest):
    # The tiny model forecasts 12 hours, so the 24-hour targets have no metric.
    checks = {check["target"]: check for check in backtest["targets"]}
    assert checks["MAE at most 0.85 of the last value at 24 h"]["value"] == "missing"
    assert checks["MAE at most 0.85 of the last value at 24 h"]["met"] is False


def test_targets_checked_within_horizon(backtest):
    checks = {check["target"]: check for check in backtest["targets"]}
    assert checks["no worse than the last value at any step"]["value"] != "missing"
    assert checks["evaluation within 30 minutes"]["met"] is True


def test_report_files_written(backtest, tmp_path):
    paths = write_report(backtest, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["evaluation.json", "evaluation.md", "evaluation_coverage_by_horizon.png",
                     "evaluation_error_by_horizon.png", "evaluation_fan_charts.png"]
    assert json.loads((tmp_path / "evaluation.json").read_text())["command"]
    assert "| LSTM (this model) |" in (tmp_path / "evaluation.md").read_text()


def test_report_adds_decision_targets(backtest, tmp_path):
    decisions = {
        "model": "spot_lstm_dev:abc", "report": "decisions.md", "seconds": 1.0,
        "targets": [{"target": "window_4h extra cost <= 1 %", "value": 0.009, "met": True,
                     "shown": "0.009 %"},
                    {"target": "risk calibration within 5 points per judged decile",
                     "value": 6.25, "met": False, "shown": "6.2 points"}],
    }
    write_report({**backtest, "decisions": decisions}, tmp_path)
    text = (tmp_path / "evaluation.md").read_text()
    assert "## Decisions" in text
    assert "[decisions.md](decisions.md)" in text
    assert "| window_4h extra cost <= 1 % | 0.009 % | yes |" in text
    assert "| risk calibration within 5 points per judged decile | 6.2 points | no |" in text


def test_report_without_decisions_has_no_section(backtest, tmp_path):
    write_report(backtest, tmp_path)
    assert "## Decisions" not in (tmp_path / "evaluation.md").read_text()


def test_decisions_option_replays_with_the_cutoff(monkeypatch, tmp_path):
    import argparse

    from spot_forecast import evaluate

    calls = []

    def fake_backtest(events, settings, config):
        return {"runtime_seconds": {"total": 1.0}, "command": "spot-forecast evaluate"}

    monkeypatch.setattr(evaluate, "run_backtest", fake_backtest)
    monkeypatch.setattr(evaluate, "check_targets", lambda results: [])
    monkeypatch.setattr(evaluate, "replay_decisions",
                        lambda events, paths, cutoff, out: calls.append((cutoff, out)) or {})
    monkeypatch.setattr(evaluate, "write_report", lambda results, folder: [])
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    data = tmp_path / "prices.csv"
    events = synthetic_events()
    events.rename(columns={"ds": "Timestamp", "y": "SpotPrice", "availability_zone":
                           "AvailabilityZone", "instance_type": "InstanceType",
                           "product_description": "ProductDescription"}).drop(
        columns=["unique_id", "region"]).to_csv(data, index=False)
    args = parser.parse_args([str(data), "--decisions", "--cutoff", "2024-04-10T00:00Z",
                              "--out", str(tmp_path)])
    assert evaluate.run_from_args(args, Settings(**TINY)) == 0
    assert calls == [(pd.Timestamp("2024-04-10T00:00Z"), tmp_path)]
    args = parser.parse_args([str(data), "--out", str(tmp_path)])
    evaluate.run_from_args(args, Settings(**TINY))
    assert len(calls) == 1
