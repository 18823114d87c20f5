"""Rolling-origin backtest of the model and its baselines, and the report it writes.

The model is trained and calibrated only on data up to the cut-off (``training.fit_forecaster``
cuts the panel there first). Forecast origins then fall every ``origin_every`` hours from the
cut-off to the end of the data, and every model forecasts 1 to ``horizon`` hours ahead from each
origin with only the history up to it. All models are scored on the same origins:

* the LSTM, calibrated, with the guard of its calibration slice applied as the service would;
* the last value, whose interval comes from empirical quantiles of past relative changes;
* seasonal naive with seasons of 24 and 168 hours;
* gradient boosting on lagged relative changes, one direct model per horizon;
* statsforecast's AutoETS on a seeded sample of series, because refitting it at every origin of
  every series takes longer than the time budget of a run.

``run_backtest`` returns a JSON-ready dict; ``write_report`` turns it into ``evaluation.md``,
``evaluation.json`` and PNG figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spot_forecast import baselines, metrics
from spot_forecast.config import PROJECT_ROOT, Settings
from spot_forecast.grid import Panel, to_panel
from spot_forecast.series import split_series_id
from spot_forecast.training import (
    FittedForecaster,
    fit_forecaster,
    optional_float,
    predict_scaled,
    scale_windows,
    training_ids,
    truncate_panel,
)
from spot_forecast.windows import LogRatioScaler, cut_windows, hour_number

logger = logging.getLogger(__name__)

#: The development split: train on the bundled eu-west-1 data up to this time, evaluate after it.
DEFAULT_CUTOFF = pd.Timestamp("2022-02-11T00:00:00Z")
REPORTED_HORIZONS = (1, 6, 24, 72, 168)
#: Targets of the model on the development split, checked in every report.
TARGET_RATIO_24H = 0.85
TARGET_RATIO_168H = 0.95
TARGET_COVERAGE = (0.78, 0.82)
TARGET_PINBALL_GAIN = 0.10
TARGET_RUNTIME_SECONDS = 30 * 60

MODEL_LABELS = {
    "lstm": "LSTM (this model)",
    "last_value": "Last value",
    "seasonal_naive_24": "Seasonal naive 24 h",
    "seasonal_naive_168": "Seasonal naive 168 h",
    "boosting": "Gradient boosting",
    "auto_ets": "AutoETS (sample)",
    "lstm_ets_sample": "LSTM on the AutoETS sample",
}
MODEL_DESCRIPTIONS = {
    "lstm": "Global quantile LSTM trained with the pinball loss on windows whose targets end "
            "before its calibration slice, then calibrated on that slice: medians shrink toward "
            "the last value by a fitted threshold per step, and interval widths are scaled per "
            "step to their nominal coverage. At guarded steps the last value and the empirical "
            "quantiles replace it, as in the service.",
    "last_value": "The last observed price. Its 80 % interval is the last price times the 10 % "
                  "and 90 % quantiles of log price changes at each horizon over the training "
                  "windows (the empirical-quantile baseline).",
    "seasonal_naive_24": "The price 24 hours before the target hour (point forecast).",
    "seasonal_naive_168": "The price 168 hours before the target hour (point forecast).",
    "boosting": "scikit-learn HistGradientBoostingRegressor, absolute-error loss, on "
                "log(price now / price k hours ago) for k in "
                f"{', '.join(str(k) for k in baselines.BOOSTING_LAGS)}; one direct model per "
                f"horizon in {', '.join(str(h) for h in baselines.BOOSTING_HORIZONS)} hours "
                "(point forecast, other steps missing).",
    "auto_ets": "statsforecast AutoETS without a seasonal component, refitted at every origin on "
                "the last 336 hours; quantiles from its Gaussian prediction intervals. Scored on "
                "a seeded sample of series, against the last value on the same sample.",
    "lstm_ets_sample": "The LSTM row restricted to the windows of the AutoETS sample, so that "
                       "pinball loss and interval widths in USD compare with AutoETS on the same "
                       "series.",
}


@dataclass(frozen=True)
class BacktestConfig:
    """Settings of one backtest; the defaults give the development split."""

    cutoff: pd.Timestamp = DEFAULT_CUTOFF
    end: pd.Timestamp | None = None
    origin_every: int = 24
    #: Hours of history an origin needs, so that every baseline (seasonal 168 h too) is defined.
    min_history: int = 168
    series_sample: int | None = None
    ets_series: int = 500
    ets_context: int = 336
    seed: int = 20220211
    fan_series: int = 4
    batch_series: int = 150
    data_paths: tuple[str, ...] = ()


@dataclass
class SeriesOrigins:
    """Origins of one evaluated series: grid positions of the last observed price."""

    index: int
    unique_id: str
    product: str
    values: np.ndarray
    start_hour: int
    origins: np.ndarray
    cutoff_position: int
    mase_scale: float


@dataclass
class FanChart:
    """One forecast to draw: history, quantile prices and actuals around an origin."""

    unique_id: str
    origin: str
    history: list[float]
    actual: list[float | None]
    quantiles: list[list[float]]


@dataclass
class Scores:
    """Score sums of every model, by product."""

    products: list[str]
    horizon: int
    quantiles: tuple[float, ...]
    sums: dict[str, metrics.ScoreSums] = field(default_factory=dict)

    def __post_init__(self):
        interval_models = ("lstm", "last_value", "auto_ets", "lstm_ets_sample")
        for name in MODEL_LABELS:
            levels = self.quantiles if name in interval_models else None
            self.sums[name] = metrics.ScoreSums(len(self.products), self.horizon, levels)


# ---------------------------------------------------------------------------------------------
# Setup


def evaluation_origins(
    panel: Panel, series_ids: Sequence[str], config: BacktestConfig
) -> list[SeriesOrigins]:
    """Origins every ``origin_every`` hours from the cut-off, per series, with their context.

    An origin needs ``min_history`` hours up to it and at least one actual after it. The MASE
    scale of a series is the mean absolute one-step change of its prices up to the cut-off.
    """
    selected = panel.select(list(series_ids))
    result = []
    for index, s in enumerate(selected):
        cutoff_position = int((config.cutoff - s.start) // panel.step)
        count = max(0, (len(s.values) - 2 - cutoff_position) // config.origin_every + 1)
        origins = cutoff_position + config.origin_every * np.arange(count)
        origins = origins[(origins >= config.min_history - 1) & (origins <= len(s.values) - 2)]
        if len(origins) == 0:
            continue
        in_sample = s.values[:max(cutoff_position, 0) + 1]
        scale = metrics.mase_scale(in_sample)
        result.append(SeriesOrigins(
            index=index,
            unique_id=s.unique_id,
            product=split_series_id(s.unique_id)[2],
            values=s.values,
            start_hour=hour_number(s.start),
            origins=origins,
            cutoff_position=cutoff_position,
            mase_scale=np.nan if scale is None else scale,
        ))
    return result


def actual_prices(values: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Prices 1 to ``horizon`` hours after each origin, NaN past the end of the series."""
    padded = np.concatenate([np.asarray(values, dtype=np.float64), np.full(horizon, np.nan)])
    steps = np.arange(1, horizon + 1)
    return padded[np.asarray(origins)[:, None] + steps[None, :]]


def apply_guard(
    quantile_prices: np.ndarray,
    last_prices: np.ndarray,
    guard_steps: Sequence[int],
    empirical: np.ndarray,
    levels: Sequence[float],
) -> np.ndarray:
    """Replace guarded steps as ``forecast.assemble`` does: last value and empirical quantiles."""
    values = np.array(quantile_prices, dtype=np.float64)
    median_index = list(levels).index(0.5)
    for h in guard_steps:
        if h <= values.shape[1]:
            rows = last_prices[:, None] * np.exp(empirical[h - 1])[None, :]
            rows[:, median_index] = last_prices
            values[:, h - 1] = np.sort(rows, axis=-1)
    return values


# ---------------------------------------------------------------------------------------------
# The backtest


def run_backtest(
    events: pd.DataFrame, settings: Settings, config: BacktestConfig = BacktestConfig()
) -> dict[str, Any]:
    """Train on data up to the cut-off, forecast every origin after it and score every model."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    levels = tuple(sorted(settings.quantiles))
    horizon = settings.horizon

    panel = to_panel(events, freq=settings.freq)
    end = panel.end if config.end is None else min(pd.Timestamp(config.end), panel.end)
    panel = truncate_panel(panel, end)
    cutoff = pd.Timestamp(config.cutoff)
    if not panel.series or cutoff >= panel.end:
        raise ValueError(
            f"the cut-off {cutoff.isoformat()} is not before the end of the data "
            f"{panel.end.isoformat()}; choose an earlier --cutoff"
        )
    series_ids = training_ids(panel, settings.products)
    if config.series_sample is not None and config.series_sample < len(series_ids):
        rng = np.random.default_rng(config.seed)
        series_ids = sorted(rng.choice(series_ids, size=config.series_sample, replace=False))
    if not series_ids:
        raise ValueError(f"no series with products {list(settings.products)} in the data")

    logger.info("training the backtest model on data up to %s", cutoff.isoformat())
    fitted = fit_forecaster(panel, settings, series_ids=series_ids, end=cutoff)
    if fitted.end > cutoff:
        raise RuntimeError(f"the backtest model read data up to {fitted.end}, past the cut-off")
    timings["train_model"] = time.perf_counter() - started

    series = evaluation_origins(panel, series_ids, config)
    products = sorted({s.product for s in series})
    logger.info("evaluating %d series at %d origins", len(series),
                sum(len(s.origins) for s in series))

    mark = time.perf_counter()
    boosting_horizons = [h for h in baselines.BOOSTING_HORIZONS if h <= horizon]
    boosting = baselines.LagChangeBoosting(horizons=boosting_horizons, seed=config.seed).fit(
        [s.values[:max(s.cutoff_position, 0) + 1] for s in series],
        [s.cutoff_position for s in series],
    )
    timings["train_boosting"] = time.perf_counter() - mark

    ets_rng = np.random.default_rng(config.seed)
    ets_count = min(config.ets_series, len(series))
    ets_skipped = None
    try:
        import statsforecast  # noqa: F401
    except ImportError:
        ets_count = 0
        ets_skipped = ("statsforecast is not installed; install it with `make install-evaluate` "
                       "(it keeps the locked pandas 3, which statsforecast's own pins would "
                       "replace)")
        logger.warning("AutoETS is left out: %s", ets_skipped)
    ets_ids = set(ets_rng.choice([s.unique_id for s in series], size=ets_count, replace=False))
    fan_ids, fan_origin = choose_fan_series(series, config, panel)

    from spot_forecast.forecast import Predictor

    predictor = Predictor(fitted.model, settings.lookback)
    scores = Scores(products, horizon, levels)
    fans: list[FanChart] = []
    ets_failures = 0
    mark = time.perf_counter()
    for first in range(0, len(series), config.batch_series):
        batch = series[first:first + config.batch_series]
        model_prices = forecast_model(predictor, fitted, batch, settings)
        score_batch(batch, model_prices, scores, fitted, boosting, horizon)
        for s, rows in zip(batch, batch_rows(batch), strict=True):
            if s.unique_id in ets_ids:
                ets_failures += score_auto_ets(s, model_prices[rows], scores, horizon, config)
            if s.unique_id in fan_ids:
                fans.append(fan_chart(s, model_prices[rows], fan_origin, horizon))
        done = min(first + config.batch_series, len(series))
        logger.info("scored %d of %d series (%.0f %%), %.0f s", done, len(series),
                    100 * done / len(series), time.perf_counter() - mark)
    timings["forecast_and_score"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started

    return summarise(
        scores=scores, series=series, fitted=fitted, settings=settings, config=config,
        panel=panel, fans=fans, timings=timings, ets_count=ets_count,
        ets_failures=ets_failures, ets_skipped=ets_skipped,
    )


def forecast_model(
    predictor, fitted: FittedForecaster, batch: Sequence[SeriesOrigins], settings: Settings
) -> np.ndarray:
    """Quantile prices of the calibrated, guarded model at every origin of ``batch``, in order."""
    from spot_forecast.model import to_prices

    windows = cut_windows(
        [s.values for s in batch], [s.start_hour for s in batch], [s.origins for s in batch],
        lookback=settings.lookback, horizon=settings.horizon, scaler=LogRatioScaler(),
    )
    scaled = predictor(scale_windows(windows, fitted.scaler).inputs)
    prices = np.sort(to_prices(scaled, windows.last_prices, fitted.scaler.scale_), axis=-1)
    return apply_guard(prices, windows.last_prices, fitted.calibration.get("guard_steps", []),
                       fitted.empirical, sorted(settings.quantiles))


def batch_rows(batch: Sequence[SeriesOrigins]) -> list[slice]:
    """Rows of each series in arrays that stack the origins of ``batch`` in order."""
    bounds = np.concatenate([[0], np.cumsum([len(s.origins) for s in batch])])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def score_batch(
    batch: Sequence[SeriesOrigins],
    model_prices: np.ndarray,
    scores: Scores,
    fitted: FittedForecaster,
    boosting: baselines.LagChangeBoosting,
    horizon: int,
) -> None:
    """Forecast ``batch`` with every baseline except AutoETS and add all scores."""
    def stack(forecast) -> np.ndarray:
        return np.concatenate([forecast(s) for s in batch])

    actual = stack(lambda s: actual_prices(s.values, s.origins, horizon))
    last = stack(lambda s: s.values[s.origins])
    groups = stack(lambda s: np.full(len(s.origins), scores.products.index(s.product)))
    scales = stack(lambda s: np.full(len(s.origins), s.mase_scale))
    median_index = list(scores.quantiles).index(0.5)

    def add(name: str, median: np.ndarray, quantiles: np.ndarray | None = None) -> None:
        scores.sums[name].add(groups, actual, last, median, quantiles, scales)

    add("lstm", model_prices[..., median_index], model_prices)
    add("last_value", np.repeat(last[:, None], horizon, axis=1),
        baselines.empirical_quantile_forecast(last, fitted.empirical[:horizon]))
    add("seasonal_naive_24",
        stack(lambda s: baselines.seasonal_naive(s.values, s.origins, horizon, 24)))
    add("seasonal_naive_168",
        stack(lambda s: baselines.seasonal_naive(s.values, s.origins, horizon, 168)))
    add("boosting", boosting.predict_many([(s.values, s.origins) for s in batch], horizon))


def score_auto_ets(
    s: SeriesOrigins,
    model_prices: np.ndarray,
    scores: Scores,
    horizon: int,
    config: BacktestConfig,
) -> int:
    """Score AutoETS and the LSTM on one sampled series; returns the failed AutoETS fits."""
    levels = scores.quantiles
    median_index = list(levels).index(0.5)
    ets, failures = baselines.auto_ets(s.values, s.origins, horizon, levels,
                                       context=config.ets_context)
    actual = actual_prices(s.values, s.origins, horizon)
    groups = np.full(len(s.origins), scores.products.index(s.product))
    scales = np.full(len(s.origins), s.mase_scale)
    last = s.values[s.origins]
    scores.sums["auto_ets"].add(groups, actual, last, ets[..., median_index], ets, scales)
    scores.sums["lstm_ets_sample"].add(groups, actual, last, model_prices[..., median_index],
                                       model_prices, scales)
    return failures


# ---------------------------------------------------------------------------------------------
# Fan charts


def choose_fan_series(
    series: Sequence[SeriesOrigins], config: BacktestConfig, panel: Panel
) -> tuple[set[str], pd.Timestamp]:
    """Pick series to draw at the middle origin, by their history only, never by the outcome.

    Candidates changed price at least twice in the week before the origin, and at most one
    series per instance family is drawn, chosen with the config's seed.
    """
    days = max(0, int((panel.end - config.cutoff) / pd.Timedelta(hours=config.origin_every)))
    origin = config.cutoff + (days // 2) * pd.Timedelta(hours=config.origin_every)
    rng = np.random.default_rng(config.seed + 1)
    candidates = []
    for s in series:
        position = s.cutoff_position + (days // 2) * config.origin_every
        if position not in set(s.origins.tolist()):
            continue
        week = s.values[max(0, position - 167):position + 1]
        if np.count_nonzero(np.diff(week)) >= 2:
            candidates.append(s.unique_id)
    rng.shuffle(candidates)
    chosen, families = [], set()
    for unique_id in candidates:
        family = split_series_id(unique_id)[1].split(".")[0]
        if family not in families:
            chosen.append(unique_id)
            families.add(family)
        if len(chosen) == config.fan_series:
            break
    return set(chosen), origin


def fan_chart(
    s: SeriesOrigins, quantile_prices: np.ndarray, origin: pd.Timestamp, horizon: int
) -> FanChart:
    """Build the fan chart of ``s`` at its origin nearest to ``origin``."""
    origin_hour = hour_number(origin)
    positions = s.start_hour + s.origins
    row = int(np.argmin(np.abs(positions - origin_hour)))
    position = int(s.origins[row])
    actual = actual_prices(s.values, s.origins[row:row + 1], horizon)[0]
    return FanChart(
        unique_id=s.unique_id,
        origin=pd.Timestamp(int(positions[row]) * 3_600, unit="s", tz="UTC").isoformat(),
        history=s.values[max(0, position - 167):position + 1].round(6).tolist(),
        actual=[None if np.isnan(v) else round(float(v), 6) for v in actual],
        quantiles=np.round(quantile_prices[row], 6).tolist(),
    )


# ---------------------------------------------------------------------------------------------
# Summary


def summarise(
    *,
    scores: Scores,
    series: Sequence[SeriesOrigins],
    fitted: FittedForecaster,
    settings: Settings,
    config: BacktestConfig,
    panel: Panel,
    fans: Sequence[FanChart],
    timings: dict[str, float],
    ets_count: int,
    ets_failures: int,
    ets_skipped: str | None = None,
) -> dict[str, Any]:
    """Collect the setup, the metrics tables, the curves and the target checks into a dict."""
    groups: dict[str, int | None] = {"all": None}
    groups.update({product: i for i, product in enumerate(scores.products)})
    by_horizon: dict[str, dict[str, dict[str, Any]]] = {}
    for group_name, group in groups.items():
        by_horizon[group_name] = {}
        for name, sums in scores.sums.items():
            table = sums.table(group)
            by_horizon[group_name][name] = {
                str(h): metric_row(table, h) for h in REPORTED_HORIZONS if h <= scores.horizon
            }

    curves = {}
    for name, sums in scores.sums.items():
        table = sums.table()
        curves[name] = {
            key: [optional_float(v) for v in table[key]]
            for key in ("mae_ratio", "coverage_80", "pinball", "relative_width_80")
        }

    flat = sum(1 for s in series if np.isnan(s.mase_scale))
    origins = sorted({int(s.start_hour + o) for s in series for o in s.origins})
    results: dict[str, Any] = {
        "title": "Rolling-origin backtest of the Spot price LSTM against baselines",
        "command": "spot-forecast evaluate",
        "generated": pd.Timestamp.now(tz="UTC").floor("s").isoformat(),
        "machine": f"{platform.machine()}, {_cpu_count()} CPU cores, Python "
                   f"{platform.python_version()}",
        "data": {
            "paths": list(config.data_paths),
            "start": min(s.start for s in panel).isoformat(),
            "end": panel.end.isoformat(),
            "products": list(settings.products),
        },
        "split": {
            "cutoff": pd.Timestamp(config.cutoff).isoformat(),
            "training_targets_end": fitted.training_end.isoformat(),
            "calibration": fitted.calibration,
            "evaluation_end": panel.end.isoformat(),
            "train_windows": fitted.train_windows,
        },
        "origins": {
            "every_hours": config.origin_every,
            "first": _hour_iso(origins[0]) if origins else None,
            "last": _hour_iso(origins[-1]) if origins else None,
            "count": len(origins),
            "windows": int(sum(len(s.origins) for s in series)),
            "min_history_hours": config.min_history,
        },
        "series": {
            "count": len(series),
            "by_product": {p: sum(1 for s in series if s.product == p) for p in scores.products},
            "sample": config.series_sample,
            "without_mase_scale": flat,
            "mase_note": metrics.MASE_UNDEFINED,
        },
        "auto_ets": {"series": ets_count, "seed": config.seed, "failed_fits": ets_failures,
                     "context_hours": config.ets_context, "skipped": ets_skipped},
        "models": {name: {"label": MODEL_LABELS[name], "description": MODEL_DESCRIPTIONS[name]}
                   for name in MODEL_LABELS},
        "quantiles": list(scores.quantiles),
        "settings": settings.model_dump(mode="json", include={
            "lookback", "horizon", "epochs", "batch_size", "lstm_units", "hidden_units",
            "recurrent_hours", "learning_rate", "loss_price_power", "loss_step_power",
            "median_loss_weight", "max_train_windows", "seed",
            "calibration_days",
            "calibration_every",
        }),
        "by_horizon": by_horizon,
        "curves": curves,
        "fan_charts": [asdict(f) for f in fans],
        "runtime_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    results["targets"] = check_targets(results)
    return results


def metric_row(table: dict[str, np.ndarray], h: int) -> dict[str, Any]:
    """Metrics of one step as JSON values; MASE carries its reason when it is missing."""
    i = h - 1
    row = {key: optional_float(table[key][i]) for key in (
        "mae", "last_value_mae", "mae_ratio", "mape", "last_value_mape", "mase", "pinball",
        "coverage_80", "width_80", "relative_width_80",
    )}
    row["windows"] = int(table["windows"][i])
    row["mase_windows"] = int(table["mase_windows"][i])
    if row["mase"] is None:
        row["mase_missing"] = metrics.MASE_UNDEFINED
    return row


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare the LSTM with the targets of the development split.

    A target whose metric is missing (a horizon past the model's, or no windows) is not met.
    """
    rows = results["by_horizon"]["all"]
    checks = []

    def metric(model: str, h: int, key: str) -> float | None:
        return (rows[model].get(str(h)) or {}).get(key)

    def add(target: str, values: Sequence[float | None], describe, met) -> None:
        if any(v is None for v in values):
            checks.append({"target": target, "value": "missing", "met": False})
        else:
            checks.append({"target": target, "value": describe(*values), "met": bool(met(*values))})

    add("MAE at most 0.85 of the last value at 24 h", [metric("lstm", 24, "mae_ratio")],
        lambda r: f"{r:.3f}", lambda r: r <= TARGET_RATIO_24H)
    add("MAE at most 0.95 of the last value at 168 h", [metric("lstm", 168, "mae_ratio")],
        lambda r: f"{r:.3f}", lambda r: r <= TARGET_RATIO_168H)
    ratios = [metric("lstm", h, "mae_ratio") for h in REPORTED_HORIZONS]
    known = [r for r in ratios if r is not None]
    add("no worse than the last value at any reported horizon", [max(known, default=None)],
        lambda r: f"worst ratio {r:.3f}", lambda r: r <= 1.0)
    curve = [v for v in results["curves"]["lstm"]["mae_ratio"] if v is not None]
    add("no worse than the last value at any step", [max(curve, default=None)],
        lambda r: f"{sum(1 for v in curve if v > 1.0)} of {len(curve)} steps worse, worst {r:.3f}",
        lambda r: r <= 1.0)
    for h in (24, 168):
        add(f"MAE no worse than gradient boosting at {h} h",
            [metric("lstm", h, "mae"), metric("boosting", h, "mae")],
            lambda a, b: f"{a:.6f} vs {b:.6f} USD", lambda a, b: a <= b)
    for h in (24, 168):
        add(f"80 % interval coverage between 78 % and 82 % at {h} h",
            [metric("lstm", h, "coverage_80")], lambda c: f"{100 * c:.1f} %",
            lambda c: TARGET_COVERAGE[0] <= c <= TARGET_COVERAGE[1])
    for h in (24, 168):
        add(f"80 % interval narrower than the empirical-quantile baseline at {h} h",
            [metric("lstm", h, "width_80"), metric("last_value", h, "width_80"),
             metric("lstm", h, "coverage_80"), metric("last_value", h, "coverage_80")],
            lambda a, b, ca, cb: f"{a:.6f} vs {b:.6f} USD (coverage {100 * ca:.1f} % vs "
                                 f"{100 * cb:.1f} %)",
            lambda a, b, ca, cb: a < b)
    for h in (24, 168):
        add(f"pinball loss at least 10 % below the empirical-quantile baseline at {h} h",
            [metric("lstm", h, "pinball"), metric("last_value", h, "pinball")],
            lambda a, b: f"{100 * (1 - a / b):.1f} % below",
            lambda a, b: 1 - a / b >= TARGET_PINBALL_GAIN)
    total = results["runtime_seconds"].get("total")
    add("evaluation within 30 minutes", [total], lambda t: f"{t / 60:.1f} min",
        lambda t: t <= TARGET_RUNTIME_SECONDS)
    return checks


def _steps_text(steps: Sequence[int]) -> str:
    """Steps as ranges, e.g. [1, 2, 3, 7] -> '1-3, 7'; 'none' when empty."""
    if not steps:
        return "none"
    ranges, start, previous = [], steps[0], steps[0]
    for step in list(steps[1:]) + [None]:
        if step is not None and step == previous + 1:
            previous = step
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if step is not None:
            start = previous = step
    return ", ".join(ranges)


def _hour_iso(hour: int) -> str:
    return pd.Timestamp(hour * 3_600, unit="s", tz="UTC").isoformat()


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Report


def write_report(results: dict[str, Any], folder: Path) -> list[Path]:
    """Write ``evaluation.json``, ``evaluation.md`` and the figures under ``folder/img``."""
    folder.mkdir(parents=True, exist_ok=True)
    images = folder / "img"
    images.mkdir(exist_ok=True)
    paths = [
        plot_error_by_horizon(results, images / "evaluation_error_by_horizon.png"),
        plot_coverage_by_horizon(results, images / "evaluation_coverage_by_horizon.png"),
        plot_fan_charts(results, images / "evaluation_fan_charts.png"),
    ]
    json_path = folder / "evaluation.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    markdown_path = folder / "evaluation.md"
    markdown_path.write_text(format_markdown(results))
    return [markdown_path, json_path, *paths]


def _cell(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if value is None else format(value * scale, spec)


def format_table(rows: dict[str, dict[str, dict[str, Any]]], h: int) -> list[str]:
    """Markdown table of every model at horizon ``h``."""
    lines = [
        "| model | windows | MAE (USD) | MAE / last value | MAPE % | MASE | pinball (USD) "
        "| 80 % coverage | 80 % width (USD) | 80 % width % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_h in rows.items():
        row = by_h.get(str(h))
        if row is None:
            continue
        lines.append(
            f"| {MODEL_LABELS[name]} | {row['windows']} | {_cell(row['mae'], '.6f')} "
            f"| {_cell(row['mae_ratio'], '.3f')} | {_cell(row['mape'], '.3f')} "
            f"| {_cell(row['mase'], '.3f')} | {_cell(row['pinball'], '.6f')} "
            f"| {_cell(row['coverage_80'], '.1f', 100)} | {_cell(row['width_80'], '.6f')} "
            f"| {_cell(row['relative_width_80'], '.3f')} |"
        )
    return lines


def format_markdown(results: dict[str, Any]) -> str:
    """Render the report page: setup, target checks, tables by horizon and product, figures."""
    split, origins, series = results["split"], results["origins"], results["series"]
    ets = results["auto_ets"]
    runtime = results["runtime_seconds"]
    lines = [
        f"# {results['title']}",
        "",
        f"Generated by `{results['command']}` on {results['generated']} "
        f"({results['machine']}). The run took {runtime['total'] / 60:.1f} minutes from "
        f"reading the data to the last score, {runtime['train_model'] / 60:.1f} of them "
        "training and calibrating the LSTM. "
        "The numbers below are in [evaluation.json](evaluation.json).",
        "",
        "## Setup",
        "",
        f"- Data: {', '.join(results['data']['paths']) or 'the bundled eu-west-1 file'}, "
        f"{results['data']['start']} to {results['data']['end']}, products "
        f"{', '.join(results['data']['products'])}.",
        f"- Cut-off {split['cutoff']}: the LSTM, the boosting models and the empirical "
        "quantiles see only prices up to it. LSTM training targets end by "
        f"{split['training_targets_end']}; origins every "
        f"{split['calibration']['every_hours']} hours from then to the cut-off "
        f"({split['calibration']['windows']:,} windows) calibrate its medians and intervals. "
        "Steps where the calibration replaces every median with the last value: "
        f"{_steps_text(split['calibration'].get('last_value_steps', []))}. Steps where the "
        "calibrated median was still less accurate than the last value on that slice, which "
        f"the guard hands to the last value: "
        f"{_steps_text(split['calibration'].get('guard_steps', []))}.",
        f"- Forecast origins every {origins['every_hours']} hours from {origins['first']} to "
        f"{origins['last']} ({origins['count']} origins, {origins['windows']:,} windows), "
        f"horizons 1 to {results['settings']['horizon']} hours. An origin needs "
        f"{origins['min_history_hours']} hours of history. Steps past the end of the data "
        "are left out, so late origins count only at short horizons.",
        f"- Series: {series['count']:,} "
        f"({', '.join(f'{n:,} {p}' for p, n in series['by_product'].items())})"
        + (f", a seeded sample of {series['sample']:,}" if series["sample"] else ", all of them")
        + (f". AutoETS is left out: {ets['skipped']}." if ets.get("skipped") else
           f". AutoETS runs on a seeded sample of {ets['series']:,} of them "
           f"(seed {ets['seed']}, {ets['failed_fits']} failed fits replaced by the last value); "
           "its MAE ratio compares with the last value on that sample."),
        f"- MASE divides each absolute error by its series' mean absolute hourly change up to the "
        f"cut-off, so it exceeds 1 at most horizons. It is undefined for "
        f"{series['without_mase_scale']:,} of {series['count']:,} series because "
        f"{series['mase_note'].replace('the series was', 'they were')}. Those series are left "
        "out of the MASE averages only, and MASE is missing where no series has a scale.",
        "- MAE, widths and pinball loss are in USD per instance-hour, pooled over all windows, "
        "so expensive instance types weigh more. MAPE and the relative width (%) weigh every "
        "series equally. Pinball loss is averaged over the quantiles "
        f"{', '.join(f'{q:g}' for q in results['quantiles'])}; point forecasts have none. "
        "The interval calibration targets 80 % over all products together, so one product "
        "alone can be covered more or less often.",
        "- LSTM settings: "
        + ", ".join(f"{key} {value}" for key, value in results["settings"].items())
        + ". [model-experiments.md](model-experiments.md) records the measurements behind them.",
        "",
        "Models:",
        "",
    ]
    for name, model in results["models"].items():
        lines.append(f"- **{model['label']}**: {model['description']}")
    lines += ["", "## Targets on the development split", "", "| target | measured | met |",
              "|---|---|---|"]
    for check in results["targets"]:
        lines.append(f"| {check['target']} | {check['value']} | {'yes' if check['met'] else 'no'} |")

    decisions = results.get("decisions")
    if decisions:
        lines += ["", "## Decisions", "",
                  f"Job-cost, cheapest-window, placement and price-risk decisions replayed over the "
                  f"same period with `{decisions['model']}`; the method and every table are in "
                  f"[{decisions['report']}]({decisions['report']}).", "",
                  "| target | measured | met |", "|---|---|---|"]
        for check in decisions["targets"]:
            lines.append(f"| {check['target']} | {check['shown']} | "
                         f"{'yes' if check['met'] else 'no'} |")

    lines += ["", "## All products", ""]
    for h in REPORTED_HORIZONS:
        if str(h) not in results["by_horizon"]["all"]["lstm"]:
            continue
        lines += [f"### {h} h ahead", "", *format_table(results["by_horizon"]["all"], h), ""]
    for product, rows in results["by_horizon"].items():
        if product == "all":
            continue
        lines += [f"## {product}", ""]
        for h in REPORTED_HORIZONS:
            if str(h) in rows["lstm"]:
                lines += [f"### {product}, {h} h ahead", "", *format_table(rows, h), ""]
    lines += [
        "## Figures",
        "",
        "MAE of each model divided by the last-value MAE on the same windows, by horizon "
        "(below 1 beats the last value):",
        "",
        "![MAE ratio by horizon](img/evaluation_error_by_horizon.png)",
        "",
        "Share of actual prices inside the 80 % interval, by horizon:",
        "",
        "![Coverage by horizon](img/evaluation_coverage_by_horizon.png)",
        "",
        "LSTM forecasts at one origin for series picked by their history (at least two price "
        "changes in the week before the origin, one per instance family, seeded): the last "
        "week, the median, the 80 % band and the actual prices.",
        "",
        "![Fan charts](img/evaluation_fan_charts.png)",
        "",
    ]
    return "\n".join(lines)


def plot_error_by_horizon(results: dict[str, Any], path: Path) -> Path:
    """Line chart of the MAE ratio to the last value by horizon, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, curve in results["curves"].items():
        if name == "lstm_ets_sample":
            continue
        steps = [h + 1 for h, v in enumerate(curve["mae_ratio"]) if v is not None]
        values = [v for v in curve["mae_ratio"] if v is not None]
        marker = "o" if name == "boosting" else None
        axis.plot(steps, values, label=MODEL_LABELS[name], marker=marker, markersize=3,
                  linewidth=2.0 if name == "lstm" else 1.2)
    axis.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    axis.set_ylabel("MAE / last-value MAE")
    axis.set_ylim(0.4, 2.0)
    axis.set_title("Forecast error relative to the last value")
    return _save_horizon_chart(figure, axis, path)


def plot_coverage_by_horizon(results: dict[str, Any], path: Path) -> Path:
    """Line chart of the 80 % interval coverage by horizon for models with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, curve in results["curves"].items():
        values = curve["coverage_80"]
        if name == "lstm_ets_sample" or all(v is None for v in values):
            continue
        steps = [h + 1 for h, v in enumerate(values) if v is not None]
        axis.plot(steps, [100 * v for v in values if v is not None], label=MODEL_LABELS[name])
    axis.axhspan(100 * TARGET_COVERAGE[0], 100 * TARGET_COVERAGE[1], color="grey", alpha=0.2,
                 label="78-82 % target")
    axis.set_ylabel("actuals inside the 80 % interval (%)")
    axis.set_title("Coverage of the 80 % interval")
    return _save_horizon_chart(figure, axis, path)


def _save_horizon_chart(figure, axis, path: Path) -> Path:
    """Put the horizon on a log axis at the reported horizons, add the legend and save."""
    import matplotlib.pyplot as plt

    axis.set_xscale("log")
    axis.set_xticks(list(REPORTED_HORIZONS), [str(h) for h in REPORTED_HORIZONS])
    axis.set_xlabel("horizon (hours, log scale)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_fan_charts(results: dict[str, Any], path: Path) -> Path:
    """Draw one panel per series: history, median, 80 % band, actuals and the last value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fans = results["fan_charts"]
    levels = results["quantiles"]
    columns = 2
    rows = max(1, (len(fans) + 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(11, 3.4 * rows), squeeze=False)
    for axis, fan in zip(axes.ravel(), fans, strict=False):
        history = np.asarray(fan["history"])
        values = np.asarray(fan["quantiles"])
        actual = np.asarray([np.nan if v is None else v for v in fan["actual"]])
        past = np.arange(-len(history) + 1, 1)
        future = np.arange(1, len(values) + 1)
        axis.step(past, history, where="post", color="black", linewidth=1, label="history")
        axis.step(future, actual, where="post", color="tab:red", linewidth=1, label="actual")
        axis.fill_between(future, values[:, levels.index(0.1)], values[:, levels.index(0.9)],
                          color="tab:blue", alpha=0.25, label="80 % interval")
        axis.plot(future, values[:, levels.index(0.5)], color="tab:blue", label="median")
        axis.axhline(history[-1], color="grey", linestyle=":", linewidth=1, label="last value")
        axis.set_title(f"{fan['unique_id']} from {fan['origin'][:16]}", fontsize=9)
        axis.set_xlabel("hours from the origin")
        axis.set_ylabel("USD per hour")
    for axis in axes.ravel()[len(fans):]:
        axis.set_visible(False)
    if fans:
        axes.ravel()[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``spot-forecast evaluate``."""
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="price files or folders (default: settings data_paths)")
    parser.add_argument("--cutoff", type=pd.Timestamp, default=DEFAULT_CUTOFF,
                        help="train on data up to this UTC time, evaluate after it "
                        f"(default {DEFAULT_CUTOFF.isoformat()})")
    parser.add_argument("--end", type=pd.Timestamp, help="last UTC time evaluated (default: "
                        "the end of the data)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs",
                        help="folder of evaluation.md, evaluation.json and img/ (default docs/)")
    parser.add_argument("--series-sample", type=int,
                        help="evaluate a seeded sample of this many series (default: all)")
    parser.add_argument("--ets-series", type=int, default=BacktestConfig.ets_series,
                        help="series in the seeded AutoETS sample (default "
                        f"{BacktestConfig.ets_series})")
    parser.add_argument("--seed", type=int, default=BacktestConfig.seed,
                        help="seed of the samples and the fan-chart choice")
    parser.add_argument("--epochs", type=int, help="LSTM training epochs (default: settings)")
    parser.add_argument("--max-train-windows", type=int,
                        help="LSTM training windows (default: settings)")
    parser.add_argument("--decisions", action="store_true",
                        help="also replay job-cost, cheapest-window, placement and price-risk "
                        "decisions after the cut-off, write decisions.md and decisions.json and "
                        "add their targets to the report (about 13 more minutes on 2 cores)")


def run_from_args(args: argparse.Namespace, settings: Settings) -> int:
    """Run the backtest for parsed options and write the report; returns an exit code."""
    from spot_forecast.ingest import read_prices
    from spot_forecast.model import configure_threads

    overrides = {key: value for key, value in {
        "epochs": args.epochs, "max_train_windows": args.max_train_windows,
    }.items() if value is not None}
    settings = settings.model_copy(update=overrides)
    configure_threads(settings.tf_threads)
    cutoff = _utc(args.cutoff)
    paths = [Path(p) for p in (args.paths or settings.data_paths)]
    config = BacktestConfig(
        cutoff=cutoff, end=None if args.end is None else _utc(args.end),
        series_sample=args.series_sample, ets_series=args.ets_series, seed=args.seed,
        data_paths=tuple(_display_path(p) for p in paths),
    )
    started = time.perf_counter()
    events, report = read_prices(paths, progress=True)
    logger.info("%s", report.summary())
    read_seconds = time.perf_counter() - started
    results = run_backtest(events, settings, config)
    runtime = results["runtime_seconds"]
    runtime["read_data"] = round(read_seconds, 1)
    runtime["total"] = round(runtime["total"] + read_seconds, 1)
    results["targets"] = check_targets(results)
    if args.decisions:
        results["command"] += " --decisions"
        results["decisions"] = replay_decisions(events, paths, cutoff, Path(args.out))
    written = write_report(results, Path(args.out))
    for check in results["targets"]:
        print(f"{'met   ' if check['met'] else 'NOT met'} {check['target']}: {check['value']}")
    print(f"Wrote {', '.join(str(p) for p in written)}")
    return 0


def replay_decisions(events: pd.DataFrame, paths: Sequence[Path], cutoff: pd.Timestamp,
                     out: Path) -> dict[str, Any]:
    """Run the decision backtest on the same data and cut-off; returns its targets for the report.

    The replay trains its own model with the default settings (saved as ``spot_lstm_dev``)
    because the decisions are made with the served forecast path: bundle, guard and sample paths.
    """
    from spot_forecast import decision_backtest

    config = decision_backtest.DecisionConfig(cutoff=cutoff)
    replayed = decision_backtest.run(None, paths, out, config, table=events)
    return {"model": replayed["model"], "report": "decisions.md",
            "seconds": round(replayed["seconds"], 1),
            "targets": [{"target": name, "value": row["value"], "met": row["met"],
                         "shown": decision_backtest.format_target(name, row)}
                        for name, row in replayed["targets"].items()]}


def _utc(timestamp: pd.Timestamp) -> pd.Timestamp:
    timestamp = pd.Timestamp(timestamp)
    return timestamp.tz_localize("UTC") if timestamp.tzinfo is None else timestamp.tz_convert("UTC")


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m spot_forecast.evaluate``: the same options as ``spot-forecast evaluate``."""
    parser = argparse.ArgumentParser(
        prog="python -m spot_forecast.evaluate",
        description="Backtest the LSTM and the baselines on rolling origins after a cut-off and "
        "write evaluation.md, evaluation.json and figures.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_from_args(args, Settings())


if __name__ == "__main__":
    raise SystemExit(main())
