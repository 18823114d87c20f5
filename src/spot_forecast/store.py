"""Save and load the model bundle in the BentoML model store.

A bundle is one store entry holding the Keras model (``model.keras``), the fitted scaler
(``scaler.joblib``), the recent hourly history of every series (``history.parquet``) and the
metadata (lookback, horizon, quantiles, frequency, training window, library versions, metrics).
``BENTOML_HOME`` chooses the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spot_forecast.grid import Series
from spot_forecast.windows import LogRatioScaler

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
SCALER_FILE = "scaler.joblib"
HISTORY_FILE = "history.parquet"
BUNDLE_FORMAT = 1


class ModelFormatError(RuntimeError):
    """A store entry is not a bundle this version can load."""


@dataclass
class Bundle:
    """Everything the service needs, loaded from one store entry."""

    tag: str
    path: Path
    scaler: LogRatioScaler
    metadata: dict[str, Any]
    history: dict[str, Series]
    model: Any = None  # keras.Model, loaded only when requested

    @property
    def quantiles(self) -> list[float]:
        return list(self.metadata["quantiles"])

    @property
    def lookback(self) -> int:
        return int(self.metadata["lookback"])

    @property
    def horizon(self) -> int:
        return int(self.metadata["horizon"])

    @property
    def freq(self) -> str:
        return str(self.metadata["freq"])


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the saved artifacts."""
    import bentoml
    import keras
    import sklearn
    import tensorflow as tf

    return {
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "bentoml": bentoml.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
    }


def save_bundle(
    name: str,
    model,
    scaler: LogRatioScaler,
    metadata: dict[str, Any],
    history: pd.DataFrame,
) -> str:
    """Save a bundle as a new version of ``name``; returns the tag (``name:version``).

    ``history`` is a long table with columns ``unique_id``, ``ds`` and ``y`` on the model's grid.
    """
    import bentoml
    import joblib

    full_metadata = {
        **metadata,
        "bundle_format": BUNDLE_FORMAT,
        "libraries": library_versions(),
        "series_count": int(history["unique_id"].nunique()),
    }
    with bentoml.models.create(
        name,
        metadata=full_metadata,
        labels={"framework": "keras", "task": "spot-price-forecast"},
    ) as model_ref:
        model.save(model_ref.path_of(MODEL_FILE))
        joblib.dump(scaler, model_ref.path_of(SCALER_FILE))
        history[["unique_id", "ds", "y"]].to_parquet(model_ref.path_of(HISTORY_FILE), index=False)
        tag = str(model_ref.tag)
    logger.info("saved %s with %d series to the BentoML model store", tag, full_metadata["series_count"])
    return tag


def check_bundle_folder(path: Path, tag: str) -> None:
    """Raise ModelFormatError if ``path`` is not a bundle this version can load."""
    if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
        raise ModelFormatError(
            f"model {tag} at {path} is a TensorFlow SavedModel folder, which Keras 3 cannot load "
            f"as a model; retrain with train.py to store a {MODEL_FILE} bundle"
        )
    missing = [f for f in (MODEL_FILE, SCALER_FILE, HISTORY_FILE) if not (path / f).exists()]
    if missing:
        raise ModelFormatError(
            f"model {tag} at {path} is missing {', '.join(missing)}; "
            "it was not saved by spot_forecast.store.save_bundle; retrain with train.py"
        )


def history_from_frame(frame: pd.DataFrame) -> dict[str, Series]:
    """Split a long ``unique_id, ds, y`` table into per-series grids."""
    series: dict[str, Series] = {}
    for unique_id, group in frame.sort_values(["unique_id", "ds"]).groupby("unique_id", sort=True):
        ds = pd.DatetimeIndex(group["ds"])
        series[str(unique_id)] = Series(str(unique_id), ds[0], group["y"].to_numpy(np.float64))
    return series


def load_bundle(model_ref, *, load_model: bool = True) -> Bundle:
    """Load a bundle from a ``bentoml.Model`` (or a tag string).

    With ``load_model=False`` the Keras model is not loaded, which keeps a process that only
    needs the metadata, scaler and history free of TensorFlow.
    """
    import bentoml
    import joblib

    if isinstance(model_ref, str):
        try:
            model_ref = bentoml.models.get(model_ref)
        except bentoml.exceptions.NotFound as error:
            raise ModelFormatError(
                f"model {model_ref} is not in the BentoML model store; "
                "run train.py (or `make run`) to create it, or set BENTOML_HOME to the store "
                "that holds it"
            ) from error

    tag = str(model_ref.tag)
    path = Path(model_ref.path)
    check_bundle_folder(path, tag)
    metadata = dict(model_ref.info.metadata)
    if metadata.get("bundle_format") != BUNDLE_FORMAT:
        raise ModelFormatError(
            f"model {tag} has bundle format {metadata.get('bundle_format')!r}, "
            f"this version reads format {BUNDLE_FORMAT}; retrain with train.py"
        )

    scaler = joblib.load(path / SCALER_FILE)
    history = history_from_frame(pd.read_parquet(path / HISTORY_FILE))
    bundle = Bundle(tag=tag, path=path, scaler=scaler, metadata=metadata, history=history)
    if load_model:
        bundle.model = load_keras_model(path / MODEL_FILE)
    logger.info("loaded %s: %d series, lookback %d, horizon %d", tag, len(history),
                bundle.lookback, bundle.horizon)
    return bundle


def load_keras_model(path: Path):
    """Load a saved ``.keras`` model without its training configuration."""
    import keras

    import spot_forecast.layers  # noqa: F401  registers the custom layers

    return keras.models.load_model(path, compile=False)
