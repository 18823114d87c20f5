"""Loading the network for serving: threads, model file, compiled function, warm-up."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from spot_forecast.config import Settings
from spot_forecast.forecast import Predictor
from spot_forecast.model import configure_threads
from spot_forecast.store import MODEL_FILE, ModelFormatError, check_bundle_folder, load_keras_model
from spot_forecast.windows import N_FEATURES

logger = logging.getLogger(__name__)


def resolve_model(model_ref):
    """Return the stored model of a ``bentoml.models.BentoModel``, naming the tag if missing."""
    try:
        return model_ref.resolve()
    except Exception as error:  # BentoML raises NotFound or a generic BentoMLException here
        raise ModelFormatError(
            f"model {model_ref.tag} is not in the BentoML model store at $BENTOML_HOME; "
            "train it with `python train.py` (or `make run`), or build the Bento with the model"
        ) from error


def load_predictor(model_ref, settings: Settings) -> Predictor:
    """Load the network of a bundle, compile it and run one warm-up batch.

    The warm-up traces the compiled function, so the first request does not pay for it.
    """
    started = time.perf_counter()
    configure_threads(settings.tf_threads)
    stored = resolve_model(model_ref)
    path = Path(stored.path)
    check_bundle_folder(path, str(stored.tag))
    metadata = stored.info.metadata
    lookback = int(metadata["lookback"])
    predictor = Predictor(load_keras_model(path / MODEL_FILE), lookback)

    warmup = np.zeros((1, lookback, N_FEATURES), dtype=np.float32)
    warmup[:, -1, 7] = 1.0  # one observed row at the last price
    for batch in (1, 8, 64):
        predictor(np.repeat(warmup, batch, axis=0))
    logger.info("loaded and warmed up %s in %.1f s", stored.tag, time.perf_counter() - started)
    return predictor
