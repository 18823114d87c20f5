"""The BentoML service at three levels: in-process, through the ASGI app, and served.

All three use a tiny model trained on real eu-west-1 data in a private model store.
"""

from __future__ import annotations

import asyncio
import math
import re
from datetime import datetime, timedelta
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

SERIES = "eu-west-1a/m5.large/Linux/UNIX"
END = "2024-05-10T06:00:00Z"
# C11: a short flat history and a longer rising one.
FLAT_48 = [0.031] * 48
RISING_200 = np.linspace(0.020, 0.040, 200).round(6).tolist()


def assert_valid_forecast(body: dict, horizon: int) -> None:
    assert len(body["steps"]) == horizon
    for step in body["steps"]:
        q = step["quantiles"]
        assert 0 < q["0.1"] <= step["median"] <= q["0.9"]
        assert step["median"] == q["0.5"]
        assert all(math.isfinite(v) for v in q.values())


def max_difference(first: dict, second: dict) -> float:
    return max(
        abs(a["quantiles"][k] - b["quantiles"][k])
        for a, b in zip(first["steps"], second["steps"], strict=True)
        for k in a["quantiles"]
    )


# In-process -------------------------------------------------------------------------------


def test_in_process_forecast_by_id(service_module):
    svc = service_module.SpotForecast()
    response = asyncio.run(svc.forecast(series_id=SERIES, horizon=24, history=None,
                                        history_end=None, freq="1h"))
    body = response.model_dump(mode="json")
    assert body["unique_id"] == SERIES
    assert_valid_forecast(body, 24)


def test_service_freezes_objects_alive_after_loading(service_module):
    import gc

    gc.unfreeze()
    service_module.SpotForecast()
    # Without the freeze, every full collection walks the loaded model and history.
    assert gc.get_freeze_count() > 100_000


def test_in_process_lists_series(service_module):
    from spot_forecast.schemas import SeriesFilter

    svc = service_module.SpotForecast()
    listed = svc.series(**SeriesFilter(instance_type="m5.large").model_dump())
    ids = [item.unique_id for item in listed]
    assert SERIES in ids
    assert all("/m5.large/" in uid for uid in ids)


# ASGI test client ---------------------------------------------------------------------------


def test_forecast_example_answers(client, small_model_tag):
    response = client.post("/forecast", json={"series_id": SERIES, "horizon": 24})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == small_model_tag
    last = datetime.fromisoformat(body["last_observed"]["ds"])
    assert last.date().isoformat() == "2022-03-13"
    assert datetime.fromisoformat(body["steps"][0]["ds"]) == last + timedelta(hours=1)
    assert_valid_forecast(body, 24)


def test_predict_example_answers(client):
    response = client.post("/predict", json={"data": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                                                      0.9, 1.0]})
    assert response.status_code == 200
    body = response.json()
    assert len(body["predictions"]) == 24
    assert all(0 < lo <= mid <= hi for lo, mid, hi in
               zip(body["lower"], body["predictions"], body["upper"], strict=True))


def test_events_put_on_grid(client):
    # C09: events at 23:58:07, 01:13:45 and 05:02:11 fill the grid to 06:00.
    events = [{"ds": "2024-05-09T23:58:07Z", "y": 0.031},
              {"ds": "2024-05-10T01:13:45Z", "y": 0.0322},
              {"ds": "2024-05-10T05:02:11Z", "y": 0.0315}]
    response = client.post("/forecast", json={"history": events, "horizon": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["last_observed"] == {"ds": END, "y": 0.0315}
    assert [s["ds"] for s in body["steps"]] == [
        "2024-05-10T07:00:00Z", "2024-05-10T08:00:00Z", "2024-05-10T09:00:00Z"]


def test_events_match_hourly_history(client):
    events = [{"ds": "2024-05-09T23:58:07Z", "y": 0.031},
              {"ds": "2024-05-10T01:13:45Z", "y": 0.0322},
              {"ds": "2024-05-10T05:02:11Z", "y": 0.0315}]
    hourly = [0.0310, 0.0310, 0.0322, 0.0322, 0.0322, 0.0322, 0.0315]
    from_events = client.post("/forecast", json={"history": events, "horizon": 6}).json()
    from_hourly = client.post(
        "/forecast", json={"history": hourly, "history_end": END, "horizon": 6}).json()
    assert max_difference(from_events, from_hourly) < 1e-12


def test_client_history_beside_series_id(client):
    response = client.post("/forecast", json={
        "series_id": SERIES, "history": FLAT_48, "history_end": END, "horizon": 6})
    assert response.status_code == 200
    body = response.json()
    assert body["unique_id"] == SERIES
    assert body["last_observed"] == {"ds": END, "y": 0.031}


def test_five_minute_steps_rejected(client):
    response = client.post("/forecast", json={"history": [0.03], "freq": "5min"})
    assert response.status_code == 422
    assert "trained at '1h'" in response.json()["error"]


def test_unknown_series_names_matches(client):
    response = client.post("/forecast", json={"series_id": "eu-west-1a/m5.larg/Linux/UNIX"})
    assert response.status_code == 404
    assert "eu-west-1a/m5.large/Linux/UNIX" in response.json()["error"]


@pytest.mark.parametrize("path, body", [
    ("/forecast", {"series_id": "m5.large"}),
    ("/forecast", {"series_id": "m5.large", "history": [0.03, 0.04]}),
    ("/job_cost", {"series_id": "m5.large", "duration_hours": 4}),
])
def test_malformed_series_id_is_400(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 400
    message = response.json()["error"]
    assert "'m5.large'" in message
    assert "eu-west-1a/m5.large/Linux/UNIX" in message


def test_missing_product_names_existing(client):
    # C03: the data has other products of the type, never a silent fallback.
    response = client.post(
        "/forecast", json={"series_id": "eu-west-1a/m5.large/Linux/UNIX (Amazon VPC)"})
    assert response.status_code == 404
    message = response.json()["error"]
    assert "no data for product 'Linux/UNIX (Amazon VPC)'" in message
    assert "Linux/UNIX, " in message


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"history": [0.03, None, 0.031], "horizon": 3}, "history", "history[1] is null"),
        ({"history": "abc", "horizon": 6}, "history", "valid array"),
        ({"history": [0.03], "horizon": -1}, "horizon", "between 1 and 168"),
        ({"history": [0.03, -0.01]}, "history", "greater than 0"),
        ({"history": [0.03], "horizon": 6, "extra": 1}, "extra", "Extra inputs"),
        ({"horizon": 6}, None, "send a series_id"),
        ({"history": [{"ds": "2024-05-10T00:00Z"}]}, "history", "y: Field required"),
    ],
)
def test_bad_bodies_get_400(client, body, field, reason):
    response = client.post("/forecast", json=body)
    assert response.status_code == 400
    payload = response.json()
    detail = payload["detail"][0]
    if field is not None:
        assert detail["loc"][0] == field
    assert reason in detail["msg"]
    assert "Traceback" not in response.text


def test_nan_token_gets_400(client):
    response = client.post("/forecast", content=b'{"history": [0.03, NaN]}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "history[1] is nan" in response.text


def test_horizon_beyond_model_rejected(client):
    response = client.post("/forecast", json={"history": [0.03], "horizon": 169})
    assert response.status_code == 400
    assert "between 1 and 168" in response.text


def test_model_endpoint_shows_metadata(client, small_model_tag):
    response = client.post("/model")
    assert response.status_code == 200
    body = response.json()
    assert body["tag"] == small_model_tag
    assert body["metadata"]["lookback"] == 48
    assert "libraries" in body["metadata"]
    assert "baseline_steps" in body["metadata"]["guard"]


def test_series_endpoint_filters(client):
    response = client.post("/series", json={"availability_zone": "eu-west-1b",
                                            "product_description": "Windows"})
    assert response.status_code == 200
    listed = response.json()
    assert listed
    assert all(item["unique_id"].startswith("eu-west-1b/") for item in listed)
    assert all(item["unique_id"].endswith("/Windows") for item in listed)
    assert all(item["last_y"] > 0 for item in listed)


# Served process ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(small_model_tag):
    import bentoml

    from conftest import ROOT

    with bentoml.serve("service:SpotForecast", port=3917, host="127.0.0.1",
                       working_dir=str(ROOT)) as server:
        yield server


def post_json(url: str, path: str, body: dict) -> tuple[int, dict]:
    import httpx

    response = httpx.post(url + path, json=body, timeout=60)
    return response.status_code, response.json()


def test_served_forecast_answers(served):
    status, body = post_json(served.url, "/forecast", {"series_id": SERIES, "horizon": 24})
    assert status == 200
    assert_valid_forecast(body, 24)


def test_concurrent_requests_batched(served):
    bodies = [{"series_id": SERIES, "horizon": 24}] * 64
    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(lambda b: post_json(served.url, "/forecast", b), bodies))
    assert [status for status, _ in results] == [200] * 64

    import httpx

    metrics = httpx.get(served.url + "/metrics", timeout=30).text
    buckets = {
        float(le): float(count)
        for le, count in re.findall(
            r'spot_forecast_adaptive_batch_size_bucket\{.*?le="([0-9.]+)".*?\} ([0-9.]+)', metrics)
    }
    total = float(re.search(r"spot_forecast_adaptive_batch_size_count(?:\{.*?\})? ([0-9.]+)",
                            metrics).group(1))
    assert buckets[1.0] < total, "no batch held more than one window"


def test_mixed_lengths_match_single(served):
    # C11: histories of 48 and 200 values share batches and still answer as alone.
    a = {"series_id": "a/t.small/Linux/UNIX", "history": FLAT_48, "history_end": END,
         "horizon": 6}
    b = {"series_id": "b/t.small/Linux/UNIX", "history": RISING_200, "history_end": END,
         "horizon": 12}
    _, alone_a = post_json(served.url, "/forecast", a)
    _, alone_b = post_json(served.url, "/forecast", b)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda body: post_json(served.url, "/forecast", body),
                                [a, b] * 8))
    for (status, body), expected in zip(results, [alone_a, alone_b] * 8, strict=True):
        assert status == 200
        assert body["unique_id"] == expected["unique_id"]
        assert len(body["steps"]) == len(expected["steps"])
        assert max_difference(body, expected) < 1e-6


def test_refresh_reads_archive(service_module, tmp_path, monkeypatch):
    import pandas as pd

    from spot_forecast.archive import append_prices
    from spot_forecast.ingest import records_to_table

    records = [
        {"AvailabilityZone": "eu-west-1a", "InstanceType": "z9.large",
         "ProductDescription": "Linux/UNIX", "SpotPrice": price, "Timestamp": ts}
        for price, ts in [("0.050000", "2022-03-20T00:10:00Z"),
                          ("0.052000", "2022-03-20T05:00:00Z")]
    ]
    table, _ = records_to_table(records)
    append_prices(tmp_path / "archive", table)
    monkeypatch.setenv("SPOT_FORECAST_ARCHIVE_PATH", str(tmp_path / "archive"))

    svc = service_module.SpotForecast()
    before = len(svc.app.history)
    result = svc.refresh()
    assert result.series == 1
    assert result.total_series == before + 1
    series = svc.app.find_series("eu-west-1a/z9.large/Linux/UNIX")
    assert series.values[-1] == 0.052
    assert series.end == pd.Timestamp("2022-03-20T05:00Z")


def test_refresh_without_archive_fails_cleanly(service_module, tmp_path, monkeypatch):
    monkeypatch.setenv("SPOT_FORECAST_ARCHIVE_PATH", str(tmp_path / "missing"))
    svc = service_module.SpotForecast()
    response = svc.refresh()
    assert response.status_code == 400
    assert b"missing" in response.body


@pytest.mark.parametrize("path, body, words", [
    ("/job_cost", {"series_id": SERIES}, ["duration_hours is missing", "Run time in hours"]),
    ("/job_cost", {"series_id": SERIES, "duration_hours": 4, "start": "tomorrow"},
     ["start is invalid", "2024-05-10T06:00:00Z"]),
    ("/job_cost", {"series_id": SERIES, "duration_hours": "four"},
     ["duration_hours is invalid", "valid number", "at most 168"]),
    ("/forecast", {"series_id": SERIES, "hrizon": 3},
     ["hrizon is not a field", "did you mean horizon?"]),
    ("/cheapest_window", {"candidates": [SERIES], "duration_hours": 4, "deadline_hours": 24},
     ["candidates[0] is invalid", "an object with a series_id"]),
])
def test_validation_errors_say_what_to_send(client, path, body, words):
    response = client.post(path, json=body)
    assert response.status_code == 400
    payload = response.json()
    for word in words:
        assert word in payload["error"]
    assert "IODescriptor" not in payload["error"]
    assert payload["detail"]  # BentoML's details stay for programs


def test_two_validation_errors_both_named(client):
    response = client.post("/rank", json={"instance_types": "m5.large"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "hours is missing" in error
    assert "instance_types is invalid" in error


def test_other_400_bodies_pass_unchanged():
    from spot_forecast.http_limits import readable_validation_body

    body = b'{"error": "history[1] is null; send a positive price in USD per hour"}'
    assert readable_validation_body(body, {}) == body
    assert readable_validation_body(b"not json", {}) == b"not json"
