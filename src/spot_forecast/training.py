"""The training run behind train.py: read, grid, split in time, fit, calibrate, validate, save.

Time is split three ways. The last ``validation_days`` of the data are held out for validation.
Before them, the last ``calibration_days`` calibrate the network's outputs. Training windows end
(origin plus the full horizon) at or before the start of the calibration slice. The scaler and the
empirical quantiles see only training windows, and calibration and validation targets never reach
past the end of their own slice. ``fit_forecaster`` does the training and the calibration, and
the backtest in ``evaluate`` calls it too.

Validation is a rolling-origin backtest of the saved model: origins every 24 hours over the
held-out days, scored against the last value and the empirical-quantile interval. Its metrics are
stored in the model's metadata, and at every step where the model's median was less accurate
than the last value the service returns the last value and empirical quantiles (the guard).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spot_forecast import metrics
from spot_forecast.config import Settings
from spot_forecast.grid import Panel, Series, to_panel
from spot_forecast.series import split_series_id
from spot_forecast.windows import LogRatioScaler, WindowSet, cut_windows, hour_number

logger = logging.getLogger(__name__)

REPORTED_HORIZONS = (1, 6, 24, 72, 168)
#: Fewest observed hours before a training origin.
MIN_CONTEXT = 24
#: Share of training windows cut shorter than the lookback, so short client histories work.
TRUNCATED_SHARE = 0.1


@dataclass
class Split:
    """Training and validation windows of one panel, in raw (unscaled) log ratios."""

    train: WindowSet
    validation: WindowSet
    cutoff: pd.Timestamp
    train_series: list[str]


@dataclass
class TrainResult:
    """What a training run produced."""

    tag: str | None
    metrics: dict[str, Any]
    seconds: float
    guard_steps: list[int] = field(default_factory=list)


@dataclass
class FittedForecaster:
    """A calibrated network with everything needed to forecast and to judge it.

    ``model`` already contains the calibration layer. ``empirical`` contains the quantiles of
    log(price after h / price now) over the training windows, shape ``(horizon, n_quantiles)``.
    ``training_end`` is the last time a training target may reach, and ``end`` the last time any
    window of the fit (calibration included) reads.
    """

    model: Any
    scaler: LogRatioScaler
    empirical: np.ndarray
    calibration: dict[str, Any]
    train_windows: int
    training_end: pd.Timestamp
    end: pd.Timestamp


def training_ids(panel: Panel, products: Sequence[str]) -> list[str]:
    """Series whose product description is one of ``products`` (all series if empty)."""
    if not products:
        return panel.ids()
    return [uid for uid in panel.ids() if split_series_id(uid)[2] in set(products)]


def truncate_panel(panel: Panel, end: pd.Timestamp) -> Panel:
    """Cut the panel at ``end``: drop later grid points and series that start after it.

    A grid point takes the last event at or before it, so the truncated grid equals the grid of
    the events up to ``end``.
    """
    end = pd.Timestamp(end).floor(panel.step)
    kept = []
    for s in panel:
        if s.start > end:
            continue
        last = int((end - s.start) // panel.step)
        kept.append(Series(s.unique_id, s.start, s.values[:last + 1]))
    return Panel(tuple(kept), panel.step, min(end, panel.end))


def split_windows(
    panel: Panel,
    *,
    series_ids: Sequence[str],
    cutoff: pd.Timestamp,
    lookback: int,
    horizon: int,
    max_train_windows: int,
    seed: int,
    validation_every: int = 24,
) -> Split:
    """Cut training windows that end by ``cutoff`` and validation windows that start at it.

    A training origin ``o`` (the position of the last observed price) needs ``MIN_CONTEXT`` hours
    before it and its whole horizon at or before the cut-off, so no training target lies in the
    validation period. Origins are sampled uniformly over all series with ``seed``. Validation
    windows read the panel up to its end.
    """
    rng = np.random.default_rng(seed)
    unit = LogRatioScaler()
    selected = panel.select(list(series_ids))
    values = [s.values for s in selected]
    start_hours = [hour_number(s.start) for s in selected]
    cutoff_positions = [
        int((cutoff - s.start) // panel.step) for s in selected
    ]

    # Training origins: MIN_CONTEXT - 1 <= o and o + horizon <= cutoff position.
    candidates = [
        np.arange(MIN_CONTEXT - 1, max(MIN_CONTEXT - 1, c - horizon + 1)) for c in cutoff_positions
    ]
    counts = np.array([len(c) for c in candidates])
    total = int(counts.sum())
    if total == 0:
        raise ValueError(
            f"no training windows: every series is shorter than {MIN_CONTEXT} + {horizon} hours "
            f"before the cut-off {cutoff.isoformat()}; supply a longer history or lower the horizon"
        )
    chosen = np.sort(rng.choice(total, size=min(max_train_windows, total), replace=False))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    train_origins = [
        candidates[k][chosen[(chosen >= offsets[k]) & (chosen < offsets[k + 1])] - offsets[k]]
        for k in range(len(candidates))
    ]
    truncations = [
        np.where(
            rng.random(len(o)) < TRUNCATED_SHARE,
            rng.integers(1, lookback, size=len(o)),
            lookback,
        )
        for o in train_origins
    ]
    train = cut_windows(values, start_hours, train_origins, lookback=lookback, horizon=horizon,
                        scaler=unit, truncate_lengths=truncations)

    validation_origins = [
        np.arange(c, len(v) - 1, validation_every) if c >= MIN_CONTEXT - 1 else np.arange(0)
        for c, v in zip(cutoff_positions, values, strict=True)
    ]
    validation = cut_windows(values, start_hours, validation_origins, lookback=lookback,
                             horizon=horizon, scaler=unit)
    logger.info(
        "cut %d training windows (of %d candidates) and %d validation windows from %d series",
        len(train.inputs), total, len(validation.inputs), len(selected),
    )
    return Split(train, validation, cutoff, list(series_ids))


def scale_windows(windows: WindowSet, scaler: LogRatioScaler) -> WindowSet:
    """Divide the log-ratio features and targets of raw windows by the fitted scale."""
    inputs = windows.inputs.copy()
    inputs[..., 0:2] /= scaler.scale_
    targets = (windows.targets / scaler.scale_).astype(np.float32)
    return WindowSet(inputs, targets, windows.last_prices, windows.series_index, windows.origins)


def empirical_log_quantiles(raw_targets: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Quantiles of log(price after h / price now) per step, shape ``(horizon, q)``."""
    table = np.nanquantile(raw_targets.astype(np.float64), levels, axis=0).T
    return np.nan_to_num(table, nan=0.0)


def predict_scaled(model, inputs: np.ndarray, lookback: int, batch_size: int = 4096) -> np.ndarray:
    """Run the network over windows in batches; returns scaled log-ratio quantiles."""
    from spot_forecast.forecast import Predictor

    predictor = Predictor(model, lookback)
    if len(inputs) == 0:
        return predictor(inputs)
    parts = [predictor(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return np.concatenate(parts)


def fit_forecaster(
    panel: Panel,
    settings: Settings,
    *,
    series_ids: Sequence[str],
    end: pd.Timestamp,
    verbose: int = 2,
) -> FittedForecaster:
    """Train and calibrate the network on data up to ``end`` and nothing after it.

    The panel is first cut at ``end``. Training windows end by ``end - calibration_days``, and
    calibration origins every ``calibration_every`` hours after that read targets up to ``end``.
    The calibration fits per-step median thresholds and interval scales (see
    ``model.fit_median_threshold`` and ``model.fit_spread_scale``) and appends them to the network
    as a ``QuantileCalibration`` layer.
    """
    import keras

    from spot_forecast.model import (
        SNAP_ALL,
        build_model,
        calibrate_model,
        fit_median_threshold,
        fit_model,
        fit_spread_scale,
        shrink_medians,
        step_weights,
    )
    from spot_forecast.windows import N_FEATURES

    visible = truncate_panel(panel, end)
    series_ids = [uid for uid in series_ids if uid in set(visible.ids())]
    training_end = visible.end - pd.Timedelta(days=settings.calibration_days)
    split = split_windows(
        visible, series_ids=series_ids, cutoff=training_end, lookback=settings.lookback,
        horizon=settings.horizon, max_train_windows=settings.max_train_windows, seed=settings.seed,
        validation_every=settings.calibration_every,
    )
    scaler = LogRatioScaler().fit(split.train.targets)
    logger.info("fitted the scaler on %d training targets: scale %.6f",
                scaler.n_samples_seen_, scaler.scale_)
    empirical = empirical_log_quantiles(split.train.targets, settings.quantiles)
    horizon_weights = step_weights(split.train.targets, settings.loss_step_power)
    train_count = len(split.train.inputs)
    # Scale in place: the raw training windows are not needed again, and a copy of 150,000
    # windows of 168 x 8 float32 values would take another 800 MB.
    train_set = split.train
    train_set.inputs[..., 0:2] /= scaler.scale_
    train_set.targets = (train_set.targets / scaler.scale_).astype(np.float32)

    keras.utils.set_random_seed(settings.seed)
    network = build_model(
        lookback=settings.lookback, n_features=N_FEATURES, horizon=settings.horizon,
        quantiles=settings.quantiles, units=settings.hidden_units,
        lstm_units=settings.lstm_units, recurrent_hours=settings.recurrent_hours,
        seed=settings.seed,
    )
    weights = train_set.last_prices ** settings.loss_price_power
    fit_model(network, train_set.inputs, train_set.targets, quantiles=settings.quantiles,
              epochs=settings.epochs, batch_size=settings.batch_size,
              learning_rate=settings.learning_rate, sample_weight=weights / weights.mean(),
              loss_step_weights=horizon_weights, median_weight=settings.median_loss_weight,
              verbose=verbose)
    del train_set

    levels = list(settings.quantiles)
    median_index = levels.index(0.5)
    horizon = settings.horizon
    calibration: dict[str, Any] = {
        "windows": int(len(split.validation.inputs)),
        "start": training_end.isoformat(),
        "end": visible.end.isoformat(),
        "every_hours": settings.calibration_every,
    }
    if len(split.validation.inputs) == 0:
        logger.warning("no calibration windows before %s; the network stays uncalibrated",
                       visible.end.isoformat())
        thresholds = np.zeros(horizon)
        spread = np.ones((horizon, len(levels)))
        calibration["guard_steps"] = []
    else:
        calibration_set = scale_windows(split.validation, scaler)
        raw = predict_scaled(network, calibration_set.inputs, settings.lookback)
        thresholds = fit_median_threshold(
            raw, split.validation.targets, split.validation.last_prices,
            scale=scaler.scale_, median_index=median_index,
        )
        shrunk = shrink_medians(raw, thresholds, median_index)
        spread = fit_spread_scale(shrunk, calibration_set.targets, levels)
        calibration["guard_steps"] = worse_than_last_value(
            shrunk[..., median_index], split.validation.targets,
            split.validation.last_prices, scaler.scale_,
        )
        logger.info(
            "calibrated on %d windows from %s to %s: the last value replaces every median at "
            "%d steps, and the 80%% interval is scaled by %.2f at step %d",
            len(calibration_set.inputs), training_end.isoformat(), visible.end.isoformat(),
            int(np.sum(thresholds >= SNAP_ALL)), spread[min(23, horizon - 1), levels.index(0.1)],
            min(24, horizon),
        )
    calibration["last_value_steps"] = [
        int(h) for h in np.flatnonzero(thresholds >= SNAP_ALL) + 1
    ]
    calibration["interval_80_scale"] = {
        str(h): round(float(spread[h - 1, levels.index(0.1)]), 4)
        for h in REPORTED_HORIZONS if h <= horizon
    }
    model = calibrate_model(network, thresholds, spread, levels)
    return FittedForecaster(
        model=model, scaler=scaler, empirical=empirical, calibration=calibration,
        train_windows=train_count, training_end=training_end, end=visible.end,
    )


def worse_than_last_value(
    scaled_medians: np.ndarray, raw_targets: np.ndarray, last_prices: np.ndarray, scale: float
) -> list[int]:
    """1-based steps where the medians' MAE in USD exceeds the last value's on these windows."""
    from spot_forecast.model import to_prices

    actual = last_prices[:, None] * np.exp(raw_targets.astype(np.float64))
    forecast = to_prices(scaled_medians[..., None], last_prices, scale)[..., 0]
    last = np.broadcast_to(last_prices[:, None], actual.shape)
    with np.errstate(invalid="ignore"):
        worse = metrics.mae(actual, forecast, axis=0) > metrics.mae(actual, last, axis=0)
    return [int(h) for h in np.flatnonzero(worse) + 1]


def validation_metrics(
    quantile_prices: np.ndarray,
    last_prices: np.ndarray,
    raw_targets: np.ndarray,
    levels: Sequence[float],
    empirical: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Score the model on validation windows, next to the last value, at the reported horizons.

    ``empirical`` (the ``(horizon, q)`` log-change quantiles of the training windows), when given,
    adds the interval metrics of the last value with empirical quantiles. Returns the metrics dict
    and the per-step MAE of the model and of the last value (shape ``(horizon,)`` each).
    """
    from spot_forecast.baselines import empirical_quantile_forecast

    actual = last_prices[:, None] * np.exp(raw_targets.astype(np.float64))
    levels = sorted(levels)
    median = quantile_prices[..., levels.index(0.5)]
    groups = np.zeros(len(actual), dtype=np.int64)
    model_sums = metrics.ScoreSums(1, actual.shape[1], levels)
    model_sums.add(groups, actual, last_prices, median, quantile_prices)
    model_table = model_sums.table()

    baseline_table = None
    if empirical is not None:
        baseline_sums = metrics.ScoreSums(1, actual.shape[1], levels)
        baseline_quantiles = empirical_quantile_forecast(last_prices, empirical[:actual.shape[1]])
        baseline_sums.add(groups, actual, last_prices,
                          np.broadcast_to(last_prices[:, None], actual.shape), baseline_quantiles)
        baseline_table = baseline_sums.table()

    by_horizon = {}
    for h in REPORTED_HORIZONS:
        if h > actual.shape[1]:
            continue
        i = h - 1
        row = {
            "model_mae": optional_float(model_table["mae"][i]),
            "last_value_mae": optional_float(model_table["last_value_mae"][i]),
            "mae_ratio": optional_float(model_table["mae_ratio"][i]),
            "model_mape": optional_float(model_table["mape"][i]),
            "last_value_mape": optional_float(model_table["last_value_mape"][i]),
            "coverage_80": optional_float(model_table["coverage_80"][i]),
            "width_80": optional_float(model_table["width_80"][i]),
            "pinball": optional_float(model_table["pinball"][i]),
            "windows": int(model_table["windows"][i]),
        }
        if baseline_table is not None:
            row.update({
                "empirical_coverage_80": optional_float(baseline_table["coverage_80"][i]),
                "empirical_width_80": optional_float(baseline_table["width_80"][i]),
                "empirical_pinball": optional_float(baseline_table["pinball"][i]),
            })
        by_horizon[str(h)] = row
    model_mae = metrics.mae(actual, median, axis=0)
    baseline_mae = metrics.mae(actual, np.broadcast_to(last_prices[:, None], actual.shape), axis=0)
    return {"by_horizon": by_horizon}, model_mae, baseline_mae


def optional_float(value: float) -> float | None:
    """Convert to ``float``, with None for NaN, so JSON gets null where a metric is missing."""
    value = float(value)
    return value if np.isfinite(value) else None


def format_metrics_table(result_metrics: dict[str, Any]) -> str:
    """Plain-text table of the validation metrics by horizon."""
    lines = [
        f"{'horizon':>8} {'model MAE':>11} {'last-value MAE':>15} {'ratio':>6} "
        f"{'model MAPE %':>13} {'last MAPE %':>12} {'80% cover':>10} {'windows':>8}"
    ]

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for h, row in result_metrics["by_horizon"].items():
        coverage = row["coverage_80"]
        coverage_text = "-" if coverage is None else f"{100 * coverage:.1f}%"
        lines.append(
            f"{h + ' h':>8} {number(row['model_mae'], '.6f'):>11} "
            f"{number(row['last_value_mae'], '.6f'):>15} {number(row['mae_ratio'], '.3f'):>6} "
            f"{number(row['model_mape'], '.3f'):>13} {number(row['last_value_mape'], '.3f'):>12} "
            f"{coverage_text:>10} {row['windows']:>8}"
        )
    return "\n".join(lines)


def load_events(settings: Settings, paths: Sequence[Path] | None, archive: Path | None) -> pd.DataFrame:
    """Read the price events for training from files or from an archive."""
    if archive is not None:
        from spot_forecast.archive import read_archive

        table = read_archive(archive)
        logger.info("read %d events from the archive %s", len(table), archive)
        return table

    from spot_forecast.ingest import read_prices

    table, report = read_prices(list(paths or settings.data_paths), progress=True)
    logger.info("%s", report.summary())
    return table


def train(
    settings: Settings,
    *,
    paths: Sequence[Path] | None = None,
    archive: Path | None = None,
    events: pd.DataFrame | None = None,
    save: bool = True,
    verbose: int = 2,
) -> TrainResult:
    """Run the whole training job and save the bundle; see the module docstring."""
    from spot_forecast.model import configure_threads, to_prices

    started = time.perf_counter()
    configure_threads(settings.tf_threads)
    if events is None:
        events = load_events(settings, paths, archive)
    panel = to_panel(events, freq=settings.freq)
    cutoff = panel.end - pd.Timedelta(days=settings.validation_days)
    series_ids = training_ids(panel, settings.products)
    if not series_ids:
        raise ValueError(
            f"no series with products {list(settings.products)} in the data; "
            f"set SPOT_FORECAST_PRODUCTS to products present in the files"
        )

    fitted = fit_forecaster(panel, settings, series_ids=series_ids, end=cutoff, verbose=verbose)
    validation = validation_windows(panel, series_ids, cutoff, settings)
    scaler = fitted.scaler

    result_metrics: dict[str, Any] = {"by_horizon": {}}
    guard_steps: list[int] = []
    if len(validation.inputs) > 0:
        scaled = predict_scaled(fitted.model, scale_windows(validation, scaler).inputs,
                                settings.lookback)
        quantile_prices = np.sort(
            to_prices(scaled, validation.last_prices, scaler.scale_), axis=-1
        )
        result_metrics, model_mae, baseline_mae = validation_metrics(
            quantile_prices, validation.last_prices, validation.targets,
            settings.quantiles, fitted.empirical,
        )
        with np.errstate(invalid="ignore"):
            worse = np.flatnonzero(model_mae > baseline_mae) + 1
        guard_steps = [int(h) for h in worse]
        if guard_steps:
            logger.warning(
                "the model's median is less accurate than the last value at %d of %d steps; "
                "the service answers with the last value and empirical quantiles there",
                len(guard_steps), settings.horizon,
            )

    history = recent_history(panel, settings.history_hours)
    metadata = {
        "lookback": settings.lookback,
        "horizon": settings.horizon,
        "quantiles": list(settings.quantiles),
        "freq": settings.freq,
        "products": list(settings.products),
        "training_window": {
            "start": min(s.start for s in panel).isoformat(),
            "training_end": fitted.training_end.isoformat(),
            "cutoff": cutoff.isoformat(),
            "end": panel.end.isoformat(),
        },
        "train_windows": fitted.train_windows,
        "validation_windows": int(len(validation.inputs)),
        "scale": scaler.scale_,
        "validation": result_metrics,
        "backtest": {
            "description": (
                "rolling-origin backtest of this model on the held-out days after the cut-off: "
                "origins every 24 hours, medians against the last value, intervals against the "
                "last value with empirical quantiles of past relative changes"
            ),
            "origins_every_hours": 24,
            "start": cutoff.isoformat(),
            "end": panel.end.isoformat(),
            **result_metrics,
        },
        "calibration": fitted.calibration,
        "guard": {
            "baseline_steps": guard_steps,
            "empirical_log_quantiles": fitted.empirical.round(8).tolist(),
        },
        "settings": settings.model_dump(mode="json", include=set(MODEL_SETTINGS)),
    }
    tag = None
    if save:
        from spot_forecast.store import save_bundle

        tag = save_bundle(settings.model_name, fitted.model, scaler, metadata, history)
    return TrainResult(tag, result_metrics, time.perf_counter() - started, guard_steps)


#: Settings that shape the trained model, recorded in its metadata.
MODEL_SETTINGS = (
    "epochs", "batch_size", "lstm_units", "hidden_units", "recurrent_hours", "learning_rate",
    "loss_price_power", "loss_step_power", "median_loss_weight", "max_train_windows", "seed", "validation_days", "calibration_days", "calibration_every",
)


def validation_windows(
    panel: Panel, series_ids: Sequence[str], start: pd.Timestamp, settings: Settings,
    every: int = 24,
) -> WindowSet:
    """Raw windows at origins from ``start`` every ``every`` hours to the end of the panel."""
    selected = panel.select(list(series_ids))
    origins = []
    for s in selected:
        first = int((start - s.start) // panel.step)
        if first < MIN_CONTEXT - 1:
            origins.append(np.arange(0))
        else:
            origins.append(np.arange(first, len(s.values) - 1, every))
    return cut_windows(
        [s.values for s in selected], [hour_number(s.start) for s in selected], origins,
        lookback=settings.lookback, horizon=settings.horizon, scaler=LogRatioScaler(),
    )


def recent_history(panel: Panel, hours: int) -> pd.DataFrame:
    """Long table of the last ``hours`` grid points of every series."""
    frames = []
    for s in panel:
        tail = s.values[-hours:]
        start = s.start + (len(s.values) - len(tail)) * panel.step
        frames.append(pd.DataFrame({
            "unique_id": s.unique_id,
            "ds": pd.date_range(start, periods=len(tail), freq=panel.step),
            "y": tail,
        }))
    return pd.concat(frames, ignore_index=True)
