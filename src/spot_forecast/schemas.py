"""Request and response bodies of the HTTP API.

Validation lives here once, so the service, the command line and the tests reject the same
inputs with the same messages. Every message names the field, the value and the accepted range.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

#: Upper bound of any horizon; a model may support less (checked against its metadata).
MAX_HORIZON = 168

#: Accepted prices in USD per instance-hour. 1e-6 is the smallest step of the six decimals AWS
#: quotes, and no Spot price comes near 1e5. The network moves a price by at most a factor of
#: exp(20) either way (``model.to_prices``), so every forecast of a price in this range is a
#: positive finite float.
MIN_PRICE = 1e-6
MAX_PRICE = 1e5

#: Accepted times. pandas stores times as int64 nanoseconds (1677-09-21 to 2262-04-11); the
#: bounds leave room for 4032 history hours before and 168 forecast hours after.
MIN_TIME = datetime(1679, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2262, 1, 1, tzinfo=UTC)


def as_utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_time(value: Any, handler, field: str) -> datetime | None:
    """Parse an ISO 8601 time with pydantic's ``handler``, naming ``field`` and the value if not.

    Numbers are rejected too: pydantic would read them as Unix seconds.
    """
    if isinstance(value, bool | int | float):
        raise ValueError(
            f"{field} is {value!r}, not an ISO 8601 time; send a time such as "
            "2024-05-10T06:00:00Z"
        )
    try:
        parsed = handler(value)
    except ValidationError as error:
        reason = error.errors(include_url=False)[0]["msg"]
        raise ValueError(
            f"{field} is {shorten(value)}, not an ISO 8601 time ({reason}); send a time such as "
            "2024-05-10T06:00:00Z"
        ) from None
    return parsed


def check_time(value: datetime, field: str) -> datetime:
    """Return ``value`` in UTC, or raise ValueError naming ``field`` if it is out of range."""
    value = as_utc(value)
    if not MIN_TIME <= value < MAX_TIME:
        raise ValueError(
            f"{field} is {value.isoformat()}; send a time from {MIN_TIME.date()} to "
            f"{MAX_TIME.date()} UTC"
        )
    return value


def check_horizon(value: Any) -> Any:
    """Reject a horizon that is not a whole number, naming the value; pydantic converts the rest.

    Without this, pydantic's lax mode reads ``true`` as 1 hour and ``"24"`` as 24 hours.
    """
    whole_float = isinstance(value, float) and value.is_integer()
    if isinstance(value, bool) or not (isinstance(value, int) or whole_float):
        raise ValueError(
            f"horizon is {shorten(value)}, not a whole number; send an integer from 1 to "
            f"{MAX_HORIZON} hours"
        )
    return value


def check_price(value: Any, field: str) -> float:
    """Return ``value`` as a finite float from MIN_PRICE to MAX_PRICE, or raise ValueError."""
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
    if not MIN_PRICE <= price <= MAX_PRICE:
        raise ValueError(
            f"{field} is {price}; send a price from {MIN_PRICE:g} to {MAX_PRICE:g} USD per hour"
        )
    return price


# Ranges for the OpenAPI document only. The validators below check the same ranges and name the
# value in their messages, so keep both equal.
PRICE_SCHEMA = {"type": "number", "minimum": MIN_PRICE, "maximum": MAX_PRICE}
HORIZON_SCHEMA = {"minimum": 1, "maximum": MAX_HORIZON}
EVENT_SCHEMA = {
    "type": "object",
    "required": ["ds", "y"],
    "additionalProperties": False,
    "properties": {"ds": {"type": "string", "format": "date-time"}, "y": PRICE_SCHEMA},
}
HISTORY_ITEM_SCHEMA = {"anyOf": [PRICE_SCHEMA, EVENT_SCHEMA]}


class PriceEvent(BaseModel):
    """One price change as AWS reports it: the price ``y`` holds from ``ds`` on."""

    model_config = ConfigDict(extra="forbid")

    ds: datetime = Field(description="Time of the change, ISO 8601; naive times are UTC.")
    # strict: lax mode would read true as 1.0 and "0.03" as 0.03.
    y: float = Field(strict=True, description="Price in USD per instance-hour from ds on.")

    @field_validator("ds", mode="wrap")
    @classmethod
    def _parse_ds(cls, value: Any, handler) -> datetime:
        return parse_time(value, handler, "ds")

    @field_validator("ds")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return check_time(value, "ds")


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
    history: list[Annotated[Any, WithJsonSchema(HISTORY_ITEM_SCHEMA)]] | None = Field(
        None,
        description=(
            "The client's own history: hourly prices oldest first, or price-change events "
            "[{'ds': ..., 'y': ...}] that the service puts on the hourly grid."
        ),
        json_schema_extra={"minItems": 1},
    )
    history_end: datetime | None = Field(
        None,
        description=(
            "UTC time of the last history value. Defaults to the current hour for hourly prices "
            "and to the hour at or after the last event for events."
        ),
    )
    horizon: int = Field(24, description="Hours to forecast, 1 to 168.",
                         json_schema_extra=HORIZON_SCHEMA)
    freq: str = Field("1h", description="Step of the forecast; the model supports only '1h'.")
    quantiles: list[float] | None = Field(
        None,
        description=(
            "Quantile levels to return, a subset of the model's levels (POST /model lists them); "
            "all levels when omitted. The median is always returned."
        ),
    )

    _horizon_type = field_validator("horizon", mode="before")(check_horizon)

    @field_validator("horizon")
    @classmethod
    def _horizon_range(cls, value: int) -> int:
        if not 1 <= value <= MAX_HORIZON:
            raise ValueError(f"horizon is {value}; it must be between 1 and {MAX_HORIZON} hours")
        return value

    @field_validator("series_id", "freq", mode="wrap")
    @classmethod
    def _name_the_value(cls, value: Any, handler, info) -> Any:
        # BentoML leaves the input out of its 400 body, so the message must carry the value.
        try:
            return handler(value)
        except ValidationError as error:
            reason = error.errors(include_url=False)[0]["msg"]
            raise ValueError(f"{info.field_name} is {shorten(value)}: {reason}") from None

    @field_validator("history_end", mode="wrap")
    @classmethod
    def _parse_end(cls, value: Any, handler) -> datetime | None:
        return parse_time(value, handler, "history_end")

    @field_validator("history_end")
    @classmethod
    def _end_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else check_time(value, "history_end")

    @field_validator("quantiles", mode="before")
    @classmethod
    def _quantile_levels(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list) or len(value) == 0:
            raise ValueError(
                f"quantiles is {shorten(value)}; send a non-empty list of levels such as "
                "[0.1, 0.9], or omit it for all levels"
            )
        for index, level in enumerate(value):
            number = isinstance(level, int | float) and not isinstance(level, bool)
            if not number or not 0 < level < 1:
                raise ValueError(
                    f"quantiles[{index}] is {shorten(level)}; send a level between 0 and 1, "
                    "such as 0.9"
                )
        return value

    @field_validator("history", mode="before")
    @classmethod
    def _history_type(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, list):
            raise ValueError(
                f"history is {shorten(value)}, not a valid array; send hourly prices oldest "
                "first, or price events [{'ds': ..., 'y': ...}]"
            )
        return value

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
                    raise ValueError(
                        f"history[{index}] is {shorten(item)}, not a price event ({problems})"
                    ) from None
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


class ForecastStep(TypedDict):
    """One forecast step: the median and the quantiles of the price at ``ds``, USD per hour.

    A TypedDict rather than a model: a response holds up to 168 steps per series, and plain
    dicts serialise without building one object per step.
    """

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

    data: list[Any] = Field(description="Hourly prices in USD per hour, oldest first.",
                            json_schema_extra={"minItems": 1, "items": PRICE_SCHEMA})
    horizon: int = Field(24, description="Hours to forecast, 1 to 168.",
                         json_schema_extra=HORIZON_SCHEMA)

    _horizon_type = field_validator("horizon", mode="before")(check_horizon)

    @field_validator("data", mode="before")
    @classmethod
    def _data_type(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError(
                f"data is {shorten(value)}, not a valid array; send hourly prices oldest first"
            )
        return value

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
