"""End-to-end tests of the ``spot-forecast`` command line.

``ingest aws`` runs against moto and against a local stand-in EC2 server on 127.0.0.1 that the
tests start, which lets them script throttling and access errors over real HTTP.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pandas as pd
import pytest

from spot_forecast.archive import ArchiveWriter, read_archive
from spot_forecast.cli import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main

EC2_NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep boto3 away from the developer's real credentials, config and endpoints."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
        monkeypatch.delenv(name, raising=False)


class StandInEC2:
    """A minimal EC2 Query API server for DescribeAvailabilityZones and DescribeSpotPriceHistory.

    ``errors[region]`` lists error codes to return, one per spot price call, before responding
    normally. Every request is recorded as (region, action, parameters).
    """

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.echo_authorization = False
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                params = {key: values[0] for key, values in parse_qs(body).items()}
                authorization = self.headers.get("Authorization", "")
                region = re.search(r"Credential=[^/]+/\d+/([^/]+)/", authorization).group(1)
                status, text = stand_in.respond(region, params, authorization)
                payload = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def respond(self, region: str, params: dict[str, str], authorization: str) -> tuple[int, str]:
        action = params["Action"]
        self.requests.append((region, action, params))
        pending = self.errors.get(region, [])
        if action == "DescribeSpotPriceHistory" and pending:
            code = pending.pop(0)
            message = f"Request rejected: {authorization}" if self.echo_authorization else code
            status = 503 if code == "RequestLimitExceeded" else 401
            return status, (
                f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
                "</Error></Errors><RequestID>stand-in</RequestID></Response>"
            )
        if action == "DescribeAvailabilityZones":
            return 200, (
                f'<DescribeAvailabilityZonesResponse xmlns="{EC2_NAMESPACE}">'
                "<requestId>stand-in</requestId><availabilityZoneInfo><item>"
                f"<zoneName>{region}a</zoneName><zoneId>use1-az4</zoneId>"
                f"<regionName>{region}</regionName><zoneState>available</zoneState>"
                "</item></availabilityZoneInfo></DescribeAvailabilityZonesResponse>"
            )
        items = "".join(
            "<item><instanceType>m5.large</instanceType>"
            "<productDescription>Linux/UNIX</productDescription>"
            f"<spotPrice>{price}</spotPrice><timestamp>{stamp}</timestamp>"
            f"<availabilityZone>{region}a</availabilityZone></item>"
            for price, stamp in (
                ("0.041200", "2024-05-10T00:00:00.000Z"),
                ("0.043100", "2024-05-10T01:00:00.000Z"),
            )
        )
        return 200, (
            f'<DescribeSpotPriceHistoryResponse xmlns="{EC2_NAMESPACE}">'
            f"<requestId>stand-in</requestId><spotPriceHistorySet>{items}</spotPriceHistorySet>"
            "<nextToken></nextToken></DescribeSpotPriceHistoryResponse>"
        )

    def spot_calls(self, region: str) -> int:
        return sum(
            1
            for name, action, _ in self.requests
            if name == region and action == "DescribeSpotPriceHistory"
        )


@pytest.fixture
def stand_in() -> Iterator[StandInEC2]:
    server = StandInEC2()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def ingest_aws_args(archive: Path, regions: str, *extra: str) -> list[str]:
    return ["ingest", "aws", "--regions", regions, "--archive", str(archive), *extra]


def test_ingest_aws_against_stand_in(tmp_path: Path, stand_in: StandInEC2, capsys) -> None:
    root = tmp_path / "archive"

    code = main(ingest_aws_args(root, "us-east-1", "--endpoint-url", stand_in.url))

    output = capsys.readouterr().out
    assert code == EXIT_OK
    stored = read_archive(root)
    assert stored["unique_id"].unique().tolist() == ["use1-az4/m5.large/Linux/UNIX"]
    assert stored["y"].tolist() == [0.0412, 0.0431]
    assert "spot-forecast ingest aws: done" in output
    assert "records fetched: 2" in output
    assert "new rows: 2" in output


def test_endpoint_from_environment(
    tmp_path: Path, stand_in: StandInEC2, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", stand_in.url)

    code = main(ingest_aws_args(tmp_path / "archive", "us-east-1"))

    assert code == EXIT_OK
    assert stand_in.spot_calls("us-east-1") == 1


def test_throttled_call_is_retried(tmp_path: Path, stand_in: StandInEC2) -> None:
    stand_in.errors["us-east-1"] = ["RequestLimitExceeded"]

    code = main(ingest_aws_args(tmp_path / "archive", "us-east-1", "--endpoint-url", stand_in.url))

    # botocore's standard retry mode resent the throttled call; the region was not skipped.
    assert code == EXIT_OK
    assert stand_in.spot_calls("us-east-1") == 2
    assert len(read_archive(tmp_path / "archive")) == 2


@pytest.mark.parametrize("code", ["AuthFailure", "OptInRequired"])
def test_denied_region_exit_code(
    code: str, tmp_path: Path, stand_in: StandInEC2, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    stand_in.errors["ap-east-1"] = [code]

    with caplog.at_level(logging.INFO):
        exit_code = main(
            ingest_aws_args(
                tmp_path / "archive", "us-east-1,ap-east-1", "--endpoint-url", stand_in.url
            )
        )

    captured = capsys.readouterr()
    assert exit_code == EXIT_PARTIAL
    assert "spot-forecast ingest aws: partial success" in captured.out
    assert f"regions skipped: 1 (ap-east-1: {code})" in captured.out
    assert f"ap-east-1: skipped because the request failed with {code}" in caplog.text
    assert stand_in.spot_calls("ap-east-1") == 1
    assert "Traceback" not in captured.err + caplog.text
    assert read_archive(tmp_path / "archive")["region"].unique().tolist() == ["us-east-1"]


def test_credentials_never_logged(
    tmp_path: Path, stand_in: StandInEC2, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    stand_in.errors["us-east-1"] = ["AuthFailure"]
    stand_in.echo_authorization = True

    with caplog.at_level(logging.DEBUG):
        code = main(
            [
                "-v",
                *ingest_aws_args(tmp_path / "archive", "us-east-1", "--endpoint-url", stand_in.url),
            ]
        )

    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert code == EXIT_FAILED
    assert "Credential=<redacted>" in caplog.text
    assert ACCESS_KEY_ID not in everything
    assert SECRET_ACCESS_KEY not in everything


def test_ingest_aws_with_moto(tmp_path: Path, capsys) -> None:
    moto = pytest.importorskip("moto")
    root = tmp_path / "archive"
    args = ingest_aws_args(root, "us-east-1", "--instance-types", "m5.large")

    with moto.mock_aws():
        first = main(args)
        first_output = capsys.readouterr().out
        second = main(args)
        second_output = capsys.readouterr().out

    stored = read_archive(root, with_zone_columns=True)
    assert first == EXIT_OK
    assert second == EXIT_OK
    assert len(stored) > 0
    assert set(stored["instance_type"]) == {"m5.large"}
    assert stored["unique_id"].str.match(r"^use1-az\d+/m5\.large/").all()
    assert stored["availability_zone"].str.match(r"^us-east-1[a-f]$").all()
    assert f"new rows: {len(stored)}" in first_output
    assert "new rows: 0" in second_output


def test_ingest_aws_invalid_region_usage(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(ingest_aws_args(tmp_path / "archive", "eu_west_1"))

    assert exited.value.code == EXIT_USAGE
    assert "region 'eu_west_1' is invalid" in capsys.readouterr().err


def test_locked_archive_exit_code(tmp_path: Path, stand_in: StandInEC2, capsys) -> None:
    root = tmp_path / "archive"

    with ArchiveWriter(root):
        code = main(ingest_aws_args(root, "us-east-1", "--endpoint-url", stand_in.url))

    assert code == EXIT_FAILED
    assert "is locked by another spot-forecast run" in capsys.readouterr().err
    assert stand_in.requests == []


CSV_HEADER = "AvailabilityZone,InstanceType,ProductDescription,SpotPrice,Timestamp\n"


def write_account_files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for account, price in (("111111111111", "0.041200"), ("222222222222", "0.052300")):
        path = tmp_path / f"prices-{account}.csv"
        path.write_text(
            CSV_HEADER + f"us-east-1a,m5.large,Linux/UNIX,{price},2024-05-10T00:00:00Z\n"
        )
        paths[account] = path
    return paths


def test_accounts_with_zone_maps_split(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    files = write_account_files(tmp_path)
    maps = {"111111111111": "use1-az4", "222222222222": "use1-az6"}
    codes = []
    for account, zone_id in maps.items():
        zone_map = tmp_path / f"zones-{account}.csv"
        zone_map.write_text(f"ZoneName,ZoneId\nus-east-1a,{zone_id}\n")
        codes.append(
            main(
                [
                    "ingest",
                    "files",
                    str(files[account]),
                    "--archive",
                    str(root),
                    "--account",
                    account,
                    "--zone-map",
                    str(zone_map),
                ]
            )
        )

    stored = read_archive(root)
    assert codes == [EXIT_OK, EXIT_OK]
    assert stored["unique_id"].tolist() == [
        "use1-az4/m5.large/Linux/UNIX",
        "use1-az6/m5.large/Linux/UNIX",
    ]
    assert stored["y"].tolist() == [0.0412, 0.0523]


def test_accounts_without_zone_maps_kept_apart(
    tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "archive"
    files = write_account_files(tmp_path)

    with caplog.at_level(logging.WARNING):
        first = main(
            [
                "ingest",
                "files",
                str(files["111111111111"]),
                "--archive",
                str(root),
                "--account",
                "111111111111",
            ]
        )
        second = main(
            [
                "ingest",
                "files",
                str(files["222222222222"]),
                "--archive",
                str(root),
                "--account",
                "222222222222",
            ]
        )

    output = capsys.readouterr().out
    stored = read_archive(root)
    assert first == EXIT_OK
    assert second == EXIT_PARTIAL
    assert "account 222222222222" in caplog.text
    assert "account 111111111111" in caplog.text
    assert "foreign_zone_name 1" in output
    assert stored["y"].tolist() == [0.0412]


def test_ingest_files_summary_counts(tmp_path: Path, capsys) -> None:
    root = tmp_path / "archive"
    path = tmp_path / "prices.csv"
    path.write_text(
        CSV_HEADER
        + "us-east-1a,m5.large,Linux/UNIX,0.031200,2024-05-10T00:00:00Z\n"
        + "us-east-1a,m5.large,Linux/UNIX,-0.010000,2024-05-10T01:00:00Z\n"
        + "us-east-1a,m5.large,Linux/UNIX,abc,2024-05-10T02:00:00Z\n"
        + "us-east-1a,m5.large,Linux/UNIX,0.031200,2024-05-10T00:00:00Z\n"
    )

    first = main(["ingest", "files", str(path), "--archive", str(root)])
    first_output = capsys.readouterr().out
    second = main(["ingest", "files", str(path), "--archive", str(root)])
    second_output = capsys.readouterr().out

    assert first == EXIT_OK
    assert second == EXIT_OK
    assert "records read: 4" in first_output
    assert "new rows: 1" in first_output
    assert "1 repeated in the input" in first_output
    assert "rejected rows: 2" in first_output
    assert "non_positive 1" in first_output
    assert "not_a_number 1" in first_output
    assert "new rows: 0" in second_output
    assert "1 already archived" in second_output


def test_unreadable_file_partial_success(tmp_path: Path, capsys) -> None:
    root = tmp_path / "archive"
    good = write_account_files(tmp_path)["111111111111"]
    missing = tmp_path / "missing.csv"

    code = main(["ingest", "files", str(good), str(missing), "--archive", str(root)])

    output = capsys.readouterr().out
    assert code == EXIT_PARTIAL
    assert f"files skipped: 1 ({missing}: unreadable)" in output
    assert len(read_archive(root)) == 1


def test_only_unreadable_files_fail(tmp_path: Path) -> None:
    code = main(
        ["ingest", "files", str(tmp_path / "missing.csv"), "--archive", str(tmp_path / "a")]
    )

    assert code == EXIT_FAILED


@pytest.fixture
def history_archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    path = tmp_path / "prices.csv"
    path.write_text(
        CSV_HEADER
        + "us-east-1a,m5.large,Linux/UNIX,0.030000,2024-05-10T01:00:00Z\n"
        + "us-east-1a,m5.large,Linux/UNIX,0.040000,2024-05-10T02:00:00Z\n"
        + "us-east-1a,m5.large,Linux/UNIX,0.050000,2024-05-10T03:00:00Z\n"
        + "us-east-1b,m5.large,Linux/UNIX,0.060000,2024-05-10T03:00:00Z\n"
    )
    assert main(["-q", "ingest", "files", str(path), "--archive", str(root)]) == EXIT_OK
    return root


def test_history_prints_csv(history_archive: Path, capsys) -> None:
    capsys.readouterr()

    code = main(["history", "us-east-1a/m5.large/Linux/UNIX", "--archive", str(history_archive)])

    assert code == EXIT_OK
    assert capsys.readouterr().out.splitlines() == [
        "ds,y",
        "2024-05-10T01:00:00Z,0.030000",
        "2024-05-10T02:00:00Z,0.040000",
        "2024-05-10T03:00:00Z,0.050000",
    ]


def test_history_since_starts_with_price_in_force(history_archive: Path, capsys) -> None:
    capsys.readouterr()

    code = main(
        [
            "history",
            "us-east-1a/m5.large/Linux/UNIX",
            "--since",
            "2024-05-10T02:30Z",
            "--archive",
            str(history_archive),
        ]
    )

    assert code == EXIT_OK
    assert capsys.readouterr().out.splitlines()[1:] == [
        "2024-05-10T02:00:00Z,0.040000",
        "2024-05-10T03:00:00Z,0.050000",
    ]


def test_history_unknown_series_suggests(history_archive: Path, capsys) -> None:
    capsys.readouterr()

    code = main(["history", "us-east-1c/m5.large/Linux/UNIX", "--archive", str(history_archive)])

    error = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert "no prices for series 'us-east-1c/m5.large/Linux/UNIX'" in error
    assert "us-east-1a/m5.large/Linux/UNIX, us-east-1b/m5.large/Linux/UNIX" in error


def test_history_missing_archive_fails(tmp_path: Path, capsys) -> None:
    code = main(["history", "us-east-1a/m5.large/Linux/UNIX", "--archive", str(tmp_path / "no")])

    assert code == EXIT_FAILED
    assert "not found; create it with `spot-forecast ingest" in capsys.readouterr().err


def test_history_plot_writes_png(history_archive: Path, tmp_path: Path) -> None:
    image = tmp_path / "series.png"

    code = main(
        [
            "history",
            "us-east-1a/m5.large/Linux/UNIX",
            "--archive",
            str(history_archive),
            "--plot",
            str(image),
        ]
    )

    assert code == EXIT_OK
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_age_since(history_archive: Path, capsys) -> None:
    capsys.readouterr()

    code = main(
        [
            "history",
            "us-east-1a/m5.large/Linux/UNIX",
            "--since",
            "7d",
            "--archive",
            str(history_archive),
        ]
    )

    # 2024 is more than 7 days ago, so only the price in force remains.
    assert code == EXIT_OK
    assert capsys.readouterr().out.splitlines()[1:] == ["2024-05-10T03:00:00Z,0.050000"]


def test_history_invalid_since_usage(history_archive: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["history", "us-east-1a/m5.large/Linux/UNIX", "--since", "yesterday"])

    assert exited.value.code == EXIT_USAGE
    assert "'yesterday' is not a time" in capsys.readouterr().err


def test_read_archive_after_cli_ingest(history_archive: Path) -> None:
    frame = read_archive(history_archive, since=pd.Timestamp("2024-05-10T03:00Z"))

    # us-east-1a keeps its 02:00 price, in force at 03:00; us-east-1b has nothing earlier.
    assert frame["unique_id"].tolist() == [
        "us-east-1a/m5.large/Linux/UNIX",
        "us-east-1a/m5.large/Linux/UNIX",
        "us-east-1b/m5.large/Linux/UNIX",
    ]
    assert frame["y"].tolist() == [0.04, 0.05, 0.06]
