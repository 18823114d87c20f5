"""`spot-forecast plot`: the fan chart of a stored series as a PNG, forecast in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spot_forecast.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main

SERIES = "eu-west-1a/m5.large/Linux/UNIX"


def test_plot_writes_png(small_model_tag, tmp_path: Path) -> None:
    import matplotlib.image

    out = tmp_path / "fan.png"
    code = main(["plot", SERIES, "--model", small_model_tag, "--horizon", "48", "--out", str(out)])
    assert code == EXIT_OK
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (400, 1000)
    # Lines and bands leave many pixels that are not white.
    assert np.mean(pixels[..., :3].min(axis=-1) < 0.9) > 0.01


@pytest.mark.parametrize("series_id, hint", [
    ("eu-west-1z/m5.large/Linux/UNIX", "series of the same type and product:"),
    ("eu-west-1a/m5.larg/Linux/UNIX", "close matches:"),
])
def test_plot_unknown_series_fails(series_id, hint, small_model_tag, tmp_path: Path,
                                   capsys) -> None:
    code = main(["plot", series_id, "--model", small_model_tag, "--out", str(tmp_path / "x.png")])
    assert code == EXIT_FAILED
    error = capsys.readouterr().err
    assert f"holds no history for series {series_id!r}" in error
    assert hint in error
    assert SERIES in error
    assert not (tmp_path / "x.png").exists()


def test_plot_horizon_beyond_model(small_model_tag, tmp_path: Path, capsys) -> None:
    code = main(["plot", SERIES, "--model", small_model_tag, "--horizon", "500",
                 "--out", str(tmp_path / "x.png")])
    assert code == EXIT_USAGE
    assert "forecasts 1 to 168 hours" in capsys.readouterr().err


def test_flat_fan_chart_axes_readable(tmp_path: Path) -> None:
    import matplotlib.dates as mdates
    import pandas as pd

    from spot_forecast.cli import MIN_PRICE_SPAN, plot_fan_chart
    from spot_forecast.forecast import Forecast

    last = pd.Timestamp("2022-03-13T16:00Z")
    history = pd.Series(0.0361, index=pd.date_range(last - pd.Timedelta(hours=167), last,
                                                    freq="1h"))
    # A flat forecast whose band is a few millionths of a dollar wide, as a calm series gets.
    levels = (0.05, 0.1, 0.5, 0.9, 0.95)
    offsets = np.array([-8e-7, -1e-7, 0.0, 1e-7, 8e-7])
    forecast = Forecast("eu-west-1a/m5.large/Linux/UNIX", last, 0.0361, pd.Timedelta(hours=1),
                        levels, np.tile(0.0361 + offsets, (72, 1)))
    figure = plot_fan_chart(history, forecast, tmp_path / "flat.png", title="flat")
    figure.canvas.draw()
    axes = figure.axes[0]

    low, high = axes.get_ylim()
    assert high - low == pytest.approx(MIN_PRICE_SPAN * 0.0361)
    assert axes.yaxis.get_offset_text().get_text() == ""  # plain prices, no "1e-6+3.61e-2"
    assert isinstance(axes.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
    labels = [label.get_text() for label in axes.get_xticklabels() if label.get_text()]
    assert all(len(label) <= 6 for label in labels), labels


@pytest.mark.parametrize("command", [
    ["plot", SERIES, "--out"],
    ["history", SERIES, "--plot"],
])
def test_png_in_missing_folder_rejected(command, tmp_path: Path, capsys) -> None:
    target = tmp_path / "no-such-folder" / "chart.png"
    with pytest.raises(SystemExit) as exit_info:
        main([*command, str(target)])
    assert exit_info.value.code == EXIT_USAGE
    error = capsys.readouterr().err
    assert f"folder {str(target.parent)!r}" in error
    assert "does not exist" in error
