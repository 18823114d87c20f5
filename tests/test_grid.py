"""Events to the hourly grid: forward fill, no fill before the first record, per series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spot_forecast.grid import FrequencyError, check_frequency, events_to_grid, to_panel

# C09: irregular events around midnight, grid from 00:00 to 06:00.
C09_TIMES = ["2024-05-09T23:58:07Z", "2024-05-10T01:13:45Z", "2024-05-10T05:02:11Z"]
C09_PRICES = [0.0310, 0.0322, 0.0315]


def c09_table() -> pd.DataFrame:
    return pd.DataFrame({
        "unique_id": "us-east-1a/m5.large/Linux/UNIX",
        "ds": pd.to_datetime(C09_TIMES, utc=True),
        "y": C09_PRICES,
    })


def test_irregular_events_fill_forward():
    start, values = events_to_grid(
        pd.to_datetime(C09_TIMES, utc=True), np.array(C09_PRICES),
        end=pd.Timestamp("2024-05-10T06:00Z"),
    )
    assert start == pd.Timestamp("2024-05-10T00:00Z")
    assert values.tolist() == [0.0310, 0.0310, 0.0322, 0.0322, 0.0322, 0.0322, 0.0315]


def test_grid_has_no_nan():
    _, values = events_to_grid(
        pd.to_datetime(C09_TIMES, utc=True), np.array(C09_PRICES),
        end=pd.Timestamp("2024-05-10T06:00Z"),
    )
    assert not np.isnan(values).any()


def test_nothing_filled_before_first_record():
    table = pd.DataFrame({
        "unique_id": ["a/x/Linux", "b/x/Linux"],
        "ds": pd.to_datetime(["2024-05-10T00:30Z", "2024-05-10T04:10Z"], utc=True),
        "y": [1.0, 2.0],
    })
    panel = to_panel(table, end=pd.Timestamp("2024-05-10T06:00Z"))
    late = panel.select(["b/x/Linux"]).series[0]
    assert late.start == pd.Timestamp("2024-05-10T05:00Z")
    assert late.values.tolist() == [2.0, 2.0]


def test_series_never_mix():
    table = pd.DataFrame({
        "unique_id": ["a/x/Linux", "b/x/Linux", "a/x/Linux"],
        "ds": pd.to_datetime(["2024-05-10T00:00Z", "2024-05-10T01:00Z", "2024-05-10T02:00Z"],
                             utc=True),
        "y": [1.0, 50.0, 3.0],
    })
    panel = to_panel(table)
    first = panel.select(["a/x/Linux"]).series[0]
    assert first.values.tolist() == [1.0, 1.0, 3.0]


def test_panel_frame_round_trip():
    panel = to_panel(c09_table(), end=pd.Timestamp("2024-05-10T06:00Z"))
    frame = panel.to_frame()
    assert list(frame.columns) == ["unique_id", "ds", "y"]
    assert len(frame) == 7
    assert frame["ds"].iloc[-1] == pd.Timestamp("2024-05-10T06:00Z")


def test_other_frequency_rejected():
    with pytest.raises(FrequencyError, match="trained at '1h'"):
        check_frequency("5min", "1h")


def test_same_frequency_accepted():
    assert check_frequency("60min", "1h") == pd.Timedelta(hours=1)


def test_real_series_gridded(bundled_events):
    panel = to_panel(bundled_events)
    assert len(panel) == bundled_events["unique_id"].nunique()
    for series in panel:
        assert np.isfinite(series.values).all()
        assert (series.values > 0).all()
        assert series.end == panel.end
