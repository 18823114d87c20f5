"""Decision backtest: replay job-cost, cheapest-window, placement and price-risk decisions.

At forecast origins every 24 hours over the evaluation period, the model (trained only on data
before the cut-off) forecasts a seeded sample of series, and the decisions the API makes are
replayed against the prices that followed:

* **Job cost.** A job of 4, 24 or 72 hours starting at the origin: does the 80 % interval
  (10th to 90th percentile) contain the actual cost?
* **Cheapest window.** A job of 4 or 8 hours must finish within 24 hours, on any zone of one
  instance type and product. The forecast picks the (zone, start) with the lowest expected cost.
  "Cheapest right now" starts at once in the zone with the lowest current price. The hindsight
  best is the cheapest (zone, start) in the actual prices.
* **Placement.** A window of 24 or 72 hours from the origin, over every instance type and zone of
  one pool (``pool_of``: m5.large, m5a.large, m6i.large and so on) and product, as a job that
  runs on any of them would ask ``/rank``; and, for reference, over the zones of one instance
  type. The forecast picks the lowest expected cost, "cheapest right now" the lowest current
  price.
* **Price risk.** The probability that the price rises 1, 2, 5 or 10 % above the last price at any
  hour of the next 24 or 72 hours, against whether it did.

First, ``fit_path_model`` fits the sample-path settings on origins in the days just before the
cut-off: the copula correlation ``rho``, the path levels reported as cost percentiles, the risk
calibration map and the saving margin of recommendations. Those days are out of sample for the
network, whose training windows end earlier, and the evaluation period informs none of the fit.
Then, at each evaluation origin, the cost levels and the risk map are refitted on the two weeks
before it whose outcomes are known (``recalibrated``), as ``spot-forecast calibrate`` does for
a served model; ``DecisionConfig.recalibrate`` turns that off.

Results go to ``decisions.json`` and ``decisions.md`` (default folder ``docs/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spot_forecast.decisions import PathModel, mean_prices, quantile_prices
from spot_forecast.forecast import Forecast
from spot_forecast.grid import Panel, to_panel
from spot_forecast.series import split_series_id

logger = logging.getLogger(__name__)

#: Start of the evaluation period of the development split on the bundled eu-west-1 file.
DEV_CUTOFF = pd.Timestamp("2022-02-11T00:00Z")
#: Minimum hours of history a series needs at an origin.
MIN_HISTORY = 24
#: Costs closer than this (USD) count as equal when comparing two choices.
COST_TOLERANCE = 1e-9

Forecaster = Callable[[list[tuple[str, np.ndarray, pd.Timestamp, int]]], list[Forecast]]


@dataclass(frozen=True)
class DecisionConfig:
    """Scope of a replay; the defaults give the development split's report."""

    cutoff: pd.Timestamp = DEV_CUTOFF
    calibration_days: int = 14
    #: Origins are denser on the calibration days, whose 14 days give few daily origins.
    calibration_every_hours: int = 8
    origin_every_hours: int = 24
    products: tuple[str, ...] = ("Linux/UNIX", "Windows")
    #: (pool, product) groups sampled with ``seed``; each brings all its types and zones.
    groups: int = 65
    seed: int = 20220211
    n_paths: int = 1000
    job_hours: tuple[int, ...] = (4, 24, 72)
    window_job_hours: tuple[int, ...] = (4, 8)
    window_deadline_hours: int = 24
    placement_hours: tuple[int, ...] = (24, 72)
    risk_rise_percent: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0)
    risk_hours: tuple[int, ...] = (24, 72)
    rho_grid: tuple[float, ...] = (0.9, 0.95, 0.98, 0.99, 0.995, 1.0)
    #: A decile of risk probabilities is judged only with at least this many decisions in it.
    min_decile_decisions: int = 100
    #: A saving margin is judged only with at least this many calibration decisions that
    #: differ from "cheapest right now".
    min_differing: int = 20
    #: Refit the cost levels and the risk map at every evaluation origin on the trailing
    #: ``calibration_days`` whose outcomes are known by then, as ``spot-forecast calibrate`` does
    #: when run daily. Without it, the fit before the cut-off serves the whole period.
    recalibrate: bool = True

    @property
    def horizon(self) -> int:
        return max(*self.job_hours, *self.placement_hours, *self.risk_hours,
                   self.window_deadline_hours)


@dataclass
class OriginBatch:
    """Forecasts of every sampled series at one origin, with the prices that followed.

    ``values`` has shape ``(B, H, Q)``; ``actual`` has shape ``(B, H + 1)``, where column 0 is
    the last observed price at the origin.
    """

    origin: pd.Timestamp
    unique_ids: list[str]
    levels: tuple[float, ...]
    values: np.ndarray
    actual: np.ndarray

    @property
    def last(self) -> np.ndarray:
        return self.actual[:, 0]


@dataclass
class Tally:
    """Decisions of one kind: costs of the forecast's choice, the baseline and the hindsight best."""

    chosen: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    differ: list[bool] = field(default_factory=list)

    def add(self, chosen: float, baseline: float, best: float, differ: bool) -> None:
        self.chosen.append(chosen)
        self.baseline.append(baseline)
        self.best.append(best)
        self.differ.append(differ)

    def summary(self) -> dict[str, Any]:
        chosen, baseline, best = (np.array(x) for x in (self.chosen, self.baseline, self.best))
        differ = np.array(self.differ, dtype=bool)
        wins = differ & (chosen < baseline - COST_TOLERANCE)
        losses = differ & (chosen > baseline + COST_TOLERANCE)
        decided = int(wins.sum() + losses.sum())
        return {
            "decisions": int(len(chosen)),
            "extra_cost_percent": percent_over(chosen, best),
            "baseline_extra_cost_percent": percent_over(baseline, best),
            "choices_differ": int(differ.sum()),
            "wins": int(wins.sum()),
            "losses": int(losses.sum()),
            "ties": int(differ.sum()) - decided,
            "win_rate_where_choices_differ": ratio(int(wins.sum()), int(differ.sum())),
            "win_rate_where_costs_differ": ratio(int(wins.sum()), decided),
        }


def percent_over(costs: np.ndarray, best: np.ndarray) -> float | None:
    """Total cost over the total hindsight-best cost, in percent above it."""
    total = float(best.sum())
    return None if total <= 0 else 100.0 * (float(costs.sum()) - total) / total


def ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


# Data -----------------------------------------------------------------------------------------


def pool_of(instance_type: str) -> str:
    """Return the pool of types a flexible job can swap between, such as ``m.large x86_64``.

    A pool contains the types of one family class (the letters before the generation: m, c, r, t,
    ...), one size and one CPU architecture, as an EC2 Fleet with instance-type flexibility would
    list them. So m5.large, m5a.large and m6i.large share a pool, and m6g.large (Graviton) does
    not. Types that do not parse form a pool of their own.
    """
    family, _, size = instance_type.partition(".")
    match = re.fullmatch(r"([a-z]+)(\d+)([a-z-]*)", family)
    if match is None or not size:
        return instance_type
    letters, _, attributes = match.groups()
    # The g after the generation marks Graviton (m6g, c7gn, t4g); the g class itself is GPU.
    arm = "g" in attributes and letters != "g"
    return f"{letters}.{size} {'arm64' if arm else 'x86_64'}"


def sample_series(panel: Panel, config: DecisionConfig) -> list[str]:
    """Series of ``config.groups`` (pool, product) groups, sampled with the seed.

    Each group brings every instance type of its pool (``pool_of``) in every zone.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for unique_id in panel.ids():
        _, instance_type, product = split_series_id(unique_id)
        if product in config.products:
            groups.setdefault((pool_of(instance_type), product), []).append(unique_id)
    keys = sorted(groups)
    rng = np.random.default_rng(config.seed)
    chosen = rng.choice(len(keys), size=min(config.groups, len(keys)), replace=False)
    return sorted(uid for index in chosen for uid in groups[keys[index]])


def origins_between(start: pd.Timestamp, stop: pd.Timestamp, every: int) -> list[pd.Timestamp]:
    """Origins from ``start`` every ``every`` hours while ``origin <= stop``."""
    return list(pd.date_range(start, stop, freq=pd.Timedelta(hours=every)))


def forecast_origin(
    panel: Panel, unique_ids: Sequence[str], origin: pd.Timestamp, horizon: int,
    forecaster: Forecaster,
) -> OriginBatch | None:
    """Forecast every series with enough history at ``origin`` and all ``horizon`` hours after."""
    by_id = {s.unique_id: s for s in panel}
    histories, actual = [], []
    for unique_id in unique_ids:
        series = by_id[unique_id]
        position = int((origin - series.start) // panel.step)
        if position < MIN_HISTORY - 1 or position + horizon >= len(series.values):
            continue
        histories.append((unique_id, series.values[: position + 1], origin, horizon))
        actual.append(series.values[position: position + horizon + 1])
    if not histories:
        return None
    forecasts = forecaster(histories)
    return OriginBatch(
        origin=origin,
        unique_ids=[h[0] for h in histories],
        levels=forecasts[0].quantiles,
        values=np.stack([f.values for f in forecasts]),
        actual=np.stack(actual),
    )


# Replays --------------------------------------------------------------------------------------


def paths_of(batch: OriginBatch, rows: np.ndarray, model: PathModel) -> np.ndarray:
    """Sample paths ``(len(rows), n_paths, H + 1)`` of some forecasts of a batch."""
    scores = model.latent(batch.values.shape[1])
    prices = quantile_prices(batch.values[rows], batch.levels, scores)
    known = np.broadcast_to(batch.last[rows, None, None], (len(rows), model.n_paths, 1))
    return np.concatenate([known, prices], axis=2)


def replay_paths(batch: OriginBatch, model: PathModel, config: DecisionConfig,
                 rng: np.random.Generator, chunk: int = 64) -> dict[str, np.ndarray]:
    """Job-cost PIT values, intervals and raw risk frequencies of one batch, with what happened.

    Returns ``job`` rows ``(hours, pit, low, high, actual, low_level, high_level)``. ``pit`` is
    the randomized probability integral transform of the actual cost under the path costs. Ties
    are spread uniformly, so a calibrated forecast gives uniform values even with point masses.
    ``low`` and ``high`` are the path costs at the levels ``model.levels_for(hours)`` reports as
    the 10th and 90th percentiles, ``low_level`` and ``high_level``. ``risk`` rows are
    ``(hours, rise_percent, frequency, event)`` with the raw share of paths that exceed. Only
    ``low`` and ``high`` depend on the model's calibration; the rest depends on the paths alone.
    """
    jobs, risks = [], []
    for first in range(0, len(batch.unique_ids), chunk):
        rows = np.arange(first, min(first + chunk, len(batch.unique_ids)))
        paths = paths_of(batch, rows, model)
        for hours in config.job_hours:
            costs = paths[:, :, :hours].sum(axis=2)
            actual = batch.actual[rows, :hours].sum(axis=1)
            tolerance = (COST_TOLERANCE * np.maximum(actual, 1.0))[:, None]
            below = (costs < actual[:, None] - tolerance).mean(axis=1)
            at_or_below = (costs <= actual[:, None] + tolerance).mean(axis=1)
            pit = below + rng.random(len(rows)) * (at_or_below - below)
            low_level, _, high_level = model.levels_for(hours)
            low, high = np.quantile(costs, [low_level, high_level], axis=1)
            jobs.append(np.stack([np.full(len(rows), hours), pit, low, high, actual,
                                  np.full(len(rows), low_level), np.full(len(rows), high_level)],
                                 axis=1))
        for hours in config.risk_hours:
            peaks = paths[:, :, :hours].max(axis=2)
            actual_peak = batch.actual[rows, :hours].max(axis=1)
            for rise in config.risk_rise_percent:
                threshold = batch.last[rows] * (1 + rise / 100)
                frequency = (peaks > threshold[:, None]).mean(axis=1)
                event = actual_peak > threshold
                risks.append(np.stack([np.full(len(rows), hours), np.full(len(rows), rise),
                                       frequency, event], axis=1))
    return {"job": np.concatenate(jobs), "risk": np.concatenate(risks)}


def zone_groups(unique_ids: Sequence[str]) -> list[np.ndarray]:
    """Row indices of the series of each (instance type, product), in id order."""
    return _groups(unique_ids, lambda instance_type: instance_type)


def pool_groups(unique_ids: Sequence[str]) -> list[np.ndarray]:
    """Row indices of the series of each (pool, product): every type of a pool in every zone."""
    return _groups(unique_ids, pool_of)


def _groups(unique_ids: Sequence[str], key: Callable[[str], str]) -> list[np.ndarray]:
    groups: dict[tuple[str, str], list[int]] = {}
    for row, unique_id in enumerate(unique_ids):
        _, instance_type, product = split_series_id(unique_id)
        groups.setdefault((key(instance_type), product), []).append(row)
    return [np.array(rows) for _, rows in sorted(groups.items())]


def replay_choices(batch: OriginBatch, config: DecisionConfig,
                   tallies: dict[str, Tally], margins: Margins) -> None:
    """Replay cheapest-window and placement choices of one batch into ``tallies``.

    Expected costs come from the marginal means, as in the API, so they need no paths. As the
    API's recommendations do, the forecast's choice replaces "cheapest right now" only for an
    expected saving of at least a margin (percent of the baseline's expected cost):
    ``margins.later_start`` to start later on the series cheapest now, ``margins.other_series``
    to run on another series (another zone in ``/cheapest_window``, another candidate in
    ``/rank``). The choice is the lowest expected cost among the options that clear their margin.
    """
    means = np.concatenate(
        [batch.last[:, None], mean_prices(batch.values, batch.levels)], axis=1
    )
    expected_sums = np.concatenate([np.zeros((len(means), 1)), np.cumsum(means, axis=1)], axis=1)
    actual_sums = np.concatenate(
        [np.zeros((len(means), 1)), np.cumsum(batch.actual, axis=1)], axis=1
    )
    for rows in zone_groups(batch.unique_ids):
        last = batch.last[rows]
        cheapest_now = int(np.argmin(last))

        for hours in config.window_job_hours:
            starts = np.arange(0, config.window_deadline_hours - hours + 1)
            expected = expected_sums[rows][:, starts + hours] - expected_sums[rows][:, starts]
            actual = actual_sums[rows][:, starts + hours] - actual_sums[rows][:, starts]
            saving = saving_percent(expected, expected[cheapest_now, 0])
            other = np.arange(len(rows))[:, None] != cheapest_now
            allowed = np.where(other, saving >= margins.other_series,
                               saving >= margins.later_start)
            allowed[cheapest_now, 0] = True
            # Ties go to the earlier start, then to the zone cheapest now, as in the API.
            order = np.lexsort((np.broadcast_to(last[:, None], expected.shape).ravel(),
                                np.broadcast_to(starts[None, :], expected.shape).ravel(),
                                expected.ravel()))
            first = order[allowed.ravel()[order]][0]
            zone, start = np.unravel_index(first, expected.shape)
            tallies[f"window_{hours}h"].add(
                chosen=float(actual[zone, start]), baseline=float(actual[cheapest_now, 0]),
                best=float(actual.min()), differ=(zone, start) != (cheapest_now, 0),
            )

    # Placement over the zones of one instance type, and over every type and zone of a pool.
    for kind, groups in (("placement_zones", zone_groups), ("placement", pool_groups)):
        if f"{kind}_{config.placement_hours[0]}h" not in tallies:
            continue  # a margin fit that judges start windows alone
        for rows in groups(batch.unique_ids):
            if len(rows) < 2:
                continue
            last = batch.last[rows]
            cheapest_now = int(np.argmin(last))
            for hours in config.placement_hours:
                expected = expected_sums[rows, hours]
                actual = actual_sums[rows, hours]
                choice = int(np.lexsort((last, expected))[0])
                if saving_percent(expected[choice], expected[cheapest_now]) < margins.other_series:
                    choice = cheapest_now
                tallies[f"{kind}_{hours}h"].add(
                    chosen=float(actual[choice]), baseline=float(actual[cheapest_now]),
                    best=float(actual.min()), differ=choice != cheapest_now,
                )


def saving_percent(expected: np.ndarray | float, baseline: float) -> np.ndarray | float:
    """Return the expected saving against ``baseline``, in percent of it."""
    return 100.0 * (1.0 - expected / baseline)


def decision_kinds(config: DecisionConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Return the kinds of choice ``replay_choices`` tallies, with their job or window hours."""
    return [("window", config.window_job_hours), ("placement", config.placement_hours),
            ("placement_zones", config.placement_hours)]


# Summaries ------------------------------------------------------------------------------------


def job_summary(table: np.ndarray) -> dict[str, Any]:
    """Coverage of the job-cost interval, overall and by job length.

    ``coverage_80`` counts a job as covered when its actual cost lies within the reported 10th
    to 90th percentile, bounds included. A flat forecast gives equal bounds, and a job whose
    price did not change then counts as covered, so this share exceeds 80 % whenever more than
    80 % of jobs see no change. ``pit_coverage_80`` is the share of randomized PIT values between
    the reported levels, which is 80 % for a calibrated forecast even with such point masses.
    """
    if len(table) == 0:
        return {"jobs": 0}
    hours, pit, low, high, actual, low_level, high_level = table.T
    tolerance = COST_TOLERANCE * np.maximum(actual, 1.0)
    covered = (low <= actual + tolerance) & (actual <= high + tolerance)
    pit_covered = (pit >= low_level) & (pit <= high_level)
    by_hours = {}
    for value in np.unique(hours):
        mask = hours == value
        by_hours[str(int(value))] = {
            "jobs": int(mask.sum()),
            "coverage_80": float(covered[mask].mean()),
            "pit_coverage_80": float(pit_covered[mask].mean()),
            "below_p10": float((actual[mask] < low[mask] - tolerance[mask]).mean()),
            "above_p90": float((actual[mask] > high[mask] + tolerance[mask]).mean()),
            "mean_width_percent": float(100 * np.mean((high[mask] - low[mask]) / actual[mask])),
        }
    return {"jobs": int(len(table)), "coverage_80": float(covered.mean()),
            "pit_coverage_80": float(pit_covered.mean()), "by_hours": by_hours}


def risk_summary(table: np.ndarray, probability: np.ndarray, min_decisions: int) -> dict[str, Any]:
    """Reliability of exceedance probabilities by decile of the predicted probability.

    ``table`` contains the rows of ``replay_paths``, and ``probability`` the probabilities to
    judge.
    """
    if len(table) == 0:
        return {"decisions": 0}
    event = table[:, 3]
    deciles = np.minimum((probability * 10).astype(int), 9)
    rows = []
    worst = 0.0
    for decile in range(10):
        mask = deciles == decile
        count = int(mask.sum())
        if count == 0:
            rows.append({"decile": f"{decile / 10:.1f}-{(decile + 1) / 10:.1f}", "decisions": 0})
            continue
        predicted = float(probability[mask].mean())
        observed = float(event[mask].mean())
        judged = count >= min_decisions
        if judged:
            worst = max(worst, abs(predicted - observed))
        rows.append({
            "decile": f"{decile / 10:.1f}-{(decile + 1) / 10:.1f}", "decisions": count,
            "events": int(event[mask].sum()), "mean_probability": predicted,
            "observed_frequency": observed, "judged": judged,
        })
    by_setting = {}
    for hours in np.unique(table[:, 0]):
        for rise in np.unique(table[:, 1]):
            mask = (table[:, 0] == hours) & (table[:, 1] == rise)
            by_setting[f"{int(hours)}h +{rise:g}%"] = {
                "decisions": int(mask.sum()),
                "mean_probability": float(probability[mask].mean()),
                "observed_frequency": float(event[mask].mean()),
                "brier": float(np.mean((probability[mask] - event[mask]) ** 2)),
            }
    return {
        "decisions": int(len(table)),
        "events": int(event.sum()),
        "max_gap_points": 100 * worst,
        "min_decisions_per_decile": min_decisions,
        "deciles": rows,
        "by_setting": by_setting,
        "brier": float(np.mean((probability - event) ** 2)),
    }


# The run --------------------------------------------------------------------------------------


def replay(
    panel: Panel, forecaster: Forecaster, config: DecisionConfig = DecisionConfig()
) -> dict[str, Any]:
    """Fit the path model on the calibration origins, then replay every decision after the cut-off."""
    started = time.perf_counter()
    unique_ids = sample_series(panel, config)
    horizon = config.horizon
    step = pd.Timedelta(hours=1)
    calibration = origins_between(
        config.cutoff - pd.Timedelta(days=config.calibration_days),
        config.cutoff - horizon * step, config.calibration_every_hours,
    )
    evaluation = origins_between(config.cutoff, panel.end - horizon * step,
                                 config.origin_every_hours)
    logger.info("replaying decisions for %d series: %d calibration and %d evaluation origins",
                len(unique_ids), len(calibration), len(evaluation))

    calibration_batches = [
        b for b in (forecast_origin(panel, unique_ids, t, horizon, forecaster) for t in calibration)
        if b is not None
    ]
    model, fitting, calibration_records = fit_path_model(calibration_batches, config)
    # Records of every origin whose outcome a refit may read. A refit reads only their PIT values
    # and raw risk frequencies, which depend on the paths alone, not on the calibration.
    known = {b.origin: r for b, r in zip(calibration_batches, calibration_records)}
    # Origins after the calibration ones whose outcomes become known during the evaluation
    # period, including those in the last horizon before the cut-off.
    refit_only: set[pd.Timestamp] = set()
    if config.recalibrate and evaluation and calibration:
        every = pd.Timedelta(hours=config.calibration_every_hours)
        refit_only = set(origins_between(calibration[-1] + every, evaluation[-1] - horizon * step,
                                         config.calibration_every_hours)) - set(evaluation)

    rng = np.random.default_rng(config.seed)
    jobs, risks, probabilities, fixed_probabilities, refits = [], [], [], [], []
    tallies = {f"{kind}_{h}h{suffix}": Tally()
               for kind, hours in decision_kinds(config)
               for h in hours for suffix in ("", "_no_margin")}
    series_seen: set[str] = set()
    evaluated = 0
    for origin in sorted({*evaluation, *refit_only}):
        batch = forecast_origin(panel, unique_ids, origin, horizon, forecaster)
        if batch is None:
            continue
        if origin in refit_only:
            known[origin] = replay_paths(batch, model, config, rng)
            continue
        current = model
        if config.recalibrate:
            trailing = trailing_origins(origin, list(known), config)
            current = recalibrated(model, [known[t] for t in trailing], config)
            refits.append(len(trailing))
        series_seen.update(batch.unique_ids)
        records = replay_paths(batch, current, config, rng)
        known[origin] = records
        jobs.append(records["job"])
        risks.append(records["risk"])
        probabilities.append(current.risk_probability(records["risk"][:, 2]))
        fixed_probabilities.append(model.risk_probability(records["risk"][:, 2]))
        replay_choices(batch, config, tallies,
                       Margins(model.min_saving_percent, model.rank_min_saving_percent))
        raw = {k.removesuffix("_no_margin"): t for k, t in tallies.items() if k.endswith("_no_margin")}
        replay_choices(batch, config, raw, Margins(0.0, 0.0))
        evaluated += 1
        logger.info("origin %s done (%d of %d)", origin.isoformat(), evaluated, len(evaluation))

    job_table, risk_table = np.concatenate(jobs), np.concatenate(risks)
    fitting["recalibration"] = {
        "enabled": config.recalibrate,
        "trailing_days": config.calibration_days,
        "origins_every_hours": config.calibration_every_hours,
        "refits": len(refits),
        "origins_per_refit": [min(refits), max(refits)] if refits else None,
    }
    results = {
        "setup": {
            "cutoff": config.cutoff.isoformat(),
            "data_end": panel.end.isoformat(),
            "evaluation_origins": [t.isoformat() for t in evaluation],
            "calibration_origins": [t.isoformat() for t in calibration],
            "series": len(series_seen),
            "config": {k: (v.isoformat() if isinstance(v, pd.Timestamp) else v)
                       for k, v in asdict(config).items()},
        },
        "sample_paths": sample_paths_entry(model, fitting),
        "job_cost": job_summary(job_table),
        "cheapest_window": {k: t.summary() for k, t in tallies.items() if k.startswith("window")},
        "placement": {k: t.summary() for k, t in tallies.items() if k.startswith("placement")},
        "price_risk": risk_summary(risk_table, np.concatenate(probabilities),
                                   config.min_decile_decisions),
        "price_risk_fixed_map": risk_summary(risk_table, np.concatenate(fixed_probabilities),
                                             config.min_decile_decisions),
        "price_risk_uncalibrated": risk_summary(risk_table, risk_table[:, 2],
                                                config.min_decile_decisions),
        "seconds": time.perf_counter() - started,
    }
    results["targets"] = check_targets(results)
    return results


def path_model_metadata(model: PathModel) -> dict[str, Any]:
    """Convert a fitted path model to JSON in the form ``PathModel.from_metadata`` reads."""
    return {
        "rho": model.rho,
        "n_paths": model.n_paths,
        "cost_levels": [[round(x, 4) for x in row] for row in model.cost_levels],
        "risk_knots": [[round(x, 4) for x in model.risk_knots[0]],
                       [round(y, 4) for y in model.risk_knots[1]]],
        "min_saving_percent": model.min_saving_percent,
        "rank_min_saving_percent": model.rank_min_saving_percent,
        "risk_max_rise_percent": model.risk_max_rise_percent,
    }


def sample_paths_entry(model: PathModel, fitting: dict[str, Any]) -> dict[str, Any]:
    """Return the report's ``sample_paths``: the model as stored, its method line and its fit.

    The method line describes the rounded levels that the JSON keeps, so that it agrees with the
    report's other lines (0.95449 is printed as 0.955 from its stored 0.9545 in both).
    """
    stored = path_model_metadata(model)
    levels = tuple(tuple(row) for row in stored["cost_levels"])
    return {**stored, "method": replace(model, cost_levels=levels).describe(), "fitting": fitting}


def fit_path_model(batches: Sequence[OriginBatch], config: DecisionConfig
                   ) -> tuple[PathModel, dict[str, Any], list[dict[str, np.ndarray]]]:
    """Fit ``rho``, the cost levels, the risk map and the saving margins on calibration batches.

    * ``rho``: the value of ``config.rho_grid`` with the lowest Brier score of the raw risk
      frequencies. Job-cost intervals barely depend on it, because most hours repeat the last
      price.
    * Cost levels and risk map: ``fit_outcome_maps``.
    * Saving margins, one per move (``MOVES``): starting later on the series cheapest now, judged
      on start windows, and running on another series, judged on start windows and placements.
      Each is the smallest of ``MARGIN_GRID`` whose choices beat "cheapest right now" in at
      least 60 % of the calibration decisions where they differ, judged by the one-sided 95 %
      lower bound of that rate, with at least ``config.min_differing`` such decisions. The
      bound keeps the choice from resting on a rate that clears 60 % by chance. When no margin
      qualifies, ``NEVER_SWITCH``. The moves are fitted apart because a forecast may know when
      one price falls and still not know when one zone overtakes another
      (``spot_forecast.placement_headroom`` measures how rarely that happens).

    Returns the model, a summary of the fit for the report and the ``replay_paths`` records of
    each batch under the chosen ``rho``.
    """
    rng = np.random.default_rng(config.seed)
    table = []
    best: tuple[float, float, list[dict[str, np.ndarray]]] | None = None
    for rho in config.rho_grid:
        model = PathModel(rho=rho, n_paths=config.n_paths, seed=config.seed)
        records = [replay_paths(batch, model, config, rng) for batch in batches]
        jobs = np.concatenate([r["job"] for r in records])
        risks = np.concatenate([r["risk"] for r in records])
        brier = float(np.mean((risks[:, 2] - risks[:, 3]) ** 2))
        table.append({"rho": rho, "brier": brier,
                      "pit_coverage_80": float(np.mean((jobs[:, 1] >= 0.1) & (jobs[:, 1] <= 0.9))),
                      "risk_max_gap_points": risk_summary(risks, risks[:, 2],
                                                          config.min_decile_decisions)[
                                                              "max_gap_points"]})
        logger.info("calibration: rho %g gives Brier %.5f", rho, brier)
        if best is None or brier < best[1]:
            best = (rho, brier, records)
    assert best is not None
    rho, _, records = best
    cost_levels, knots = fit_outcome_maps(records, config)

    margins = []
    for margin in MARGIN_GRID:
        row: dict[str, Any] = {"min_saving_percent": margin}
        # Each move is judged with the other one ruled out, on the decision kinds it can change.
        for move, judged_kinds in MOVES.items():
            tallies = {f"{kind}_{h}h": Tally() for kind, hours in decision_kinds(config)
                       for h in hours if kind in judged_kinds}
            for batch in batches:
                replay_choices(batch, config, tallies, Margins(**{
                    m: (margin if m == move else NEVER_SWITCH) for m in MOVES}))
            summaries = [t.summary() for t in tallies.values()]
            wins = sum(x["wins"] for x in summaries)
            differ = sum(x["choices_differ"] for x in summaries)
            row[move] = {"choices_differ": differ, "wins": wins, "win_rate": ratio(wins, differ),
                         "win_rate_lower_bound": wilson_lower_bound(wins, differ)}
        margins.append(row)
    chosen = {move: next((m["min_saving_percent"] for m in margins
                          if m[move]["choices_differ"] >= config.min_differing
                          and m[move]["win_rate_lower_bound"] >= MIN_WIN_RATE), NEVER_SWITCH)
              for move in MOVES}

    model = PathModel(rho=rho, n_paths=config.n_paths, seed=config.seed,
                      cost_levels=cost_levels, risk_knots=knots,
                      min_saving_percent=chosen["later_start"],
                      rank_min_saving_percent=chosen["other_series"],
                      risk_max_rise_percent=max(config.risk_rise_percent))
    return model, {"rho_grid": table, "margins": margins}, records


def fit_outcome_maps(records: Sequence[dict[str, np.ndarray]], config: DecisionConfig
                     ) -> tuple[tuple[tuple[float, float, float, float], ...],
                                tuple[tuple[float, ...], tuple[float, ...]]]:
    """Fit the cost levels and the risk map on ``replay_paths`` records of known outcomes.

    * Cost levels, for each job length: the 10th, 50th and 90th percentiles of the randomized PIT
      values of job costs, so that reading the path costs at those levels covers as the nominal
      ones should.
    * Risk map: isotonic regression of exceedance events on path frequencies.

    Both describe how outcomes fall against the paths, which drifts with the market, so
    ``recalibrated`` refits them on recent days. The records must come from paths with one
    ``rho``.
    """
    from sklearn.isotonic import IsotonicRegression

    jobs = np.concatenate([r["job"] for r in records])
    risks = np.concatenate([r["risk"] for r in records])
    cost_levels = tuple(
        (float(hours), *(float(x) for x in np.quantile(jobs[jobs[:, 0] == hours, 1],
                                                       [0.1, 0.5, 0.9])))
        for hours in config.job_hours
    )
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    isotonic.fit(risks[:, 2], risks[:, 3])
    knots = (tuple(float(x) for x in isotonic.X_thresholds_),
             tuple(float(y) for y in isotonic.y_thresholds_))
    return cost_levels, knots


def recalibrated(model: PathModel, records: Sequence[dict[str, np.ndarray]],
                 config: DecisionConfig) -> PathModel:
    """``model`` with its cost levels and risk map refitted on ``records``.

    ``rho``, the path count and the saving margins stay: the records were drawn with that
    ``rho``, and a margin needs more differing decisions than a few days give.
    """
    cost_levels, knots = fit_outcome_maps(records, config)
    return replace(model, cost_levels=cost_levels, risk_knots=knots)


def trailing_origins(origin: pd.Timestamp, known: Sequence[pd.Timestamp],
                     config: DecisionConfig) -> list[pd.Timestamp]:
    """Origins of ``known`` in the ``calibration_days`` before ``origin`` whose outcomes are known.

    An origin's outcome is known once its whole horizon has passed, so a refit at ``origin``
    never reads a price after ``origin``.
    """
    earliest = origin - pd.Timedelta(days=config.calibration_days)
    horizon = pd.Timedelta(hours=config.horizon)
    return sorted(t for t in known if earliest <= t and t + horizon <= origin)


@dataclass(frozen=True)
class Margins:
    """Expected saving, in percent, that makes a choice leave "cheapest right now", by move."""

    #: Start later on the series cheapest now (``PathModel.min_saving_percent``).
    later_start: float
    #: Run on another series (``PathModel.rank_min_saving_percent``).
    other_series: float


def wilson_lower_bound(successes: int, trials: int, z: float = 1.645) -> float:
    """One-sided 95 % Wilson lower bound of a success rate; 0 without trials."""
    if trials == 0:
        return 0.0
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return float((centre - spread) / (1 + z * z / trials))


#: The two moves away from "cheapest right now" whose margins are fitted apart (``Margins``),
#: with the decision kinds each can change: a later start only a start window, another series
#: a start window (another zone) and both placements.
MOVES: dict[str, tuple[str, ...]] = {
    "later_start": ("window",),
    "other_series": ("window", "placement", "placement_zones"),
}
#: Saving margins tried, in percent of the "cheapest right now" expected cost.
MARGIN_GRID = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
#: Win rate over "cheapest right now" that a margin must reach, by its lower bound.
MIN_WIN_RATE = 0.6
#: Margin of a kind where no margin of the grid qualifies: a saving of 100 % never happens,
#: so the recommendation stays with "cheapest right now" unless a request sets its own.
NEVER_SWITCH = 100.0


def check_targets(results: dict[str, Any]) -> dict[str, Any]:
    """Compare the results with each target of the development split."""
    targets: dict[str, Any] = {}
    for kind in ("cheapest_window", "placement"):
        for name, row in results[kind].items():
            if name.endswith("_no_margin"):
                continue
            extra = row["extra_cost_percent"]
            win = row["win_rate_where_choices_differ"]
            targets[f"{name} extra cost <= 1 %"] = {"value": extra, "met": extra is not None
                                                    and extra <= 1.0}
            targets[f"{name} beats cheapest-now >= 60 % where choices differ"] = {
                "value": win, "met": win is not None and win >= 0.6,
                "choices_differ": row["choices_differ"]}
    job = results["job_cost"]
    targets["job-cost 80 % interval coverage in [78 %, 82 %], randomized PIT"] = {
        "value": job["pit_coverage_80"], "met": 0.78 <= job["pit_coverage_80"] <= 0.82}
    targets["job-cost 80 % interval coverage in [78 %, 82 %], ties covered"] = {
        "value": job["coverage_80"], "met": 0.78 <= job["coverage_80"] <= 0.82}
    gap = results["price_risk"]["max_gap_points"]
    targets["risk calibration within 5 points per judged decile"] = {"value": gap, "met": gap <= 5}
    return targets


# Report ---------------------------------------------------------------------------------------


def format_target(name: str, row: dict[str, Any]) -> str:
    """Format the measured value of one target of ``check_targets`` for the report."""
    value = row["value"]
    if value is None:
        return "n/a" + (f" ({row['choices_differ']} differing decisions)"
                        if "choices_differ" in row else "")
    if "coverage" in name or "beats" in name:
        text = format_percent(value)
        if "choices_differ" in row:
            text += f" of {row['choices_differ']}"
        return text
    if "extra cost" in name:
        return f"{value:.3f} %"
    return f"{value:.1f} points"


def placement_limit(paths: dict[str, Any]) -> list[str]:
    """Return the report's limit on placement choices when no margin for other series qualified."""
    if paths["rank_min_saving_percent"] < NEVER_SWITCH:
        return []
    return [
        "- Other series: on the calibration days no margin made running on another series beat "
        "\"cheapest right now\" in 60 % of differing decisions by the lower bound (table above). "
        "So `/rank`, and `/cheapest_window` across zones, keep their recommendation with the "
        "candidate cheapest now; placement choices then never differ here, and their win-rate "
        "target has no decisions to judge. The rows \"no margin\" show what choosing the lowest "
        "expected cost would have done. The ranking by expected cost is still returned.",
        "- Why: the series cheapest now is nearly always the cheapest over the window too. "
        "[placement-headroom.md](placement-headroom.md) (`python -m "
        "spot_forecast.placement_headroom`) counts how rarely the hindsight best beats it "
        "and how little it then saves, and shows that a classifier trained on cross-series "
        "features for exactly this choice also wins well under 60 % of its switches.",
    ]


def recalibration_text(recalibration: dict[str, Any] | None) -> str:
    """Describe the daily refits of a replay's cost levels and risk map for the report."""
    if not recalibration or not recalibration["enabled"]:
        return ("The cost levels and the risk map stay as fitted before the cut-off for the "
                "whole evaluation period.")
    low, high = recalibration["origins_per_refit"] or (0, 0)
    origins = f"{low} origins each" if low == high else f"{low} to {high} origins"
    return (
        "At each evaluation origin the cost levels and the risk map are refitted, as running "
        "`spot-forecast calibrate` each day does. Each refit reads the origins "
        f"{recalibration['origins_every_hours']} hours apart in the "
        f"{recalibration['trailing_days']} days before it whose whole horizon has passed "
        f"({recalibration['refits']} refits of {origins}). `rho` and the saving margins stay "
        "as fitted before the cut-off. The values below are the first fit."
    )


def margin_text(percent: float) -> str:
    """Format a fitted margin for the report, where ``NEVER_SWITCH`` reads as never."""
    if percent >= NEVER_SWITCH:
        return "100 % (never: no margin qualified)"
    return f"{percent:g} %"


def format_percent(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def format_report(results: dict[str, Any], model_tag: str) -> str:
    """Format the Markdown report of a replay."""
    setup = results["setup"]
    paths = results["sample_paths"]
    lines = [
        "# Decision backtest",
        "",
        f"Generated by `spot-forecast evaluate --decisions` or `{REPORT_COMMAND} --train` "
        f"(`--model TAG` reuses a model) with model "
        f"`{model_tag}`, trained with the default settings only on data before "
        f"{setup['cutoff']}. Origins every 24 hours "
        f"from {setup['evaluation_origins'][0]} to {setup['evaluation_origins'][-1]} "
        f"({len(setup['evaluation_origins'])} origins); {setup['series']} series of "
        f"{setup['config']['groups']} (pool, product) groups sampled with seed "
        f"{setup['config']['seed']}, every instance type and zone of each. "
        f"Run time {results['seconds']:.0f} s on 2 shared CPU cores.",
        "",
        "## Targets",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    for name, row in results["targets"].items():
        lines.append(f"| {name} | {format_target(name, row)} | {'yes' if row['met'] else 'no'} |")

    lines += [
        "",
        "## Sample paths and their calibration",
        "",
        f"Method: {paths['method']}. Everything below was fitted on "
        f"{len(setup['calibration_origins'])} origins "
        f"{setup['config']['calibration_every_hours']} hours apart in the "
        f"{setup['config']['calibration_days']} days before the cut-off, which the network "
        "held out from training as its validation days; the evaluation period informs none of "
        "it. The service uses the same values (`sample_paths` in this report's JSON twin).",
        "",
        recalibration_text(paths["fitting"].get("recalibration")),
        "",
        f"- `rho` = {paths['rho']:g}: lowest Brier score of the raw risk frequencies.",
        "- Cost percentiles are read at recalibrated path levels by job length "
        f"({'; '.join(f'{r[0]:g} h: {r[1]:.3f}, {r[2]:.3f}, {r[3]:.3f}' for r in paths['cost_levels'])}), "
        "the 10th, 50th and 90th percentiles of the calibration PIT values: the spread of a "
        "sum depends on how the hours move together, which the copula only approximates. "
        "Levels for other lengths are interpolated in log hours.",
        f"- Risk probabilities pass through an isotonic map with {len(paths['risk_knots'][0])} "
        "knots.",
        "- A recommendation starts later on the series cheapest now (`/cheapest_window`) only "
        f"for an expected saving of at least {margin_text(paths['min_saving_percent'])} of the "
        "cost of \"cheapest right now\". It runs on another series (another zone in "
        "`/cheapest_window`, another candidate in `/rank`) only for "
        f"{margin_text(paths['rank_min_saving_percent'])}. Each is the smallest margin "
        "whose calibration win rate over \"cheapest right now\" is at least 60 % by its "
        "one-sided 95 % lower bound (Wilson), among margins with at least "
        f"{setup['config']['min_differing']} differing decisions. Later starts are judged on "
        "start windows with other series ruled out; other series on start windows and "
        "placements with later starts ruled out.",
        "",
        "| rho | Brier of raw risk | raw risk max gap (points) | job-cost PIT coverage at 0.1 to 0.9 |",
        "|---|---|---|---|",
    ]
    for row in paths["fitting"]["rho_grid"]:
        lines.append(f"| {row['rho']:g} | {row['brier']:.5f} | {row['risk_max_gap_points']:.1f} | "
                     f"{format_percent(row['pit_coverage_80'])} |")
    lines += ["", "| min saving | move | choices differ | wins | win rate | lower bound |",
              "|---|---|---|---|---|---|"]
    for row in paths["fitting"]["margins"]:
        for move in MOVES:
            cell = row[move]
            lines.append(f"| {row['min_saving_percent']:g} % | {move.replace('_', ' ')} | "
                         f"{cell['choices_differ']} | "
                         f"{cell['wins']} | {format_percent(cell['win_rate'])} | "
                         f"{format_percent(cell['win_rate_lower_bound'])} |")

    job = results["job_cost"]
    lines += [
        "",
        "## Job cost",
        "",
        "Jobs start at the origin. \"PIT coverage\" is the share of randomized PIT values of "
        "the actual cost between the levels reported as the 10th and 90th percentiles. It is "
        "80 % for a calibrated forecast. \"Ties covered\" is the plain share of actual costs within the "
        "reported interval, bounds included. Most forecasts expect no change for a few hours, "
        "their interval is then one point, and every job without a price change counts as "
        "covered, so that share stays above 80 % for any calibrated forecast whenever more than "
        "80 % of jobs see no change.",
        "",
        "| job hours | jobs | PIT coverage | ties covered | below p10 | above p90 | mean width |",
        "|---|---|---|---|---|---|---|",
    ]
    for hours, row in job["by_hours"].items():
        lines.append(f"| {hours} | {row['jobs']} | {format_percent(row['pit_coverage_80'])} | "
                     f"{format_percent(row['coverage_80'])} | {format_percent(row['below_p10'])} | "
                     f"{format_percent(row['above_p90'])} | {row['mean_width_percent']:.2f} % |")
    lines.append(f"| all | {job['jobs']} | {format_percent(job['pit_coverage_80'])} | "
                 f"{format_percent(job['coverage_80'])} | | | |")

    lines += ["", "## Cheapest window and placement", "",
              "Extra cost is the total actual cost of the choices over the total hindsight-best "
              "cost. A win is a decision where the choice differs from \"cheapest right now\" "
              "and actually cost less; a tie cost the same. Rows marked \"no margin\" take the "
              "lowest expected cost however small the saving.", "",
              "| decision | decisions | extra cost, forecast | extra cost, cheapest now | "
              "choices differ | wins | ties | losses | win rate where choices differ |",
              "|---|---|---|---|---|---|---|---|---|"]
    for kind in ("cheapest_window", "placement"):
        for name, row in results[kind].items():
            shown = name.replace("_no_margin", ", no margin")
            lines.append(
                f"| {shown} | {row['decisions']} | {row['extra_cost_percent']:.3f} % | "
                f"{row['baseline_extra_cost_percent']:.3f} % | {row['choices_differ']} | "
                f"{row['wins']} | {row['ties']} | {row['losses']} | "
                f"{format_percent(row['win_rate_where_choices_differ'])} |"
            )

    risk = results["price_risk"]
    raw = results["price_risk_uncalibrated"]
    fixed = results.get("price_risk_fixed_map")
    fixed_text = ("" if fixed is None or not paths["fitting"].get("recalibration", {}).get("enabled")
                  else " With the map fitted before the cut-off kept for the whole period, it "
                  f"was {fixed['max_gap_points']:.1f} points.")
    lines += ["", "## Price risk", "",
              f"{risk['decisions']} probabilities ({risk['events']} exceedances) of a rise of "
              "1, 2, 5 or 10 % above the last price within 24 or 72 hours. Deciles with at least "
              f"{risk['min_decisions_per_decile']} decisions are judged. Before the isotonic "
              f"map the largest gap was {raw['max_gap_points']:.1f} points.{fixed_text}", "",
              "| predicted probability | decisions | events | mean predicted | observed | judged |",
              "|---|---|---|---|---|---|"]
    for row in risk["deciles"]:
        if row["decisions"] == 0:
            lines.append(f"| {row['decile']} | 0 | | | | no |")
            continue
        lines.append(f"| {row['decile']} | {row['decisions']} | {row['events']} | "
                     f"{format_percent(row['mean_probability'])} | "
                     f"{format_percent(row['observed_frequency'])} | "
                     f"{'yes' if row['judged'] else 'no'} |")
    lines += ["", "| window, rise | decisions | mean predicted | observed | Brier |",
              "|---|---|---|---|---|"]
    for name, row in risk["by_setting"].items():
        lines.append(f"| {name} | {row['decisions']} | {format_percent(row['mean_probability'])} "
                     f"| {format_percent(row['observed_frequency'])} | {row['brier']:.4f} |")
    lines += [
        "",
        "## Limits",
        "",
        *placement_limit(paths),
        "- The calibration days and the evaluation period differ: prices moved more often after "
        "the cut-off. A risk map kept from before the cut-off under-states the risk (see the "
        "gap above). The daily refits correct that only in part, because they lag the market "
        "by the 72 hours an outcome takes plus the two weeks they average over.",
        "- Origins are one day apart and the series of one origin move together, so the "
        "decisions are not independent; treat differences of a point or two as noise.",
        "- The fit belongs to the model it was made with. The served model, trained on all the "
        "data, uses it until `spot-forecast calibrate` refits its cost levels and risk map; "
        "`rho` and the margins stay as fitted here.",
        "",
    ]
    return "\n".join(lines)


REPORT_COMMAND = "python -m spot_forecast.decision_backtest"
#: Name of the model that ``--train`` saves.
DEV_MODEL_NAME = "spot_lstm_dev"


def bundle_forecaster(bundle) -> Forecaster:
    """Forecasts with a loaded bundle's network, scaler and guard, as the service makes them."""
    from spot_forecast.forecast import Guard, Predictor, forecast_histories

    predictor = Predictor(bundle.model, bundle.lookback)
    guard = Guard.from_metadata(bundle.metadata)

    def forecast(histories):
        return forecast_histories(predictor, histories, scaler=bundle.scaler,
                                  quantiles=bundle.quantiles, guard=guard)

    return forecast


def write_report(results: dict[str, Any], model_tag: str, folder: Path) -> tuple[Path, Path]:
    """Write ``decisions.json`` and ``decisions.md`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "decisions.json"
    markdown_path = folder / "decisions.md"
    json_path.write_text(json.dumps({**results, "model": model_tag}, indent=2) + "\n")
    markdown_path.write_text(format_report(results, model_tag))
    return json_path, markdown_path


def train_before_cutoff(table: pd.DataFrame, cutoff: pd.Timestamp) -> str:
    """Train a model with the default settings on events before ``cutoff``; returns its tag.

    It is saved as ``spot_lstm_dev``, so the served ``spot_lstm`` stays as it is. About 9 minutes
    on 2 shared CPU cores.
    """
    from spot_forecast.config import Settings
    from spot_forecast.training import train

    events = table[table["ds"] < cutoff].reset_index(drop=True)
    result = train(Settings(model_name=DEV_MODEL_NAME), events=events, save=True, verbose=2)
    assert result.tag is not None  # save=True always returns the tag
    return result.tag


def run(model_tag: str | None, data_paths: Sequence[Path], out: Path,
        config: DecisionConfig = DecisionConfig(),
        table: pd.DataFrame | None = None) -> dict[str, Any]:
    """Load (or train) the model, read the data, replay the decisions and write the report.

    ``table`` contains price events already read from ``data_paths``, so they are not read twice.
    """
    from spot_forecast.ingest import read_prices
    from spot_forecast.store import load_bundle

    if table is None:
        table, _ = read_prices(list(data_paths))
    if model_tag is None:
        model_tag = train_before_cutoff(table, config.cutoff)
    bundle = load_bundle(model_tag)
    cutoff_in_model = (bundle.metadata.get("training_window") or {}).get("end")
    if cutoff_in_model and pd.Timestamp(cutoff_in_model) >= config.cutoff:
        raise ValueError(
            f"model {bundle.tag} was trained on data up to {cutoff_in_model}, which reaches the "
            f"evaluation period starting {config.cutoff.isoformat()}; train a model on data "
            "before the cut-off"
        )
    panel = to_panel(table, freq=bundle.freq)
    results = replay(panel, bundle_forecaster(bundle), config)
    results["model"] = bundle.tag
    write_report(results, bundle.tag, out)
    return results


def save_defaults(results: dict[str, Any]) -> Path:
    """Write the fitted path model to ``path_model.json`` beside ``decisions``."""
    from spot_forecast import decisions

    setup = results["setup"]
    fitted = {key: results["sample_paths"][key]
              for key in ("rho", "cost_levels", "risk_knots", "min_saving_percent",
                          "rank_min_saving_percent")}
    fitted["risk_max_rise_percent"] = results["sample_paths"].get(
        "risk_max_rise_percent", max(results["setup"]["config"]["risk_rise_percent"]))
    payload = {
        "fitted_on": f"decision backtest of {results['model']}, calibration origins "
                     f"{setup['calibration_origins'][0]} to {setup['calibration_origins'][-1]}",
        "n_paths": decisions.DEFAULT_PATHS,
        **fitted,
    }
    path = Path(decisions.__file__).with_name(decisions.PATH_MODEL_FILE)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m spot_forecast.decision_backtest --model TAG``."""
    from spot_forecast.config import Settings
    from spot_forecast.store import ModelFormatError

    parser = argparse.ArgumentParser(
        prog=REPORT_COMMAND,
        description="Replay job-cost, cheapest-window, placement and price-risk decisions over "
        "the evaluation period and write decisions.md and decisions.json.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model",
                        help="model tag in the BentoML store, trained on data before the cut-off")
    source.add_argument("--train", action="store_true",
                        help=f"first train {DEV_MODEL_NAME} on data before the cut-off "
                        "(about 9 minutes on 2 cores)")
    parser.add_argument("--data", type=Path, nargs="+", help="price files (default: settings)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="report folder")
    parser.add_argument("--groups", type=int, default=DecisionConfig.groups,
                        help="(pool, product) groups to sample, each with all its instance "
                        "types and zones")
    parser.add_argument("--save-defaults", action="store_true",
                        help="also write the fitted path model to the package's path_model.json, "
                        "which the service uses for bundles without their own")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = DecisionConfig(groups=args.groups)
    try:
        results = run(args.model, args.data or Settings().data_paths, args.out, config)
    except (ValueError, ModelFormatError) as error:  # unreadable prices, unknown or unfit model
        print(f"{REPORT_COMMAND}: error: {error}", file=sys.stderr)
        return 2
    if args.save_defaults:
        save_defaults(results)
    for name, row in results["targets"].items():
        print(f"{'met' if row['met'] else 'NOT MET'}: {name}: {row['value']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
