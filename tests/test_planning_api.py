"""Decision endpoints through the ASGI app: job cost, cheapest window, rank, price risk, history.

The service runs the tiny model of conftest, trained on real eu-west-1 data. Every stored series
ends at the same hour on 2022-03-13, read from ``/series`` as ``LAST``. The ``client`` fixture is
the shared ASGI test client of conftest.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from spot_forecast.planning import RANK_RESOLUTION

SERIES = "eu-west-1a/m5.large/Linux/UNIX"
OTHER = "eu-west-1b/m5.large/Linux/UNIX"
LAST = datetime.fromisoformat("2022-03-13T15:00:00+00:00")


def test_stored_series_end_at_last(client):
    # The other tests rely on this end time of the conftest data.
    listed = client.post("/series", json={"region": "eu-west-1"}).json()
    assert {datetime.fromisoformat(item["last_ds"]) for item in listed} == {LAST}


def assert_ordered_cost(cost: dict) -> None:
    assert 0 < cost["p10"]
    assert cost["p10"] <= cost["p50"]
    assert cost["p50"] <= cost["p90"]
    assert cost["p10"] <= cost["expected"] * 1.05
    assert cost["expected"] <= cost["p90"] * 1.05


# /job_cost ------------------------------------------------------------------------------------


def test_job_cost_by_series(client, small_model_tag):
    response = client.post("/job_cost", json={"series_id": SERIES, "duration_hours": 24})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == small_model_tag
    assert datetime.fromisoformat(body["start"]) == LAST
    assert datetime.fromisoformat(body["end"]) == LAST + timedelta(hours=24)
    assert_ordered_cost(body["cost"])
    last_price = body["last_observed"]["y"]
    assert body["cost"]["p50"] == pytest.approx(24 * last_price, rel=0.2)
    assert "AR(1)" in body["method"]


def test_job_cost_flat_history_exact(client):
    # One hour starting at the last observation pays the last price, known for sure.
    response = client.post("/job_cost", json={
        "history": [0.031] * 48, "history_end": "2024-05-10T06:00:00Z", "duration_hours": 1})
    assert response.status_code == 200
    cost = response.json()["cost"]
    assert cost["expected"] == pytest.approx(0.031)
    assert cost["p10"] == pytest.approx(0.031)
    assert cost["p90"] == pytest.approx(0.031)


def test_job_cost_later_start(client):
    start = (LAST + timedelta(hours=10, minutes=30)).isoformat()
    response = client.post("/job_cost", json={
        "series_id": SERIES, "start": start, "duration_hours": 2.5})
    assert response.status_code == 200
    body = response.json()
    assert datetime.fromisoformat(body["end"]) == LAST + timedelta(hours=13)
    assert_ordered_cost(body["cost"])


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"series_id": SERIES, "duration_hours": 0}, 400, "duration_hours is 0.0"),
        ({"series_id": SERIES, "duration_hours": 200}, 400, "at most 168 hours"),
        ({"series_id": SERIES}, 400, "Field required"),
        ({"duration_hours": 4}, 400, "send a series_id"),
        ({"series_id": SERIES, "duration_hours": 4, "when": "now"}, 400, "Extra inputs"),
        ({"series_id": SERIES, "duration_hours": 4, "start": "2022-03-01T00:00:00Z"}, 400,
         "before the last observed price"),
        ({"series_id": SERIES, "duration_hours": 100, "start": "2022-03-18T00:00:00Z"}, 400,
         "covers prices only until"),
        ({"series_id": "eu-west-1a/m5.larg/Linux/UNIX", "duration_hours": 4}, 404,
         "close matches"),
    ],
)
def test_job_cost_bad_requests(client, body, status, reason):
    response = client.post("/job_cost", json=body)
    assert response.status_code == status
    assert reason in response.text
    assert "Traceback" not in response.text


# /cheapest_window -------------------------------------------------------------------------------


def test_cheapest_window_ranks_starts(client):
    response = client.post("/cheapest_window", json={
        "candidates": [{"series_id": SERIES}, {"series_id": OTHER}],
        "duration_hours": 4, "deadline_hours": 24})
    assert response.status_code == 200
    body = response.json()
    windows = body["windows"]
    # 21 starts (the earliest and every hour up to 20 hours later) on each of two series.
    assert len(windows) == 42
    assert [w["rank"] for w in windows] == list(range(1, 43))
    expected = [w["cost"]["expected"] for w in windows]
    # Sorted by expected cost; costs within the rank resolution tie and go by start.
    tolerance = 2 * RANK_RESOLUTION * body["baseline"]["cost"]["expected"]
    assert all(b >= a - tolerance for a, b in zip(expected, expected[1:]))
    assert {w["unique_id"] for w in windows} == {SERIES, OTHER}
    assert datetime.fromisoformat(body["earliest_start"]) == LAST
    assert datetime.fromisoformat(body["deadline"]) == LAST + timedelta(hours=24)
    for window in windows:
        assert_ordered_cost(window["cost"])
        end = datetime.fromisoformat(window["end"])
        assert end <= LAST + timedelta(hours=24)


def test_cheapest_window_saving_against_now(client):
    body = client.post("/cheapest_window", json={
        "candidates": [{"series_id": SERIES}, {"series_id": OTHER}],
        "duration_hours": 4, "deadline_hours": 24}).json()
    baseline = body["baseline"]
    prices = {uid: client.post("/series", json={"availability_zone": uid.split("/")[0],
                                                 "instance_type": "m5.large",
                                                 "product_description": "Linux/UNIX"}).json()[0]
              for uid in (SERIES, OTHER)}
    cheaper_now = min(prices, key=lambda uid: prices[uid]["last_y"])
    assert baseline["unique_id"] == cheaper_now
    assert datetime.fromisoformat(baseline["start"]) == LAST
    for window in body["windows"]:
        assert window["saving"] == pytest.approx(
            baseline["cost"]["expected"] - window["cost"]["expected"])
    assert body["windows"][0]["saving"] >= 0


def test_cheapest_window_limit(client):
    body = client.post("/cheapest_window", json={
        "candidates": [{"series_id": SERIES}], "duration_hours": 2,
        "deadline": (LAST + timedelta(hours=12)).isoformat(), "limit": 3}).json()
    assert len(body["windows"]) == 3


def test_cheapest_window_client_histories(client):
    response = client.post("/cheapest_window", json={
        "candidates": [
            {"history": [0.031] * 48, "history_end": "2024-05-10T06:00:00Z"},
            {"history": [0.029] * 48, "history_end": "2024-05-10T06:00:00Z"},
        ],
        "duration_hours": 3, "deadline_hours": 6})
    assert response.status_code == 200
    body = response.json()
    assert body["baseline"]["unique_id"] == "candidates[1]"
    assert {w["unique_id"] for w in body["windows"]} == {"candidates[0]", "candidates[1]"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"candidates": [], "duration_hours": 4, "deadline_hours": 24}, "candidates has 0"),
        ({"candidates": [{"series_id": SERIES}], "duration_hours": 4}, "exactly one of deadline"),
        ({"candidates": [{"series_id": SERIES}], "duration_hours": 8, "deadline_hours": 4},
         "cannot finish in time"),
        ({"candidates": [{"series_id": SERIES}, {"series_id": SERIES}], "duration_hours": 4,
          "deadline_hours": 24}, "repeats"),
        ({"candidates": [{"series_id": SERIES}], "duration_hours": 4, "deadline_hours": 24,
          "limit": 0}, "limit is 0"),
        ({"candidates": [{"series_id": SERIES}], "duration_hours": 4,
          "deadline": "2022-03-30T00:00:00Z"}, "covers prices only until"),
    ],
)
def test_cheapest_window_bad_requests(client, body, reason):
    response = client.post("/cheapest_window", json=body)
    assert response.status_code == 400
    assert reason in response.text


# /rank -------------------------------------------------------------------------------------------


def test_rank_region_expands_zones(client):
    response = client.post("/rank", json={
        "instance_types": ["m5.large", "c5.xlarge"], "region": "eu-west-1", "hours": 24})
    assert response.status_code == 200
    body = response.json()
    zones = {p["availability_zone"] for p in body["ranked"]}
    assert zones == {"eu-west-1a", "eu-west-1b", "eu-west-1c"}
    assert len(body["ranked"]) == 6
    expected = [p["cost"]["expected"] for p in body["ranked"]]
    assert expected == sorted(expected)
    assert body["unavailable"] == []
    for placement in body["ranked"]:
        assert_ordered_cost(placement["cost"])
        assert placement["product_description"] == "Linux/UNIX"


def test_rank_lists_missing_apart(client):
    response = client.post("/rank", json={
        "instance_types": ["m5.large", "x9.huge"], "zones": ["eu-west-1a", "eu-west-1z"],
        "product_descriptions": ["Linux/UNIX", "Linux/UNIX (Amazon VPC)"], "hours": 12})
    assert response.status_code == 200
    body = response.json()
    assert [p["unique_id"] for p in body["ranked"]] == [SERIES]
    reasons = {item["unique_id"]: item["reason"] for item in body["unavailable"]}
    assert len(reasons) == 7
    assert "no data for instance type x9.huge in eu-west-1a" in reasons[
        "eu-west-1a/x9.huge/Linux/UNIX"]
    assert "no data for zone eu-west-1z" in reasons["eu-west-1z/m5.large/Linux/UNIX"]
    assert "products with data" in reasons["eu-west-1a/m5.large/Linux/UNIX (Amazon VPC)"]


def test_rank_window_beyond_horizon_apart(client):
    response = client.post("/rank", json={
        "instance_types": ["m5.large"], "zones": ["eu-west-1a"], "hours": 24,
        "start": (LAST + timedelta(hours=160)).isoformat()})
    assert response.status_code == 200
    body = response.json()
    assert body["ranked"] == []
    assert "covers prices only until" in body["unavailable"][0]["reason"]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"instance_types": ["m5.large"], "hours": 24}, 400, "exactly one of zones"),
        ({"instance_types": ["m5.large"], "region": "eu-west-1", "zones": ["eu-west-1a"],
          "hours": 24}, 400, "exactly one of zones"),
        ({"instance_types": [], "region": "eu-west-1", "hours": 24}, 400,
         "instance_types has 0 entries"),
        ({"instance_types": ["m5.large"], "region": "eu-west-1", "hours": -1}, 400,
         "hours is -1.0"),
        ({"instance_types": ["m5.large"], "region": "mars-north-1", "hours": 24}, 404,
         "regions with data: eu-west-1"),
    ],
)
def test_rank_bad_requests(client, body, status, reason):
    response = client.post("/rank", json=body)
    assert response.status_code == status
    assert reason in response.text


# /price_risk -------------------------------------------------------------------------------------


def test_price_risk_monotone_in_rise(client):
    probabilities = []
    for rise in (-1, 0.5, 5, 50):
        response = client.post("/price_risk", json={
            "series_id": SERIES, "rise_percent": rise, "hours": 72})
        assert response.status_code == 200
        probabilities.append(response.json()["probability"])
    assert probabilities[0] == 1.0  # the last price already exceeds a 1 % drop
    assert probabilities == sorted(probabilities, reverse=True)
    assert probabilities[-1] < 0.05


def test_price_risk_threshold_and_hours(client):
    last = client.post("/series", json={"availability_zone": "eu-west-1a",
                                        "instance_type": "m5.large",
                                        "product_description": "Linux/UNIX"}).json()[0]["last_y"]
    response = client.post("/price_risk", json={
        "series_id": SERIES, "threshold": last * 1.02, "hours": 24})
    assert response.status_code == 200
    body = response.json()
    assert body["threshold"] == pytest.approx(last * 1.02)
    assert 0 <= body["probability"] <= 1
    assert len(body["hourly"]) == 24
    assert max(h["probability"] for h in body["hourly"]) <= body["probability"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"series_id": SERIES, "hours": 24}, "exactly one of threshold"),
        ({"series_id": SERIES, "hours": 24, "threshold": 0.1, "rise_percent": 5},
         "exactly one of threshold"),
        ({"series_id": SERIES, "hours": 24, "threshold": -0.1}, "threshold is -0.1"),
        ({"series_id": SERIES, "hours": 24, "rise_percent": -100}, "greater than -100"),
        ({"series_id": SERIES, "hours": 0, "rise_percent": 5}, "hours is 0.0"),
    ],
)
def test_price_risk_bad_requests(client, body, reason):
    response = client.post("/price_risk", json=body)
    assert response.status_code == 400
    assert reason in response.text


# /history and /ui --------------------------------------------------------------------------------


def test_history_returns_last_hours(client):
    response = client.post("/history", json={"series_id": SERIES, "hours": 48})
    assert response.status_code == 200
    points = response.json()["points"]
    assert len(points) == 48
    assert datetime.fromisoformat(points[-1]["ds"]) == LAST
    assert datetime.fromisoformat(points[0]["ds"]) == LAST - timedelta(hours=47)


def test_history_unknown_series_404(client):
    response = client.post("/history", json={"series_id": "eu-west-1a/m5.larg/Linux/UNIX"})
    assert response.status_code == 404
    assert SERIES in response.json()["error"]


def test_ui_files_served(client):
    page = client.get("/ui/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert 'src="app.js"' in page.text
    script = client.get("/ui/app.js")
    assert script.status_code == 200
    assert "cheapest_window" in script.text
    assert client.get("/ui/__init__.py").status_code == 404


def test_ui_loads_nothing_external(client):
    for name in ("", "app.js", "style.css"):
        text = client.get(f"/ui/{name}").text
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text


# Recommendations ----------------------------------------------------------------------------------

WINDOW_BODY = {"candidates": [{"series_id": SERIES}, {"series_id": OTHER}],
               "duration_hours": 4, "deadline_hours": 24}


def test_recommendation_without_margin_is_best(client):
    body = client.post("/cheapest_window", json={**WINDOW_BODY, "min_saving_percent": 0}).json()
    assert body["min_saving_percent"] == 0
    assert body["recommended"] == body["windows"][0]


def test_recommendation_large_margin_starts_now(client):
    body = client.post("/cheapest_window", json={**WINDOW_BODY, "min_saving_percent": 100}).json()
    assert body["recommended"]["unique_id"] == body["baseline"]["unique_id"]
    assert body["recommended"]["start"] == body["baseline"]["start"]


def test_rank_large_margin_keeps_cheapest_now(client):
    body = client.post("/rank", json={"instance_types": ["m5.large"], "region": "eu-west-1",
                                      "hours": 24, "min_saving_percent": 100}).json()
    lowest = min(body["ranked"], key=lambda p: p["last_price"])
    assert body["cheapest_now"] == lowest["unique_id"]
    assert body["recommended"]["unique_id"] == lowest["unique_id"]


def test_rank_default_margin_reported(client):
    from spot_forecast.decisions import PathModel

    # The test bundle stores no path model, so the packaged fit applies.
    body = client.post("/rank", json={"instance_types": ["m5.large"], "region": "eu-west-1",
                                      "hours": 24}).json()
    fitted = PathModel.from_metadata({})
    assert body["min_saving_percent"] == fitted.rank_min_saving_percent
    assert body["recommended"]["unique_id"] in {p["unique_id"] for p in body["ranked"]}
    window = client.post("/cheapest_window", json=WINDOW_BODY).json()
    assert window["min_saving_percent"] == fitted.min_saving_percent
    assert window["other_series_min_saving_percent"] == fitted.rank_min_saving_percent


def _window(rank: int, unique_id: str, hours_after: int, saving_percent: float):
    from spot_forecast.decision_schemas import CostPercentiles, WindowOption

    start = datetime(2022, 3, 13, 16) + timedelta(hours=hours_after)
    cost = CostPercentiles(expected=1.0, p10=1.0, p50=1.0, p90=1.0)
    return WindowOption(rank=rank, unique_id=unique_id, start=start,
                        end=start + timedelta(hours=4), cost=cost, saving=saving_percent / 100,
                        saving_percent=saving_percent)


@pytest.mark.parametrize("later_start, other_series, expected", [
    (0.1, 100.0, "later start"),   # another zone must save 100 %: wait on the baseline's zone
    (0.1, 0.5, "other zone"),      # both clear their margin: the lowest expected cost
    (1.0, 100.0, "baseline"),      # neither clears its margin
    (1.0, 0.5, "other zone"),
])
def test_window_moves_have_their_own_margins(later_start, other_series, expected):
    import pandas as pd

    from spot_forecast.planning import recommend_window

    ranked = [_window(1, "eu-west-1b/m5.large/Linux/UNIX", 0, 0.8),
              _window(2, "eu-west-1a/m5.large/Linux/UNIX", 6, 0.3),
              _window(3, "eu-west-1a/m5.large/Linux/UNIX", 0, 0.0)]
    names = {id(ranked[0]): "other zone", id(ranked[1]): "later start", id(ranked[2]): "baseline"}
    chosen = recommend_window(ranked, "eu-west-1a/m5.large/Linux/UNIX",
                              pd.Timestamp("2022-03-13T16:00"), later_start=later_start,
                              other_series=other_series)
    assert names[id(chosen)] == expected


def test_negative_margin_rejected(client):
    response = client.post("/cheapest_window", json={**WINDOW_BODY, "min_saving_percent": -1})
    assert response.status_code == 400
    assert "min_saving_percent is -1.0" in response.text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/job_cost", {"series_id": SERIES, "duration_hours": 4, "start": "9999-01-01T00:00:00Z"},
         "start"),
        ("/price_risk", {"series_id": SERIES, "rise_percent": 5, "hours": 24,
                         "start": "0001-01-01T00:00:00Z"}, "start"),
        ("/cheapest_window", {"candidates": [{"series_id": SERIES}], "duration_hours": 4,
                              "earliest_start": "9999-01-01T00:00:00Z", "deadline_hours": 48},
         "earliest_start"),
    ],
)
def test_out_of_range_times_rejected(client, path, body, field):
    response = client.post(path, json=body)
    assert response.status_code == 400
    detail = response.json()["detail"][0]
    assert detail["loc"][0] == field
    assert "send a time from 1679-01-01" in detail["msg"]


def test_cost_rank_ties_rounding_noise():
    from spot_forecast.planning import cost_rank

    base = 0.1444
    # 2e-9 USD on 0.1444 USD: below the float32 precision of the forecast, so a tie that the
    # earlier start wins.
    assert cost_rank(base - 2.06e-9, base) == cost_rank(base, base)
    # 0.01 % is a difference the forecast makes, and it ranks first.
    assert cost_rank(base * (1 - 1e-4), base) < cost_rank(base, base)
