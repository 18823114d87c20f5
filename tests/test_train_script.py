"""train.py as a user runs it: from files or from an archive, printing the baseline table."""

from __future__ import annotations

import pytest

import train
from spot_forecast.archive import append_prices

TINY = ["--epochs", "1", "--lookback", "24", "--horizon", "24", "--max-train-windows", "256"]


@pytest.fixture
def tiny_settings(monkeypatch):
    monkeypatch.setenv("SPOT_FORECAST_LSTM_UNITS", "4")
    monkeypatch.setenv("SPOT_FORECAST_TF_THREADS", "2")


def test_archive_run_prints_baseline(bundled_events, tmp_path, capsys, tiny_settings):
    sample = bundled_events[bundled_events["instance_type"] == "m5.large"]
    append_prices(tmp_path / "archive", sample)

    code = train.main(["--archive", str(tmp_path / "archive"), "--no-save", *TINY])

    output = capsys.readouterr().out
    assert code == 0
    assert "last-value MAE" in output
    assert "24 h" in output


def test_files_run_saves_model(tmp_path, capsys, tiny_settings):
    from conftest import ROOT

    source = ROOT / "tests" / "data" / "real" / "spot_price_history.csv"
    code = train.main([str(source), "--model-name", "script_test", "--validation-days", "7",
                       *TINY])

    output = capsys.readouterr().out
    assert code == 0
    assert "Saved script_test:" in output


def test_files_and_archive_rejected(tmp_path, tiny_settings):
    assert train.main(["data", "--archive", str(tmp_path)]) == 2


def test_unreadable_file_fails_cleanly(tmp_path, tiny_settings):
    bad = tmp_path / "prices.csv"
    bad.write_text("Timestamp,Region,SpotPrice\n2024-05-10T00:00:00Z,us-east-1,0.03\n")
    assert train.main([str(bad), *TINY]) == 1


@pytest.mark.parametrize("option, value, words", [
    ("--epochs", "0", "greater than or equal to 1"),
    ("--horizon", "300", "less than or equal to 168"),
])
def test_out_of_range_option_exits_2(option, value, words, capsys):
    assert train.main([option, value]) == 2
    error = capsys.readouterr().err
    assert f"invalid {option} {int(value)!r}" in error
    assert words in error


def test_missing_archive_fails_cleanly(tmp_path, capsys, tiny_settings):
    assert train.main(["--archive", str(tmp_path / "no-archive"), *TINY]) == 1
    error = capsys.readouterr().err
    assert "train.py: error: training failed" in error
    assert "no-archive" in error
