"""BentoML service: the HTTP API of ec2-spot-forecast.

``SpotForecast`` validates requests, looks up stored histories, runs the Keras network and formats
answers. Concurrent forecasts share model calls through an in-process adaptive batcher, so a
request costs one HTTP round trip and batches grow with the load. The logic lives in
``spot_forecast.serving``; this file only wires it to BentoML.

Serve with ``bentoml serve service:SpotForecast``. The model tag comes from
``SPOT_FORECAST_MODEL_TAG`` (default ``spot_lstm:latest``); ``bentoml build`` packs that model and
records its exact version.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from spot_forecast.archive import ArchiveError
from spot_forecast.config import Settings
from spot_forecast.http_limits import BodySizeLimit
from spot_forecast.schemas import (
    ForecastManyRequest,
    ForecastManyResponse,
    ForecastRequest,
    ForecastResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    RefreshResult,
    SeriesFilter,
    SeriesInfo,
)
from spot_forecast.serving import PreparedForecast, RequestError, SeriesNotFound

logger = logging.getLogger("spot_forecast.service")

MODEL_TAG = os.environ.get("SPOT_FORECAST_MODEL_TAG", "spot_lstm:latest")
SETTINGS = Settings()

BATCH_SIZE = bentoml.metrics.Histogram(
    name="spot_forecast_adaptive_batch_size",
    documentation="Windows per model call of the in-process adaptive batcher",
    buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
)


@bentoml.service(
    name="spot_forecast",
    workers=SETTINGS.workers,
    traffic={"timeout": 60, "max_concurrency": 1024},
)
class SpotForecast:
    """Forecasts of EC2 Spot prices with quantiles, by series id or from a client's history."""

    bundle_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        from spot_forecast.network import load_app

        self.settings = Settings()
        self.app, self.batcher = load_app(
            type(self).bundle_ref, self.settings, on_batch=BATCH_SIZE.observe
        )
        logger.info("serving %s with %d series", self.app.tag, len(self.app.history))

    async def _forecast(self, items: list[PreparedForecast]):
        import numpy as np

        windows = np.stack([item.window for item in items])
        return await self.batcher.submit(windows)

    @bentoml.api(input_spec=ForecastRequest, route="/forecast")
    async def forecast(self, **fields: Any) -> ForecastResponse:
        """Quantile forecast of one series for the next ``horizon`` hours."""
        try:
            item = self.app.prepare(ForecastRequest.model_construct(**fields))
        except (RequestError, SeriesNotFound) as error:
            return error_response(error)
        scaled = await self._forecast([item])
        return self.app.respond(item, scaled[0])

    @bentoml.api(input_spec=ForecastManyRequest, route="/forecast_many")
    async def forecast_many(self, requests: list[dict[str, Any]]) -> ForecastManyResponse:
        """Forecasts of many series in one model call; invalid items get their own error."""
        prepared = self.app.prepare_many(requests)
        valid = [item for item in prepared if isinstance(item, PreparedForecast)]
        scaled = await self._forecast(valid) if valid else []
        return self.app.respond_many(prepared, scaled)

    @bentoml.api(input_spec=PredictRequest, route="/predict")
    async def predict(self, **fields: Any) -> PredictResponse:
        """Older contract: ``{"data": [hourly prices]}`` to median and 80 % interval."""
        try:
            item = self.app.prepare_predict(PredictRequest.model_construct(**fields))
        except RequestError as error:
            return error_response(error)
        scaled = await self._forecast([item])
        return self.app.respond_predict(item, scaled[0])

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


SpotForecast.add_asgi_middleware(BodySizeLimit, max_body_bytes=SETTINGS.max_body_bytes)


def error_response(error: RequestError | SeriesNotFound) -> JSONResponse:
    """A JSON error body ``{"error": message}`` with the error's HTTP status."""
    logger.info("rejected a request with %d: %s", error.status, error)
    return JSONResponse({"error": str(error)}, status_code=error.status)
