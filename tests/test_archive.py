"""Tests of the Parquet price archive on real files: layout, idempotence, crashes and locking."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pytest

from spot_forecast import archive
from spot_forecast.archive import (
    FILE_SCHEMA,
    ArchiveError,
    ArchiveLockedError,
    ArchiveWriter,
    append_prices,
    latest_by_region,
    list_series,
    read_archive,
)
from spot_forecast.series import CANONICAL_COLUMNS, empty_table, region_of, series_id

UTC = "UTC"


def make_table(rows: list[tuple[str, str, str, float, str]]) -> pd.DataFrame:
    """Build a canonical table from (zone, instance type, product, price, ISO time) tuples."""
    frame = pd.DataFrame(
        rows, columns=["availability_zone", "instance_type", "product_description", "y", "ds"]
    )
    frame["ds"] = pd.to_datetime(frame["ds"], utc=True).astype("datetime64[ns, UTC]")
    frame["unique_id"] = [
        series_id(zone, kind, product)
        for zone, kind, product in zip(
            frame["availability_zone"],
            frame["instance_type"],
            frame["product_description"],
            strict=True,
        )
    ]
    frame["region"] = frame["availability_zone"].map(region_of)
    return frame[list(CANONICAL_COLUMNS)]


TWO_DAYS = make_table(
    [
        ("us-east-1a", "m5.large", "Linux/UNIX", 0.0412, "2024-05-10T00:00:00Z"),
        ("us-east-1a", "m5.large", "Linux/UNIX", 0.0415, "2024-05-10T06:00:00Z"),
        ("us-east-1b", "m5.large", "Linux/UNIX", 0.0398, "2024-05-10T03:00:00Z"),
        ("us-east-1a", "m5.large", "Linux/UNIX", 0.0420, "2024-05-11T01:00:00Z"),
        ("eu-west-1a", "c5.large", "Windows", 0.1210, "2024-05-11T02:00:00Z"),
    ]
)


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def test_append_writes_hive_layout(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    report = append_prices(root, TWO_DAYS)

    relative = [str(path.relative_to(root)) for path in parquet_files(root)]
    assert relative == [
        "region=eu-west-1/date=2024-05-11/data.parquet",
        "region=us-east-1/date=2024-05-10/data.parquet",
        "region=us-east-1/date=2024-05-11/data.parquet",
    ]
    assert report.rows_new == 5
    assert report.files_written == 3
    stored = pd.read_parquet(parquet_files(root)[1])
    assert list(stored.columns) == FILE_SCHEMA.names


def test_archive_readable_by_pandas_and_pyarrow(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS)

    by_pandas = pd.read_parquet(root)
    by_pyarrow = pads.dataset(root, format="parquet", partitioning="hive").to_table()
    assert len(by_pandas) == 5
    assert by_pyarrow.num_rows == 5
    assert set(by_pandas["region"].astype(str)) == {"us-east-1", "eu-west-1"}


def test_read_archive_returns_canonical_table(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS)

    frame = read_archive(root)
    assert list(frame.columns) == list(CANONICAL_COLUMNS)
    assert frame.dtypes.to_dict() == empty_table().dtypes.to_dict()
    assert str(frame["ds"].dtype) == "datetime64[ns, UTC]"
    assert frame["y"].dtype == "float64"
    assert frame["unique_id"].tolist() == sorted(frame["unique_id"].tolist())
    first = frame[frame["unique_id"] == "us-east-1a/m5.large/Linux/UNIX"]
    assert first["y"].tolist() == [0.0412, 0.0415, 0.0420]
    assert first["region"].unique().tolist() == ["us-east-1"]


def test_same_data_twice_adds_nothing(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS)
    before = {path: path.stat().st_mtime_ns for path in parquet_files(root)}

    report = append_prices(root, TWO_DAYS)

    assert report.rows_new == 0
    assert report.rows_duplicate == 5
    assert report.files_written == 0
    assert {path: path.stat().st_mtime_ns for path in parquet_files(root)} == before
    assert len(read_archive(root)) == 5


def test_overlapping_append_adds_only_new(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS.iloc[:3])

    report = append_prices(root, TWO_DAYS.iloc[1:])

    assert report.rows_new == 2
    assert report.rows_duplicate == 2
    assert report.files_written == 2
    frame = read_archive(root)
    assert len(frame) == 5
    assert not frame.duplicated(["unique_id", "ds"]).any()


def test_conflicting_price_keeps_archived(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS.iloc[:1])
    changed = TWO_DAYS.iloc[:1].assign(y=0.0999)

    with caplog.at_level(logging.WARNING, logger="spot_forecast.archive"):
        report = append_prices(root, changed)

    assert report.rows_conflicting == 1
    assert report.rows_new == 0
    assert read_archive(root)["y"].tolist() == [0.0412]
    assert "different price" in caplog.text


def test_read_since_includes_price_in_force(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS)
    series = "us-east-1a/m5.large/Linux/UNIX"

    with_prior = read_archive(root, series=series, since="2024-05-10T12:00Z")
    without_prior = read_archive(
        root, series=series, since="2024-05-10T12:00Z", with_price_in_force=False
    )

    assert with_prior["y"].tolist() == [0.0415, 0.0420]
    assert with_prior["ds"].iloc[0] == pd.Timestamp("2024-05-10T06:00Z")
    assert without_prior["y"].tolist() == [0.0420]


def test_read_filters_series_and_regions(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS)

    one_series = read_archive(root, series=["us-east-1b/m5.large/Linux/UNIX"])
    one_region = read_archive(root, regions=["eu-west-1"])

    assert one_series["y"].tolist() == [0.0398]
    assert one_region["unique_id"].tolist() == ["eu-west-1a/c5.large/Windows"]


def test_read_missing_archive_raises(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not found; create it with `spot-forecast ingest"):
        read_archive(tmp_path / "nowhere")


def test_read_empty_archive_is_empty(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    root.mkdir()

    frame = read_archive(root)

    assert frame.empty
    assert list(frame.columns) == list(CANONICAL_COLUMNS)


def test_latest_by_region_per_region(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS)

    latest = latest_by_region(root)

    assert latest == {
        "eu-west-1": pd.Timestamp("2024-05-11T02:00Z"),
        "us-east-1": pd.Timestamp("2024-05-11T01:00Z"),
    }


def test_latest_by_region_filters_types(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS)
    older_type = make_table(
        [("us-east-1a", "t3.micro", "Linux/UNIX", 0.0031, "2024-05-09T05:00:00Z")]
    )
    append_prices(root, older_type)

    latest = latest_by_region(root, instance_types=["t3.micro"])
    by_product = latest_by_region(root, products=["Windows"])

    assert latest == {"us-east-1": pd.Timestamp("2024-05-09T05:00Z")}
    assert by_product == {"eu-west-1": pd.Timestamp("2024-05-11T02:00Z")}


def test_latest_by_region_missing_archive(tmp_path: Path) -> None:
    assert latest_by_region(tmp_path / "nowhere") == {}


def test_zone_map_keys_series_by_id(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    zone_ids = {"us-east-1a": "use1-az4", "us-east-1b": "use1-az6"}

    append_prices(root, TWO_DAYS.iloc[:3], account="111111111111", zone_ids=zone_ids)

    frame = read_archive(root, with_zone_columns=True)
    assert sorted(frame["unique_id"].unique()) == [
        "use1-az4/m5.large/Linux/UNIX",
        "use1-az6/m5.large/Linux/UNIX",
    ]
    assert sorted(frame["availability_zone"].unique()) == ["us-east-1a", "us-east-1b"]
    assert set(frame["account"]) == {"111111111111"}


def test_file_with_zone_ids_accepted(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    by_id = make_table([("use1-az4", "m5.large", "Linux/UNIX", 0.0412, "2024-05-10T00:00:00Z")])

    append_prices(root, by_id)
    append_prices(
        tmp_path / "mapped", by_id, account="111111111111", zone_ids={"us-east-1a": "use1-az4"}
    )

    unmapped = read_archive(root, with_zone_columns=True)
    mapped = read_archive(tmp_path / "mapped", with_zone_columns=True)
    assert unmapped["unique_id"].tolist() == ["use1-az4/m5.large/Linux/UNIX"]
    assert unmapped["availability_zone_id"].tolist() == ["use1-az4"]
    assert unmapped["region"].tolist() == ["use1"]
    assert mapped["availability_zone"].tolist() == ["us-east-1a"]
    assert mapped["region"].tolist() == ["us-east-1"]


def test_other_account_zone_name_rejected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "archive"
    first = make_table([("us-east-1a", "m5.large", "Linux/UNIX", 0.0412, "2024-05-10T00:00:00Z")])
    second = first.assign(y=0.0523)
    append_prices(root, first, account="111111111111")

    with caplog.at_level(logging.WARNING, logger="spot_forecast.archive"):
        report = append_prices(root, second, account="222222222222")

    assert report.rejected["foreign_zone_name"] == 1
    assert report.rows_new == 0
    assert "account 222222222222" in caplog.text
    assert "account 111111111111" in caplog.text
    assert read_archive(root)["y"].tolist() == [0.0412]


def test_same_account_zone_name_merged(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS.iloc[:1], account="111111111111")

    report = append_prices(root, TWO_DAYS.iloc[1:2], account="111111111111")

    assert report.rows_new == 1
    assert report.rejected == {}


def test_row_without_region_rejected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    no_region = TWO_DAYS.iloc[:2].copy()
    no_region.loc[no_region.index[0], "region"] = ""

    with caplog.at_level(logging.WARNING, logger="spot_forecast.archive"):
        report = append_prices(tmp_path / "archive", no_region)

    assert report.rejected["no_region"] == 1
    assert report.rows_new == 1
    assert "rejected 1 rows whose zone has no region" in caplog.text


def test_failed_rename_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "archive"
    real_replace = archive.os.replace
    calls = {"count": 0}

    def fail_second_rename(source: str, target: str) -> None:
        calls["count"] += 1
        if calls["count"] == 2:
            raise OSError("disk full (injected)")
        real_replace(source, target)

    monkeypatch.setattr(archive.os, "replace", fail_second_rename)
    with pytest.raises(OSError, match="injected"):
        append_prices(root, TWO_DAYS)
    monkeypatch.setattr(archive.os, "replace", real_replace)

    # Days are written oldest first, so only 2024-05-10 of us-east-1 was renamed into place.
    after_failure = read_archive(root)
    assert after_failure["ds"].dt.strftime("%Y-%m-%d").unique().tolist() == ["2024-05-10"]
    assert len(after_failure) == 3
    assert list(root.rglob("*.tmp")) == []

    report = append_prices(root, TWO_DAYS)
    assert report.rows_new == 2
    assert len(read_archive(root)) == 5


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import pandas as pd
    from spot_forecast import archive

    root, table_path, marker = sys.argv[1:4]
    real_replace = os.replace
    calls = 0

    def replace_then_hang(source, target):
        global calls
        calls += 1
        if calls == 2:
            with open(marker, "w") as handle:
                handle.write("about to rename")
            time.sleep(120)
        real_replace(source, target)

    archive.os.replace = replace_then_hang
    archive.append_prices(root, pd.read_parquet(table_path))
    """
)


def wait_for(path: Path, process: subprocess.Popen[bytes], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"child exited early: {process.stderr.read().decode()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"child did not create {path} within {seconds} s")
        time.sleep(0.05)


def test_killed_writer_leaves_no_partial_rows(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    table_path = tmp_path / "input.parquet"
    TWO_DAYS.to_parquet(table_path)
    marker = tmp_path / "marker"
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(root), str(table_path), str(marker)],
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(marker, writer)
    finally:
        writer.kill()
        writer.wait()

    # The second file is complete on disk under its temporary name but was never renamed.
    leftovers = list(root.rglob("*.tmp"))
    assert len(leftovers) == 1
    assert len(pd.read_parquet(root)) == 3
    after_kill = read_archive(root)
    assert len(after_kill) == 3
    assert not after_kill.duplicated(["unique_id", "ds"]).any()

    # The OS released the dead writer's lock, and the next writer cleans up and completes.
    report = append_prices(root, TWO_DAYS)
    assert report.rows_new == 2
    assert list(root.rglob("*.tmp")) == []
    assert len(read_archive(root)) == 5


HOLDING_WRITER = textwrap.dedent(
    """
    import sys, time
    from spot_forecast.archive import ArchiveWriter

    root, marker = sys.argv[1:3]
    with ArchiveWriter(root):
        with open(marker, "w") as handle:
            handle.write("locked")
        time.sleep(120)
    """
)


def test_second_writer_gets_lock_error(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    marker = tmp_path / "marker"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDING_WRITER, str(root), str(marker)], stderr=subprocess.PIPE
    )
    try:
        wait_for(marker, holder)
        with pytest.raises(ArchiveLockedError) as raised:
            append_prices(root, TWO_DAYS)
    finally:
        holder.kill()
        holder.wait()

    message = str(raised.value)
    assert "locked by another spot-forecast run" in message
    assert str(root / ".lock") in message
    assert "wait for that run to finish" in message
    assert parquet_files(root) == []
    assert append_prices(root, TWO_DAYS).rows_new == 5


def test_lock_wait_times_out(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    with ArchiveWriter(root):
        started = time.monotonic()
        with pytest.raises(ArchiveLockedError):
            with ArchiveWriter(root, lock_timeout=0.3):
                pass
        waited = time.monotonic() - started

    assert waited >= 0.3


def test_append_outside_with_raises(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path / "archive")

    with pytest.raises(ArchiveError, match="outside a `with` block"):
        writer.append(TWO_DAYS)


def test_append_rejects_non_canonical_table(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing canonical columns \['region'\]"):
        append_prices(tmp_path / "archive", TWO_DAYS.drop(columns=["region"]))


def test_list_series_sorted(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    append_prices(root, TWO_DAYS)

    assert list_series(root) == [
        "eu-west-1a/c5.large/Windows",
        "us-east-1a/m5.large/Linux/UNIX",
        "us-east-1b/m5.large/Linux/UNIX",
    ]
