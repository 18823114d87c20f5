"""Decisions from quantile forecasts: job cost, cheapest start time, placement and price risk.

A forecast gives quantiles of the price at each hour on its own. The cost of a job is a sum of
hourly prices, and the 10th percentile of a sum is not the sum of the 10th percentiles unless the
hours move in perfect lockstep. So every decision here works on **sample paths**: joint draws of
the hourly prices whose marginals are the forecast's quantile curves.

Sample-path method (a Gaussian copula with an AR(1) latent process):

1. Each path draws latent normal scores ``z_1 .. z_H`` from a stationary AR(1) process,
   ``z_1 ~ N(0, 1)`` and ``z_h = rho * z_(h-1) + sqrt(1 - rho**2) * e_h`` with ``e_h ~ N(0, 1)``.
   Every ``z_h`` is standard normal, and two hours ``k`` apart correlate by ``rho**k``.
2. The price of hour ``h`` is the forecast's quantile function at level ``Phi(z_h)``. The
   quantile function is the log price interpolated linearly against the normal scores of the
   forecast's levels (``Phi^-1(0.05) .. Phi^-1(0.95)``), and extended past the outermost levels
   with the slope of the outermost segment, so the tails behave like a log-normal one.
3. A job's cost on a path is the sum of price times the hours the job overlaps each grid hour.
   Its percentiles are the empirical percentiles over the paths. Its expected cost is the sum of
   the marginal means, computed on a fixed grid of levels so that it does not depend on the draw.

``rho`` sets how persistent a path is. With ``rho = 1`` a path stays at one quantile level for
the whole horizon and the percentiles of a sum become sums of percentiles. With ``rho = 0`` the
hours are independent and the spread of a long job shrinks. The decision backtest picks ``rho``
from a grid by the Brier score of the risk probabilities (0.9 for the shipped fit). The path
levels of job costs are recalibrated after it, so the cost intervals do not rest on ``rho``
alone.

Corrections are fitted on calibration days before the evaluation period (see
``decision_backtest``), because the cost of a job and the peak price of a window depend on how
the hours move together, which the copula only approximates, and because the hourly intervals
are calibrated one hour at a time: the path levels reported as the 10th, 50th and 90th cost
percentiles, by job length (quantile recalibration of the job-cost PIT), and an isotonic map
from path exceedance frequencies to probabilities. With them come the smallest expected
savings for which a recommendation leaves "cheapest right now": one to start later on the
series cheapest now, one to move to another series. A bundle may carry its own fit under
``metadata["sample_paths"]``, which ``spot-forecast calibrate`` (``calibration``) refreshes
from recent prices. Otherwise the values in ``path_model.json`` beside this module apply, which
``decision_backtest --save-defaults`` wrote from the development backtest in
``docs/decisions.md``. The ``DEFAULT_*`` constants below are the uncalibrated fallbacks.

Grid convention (as in ``grid``): grid point ``j`` is the time ``last_ds + j`` hours and its price
is in force until the next grid point. Point 0 is the last observed price, known for sure, and
points ``1 .. H`` are the forecast steps. A job that starts at ``last_ds`` therefore pays the last
observed price for its first hour.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from spot_forecast.forecast import Forecast

HOUR = pd.Timedelta(hours=1)

#: Lag-1 correlation of the latent normal scores between consecutive hours.
DEFAULT_RHO = 0.99
#: Rows ``(job hours, level of p10, level of p50, level of p90)``: the path levels reported as
#: the 10th, 50th and 90th cost percentiles, interpolated in log job hours between rows.
DEFAULT_COST_LEVELS: tuple[tuple[float, float, float, float], ...] = ((1.0, 0.1, 0.5, 0.9),)
#: Isotonic map from path exceedance frequency to probability: knots ``(x, y)``.
DEFAULT_RISK_KNOTS: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0, 1.0), (0.0, 1.0))
#: Expected saving, in percent of the "cheapest right now" cost, below which it is recommended.
DEFAULT_MIN_SAVING_PERCENT = 0.1
#: Largest rise the shipped risk map was fitted on (the decision backtest tries 1 to 10 %).
DEFAULT_RISK_MAX_RISE_PERCENT = 10.0
#: Fitted path-model values shipped beside this module.
PATH_MODEL_FILE = "path_model.json"
#: Paths drawn per forecast. The Monte Carlo error of a 10th percentile with 2,000 paths is
#: about 0.7 percentage points of level, small beside the width of an 80 % interval.
DEFAULT_PATHS = 2000

_STANDARD_NORMAL = NormalDist()
#: Normal scores of 1,000 evenly spaced levels, for marginal means by the midpoint rule.
_MEAN_GRID = np.array(
    [_STANDARD_NORMAL.inv_cdf((i + 0.5) / 1000) for i in range(1000)], dtype=np.float64
)


@dataclass(frozen=True)
class PathModel:
    """Settings of the sample paths: AR(1) correlation, path count, seed and calibration.

    The seed is fixed, so the same request always gets the same percentiles.
    """

    rho: float = DEFAULT_RHO
    n_paths: int = DEFAULT_PATHS
    seed: int = 0
    cost_levels: tuple[tuple[float, float, float, float], ...] = DEFAULT_COST_LEVELS
    risk_knots: tuple[tuple[float, ...], tuple[float, ...]] = DEFAULT_RISK_KNOTS
    #: Expected saving, in percent of the cheapest-now cost, that a later start on the series
    #: cheapest now needs to be recommended by ``/cheapest_window``.
    min_saving_percent: float = DEFAULT_MIN_SAVING_PERCENT
    #: Expected saving that another series needs: another candidate in ``/rank``, another zone
    #: in ``/cheapest_window``. 100 keeps recommendations with the candidate cheapest now.
    rank_min_saving_percent: float = DEFAULT_MIN_SAVING_PERCENT
    #: Largest rise above the last price, in percent, that the risk map was fitted on.
    risk_max_rise_percent: float = DEFAULT_RISK_MAX_RISE_PERCENT

    def __post_init__(self) -> None:
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho is {self.rho}; it must be between 0 and 1")
        if self.n_paths < 10:
            raise ValueError(f"n_paths is {self.n_paths}; draw at least 10 paths")

    @classmethod
    def from_metadata(cls, metadata: dict) -> PathModel:
        """Build the path model that bundle metadata names under ``sample_paths``.

        Without it, the fit of ``path_model.json`` applies.
        """
        # NOTE: path_model.json was fitted on a model trained before 2022-02-11. A bundle trained
        # on other data gets those corrections until `spot-forecast calibrate` stores its own
        # cost levels and risk map; rho and the margins come from path_model.json even then.
        stored = metadata.get("sample_paths") or packaged_path_model()
        knots = stored.get("risk_knots", DEFAULT_RISK_KNOTS)
        return cls(
            rho=float(stored.get("rho", DEFAULT_RHO)),
            n_paths=int(stored.get("n_paths", DEFAULT_PATHS)),
            cost_levels=tuple(
                tuple(float(x) for x in row) for row in stored.get("cost_levels", DEFAULT_COST_LEVELS)
            ),
            risk_knots=(tuple(map(float, knots[0])), tuple(map(float, knots[1]))),
            min_saving_percent=float(
                stored.get("min_saving_percent", DEFAULT_MIN_SAVING_PERCENT)
            ),
            rank_min_saving_percent=float(
                stored.get("rank_min_saving_percent",
                           stored.get("min_saving_percent", DEFAULT_MIN_SAVING_PERCENT))
            ),
            risk_max_rise_percent=float(
                stored.get("risk_max_rise_percent", DEFAULT_RISK_MAX_RISE_PERCENT)
            ),
        )

    def levels_for(self, hours: float) -> tuple[float, float, float]:
        """Path levels reported as the 10th, 50th and 90th percentiles of a job of ``hours``."""
        table = np.array(sorted(self.cost_levels), dtype=np.float64)
        position = np.log(max(hours, 1e-6))
        return tuple(
            float(np.interp(position, np.log(table[:, 0]), table[:, column]))
            for column in (1, 2, 3)
        )

    def risk_probability(self, frequency: np.ndarray | float) -> np.ndarray:
        """Calibrated probability of a path exceedance frequency (monotone, 0 to 1)."""
        x, y = self.risk_knots
        return np.clip(np.interp(frequency, x, y), 0.0, 1.0)

    def latent(self, horizon: int) -> np.ndarray:
        """Standard normal scores with AR(1) correlation, shape ``(n_paths, horizon)``.

        The array is cached per horizon and read-only.
        """
        return _ar1_scores(self.rho, self.n_paths, self.seed, horizon)

    def describe(self) -> str:
        """One line naming the method and its parameters, for responses and reports."""
        levels = "; ".join(
            f"{hours:g} h: {low:.3f}, {middle:.3f}, {high:.3f}"
            for hours, low, middle, high in self.cost_levels
        )
        return (
            f"sample paths: Gaussian copula with AR(1) latent scores across hours, "
            f"rho={self.rho:g}, {self.n_paths} paths, seed {self.seed}; cost percentiles read "
            f"at recalibrated path levels by job length ({levels}); risk probabilities "
            f"recalibrated with an isotonic map"
        )


@dataclass(frozen=True)
class CostSummary:
    """Expected cost and its 10th, 50th and 90th percentiles, in USD."""

    expected: float
    p10: float
    p50: float
    p90: float


@lru_cache(maxsize=1)
def packaged_path_model() -> dict:
    """The fitted values in ``path_model.json`` beside this module, or {} when it is missing."""
    path = Path(__file__).with_name(PATH_MODEL_FILE)
    if not path.exists():
        return {}
    return json.loads(path.read_text())


@lru_cache(maxsize=16)
def _ar1_scores(rho: float, n_paths: int, seed: int, horizon: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shocks = rng.standard_normal((n_paths, horizon))
    scores = np.empty_like(shocks)
    innovation = np.sqrt(1.0 - rho**2)
    if horizon > 0:
        scores[:, 0] = shocks[:, 0]
    for h in range(1, horizon):
        scores[:, h] = rho * scores[:, h - 1] + innovation * shocks[:, h]
    scores.flags.writeable = False
    return scores


# Marginals -------------------------------------------------------------------------------------


def level_scores(levels: tuple[float, ...] | list[float]) -> np.ndarray:
    """Normal scores ``Phi^-1(level)`` of quantile levels, ascending."""
    return np.array([_STANDARD_NORMAL.inv_cdf(level) for level in levels], dtype=np.float64)


def quantile_prices(
    values: np.ndarray, levels: tuple[float, ...] | list[float], scores: np.ndarray
) -> np.ndarray:
    """Evaluate each hour's quantile function at latent normal scores.

    Args:
        values: forecast quantiles in USD/h, shape ``(H, Q)`` or ``(B, H, Q)`` for ``B``
            forecasts, levels ascending along the last axis.
        levels: the ``Q`` quantile levels, ascending, at least two.
        scores: latent normal scores, shape ``(n, H)``.

    Returns:
        Prices of shape ``(n, H)``, or ``(B, n, H)`` for a batch: log prices interpolated linearly
        in normal-score space and extended past the outer levels with the slope of the outer
        segments.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (2, 3) or values.shape[-1] != len(levels) or len(levels) < 2:
        raise ValueError(
            f"quantile values have shape {values.shape}; expected (H, {len(levels)}) or "
            f"(B, H, {len(levels)}) with at least two levels"
        )
    knots = level_scores(levels)
    log_values = np.log(values)

    # Segment k joins knots k and k + 1; scores outside the knots use the outer segment.
    segment = np.clip(np.searchsorted(knots, scores, side="right") - 1, 0, len(knots) - 2)
    hours = np.arange(values.shape[-2])[None, :]
    left = log_values[..., hours, segment]
    right = log_values[..., hours, segment + 1]
    fraction = (scores - knots[segment]) / (knots[segment + 1] - knots[segment])
    return np.exp(left + fraction * (right - left))


def mean_prices(values: np.ndarray, levels: tuple[float, ...] | list[float]) -> np.ndarray:
    """Means of the hourly marginals, shape ``(H,)`` or ``(B, H)`` like ``values[..., 0]``."""
    horizon = np.asarray(values).shape[-2]
    grid = np.broadcast_to(_MEAN_GRID[:, None], (len(_MEAN_GRID), horizon))
    return quantile_prices(values, levels, grid).mean(axis=-2)


def expected_prices(forecast: Forecast) -> np.ndarray:
    """Mean price at grid points ``0 .. H``, shape ``(H + 1,)``; point 0 is the last price."""
    means = mean_prices(forecast.values, forecast.quantiles)
    return np.concatenate([[forecast.last_y], means])


def sample_paths(forecast: Forecast, model: PathModel) -> np.ndarray:
    """Joint price paths at grid points ``0 .. H``, shape ``(n_paths, H + 1)``, USD/h.

    Column 0 is the last observed price on every path.
    """
    scores = model.latent(len(forecast.ds))
    prices = quantile_prices(forecast.values, forecast.quantiles, scores)
    known = np.full((model.n_paths, 1), forecast.last_y)
    return np.concatenate([known, prices], axis=1)


# Jobs ------------------------------------------------------------------------------------------


def hour_offset(forecast: Forecast, when: pd.Timestamp) -> float:
    """Hours from the forecast's last observation to ``when``."""
    return (pd.Timestamp(when) - forecast.last_ds) / HOUR


def job_weights(start_offset: float, duration_hours: float, points: int) -> np.ndarray:
    """Hours a job overlaps each grid point's hour, shape ``(points,)``.

    The job runs from ``start_offset`` to ``start_offset + duration_hours`` hours after the last
    observation. Grid point ``j`` covers ``[j, j + 1)``. Raises ValueError when the job starts
    before the last observation or ends after the last covered hour.
    """
    end_offset = start_offset + duration_hours
    if start_offset < 0:
        raise ValueError(
            f"the job starts {-start_offset:g} hours before the last observed price; "
            "start at or after it"
        )
    if duration_hours <= 0:
        raise ValueError(f"duration_hours is {duration_hours:g}; it must be greater than 0")
    if end_offset > points + 1e-9:
        raise ValueError(
            f"the job ends {end_offset:g} hours after the last observed price, beyond the "
            f"{points} hours the forecast covers"
        )
    lower = np.arange(points, dtype=np.float64)
    overlap = np.minimum(end_offset, lower + 1.0) - np.maximum(start_offset, lower)
    return np.clip(overlap, 0.0, None)


def summarize_costs(
    costs: np.ndarray, expected: np.ndarray, levels: tuple[float, float, float] = (0.1, 0.5, 0.9)
) -> list[CostSummary]:
    """Summaries of path costs ``(n_paths, k)`` with expected costs ``(k,)``.

    ``levels`` are the path levels reported as the 10th, 50th and 90th percentiles.
    """
    percentiles = np.quantile(costs, levels, axis=0)
    return [
        CostSummary(float(expected[i]), *(float(p) for p in percentiles[:, i]))
        for i in range(costs.shape[1])
    ]


def job_costs(
    paths: np.ndarray, means: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Path costs ``(n_paths, k)`` and expected costs ``(k,)`` of ``k`` weight columns.

    ``weights`` has shape ``(H + 1,)`` or ``(H + 1, k)``, in hours per grid point.
    """
    weights = weights.reshape(len(means), -1)
    return paths @ weights, means @ weights


def job_cost(forecast: Forecast, start: pd.Timestamp, duration_hours: float,
             model: PathModel) -> CostSummary:
    """Expected cost and percentiles of one job on one forecast, USD per instance."""
    weights = job_weights(hour_offset(forecast, start), duration_hours, len(forecast.ds) + 1)
    costs, expected = job_costs(sample_paths(forecast, model), expected_prices(forecast), weights)
    return summarize_costs(costs, expected, model.levels_for(duration_hours))[0]


def start_times(
    earliest: pd.Timestamp, latest: pd.Timestamp
) -> pd.DatetimeIndex:
    """Candidate starts: ``earliest``, then every whole hour after it up to ``latest``."""
    earliest = pd.Timestamp(earliest)
    latest = pd.Timestamp(latest)
    if latest < earliest:
        return pd.DatetimeIndex([], tz=earliest.tz)
    following = pd.date_range(earliest.floor(HOUR) + HOUR, latest, freq=HOUR)
    return pd.DatetimeIndex([earliest]).append(following)


@dataclass(frozen=True)
class WindowCost:
    """The cost of starting a job at ``start`` on one series."""

    unique_id: str
    start: pd.Timestamp
    cost: CostSummary


def window_costs(
    forecast: Forecast,
    starts: pd.DatetimeIndex,
    duration_hours: float,
    model: PathModel,
) -> list[WindowCost]:
    """Cost of a job at each of ``starts`` on one forecast.

    All starts share the same paths, so differences between them are not Monte Carlo noise.
    """
    points = len(forecast.ds) + 1
    weights = np.stack(
        [job_weights(hour_offset(forecast, s), duration_hours, points) for s in starts], axis=1
    )
    costs, expected = job_costs(sample_paths(forecast, model), expected_prices(forecast), weights)
    summaries = summarize_costs(costs, expected, model.levels_for(duration_hours))
    return [WindowCost(forecast.unique_id, s, c) for s, c in zip(starts, summaries, strict=True)]


# Risk ------------------------------------------------------------------------------------------


def exceedance_probability(
    forecast: Forecast,
    threshold: float,
    start: pd.Timestamp,
    hours: float,
    model: PathModel,
) -> tuple[float, np.ndarray]:
    """Probability that the price exceeds ``threshold`` at any grid hour of a window.

    The window runs ``hours`` from ``start``; every grid hour it overlaps counts, the hour of the
    last observation included. Returns the probability over the whole window and the probability
    of each overlapped grid point on its own (same order as the grid).

    The window probability passes through the model's calibration map, which was fitted on
    thresholds above the last price by up to ``model.risk_max_rise_percent``. For a threshold at
    or below the last price, the share of paths is returned as it is. Above the fitted range the
    map has no data, so the share of paths applies there too. It is capped at the calibrated
    probability at the edge of the range, so the probability still falls as the threshold rises.
    The hourly probabilities are the shares of paths above the threshold at each hour, which
    follow the hourly quantile forecast, capped at the window probability. The hour of the last
    observation is known, so its probability is 1 or 0.
    """
    weights = job_weights(hour_offset(forecast, start), hours, len(forecast.ds) + 1)
    inside = weights > 0
    paths = sample_paths(forecast, model)[:, inside]
    above = paths > threshold
    hourly = above.mean(axis=0)
    window = float(above.any(axis=1).mean())
    edge = forecast.last_y * (1 + model.risk_max_rise_percent / 100)
    if forecast.last_y < threshold <= edge:
        window = float(model.risk_probability(window))
    elif threshold > edge:
        at_edge = float((paths > edge).any(axis=1).mean())
        window = min(window, float(model.risk_probability(at_edge)))

    if inside[0]:
        known = 1.0 if forecast.last_y > threshold else 0.0
        hourly[0] = known
        if known:
            window = 1.0
    # An exceedance in one hour is an exceedance in the window, so no hour may be more likely.
    return window, np.minimum(hourly, window)


def exceedance_from_paths(paths: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Share of paths ``(n, m)`` above ``threshold`` at any of their ``m`` points.

    ``threshold`` may be an array of thresholds; the result has its shape.
    """
    peaks = paths.max(axis=1)
    thresholds = np.asarray(threshold, dtype=np.float64)
    return (peaks[:, None] > thresholds.reshape(1, -1)).mean(axis=0).reshape(thresholds.shape)
