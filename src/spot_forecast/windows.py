"""Model inputs and targets cut from hourly price arrays.

Everything is relative to the last observed price of a window: inputs are log(price / last price)
and targets are log(future price / last price), both divided by one scale fitted on training
windows. A flat series therefore gives all-zero relative values, and any forecast turns back into a
positive price as ``last_price * exp(value * scale)``.

Feature layout of one window row (shape ``(lookback, N_FEATURES)``):

====  ==============================================================
0     log(price / last price) / scale
1     log(price / previous hour's price) / scale, 0 for the first row
2     1 when the price changed since the previous hour, else 0
3, 4  sine and cosine of the hour of day
5, 6  sine and cosine of the day of week
7     1 for an observed row; padding rows are all zero and masked
====  ==============================================================

Histories shorter than the lookback are padded at the front with all-zero rows. Feature 7 keeps
every observed row non-zero, so the network's masking layer skips exactly the padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

N_FEATURES = 8
#: Columns of the window layout that the network reads by position.
LEVEL_COLUMN = 0
CHANGE_COLUMN = 2
OBSERVED_COLUMN = 7
_HOUR_NS = 3_600 * 10**9
_MIN_SCALE = 1e-3


@dataclass
class LogRatioScaler:
    """Divides log price ratios by one scale, fitted on training targets only.

    ``scale_`` is the standard deviation of the training targets, floored at 1e-3 so that an
    all-flat training set (standard deviation 0) still gives finite values.
    """

    scale_: float = 1.0
    n_samples_seen_: int = 0

    def fit(self, log_ratios: np.ndarray) -> LogRatioScaler:
        """Fit the scale on an array of training log ratios (any shape, NaN ignored)."""
        values = np.asarray(log_ratios, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("cannot fit the scaler: the training windows hold no finite targets")
        self.scale_ = max(float(np.std(values)), _MIN_SCALE)
        self.n_samples_seen_ = int(values.size)
        return self

    def transform(self, log_ratios: np.ndarray) -> np.ndarray:
        """Divide by the fitted scale."""
        return np.asarray(log_ratios, dtype=np.float64) / self.scale_

    def inverse_transform(self, scaled: np.ndarray) -> np.ndarray:
        """Multiply by the fitted scale."""
        return np.asarray(scaled, dtype=np.float64) * self.scale_


def calendar_features(hours_since_epoch: np.ndarray) -> np.ndarray:
    """Sine and cosine of hour of day and day of week, shape ``(n, 4)``."""
    hours = np.asarray(hours_since_epoch, dtype=np.float64)
    hour_angle = 2 * np.pi * (hours % 24) / 24
    # 1970-01-01 was a Thursday; the offset of 3 days makes Monday 00:00 the zero angle.
    day_angle = 2 * np.pi * ((hours / 24 + 3) % 7) / 7
    return np.stack(
        [np.sin(hour_angle), np.cos(hour_angle), np.sin(day_angle), np.cos(day_angle)], axis=-1
    )


def series_features(log_prices: np.ndarray, start_hour: int, scale: float) -> np.ndarray:
    """Per-row features of a whole series except the relative level, shape ``(n, N_FEATURES)``.

    Column 0 is left at zero: it depends on the window's last price and is filled per window.
    ``start_hour`` is the first grid point as whole hours since the Unix epoch.
    """
    n = len(log_prices)
    features = np.zeros((n, N_FEATURES), dtype=np.float64)
    diffs = np.diff(log_prices, prepend=log_prices[:1])
    features[:, 1] = diffs / scale
    features[:, 2] = (diffs != 0).astype(np.float64)
    features[:, 3:7] = calendar_features(start_hour + np.arange(n))
    features[:, 7] = 1.0
    return features


def hour_number(timestamp: pd.Timestamp) -> int:
    """Whole hours since the Unix epoch of a UTC timestamp on the hourly grid."""
    return int(pd.Timestamp(timestamp).value // _HOUR_NS)


def history_window(
    prices: np.ndarray, end: pd.Timestamp, lookback: int, scaler: LogRatioScaler
) -> np.ndarray:
    """Build one model input from an hourly history ending at ``end``.

    Args:
        prices: positive hourly prices, oldest first, shape ``(n,)`` with ``n >= 1``. Only the last
            ``lookback`` are used.
        end: UTC time of the last price.
        lookback: rows of the window.
        scaler: the fitted scaler of the model.

    Returns:
        float32 array of shape ``(lookback, N_FEATURES)``, front-padded with zero rows.
    """
    recent = np.asarray(prices, dtype=np.float64)[-lookback:]
    log_prices = np.log(recent)
    start_hour = hour_number(end) - (len(recent) - 1)
    rows = series_features(log_prices, start_hour, scaler.scale_)
    rows[:, 0] = (log_prices - log_prices[-1]) / scaler.scale_

    window = np.zeros((lookback, N_FEATURES), dtype=np.float32)
    window[lookback - len(recent):] = rows
    return window


@dataclass
class WindowSet:
    """Windows cut from a panel.

    ``inputs`` has shape ``(n, lookback, N_FEATURES)``; ``targets`` has shape ``(n, horizon)``
    in scaled log ratios, NaN where the horizon runs past the end of the series; ``last_prices``
    has shape ``(n,)``; ``series_index`` and ``origins`` say which series and which grid position
    (of the last observed price) each window came from.
    """

    inputs: np.ndarray
    targets: np.ndarray
    last_prices: np.ndarray
    series_index: np.ndarray
    origins: np.ndarray


def cut_windows(
    series_values: list[np.ndarray],
    series_start_hours: list[int],
    origins: list[np.ndarray],
    *,
    lookback: int,
    horizon: int,
    scaler: LogRatioScaler,
    truncate_lengths: list[np.ndarray] | None = None,
) -> WindowSet:
    """Cut one window per (series, origin) pair.

    ``origins[k]`` holds grid positions in series ``k``; the window covers the ``lookback`` rows
    ending at each origin (fewer near the series start, front-padded) and the targets the
    ``horizon`` rows after it. ``truncate_lengths[k]``, when given, shortens each window to that
    many observed rows, which teaches the network histories shorter than the lookback.
    """
    total = int(sum(len(o) for o in origins))
    inputs = np.zeros((total, lookback, N_FEATURES), dtype=np.float32)
    targets = np.full((total, horizon), np.nan, dtype=np.float32)
    last_prices = np.zeros(total, dtype=np.float64)
    series_index = np.zeros(total, dtype=np.int64)
    origin_positions = np.zeros(total, dtype=np.int64)

    row = 0
    for k, (values, start_hour, series_origins) in enumerate(
        zip(series_values, series_start_hours, origins, strict=True)
    ):
        if len(series_origins) == 0:
            continue
        log_prices = np.log(values)
        base = series_features(log_prices, start_hour, scaler.scale_)
        # Pad the front so that every origin has `lookback` rows before it, and the back so that
        # every origin has `horizon` rows after it; padded rows are zero (masked) or NaN (no target).
        padded_base = np.concatenate([np.zeros((lookback - 1, N_FEATURES)), base])
        padded_logs = np.concatenate([np.full(lookback - 1, np.nan), log_prices])
        future_logs = np.concatenate([log_prices, np.full(horizon, np.nan)])

        for j, origin in enumerate(series_origins):
            window = padded_base[origin:origin + lookback].copy()
            window_logs = padded_logs[origin:origin + lookback]
            window[:, 0] = np.where(
                np.isnan(window_logs), 0.0, (window_logs - log_prices[origin]) / scaler.scale_
            )
            if truncate_lengths is not None:
                keep = int(truncate_lengths[k][j])
                window[: lookback - keep] = 0.0

            inputs[row] = window
            future = future_logs[origin + 1:origin + 1 + horizon] - log_prices[origin]
            targets[row] = future / scaler.scale_
            last_prices[row] = values[origin]
            series_index[row] = k
            origin_positions[row] = origin
            row += 1

    return WindowSet(inputs, targets, last_prices, series_index, origin_positions)
