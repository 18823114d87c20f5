"""Loading the model for serving: threads, bundle, compiled function, batcher, warm-up."""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from spot_forecast.batching import AdaptiveBatcher
from spot_forecast.config import Settings
from spot_forecast.forecast import Predictor
from spot_forecast.model import configure_threads
from spot_forecast.store import MODEL_FILE, ModelFormatError, check_bundle_folder, load_keras_model
from spot_forecast.windows import N_FEATURES

logger = logging.getLogger(__name__)


def resolve_model(model_ref):
    """Return the stored model of a ``bentoml.models.BentoModel``, naming the tag if missing.

    A model that is already resolved (it has a ``path``) is returned as it is.
    """
    if hasattr(model_ref, "path") and hasattr(model_ref, "info"):
        return model_ref
    try:
        return model_ref.resolve()
    except Exception as error:  # BentoML raises NotFound or a generic BentoMLException here
        raise ModelFormatError(
            f"model {model_ref.tag} is not in the BentoML model store at $BENTOML_HOME; "
            "train it with `python train.py` (or `make run`), or build the Bento with the model"
        ) from error


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, or the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_worker(settings: Settings) -> int:
    """TensorFlow threads for one worker: the setting, or the usable cores split among workers."""
    if settings.tf_threads > 0:
        return settings.tf_threads
    return max(1, usable_cores() // settings.workers)


def load_app(model_ref, settings: Settings, *, on_batch: Callable[[int], None] | None = None):
    """Load the bundle and the network for one service worker.

    Returns the ``ForecastApp`` and the ``AdaptiveBatcher`` that runs the network. Sets the
    thread counts of OpenMP and TensorFlow first, because both read them only once.
    """
    from spot_forecast.serving import ForecastApp
    from spot_forecast.store import load_bundle

    threads = threads_per_worker(settings)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    stored = resolve_model(model_ref)
    predictor = load_predictor(stored, settings.model_copy(update={"tf_threads": threads}))
    bundle = load_bundle(stored, load_model=False)
    app = ForecastApp(bundle, max_history=settings.max_history)
    warm_up_forecast(app, predictor)
    batcher = AdaptiveBatcher(predictor, max_batch_size=settings.max_batch_size,
                              on_batch=on_batch)
    return app, batcher


def freeze_loaded_objects() -> None:
    """Move every object alive after loading out of the garbage collector's reach.

    TensorFlow, Keras, BentoML and the stored history leave about 460,000 long-lived objects
    tracked by the collector, and each full collection walked all of them (about 0.2 s) while
    requests waited. Objects created later are collected as usual.
    """
    gc.collect()
    gc.freeze()


def warm_up_forecast(app, predictor: Predictor) -> None:
    """Run one whole forecast (window, network, response) before the worker takes requests.

    ``load_predictor`` warms up the network alone. This forecast also pays the first-use costs of
    the window, the guard and the response models, so the first request is not slower than later
    ones. A bundle that cannot produce a forecast fails here, at start-up.
    """
    from spot_forecast.schemas import ForecastRequest

    request = ForecastRequest(history=[0.05] * app.bundle.lookback,
                              history_end="2024-05-10T06:00:00Z", horizon=app.bundle.horizon)
    item = app.prepare(request)
    app.respond(item, predictor(item.window[None])[0]).model_dump_json()


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
