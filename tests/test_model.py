"""The quantile LSTM, its windows and its calibration layer: shapes, order, scaler, flat series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spot_forecast.grid import Panel, Series
from spot_forecast.training import split_windows
from spot_forecast.windows import N_FEATURES, LogRatioScaler, cut_windows, history_window

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
START = pd.Timestamp("2024-05-01T00:00Z")


def random_model(lookback: int = 48, horizon: int = 6, seed: int = 5):
    """A small model whose median and spread heads carry random weights, not the initial ones."""
    from spot_forecast.model import build_model

    model = build_model(lookback=lookback, n_features=N_FEATURES, horizon=horizon,
                        quantiles=QUANTILES, units=8, lstm_units=4, recurrent_hours=12, seed=seed)
    rng = np.random.default_rng(seed)
    for name in ("median", "lower_steps", "upper_steps"):
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.get_weights()])
    return model


def random_windows(count: int, lookback: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    windows = rng.normal(0, 1, (count, lookback, N_FEATURES)).astype(np.float32)
    windows[..., 7] = 1.0
    return windows


def test_model_output_shape():
    model = random_model(lookback=48, horizon=6)
    output = model.predict(random_windows(3, 48), verbose=0)
    assert output.shape == (3, 6, len(QUANTILES))


def test_quantiles_never_cross():
    model = random_model()
    output = model.predict(random_windows(64, 48), verbose=0)
    assert (np.diff(output, axis=-1) >= 0).all()


def test_short_lookback_drops_long_lags():
    # A 24-hour window cannot hold the 167-hour lag; the model keeps only lags below 24.
    model = random_model(lookback=24, horizon=3)
    assert model.get_layer("lag_changes").lags == [1, 2, 3, 6, 12]


def test_lag_changes_read_window_levels():
    from spot_forecast.layers import LagChanges

    prices = np.array([1.0, 1.1, 1.2, 1.5])
    window = history_window(prices, START, 4, LogRatioScaler(scale_=1.0))
    changes = np.asarray(LagChanges([1, 3], 4)(window[None]))[0]
    # Column 0 contains log(price / last price), and float32 windows keep about 7 digits.
    assert changes[0] == pytest.approx(np.log(1.5 / 1.2), abs=1e-6)
    assert changes[1] == pytest.approx(np.log(1.5 / 1.0), abs=1e-6)


def test_calibration_layer_matches_numpy():
    from spot_forecast.layers import QuantileCalibration
    from spot_forecast.model import shrink_medians

    rng = np.random.default_rng(2)
    raw = np.sort(rng.normal(0, 1, (16, 4, len(QUANTILES))), axis=-1).astype(np.float32)
    thresholds = np.array([10.0, 0.5, 0.0, 0.2], dtype=np.float32)
    scales = np.ones((4, len(QUANTILES)), dtype=np.float32)
    scales[:, [1, 5]] = 0.5
    layer = QuantileCalibration(3)
    layer.build(raw.shape)
    layer.set_weights([thresholds, scales])
    output = np.asarray(layer(raw))

    shrunk = shrink_medians(raw, thresholds, 3)
    expected = shrunk[..., 3:4] + (raw - raw[..., 3:4]) * scales
    # Halving the 0.1 and 0.9 distances can cross the unscaled 0.25 and 0.75 levels.
    # The layer then widens them to the inner level, a running maximum of the distances.
    lower = np.maximum.accumulate(
        (expected[..., 3:4] - expected[..., :3])[..., ::-1], axis=-1)[..., ::-1]
    upper = np.maximum.accumulate(expected[..., 4:] - expected[..., 3:4], axis=-1)
    expected = np.concatenate(
        [expected[..., 3:4] - lower, expected[..., 3:4], expected[..., 3:4] + upper], axis=-1)
    # float32 arithmetic in the layer against float64 here.
    np.testing.assert_allclose(output, expected, atol=1e-5)
    assert (output[:, 0, 3] == 0).all()  # a threshold of 10 exceeds every unit-normal median
    assert (np.diff(output, axis=-1) >= 0).all()


def test_calibrated_model_saves_and_loads(tmp_path):
    from spot_forecast.model import calibrate_model
    from spot_forecast.store import load_keras_model

    model = calibrate_model(random_model(), np.full(6, 0.3), np.full((6, len(QUANTILES)), 0.7),
                            QUANTILES)
    windows = random_windows(4, 48)
    model.save(tmp_path / "model.keras")
    loaded = load_keras_model(tmp_path / "model.keras")
    # The reloaded network computes the same float32 operations.
    np.testing.assert_allclose(loaded.predict(windows, verbose=0),
                               model.predict(windows, verbose=0), atol=1e-6)


def c06_panel() -> Panel:
    """C06: 100 hourly points, the first 80 cycle between 0.10 and 0.20, the last 20 are 0.90."""
    values = np.concatenate([np.where(np.arange(80) % 2 == 0, 0.10, 0.20), np.full(20, 0.90)])
    series = Series("us-east-1a/m5.large/Linux/UNIX", START, values)
    return Panel((series,), pd.Timedelta(hours=1), series.end)


def test_scaler_fits_training_windows_only():
    panel = c06_panel()
    cutoff = START + pd.Timedelta(hours=79)  # the 80th point
    split = split_windows(panel, series_ids=panel.ids(), cutoff=cutoff, lookback=24, horizon=4,
                          max_train_windows=10_000, seed=0)
    assert (split.train.origins + 4 <= 79).all()
    scaler = LogRatioScaler().fit(split.train.targets)
    # Only 0.10 and 0.20 are visible before the cut-off, so the targets are 0 and +-log 2.
    finite = split.train.targets[np.isfinite(split.train.targets)].astype(np.float64)
    distance = np.minimum(np.abs(finite), np.abs(np.abs(finite) - np.log(2.0)))
    assert distance.max() < 1e-6  # targets are float32
    assert scaler.scale_ == pytest.approx(np.std(finite))


def test_scaler_round_trip_keeps_peak():
    panel = c06_panel()
    split = split_windows(panel, series_ids=panel.ids(), cutoff=START + pd.Timedelta(hours=79),
                          lookback=24, horizon=4, max_train_windows=10_000, seed=0)
    scaler = LogRatioScaler().fit(split.train.targets)
    ratios = np.log(np.array([0.90, 0.10, 0.20]) / 0.15)
    restored = 0.15 * np.exp(scaler.inverse_transform(scaler.transform(ratios)))
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(ratios)), ratios,
                               atol=1e-9, rtol=0)
    assert restored[0] == pytest.approx(0.90, abs=1e-9)


def test_flat_series_trains_and_stays_flat():
    # C07: 200 hourly points all 0.0345, forecast 6 steps.
    import keras

    from spot_forecast.forecast import Predictor, forecast_histories
    from spot_forecast.model import build_model, fit_model

    prices = np.full(200, 0.0345)
    windows = cut_windows([prices], [0], [np.arange(23, 200 - 6)], lookback=48, horizon=6,
                          scaler=LogRatioScaler())
    scaler = LogRatioScaler().fit(windows.targets)
    assert np.isfinite(scaler.transform(windows.targets)).all()

    keras.utils.set_random_seed(4)
    model = build_model(lookback=48, n_features=N_FEATURES, horizon=6, quantiles=QUANTILES,
                        units=4, lstm_units=2, recurrent_hours=12, seed=4)
    history = fit_model(model, windows.inputs, scaler.transform(windows.targets).astype(np.float32),
                        quantiles=QUANTILES, epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()

    forecast = forecast_histories(Predictor(model, 48), [("flat", prices, START, 6)],
                                  scaler=scaler, quantiles=QUANTILES)[0]
    assert forecast.values.shape == (6, len(QUANTILES))
    assert np.abs(forecast.median - 0.0345).max() <= 0.0005
