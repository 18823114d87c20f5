"""The training run behind train.py: read, grid, split in time, fit, validate, save.

The last ``validation_days`` of the data are held out. Training windows end (origin plus the full
horizon) at or before the cut-off, and the scaler and the empirical quantiles see only those
windows. Validation windows start at the cut-off and every 24 hours after it.
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
from spot_forecast.grid import Panel, to_panel
from spot_forecast.series import split_series_id
from spot_forecast.windows import LogRatioScaler, WindowSet, cut_windows, hour_number

logger = logging.getLogger(__name__)

REPORTED_HORIZONS = (1, 24, 168)
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


def training_ids(panel: Panel, products: Sequence[str]) -> list[str]:
    """Series whose product description is one of ``products`` (all series if empty)."""
    if not products:
        return panel.ids()
    return [uid for uid in panel.ids() if split_series_id(uid)[2] in set(products)]


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
    validation period. Origins are sampled uniformly over all series with ``seed``.
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


def validation_metrics(
    quantile_prices: np.ndarray,
    last_prices: np.ndarray,
    raw_targets: np.ndarray,
    levels: Sequence[float],
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Compare the model's median with the last value on validation windows.

    Returns the metrics dict for the reported horizons, and the per-step MAE of the model and of
    the last value (shape ``(horizon,)`` each).
    """
    actual = last_prices[:, None] * np.exp(raw_targets.astype(np.float64))
    levels = list(levels)
    median = quantile_prices[..., levels.index(0.5)]
    lower = quantile_prices[..., levels.index(0.1)]
    upper = quantile_prices[..., levels.index(0.9)]
    last_value = np.broadcast_to(last_prices[:, None], actual.shape)

    model_mae = metrics.mae(actual, median, axis=0)
    baseline_mae = metrics.mae(actual, last_value, axis=0)
    by_horizon = {}
    for h in REPORTED_HORIZONS:
        if h > actual.shape[1]:
            continue
        i = h - 1
        by_horizon[str(h)] = {
            "model_mae": float(model_mae[i]),
            "last_value_mae": float(baseline_mae[i]),
            "mae_ratio": float(model_mae[i] / baseline_mae[i]) if baseline_mae[i] > 0 else None,
            "model_mape": float(metrics.mape(actual[:, i], median[:, i])),
            "last_value_mape": float(metrics.mape(actual[:, i], last_value[:, i])),
            "coverage_80": float(metrics.coverage(actual[:, i], lower[:, i], upper[:, i])),
            "windows": int(np.sum(~np.isnan(actual[:, i]))),
        }
    return {"by_horizon": by_horizon}, model_mae, baseline_mae


def format_metrics_table(result_metrics: dict[str, Any]) -> str:
    """Plain-text table of the validation metrics by horizon."""
    lines = [
        f"{'horizon':>8} {'model MAE':>11} {'last-value MAE':>15} {'ratio':>6} "
        f"{'model MAPE %':>13} {'last MAPE %':>12} {'80% cover':>10} {'windows':>8}"
    ]
    for h, row in result_metrics["by_horizon"].items():
        ratio = "-" if row["mae_ratio"] is None else f"{row['mae_ratio']:.3f}"
        lines.append(
            f"{h + ' h':>8} {row['model_mae']:>11.6f} {row['last_value_mae']:>15.6f} {ratio:>6} "
            f"{row['model_mape']:>13.3f} {row['last_value_mape']:>12.3f} "
            f"{100 * row['coverage_80']:>9.1f}% {row['windows']:>8}"
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
    from spot_forecast.forecast import Predictor
    from spot_forecast.model import build_model, configure_threads, fit_model, to_prices
    from spot_forecast.windows import N_FEATURES

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

    split = split_windows(
        panel, series_ids=series_ids, cutoff=cutoff, lookback=settings.lookback,
        horizon=settings.horizon, max_train_windows=settings.max_train_windows, seed=settings.seed,
    )
    scaler = LogRatioScaler().fit(split.train.targets)
    logger.info("fitted the scaler on %d training targets: scale %.6f",
                scaler.n_samples_seen_, scaler.scale_)
    train_set = scale_windows(split.train, scaler)
    validation_set = scale_windows(split.validation, scaler)

    import keras

    keras.utils.set_random_seed(settings.seed)
    model = build_model(lookback=settings.lookback, n_features=N_FEATURES, horizon=settings.horizon,
                        quantiles=settings.quantiles, units=settings.lstm_units, seed=settings.seed)
    has_validation = len(validation_set.inputs) > 0
    fit_model(model, train_set.inputs, train_set.targets, quantiles=settings.quantiles,
              epochs=settings.epochs, batch_size=settings.batch_size,
              validation=(validation_set.inputs, validation_set.targets) if has_validation else None,
              verbose=verbose)

    empirical = empirical_log_quantiles(split.train.targets, settings.quantiles)
    result_metrics: dict[str, Any] = {"by_horizon": {}}
    guard_steps: list[int] = []
    if has_validation:
        predictor = Predictor(model, settings.lookback)
        scaled = predictor(validation_set.inputs)
        quantile_prices = np.sort(
            to_prices(scaled, validation_set.last_prices, scaler.scale_), axis=-1
        )
        result_metrics, model_mae, baseline_mae = validation_metrics(
            quantile_prices, validation_set.last_prices, split.validation.targets,
            settings.quantiles,
        )
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
            "cutoff": cutoff.isoformat(),
            "end": panel.end.isoformat(),
        },
        "train_windows": int(len(train_set.inputs)),
        "validation_windows": int(len(validation_set.inputs)),
        "scale": scaler.scale_,
        "validation": result_metrics,
        "guard": {
            "baseline_steps": guard_steps,
            "empirical_log_quantiles": empirical.round(8).tolist(),
        },
        "settings": settings.model_dump(mode="json", include={
            "epochs", "batch_size", "lstm_units", "max_train_windows", "seed", "validation_days",
        }),
    }
    tag = None
    if save:
        from spot_forecast.store import save_bundle

        tag = save_bundle(settings.model_name, model, scaler, metadata, history)
    return TrainResult(tag, result_metrics, time.perf_counter() - started, guard_steps)


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
