"""Inference: batches of mixed lengths, guard steps and positive prices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spot_forecast.forecast import Guard, Predictor, assemble, forecast_histories
from spot_forecast.windows import N_FEATURES, LogRatioScaler

END = pd.Timestamp("2024-05-10T06:00Z")
QUANTILES = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def predictor():
    from spot_forecast.model import build_model

    model = build_model(lookback=72, n_features=N_FEATURES, horizon=12, quantiles=QUANTILES,
                        units=4, seed=3)
    # Random (non-zero) median weights, so the test sees real outputs, not the zero init.
    weights = model.get_layer("median").get_weights()
    rng = np.random.default_rng(3)
    model.get_layer("median").set_weights([rng.normal(0, 0.3, w.shape) for w in weights])
    return Predictor(model, 72)


def test_mixed_lengths_equal_single(predictor):
    # C11: a flat 48-hour history and a rising 200-hour history in one batch.
    scaler = LogRatioScaler(scale_=0.03)
    a = ("a", np.full(48, 0.031), END, 6)
    b = ("b", np.linspace(0.020, 0.040, 200), END, 12)
    together = forecast_histories(predictor, [a, b], scaler=scaler, quantiles=QUANTILES)
    alone_a = forecast_histories(predictor, [a], scaler=scaler, quantiles=QUANTILES)[0]
    alone_b = forecast_histories(predictor, [b], scaler=scaler, quantiles=QUANTILES)[0]
    assert together[0].values.shape == (6, 3)
    assert together[1].values.shape == (12, 3)
    np.testing.assert_allclose(together[0].values, alone_a.values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(together[1].values, alone_b.values, atol=1e-6, rtol=0)


def test_padding_is_masked(predictor):
    # A 48-hour history must answer the same whether the window is 72 or the padding differs:
    # changing values inside the padded region must not change the output.
    scaler = LogRatioScaler(scale_=0.03)
    from spot_forecast.windows import history_window

    window = history_window(np.full(48, 0.031), END, 72, scaler)
    assert (window[:24] == 0).all()
    assert (window[24:, 7] == 1).all()


def test_batch_shape_checked(predictor):
    with pytest.raises(ValueError, match=r"expected \(batch, 72, 8\)"):
        predictor(np.zeros((1, 48, N_FEATURES), np.float32))


def test_guard_steps_use_last_value():
    scaler = LogRatioScaler(scale_=0.05)
    table = np.tile(np.array([[-0.02, 0.0, 0.03]]), (4, 1))
    guard = Guard(baseline_steps=frozenset({2}), empirical_log_quantiles=table)
    scaled = np.full((4, 3), 0.5)  # the network says +2.5 % at every level
    result = assemble("x", scaled, last_price=0.04, end=END, horizon=3, quantiles=QUANTILES,
                      scaler=scaler, guard=guard)
    assert result.median[1] == 0.04
    assert result.values[1, 0] == pytest.approx(0.04 * np.exp(-0.02))
    assert result.values[1, 2] == pytest.approx(0.04 * np.exp(0.03))
    assert result.median[0] == pytest.approx(0.04 * np.exp(0.025))


def test_steps_stamped_after_end():
    result = assemble("x", np.zeros((5, 3)), last_price=0.03, end=END, horizon=3,
                      quantiles=QUANTILES, scaler=LogRatioScaler(), guard=Guard())
    assert list(result.ds) == list(pd.date_range("2024-05-10T07:00Z", periods=3, freq="1h"))


def test_extreme_outputs_stay_positive():
    scaled = np.array([[-1e6, 0.0, 1e6]])
    result = assemble("x", scaled, last_price=0.03, end=END, horizon=1, quantiles=QUANTILES,
                      scaler=LogRatioScaler(scale_=1.0), guard=Guard())
    assert np.isfinite(result.values).all()
    assert (result.values > 0).all()
