"""Placement headroom study: exact headroom on hand-made prices, and a classifier that finds a
planted cross-series signal and finds none where the signal is only a decoy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spot_forecast.decision_backtest import pool_groups
from spot_forecast.placement_headroom import (
    FEATURE_HOURS,
    FEATURE_NAMES,
    HeadroomConfig,
    PriceMatrix,
    best_win_rate,
    collect_decisions,
    format_report,
    headroom,
    main,
    pair_features,
    study,
)

ROOT = Path(__file__).resolve().parents[1]
START = pd.Timestamp("2022-01-01T00:00Z")
ZONES = ("eu-west-1a", "eu-west-1b")


def two_zone_matrix(a: np.ndarray, b: np.ndarray) -> PriceMatrix:
    return PriceMatrix([f"{zone}/m5.large/Linux/UNIX" for zone in ZONES], START,
                       np.stack([a, b]).astype(float))


def test_headroom_counts_each_crossing_exactly():
    # Zone a costs 1.0 throughout; zone b costs 2.0 up to hour 169 and 0.5 from hour 170.
    length = FEATURE_HOURS + 5
    b = np.where(np.arange(length) < FEATURE_HOURS + 2, 2.0, 0.5)
    prices = two_zone_matrix(np.ones(length), b)
    origins = [FEATURE_HOURS, FEATURE_HOURS + 1, FEATURE_HOURS + 2, FEATURE_HOURS + 3]
    decisions = collect_decisions(prices, pool_groups(prices.unique_ids), origins, hours=2)

    # Origin 168: a is cheapest now and costs 2.0 against b's 2.5. Origin 169: a costs 2.0, b
    # 1.0, so b beats it by half. Origin 170: b is cheapest now (1.0 against 2.0). Origin 171
    # lacks the two hours after it and is skipped.
    assert decisions.beats.tolist() == [False, True, False]
    assert decisions.loses.tolist() == [True, False, True]
    assert decisions.saving.tolist() == [0.0, 0.5, 0.0]
    figures = headroom(decisions)
    assert figures["decisions"] == 3
    assert figures["best_beats_cheapest_now"] == 1
    assert figures["median_saving_percent"] == pytest.approx(50.0)
    assert figures["cheapest_now_extra_cost_percent"] == pytest.approx(50.0 / 3)
    assert figures["tied_now"] == 0


def test_equal_prices_now_count_as_tied():
    length = FEATURE_HOURS + 4
    prices = two_zone_matrix(np.ones(length), np.r_[np.full(length - 3, 2.0), np.ones(3)])
    decisions = collect_decisions(prices, pool_groups(prices.unique_ids),
                                  [FEATURE_HOURS, FEATURE_HOURS + 1], hours=2)
    # At the second origin both zones cost 1.0: "cheapest right now" picks among equals.
    assert decisions.tied_now.tolist() == [False, True]
    assert headroom(decisions)["tied_now"] == 1


def test_pair_features_read_both_histories():
    a = np.ones(FEATURE_HOURS + 1)
    a[-1] = 1.1  # a rose in the last hour and is still the cheaper
    b = np.full(FEATURE_HOURS + 1, 2.0)
    row = pair_features(np.stack([a, b]), baseline=0, same_type=np.array([True, True]))[0]
    named = dict(zip(FEATURE_NAMES, row, strict=True))

    assert named["log gap now (other / cheapest now)"] == pytest.approx(np.log(2.0 / 1.1))
    assert named["log change over 6 h, cheapest now"] == pytest.approx(np.log(1.1))
    assert named["log change over 6 h, other"] == 0.0
    assert named["price changes in 24 h, cheapest now"] == 1
    assert named["share of the last 168 h the other was cheaper"] == 0.0
    assert named["log gap of 168-hour means"] == pytest.approx(np.log(2.0 / a.mean()))
    assert named["same instance type (zone move)"] == 1.0


def precursor_prices(planted: bool, groups: int = 40, days: int = 70, seed: int = 3
                     ) -> pd.DataFrame:
    """Two zones per pool; zone a is 1 % cheaper until it jumps 5 % for a while.

    A small rise of zone a (the precursor) comes at random times. With ``planted`` every jump
    follows a precursor 4 hours later, so the precursor announces that b will turn cheaper. Without
    it, jumps come at random and precursors are decoys that nothing follows.
    """
    rng = np.random.default_rng(seed)
    hours = days * 24
    frames = []
    for group in range(groups):
        a = np.empty(hours)
        level, jump_at, precursor_until = 0.100, -1, -1
        for hour in range(hours):
            if level > 0.100 and hour > jump_at and rng.random() < 0.01:
                level = 0.100  # back from the jump after about 100 hours
            elif level == 0.100 and hour > precursor_until and rng.random() < 1 / 60:
                precursor_until = hour + 4
                if planted:
                    jump_at = hour + 4
            elif level == 0.100 and not planted and rng.random() < 1 / 60:
                jump_at = hour
            if hour == jump_at:
                level = 0.105
            a[hour] = 0.1002 if level == 0.100 and hour < precursor_until else level
        for zone, values in zip(ZONES, (a, np.full(hours, 0.101)), strict=True):
            instance_type = f"m5.s{group}"  # one pool per group
            frames.append(pd.DataFrame({
                "unique_id": f"{zone}/{instance_type}/Linux/UNIX",
                "ds": pd.date_range(START, periods=hours, freq="1h"),
                "y": values,
                "availability_zone": zone,
                "instance_type": instance_type,
                "product_description": "Linux/UNIX",
                "region": "eu-west-1",
            }))
    return pd.concat(frames, ignore_index=True)


SYNTHETIC = HeadroomConfig(cutoff=START + pd.Timedelta(days=56), hours=(24,),
                           judge_every_hours=2)


def test_classifier_finds_a_planted_signal():
    results = study(precursor_prices(planted=True), SYNTHETIC)
    row = results["windows"]["24h"]
    assert row["headroom"]["calibration"]["best_beats_cheapest_now"] > 20
    assert best_win_rate(row["classifier"]["calibration"]) >= 0.9
    assert "which reaches the 60 % target" in format_report(results, "study", ["synthetic"])


def test_classifier_reports_no_signal_behind_decoys():
    results = study(precursor_prices(planted=False), SYNTHETIC)
    row = results["windows"]["24h"]
    # Crossings still happen, but nothing before them announces them.
    assert row["headroom"]["calibration"]["best_beats_cheapest_now"] > 20
    best = best_win_rate(row["classifier"]["calibration"])
    assert best is None or best < 0.6
    assert "which stays below the 60 % target" in format_report(results, "study", ["synthetic"])


def test_real_cheapest_now_near_best(bundled_events):
    results = study(bundled_events)
    for window in ("24h", "72h"):
        for period, figures in results["windows"][window]["headroom"].items():
            assert figures["decisions"] > 0, period
            assert 0 <= figures["best_beats_cheapest_now"] < figures["decisions"], period
            # Over real eu-west-1 prices "cheapest right now" costs at most 0.1 % above the
            # hindsight best on average: little room for any forecast to win.
            assert figures["cheapest_now_extra_cost_percent"] < 0.1, period


def test_main_missing_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    assert main(["--data", str(missing), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert str(missing) in error
    assert "not found" in error


def test_main_prices_too_short_name_the_fix(tmp_path, capsys):
    # Real prices of five series over the seven weeks to 2023-12-30, after the default cut-off.
    prices = ROOT / "tests" / "data" / "real" / "spot_price_history.csv"
    assert main(["--data", str(prices), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "no 24-hour placement decision falls in the training period" in error
    assert "--cutoff" in error
    assert not (tmp_path / "placement-headroom.md").exists()


def test_main_writes_both_reports(tmp_path):
    prices = ROOT / "tests" / "data" / "real" / "spot_price_history.csv"
    assert main(["--data", str(prices), "--out", str(tmp_path), "--cutoff", "2023-12-29"]) == 0
    results = json.loads((tmp_path / "placement-headroom.json").read_text())
    assert results["setup"]["cutoff"] == "2023-12-29T00:00:00+00:00"
    assert results["windows"]["24h"]["headroom"]["calibration"]["decisions"] > 0
    assert "# Placement headroom" in (tmp_path / "placement-headroom.md").read_text()


def test_cutoff_after_prices_asks_earlier(tmp_path, capsys):
    prices = ROOT / "tests" / "data" / "real" / "spot_price_history.csv"
    assert main(["--data", str(prices), "--out", str(tmp_path), "--cutoff", "2030-01-01"]) == 2
    error = capsys.readouterr().err
    assert "is after the last price" in error
    assert "pass an earlier --cutoff" in error



def test_bidding_era_prices_leave_room():
    # us-east-1 in 2016, before AWS smoothed Spot prices: zones and types crossed often, and the
    # same study then finds a classifier that beats "cheapest right now".
    from spot_forecast.ingest import read_prices

    table, _ = read_prices([ROOT / "tests" / "data" / "real" / "us-east-1-2016"])
    results = study(table, HeadroomConfig(cutoff=pd.Timestamp("2016-04-11T00:00Z")))
    for window in ("24h", "72h"):
        row = results["windows"][window]
        assert row["headroom"]["calibration"]["share"] > 0.2
        assert row["headroom"]["calibration"]["cheapest_now_extra_cost_percent"] > 1.0
        assert best_win_rate(row["classifier"]["calibration"]) >= 0.6
