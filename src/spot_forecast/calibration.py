"""Calibration refresh: refit a stored model's cost levels and risk map on recent prices.

The sample paths (``decisions.PathModel``) carry two corrections fitted on days whose outcomes
are known: the path levels reported as job-cost percentiles, and the isotonic map from path
exceedance frequencies to risk probabilities. Both describe how actual prices fell against the
forecasts, and that drifts with the market. In the decision backtest (docs/decisions.md), a map
fitted before the cut-off and kept for four weeks under-stated the risk by up to 5.7 points per
decile. Refitted each day on the two weeks before, it stayed within 4.2 points.

``calibrate`` does that refit for a stored model. It forecasts origins every 8 hours in the
last ``calibration_days`` of the prices whose whole horizon has passed, and refits both
corrections on what happened. It then saves a new version of the model with the same network,
scaler and history, and the new fit under ``metadata["sample_paths"]``. The service loads the
newest version, so ``spot-forecast calibrate`` after each ingest keeps the probabilities
current. ``rho`` and the saving margins stay as they were.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from spot_forecast.decision_backtest import (
    DecisionConfig,
    bundle_forecaster,
    forecast_origin,
    origins_between,
    path_model_metadata,
    recalibrated,
    replay_paths,
    sample_series,
)
from spot_forecast.decisions import PathModel
from spot_forecast.grid import to_panel

logger = logging.getLogger(__name__)

#: Minimum number of origins a refit reads: two days of origins 8 hours apart.
MIN_ORIGINS = 6


class CalibrationError(ValueError):
    """The prices cannot support a refit; the message names what is missing."""


@dataclass(frozen=True)
class CalibrationResult:
    """The refitted path model, a summary of its fit and the saved tag (``None`` when not saved)."""

    tag: str | None
    model: PathModel
    details: dict[str, Any]


def min_calibration_days(config: DecisionConfig = DecisionConfig()) -> int:
    """Return the minimum number of calibration days that hold ``MIN_ORIGINS`` known origins."""
    hours = (MIN_ORIGINS - 1) * config.calibration_every_hours + config.horizon
    return math.ceil(hours / 24)


def calibrate(model_ref: str, table: pd.DataFrame, config: DecisionConfig = DecisionConfig(),
              *, save: bool = True) -> CalibrationResult:
    """Refit the cost levels and the risk map of ``model_ref`` on the latest days of ``table``.

    ``table`` contains price events as ``ingest.read_prices`` returns them. Origins fall every
    ``config.calibration_every_hours`` in the last ``config.calibration_days`` of the prices,
    and each is followed by ``config.horizon`` known hours. The series are ``config.groups``
    (pool, product) groups sampled with the seed. Raises ``CalibrationError`` when there are
    fewer than ``MIN_ORIGINS`` such origins.
    """
    import numpy as np

    from spot_forecast.store import HISTORY_FILE, load_bundle, save_bundle

    bundle = load_bundle(model_ref)
    panel = to_panel(table, freq=bundle.freq)
    step = pd.Timedelta(hours=1)
    origins = origins_between(panel.end - pd.Timedelta(days=config.calibration_days),
                              panel.end - config.horizon * step, config.calibration_every_hours)
    if len(origins) < MIN_ORIGINS:
        raise CalibrationError(
            f"the prices end at {panel.end.isoformat()}, and {config.calibration_days} days of "
            f"origins followed by {config.horizon} known hours give {len(origins)}; a refit "
            f"needs {MIN_ORIGINS}: use at least {min_calibration_days(config)} days (--days) "
            "and prices that cover them"
        )
    unique_ids = sample_series(panel, config)
    forecaster = bundle_forecaster(bundle)
    current = PathModel.from_metadata(bundle.metadata)
    # Paths drawn with the backtest's seed and count; the saved model keeps its own.
    drawing = replace(current, n_paths=config.n_paths, seed=config.seed)
    rng = np.random.default_rng(config.seed)
    records = []
    for done, origin in enumerate(origins, start=1):
        batch = forecast_origin(panel, unique_ids, origin, config.horizon, forecaster)
        if batch is not None:
            records.append(replay_paths(batch, drawing, config, rng))
        logger.info("calibration origin %s (%d of %d)", origin.isoformat(), done, len(origins))
    if len(records) < MIN_ORIGINS:
        raise CalibrationError(
            f"only {len(records)} origins have series with enough history; a refit needs "
            f"{MIN_ORIGINS}"
        )
    # The model as stored (values rounded for the metadata) is the one the service will use.
    stored = path_model_metadata(recalibrated(current, records, config))
    fitted = PathModel.from_metadata({"sample_paths": stored})
    training_end = (bundle.metadata.get("training_window") or {}).get("training_end")
    in_sample = (sum(origin < pd.Timestamp(training_end) for origin in origins)
                 if training_end else 0)
    if in_sample:
        logger.warning(
            "%d of %d calibration origins fall before the end of %s's training windows (%s); "
            "the network has seen those prices, so the refit may under-state uncertainty",
            in_sample, len(origins), bundle.tag, training_end,
        )
    details = {
        "fitted_from": bundle.tag,
        "origins": len(records),
        "first_origin": origins[0].isoformat(),
        "last_origin": origins[-1].isoformat(),
        "prices_end": panel.end.isoformat(),
        "series": len(unique_ids),
        "origins_inside_training": in_sample,
        "jobs": int(sum(len(r["job"]) for r in records)),
        "risk_decisions": int(sum(len(r["risk"]) for r in records)),
    }
    tag = None
    if save:
        metadata = {**bundle.metadata, "sample_paths": {**stored, "calibration": details}}
        history = pd.read_parquet(bundle.path / HISTORY_FILE)
        tag = save_bundle(bundle.tag.split(":")[0], bundle.model, bundle.scaler, metadata, history)
        logger.info("saved %s: %s with a refitted calibration", tag, bundle.tag)
    return CalibrationResult(tag=tag, model=fitted, details=details)
