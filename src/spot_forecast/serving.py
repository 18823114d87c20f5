"""Serving logic behind service.py: resolve histories, build windows, format responses.

``ForecastApp`` contains the model bundle's metadata, scaler and stored history, but not the Keras
network. service.py runs the network through its in-process adaptive batcher and passes the output
to ``respond``. Errors carry an HTTP status, so service.py maps them without inspecting them.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from spot_forecast.forecast import Forecast, Guard, assemble
from spot_forecast.grid import FrequencyError, Series, check_frequency, events_to_grid
from pydantic import ValidationError

from spot_forecast.schemas import (
    ForecastManyItem,
    ForecastManyResponse,
    ForecastRequest,
    ForecastResponse,
    ForecastStep,
    ModelInfo,
    Observation,
    PredictRequest,
    PredictResponse,
    RefreshResult,
    SeriesFilter,
    SeriesInfo,
)
from spot_forecast.series import region_of, split_series_id
from spot_forecast.store import Bundle
from spot_forecast.windows import history_window

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request that is well-formed JSON but cannot be served as asked (HTTP 400)."""

    status = 400


class UnsupportedRequest(RequestError):
    """A valid request that this model cannot serve, such as another frequency (HTTP 422)."""

    status = 422


class SeriesNotFound(LookupError):
    """The service holds no history for the requested series (HTTP 404)."""

    status = 404


@dataclass(frozen=True)
class PreparedForecast:
    """A request turned into one model input; ``window`` has shape ``(lookback, N_FEATURES)``."""

    unique_id: str
    prices: np.ndarray
    end: pd.Timestamp
    horizon: int
    window: np.ndarray
    #: Positions of the requested quantile levels in the model's levels; None returns all.
    levels: tuple[int, ...] | None = None


def current_hour() -> pd.Timestamp:
    """The start of the current UTC hour."""
    return pd.Timestamp(datetime.now(UTC)).floor("1h")


class ForecastApp:
    """Request handling for one loaded bundle."""

    def __init__(self, bundle: Bundle, *, max_history: int = 4032):
        self.bundle = bundle
        self.tag = bundle.tag
        self.max_history = max_history
        self.guard = Guard.from_metadata(bundle.metadata)
        self.step = pd.Timedelta(pd.tseries.frequencies.to_offset(bundle.freq))
        self.quantile_names = [format_level(q) for q in bundle.quantiles]
        self.history: dict[str, Series] = bundle.history
        self._stored_windows: dict[str, PreparedForecast] = {}
        # Spellings of the model's frequency already accepted ("1h", "60min"): parsing one with
        # pandas cost more than the rest of preparing a stored series.
        self._accepted_freqs: set[str] = set()

    # Requests to model inputs ---------------------------------------------------------------

    def prepare(self, request: ForecastRequest) -> PreparedForecast:
        """Validate a forecast request against the model and build its window."""
        if request.freq not in self._accepted_freqs:
            try:
                check_frequency(request.freq, self.bundle.freq)
            except FrequencyError as error:
                raise UnsupportedRequest(str(error)) from None
            self._accepted_freqs.add(request.freq)
        if request.horizon > self.bundle.horizon:
            raise RequestError(
                f"horizon is {request.horizon}; this model forecasts 1 to "
                f"{self.bundle.horizon} hours"
            )
        levels = self._quantile_positions(request.quantiles)

        if request.history is None:
            stored = self._prepared_stored(request.series_id or "", request.horizon)
            return replace(stored, levels=levels)

        unique_id = request.series_id or "client-history"
        if request.series_id is not None:
            try:
                # The id must be well formed even when it only labels a client's history.
                split_series_id(request.series_id)
            except ValueError as error:
                raise RequestError(str(error)) from None
        if request.has_events:
            prices, end = self._grid_events(request)
        else:
            prices = np.asarray(request.history, dtype=np.float64)
            end = pd.Timestamp(request.history_end) if request.history_end else current_hour()
            if end != end.floor(self.step):
                raise RequestError(
                    f"history_end is {end.isoformat()}, which is not on the hourly grid; "
                    f"send a time on the hour such as {end.floor(self.step).isoformat()}"
                )
        self._check_length(len(prices))
        return replace(self._prepared(unique_id, prices, end, request.horizon), levels=levels)

    def _quantile_positions(self, requested: list[float] | None) -> tuple[int, ...] | None:
        """Return the positions of the requested levels among the model's levels.

        Raises RequestError naming the unknown level and the accepted ones.
        """
        if requested is None:
            return None
        positions = set()
        for level in requested:
            matches = [index for index, known in enumerate(self.bundle.quantiles)
                       if math.isclose(level, known, rel_tol=0, abs_tol=1e-9)]
            if not matches:
                raise RequestError(
                    f"quantiles contains {level:g}, which this model does not forecast; send levels "
                    f"from {', '.join(self.quantile_names)}"
                )
            positions.add(matches[0])
        return tuple(sorted(positions))

    def prepare_predict(self, request: PredictRequest) -> PreparedForecast:
        """Build the window of an older ``/predict`` request, ending at the current hour."""
        if request.horizon > self.bundle.horizon:
            raise RequestError(
                f"horizon is {request.horizon}; this model forecasts 1 to "
                f"{self.bundle.horizon} hours"
            )
        self._check_length(len(request.data))
        prices = np.asarray(request.data, dtype=np.float64)
        return self._prepared("client-history", prices, current_hour(), request.horizon)

    def prepare_many(
        self, bodies: list[dict]
    ) -> list[PreparedForecast | tuple[int, str]]:
        """Validate and prepare each body alone; failures become ``(status, message)``."""
        prepared: list[PreparedForecast | tuple[int, str]] = []
        for index, body in enumerate(bodies):
            try:
                request = ForecastRequest.model_validate(body)
                prepared.append(self.prepare(request))
            except ValidationError as error:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                    for e in error.errors(include_url=False)
                )
                prepared.append((400, f"requests[{index}] is invalid: {problems}"))
            except (RequestError, SeriesNotFound) as error:
                prepared.append((error.status, f"requests[{index}]: {error}"))
        return prepared

    def _prepared_stored(self, unique_id: str, horizon: int) -> PreparedForecast:
        """Prepare a stored series; its window is built once and reused until a refresh."""
        cached = self._stored_windows.get(unique_id)
        if cached is None:
            stored = self.find_series(unique_id)
            cached = self._prepared(stored.unique_id, stored.values, stored.end, 1)
            self._stored_windows[unique_id] = cached
        return PreparedForecast(cached.unique_id, cached.prices, cached.end, horizon,
                                cached.window)

    def _prepared(
        self, unique_id: str, prices: np.ndarray, end: pd.Timestamp, horizon: int
    ) -> PreparedForecast:
        window = history_window(prices, end, self.bundle.lookback, self.bundle.scaler)
        return PreparedForecast(unique_id, prices, end, horizon, window)

    def _grid_events(self, request: ForecastRequest) -> tuple[np.ndarray, pd.Timestamp]:
        events = sorted(request.history, key=lambda e: e.ds)
        ds = pd.DatetimeIndex([e.ds for e in events])
        if ds.has_duplicates:
            duplicated = ds[ds.duplicated()][0]
            raise RequestError(
                f"history has two events at {duplicated.isoformat()}; send one price per time"
            )
        if request.history_end is not None:
            end = pd.Timestamp(request.history_end).floor(self.step)
        else:
            end = ds[-1].ceil(self.step)
        if end < ds[0]:
            raise RequestError(
                f"history_end {end.isoformat()} is before the first event {ds[0].isoformat()}"
            )
        # Check the length before building the grid: events years apart make millions of hours.
        self._check_length((end - ds[0].ceil(self.step)) // self.step + 1)
        _, prices = events_to_grid(ds, np.array([e.y for e in events]), end=end, step=self.step)
        if len(prices) == 0:
            raise RequestError(
                "history events span no full hour: the first event is at "
                f"{ds[0].isoformat()} and history_end at {end.isoformat()}; send a later "
                "history_end"
            )
        return prices, end

    def _check_length(self, length: int) -> None:
        if length > self.max_history:
            raise RequestError(
                f"history has {length} hourly values; send at most {self.max_history} "
                f"(the model reads the last {self.bundle.lookback})"
            )

    # Model outputs to responses -------------------------------------------------------------

    def forecast(self, item: PreparedForecast, scaled: np.ndarray) -> Forecast:
        """Turn the network's output ``(max_horizon, q)`` for ``item`` into prices."""
        return assemble(
            item.unique_id, np.asarray(scaled), last_price=float(item.prices[-1]), end=item.end,
            horizon=item.horizon, quantiles=self.bundle.quantiles, scaler=self.bundle.scaler,
            guard=self.guard, step=self.step,
        )

    def respond(self, item: PreparedForecast, scaled: np.ndarray) -> ForecastResponse:
        """Format the forecast of ``item`` as an API response."""
        result = self.forecast(item, scaled)
        check_finite_forecast(result)
        # Plain Python values and model_construct: the values were checked above, and building
        # validated models step by step cost more than the model call on large batches.
        median_index = result.quantiles.index(0.5)
        first = item.end.to_pydatetime()
        step = self.step.to_pytimedelta()
        rows = result.values.tolist()
        if item.levels is None:
            quantiles = [dict(zip(self.quantile_names, row)) for row in rows]
        else:
            names = [(self.quantile_names[index], index) for index in item.levels]
            quantiles = [{name: row[index] for name, index in names} for row in rows]
        steps = [
            ForecastStep(ds=first + h * step, median=row[median_index], quantiles=levels)
            for h, (row, levels) in enumerate(zip(rows, quantiles), start=1)
        ]
        return ForecastResponse.model_construct(
            unique_id=result.unique_id,
            model=self.tag,
            last_observed=Observation.model_construct(ds=first, y=result.last_y),
            steps=steps,
        )

    def respond_many(
        self, prepared: list[PreparedForecast | tuple[int, str]], scaled: np.ndarray
    ) -> ForecastManyResponse:
        """Answers of ``/forecast_many``; ``scaled`` holds one row per prepared item, in order."""
        results = []
        row = 0
        for index, item in enumerate(prepared):
            if isinstance(item, PreparedForecast):
                results.append(ForecastManyItem(index=index, status=200,
                                                forecast=self.respond(item, scaled[row])))
                row += 1
            else:
                status, message = item
                results.append(ForecastManyItem(index=index, status=status, error=message))
        return ForecastManyResponse(results=results)

    def respond_predict(self, item: PreparedForecast, scaled: np.ndarray) -> PredictResponse:
        """Format the forecast of ``item`` in the older ``/predict`` shape."""
        result = self.forecast(item, scaled)
        check_finite_forecast(result)
        levels = result.quantiles
        return PredictResponse(
            predictions=result.values[:, levels.index(0.5)].tolist(),
            lower=result.values[:, levels.index(0.1)].tolist(),
            upper=result.values[:, levels.index(0.9)].tolist(),
            model=self.tag,
        )

    # Refreshing the stored history ----------------------------------------------------------

    def refresh_from_archive(self, archive_path, *, hours: int) -> RefreshResult:
        """Replace the served history with the last ``hours`` of every series in an archive.

        Series in the archive replace stored series of the same id; series that only the model
        bundle holds are kept. The swap is one assignment, so requests in flight see either the
        old or the new history, never a mix.
        """
        from spot_forecast.archive import latest_by_region, read_archive
        from spot_forecast.grid import to_panel

        latest = latest_by_region(archive_path)
        if not latest:
            raise RequestError(f"the archive at {archive_path} holds no prices; run "
                               "`spot-forecast ingest` first")
        since = max(latest.values()) - hours * self.step
        table = read_archive(archive_path, since=since)
        panel = to_panel(table, freq=self.bundle.freq, end=max(latest.values()))
        refreshed = {s.unique_id: trim(s, hours, self.step) for s in panel}
        merged = {**self.history, **refreshed}
        self.history = merged
        self._stored_windows = {}
        logger.info("refreshed %d series from %s up to %s", len(refreshed), archive_path,
                    panel.end.isoformat())
        return RefreshResult(series=len(refreshed), total_series=len(merged),
                             end=panel.end.to_pydatetime())

    # Series and model information -----------------------------------------------------------

    def find_series(self, unique_id: str) -> Series:
        """Return the stored series, or raise SeriesNotFound naming close matches.

        An id that is not ``zone/type/product`` at all raises RequestError (400), as it does
        when it labels a client history.
        """
        if unique_id in self.history:
            return self.history[unique_id]
        try:
            split_series_id(unique_id)
        except ValueError as error:
            raise RequestError(str(error)) from None
        raise SeriesNotFound(self._not_found_message(unique_id))

    def _not_found_message(self, unique_id: str) -> str:
        zone, instance_type, product = split_series_id(unique_id)
        same_type = sorted(
            uid for uid in self.history
            if uid.startswith(f"{zone}/{instance_type}/")
        )
        if same_type:
            products = [split_series_id(uid)[2] for uid in same_type]
            return (
                f"series {unique_id!r} not found: there is no data for product {product!r} of "
                f"{instance_type} in {zone}; products with data: {', '.join(products)}"
            )
        close = difflib.get_close_matches(unique_id, list(self.history), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        return f"series {unique_id!r} not found{hint}; POST /series lists the known series"

    def list_series(self, query: SeriesFilter) -> list[SeriesInfo]:
        """Stored series that match every given filter, sorted by id."""
        result = []
        for unique_id in sorted(self.history):
            zone, instance_type, product = split_series_id(unique_id)
            if query.availability_zone and zone != query.availability_zone:
                continue
            if query.region and region_of(zone) != query.region:
                continue
            if query.instance_type and instance_type != query.instance_type:
                continue
            if query.product_description and product != query.product_description:
                continue
            series = self.history[unique_id]
            result.append(SeriesInfo(
                unique_id=unique_id, last_ds=series.end.to_pydatetime(),
                last_y=float(series.values[-1]), hours=len(series.values),
            ))
        return result

    def model_info(self) -> ModelInfo:
        """The model tag and its metadata, without the bulky empirical quantile table."""
        metadata = dict(self.bundle.metadata)
        guard = dict(metadata.get("guard") or {})
        guard.pop("empirical_log_quantiles", None)
        guard["note"] = (
            "at baseline_steps the service answers with the last value and the empirical "
            "quantiles of past price changes, because the network was less accurate there"
        )
        metadata["guard"] = guard
        return ModelInfo(tag=self.tag, metadata=metadata)


def trim(series: Series, hours: int, step: pd.Timedelta) -> Series:
    """The last ``hours`` grid points of a series."""
    if len(series.values) <= hours:
        return series
    dropped = len(series.values) - hours
    return Series(series.unique_id, series.start + dropped * step, series.values[-hours:])


def format_level(level: float) -> str:
    """Quantile key as it appears in responses: 0.1 -> '0.1', 0.05 -> '0.05'."""
    return f"{level:g}"


def check_finite_forecast(result: Forecast) -> None:
    """Raise RuntimeError if a forecast holds NaN, infinity or a non-positive price."""
    values = result.values
    if not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise RuntimeError(
            f"the forecast of {result.unique_id} holds non-finite or non-positive prices; "
            "this is a bug in the model or its bundle"
        )
    if not math.isfinite(result.last_y):
        raise RuntimeError(f"the last price of {result.unique_id} is not finite")
