"""`spot-forecast plot`: the fan chart of a stored series as a PNG, forecast in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spot_forecast.cli import EXIT_FAILED, EXIT_OK, main

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


def test_plot_unknown_series_fails(small_model_tag, tmp_path: Path, capsys) -> None:
    code = main(["plot", "eu-west-1z/m5.large/Linux/UNIX", "--model", small_model_tag,
                 "--out", str(tmp_path / "x.png")])
    assert code == EXIT_FAILED
    error = capsys.readouterr().err
    assert "holds no history for series 'eu-west-1z/m5.large/Linux/UNIX'" in error
    assert SERIES in error
    assert not (tmp_path / "x.png").exists()


def test_plot_horizon_beyond_model(small_model_tag, tmp_path: Path, capsys) -> None:
    code = main(["plot", SERIES, "--model", small_model_tag, "--horizon", "500",
                 "--out", str(tmp_path / "x.png")])
    assert code == EXIT_FAILED
    assert "forecasts 1 to 168 hours" in capsys.readouterr().err
