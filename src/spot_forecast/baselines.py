"""Baseline forecasts that the model is measured against, on the same forecast origins.

Every baseline reads one series' hourly prices ``values`` (oldest first) and grid positions
``origins`` of the last observed price of each forecast. Point baselines return prices of shape
``(len(origins), horizon)``; quantile baselines return ``(len(origins), horizon, n_quantiles)``
with levels in ascending order. Steps a baseline does not forecast are NaN.

* last value: the price at the origin, the forecast a user gets for free;
* seasonal naive: the price one season (24 h or 168 h) before the target hour;
* empirical quantiles: the last value times quantiles of past relative changes at each horizon;
* AutoETS from statsforecast, refitted at every origin;
* gradient boosting on lagged relative changes, one direct model per horizon.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Lags in hours of the relative changes ``log(price now / price lag hours before)``.
BOOSTING_LAGS = (1, 2, 3, 6, 12, 24, 48, 72, 120, 168)
#: Horizons in hours that get a direct boosting model; other steps stay NaN.
BOOSTING_HORIZONS = (1, 2, 3, 6, 12, 24, 48, 72, 96, 120, 144, 168)


def last_value(values: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Repeat the price at each origin over the horizon."""
    prices = np.asarray(values, dtype=np.float64)[np.asarray(origins, dtype=np.int64)]
    return np.repeat(prices[:, None], horizon, axis=1)


def seasonal_naive(
    values: np.ndarray, origins: np.ndarray, horizon: int, season: int
) -> np.ndarray:
    """Forecast each step with the price one or more whole seasons before it.

    Step ``h`` after origin ``o`` takes the price at ``o + h - season * ceil(h / season)``, the
    latest observed hour of the same phase. Origins with fewer than ``season`` hours of history get
    NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    origins = np.asarray(origins, dtype=np.int64)
    steps = np.arange(1, horizon + 1)
    source = origins[:, None] + steps[None, :] - season * np.ceil(steps / season).astype(np.int64)
    forecast = values[np.clip(source, 0, None)]
    forecast[origins - season + 1 < 0] = np.nan
    return forecast


def empirical_quantile_forecast(last_prices: np.ndarray, log_quantiles: np.ndarray) -> np.ndarray:
    """Scale the last prices by ``exp`` of a ``(horizon, q)`` table of log-change quantiles."""
    table = np.asarray(log_quantiles, dtype=np.float64)
    return np.asarray(last_prices, dtype=np.float64)[:, None, None] * np.exp(table)[None]


def ets_levels(quantiles: Sequence[float]) -> list[int]:
    """Central interval levels in percent that give the quantiles, e.g. 0.1 and 0.9 -> 80."""
    levels = set()
    for q in quantiles:
        if q != 0.5:
            levels.add(round(100 * abs(2 * q - 1)))
    return sorted(levels)


def auto_ets(
    values: np.ndarray,
    origins: np.ndarray,
    horizon: int,
    quantiles: Sequence[float],
    *,
    context: int = 336,
    season_length: int = 1,
) -> tuple[np.ndarray, int]:
    """Fit statsforecast's AutoETS on the last ``context`` hours before each origin and forecast.

    Quantiles come from the model's Gaussian prediction intervals (level 80 gives 0.1 and 0.9),
    and the median is the point forecast. Returns the quantile prices and the number of origins
    where the fit failed and the last value with zero-width intervals took its place.
    """
    from statsforecast.models import AutoETS

    values = np.asarray(values, dtype=np.float64)
    levels = sorted(quantiles)
    interval_levels = ets_levels(levels)
    result = np.empty((len(origins), horizon, len(levels)))
    failures = 0
    for i, origin in enumerate(np.asarray(origins, dtype=np.int64)):
        history = values[max(0, origin + 1 - context):origin + 1]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                output = AutoETS(season_length=season_length).forecast(
                    y=history, h=horizon, level=interval_levels
                )
        except (ValueError, np.linalg.LinAlgError, ZeroDivisionError) as error:
            logger.debug("AutoETS failed at origin %d: %s", origin, error)
            failures += 1
            result[i] = history[-1]
            continue
        for j, q in enumerate(levels):
            if q == 0.5:
                result[i, :, j] = output["mean"]
            elif q < 0.5:
                result[i, :, j] = output[f"lo-{round(100 * (1 - 2 * q))}"]
            else:
                result[i, :, j] = output[f"hi-{round(100 * (2 * q - 1))}"]
    bad = ~np.isfinite(result).all(axis=(1, 2))
    if bad.any():
        failures += int(bad.sum())
        for i in np.flatnonzero(bad):
            result[i] = values[origins[i]]
    return np.sort(result, axis=-1), failures


def lag_changes(
    log_prices: np.ndarray, origins: np.ndarray, lags: Sequence[int] = BOOSTING_LAGS
) -> np.ndarray:
    """``log(price at origin / price lag hours before)`` per lag, NaN before the series start."""
    origins = np.asarray(origins, dtype=np.int64)
    features = np.full((len(origins), len(lags)), np.nan)
    for j, lag in enumerate(lags):
        earlier = origins - lag
        known = earlier >= 0
        features[known, j] = log_prices[origins[known]] - log_prices[earlier[known]]
    return features


class LagChangeBoosting:
    """Gradient-boosted trees on lagged relative changes, one direct model per horizon.

    Each model predicts the median of ``log(price after h / price now)`` with scikit-learn's
    ``HistGradientBoostingRegressor`` and the absolute error loss, from ``lag_changes``. Training
    rows are origins sampled per series with ``seed`` whose target lies at or before the series'
    cut-off position.
    """

    def __init__(
        self,
        *,
        horizons: Sequence[int] = BOOSTING_HORIZONS,
        lags: Sequence[int] = BOOSTING_LAGS,
        origins_per_series: int = 40,
        min_context: int = 24,
        seed: int = 0,
        max_iter: int = 300,
    ):
        self.horizons = tuple(horizons)
        self.lags = tuple(lags)
        self.origins_per_series = origins_per_series
        self.min_context = min_context
        self.seed = seed
        self.max_iter = max_iter
        self.models: dict[int, object] = {}

    def fit(self, series_values: Sequence[np.ndarray], cutoff_positions: Sequence[int]):
        """Fit one model per horizon on origins whose target is at or before each cut-off."""
        from sklearn.ensemble import HistGradientBoostingRegressor

        rng = np.random.default_rng(self.seed)
        logs = [np.log(np.asarray(v, dtype=np.float64)) for v in series_values]
        for h in self.horizons:
            features, targets = [], []
            for log_prices, cutoff in zip(logs, cutoff_positions, strict=True):
                last_origin = min(cutoff, len(log_prices) - 1) - h
                candidates = np.arange(self.min_context - 1, last_origin + 1)
                if len(candidates) == 0:
                    continue
                size = min(len(candidates), self.origins_per_series)
                origins = np.sort(rng.choice(candidates, size=size, replace=False))
                features.append(lag_changes(log_prices, origins, self.lags))
                targets.append(log_prices[origins + h] - log_prices[origins])
            if not features:
                raise ValueError(
                    f"no training rows for the {h} h boosting model: every series is shorter "
                    f"than {self.min_context} + {h} hours before its cut-off"
                )
            model = HistGradientBoostingRegressor(
                loss="absolute_error", max_iter=self.max_iter, learning_rate=0.05,
                max_leaf_nodes=31, min_samples_leaf=50, random_state=self.seed,
            )
            model.fit(np.concatenate(features), np.concatenate(targets))
            self.models[h] = model
            logger.info("fitted the %d h boosting model on %d rows", h,
                        sum(len(t) for t in targets))
        return self

    def predict(self, values: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        """Median price forecasts ``(len(origins), horizon)``, NaN at steps without a model."""
        return self.predict_many([(values, origins)], horizon)

    def predict_many(
        self, histories: Sequence[tuple[np.ndarray, np.ndarray]], horizon: int
    ) -> np.ndarray:
        """Forecasts of many ``(values, origins)`` series stacked in order, one call per model."""
        if not self.models:
            raise RuntimeError("LagChangeBoosting.predict called before fit")
        features, last_prices = [], []
        for values, origins in histories:
            values = np.asarray(values, dtype=np.float64)
            origins = np.asarray(origins, dtype=np.int64)
            features.append(lag_changes(np.log(values), origins, self.lags))
            last_prices.append(values[origins])
        stacked = np.concatenate(features) if features else np.zeros((0, len(self.lags)))
        last = np.concatenate(last_prices) if last_prices else np.zeros(0)
        forecast = np.full((len(last), horizon), np.nan)
        if len(last) == 0:
            return forecast
        for h, model in self.models.items():
            if h <= horizon:
                forecast[:, h - 1] = last * np.exp(model.predict(stacked))
        return forecast
