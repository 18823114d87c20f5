"""Inference: from hourly histories to quantile forecasts in prices.

Shared by the service, the evaluation and the command line, so each computes a forecast the same
way. The network runs through one compiled function on whole batches. Histories of any length
share a batch because each becomes a fixed-size, front-padded window.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from spot_forecast.model import to_prices
from spot_forecast.windows import N_FEATURES, LogRatioScaler, history_window


@dataclass(frozen=True)
class Guard:
    """Horizon steps where the last value replaces the network.

    ``baseline_steps`` are 1-based steps at which the network's median was less accurate than the
    last value on validation data. At those steps the median is the last price and the quantiles
    come from ``empirical_log_quantiles`` (shape ``(horizon, n_quantiles)``), the quantiles of
    log(price after h hours / price now) over the training windows.
    """

    baseline_steps: frozenset[int] = field(default_factory=frozenset)
    empirical_log_quantiles: np.ndarray | None = None

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Guard:
        guard = metadata.get("guard") or {}
        table = guard.get("empirical_log_quantiles")
        return cls(
            baseline_steps=frozenset(int(h) for h in guard.get("baseline_steps", [])),
            empirical_log_quantiles=None if table is None else np.asarray(table, dtype=np.float64),
        )


class Predictor:
    """The Keras network behind one compiled TensorFlow function.

    Calling it maps windows ``(batch, lookback, N_FEATURES)`` to scaled log-ratio quantiles
    ``(batch, horizon, n_quantiles)``. The input signature leaves the batch size open, so batches
    of any size reuse one trace.
    """

    def __init__(self, model, lookback: int):
        import tensorflow as tf

        self.lookback = lookback
        self._model = model
        self._call = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, lookback, N_FEATURES], tf.float32)],
            reduce_retracing=True,
        )

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 3 or windows.shape[1:] != (self.lookback, N_FEATURES):
            raise ValueError(
                f"windows have shape {windows.shape}; expected (batch, {self.lookback}, "
                f"{N_FEATURES})"
            )
        if len(windows) == 0:
            return np.zeros((0,) + tuple(self._model.output_shape[1:]), dtype=np.float32)
        return self._call(windows).numpy()


@dataclass(frozen=True)
class Forecast:
    """Quantile forecast of one series; ``values`` has shape ``(horizon, n_quantiles)`` in USD/h."""

    unique_id: str
    last_ds: pd.Timestamp
    last_y: float
    step: pd.Timedelta
    quantiles: tuple[float, ...]
    values: np.ndarray

    @functools.cached_property
    def ds(self) -> pd.DatetimeIndex:
        """Timestamps of the steps. Built on first use: the service formats them itself."""
        return pd.date_range(self.last_ds + self.step, periods=len(self.values), freq=self.step)

    @property
    def median(self) -> np.ndarray:
        return self.values[:, self.quantiles.index(0.5)]


def make_window(
    prices: np.ndarray, end: pd.Timestamp, *, lookback: int, scaler: LogRatioScaler
) -> np.ndarray:
    """Window of one history; see ``windows.history_window``."""
    return history_window(prices, end, lookback, scaler)


def assemble(
    unique_id: str,
    scaled: np.ndarray,
    *,
    last_price: float,
    end: pd.Timestamp,
    horizon: int,
    quantiles: Sequence[float],
    scaler: LogRatioScaler,
    guard: Guard,
    step: pd.Timedelta = pd.Timedelta(hours=1),
) -> Forecast:
    """Turn the network's output for one window ``(max_horizon, q)`` into a ``Forecast``."""
    levels = tuple(sorted(quantiles))
    values = to_prices(scaled[None, :horizon, :], np.array([last_price]), scaler.scale_)[0]

    if guard.baseline_steps and guard.empirical_log_quantiles is not None:
        median_index = levels.index(0.5)
        for h in guard.baseline_steps:
            if h <= horizon:
                row = last_price * np.exp(guard.empirical_log_quantiles[h - 1])
                row[median_index] = last_price
                values[h - 1] = np.sort(row)

    # Monotone by construction; sorting guards against float ties after exp.
    values = np.sort(values, axis=-1)
    return Forecast(unique_id, end, float(last_price), step, levels, values)


def forecast_histories(
    predictor: Predictor,
    histories: Sequence[tuple[str, np.ndarray, pd.Timestamp, int]],
    *,
    scaler: LogRatioScaler,
    quantiles: Sequence[float],
    guard: Guard | None = None,
) -> list[Forecast]:
    """Forecast many ``(unique_id, prices, end, horizon)`` histories with one network call."""
    guard = guard or Guard()
    windows = np.stack(
        [make_window(p, end, lookback=predictor.lookback, scaler=scaler) for _, p, end, _ in histories]
    ) if histories else np.zeros((0, predictor.lookback, N_FEATURES), np.float32)
    scaled = predictor(windows)
    return [
        assemble(uid, scaled[i], last_price=float(p[-1]), end=end, horizon=h,
                 quantiles=quantiles, scaler=scaler, guard=guard)
        for i, (uid, p, end, h) in enumerate(histories)
    ]
