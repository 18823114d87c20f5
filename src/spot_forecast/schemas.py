"""Request and response bodies of the HTTP API.

Validation lives here once, so the service, the command line and the tests reject the same
inputs with the same messages. Every message names the field, the value and the accepted range.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

#: Upper bound of any horizon; a model may support less (checked against its metadata).
MAX_HORIZON = 168


def as_utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def check_price(value: Any, field: str) -> float:
    """Return ``value`` as a positive finite float, or raise ValueError naming ``field``."""
    if value is None:
        raise ValueError(f"{field} is null; send a positive price in USD per hour")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"{field} is {value!r}, not a number; send a positive price in USD per hour"
        )
    price = float(value)
    if not math.isfinite(price):
        raise ValueError(f"{field} is {price}, which is not finite; send a positive price")
    if price <= 0:
        raise ValueError(f"{field} is {price}; prices must be greater than 0")
    return price


class PriceEvent(BaseModel):
    """One price change as AWS reports it: the price ``y`` holds from ``ds`` on."""

    model_config = ConfigDict(extra="forbid")

    ds: datetime = Field(description="Time of the change, ISO 8601; naive times are UTC.")
    y: float = Field(description="Price in USD per instance-hour from ds on.")

    @field_validator("ds")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return as_utc(value)


class ForecastRequest(BaseModel):
    """Forecast one series, from its stored history or from a history the client sends."""

    # NOTE: no `examples` in these schemas: BentoML 1.4.40's OpenAPI builder rejects the key.
    model_config = ConfigDict(extra="forbid")

    series_id: str | None = Field(
        None,
        description=(
            "Series id '<availability_zone>/<instance_type>/<product_description>', "
            "for example 'eu-west-1a/m5.large/Linux/UNIX'."
        ),
    )
    history: list[Any] | None = Field(
        None,
        description=(
            "The client's own history: hourly prices oldest first, or price-change events "
            "[{'ds': ..., 'y': ...}] that the service puts on the hourly grid."
        ),
    )
    history_end: datetime | None = Field(
        None,
        description=(
            "UTC time of the last history value. Defaults to the current hour for hourly prices "
            "and to the hour at or after the last event for events."
        ),
    )
    horizon: int = Field(24, description="Hours to forecast, 1 to 168.")
    freq: str = Field("1h", description="Step of the forecast; the model supports only '1h'.")

    @field_validator("horizon")
    @classmethod
    def _horizon_range(cls, value: int) -> int:
        if not 1 <= value <= MAX_HORIZON:
            raise ValueError(f"horizon is {value}; it must be between 1 and {MAX_HORIZON} hours")
        return value

    @field_validator("history_end")
    @classmethod
    def _end_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    @field_validator("history")
    @classmethod
    def _history_values(cls, value: list[Any] | None) -> list[Any] | None:
        if value is None:
            return None
        if len(value) == 0:
            raise ValueError("history is empty; send at least one price or omit the field")
        if all(isinstance(item, dict) for item in value):
            events = []
            for index, item in enumerate(value):
                try:
                    event = PriceEvent.model_validate(item)
                except ValidationError as error:
                    problems = "; ".join(
                        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
                    )
                    raise ValueError(f"history[{index}] is not a price event ({problems})") from None
                check_price(event.y, f"history[{index}].y")
                events.append(event)
            return events
        return [check_price(item, f"history[{index}]") for index, item in enumerate(value)]

    @model_validator(mode="after")
    def _series_or_history(self) -> ForecastRequest:
        if self.series_id is None and self.history is None:
            raise ValueError(
                "send a series_id (see POST /series), a history of prices, or both"
            )
        return self

    @property
    def has_events(self) -> bool:
        return bool(self.history) and isinstance(self.history[0], PriceEvent)


class Observation(BaseModel):
    """The last observed price of a series."""

    ds: datetime
    y: float


class ForecastStep(BaseModel):
    """One forecast step: the median and the quantiles of the price at ``ds``, USD per hour."""

    ds: datetime
    median: float
    quantiles: dict[str, float]


class ForecastResponse(BaseModel):
    """A quantile forecast of one series."""

    unique_id: str
    model: str = Field(description="Tag of the model in the BentoML model store.")
    last_observed: Observation
    steps: list[ForecastStep]


class ForecastManyRequest(BaseModel):
    """Many forecast requests in one body; each item has the fields of ``/forecast``.

    Items are validated one by one, so an invalid item gets its own error and the others are
    still answered.
    """

    model_config = ConfigDict(extra="forbid")

    requests: list[dict[str, Any]] = Field(description="Bodies of /forecast, answered in order.")

    @field_validator("requests")
    @classmethod
    def _not_empty(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(value) == 0:
            raise ValueError("requests is empty; send at least one forecast request")
        return value


class ForecastManyItem(BaseModel):
    """The answer to one item of ``/forecast_many``: a forecast, or an error with its status."""

    index: int
    status: int = Field(description="HTTP status this item would get alone: 200, 400, 404, 422.")
    forecast: ForecastResponse | None = None
    error: str | None = None


class ForecastManyResponse(BaseModel):
    """Answers in the order of the requests."""

    results: list[ForecastManyItem]


class PredictRequest(BaseModel):
    """Older contract: hourly prices oldest first, the last one observed at the current hour."""

    model_config = ConfigDict(extra="forbid")

    data: list[Any] = Field(description="Hourly prices in USD per hour, oldest first.")
    horizon: int = Field(24, description="Hours to forecast, 1 to 168.")

    @field_validator("data")
    @classmethod
    def _prices(cls, value: list[Any]) -> list[float]:
        if len(value) == 0:
            raise ValueError("data is empty; send at least one price")
        return [check_price(item, f"data[{index}]") for index, item in enumerate(value)]

    _horizon_range = field_validator("horizon")(ForecastRequest._horizon_range.__func__)


class PredictResponse(BaseModel):
    """Median forecast and 80 % interval for the next ``horizon`` hours."""

    predictions: list[float]
    lower: list[float] = Field(description="0.1 quantile of each step.")
    upper: list[float] = Field(description="0.9 quantile of each step.")
    model: str


class SeriesFilter(BaseModel):
    """Optional filters of the series list; all given filters must match."""

    model_config = ConfigDict(extra="forbid")

    region: str | None = None
    availability_zone: str | None = None
    instance_type: str | None = None
    product_description: str | None = None


class SeriesInfo(BaseModel):
    """A series the service holds history for."""

    unique_id: str
    last_ds: datetime
    last_y: float
    hours: int = Field(description="Hours of stored history.")


class ModelInfo(BaseModel):
    """The served model and its metadata."""

    tag: str
    metadata: dict[str, Any]


class RefreshResult(BaseModel):
    """Outcome of reloading the served history from the archive."""

    series: int = Field(description="Series read from the archive.")
    total_series: int = Field(description="Series served after the refresh.")
    end: datetime = Field(description="Last grid time of the refreshed history.")
