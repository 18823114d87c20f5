"""Save-then-load round trips through the BentoML model store (C10)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from spot_forecast.forecast import Predictor
from spot_forecast.store import ModelFormatError, load_bundle, save_bundle
from spot_forecast.windows import N_FEATURES, LogRatioScaler, history_window

LOOKBACK = 24
HORIZON = 6
QUANTILES = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def tiny_bundle():
    """A 2-unit LSTM fitted on 50 hourly points, saved through save_bundle."""
    import keras

    from spot_forecast.model import build_model, fit_model
    from spot_forecast.windows import cut_windows

    keras.utils.set_random_seed(7)
    prices = 0.031 * np.exp(np.cumsum(np.random.default_rng(7).normal(0, 0.01, 50)))
    scaler = LogRatioScaler(scale_=0.02)
    windows = cut_windows([prices], [0], [np.arange(LOOKBACK - 1, 50 - HORIZON)],
                          lookback=LOOKBACK, horizon=HORIZON, scaler=scaler)
    model = build_model(lookback=LOOKBACK, n_features=N_FEATURES, horizon=HORIZON,
                        quantiles=QUANTILES, units=2, seed=7)
    fit_model(model, windows.inputs, windows.targets, quantiles=QUANTILES, epochs=1,
              batch_size=8, verbose=0)

    history = pd.DataFrame({
        "unique_id": "us-east-1a/m5.large/Linux/UNIX",
        "ds": pd.date_range("2024-05-10", periods=50, freq="1h", tz="UTC"),
        "y": prices,
    })
    metadata = {"lookback": LOOKBACK, "horizon": HORIZON, "quantiles": list(QUANTILES),
                "freq": "1h"}
    tag = save_bundle("c10_tiny", model, scaler, metadata, history)
    window = history_window(np.full(LOOKBACK, 0.031), pd.Timestamp("2024-05-12T02:00Z"),
                            LOOKBACK, scaler)
    before = Predictor(model, LOOKBACK)(window[None])
    return tag, window, before


def test_artifact_is_keras_file(tiny_bundle):
    import bentoml

    tag, _, _ = tiny_bundle
    stored = bentoml.models.get(tag)
    assert (stored.path_of("model.keras")).endswith("model.keras")
    assert stored.info.metadata["libraries"]["keras"].startswith("3.")


def test_reload_in_process_identical(tiny_bundle):
    tag, window, before = tiny_bundle
    bundle = load_bundle(tag)
    after = Predictor(bundle.model, bundle.lookback)(window[None])
    # Same weights and the same compiled graph: float32 results may differ only by rounding.
    np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)


def test_reload_in_fresh_process(tiny_bundle, store_path):
    tag, window, before = tiny_bundle
    script = (
        "import json, sys, numpy as np\n"
        "from spot_forecast.store import load_bundle\n"
        "from spot_forecast.forecast import Predictor\n"
        f"bundle = load_bundle({tag!r})\n"
        "window = np.array(json.loads(sys.stdin.read()), dtype=np.float32)\n"
        "print(json.dumps(Predictor(bundle.model, bundle.lookback)(window[None]).tolist()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(window.tolist()),
        capture_output=True, text=True, timeout=180, check=True,
        env={**__import__("os").environ, "BENTOML_HOME": str(store_path)},
    )
    after = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)


def test_scaler_and_history_round_trip(tiny_bundle):
    tag, _, _ = tiny_bundle
    bundle = load_bundle(tag, load_model=False)
    assert bundle.model is None
    assert bundle.scaler.scale_ == 0.02
    series = bundle.history["us-east-1a/m5.large/Linux/UNIX"]
    assert len(series.values) == 50
    assert series.start == pd.Timestamp("2024-05-10T00:00Z")


def test_saved_model_folder_rejected():
    import bentoml
    import tensorflow as tf

    with bentoml.models.create("old_savedmodel", metadata={"lookback": 24}) as ref:
        tf.saved_model.save(tf.Module(), ref.path)
        tag = str(ref.tag)
    with pytest.raises(ModelFormatError, match="TensorFlow SavedModel folder"):
        load_bundle(tag)


def test_missing_model_names_tag():
    with pytest.raises(ModelFormatError, match="no_such_model:abc is not in the BentoML"):
        load_bundle("no_such_model:abc")


def test_network_start_fails_on_saved_model():
    import bentoml

    from spot_forecast.config import Settings
    from spot_forecast.network import load_predictor

    with pytest.raises(ModelFormatError, match="SavedModel"):
        load_predictor(bentoml.models.BentoModel("old_savedmodel:latest"), Settings())
