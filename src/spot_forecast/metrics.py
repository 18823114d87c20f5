"""Forecast accuracy metrics on numpy arrays.

Every function takes arrays whose first axes are (window, horizon step) and ignores positions
where the actual value is NaN (a step past the end of the data).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mae(actual: np.ndarray, forecast: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Mean absolute error, NaN actuals left out."""
    return np.nanmean(np.abs(np.asarray(forecast) - np.asarray(actual)), axis=axis)


def mape(actual: np.ndarray, forecast: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Mean absolute percentage error in percent; actual prices are positive by construction."""
    actual = np.asarray(actual, dtype=np.float64)
    return 100.0 * np.nanmean(np.abs(np.asarray(forecast) - actual) / actual, axis=axis)


def pinball(
    actual: np.ndarray, quantile_forecasts: np.ndarray, levels: Sequence[float], axis=None
) -> np.ndarray:
    """Pinball loss averaged over quantile levels.

    ``quantile_forecasts`` has one more trailing axis than ``actual``, with one entry per level.
    """
    actual = np.asarray(actual, dtype=np.float64)[..., None]
    error = actual - np.asarray(quantile_forecasts, dtype=np.float64)
    tau = np.asarray(levels, dtype=np.float64)
    loss = np.maximum(tau * error, (tau - 1.0) * error).mean(axis=-1)
    return np.nanmean(loss, axis=axis)


def coverage(
    actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, axis: int | None = None
) -> np.ndarray:
    """Share of actuals inside ``[lower, upper]``, NaN actuals left out."""
    actual = np.asarray(actual, dtype=np.float64)
    inside = ((actual >= lower) & (actual <= upper)).astype(np.float64)
    inside[np.isnan(actual)] = np.nan
    return np.nanmean(inside, axis=axis)


def mean_width(lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, axis=None) -> np.ndarray:
    """Mean interval width at the positions that have an actual value."""
    width = np.asarray(upper, dtype=np.float64) - np.asarray(lower, dtype=np.float64)
    width[np.isnan(np.asarray(actual, dtype=np.float64))] = np.nan
    return np.nanmean(width, axis=axis)


def mase_scale(in_sample: np.ndarray, season: int = 1) -> float | None:
    """In-sample mean absolute error of the seasonal naive forecast, or None when it is zero.

    A flat series has a zero scale, which leaves MASE undefined; callers report it as missing
    and leave it out of averages.
    """
    values = np.asarray(in_sample, dtype=np.float64)
    if len(values) <= season:
        return None
    scale = float(np.nanmean(np.abs(values[season:] - values[:-season])))
    return scale if scale > 0 and np.isfinite(scale) else None
