"""Decision math on small forecasts with known answers: sums, percentiles and exceedance."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from spot_forecast.decisions import (
    PathModel,
    exceedance_probability,
    expected_prices,
    job_cost,
    job_weights,
    quantile_prices,
    sample_paths,
    start_times,
    window_costs,
)
from spot_forecast.forecast import Forecast

END = pd.Timestamp("2024-05-10T06:00Z")
LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
SCORES = np.array([NormalDist().inv_cdf(q) for q in LEVELS])


def make_forecast(values: np.ndarray, last_y: float = 0.03) -> Forecast:
    return Forecast("a/t.small/Linux/UNIX", END, last_y, pd.Timedelta(hours=1), LEVELS, values)


def lognormal_forecast(horizon: int, median: float, sigma: float) -> Forecast:
    """Every hour log-normal with the same median and log standard deviation ``sigma``."""
    row = median * np.exp(sigma * SCORES)
    return make_forecast(np.tile(row, (horizon, 1)), last_y=median)


def test_flat_job_cost_exact():
    forecast = make_forecast(np.full((24, len(LEVELS)), 0.03))
    cost = job_cost(forecast, END + pd.Timedelta(hours=2), 5.0, PathModel())
    assert cost.expected == pytest.approx(0.15, rel=1e-12)
    assert cost.p10 == pytest.approx(0.15, rel=1e-12)
    assert cost.p50 == pytest.approx(0.15, rel=1e-12)
    assert cost.p90 == pytest.approx(0.15, rel=1e-12)


def test_first_hour_uses_last_price():
    forecast = make_forecast(np.full((6, len(LEVELS)), 0.05), last_y=0.03)
    cost = job_cost(forecast, END, 2.0, PathModel())
    assert cost.expected == pytest.approx(0.03 + 0.05, rel=1e-12)


def test_partial_hours_weighted():
    weights = job_weights(0.5, 2.25, 5)
    np.testing.assert_allclose(weights, [0.5, 1.0, 0.75, 0.0, 0.0])
    assert weights.sum() == pytest.approx(2.25)


def test_job_past_horizon_rejected():
    with pytest.raises(ValueError, match="beyond the 5 hours"):
        job_weights(3.0, 3.0, 5)


def test_job_before_history_rejected():
    with pytest.raises(ValueError, match="before the last observed price"):
        job_weights(-1.0, 2.0, 5)


def test_paths_reproduce_quantiles():
    # Each hour's paths must put the forecast's share of mass below each quantile.
    # With 20,000 paths the standard error of a share is at most 0.0035, so 0.015 is ~4 sigma.
    forecast = lognormal_forecast(12, 0.03, 0.05)
    paths = sample_paths(forecast, PathModel(rho=0.9, n_paths=20_000, seed=1))
    for k, level in enumerate(LEVELS):
        shares = (paths[:, 1:] <= forecast.values[None, :, k] * (1 + 1e-12)).mean(axis=0)
        assert np.abs(shares - level).max() < 0.015, f"level {level}"


def test_interpolation_hits_knots():
    values = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])
    prices = quantile_prices(values, LEVELS, SCORES[None, :].T.reshape(-1, 1))
    np.testing.assert_allclose(prices[:, 0], values[0])


def test_expected_matches_lognormal_mean():
    # Inside the outer levels the curve is exactly log-normal, and its tails extend the same
    # slope, so the mean is the log-normal mean median * exp(sigma**2 / 2).
    forecast = lognormal_forecast(3, 0.03, 0.1)
    means = expected_prices(forecast)
    assert means[0] == 0.03
    np.testing.assert_allclose(means[1:], 0.03 * np.exp(0.1**2 / 2), rtol=2e-4)


def test_sum_percentiles_match_simulation():
    # rho = 0: hours are independent log-normals, so the exact sum distribution is simulated
    # directly. Tolerance: with 20,000 paths both percentile estimates carry about 0.1 % error.
    horizon, sigma = 24, 0.2
    forecast = lognormal_forecast(horizon, 0.03, sigma)
    cost = job_cost(forecast, END + pd.Timedelta(hours=1), horizon,
                    PathModel(rho=0.0, n_paths=20_000, seed=2))
    rng = np.random.default_rng(7)
    exact = (0.03 * np.exp(sigma * rng.standard_normal((200_000, horizon)))).sum(axis=1)
    assert cost.p10 == pytest.approx(np.quantile(exact, 0.1), rel=0.01)
    assert cost.p50 == pytest.approx(np.quantile(exact, 0.5), rel=0.01)
    assert cost.p90 == pytest.approx(np.quantile(exact, 0.9), rel=0.01)


def test_independent_sum_narrower_than_summed():
    forecast = lognormal_forecast(24, 0.03, 0.2)
    cost = job_cost(forecast, END + pd.Timedelta(hours=1), 24, PathModel(rho=0.0))
    summed_p10 = 24 * forecast.values[0, LEVELS.index(0.1)]
    summed_p90 = 24 * forecast.values[0, LEVELS.index(0.9)]
    assert cost.p10 > summed_p10
    assert cost.p90 < summed_p90


def test_lockstep_sum_equals_summed():
    # rho = 1: every path keeps one level, so percentiles of the sum are sums of percentiles.
    forecast = lognormal_forecast(24, 0.03, 0.2)
    cost = job_cost(forecast, END + pd.Timedelta(hours=1), 24,
                    PathModel(rho=1.0, n_paths=20_000))
    assert cost.p10 == pytest.approx(24 * forecast.values[0, LEVELS.index(0.1)], rel=0.01)
    assert cost.p90 == pytest.approx(24 * forecast.values[0, LEVELS.index(0.9)], rel=0.01)


def test_window_costs_rank_cheap_hours():
    values = np.full((12, len(LEVELS)), 0.04)
    values[5:8] = 0.02  # grid points 6, 7 and 8 are cheap
    forecast = make_forecast(values, last_y=0.04)
    starts = start_times(END, END + pd.Timedelta(hours=9))
    costs = window_costs(forecast, starts, 3.0, PathModel())
    best = min(costs, key=lambda c: c.cost.expected)
    assert best.start == END + pd.Timedelta(hours=6)
    assert best.cost.expected == pytest.approx(0.06)


def test_start_times_begin_off_grid():
    starts = start_times(END + pd.Timedelta(minutes=30), END + pd.Timedelta(hours=3))
    assert starts[0] == END + pd.Timedelta(minutes=30)
    assert list(starts[1:]) == [END + pd.Timedelta(hours=h) for h in (1, 2, 3)]


def test_exceedance_monotone_in_threshold():
    forecast = lognormal_forecast(48, 0.03, 0.1)
    thresholds = np.linspace(0.025, 0.05, 11)
    probabilities = [
        exceedance_probability(forecast, t, END, 48, PathModel())[0] for t in thresholds
    ]
    assert all(a >= b for a, b in zip(probabilities, probabilities[1:], strict=False))
    assert probabilities[0] == 1.0  # the last price 0.03 already exceeds 0.025
    assert probabilities[-1] < 0.1


def test_lockstep_exceedance_is_max_marginal():
    # rho = 1: a path exceeds at some hour exactly when it exceeds at the widest hour.
    values = np.stack([0.03 * np.exp(0.01 * h * SCORES) for h in range(1, 25)])
    forecast = make_forecast(values)
    # The widest hour (24) has log standard deviation 0.24, and 20 % of its mass lies above this.
    threshold = 0.03 * np.exp(0.24 * NormalDist().inv_cdf(0.8))
    probability, hourly = exceedance_probability(
        forecast, threshold, END, 24, PathModel(rho=1.0, n_paths=20_000))
    assert probability == pytest.approx(hourly.max(), abs=1e-12)
    assert probability == pytest.approx(0.2, abs=0.01)


def test_exceedance_grows_with_window():
    forecast = lognormal_forecast(72, 0.03, 0.1)
    short = exceedance_probability(forecast, 0.033, END, 6, PathModel())[0]
    long = exceedance_probability(forecast, 0.033, END, 72, PathModel())[0]
    assert long > short


def test_path_model_rejects_bad_rho():
    with pytest.raises(ValueError, match="rho is 1.5"):
        PathModel(rho=1.5)


def test_batch_matches_single_forecasts():
    first = lognormal_forecast(6, 0.03, 0.1).values
    second = lognormal_forecast(6, 0.05, 0.3).values
    scores = PathModel(n_paths=50).latent(6)
    batch = quantile_prices(np.stack([first, second]), LEVELS, scores)
    np.testing.assert_allclose(batch[0], quantile_prices(first, LEVELS, scores))
    np.testing.assert_allclose(batch[1], quantile_prices(second, LEVELS, scores))


# Decision backtest on a tiny panel ------------------------------------------------------------


def perfect_forecaster(future: dict[str, np.ndarray]):
    """Forecasts whose every quantile is the price that followed: a model that knows."""

    def forecast(histories):
        result = []
        for unique_id, prices, end, horizon in histories:
            position = len(prices)
            values = np.repeat(future[unique_id][position:position + horizon, None], len(LEVELS),
                               axis=1)
            result.append(Forecast(unique_id, end, float(prices[-1]), pd.Timedelta(hours=1),
                                   LEVELS, values))
        return result

    return forecast


def test_replay_with_perfect_forecasts():
    from spot_forecast.decision_backtest import DecisionConfig, replay
    from spot_forecast.grid import Panel, Series

    # Zone a is cheaper at first, then zone b becomes cheaper for good after 6 hours.
    hours = 24 * 8
    start = pd.Timestamp("2022-02-01T00:00Z")
    a = np.full(hours, 0.030)
    b = np.full(hours, 0.032)
    for day in range(8):
        b[day * 24 + 6: day * 24 + 24] = 0.020
    panel = Panel((Series("z-1a/t.small/Linux/UNIX", start, a),
                   Series("z-1b/t.small/Linux/UNIX", start, b)), pd.Timedelta(hours=1),
                  start + (hours - 1) * pd.Timedelta(hours=1))
    config = DecisionConfig(
        cutoff=start + pd.Timedelta(days=4), calibration_days=2, calibration_every_hours=1,
        groups=1, n_paths=50,
        job_hours=(4,), window_job_hours=(4,), placement_hours=(24,), risk_hours=(24,),
        risk_rise_percent=(10.0,), rho_grid=(1.0,), min_decile_decisions=1, min_differing=1,
    )
    results = replay(panel, perfect_forecaster({s.unique_id: s.values for s in panel}), config)
    window = results["cheapest_window"]["window_4h"]
    assert window["extra_cost_percent"] == pytest.approx(0.0, abs=1e-9)
    assert window["win_rate_where_choices_differ"] == 1.0
    placement = results["placement"]["placement_24h"]
    assert placement["extra_cost_percent"] == pytest.approx(0.0, abs=1e-9)
    assert placement["baseline_extra_cost_percent"] > 0
    assert results["job_cost"]["coverage_80"] == 1.0
    target = results["targets"]["job-cost 80 % interval coverage in [78 %, 82 %], ties covered"]
    assert target["met"] is False


def test_cost_levels_interpolate_log_hours():
    model = PathModel(cost_levels=((4.0, 0.2, 0.5, 0.8), (64.0, 0.1, 0.5, 0.9)))
    assert model.levels_for(1.0) == (0.2, 0.5, 0.8)
    assert model.levels_for(100.0) == (0.1, 0.5, 0.9)
    low, middle, high = model.levels_for(16.0)  # halfway between 4 and 64 in log hours
    assert low == pytest.approx(0.15)
    assert middle == pytest.approx(0.5)
    assert high == pytest.approx(0.85)


def test_path_model_metadata_round_trip():
    from spot_forecast.decision_backtest import path_model_metadata

    model = PathModel(rho=0.97, cost_levels=((4.0, 0.2, 0.5, 0.8),),
                      risk_knots=((0.0, 0.5, 1.0), (0.0, 0.3, 1.0)), min_saving_percent=0.2,
                      rank_min_saving_percent=100.0)
    loaded = PathModel.from_metadata({"sample_paths": path_model_metadata(model)})
    assert loaded == model
    assert loaded.risk_probability(0.25) == pytest.approx(0.15)


def test_method_line_uses_stored_levels():
    from spot_forecast.decision_backtest import sample_paths_entry

    model = PathModel(cost_levels=((4.0, 0.06631, 0.50829, 0.95449),))
    entry = sample_paths_entry(model, fitting={})
    assert entry["cost_levels"] == [[4.0, 0.0663, 0.5083, 0.9545]]
    # The bullet list prints the stored 0.9545 as 0.955, so the method line must print 0.955 too.
    assert "4 h: 0.066, 0.508, 0.955" in entry["method"]


@pytest.mark.parametrize("instance_type, pool", [
    ("m5.large", "m.large x86_64"),
    ("m5a.large", "m.large x86_64"),
    ("m6i.large", "m.large x86_64"),
    ("m5dn.large", "m.large x86_64"),
    ("m6g.large", "m.large arm64"),
    ("c7gn.xlarge", "c.xlarge arm64"),
    ("t4g.micro", "t.micro arm64"),
    ("g4dn.xlarge", "g.xlarge x86_64"),
    ("r5.2xlarge", "r.2xlarge x86_64"),
    ("weird", "weird"),
])
def test_pool_of_groups_swappable_types(instance_type, pool):
    from spot_forecast.decision_backtest import pool_of

    assert pool_of(instance_type) == pool


def test_pool_groups_span_types_and_zones():
    from spot_forecast.decision_backtest import pool_groups, zone_groups

    ids = ["a-1a/m5.large/Linux/UNIX", "a-1a/m6i.large/Linux/UNIX", "a-1b/m5.large/Linux/UNIX",
           "a-1a/m6g.large/Linux/UNIX", "a-1a/m5.large/Windows"]
    pools = sorted(sorted(rows.tolist()) for rows in pool_groups(ids))
    assert pools == [[0, 1, 2], [3], [4]]
    zones = sorted(sorted(rows.tolist()) for rows in zone_groups(ids))
    assert zones == [[0, 2], [1], [3], [4]]


def test_wilson_lower_bound_shrinks_with_few_trials():
    from spot_forecast.decision_backtest import wilson_lower_bound

    assert wilson_lower_bound(0, 0) == 0.0
    # 7 of 10 and 700 of 1,000 are both 70 %, but only the second is surely above 60 %.
    assert wilson_lower_bound(7, 10) < 0.6 < wilson_lower_bound(700, 1000) < 0.7
    assert wilson_lower_bound(700, 1000) == pytest.approx(0.6755, abs=1e-3)


def test_margin_fit_never_switches_without_skill():
    """A forecast whose placement choices lose keeps /rank with cheapest-now."""
    from spot_forecast.decision_backtest import (
        NEVER_SWITCH, DecisionConfig, OriginBatch, fit_path_model,
    )

    # The forecast expects zone a (cheaper now) to rise 10 % while zone b stays flat.
    # Zone a never moves, so leaving it always loses.
    ids = ["z-1a/t.small/Linux/UNIX", "z-1b/t.small/Linux/UNIX"]
    horizon = 72
    levels = LEVELS
    values = np.empty((2, horizon, len(levels)))
    values[0] = 0.0300 * 1.10 * np.exp(np.linspace(-0.01, 0.01, len(levels)))
    values[1] = 0.0310 * np.exp(np.linspace(-0.01, 0.01, len(levels)))
    actual = np.vstack([np.full(horizon + 1, 0.0300), np.full(horizon + 1, 0.0310)])
    batches = [OriginBatch(pd.Timestamp("2022-02-01T00:00Z") + pd.Timedelta(hours=8 * i), ids,
                           levels, values, actual) for i in range(30)]
    config = DecisionConfig(n_paths=50, job_hours=(4,), window_job_hours=(4,),
                            placement_hours=(24, 72), risk_hours=(24,), rho_grid=(0.99,))
    model, fitting, _ = fit_path_model(batches, config)
    assert model.rank_min_saving_percent == NEVER_SWITCH
    placement = fitting["margins"][0]["other_series"]
    assert placement["choices_differ"] > 0
    assert placement["wins"] == 0


def test_target_values_formatted_by_kind():
    from spot_forecast.decision_backtest import format_target

    assert format_target("window_4h extra cost <= 1 %", {"value": 0.02206}) == "0.022 %"
    assert format_target("window_4h beats cheapest-now >= 60 % where choices differ",
                         {"value": 0.5606, "choices_differ": 371}) == "56.1 % of 371"
    assert format_target("placement_24h beats cheapest-now >= 60 % where choices differ",
                         {"value": None, "choices_differ": 0}) == "n/a (0 differing decisions)"
    assert format_target("risk calibration within 5 points per judged decile",
                         {"value": 5.688}) == "5.7 points"


def test_known_hour_risk_is_exact():
    # The calibration map lifts a raw share of 0 above 0; the observed hour must not get that.
    model = PathModel(risk_knots=((0.0, 0.5, 1.0), (0.01, 0.4, 0.9)))
    forecast = lognormal_forecast(24, 0.03, 0.05)
    _, hourly = exceedance_probability(forecast, 0.0315, END, 24, model)
    assert hourly[0] == 0.0
    assert hourly[1] < hourly[-1]
    probability, hourly = exceedance_probability(forecast, 0.029, END, 24, model)
    assert probability == 1.0
    assert hourly[0] == 1.0


def test_risk_below_last_price_skips_the_map():
    # The map was fitted on rises; a threshold under the price gets the share of paths itself.
    model = PathModel(risk_knots=((0.0, 1.0), (0.0, 0.8)))
    forecast = make_forecast(np.full((24, len(LEVELS)), 0.03))
    later = END + pd.Timedelta(hours=2)
    probability, hourly = exceedance_probability(forecast, 0.025, later, 4, model)
    assert probability == 1.0
    assert np.all(hourly == 1.0)


def test_hourly_risk_never_exceeds_window():
    model = PathModel(risk_knots=((0.0, 1.0), (0.0, 0.5)))
    forecast = lognormal_forecast(24, 0.03, 0.1)
    probability, hourly = exceedance_probability(forecast, 0.033, END, 24, model)
    assert probability < 1.0
    assert hourly.max() <= probability


def test_margins_fitted_per_move():
    """Waiting for a forecast drop pays here, moving to another zone does not."""
    from spot_forecast.decision_backtest import (
        NEVER_SWITCH, DecisionConfig, Margins, OriginBatch, Tally, fit_path_model,
        replay_choices,
    )

    ids = ["z-1a/t.small/Linux/UNIX", "z-1b/t.small/Linux/UNIX"]
    horizon = 72
    spread = np.exp(np.linspace(-0.01, 0.01, len(LEVELS)))
    # Zone a is cheaper now and falls after 6 hours, as forecast. Zone b is forecast to fall
    # further but stays where it is.
    expected_a = np.where(np.arange(1, horizon + 1) > 6, 0.020, 0.030)
    expected_b = np.where(np.arange(1, horizon + 1) > 2, 0.010, 0.031)
    values = np.stack([expected_a[:, None] * spread, expected_b[:, None] * spread])
    actual = np.vstack([np.concatenate([[0.030], expected_a]), np.full(horizon + 1, 0.031)])
    batches = [OriginBatch(pd.Timestamp("2022-02-01T00:00Z") + pd.Timedelta(hours=8 * i), ids,
                           LEVELS, values, actual) for i in range(30)]
    config = DecisionConfig(n_paths=50, job_hours=(4,), window_job_hours=(4,),
                            placement_hours=(24,), risk_hours=(24,), rho_grid=(0.99,))
    model, fitting, _ = fit_path_model(batches, config)
    assert model.min_saving_percent == 0.0
    assert model.rank_min_saving_percent == NEVER_SWITCH
    assert fitting["margins"][0]["later_start"]["wins"] == 30
    assert fitting["margins"][0]["other_series"]["wins"] == 0

    tallies = {"window_4h": Tally(), "placement_zones_24h": Tally(), "placement_24h": Tally()}
    replay_choices(batches[0], config, tallies,
                   Margins(model.min_saving_percent, model.rank_min_saving_percent))
    window = tallies["window_4h"].summary()
    assert window["choices_differ"] == 1
    assert window["wins"] == 1
    # With one margin for both moves, the forecast's favourite (zone b) would have lost.
    replay_choices(batches[0], config, tallies, Margins(0.0, 0.0))
    assert tallies["window_4h"].summary()["losses"] == 1


def test_risk_beyond_fitted_rises():
    # The map lifts a zero share of paths to 0.2 %, as the shipped map does, but it was fitted on
    # rises of at most 10 %; a threshold far beyond them gets the share of paths itself.
    model = PathModel(risk_knots=((0.0, 0.5, 1.0), (0.002, 0.4, 1.0)), risk_max_rise_percent=10.0)
    forecast = lognormal_forecast(24, 0.03, 0.05)
    start = END
    within, _ = exceedance_probability(forecast, 0.03 * 1.10, start, 24, model)
    beyond, _ = exceedance_probability(forecast, 0.03 * 1.11, start, 24, model)
    far, hourly = exceedance_probability(forecast, 1000.0, start, 24, model)
    assert within >= 0.002
    assert beyond <= within
    assert far == 0.0
    assert np.all(hourly == 0.0)


def test_backtest_main_unknown_model_exits_2(tmp_path, capsys):
    from spot_forecast.decision_backtest import main

    prices = Path(__file__).resolve().parent / "data" / "real" / "spot_price_history.csv"
    code = main(["--model", "no_such_model:v1", "--data", str(prices), "--out", str(tmp_path)])
    assert code == 2
    error = capsys.readouterr().err
    assert "no_such_model:v1" in error
    assert "not in the BentoML model store" in error
