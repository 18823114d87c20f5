"""Request and response bodies of the decision endpoints: job cost, cheapest window, rank, risk.

Same rules as ``schemas``: unknown fields are rejected, and every validation message names the
field, the value and the accepted range. Times are UTC; naive times are taken to be UTC. Costs are
USD per instance for the whole job (price in USD per instance-hour times hours).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from spot_forecast.schemas import (
    MAX_HORIZON,
    ForecastRequest,
    Observation,
    check_price,
    check_time,
)

#: Most candidate series in one ``/cheapest_window`` request.
MAX_CANDIDATES = 100
#: Most instance types, zones or products in one ``/rank`` request, each.
MAX_RANK_KEYS = 50
#: Most hours of stored history ``/history`` returns.
MAX_HISTORY_HOURS = 4032


def check_hours(value: float, field: str, *, upper: float = MAX_HORIZON) -> float:
    """Return ``value`` if it is a finite number of hours in ``(0, upper]``, else raise."""
    if not math.isfinite(value) or not 0 < value <= upper:
        raise ValueError(f"{field} is {value}; it must be greater than 0 and at most {upper:g} hours")
    return value


def optional_utc(value: datetime | None, info: ValidationInfo) -> datetime | None:
    """Return ``value`` in UTC, or raise naming the field if it is outside the supported range."""
    return None if value is None else check_time(value, info.field_name)


def check_saving_percent(value: float | None) -> float | None:
    """Return ``value`` if it is None or a percentage from 0 to 100, else raise."""
    if value is not None and (not math.isfinite(value) or not 0 <= value <= 100):
        raise ValueError(f"min_saving_percent is {value}; it must be between 0 and 100")
    return value


MIN_SAVING_DESCRIPTION = (
    "Expected saving, in percent of the cost of the candidate cheapest right now, below which "
    "the recommendation stays with that candidate. Defaults to the margins fitted on the "
    "decision backtest: one to start later on the candidate cheapest now, one to run on another "
    "candidate (100 where no margin beat cheapest right now there). A value sent here applies "
    "to both; 0 recommends the lowest expected cost however small the saving."
)


class SeriesSource(BaseModel):
    """A series to plan on: a stored series by id, or the client's own history.

    The fields mean what they mean in ``POST /forecast``.
    """

    # NOTE: no `examples` in these schemas: BentoML 1.4.40's OpenAPI builder rejects the key.
    model_config = ConfigDict(extra="forbid")

    series_id: str | None = Field(
        None,
        description="Series id '<availability_zone>/<instance_type>/<product_description>'.",
    )
    history: list[Any] | None = Field(
        None,
        description="Hourly prices oldest first, or price-change events [{'ds': ..., 'y': ...}].",
    )
    history_end: datetime | None = Field(
        None, description="UTC time of the last history value, as in POST /forecast."
    )
    freq: str = Field("1h", description="Step of the forecast; the model supports only '1h'.")

    _history_values = field_validator("history")(ForecastRequest._history_values.__func__)
    _end_utc = field_validator("history_end")(ForecastRequest._end_utc.__func__)

    @model_validator(mode="after")
    def _series_or_history(self) -> SeriesSource:
        if self.series_id is None and self.history is None:
            raise ValueError("send a series_id (see POST /series), a history of prices, or both")
        return self

    def forecast_request(self, horizon: int) -> ForecastRequest:
        """Build the forecast request of this series for ``horizon`` hours, without revalidating."""
        return ForecastRequest.model_construct(
            series_id=self.series_id, history=self.history, history_end=self.history_end,
            horizon=horizon, freq=self.freq,
        )


class JobCostRequest(SeriesSource):
    """Cost of one job on one series: when it starts and how long it runs."""

    start: datetime | None = Field(
        None,
        description="Start of the job, UTC. Defaults to the time of the last observed price.",
    )
    duration_hours: float = Field(description="Run time in hours, greater than 0, at most 168.")

    _start_utc = field_validator("start")(optional_utc)

    @field_validator("duration_hours")
    @classmethod
    def _duration(cls, value: float) -> float:
        return check_hours(value, "duration_hours")


class CostPercentiles(BaseModel):
    """Expected cost and its 10th, 50th and 90th percentiles, USD per instance."""

    expected: float
    p10: float
    p50: float
    p90: float


class JobCostResponse(BaseModel):
    """The cost distribution of one job."""

    unique_id: str
    model: str = Field(description="Tag of the model in the BentoML model store.")
    last_observed: Observation
    start: datetime
    end: datetime
    duration_hours: float
    cost: CostPercentiles
    method: str = Field(description="How the percentiles of the sum were computed.")


class CheapestWindowRequest(BaseModel):
    """Find the start time and series where a job of ``duration_hours`` costs least."""

    model_config = ConfigDict(extra="forbid")

    candidates: list[SeriesSource] = Field(
        description=f"Series to choose from, 1 to {MAX_CANDIDATES}, each an object with a "
        "series_id or a history and history_end, as in POST /job_cost."
    )
    duration_hours: float = Field(description="Run time in hours, greater than 0, at most 168.")
    earliest_start: datetime | None = Field(
        None,
        description="Earliest start, UTC. Defaults to the latest last observation among the "
        "candidates ('now').",
    )
    deadline: datetime | None = Field(
        None, description="Time by which the job must have finished, UTC."
    )
    deadline_hours: float | None = Field(
        None,
        description="The deadline as hours after earliest_start; send this or deadline.",
    )
    limit: int | None = Field(
        None, description="Return only the best `limit` windows; all when omitted."
    )
    min_saving_percent: float | None = Field(None, description=MIN_SAVING_DESCRIPTION)

    _start_utc = field_validator("earliest_start", "deadline")(optional_utc)
    _saving = field_validator("min_saving_percent")(check_saving_percent)

    @field_validator("candidates")
    @classmethod
    def _candidate_count(cls, value: list[SeriesSource]) -> list[SeriesSource]:
        if not 1 <= len(value) <= MAX_CANDIDATES:
            raise ValueError(
                f"candidates has {len(value)} series; send between 1 and {MAX_CANDIDATES}"
            )
        return value

    @field_validator("duration_hours")
    @classmethod
    def _duration(cls, value: float) -> float:
        return check_hours(value, "duration_hours")

    @field_validator("deadline_hours")
    @classmethod
    def _deadline_hours(cls, value: float | None) -> float | None:
        return None if value is None else check_hours(value, "deadline_hours", upper=MAX_HORIZON + 1)

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"limit is {value}; it must be at least 1, or omitted for all")
        return value

    @model_validator(mode="after")
    def _one_deadline(self) -> CheapestWindowRequest:
        if (self.deadline is None) == (self.deadline_hours is None):
            raise ValueError(
                "send exactly one of deadline (a UTC time) and deadline_hours (hours after "
                "earliest_start)"
            )
        if self.deadline_hours is not None and self.deadline_hours < self.duration_hours:
            raise ValueError(
                f"deadline_hours is {self.deadline_hours:g}, shorter than duration_hours "
                f"{self.duration_hours:g}; the job cannot finish in time"
            )
        return self


class WindowOption(BaseModel):
    """One candidate start: where, when, what it costs and what it saves against starting now."""

    rank: int = Field(description="1 for the lowest expected cost.")
    unique_id: str
    start: datetime
    end: datetime
    cost: CostPercentiles
    saving: float = Field(description="Expected cost of the baseline minus this one's, USD.")
    saving_percent: float = Field(description="saving as a percentage of the baseline's cost.")


class Baseline(BaseModel):
    """Starting at the earliest start on the candidate that is cheapest right now."""

    unique_id: str
    start: datetime
    last_price: float = Field(description="The last observed price of that series, USD/h.")
    cost: CostPercentiles


class CheapestWindowResponse(BaseModel):
    """Candidate starts ranked by expected cost."""

    model: str
    duration_hours: float
    earliest_start: datetime
    deadline: datetime
    baseline: Baseline
    recommended: WindowOption = Field(
        description="The window with the lowest expected cost among those that clear their "
        "margin: min_saving_percent for a later start on the baseline's series, "
        "other_series_min_saving_percent for another series. The baseline when none does."
    )
    min_saving_percent: float = Field(
        description="Expected saving, in percent of the baseline's cost, that a later start on "
        "the baseline's series needs to be recommended."
    )
    other_series_min_saving_percent: float = Field(
        description="Expected saving, in percent of the baseline's cost, that a window on "
        "another series needs to be recommended."
    )
    windows: list[WindowOption]
    method: str


class RankRequest(BaseModel):
    """Rank placements (zone, instance type, product) by expected cost over a time window."""

    model_config = ConfigDict(extra="forbid")

    instance_types: list[str] = Field(description="Instance types, e.g. ['m5.large', 'm5a.large'].")
    zones: list[str] | None = Field(
        None, description="Availability zones, e.g. ['eu-west-1a']; send this or region."
    )
    region: str | None = Field(
        None, description="A region, meaning every zone of it that the service has data for."
    )
    product_descriptions: list[str] = Field(
        ["Linux/UNIX"], description="Products, exact strings, e.g. ['Linux/UNIX', 'Windows']."
    )
    start: datetime | None = Field(
        None,
        description="Start of the window, UTC. Defaults to each series' last observation.",
    )
    hours: float = Field(description="Length of the window in hours, greater than 0, at most 168.")
    min_saving_percent: float | None = Field(None, description=MIN_SAVING_DESCRIPTION)

    _start_utc = field_validator("start")(optional_utc)
    _saving = field_validator("min_saving_percent")(check_saving_percent)

    @field_validator("instance_types", "zones", "product_descriptions")
    @classmethod
    def _key_list(cls, value: list[str] | None, info) -> list[str] | None:
        if value is None:
            return None
        if not 1 <= len(value) <= MAX_RANK_KEYS:
            raise ValueError(
                f"{info.field_name} has {len(value)} entries; send between 1 and {MAX_RANK_KEYS}"
            )
        for index, item in enumerate(value):
            if not item.strip() or ("/" in item and info.field_name != "product_descriptions"):
                raise ValueError(f"{info.field_name}[{index}] is {item!r}, which is not a valid name")
        return list(dict.fromkeys(value))

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: float) -> float:
        return check_hours(value, "hours")

    @model_validator(mode="after")
    def _zones_or_region(self) -> RankRequest:
        if (self.zones is None) == (self.region is None):
            raise ValueError("send exactly one of zones (a list) and region")
        return self


class RankedPlacement(BaseModel):
    """One placement with its cost over the window."""

    rank: int = Field(description="1 for the lowest expected cost.")
    unique_id: str
    availability_zone: str
    instance_type: str
    product_description: str
    last_price: float = Field(description="The last observed price, USD/h.")
    start: datetime
    end: datetime
    cost: CostPercentiles


class Unavailable(BaseModel):
    """A candidate that could not be ranked, and why."""

    unique_id: str
    reason: str


class RankResponse(BaseModel):
    """Placements ranked by expected cost, and the candidates left out with reasons."""

    model: str
    hours: float
    cheapest_now: str | None = Field(
        description="The ranked candidate with the lowest last observed price."
    )
    recommended: RankedPlacement | None = Field(
        description="Rank 1 if it saves at least min_saving_percent against cheapest_now, else "
        "cheapest_now; null when nothing could be ranked."
    )
    min_saving_percent: float
    ranked: list[RankedPlacement]
    unavailable: list[Unavailable]
    method: str


class PriceRiskRequest(SeriesSource):
    """Probability that a series' price exceeds a threshold at any hour of a window."""

    threshold: float | None = Field(
        None, description="Price in USD per instance-hour; send this or rise_percent."
    )
    rise_percent: float | None = Field(
        None,
        description="Threshold as a rise over the last observed price in percent, e.g. 10; "
        "greater than -100 and at most 1000.",
    )
    start: datetime | None = Field(
        None, description="Start of the window, UTC. Defaults to the last observation."
    )
    hours: float = Field(description="Length of the window in hours, greater than 0, at most 168.")

    _start_utc = field_validator("start")(optional_utc)

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> float | None:
        return None if value is None else check_price(value, "threshold")

    @field_validator("rise_percent")
    @classmethod
    def _rise(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or not -100 < value <= 1000):
            raise ValueError(
                f"rise_percent is {value}; it must be greater than -100 and at most 1000"
            )
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: float) -> float:
        return check_hours(value, "hours")

    @model_validator(mode="after")
    def _one_threshold(self) -> PriceRiskRequest:
        if (self.threshold is None) == (self.rise_percent is None):
            raise ValueError("send exactly one of threshold (USD per hour) and rise_percent")
        return self


class HourlyProbability(BaseModel):
    """Probability that the price in force at ``ds`` exceeds the threshold."""

    ds: datetime
    probability: float


class PriceRiskResponse(BaseModel):
    """Probability that the price exceeds the threshold at any hour of the window."""

    unique_id: str
    model: str
    last_observed: Observation
    threshold: float = Field(description="The threshold price, USD per instance-hour.")
    start: datetime
    end: datetime
    probability: float = Field(description="Probability of exceeding at any hour, 0 to 1.")
    hourly: list[HourlyProbability] = Field(
        description="Probability of exceeding at each grid hour of the window on its own."
    )
    method: str


class HistoryRequest(BaseModel):
    """The last hours of a stored series."""

    model_config = ConfigDict(extra="forbid")

    series_id: str = Field(description="Series id, see POST /series.")
    hours: int = Field(
        168,
        description=f"Hours of history, 1 to {MAX_HISTORY_HOURS}. The response contains at most "
        "the hours the service stores per series (history_hours, 336 by default), fewer for a "
        "series that began later.",
    )

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: int) -> int:
        if not 1 <= value <= MAX_HISTORY_HOURS:
            raise ValueError(f"hours is {value}; it must be between 1 and {MAX_HISTORY_HOURS}")
        return value


class HistoryResponse(BaseModel):
    """Hourly prices of a stored series, oldest first."""

    unique_id: str
    points: list[Observation]
