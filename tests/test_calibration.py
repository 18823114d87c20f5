"""Calibration refresh of a stored model, and the trailing refits of the decision backtest."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

#: Quantile levels of the synthetic forecasts.
LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
#: A small replay: few paths and groups, five days of origins, 24-hour horizon.
SMALL = dict(n_paths=100, groups=3, calibration_days=5, job_hours=(4, 24), placement_hours=(24,),
             risk_hours=(24,))


@pytest.fixture(scope="module")
def copied_model(small_model_tag: str) -> str:
    """A copy of the small model under its own name, so refits leave ``spot_lstm`` as it is."""
    from spot_forecast.store import HISTORY_FILE, load_bundle, save_bundle

    bundle = load_bundle(small_model_tag)
    history = pd.read_parquet(bundle.path / HISTORY_FILE)
    return save_bundle("spot_lstm_calibration_test", bundle.model, bundle.scaler,
                       bundle.metadata, history)


def test_calibrate_saves_new_version(copied_model, bundled_events):
    from spot_forecast.calibration import calibrate
    from spot_forecast.decision_backtest import DecisionConfig
    from spot_forecast.decisions import PathModel, packaged_path_model
    from spot_forecast.store import load_bundle

    result = calibrate(copied_model, bundled_events, DecisionConfig(**SMALL))

    assert result.tag is not None
    assert result.tag != copied_model
    assert result.tag.split(":")[0] == "spot_lstm_calibration_test"
    saved = load_bundle(result.tag, load_model=False)
    stored = saved.metadata["sample_paths"]
    assert PathModel.from_metadata(saved.metadata) == result.model
    assert stored["risk_knots"] != packaged_path_model()["risk_knots"]
    # rho and the margins are kept; the history travels with the new version.
    before = PathModel.from_metadata(load_bundle(copied_model, load_model=False).metadata)
    assert result.model.rho == before.rho
    assert result.model.rank_min_saving_percent == before.rank_min_saving_percent
    assert set(saved.history) == set(load_bundle(copied_model, load_model=False).history)

    details = stored["calibration"]
    prices_end = pd.Timestamp(details["prices_end"])
    # Every origin is followed by its whole horizon of known prices.
    assert pd.Timestamp(details["last_origin"]) <= prices_end - pd.Timedelta(hours=24)
    assert pd.Timestamp(details["first_origin"]) >= prices_end - pd.Timedelta(days=5)
    assert details["origins"] >= 6
    assert details["fitted_from"] == copied_model


def test_calibrate_rejects_too_short_prices(copied_model, bundled_events):
    from spot_forecast.calibration import CalibrationError, calibrate
    from spot_forecast.decision_backtest import DecisionConfig

    end = bundled_events["ds"].max()
    recent = bundled_events[bundled_events["ds"] > end - pd.Timedelta(days=2)]
    with pytest.raises(CalibrationError, match="a refit needs 6"):
        calibrate(copied_model, recent, DecisionConfig(**SMALL), save=False)


def test_calibrate_command_names_the_fix(copied_model, capsys):
    from conftest import BUNDLED_DATA

    from spot_forecast.cli import EXIT_USAGE, main

    # Checked before the prices are read: 2 days cannot hold 6 origins with 72 known hours each.
    code = main(["-q", "calibrate", "--model", copied_model, "--data", str(BUNDLED_DATA),
                 "--days", "2"])
    assert code == EXIT_USAGE
    assert "--days is 2; a refit needs at least 5 days" in capsys.readouterr().err


def test_trailing_origins_known_only():
    from spot_forecast.decision_backtest import DecisionConfig, trailing_origins

    config = DecisionConfig(calibration_days=2, job_hours=(4,), placement_hours=(24,),
                            risk_hours=(24,), window_deadline_hours=24)
    origin = pd.Timestamp("2022-02-20T00:00Z")
    known = list(pd.date_range(origin - pd.Timedelta(days=4), origin, freq="8h"))
    chosen = trailing_origins(origin, known, config)
    assert chosen[0] == origin - pd.Timedelta(days=2)
    assert chosen[-1] == origin - pd.Timedelta(hours=24)
    assert all(t + pd.Timedelta(hours=config.horizon) <= origin for t in chosen)


def test_replay_refits_follow_a_shift():
    """Risk that rises after the cut-off: the trailing refits track it, a fixed map does not."""
    from spot_forecast.decision_backtest import DecisionConfig, replay
    from spot_forecast.forecast import Forecast
    from spot_forecast.grid import Panel, Series

    start = pd.Timestamp("2022-01-01T00:00Z")
    hours = 24 * 40
    cutoff = start + pd.Timedelta(days=20)
    rng = np.random.default_rng(7)
    series = []
    for zone in "abcdef":
        # Before the cut-off the price rises 2 % on 10 % of days, afterwards on 60 %.
        prices = np.full(hours, 0.05)
        for day in range(40):
            if rng.random() < (0.1 if day < 20 else 0.6):
                prices[day * 24 + 12:] *= 1.02
        series.append(Series(f"z-1{zone}/t.small/Linux/UNIX", start, prices))
    panel = Panel(tuple(series), pd.Timedelta(hours=1), start + (hours - 1) * pd.Timedelta(hours=1))

    def flat_forecaster(histories):
        # The same narrow forecast whatever happens: its calibration must come from the refits.
        spread = np.exp(np.linspace(-0.005, 0.005, len(LEVELS)))
        return [Forecast(uid, end, float(p[-1]), pd.Timedelta(hours=1), LEVELS,
                         np.tile(p[-1] * spread, (horizon, 1)))
                for uid, p, end, horizon in histories]

    config = DecisionConfig(cutoff=cutoff, calibration_days=6, groups=1, n_paths=50,
                            job_hours=(4,), window_job_hours=(4,), placement_hours=(24,),
                            risk_hours=(24,), risk_rise_percent=(1.0,), rho_grid=(0.9,),
                            min_decile_decisions=1)
    refitted = replay(panel, flat_forecaster, config)
    fixed = replay(panel, flat_forecaster, replace(config, recalibrate=False))
    observed = refitted["price_risk"]["by_setting"]["24h +1%"]["observed_frequency"]
    assert observed > 0.3
    recalibration = refitted["sample_paths"]["fitting"]["recalibration"]
    assert recalibration["refits"] == len(refitted["setup"]["evaluation_origins"])
    # Every refit reads the origins 8 hours apart from 6 days to 24 hours before it, also
    # those just before the cut-off whose outcomes end after it.
    assert recalibration["origins_per_refit"] == [16, 16]
    error = abs(refitted["price_risk"]["by_setting"]["24h +1%"]["mean_probability"] - observed)
    fixed_error = abs(fixed["price_risk"]["by_setting"]["24h +1%"]["mean_probability"] - observed)
    assert error < fixed_error / 2
    assert fixed["price_risk_fixed_map"] == fixed["price_risk"]


def test_calibrate_command_saves(copied_model, bundled_events, tmp_path, capsys):
    from spot_forecast.cli import main
    from spot_forecast.store import load_bundle

    # The last week of one instance type, as a CSV with the AWS column names.
    end = bundled_events["ds"].max()
    rows = bundled_events[(bundled_events["instance_type"] == "m5.large")
                          & (bundled_events["ds"] > end - pd.Timedelta(days=9))]
    path = tmp_path / "m5.csv"
    rows.rename(columns={"ds": "Timestamp", "availability_zone": "AvailabilityZone",
                         "instance_type": "InstanceType", "product_description": "ProductDescription",
                         "y": "SpotPrice"})[
        ["Timestamp", "AvailabilityZone", "InstanceType", "ProductDescription", "SpotPrice"]
    ].to_csv(path, index=False)

    code = main(["-q", "calibrate", "--model", copied_model, "--data", str(path), "--days", "5"])
    out = capsys.readouterr().out
    assert code == 0, out
    tag = out.split()[1].rstrip(":")
    assert tag.startswith("spot_lstm_calibration_test:")
    assert tag != copied_model
    details = load_bundle(tag, load_model=False).metadata["sample_paths"]["calibration"]
    assert f"refitted on {details['origins']} origins" in out
    # Every zone's Linux/UNIX and Windows series (the products the backtest samples).
    sampled = rows[rows["product_description"].isin(["Linux/UNIX", "Windows"])]
    assert details["series"] == sampled["unique_id"].nunique() == 6
