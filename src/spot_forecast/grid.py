"""Price-change events to a regular hourly grid, one array per series.

AWS publishes a record each time a price changes, and the price holds until the next record of the
same series. A grid point therefore takes the last record at or before it. Nothing is filled
before a series' first record, and each series keeps its own array, so no window built from a
panel can span two series.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


class FrequencyError(ValueError):
    """A request asked for a step that differs from the frequency the model was trained at."""


def check_frequency(requested: str, trained: str) -> pd.Timedelta:
    """Return the step of ``trained`` if ``requested`` is the same step, else raise.

    The frequency always comes from configuration, never from the spacing of raw events,
    because events are irregular by nature.
    """
    try:
        requested_step = pd.Timedelta(pd.tseries.frequencies.to_offset(requested))
    except (ValueError, TypeError) as error:
        raise FrequencyError(
            f"freq {requested!r} is not a valid pandas frequency; use {trained!r}"
        ) from error
    trained_step = pd.Timedelta(pd.tseries.frequencies.to_offset(trained))
    if requested_step != trained_step:
        raise FrequencyError(
            f"freq {requested!r} is not supported: the model was trained at {trained!r} steps; "
            f"request freq {trained!r}"
        )
    return trained_step


@dataclass(frozen=True)
class Series:
    """One series on the grid: ``values[i]`` is the price in force at ``start + i * step``."""

    unique_id: str
    start: pd.Timestamp
    values: np.ndarray

    @property
    def end(self) -> pd.Timestamp:
        """Timestamp of the last grid point."""
        return self.start + (len(self.values) - 1) * pd.Timedelta(hours=1)

    def index(self, step: pd.Timedelta = pd.Timedelta(hours=1)) -> pd.DatetimeIndex:
        """Grid timestamps of the series, tz-aware UTC."""
        return pd.date_range(self.start, periods=len(self.values), freq=step)


@dataclass(frozen=True)
class Panel:
    """Hourly grids of many series that share one step and one end time."""

    series: tuple[Series, ...]
    step: pd.Timedelta
    end: pd.Timestamp

    def __len__(self) -> int:
        return len(self.series)

    def __iter__(self) -> Iterator[Series]:
        return iter(self.series)

    def ids(self) -> list[str]:
        """Series ids in panel order."""
        return [series.unique_id for series in self.series]

    def to_frame(self) -> pd.DataFrame:
        """Long table with columns ``unique_id``, ``ds`` and ``y``."""
        frames = [
            pd.DataFrame({"unique_id": s.unique_id, "ds": s.index(self.step), "y": s.values})
            for s in self.series
        ]
        if not frames:
            return pd.DataFrame(
                {
                    "unique_id": pd.Series(dtype=object),
                    "ds": pd.Series(dtype="datetime64[ns, UTC]"),
                    "y": pd.Series(dtype="float64"),
                }
            )
        return pd.concat(frames, ignore_index=True)

    def select(self, unique_ids: list[str]) -> Panel:
        """Panel with only the given series, in the given order."""
        by_id = {s.unique_id: s for s in self.series}
        return Panel(tuple(by_id[i] for i in unique_ids), self.step, self.end)


def events_to_grid(
    ds: pd.Series | pd.DatetimeIndex | np.ndarray,
    y: np.ndarray,
    *,
    end: pd.Timestamp,
    start: pd.Timestamp | None = None,
    step: pd.Timedelta = pd.Timedelta(hours=1),
) -> tuple[pd.Timestamp, np.ndarray]:
    """Forward-fill one series' events onto a grid of ``step`` up to ``end``.

    ``ds`` must be sorted ascending and tz-aware UTC. The grid starts at the first grid point at or
    after the first event (or at ``start`` if that is later) and ends at the last grid point at or
    before ``end``. Returns the grid start and the values, which are empty when no grid point falls
    inside the events' span.
    """
    times = pd.DatetimeIndex(ds)
    if len(times) == 0:
        raise ValueError("a series needs at least one event to be put on a grid")
    first_point = times[0].ceil(step)
    if start is not None and start > first_point:
        first_point = start.ceil(step)
    last_point = end.floor(step)
    if last_point < first_point:
        return first_point, np.empty(0, dtype=np.float64)

    grid = pd.date_range(first_point, last_point, freq=step)
    positions = np.searchsorted(times.asi8, grid.asi8, side="right") - 1
    values = np.asarray(y, dtype=np.float64)[positions]
    return first_point, values


def to_panel(
    table: pd.DataFrame,
    *,
    freq: str = "1h",
    end: pd.Timestamp | None = None,
    start: pd.Timestamp | None = None,
    min_length: int = 1,
) -> Panel:
    """Put every series of a canonical table on one hourly grid.

    Every series is filled forward up to ``end``, which defaults to the last event in the whole
    table: a price holds until it changes, and the dump covers all series up to its last record.
    Series with fewer than ``min_length`` grid points are left out, with a warning giving the count.
    """
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    if table.empty:
        raise ValueError("the price table is empty: there is nothing to put on a grid")
    if end is None:
        end = table["ds"].max()
    end = pd.Timestamp(end).floor(step)

    ordered = table.sort_values(["unique_id", "ds"], kind="stable")
    series: list[Series] = []
    too_short = 0
    for unique_id, group in ordered.groupby("unique_id", sort=True, observed=True):
        group = group[group["ds"] <= end]
        if group.empty:
            too_short += 1
            continue
        first, values = events_to_grid(
            group["ds"], group["y"].to_numpy(), end=end, start=start, step=step
        )
        if len(values) < min_length:
            too_short += 1
            continue
        series.append(Series(str(unique_id), first, values))

    if too_short:
        logger.warning(
            "left out %d of %d series with fewer than %d grid points before %s",
            too_short, too_short + len(series), min_length, end.isoformat(),
        )
    logger.info("gridded %d series at %s up to %s", len(series), freq, end.isoformat())
    return Panel(tuple(series), step, end)
