"""Shared fixtures: a private BentoML model store and a small model trained on real data.

BENTOML_HOME is set before anything imports BentoML, because BentoML reads it once at import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_STORE = tempfile.mkdtemp(prefix="spot-forecast-tests-")
os.environ["BENTOML_HOME"] = _STORE
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DATA = ROOT / "data" / "eu-west-1_2022-03-13T17_00_58.xz"
#: Instance types of the small real training set: a few families and sizes, all zones.
SAMPLE_TYPES = ("m5.large", "c5.xlarge", "r5.2xlarge", "t3.medium", "m5.4xlarge")


@pytest.fixture(scope="session")
def store_path() -> Path:
    return Path(_STORE)


@pytest.fixture(scope="session")
def bundled_events() -> pd.DataFrame:
    """Real eu-west-1 events of a few instance types from the bundled file."""
    from spot_forecast.ingest import read_prices

    table, _ = read_prices([BUNDLED_DATA])
    return table[table["instance_type"].isin(SAMPLE_TYPES)].reset_index(drop=True)


@pytest.fixture(scope="session")
def small_model_tag(bundled_events: pd.DataFrame) -> str:
    """A tiny model (8 units, 1 epoch) trained on real data and saved as ``spot_lstm``."""
    from spot_forecast.config import Settings
    from spot_forecast.training import train

    settings = Settings(
        lookback=48, horizon=168, epochs=1, lstm_units=8, max_train_windows=512,
        batch_size=128, tf_threads=2,
    )
    result = train(settings, events=bundled_events, save=True, verbose=0)
    assert result.tag is not None
    return result.tag


@pytest.fixture(scope="session")
def service_module(small_model_tag):
    """The service module, imported once the test store holds ``spot_lstm``."""
    import service

    return service


@pytest.fixture(scope="session")
def client(service_module):
    """One ASGI test client for the whole run.

    BentoML registers its Prometheus metrics when the ASGI app starts, and a second app in the
    same process fails with DuplicateTimeseries, so every test module shares this client.
    """
    from starlette.testclient import TestClient

    with TestClient(service_module.SpotForecast.to_asgi()) as test_client:
        yield test_client
