"""Placement headroom: can any forecast from price history beat "cheapest right now" at placement?

The placement target of the decision backtest: the zone and instance type that ``/rank``
chooses must cost less than "cheapest right now" in at least 60 % of the decisions where the two
differ. This study measures how much room the prices leave for that, independently of the
network:

* **Headroom.** At each origin, each (pool, product) group of series has one series cheapest at
  the origin. The study counts how often another series of the group turns out strictly cheaper
  over the next 24 or 72 hours, and by how much. A forecast can only win where this happens.
* **A direct cross-series classifier.** A gradient-boosted classifier reads features of each pair
  (series cheapest now, other series of its group) from the two price histories. They are the
  price gap now, each side's change over 6 to 168 hours, how often each changed, how much of the
  last week the other was the cheaper, and the gap of their weekly means. It predicts whether
  the other series will cost strictly less over the window. It is trained on origins before the 14
  calibration days, and its choices (switch to the most probable candidate when the probability
  clears a threshold) are judged on the calibration days and, with no refit, after the cut-off.

If a classifier aimed at exactly this decision, with the inputs that cross-series network
features would add, cannot reach the 60 % win rate, a network with those inputs is not expected to.

Run ``python -m spot_forecast.placement_headroom`` (about 30 seconds on 2 cores). It writes
``placement-headroom.md`` and ``placement-headroom.json`` (default folder ``docs/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spot_forecast.decision_backtest import (
    COST_TOLERANCE,
    DEV_CUTOFF,
    MIN_WIN_RATE,
    format_percent,
    pool_groups,
)
from spot_forecast.grid import Panel, to_panel
from spot_forecast.series import split_series_id

logger = logging.getLogger(__name__)

#: Hours before an origin that the pair features read.
FEATURE_HOURS = 168
#: Hours over which the features measure each side's price change.
CHANGE_HOURS = (6, 24, 72, 168)
FEATURE_NAMES = (
    "log gap now (other / cheapest now)",
    *(f"log change over {h} h, {side}" for h in CHANGE_HOURS for side in ("cheapest now", "other")),
    *(f"price changes in {h} h, {side}" for h in (24, 168) for side in ("cheapest now", "other")),
    "share of the last 168 h the other was cheaper",
    "log gap of 168-hour means",
    "same instance type (zone move)",
)


#: Settings of the pair classifier (scikit-learn ``HistGradientBoostingClassifier``).
CLASSIFIER = {"max_depth": 3, "min_samples_leaf": 500, "max_iter": 100, "learning_rate": 0.05,
              "l2_regularization": 1.0}


@dataclass(frozen=True)
class HeadroomConfig:
    """Scope of the study; the defaults match the decision backtest's development split."""

    cutoff: pd.Timestamp = DEV_CUTOFF
    calibration_days: int = 14
    hours: tuple[int, ...] = (24, 72)
    products: tuple[str, ...] = ("Linux/UNIX", "Windows")
    #: Hours between the origins that train the classifier.
    train_every_hours: int = 4
    #: Hours between the origins that judge it (as the backtest's calibration origins).
    judge_every_hours: int = 8
    #: The classifier's choice replaces "cheapest right now" when its probability exceeds the
    #: level that this share of the training pairs exceeds: the most confident switches first.
    switch_shares: tuple[float, ...] = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002)
    seed: int = 20220211


@dataclass
class PriceMatrix:
    """Hourly prices of many series on one grid: ``values[k, i]`` at ``start + i`` hours, NaN
    before a series begins."""

    unique_ids: list[str]
    start: pd.Timestamp
    values: np.ndarray

    def position(self, timestamp: pd.Timestamp) -> int:
        return int((pd.Timestamp(timestamp) - self.start) // pd.Timedelta(hours=1))


def price_matrix(panel: Panel, products: Sequence[str]) -> PriceMatrix:
    """Stack the series of the given products into one matrix on the panel's common end."""
    chosen = [s for s in panel if split_series_id(s.unique_id)[2] in products]
    if not chosen:
        raise ValueError(f"the prices hold no series of the products {list(products)}")
    start = min(s.start for s in chosen)
    length = int((panel.end - start) // panel.step) + 1
    values = np.full((len(chosen), length), np.nan)
    for row, series in enumerate(chosen):
        first = int((series.start - start) // panel.step)
        values[row, first:first + len(series.values)] = series.values
    return PriceMatrix([s.unique_id for s in chosen], start, values)


@dataclass
class Decisions:
    """Placement decisions at many (origin, group) pairs for one window length.

    One row per (decision, other series): ``features`` has shape ``(n, len(FEATURE_NAMES))``.
    ``beats`` and ``loses`` mark whether the other series cost strictly less or more than the
    series cheapest now over the window. ``decision`` numbers the (origin, group) pair.
    ``saving`` holds, per decision, the hindsight best's saving over "cheapest right now" as a
    share of its cost (0 where cheapest right now was the best), and ``tied_now`` whether
    another series had the same lowest price at the origin.
    """

    features: np.ndarray
    beats: np.ndarray
    loses: np.ndarray
    decision: np.ndarray
    saving: np.ndarray
    tied_now: np.ndarray


def pair_features(window: np.ndarray, baseline: int, same_type: np.ndarray) -> np.ndarray:
    """Compute the features of every other series of a group against the one cheapest now.

    ``window`` contains the group's prices over the ``FEATURE_HOURS + 1`` hours ending at the
    origin, shape ``(n, FEATURE_HOURS + 1)``. Returns ``(n - 1, len(FEATURE_NAMES))`` rows in
    series order, the baseline's row left out.
    """
    logs = np.log(window)
    others = np.delete(np.arange(len(window)), baseline)
    last = logs[:, -1]
    columns = [last[others] - last[baseline]]
    for hours in CHANGE_HOURS:
        change = last - logs[:, -1 - hours]
        columns += [np.full(len(others), change[baseline]), change[others]]
    for hours in (24, 168):
        changes = np.count_nonzero(np.diff(window[:, -1 - hours:], axis=1), axis=1)
        columns += [np.full(len(others), changes[baseline]), changes[others]]
    columns.append((window[others] < window[baseline]).mean(axis=1))
    means = np.log(window.mean(axis=1))
    columns.append(means[others] - means[baseline])
    columns.append(same_type[others].astype(np.float64))
    return np.stack(columns, axis=1)


def collect_decisions(prices: PriceMatrix, groups: Sequence[np.ndarray], origins: Sequence[int],
                      hours: int) -> Decisions:
    """Collect the placement decisions of every group with complete prices around each origin.

    A group is judged at an origin when all its series have prices from ``FEATURE_HOURS`` before
    it to ``hours`` after it. "Cheapest right now" is the lowest price at the origin (the first on
    ties, as in the backtest). Each window's cost is the sum of its ``hours`` prices after it.
    """
    features, beats, loses, decision, saving, tied_now = [], [], [], [], [], []
    instance_types = np.array([split_series_id(u)[1] for u in prices.unique_ids])
    for origin in origins:
        if origin < FEATURE_HOURS or origin + hours >= prices.values.shape[1]:
            continue
        for rows in groups:
            block = prices.values[rows, origin - FEATURE_HOURS:origin + hours + 1]
            if len(rows) < 2 or np.isnan(block).any():
                continue
            window = block[:, :FEATURE_HOURS + 1]
            cost = block[:, FEATURE_HOURS + 1:].sum(axis=1)
            baseline = int(np.argmin(window[:, -1]))
            others = np.delete(np.arange(len(rows)), baseline)
            tolerance = COST_TOLERANCE * max(cost[baseline], 1.0)
            features.append(pair_features(window, baseline,
                                          instance_types[rows] == instance_types[rows][baseline]))
            beats.append(cost[others] < cost[baseline] - tolerance)
            loses.append(cost[others] > cost[baseline] + tolerance)
            decision.append(np.full(len(others), len(saving)))
            saving.append(max(0.0, 1.0 - cost.min() / cost[baseline]))
            tied_now.append(np.count_nonzero(window[:, -1] == window[baseline, -1]) > 1)
    if not saving:
        return Decisions(np.zeros((0, len(FEATURE_NAMES))), np.zeros(0, bool), np.zeros(0, bool),
                         np.zeros(0, int), np.zeros(0), np.zeros(0, bool))
    return Decisions(np.concatenate(features), np.concatenate(beats), np.concatenate(loses),
                     np.concatenate(decision), np.array(saving), np.array(tied_now))


def headroom(decisions: Decisions) -> dict[str, Any]:
    """Count how often, and by how much, the hindsight best beat "cheapest right now"."""
    beaten = decisions.saving > 0
    savings = decisions.saving[beaten]
    return {
        "decisions": int(len(decisions.saving)),
        "best_beats_cheapest_now": int(beaten.sum()),
        "share": float(beaten.mean()) if len(beaten) else None,
        # Decisions where "cheapest right now" had to pick among several equal prices.
        "tied_now": int(decisions.tied_now.sum()),
        "median_saving_percent": float(100 * np.median(savings)) if len(savings) else None,
        "p90_saving_percent": float(100 * np.quantile(savings, 0.9)) if len(savings) else None,
        # Extra cost of always choosing the series cheapest now, over the hindsight best.
        "cheapest_now_extra_cost_percent": float(100 * decisions.saving.mean())
        if len(beaten) else None,
    }


def fit_classifier(decisions: Decisions, seed: int):
    """Fit the gradient-boosted pair classifier on training decisions with at least one crossing.

    Shallow trees with large leaves and an L2 penalty: deeper trees fitted the few hundred
    training crossings closely and chose worse on the calibration days. Because those days chose
    the settings, the figures after the cut-off are the clean test.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(max_depth=CLASSIFIER["max_depth"],
                                           min_samples_leaf=CLASSIFIER["min_samples_leaf"],
                                           max_iter=CLASSIFIER["max_iter"],
                                           learning_rate=CLASSIFIER["learning_rate"],
                                           l2_regularization=CLASSIFIER["l2_regularization"],
                                           random_state=seed)
    return model.fit(decisions.features, decisions.beats)


def judge(probability: np.ndarray, decisions: Decisions,
          thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Win rate of switching to each decision's most probable candidate above each threshold.

    A decision counts as differing when its best candidate's probability exceeds the threshold.
    It is won when that candidate cost strictly less than "cheapest right now", and lost when it
    cost strictly more.
    """
    n = len(decisions.saving)
    top = np.full(n, -1.0)
    np.maximum.at(top, decisions.decision, probability)
    is_top = probability == top[decisions.decision]
    # One row per decision: the first candidate with the top probability.
    first = np.flatnonzero(is_top)
    first = first[np.unique(decisions.decision[first], return_index=True)[1]]
    rows = []
    for threshold in thresholds:
        chosen = first[probability[first] > threshold]
        wins, losses = int(decisions.beats[chosen].sum()), int(decisions.loses[chosen].sum())
        rows.append({
            "threshold": threshold,
            "differing": int(len(chosen)),
            "wins": wins,
            "losses": losses,
            "win_rate": wins / len(chosen) if len(chosen) else None,
        })
    return rows


def origin_positions(prices: PriceMatrix, first: pd.Timestamp, last: pd.Timestamp,
                     every: int) -> list[int]:
    """Grid positions of origins every ``every`` hours from ``first`` while at most ``last``."""
    return [prices.position(t) for t in pd.date_range(first, last, freq=pd.Timedelta(hours=every))]


def study(table: pd.DataFrame, config: HeadroomConfig = HeadroomConfig()) -> dict[str, Any]:
    """Run the study on a canonical price table; returns the results as plain data."""
    started = time.perf_counter()
    prices = price_matrix(to_panel(table, freq="1h"), config.products)
    groups = pool_groups(prices.unique_ids)
    grid_end = prices.start + pd.Timedelta(hours=prices.values.shape[1] - 1)
    calibration_start = config.cutoff - pd.Timedelta(days=config.calibration_days)
    first = prices.start + pd.Timedelta(hours=FEATURE_HOURS)

    results: dict[str, Any] = {"setup": {**asdict(config), "cutoff": config.cutoff.isoformat(),
                                         "series": len(prices.unique_ids),
                                         "groups": len(groups),
                                         "features": list(FEATURE_NAMES)},
                               "windows": {}}
    for hours in config.hours:
        window = pd.Timedelta(hours=hours)
        # Every period's outcomes end before the next one's origins begin, so training outcomes
        # never reach the calibration days and calibration outcomes never reach the cut-off.
        periods = {
            "training": (first, calibration_start - window - pd.Timedelta(hours=1),
                         config.train_every_hours),
            "calibration": (calibration_start, config.cutoff - window - pd.Timedelta(hours=1),
                            config.judge_every_hours),
            "evaluation": (config.cutoff, grid_end - window, config.judge_every_hours),
        }
        decisions = {
            name: collect_decisions(prices, groups, origin_positions(prices, *span), hours)
            for name, span in periods.items()
        }
        logger.info("%d h windows: %s decisions", hours,
                    {name: len(d.saving) for name, d in decisions.items()})
        for name in ("training", "calibration"):
            if len(decisions[name].saving) == 0:
                low, high, _ = periods[name]
                raise ValueError(
                    f"no {hours}-hour placement decision falls in the {name} period "
                    f"({low.isoformat()} to {high.isoformat()}): the study needs pools of two or "
                    f"more series with prices from {FEATURE_HOURS} hours before an origin to "
                    f"{hours} hours after it. " + cutoff_advice(config, prices.start, grid_end)
                )
        row: dict[str, Any] = {"headroom": {name: headroom(judged)
                                            for name, judged in decisions.items()},
                               "classifier": {}, "thresholds": []}
        if not decisions["training"].beats.any():
            # Nothing to learn from: every training placement kept the cheapest series.
            row["classifier_skipped"] = ("no placement in the training period beat "
                                         "\"cheapest right now\", so there was nothing to learn")
        else:
            classifier = fit_classifier(decisions["training"], config.seed)
            fitted = classifier.predict_proba(decisions["training"].features)[:, 1]
            row["thresholds"] = [float(np.quantile(fitted, 1 - share))
                                 for share in config.switch_shares]
            for name in ("calibration", "evaluation"):
                judged = decisions[name]
                if len(judged.saving):
                    probability = classifier.predict_proba(judged.features)[:, 1]
                    row["classifier"][name] = judge(probability, judged, row["thresholds"])
        row["periods"] = {name: [span[0].isoformat(), span[1].isoformat()]
                          for name, span in periods.items()}
        results["windows"][f"{hours}h"] = row
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def cutoff_advice(config: HeadroomConfig, start: pd.Timestamp, end: pd.Timestamp) -> str:
    """Say which way to move a cut-off that leaves a period of the study empty."""
    span = f"the prices run from {start.isoformat()} to {end.isoformat()}"
    if config.cutoff > end:
        return (f"The cut-off {config.cutoff.isoformat()} is after the last price ({span}): "
                "pass an earlier --cutoff")
    return (f"Pass a later --cutoff ({span}, and training origins end "
            f"{config.calibration_days} days before the cut-off) or prices that cover more time")


def best_win_rate(rows: Sequence[dict[str, Any]], min_differing: int = 20) -> float | None:
    """Highest win rate among thresholds with at least ``min_differing`` differing decisions."""
    rates = [r["win_rate"] for r in rows if r["differing"] >= min_differing]
    return max(rates) if rates else None


def _hours(window: str) -> str:
    return window.replace("h", " h")


def format_report(results: dict[str, Any], command: str, sources: Sequence[str]) -> str:
    """Format the Markdown report of a study run by ``command`` on the price files ``sources``."""
    setup = results["setup"]
    same_split = pd.Timestamp(setup["cutoff"]) == DEV_CUTOFF
    lines = [
        "# Placement headroom",
        "",
        f"Generated by `{command}` in {results['seconds']:.0f} s from "
        f"{', '.join(f'`{source}`' for source in sources)}: {setup['series']} series of "
        f"{setup['groups']} (pool, product) groups of the products "
        f"{' and '.join(setup['products'])}. The cut-off is {setup['cutoff']}"
        + (", as in the decision backtest ([decisions.md](decisions.md))" if same_split else "")
        + ". A placement is one job over the window, placed once on any series of its group. "
        "\"Cheapest right now\" is the series with the lowest price at the origin.",
        "",
        "## How often any choice could beat \"cheapest right now\"",
        "",
        "| window | period | decisions | several tied cheapest now | hindsight best beats it | "
        "median saving then | 90th percentile | its extra cost over the best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for window, row in results["windows"].items():
        for period, figures in row["headroom"].items():
            lines.append(
                f"| {_hours(window)} | {period} | {figures['decisions']} | {figures['tied_now']} | "
                f"{figures['best_beats_cheapest_now']} ({format_percent(figures['share'])}) | "
                f"{_number(figures['median_saving_percent'])} | "
                f"{_number(figures['p90_saving_percent'])} | "
                f"{_number(figures['cheapest_now_extra_cost_percent'], 3)} |"
            )
    settings = ", ".join(f"{key} {value}" for key, value in CLASSIFIER.items())
    lines += [
        "",
        "## A classifier aimed at the decision",
        "",
        f"Gradient-boosted trees (scikit-learn `HistGradientBoostingClassifier`, {settings}) "
        "predict, for each other series of a group, whether it will cost strictly less over the "
        "window than the series cheapest now. It reads these inputs from the two price "
        "histories up to the origin:",
        "",
        *(f"- {name}" for name in setup["features"]),
        "",
        "Trained on "
        f"origins every {setup['train_every_hours']} hours before the calibration days, whose "
        "outcomes all end before them; judged on origins every "
        f"{setup['judge_every_hours']} hours on the calibration days and after the cut-off with "
        "no refit. At each decision the choice switches to the candidate with the highest "
        "probability when it exceeds the threshold. The thresholds are the probabilities that "
        f"{', '.join(f'{100 * share:g} %' for share in setup['switch_shares'])} of the training "
        "pairs exceed.",
        "",
        "| window | period | threshold | differing decisions | wins | losses | win rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for window, row in results["windows"].items():
        for period, rows in row["classifier"].items():
            for judged in rows:
                lines.append(
                    f"| {_hours(window)} | {period} | {judged['threshold']:.3f} | "
                    f"{judged['differing']} | {judged['wins']} | {judged['losses']} | "
                    f"{format_percent(judged['win_rate'])} |"
                )
    lines += ["", "## Reading", "", *conclusion(results), ""]
    return "\n".join(lines)


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} %"


def conclusion(results: dict[str, Any]) -> list[str]:
    """Sentences that state what the figures imply for the placement target."""
    lines = []
    for window, row in results["windows"].items():
        calibration = row["headroom"]["calibration"]
        best = best_win_rate(row["classifier"].get("calibration", []))
        after = best_win_rate(row["classifier"].get("evaluation", []))
        if "classifier_skipped" in row:
            judged = f"The classifier was not trained: {row['classifier_skipped']}."
        elif best is None:
            judged = ("On the calibration days the classifier made fewer than 20 switches at "
                      "every threshold, too few to judge.")
        else:
            verdict = "reaches" if best >= MIN_WIN_RATE else "stays below"
            judged = (f"On the calibration days the classifier won {format_percent(best)} of "
                      "its switches at best (thresholds with at least 20 of them), which "
                      f"{verdict} the {100 * MIN_WIN_RATE:g} % target.")
        if "classifier_skipped" not in row:
            if after is None:
                judged += " After the cut-off it made too few switches to judge."
            else:
                judged += f" After the cut-off its best is {format_percent(after)}."
        share = format_percent(calibration["share"])
        extra = _number(calibration["cheapest_now_extra_cost_percent"], 3)
        lines.append(
            f"- {_hours(window)} windows: the hindsight best beat \"cheapest right now\" in "
            f"{share} of the calibration decisions, and always choosing the series cheapest now "
            f"cost {extra} more than the hindsight best there. {judged}"
        )
    return lines


PROG = "python -m spot_forecast.placement_headroom"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m spot_forecast.placement_headroom``."""
    from spot_forecast.config import Settings
    from spot_forecast.ingest import read_prices

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Measure how often any placement choice could beat \"cheapest right now\", "
        "and how a classifier with cross-series inputs does; write placement-headroom.md and "
        ".json.",
    )
    parser.add_argument("--data", type=Path, nargs="+", help="price files (default: settings)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="report folder")
    parser.add_argument("--cutoff", type=pd.Timestamp, default=DEV_CUTOFF,
                        help="start of the evaluation period, a UTC time "
                        f"(default {DEV_CUTOFF.isoformat()}, the bundled data's split)")
    args = parser.parse_args(argv)
    cutoff = args.cutoff.tz_localize("UTC") if args.cutoff.tzinfo is None else args.cutoff
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = list(args.data or Settings().data_paths)
    try:
        table, _ = read_prices(paths)
        results = study(table, HeadroomConfig(cutoff=cutoff.tz_convert("UTC")))
    except ValueError as error:  # unreadable prices, or none of the studied products
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "placement-headroom.json").write_text(json.dumps(results, indent=2) + "\n")
    command = PROG
    if args.data:
        command += " --data " + " ".join(str(path) for path in args.data)
    if cutoff != DEV_CUTOFF:
        command += f" --cutoff {cutoff.isoformat()}"
    if args.out != Path("docs"):
        command += f" --out {args.out}"
    report = format_report(results, command, [os.path.relpath(path) for path in paths])
    (args.out / "placement-headroom.md").write_text(report)
    for line in conclusion(results):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
