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
from spot_forecast.http_limits import (
    BodySizeLimit,
    FormBodyRejection,
    ReadableValidationErrors,
    quiet_client_errors,
)
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
from spot_forecast.decision_schemas import (
    CheapestWindowRequest,
    CheapestWindowResponse,
    HistoryRequest,
    HistoryResponse,
    JobCostRequest,
    JobCostResponse,
    PriceRiskRequest,
    PriceRiskResponse,
    RankRequest,
    RankResponse,
)
from spot_forecast.planning import Planner
from spot_forecast.ui import create_app as create_ui_app

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
        from spot_forecast.network import freeze_loaded_objects, load_app

        self.settings = Settings()
        self.app, self.batcher = load_app(
            type(self).bundle_ref, self.settings, on_batch=BATCH_SIZE.observe
        )
        self.planner = Planner(self.app)
        quiet_client_errors()
        freeze_loaded_objects()
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

    # Decisions: the logic is in spot_forecast.planning and spot_forecast.decisions.

    async def _plan(self, prepare: Any, request: Any) -> Any:
        """Validate a decision request, run all its forecasts in one model call, answer it."""
        try:
            pending = prepare(request)
        except (RequestError, SeriesNotFound) as error:
            return error_response(error)
        scaled = await self._forecast(pending.items) if pending.items else []
        return self.planner.complete(pending, scaled)

    @bentoml.api(input_spec=JobCostRequest, route="/job_cost")
    async def job_cost(self, **fields: Any) -> JobCostResponse:
        """Expected cost of one job and its 10th, 50th and 90th percentiles."""
        return await self._plan(self.planner.job_cost, JobCostRequest.model_construct(**fields))

    @bentoml.api(input_spec=CheapestWindowRequest, route="/cheapest_window")
    async def cheapest_window(self, **fields: Any) -> CheapestWindowResponse:
        """Start times and series ranked by the expected cost of a job."""
        request = CheapestWindowRequest.model_construct(**fields)
        return await self._plan(self.planner.cheapest_window, request)

    @bentoml.api(input_spec=RankRequest, route="/rank")
    async def rank(self, **fields: Any) -> RankResponse:
        """Zones, instance types and products ranked by expected cost over a window."""
        return await self._plan(self.planner.rank, RankRequest.model_construct(**fields))

    @bentoml.api(input_spec=PriceRiskRequest, route="/price_risk")
    async def price_risk(self, **fields: Any) -> PriceRiskResponse:
        """Probability that the price exceeds a threshold at any hour of a window."""
        return await self._plan(self.planner.price_risk, PriceRiskRequest.model_construct(**fields))

    @bentoml.api(input_spec=HistoryRequest, route="/history")
    def history(self, **fields: Any) -> HistoryResponse:
        """The last hours of a stored series, oldest first."""
        try:
            return self.planner.history(HistoryRequest.model_construct(**fields))
        except (RequestError, SeriesNotFound) as error:
            return error_response(error)


SpotForecast.add_asgi_middleware(BodySizeLimit, max_body_bytes=SETTINGS.max_body_bytes)
SpotForecast.add_asgi_middleware(FormBodyRejection)
SpotForecast.add_asgi_middleware(ReadableValidationErrors, models=(
    ForecastRequest, ForecastManyRequest, PredictRequest, SeriesFilter, JobCostRequest,
    CheapestWindowRequest, RankRequest, PriceRiskRequest, HistoryRequest,
))
# The web page at /ui, served by the same process; it calls the JSON API above.
SpotForecast.mount_asgi_app(create_ui_app(), path="/ui")


def error_response(error: RequestError | SeriesNotFound) -> JSONResponse:
    """A JSON error body ``{"error": message}`` with the error's HTTP status."""
    logger.info("rejected a request with %d: %s", error.status, error)
    return JSONResponse({"error": str(error)}, status_code=error.status)
