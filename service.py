"""BentoML service: the HTTP API of ec2-spot-forecast.

Two services run as separate processes under ``bentoml serve``. ``SpotForecast`` is the public
API: it validates requests, looks up stored histories and formats answers. ``ForecastNetwork``
holds the Keras network and exposes one batchable method, so concurrent forecasts reach it as one
model call through BentoML's adaptive batching. The logic lives in ``spot_forecast.serving``.

Serve with ``bentoml serve`` (the model tag comes from ``SPOT_FORECAST_MODEL_TAG``, by default
``spot_lstm:latest``, resolved to a fixed version when ``bentoml build`` packs it).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import aiohttp
import bentoml
import numpy as np
from starlette.responses import JSONResponse

from spot_forecast.archive import ArchiveError
from spot_forecast.config import Settings
from spot_forecast.schemas import (
    ForecastRequest,
    ForecastResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    RefreshResult,
    SeriesFilter,
    SeriesInfo,
)
from spot_forecast.serving import ForecastApp, PreparedForecast, RequestError, SeriesNotFound

logger = logging.getLogger("spot_forecast.service")

MODEL_TAG = os.environ.get("SPOT_FORECAST_MODEL_TAG", "spot_lstm:latest")
#: Attempts of one call to the network service; calls are idempotent, so a dropped
#: connection between the two processes is retried instead of failing the request.
NETWORK_ATTEMPTS = 3


@bentoml.service(
    name="spot_forecast_network",
    workers=1,
    traffic={"timeout": 60, "max_concurrency": 2048},
    # BentoML 1.4.40's client to a dependency replaces its HTTP session every `max_requests`
    # calls (default 100) and closes the old one with calls still in flight, which fail with
    # "Server disconnected". Keep one session; the retry below covers a replacement after max_age.
    runner_connection={"max_requests": 1_000_000_000, "max_age": 86_400.0},
)
class ForecastNetwork:
    """The Keras network behind one batchable method."""

    bundle_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        from spot_forecast.network import load_predictor

        self.predictor = load_predictor(type(self).bundle_ref, Settings())

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=2048, max_latency_ms=10_000)
    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """Scaled log-ratio quantiles ``(batch, horizon, q)`` of windows ``(batch, lookback, f)``."""
        return self.predictor(windows)


@bentoml.service(
    name="spot_forecast",
    workers=1,
    traffic={"timeout": 60, "max_concurrency": 1024},
)
class SpotForecast:
    """Forecasts of EC2 Spot prices with quantiles, by series id or from a client's history."""

    bundle_ref = bentoml.models.BentoModel(MODEL_TAG)
    network = bentoml.depends(ForecastNetwork)

    def __init__(self) -> None:
        from spot_forecast.network import resolve_model
        from spot_forecast.store import load_bundle

        settings = Settings()
        self.settings = settings
        self.app = ForecastApp(
            load_bundle(resolve_model(type(self).bundle_ref), load_model=False), max_history=settings.max_history
        )
        logger.info("serving %s with %d series", self.app.tag, len(self.app.history))

    async def _run_network(self, windows: np.ndarray) -> np.ndarray:
        for attempt in range(1, NETWORK_ATTEMPTS + 1):
            try:
                return await self.network.to_async.predict_windows(windows)
            except (aiohttp.ClientConnectionError, ConnectionError) as error:
                if attempt == NETWORK_ATTEMPTS:
                    raise
                logger.warning("network call failed (%s), attempt %d of %d; retrying",
                               error, attempt, NETWORK_ATTEMPTS)
                await asyncio.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    async def _forecast_one(self, item: PreparedForecast) -> np.ndarray:
        scaled = await self._run_network(item.window[None])
        return scaled[0]

    @bentoml.api(input_spec=ForecastRequest, route="/forecast")
    async def forecast(self, **fields: Any) -> ForecastResponse:
        """Quantile forecast of one series for the next ``horizon`` hours."""
        request = ForecastRequest.model_construct(**fields)
        try:
            item = self.app.prepare(request)
        except (RequestError, SeriesNotFound) as error:
            return error_response(error)
        return self.app.respond(item, await self._forecast_one(item))

    @bentoml.api(input_spec=PredictRequest, route="/predict")
    async def predict(self, **fields: Any) -> PredictResponse:
        """Older contract: ``{"data": [hourly prices]}`` to median and 80 % interval."""
        request = PredictRequest.model_construct(**fields)
        try:
            item = self.app.prepare_predict(request)
        except RequestError as error:
            return error_response(error)
        return self.app.respond_predict(item, await self._forecast_one(item))

    @bentoml.api(input_spec=SeriesFilter, route="/series")
    def series(self, **fields: Any) -> list[SeriesInfo]:
        """Series the service holds history for, with their last price and time."""
        return self.app.list_series(SeriesFilter.model_construct(**fields))

    @bentoml.api(route="/refresh")
    def refresh(self) -> RefreshResult:
        """Reload the served history from the archive at SPOT_FORECAST_ARCHIVE_PATH."""
        try:
            return self.app.refresh_from_archive(
                self.settings.archive_path, hours=self.settings.history_hours
            )
        except (RequestError, ArchiveError) as error:
            return error_response(RequestError(str(error)))

    @bentoml.api(route="/model")
    def model(self) -> ModelInfo:
        """The served model's tag and metadata."""
        return self.app.model_info()


def error_response(error: RequestError | SeriesNotFound) -> JSONResponse:
    """A JSON error body ``{"error": message}`` with the error's HTTP status."""
    logger.info("rejected a request with %d: %s", error.status, error)
    return JSONResponse({"error": str(error)}, status_code=error.status)
