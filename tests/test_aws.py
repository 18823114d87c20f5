"""Tests of fetching from EC2, with botocore's Stubber serving exact page sequences."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from botocore.exceptions import PaginationError
from botocore.stub import ANY, Stubber

from spot_forecast.archive import append_prices, read_archive
from spot_forecast.aws import (
    PAGE_SIZE,
    clamp_start_time,
    fetch_region,
    fetch_regions,
    load_zone_ids,
    make_ec2_client,
    parse_regions,
)
from spot_forecast.cli import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, ingest_aws
from spot_forecast.config import Settings

START = pd.Timestamp("2024-05-09T23:00Z")
NOW = pd.Timestamp("2024-05-10T12:00Z")
ZONES = {
    "AvailabilityZones": [
        {"ZoneName": "us-east-1a", "ZoneId": "use1-az4", "RegionName": "us-east-1"},
        {"ZoneName": "us-east-1b", "ZoneId": "use1-az6", "RegionName": "us-east-1"},
    ]
}


def record(price: str, hour: int, zone: str = "us-east-1a") -> dict[str, Any]:
    """Return one API record on 2024-05-10 at ``hour`` (negative hours fall on 2024-05-09)."""
    return {
        "AvailabilityZone": zone,
        "InstanceType": "m5.large",
        "ProductDescription": "Linux/UNIX",
        "SpotPrice": price,
        "Timestamp": dt.datetime(2024, 5, 10, tzinfo=dt.UTC) + dt.timedelta(hours=hour),
    }


R1, R2, R3 = record("0.041200", 0), record("0.041200", 1), record("0.041200", 2)


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep boto3 away from the developer's real credentials, config and endpoints."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("ec2", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber


def price_params(token: str | None = None, start: pd.Timestamp = START) -> dict[str, Any]:
    params: dict[str, Any] = {"StartTime": start.to_pydatetime(), "MaxResults": PAGE_SIZE}
    if token is not None:
        params["NextToken"] = token
    return params


def add_pages(stubber: Stubber, pages: list[tuple[list[dict[str, Any]], str]]) -> None:
    """Queue describe_spot_price_history pages; each call must carry the previous page's token."""
    token = None
    for records, next_token in pages:
        stubber.add_response(
            "describe_spot_price_history",
            {"SpotPriceHistory": records, "NextToken": next_token},
            price_params(token),
        )
        token = next_token


def test_empty_token_ends_pagination(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_response("describe_availability_zones", ZONES, {})
    add_pages(stubber, [([R1, R2], "t1"), ([], "t2"), ([R3], "")])

    result = fetch_region("us-east-1", client, start_time=START)

    stubber.assert_no_pending_responses()
    assert result.ok
    assert result.calls == 3
    assert len(result.table) == 3
    assert result.table["y"].tolist() == [0.0412, 0.0412, 0.0412]


def test_repeated_token_stops_with_warning(
    stubbed: tuple[Any, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    client, stubber = stubbed
    stubber.add_response("describe_availability_zones", ZONES, {})
    add_pages(stubber, [([R1, R2], "t1"), ([], "t2"), ([R2, R3], "t2")])

    with caplog.at_level(logging.WARNING, logger="spot_forecast.aws"):
        result = fetch_region("us-east-1", client, start_time=START)

    stubber.assert_no_pending_responses()
    assert result.calls == 3
    assert len(result.table) == 3
    assert result.records_fetched == 4
    assert result.report.rejected["exact_duplicate"] == 1
    assert "us-east-1: EC2 returned a pagination token it had returned before" in caplog.text


def test_token_cycle_stops_with_warning(
    stubbed: tuple[Any, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    client, stubber = stubbed
    stubber.add_response("describe_availability_zones", ZONES, {})
    add_pages(stubber, [([R1], "t1"), ([R2], "t2"), ([R3], "t1")])

    with caplog.at_level(logging.WARNING, logger="spot_forecast.aws"):
        result = fetch_region("us-east-1", client, start_time=START)

    stubber.assert_no_pending_responses()
    assert result.calls == 3
    assert len(result.table) == 3
    assert "token it had returned before" in caplog.text


def test_paginator_alone_raises_on_repeat(stubbed: tuple[Any, Stubber]) -> None:
    # Why fetch_region watches tokens itself: boto3's paginator raises, losing the warning path.
    client, stubber = stubbed
    add_pages(stubber, [([R1, R2], "t1"), ([], "t2"), ([R2, R3], "t2")])
    paginator = client.get_paginator("describe_spot_price_history")
    pages = paginator.paginate(
        StartTime=START.to_pydatetime(), PaginationConfig={"PageSize": PAGE_SIZE}
    )

    with pytest.raises(PaginationError, match="same next token"):
        list(pages)


def test_call_cap_stops_endless_tokens(
    stubbed: tuple[Any, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    client, stubber = stubbed
    stubber.add_response("describe_availability_zones", ZONES, {})
    add_pages(stubber, [([R1], "t1"), ([R2], "t2")])

    with caplog.at_level(logging.WARNING, logger="spot_forecast.aws"):
        result = fetch_region("us-east-1", client, start_time=START, max_calls=2)

    stubber.assert_no_pending_responses()
    assert result.calls == 2
    assert len(result.table) == 2
    assert "stopped after 2 describe_spot_price_history calls" in caplog.text


def test_record_before_start_is_kept(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    in_force = record("0.039000", -5)
    stubber.add_response("describe_availability_zones", ZONES, {})
    add_pages(stubber, [([R1, in_force], "")])

    result = fetch_region("us-east-1", client, start_time=START)

    assert result.table["ds"].min() == pd.Timestamp("2024-05-09T19:00Z")
    assert result.table["ds"].min() < START
    assert result.table["y"].tolist() == [0.039, 0.0412]


def test_zone_ids_recorded_per_region(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_response("describe_availability_zones", ZONES, {})
    add_pages(stubber, [([R1], "")])

    result = fetch_region("us-east-1", client, start_time=START)

    assert result.zone_ids == {"us-east-1a": "use1-az4", "us-east-1b": "use1-az6"}
    assert result.table["region"].tolist() == ["us-east-1"]


def test_zones_unauthorized_still_fetches(
    stubbed: tuple[Any, Stubber], caplog: pytest.LogCaptureFixture
) -> None:
    client, stubber = stubbed
    stubber.add_client_error("describe_availability_zones", "UnauthorizedOperation", "no")
    add_pages(stubber, [([R1], "")])

    with caplog.at_level(logging.WARNING, logger="spot_forecast.aws"):
        result = fetch_region("us-east-1", client, start_time=START)

    assert result.ok
    assert result.zone_ids == {}
    assert len(result.table) == 1
    assert "ec2:DescribeAvailabilityZones" in caplog.text


def test_filters_sent_to_api(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_response("describe_availability_zones", ZONES, {})
    expected = price_params() | {
        "InstanceTypes": ["m5.large"],
        "ProductDescriptions": ["Linux/UNIX"],
    }
    stubber.add_response(
        "describe_spot_price_history", {"SpotPriceHistory": [R1], "NextToken": ""}, expected
    )

    result = fetch_region(
        "us-east-1",
        client,
        start_time=START,
        instance_types=["m5.large"],
        products=["Linux/UNIX"],
    )

    stubber.assert_no_pending_responses()
    assert len(result.table) == 1


def stubbed_regions(behaviour: dict[str, str]) -> tuple[dict[str, Any], list[Stubber]]:
    """Create a stubbed client per region. "ok" returns R1 and R2, other values are error codes."""
    clients: dict[str, Any] = {}
    stubbers: list[Stubber] = []
    for region, outcome in behaviour.items():
        client = boto3.client("ec2", region_name=region)
        stubber = Stubber(client)
        if outcome == "ok":
            stubber.add_response("describe_availability_zones", ZONES, {})
            stubber.add_response(
                "describe_spot_price_history",
                {"SpotPriceHistory": [R1, R2], "NextToken": ""},
                {"StartTime": ANY, "MaxResults": PAGE_SIZE},
            )
        else:
            stubber.add_client_error(
                "describe_availability_zones", outcome, "The account cannot use this region."
            )
        stubber.activate()
        clients[region] = client
        stubbers.append(stubber)
    return clients, stubbers


@pytest.mark.parametrize("code", ["AuthFailure", "OptInRequired"])
def test_denied_region_is_skipped(code: str, caplog: pytest.LogCaptureFixture) -> None:
    clients, _ = stubbed_regions({"us-east-1": "ok", "ap-east-1": code})

    with caplog.at_level(logging.WARNING, logger="spot_forecast.aws"):
        results = {
            result.region: result
            for result in fetch_regions(
                ["us-east-1", "ap-east-1"],
                start_times={"us-east-1": START, "ap-east-1": START},
                client_factory=clients.__getitem__,
            )
        }

    assert results["us-east-1"].ok
    assert len(results["us-east-1"].table) == 2
    assert results["ap-east-1"].access_denied
    assert results["ap-east-1"].error_code == code
    assert f"ap-east-1: skipped because the request failed with {code}" in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("code", ["AuthFailure", "OptInRequired"])
def test_denied_region_partial_success(code: str, tmp_path: Path) -> None:
    clients, _ = stubbed_regions({"us-east-1": "ok", "ap-east-1": code})
    root = tmp_path / "archive"

    summary = ingest_aws(
        root,
        ["us-east-1", "ap-east-1"],
        client_factory=clients.__getitem__,
        settings=Settings(),
        now=NOW,
    )

    assert summary.exit_code() == EXIT_PARTIAL
    assert summary.stored == ["us-east-1"]
    assert summary.skipped == [("ap-east-1", code)]
    assert summary.rows_new == 2
    stored = read_archive(root)
    assert stored["unique_id"].unique().tolist() == ["use1-az4/m5.large/Linux/UNIX"]
    assert stored["region"].unique().tolist() == ["us-east-1"]
    assert any(f"ap-east-1: {code}" in line for line in summary.lines("regions"))


def test_all_regions_denied_fails(tmp_path: Path) -> None:
    clients, _ = stubbed_regions({"ap-east-1": "AuthFailure"})

    summary = ingest_aws(
        tmp_path / "archive", ["ap-east-1"], client_factory=clients.__getitem__, now=NOW
    )

    assert summary.exit_code() == EXIT_FAILED
    assert summary.stored == []


def test_second_run_starts_at_latest(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    latest = pd.Timestamp("2024-05-10T07:30Z")
    archived = pd.DataFrame(
        {
            "unique_id": ["us-east-1a/m5.large/Linux/UNIX"] * 2,
            "ds": [pd.Timestamp("2024-05-10T05:00Z"), latest],
            "y": [0.04, 0.041],
            "availability_zone": "us-east-1a",
            "instance_type": "m5.large",
            "product_description": "Linux/UNIX",
            "region": "us-east-1",
        }
    )
    append_prices(root, archived)
    clients: dict[str, Any] = {}
    for region, start in (("us-east-1", latest), ("eu-west-1", NOW - pd.Timedelta(days=90))):
        client = boto3.client("ec2", region_name=region)
        stubber = Stubber(client)
        stubber.add_response("describe_availability_zones", {"AvailabilityZones": []}, {})
        stubber.add_response(
            "describe_spot_price_history",
            {"SpotPriceHistory": [], "NextToken": ""},
            price_params(start=start),
        )
        stubber.activate()
        clients[region] = client

    summary = ingest_aws(
        root, ["us-east-1", "eu-west-1"], client_factory=clients.__getitem__, now=NOW
    )

    # Stubber raises on any other StartTime, which would skip the region.
    assert summary.skipped == []
    assert sorted(summary.stored) == ["eu-west-1", "us-east-1"]
    assert summary.exit_code() == EXIT_OK


def test_second_run_adds_nothing_new(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    first, _ = stubbed_regions({"us-east-1": "ok"})
    second, _ = stubbed_regions({"us-east-1": "ok"})

    ingest_aws(root, ["us-east-1"], client_factory=first.__getitem__, now=NOW)
    again = ingest_aws(root, ["us-east-1"], client_factory=second.__getitem__, now=NOW)

    assert again.rows_new == 0
    assert again.duplicates_archived == 2
    assert len(read_archive(root)) == 2


def test_days_over_90_clamped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = boto3.client("ec2", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_response("describe_availability_zones", ZONES, {})
    stubber.add_response(
        "describe_spot_price_history",
        {"SpotPriceHistory": [], "NextToken": ""},
        price_params(start=NOW - pd.Timedelta(days=90)),
    )
    stubber.activate()

    with caplog.at_level(logging.WARNING):
        summary = ingest_aws(
            tmp_path / "archive", ["us-east-1"], days=120, client_factory=lambda _: client, now=NOW
        )

    assert summary.exit_code() == EXIT_OK
    assert "--days 120 is more than the 90 days EC2 keeps" in caplog.text


def test_clamp_start_time_warns(caplog: pytest.LogCaptureFixture) -> None:
    old = NOW - pd.Timedelta(days=100)

    with caplog.at_level(logging.WARNING, logger="spot_forecast.aws"):
        clamped = clamp_start_time(old, now=NOW, region="eu-west-1")
        unchanged = clamp_start_time(START, now=NOW, region="eu-west-1")

    assert clamped == NOW - pd.Timedelta(days=90)
    assert unchanged == START
    assert caplog.text.count("eu-west-1: start time") == 1


def test_client_uses_standard_retries() -> None:
    client = make_ec2_client("eu-west-1", max_attempts=5)

    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert client.meta.region_name == "eu-west-1"


def test_endpoint_url_option_used() -> None:
    client = make_ec2_client("eu-west-1", endpoint_url="http://127.0.0.1:4566")

    assert client.meta.endpoint_url == "http://127.0.0.1:4566"


def test_endpoint_url_environment_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4567")

    client = make_ec2_client("eu-west-1")

    assert client.meta.endpoint_url == "http://127.0.0.1:4567"


def test_parse_regions_valid_list() -> None:
    assert parse_regions("eu-west-1, us-east-1,eu-west-1,us-gov-west-1") == [
        "eu-west-1",
        "us-east-1",
        "us-gov-west-1",
    ]


@pytest.mark.parametrize("text", ["eu-west", "EU-WEST-1", "eu_west_1", " , "])
def test_parse_regions_rejects_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="eu-west-1"):
        parse_regions(text)


def test_load_zone_ids_cli_json(tmp_path: Path) -> None:
    path = tmp_path / "zones.json"
    path.write_text(
        '{"AvailabilityZones": [{"ZoneName": "us-east-1a", "ZoneId": "use1-az4",'
        ' "RegionName": "us-east-1", "State": "available"}]}'
    )

    assert load_zone_ids(path) == {"us-east-1a": "use1-az4"}


def test_load_zone_ids_csv(tmp_path: Path) -> None:
    path = tmp_path / "zones.csv"
    path.write_text("zone_name,zone_id\nus-east-1a,use1-az6\nus-east-1b,use1-az1\n")

    assert load_zone_ids(path) == {"us-east-1a": "use1-az6", "us-east-1b": "use1-az1"}


def test_load_zone_ids_rejects_swapped(tmp_path: Path) -> None:
    path = tmp_path / "zones.json"
    path.write_text('{"use1-az4": "us-east-1a"}')

    with pytest.raises(ValueError, match="expected a zone name such as us-east-1a"):
        load_zone_ids(path)
