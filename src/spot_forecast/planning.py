"""Request handling of the decision endpoints: job cost, cheapest window, rank and price risk.

Each request is handled in two steps, so that service.py can run every forecast a request needs
in one network call. ``Planner.<endpoint>(request)`` validates the request against the stored
histories and the model, and returns a ``Pending`` with the prepared forecasts. After the network
ran, ``Planner.complete(pending, scaled)`` turns its output into prices and builds the response
with ``decisions``. Errors are ``RequestError`` (400) or ``SeriesNotFound`` (404), as in
``serving``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from spot_forecast.decision_schemas import (
    Baseline,
    CheapestWindowRequest,
    CheapestWindowResponse,
    CostPercentiles,
    HistoryRequest,
    HistoryResponse,
    HourlyProbability,
    JobCostRequest,
    JobCostResponse,
    PriceRiskRequest,
    PriceRiskResponse,
    RankedPlacement,
    RankRequest,
    RankResponse,
    SeriesSource,
    Unavailable,
    WindowOption,
)
from spot_forecast.decisions import (
    HOUR,
    CostSummary,
    PathModel,
    exceedance_probability,
    job_cost,
    start_times,
    window_costs,
)
from spot_forecast.forecast import Forecast
from spot_forecast.schemas import Observation
from spot_forecast.series import region_of, series_id, split_series_id
from spot_forecast.serving import (
    ForecastApp,
    PreparedForecast,
    RequestError,
    SeriesNotFound,
    check_finite_forecast,
)

#: Most series one ``/rank`` request may expand to (zones x instance types x products).
MAX_RANK_SERIES = 1000
#: Expected costs closer than this share of a reference cost rank as equal, so that ties go to
#: the earlier start or the series cheaper now. The network's float32 outputs carry about seven
#: significant digits, so smaller differences are rounding, not forecast.
RANK_RESOLUTION = 1e-6


def cost_rank(expected: float, reference: float) -> int:
    """Return ``expected`` in steps of ``RANK_RESOLUTION`` times ``reference``, for sorting."""
    return round(expected / (max(reference, 1e-12) * RANK_RESOLUTION))


@dataclass
class Pending:
    """A validated request waiting for its forecasts; ``finish`` builds the response."""

    items: list[PreparedForecast]
    finish: Callable[[list[Forecast]], Any]

    def windows(self) -> np.ndarray:
        """Model inputs of all items, shape ``(len(items), lookback, N_FEATURES)``."""
        return np.stack([item.window for item in self.items])


def cost_model(summary: CostSummary) -> CostPercentiles:
    return CostPercentiles(expected=summary.expected, p10=summary.p10, p50=summary.p50,
                           p90=summary.p90)


def observation(forecast: Forecast) -> Observation:
    return Observation(ds=forecast.last_ds.to_pydatetime(), y=forecast.last_y)


def recommend_window(ranked: Sequence[WindowOption], baseline_id: str, earliest: pd.Timestamp,
                     *, later_start: float, other_series: float) -> WindowOption:
    """Return the first of ``ranked`` (by expected cost) whose saving clears its margin.

    A later start on the baseline's series needs ``later_start``, a window on another series
    ``other_series``. The baseline (its series at ``earliest``) saves 0 % and always qualifies.
    """
    for window in ranked:
        on_baseline_series = window.unique_id == baseline_id
        if on_baseline_series and pd.Timestamp(window.start) == earliest:
            return window
        if window.saving_percent >= (later_start if on_baseline_series else other_series):
            return window
    raise ValueError(f"the baseline {baseline_id} at {earliest.isoformat()} is not ranked")


class Planner:
    """Decision requests for one ``ForecastApp``; the app's history may be refreshed at any time."""

    def __init__(self, app: ForecastApp, paths: PathModel | None = None):
        self.app = app
        self.paths = paths or PathModel.from_metadata(app.bundle.metadata)

    @property
    def max_horizon(self) -> int:
        return self.app.bundle.horizon

    def _margin(self, requested: float | None, fitted: float) -> float:
        return fitted if requested is None else requested

    # Shared steps ----------------------------------------------------------------------------

    def complete(self, pending: Pending, scaled: Sequence[np.ndarray] | np.ndarray) -> Any:
        """Turn the network's output for ``pending.items`` into prices and build the response."""
        forecasts = []
        for item, output in zip(pending.items, scaled, strict=True):
            forecast = self.app.forecast(item, output)
            check_finite_forecast(forecast)
            forecasts.append(forecast)
        return pending.finish(forecasts)

    def _prepare(self, source: SeriesSource, label: str | None = None) -> PreparedForecast:
        """Prepare the longest forecast of one series; callers shorten it to what they need."""
        item = self.app.prepare(source.forecast_request(self.max_horizon))
        if label is not None and source.series_id is None:
            item = dataclasses.replace(item, unique_id=label)
        return item

    def _window_offsets(
        self, item: PreparedForecast, start: pd.Timestamp, hours: float, what: str
    ) -> int:
        """Check that ``[start, start + hours)`` lies in the forecast range of ``item``.

        Returns the horizon that covers it. ``what`` names the window in error messages.
        """
        offset = (start - item.end) / HOUR
        if offset < 0:
            raise RequestError(
                f"{what} starts at {start.isoformat()}, before the last observed price of "
                f"{item.unique_id} at {item.end.isoformat()}; start at or after it"
            )
        end_offset = offset + hours
        if end_offset > self.max_horizon + 1:
            latest = item.end + (self.max_horizon + 1) * HOUR
            raise RequestError(
                f"{what} ends at {(start + hours * HOUR).isoformat()}, but the forecast of "
                f"{item.unique_id} covers prices only until {latest.isoformat()} "
                f"(the end of the {self.max_horizon}th hour after its last observed price); "
                "end it earlier"
            )
        return max(1, min(self.max_horizon, math.ceil(end_offset) - 1))

    # POST /job_cost ------------------------------------------------------------------------------

    def job_cost(self, request: JobCostRequest) -> Pending:
        """Prepare the cost of one job on one series."""
        item = self._prepare(request)
        start = pd.Timestamp(request.start) if request.start is not None else item.end
        horizon = self._window_offsets(item, start, request.duration_hours, "the job")
        item = dataclasses.replace(item, horizon=horizon)

        def finish(forecasts: list[Forecast]) -> JobCostResponse:
            (forecast,) = forecasts
            summary = job_cost(forecast, start, request.duration_hours, self.paths)
            return JobCostResponse(
                unique_id=forecast.unique_id, model=self.app.tag,
                last_observed=observation(forecast), start=start.to_pydatetime(),
                end=(start + request.duration_hours * HOUR).to_pydatetime(),
                duration_hours=request.duration_hours, cost=cost_model(summary),
                method=self.paths.describe(),
            )

        return Pending([item], finish)

    # POST /cheapest_window -------------------------------------------------------------------

    def cheapest_window(self, request: CheapestWindowRequest) -> Pending:
        """Prepare the ranking of every start time on every candidate series."""
        items = [
            self._prepare(source, label=f"candidates[{index}]")
            for index, source in enumerate(request.candidates)
        ]
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            if item.unique_id in seen:
                raise RequestError(
                    f"candidates[{index}] repeats {item.unique_id}, already candidates"
                    f"[{seen[item.unique_id]}]; send each series once"
                )
            seen[item.unique_id] = index

        earliest = (
            pd.Timestamp(request.earliest_start) if request.earliest_start is not None
            else max(item.end for item in items)
        )
        deadline = (
            pd.Timestamp(request.deadline) if request.deadline is not None
            else earliest + request.deadline_hours * HOUR
        )
        duration = request.duration_hours
        latest_start = deadline - duration * HOUR
        if latest_start < earliest:
            raise RequestError(
                f"deadline {deadline.isoformat()} is less than duration_hours {duration:g} after "
                f"earliest_start {earliest.isoformat()}; the job cannot finish in time"
            )
        horizons = [
            self._window_offsets(item, earliest, (deadline - earliest) / HOUR,
                                 f"the window of candidates[{index}]")
            for index, item in enumerate(items)
        ]
        items = [dataclasses.replace(item, horizon=h) for item, h in zip(items, horizons, strict=True)]
        starts = start_times(earliest, latest_start)
        cheapest_now = min(range(len(items)), key=lambda i: float(items[i].prices[-1]))

        def finish(forecasts: list[Forecast]) -> CheapestWindowResponse:
            options = [
                option
                for forecast in forecasts
                for option in window_costs(forecast, starts, duration, self.paths)
            ]

            baseline_forecast = forecasts[cheapest_now]
            baseline = next(
                option for option in options
                if option.unique_id == baseline_forecast.unique_id and option.start == earliest
            )

            # Ties go to the earlier start, then to the series cheaper right now.
            last_price = {forecast.unique_id: forecast.last_y for forecast in forecasts}
            base_cost = baseline.cost.expected
            options.sort(key=lambda o: (cost_rank(o.cost.expected, base_cost), o.start,
                                        last_price[o.unique_id]))
            ranked = [
                WindowOption(
                    rank=rank, unique_id=o.unique_id, start=o.start.to_pydatetime(),
                    end=(o.start + duration * HOUR).to_pydatetime(), cost=cost_model(o.cost),
                    saving=base_cost - o.cost.expected,
                    saving_percent=100.0 * (base_cost - o.cost.expected) / base_cost,
                )
                for rank, o in enumerate(options, start=1)
            ]

            later_start = self._margin(request.min_saving_percent,
                                       self.paths.min_saving_percent)
            other_series = self._margin(request.min_saving_percent,
                                        self.paths.rank_min_saving_percent)
            recommended = recommend_window(ranked, baseline.unique_id, earliest,
                                           later_start=later_start, other_series=other_series)
            if request.limit is not None:
                ranked = ranked[: request.limit]

            return CheapestWindowResponse(
                model=self.app.tag, duration_hours=duration,
                earliest_start=earliest.to_pydatetime(), deadline=deadline.to_pydatetime(),
                baseline=Baseline(
                    unique_id=baseline.unique_id, start=earliest.to_pydatetime(),
                    last_price=baseline_forecast.last_y, cost=cost_model(baseline.cost),
                ),
                recommended=recommended, min_saving_percent=later_start,
                other_series_min_saving_percent=other_series, windows=ranked,
                method=self.paths.describe(),
            )

        return Pending(items, finish)

    # POST /rank --------------------------------------------------------------------------------

    def rank(self, request: RankRequest) -> Pending:
        """Prepare the ranking of placements; candidates without data are set apart."""
        zones = request.zones if request.zones is not None else self._region_zones(request.region)
        ids = [
            series_id(zone, instance_type, product)
            for zone in zones
            for instance_type in request.instance_types
            for product in request.product_descriptions
        ]
        if len(ids) > MAX_RANK_SERIES:
            raise RequestError(
                f"the request expands to {len(ids)} series (zones x instance_types x "
                f"product_descriptions); send at most {MAX_RANK_SERIES}"
            )

        items: list[PreparedForecast] = []
        starts: list[pd.Timestamp] = []
        unavailable: list[Unavailable] = []
        known = [split_series_id(uid) for uid in self.app.history]
        for unique_id in ids:
            reason = self._missing_reason(unique_id, known)
            if reason is not None:
                unavailable.append(Unavailable(unique_id=unique_id, reason=reason))
                continue
            item = self._prepare(SeriesSource(series_id=unique_id))
            start = pd.Timestamp(request.start) if request.start is not None else item.end
            try:
                horizon = self._window_offsets(item, start, request.hours, "the window")
            except RequestError as error:
                unavailable.append(Unavailable(unique_id=unique_id, reason=str(error)))
                continue
            items.append(dataclasses.replace(item, horizon=horizon))
            starts.append(start)

        def finish(forecasts: list[Forecast]) -> RankResponse:
            placements = []
            for forecast, start in zip(forecasts, starts, strict=True):
                summary = job_cost(forecast, start, request.hours, self.paths)
                zone, instance_type, product = split_series_id(forecast.unique_id)
                placements.append(RankedPlacement(
                    rank=0, unique_id=forecast.unique_id, availability_zone=zone,
                    instance_type=instance_type, product_description=product,
                    last_price=forecast.last_y, start=start.to_pydatetime(),
                    end=(start + request.hours * HOUR).to_pydatetime(), cost=cost_model(summary),
                ))
            # Ties go to the candidate cheaper right now.
            reference = min((p.cost.expected for p in placements), default=1.0)
            placements.sort(key=lambda p: (cost_rank(p.cost.expected, reference), p.last_price,
                                           p.unique_id))
            for rank, placement in enumerate(placements, start=1):
                placement.rank = rank
            margin = self._margin(request.min_saving_percent,
                                  self.paths.rank_min_saving_percent)
            cheapest_now = min(placements, key=lambda p: (p.last_price, p.rank), default=None)
            recommended = placements[0] if placements else None
            if recommended is not None and cheapest_now is not None:
                saving = cheapest_now.cost.expected - recommended.cost.expected
                if saving < cheapest_now.cost.expected * margin / 100:
                    recommended = cheapest_now
            return RankResponse(
                model=self.app.tag, hours=request.hours,
                cheapest_now=None if cheapest_now is None else cheapest_now.unique_id,
                recommended=recommended, min_saving_percent=margin, ranked=placements,
                unavailable=unavailable, method=self.paths.describe(),
            )

        return Pending(items, finish)

    def _region_zones(self, region: str | None) -> list[str]:
        zones = sorted({
            split_series_id(uid)[0] for uid in self.app.history
            if region_of(split_series_id(uid)[0]) == region
        })
        if not zones:
            regions = sorted({region_of(split_series_id(uid)[0]) for uid in self.app.history})
            raise SeriesNotFound(
                f"region {region!r} has no zones in the served data; regions with data: "
                f"{', '.join(r for r in regions if r) or 'none'}"
            )
        return zones

    def _missing_reason(
        self, unique_id: str, known: list[tuple[str, str, str]]
    ) -> str | None:
        """Why the service holds no history for ``unique_id``, or None when it does.

        ``known`` contains the split ids of every stored series.
        """
        if unique_id in self.app.history:
            return None
        zone, instance_type, product = split_series_id(unique_id)
        if not any(z == zone for z, _, _ in known):
            return f"no data for zone {zone}: the served data has no series in it"
        if not any(z == zone and t == instance_type for z, t, _ in known):
            return f"no data for instance type {instance_type} in {zone}"
        products = sorted(p for z, t, p in known if z == zone and t == instance_type)
        return (
            f"no data for product {product!r} of {instance_type} in {zone}; products with data: "
            f"{', '.join(products)}"
        )

    # POST /price_risk ------------------------------------------------------------------------

    def price_risk(self, request: PriceRiskRequest) -> Pending:
        """Prepare the probability of exceeding a price within a window."""
        item = self._prepare(request)
        start = pd.Timestamp(request.start) if request.start is not None else item.end
        horizon = self._window_offsets(item, start, request.hours, "the window")
        item = dataclasses.replace(item, horizon=horizon)
        last_price = float(item.prices[-1])
        threshold = (
            request.threshold if request.threshold is not None
            else last_price * (1.0 + request.rise_percent / 100.0)
        )

        def finish(forecasts: list[Forecast]) -> PriceRiskResponse:
            (forecast,) = forecasts
            probability, hourly = exceedance_probability(
                forecast, threshold, start, request.hours, self.paths
            )
            first = math.floor((start - forecast.last_ds) / HOUR)
            stamps = forecast.last_ds + (first + np.arange(len(hourly))) * HOUR
            return PriceRiskResponse(
                unique_id=forecast.unique_id, model=self.app.tag,
                last_observed=observation(forecast), threshold=threshold,
                start=start.to_pydatetime(),
                end=(start + request.hours * HOUR).to_pydatetime(), probability=probability,
                hourly=[
                    HourlyProbability(ds=ds.to_pydatetime(), probability=float(p))
                    for ds, p in zip(stamps, hourly, strict=True)
                ],
                method=self.paths.describe(),
            )

        return Pending([item], finish)

    # POST /history -----------------------------------------------------------------------------

    def history(self, request: HistoryRequest) -> HistoryResponse:
        """Return the last ``hours`` hourly prices of a stored series."""
        stored = self.app.find_series(request.series_id)
        values = stored.values[-request.hours:]
        first = stored.end - (len(values) - 1) * HOUR
        return HistoryResponse(
            unique_id=stored.unique_id,
            points=[
                Observation(ds=(first + i * HOUR).to_pydatetime(), y=float(y))
                for i, y in enumerate(values)
            ],
        )
