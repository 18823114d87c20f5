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


def mase(
    actual: np.ndarray, forecast: np.ndarray, scale: np.ndarray, axis: int | None = None
) -> np.ndarray:
    """Mean absolute scaled error: absolute errors divided by each row's in-sample scale.

    ``scale`` has one entry per row (first axis), NaN where the scale is undefined (see
    ``mase_scale``). Those rows are left out, like NaN actuals, so a flat series never turns
    the mean into infinity.
    """
    actual = np.asarray(actual, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64).reshape((-1,) + (1,) * (actual.ndim - 1))
    scaled = np.abs(np.asarray(forecast, dtype=np.float64) - actual) / np.where(
        np.isfinite(scale) & (scale > 0), scale, np.nan
    )
    return np.nanmean(scaled, axis=axis)



#: Reason for a missing MASE: no window has a defined scale.
MASE_UNDEFINED = (
    "the series was flat up to the cut-off, so the in-sample naive error that MASE divides by "
    "is zero"
)


class ScoreSums:
    """Sums of forecast errors by group and horizon step, added up over batches of windows.

    A model's metrics at a step are means over the windows where both its forecast and the actual
    exist. The last-value errors are summed over the same windows, so ratios to the last value
    compare like with like even for a model that forecasts only some windows or steps.
    ``quantiles`` is None for a point forecast, whose interval metrics stay missing.
    """

    FIELDS = (
        "count", "abs_error", "pct_error", "baseline_abs_error", "baseline_pct_error",
        "scaled_error", "scaled_count", "pinball", "covered", "width", "relative_width",
    )

    def __init__(self, n_groups: int, horizon: int, quantiles: Sequence[float] | None):
        self.n_groups = n_groups
        self.horizon = horizon
        self.quantiles = None if quantiles is None else tuple(sorted(quantiles))
        self.sums = {name: np.zeros((n_groups, horizon)) for name in self.FIELDS}

    def add(
        self,
        groups: np.ndarray,
        actual: np.ndarray,
        last_prices: np.ndarray,
        median: np.ndarray,
        quantile_values: np.ndarray | None = None,
        mase_scales: np.ndarray | None = None,
    ) -> None:
        """Add windows: ``actual`` and ``median`` ``(n, horizon)``, quantiles ``(n, horizon, q)``.

        ``groups`` contains each window's group index, ``mase_scales`` its series' MASE scale
        (NaN where undefined). NaN actuals or forecasts leave a step out.
        """
        actual = np.asarray(actual, dtype=np.float64)
        median = np.asarray(median, dtype=np.float64)
        last = np.asarray(last_prices, dtype=np.float64)[:, None]
        valid = np.isfinite(actual) & np.isfinite(median)
        safe_actual = np.where(valid, actual, 1.0)
        terms = {
            "count": valid.astype(np.float64),
            "abs_error": np.abs(median - safe_actual),
            "pct_error": 100.0 * np.abs(median - safe_actual) / safe_actual,
            "baseline_abs_error": np.abs(last - safe_actual),
            "baseline_pct_error": 100.0 * np.abs(last - safe_actual) / safe_actual,
        }
        if mase_scales is not None:
            scales = np.asarray(mase_scales, dtype=np.float64)[:, None]
            defined = valid & np.isfinite(scales) & (scales > 0)
            terms["scaled_count"] = defined.astype(np.float64)
            terms["scaled_error"] = np.where(
                defined, np.abs(median - safe_actual) / np.where(defined, scales, 1.0), 0.0
            )
        if quantile_values is not None and self.quantiles is not None:
            values = np.asarray(quantile_values, dtype=np.float64)
            levels = list(self.quantiles)
            error = safe_actual[..., None] - values
            tau = np.asarray(levels)
            terms["pinball"] = np.maximum(tau * error, (tau - 1.0) * error).mean(axis=-1)
            lower = values[..., levels.index(0.1)]
            upper = values[..., levels.index(0.9)]
            terms["covered"] = ((safe_actual >= lower) & (safe_actual <= upper)).astype(np.float64)
            terms["width"] = upper - lower
            terms["relative_width"] = 100.0 * (upper - lower) / last

        groups = np.asarray(groups, dtype=np.int64)
        for name, term in terms.items():
            term = np.where(valid, term, 0.0)
            for group in np.unique(groups):
                self.sums[name][group] += term[groups == group].sum(axis=0)

    def table(self, group: int | None = None) -> dict[str, np.ndarray]:
        """Metrics per step for one group, or for all groups together when ``group`` is None.

        Returns arrays of shape ``(horizon,)`` with NaN where no window counts.
        """
        sums = {
            name: (values.sum(axis=0) if group is None else values[group])
            for name, values in self.sums.items()
        }
        count = sums["count"]

        def mean(name: str, denominator: np.ndarray = count) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(denominator > 0, sums[name] / denominator, np.nan)

        has_intervals = self.quantiles is not None
        return {
            "windows": count,
            "mae": mean("abs_error"),
            "last_value_mae": mean("baseline_abs_error"),
            "mae_ratio": mean("abs_error", sums["baseline_abs_error"] * (count > 0)),
            "mape": mean("pct_error"),
            "last_value_mape": mean("baseline_pct_error"),
            "mase": mean("scaled_error", sums["scaled_count"]),
            "mase_windows": sums["scaled_count"],
            "pinball": mean("pinball") if has_intervals else np.full(self.horizon, np.nan),
            "coverage_80": mean("covered") if has_intervals else np.full(self.horizon, np.nan),
            "width_80": mean("width") if has_intervals else np.full(self.horizon, np.nan),
            "relative_width_80": (
                mean("relative_width") if has_intervals else np.full(self.horizon, np.nan)
            ),
        }
