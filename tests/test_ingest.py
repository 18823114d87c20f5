"""Tests of the file-reading stage: formats, validation, time zones, duplicates and real files."""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import io
import json
import logging
import lzma
import random
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import zstandard

from spot_forecast.ingest import (
    IngestError,
    IngestReport,
    canonicalize,
    read_prices,
    records_to_table,
    validate_prices,
)
from spot_forecast.series import CANONICAL_COLUMNS, empty_table

FIXTURES = Path(__file__).resolve().parent / "data" / "real"
SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
SHARED_MISSING = f"shared data folder is missing: {SHARED_REAL}"

AWS_HEADER = "Timestamp,AvailabilityZone,InstanceType,ProductDescription,SpotPrice"


def record(
    price: str,
    timestamp: str,
    *,
    zone: str = "us-east-1a",
    instance_type: str = "m5.large",
    product: str = "Linux/UNIX",
) -> dict[str, str]:
    """Build one record shaped like the AWS CLI output."""
    return {
        "Timestamp": timestamp,
        "ProductDescription": product,
        "InstanceType": instance_type,
        "SpotPrice": price,
        "AvailabilityZone": zone,
    }


def write_cli_json(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text(json.dumps({"SpotPriceHistory": records}, indent=4), encoding="utf-8")
    return path


def write_csv(path: Path, lines: list[str], *, newline: str = "\n") -> Path:
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return path


def assert_counts_balance(report: IngestReport) -> None:
    """Every row read is either kept or counted under exactly one reason."""
    assert report.rows_read == report.rows_kept + sum(report.rejected.values())


def assert_canonical(table: pd.DataFrame) -> None:
    assert list(table.columns) == list(CANONICAL_COLUMNS)
    assert table.dtypes.equals(empty_table().dtypes)
    assert table.index.equals(pd.RangeIndex(len(table)))
    assert table.equals(table.sort_values(["unique_id", "ds"], kind="stable", ignore_index=True))
    assert not table.duplicated(subset=["unique_id", "ds"]).any()


# --- Order, products and bad prices ------------------------------------------------------------

C02_RECORDS = [
    record("0.050000", "2024-05-10T03:00:00.000Z"),
    record("0.040000", "2024-05-10T02:00:00.000Z"),
    record("0.030000", "2024-05-10T01:00:00.000Z"),
]


def test_newest_first_json_sorted_ascending(tmp_path: Path) -> None:
    table, report = read_prices(write_cli_json(tmp_path / "newest.json", C02_RECORDS))

    assert table["y"].tolist() == [0.03, 0.04, 0.05]
    assert table["ds"].is_monotonic_increasing
    assert table["y"].iloc[-1] == 0.05
    assert table["ds"].iloc[-1] == pd.Timestamp("2024-05-10T03:00:00Z")
    assert report.rows_kept == 3
    assert_canonical(table)


def test_shuffled_json_matches_newest_first(tmp_path: Path) -> None:
    shuffled = C02_RECORDS[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != C02_RECORDS

    newest, _ = read_prices(write_cli_json(tmp_path / "newest.json", C02_RECORDS))
    mixed, _ = read_prices(write_cli_json(tmp_path / "shuffled.json", shuffled))

    pd.testing.assert_frame_equal(newest, mixed)


def test_similar_products_stay_separate(tmp_path: Path) -> None:
    records = [
        record("0.400000", "2024-05-10T00:00:00.000Z", instance_type="c5.large"),
        record(
            "0.031000",
            "2024-05-10T00:00:00.000Z",
            instance_type="c5.large",
            product="Linux/UNIX (Amazon VPC)",
        ),
    ]
    table, report = read_prices(write_cli_json(tmp_path / "products.json", records))

    prices = dict(zip(table["unique_id"], table["y"]))
    assert prices == {
        "us-east-1a/c5.large/Linux/UNIX": 0.4,
        "us-east-1a/c5.large/Linux/UNIX (Amazon VPC)": 0.031,
    }
    assert sorted(table["product_description"]) == ["Linux/UNIX", "Linux/UNIX (Amazon VPC)"]
    assert report.rejected["conflicting_duplicate"] == 0


def test_bad_prices_rejected_by_reason(tmp_path: Path) -> None:
    prices = ['""', "NaN", "inf", "-0.010000", "abc", "0.031200"]
    lines = [AWS_HEADER] + [
        f"2024-05-10T0{hour}:00:00Z,us-east-1a,m5.large,Linux/UNIX,{price}"
        for hour, price in enumerate(prices)
    ]
    table, report = read_prices(write_csv(tmp_path / "bad.csv", lines))

    assert table["y"].tolist() == [0.0312]
    assert table["ds"].tolist() == [pd.Timestamp("2024-05-10T05:00:00Z")]
    assert report.rows_read == 6
    assert report.rows_kept == 1
    assert report.rejected["blank_price"] == 1
    assert report.rejected["non_finite"] == 2
    assert report.rejected["non_positive"] == 1
    assert report.rejected["not_a_number"] == 1
    assert sum(report.rejected.values()) == 5


def test_bad_prices_logged_as_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [AWS_HEADER, "2024-05-10T00:00:00Z,us-east-1a,m5.large,Linux/UNIX,abc"]
    with caplog.at_level(logging.WARNING, logger="spot_forecast.ingest"):
        read_prices(write_csv(tmp_path / "bad.csv", lines))

    warnings = [entry for entry in caplog.records if entry.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "not_a_number 1" in warnings[0].getMessage()
    assert "bad.csv" in warnings[0].getMessage()


# --- Other reject reasons and duplicates -------------------------------------------------------


def test_keys_zones_and_timestamps_rejected(tmp_path: Path) -> None:
    lines = [
        AWS_HEADER,
        "2024-05-10T00:00:00Z,,m5.large,Linux/UNIX,0.03",
        "2024-05-10T00:00:00Z,us-east-1a,,Linux/UNIX,0.03",
        "2024-05-10T00:00:00Z,us-east-1a,m5.large,,0.03",
        "2024-05-10T00:00:00Z,sim,m5.large,Linux/UNIX,0.03",
        "yesterday,us-east-1a,m5.large,Linux/UNIX,0.03",
        "3/31/19 6:27,us-east-1a,m5.large,Linux/UNIX,0.03",
        "2024-05-10T00:00:00Z,use1-az4,m5.large,Linux/UNIX,0.03",
    ]
    table, report = read_prices(write_csv(tmp_path / "keys.csv", lines))

    assert table["unique_id"].tolist() == ["use1-az4/m5.large/Linux/UNIX"]
    assert table["region"].tolist() == ["use1"]
    assert report.rejected["missing_key"] == 3
    assert report.rejected["bad_zone"] == 1
    assert report.rejected["bad_timestamp"] == 2
    assert_counts_balance(report)


def test_row_with_extra_fields_malformed(tmp_path: Path) -> None:
    lines = [
        AWS_HEADER,
        "2024-05-10T00:00:00Z,us-east-1a,m5.large,Linux/UNIX,0.03",
        "2024-05-10T01:00:00Z,us-east-1a,m5.large,Linux/UNIX,0.04,surplus",
    ]
    table, report = read_prices(write_csv(tmp_path / "extra.csv", lines))

    assert table["y"].tolist() == [0.03]
    assert report.rejected["malformed_row"] == 1
    assert report.rows_read == 2


def test_conflicting_duplicate_keeps_highest_price(tmp_path: Path) -> None:
    rows = [
        "2024-05-10T00:00:00Z,us-east-1a,m5.large,Linux/UNIX,0.040000",
        "2024-05-10T00:00:00Z,us-east-1a,m5.large,Linux/UNIX,0.030000",
    ]
    forward, forward_report = read_prices(write_csv(tmp_path / "a.csv", [AWS_HEADER, *rows]))
    backward, _ = read_prices(write_csv(tmp_path / "b.csv", [AWS_HEADER, *rows[::-1]]))

    assert forward["y"].tolist() == [0.04]
    assert forward_report.rejected["conflicting_duplicate"] == 1
    assert forward_report.rejected["exact_duplicate"] == 0
    pd.testing.assert_frame_equal(forward, backward)


def test_differently_written_duplicates_are_exact(tmp_path: Path) -> None:
    lines = [
        AWS_HEADER,
        "2024-05-10T00:00:00Z,us-east-1a,m5.large,Linux/UNIX,0.05",
        "2024-05-10T00:00:00.000+00:00,us-east-1a,m5.large,Linux/UNIX,0.050000",
        "2024-05-10T00:00:00Z,us-east-1a,m5.large,Linux/UNIX,0.05",
    ]
    table, report = read_prices(write_csv(tmp_path / "same.csv", lines))

    assert len(table) == 1
    assert report.rejected["exact_duplicate"] == 2
    assert report.rejected["conflicting_duplicate"] == 0


def test_validate_prices_names_each_reason() -> None:
    reasons = validate_prices(["0.03", "", None, "NaN", "-inf", "0", "-0.01", "abc", 0.5])

    assert reasons == [
        "",
        "blank_price",
        "blank_price",
        "non_finite",
        "non_finite",
        "non_positive",
        "non_positive",
        "not_a_number",
        "",
    ]


# --- Time zones --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "timestamp",
    [
        "2024-05-09T20:00:00-0700",
        "2024-05-10T11:00:00+0800",
        "2024-05-10T03:00:00+00:00",
        "2024-05-10T03:00:00.000Z",
        "2024-05-10T03:00:00",
        "2024-05-10 03:00:00+00:00",
    ],
)
def test_offsets_convert_to_same_utc_instant(tmp_path: Path, timestamp: str) -> None:
    lines = [AWS_HEADER, f"{timestamp},us-east-1a,m5.large,Linux/UNIX,0.031"]
    table, _ = read_prices(write_csv(tmp_path / "offset.csv", lines))

    assert table["ds"].tolist() == [pd.Timestamp("2024-05-10T03:00:00Z")]
    assert str(table["ds"].dt.tz) == "UTC"


# --- Compression -------------------------------------------------------------------------------


def compress_zstd_long_window(data: bytes) -> bytes:
    """Compress with a 256 MiB window, which zstd decoders reject unless allowed more memory."""
    parameters = zstandard.ZstdCompressionParameters.from_level(3, window_log=28, enable_ldm=True)
    compressor = zstandard.ZstdCompressor(compression_params=parameters)
    # A streamed frame does not record its size, so the encoder cannot shrink the window to fit.
    buffer = io.BytesIO()
    with compressor.stream_writer(buffer, closefd=False) as writer:
        writer.write(data)
    return buffer.getvalue()


COMPRESSORS = {
    "plain": lambda data: data,
    "gzip": gzip.compress,
    "xz": lzma.compress,
    "bzip2": bz2.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
    "zstd_long_window": compress_zstd_long_window,
}


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_compressed_files_read_alike(tmp_path: Path, compression: str) -> None:
    plain = write_cli_json(tmp_path / "plain.json", C02_RECORDS)
    packed = tmp_path / "packed.bin"
    packed.write_bytes(COMPRESSORS[compression](plain.read_bytes()))

    expected, _ = read_prices(plain)
    table, report = read_prices(packed)

    pd.testing.assert_frame_equal(table, expected)
    assert report.files == [str(packed)]


def test_long_window_zstd_frame_is_declared() -> None:
    frame = compress_zstd_long_window(b"x\n" * 1000)

    assert zstandard.get_frame_parameters(frame).window_size == 1 << 28


# --- Formats -----------------------------------------------------------------------------------


def test_utf16_bom_json_reads(tmp_path: Path) -> None:
    path = tmp_path / "utf16.json"
    path.write_bytes(json.dumps({"SpotPriceHistory": C02_RECORDS}).encode("utf-16"))
    assert path.read_bytes()[:2] == b"\xff\xfe"

    table, _ = read_prices(path)

    assert table["y"].tolist() == [0.03, 0.04, 0.05]


def test_real_utf16_json_reads() -> None:
    table, report = read_prices(FIXTURES / "spot.json")

    assert report.rows_kept == 16
    assert table["unique_id"].nunique() == 16
    assert table["ds"].unique().tolist() == [pd.Timestamp("2020-07-01T22:05:14Z")]


def test_utf8_bom_csv_reads(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + f"{AWS_HEADER}\n2024-05-10T00:00:00Z,us-east-1a,m5.large,Linux/UNIX,0.03\n".encode()
    )
    table, _ = read_prices(path)

    assert table["y"].tolist() == [0.03]


def test_bare_json_list_reads(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps(C02_RECORDS), encoding="utf-8")
    table, _ = read_prices(path)

    assert table["y"].tolist() == [0.03, 0.04, 0.05]


def test_real_bare_json_list_reads() -> None:
    table, report = read_prices(FIXTURES / "spot-price-history-Linux-Unix.json")

    assert report.rows_kept == 261
    assert table["unique_id"].unique().tolist() == ["us-west-1a/m1.large/Linux/UNIX"]
    assert table["ds"].min() == pd.Timestamp("2023-01-03T01:40:03Z")
    assert table["ds"].max() == pd.Timestamp("2023-04-01T19:27:16Z")


def test_json_lines_and_pages_read(tmp_path: Path) -> None:
    path = tmp_path / "pages.json"
    pages = [
        {"SpotPriceHistory": C02_RECORDS[:2], "NextToken": "t1"},
        {"SpotPriceHistory": C02_RECORDS[2:], "NextToken": ""},
    ]
    path.write_text("\n".join(json.dumps(page) for page in pages), encoding="utf-8")
    table, _ = read_prices(path)

    assert table["y"].tolist() == [0.03, 0.04, 0.05]


def test_json_entry_not_object_malformed(tmp_path: Path) -> None:
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([C02_RECORDS[0], "junk", 3]), encoding="utf-8")
    table, report = read_prices(path)

    assert len(table) == 1
    assert report.rejected["malformed_row"] == 2
    assert_counts_balance(report)


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"SpotPriceHistory": [\n{"SpotPrice": }\n]}', encoding="utf-8")

    with pytest.raises(IngestError) as raised:
        read_prices(path)
    assert str(path) in str(raised.value)
    assert "line 2" in str(raised.value)


def test_text_dump_price_first_layout(tmp_path: Path) -> None:
    path = tmp_path / "dump.txt"
    rows = [
        "SPOTINSTANCEPRICE\t1.156900\t2021-08-01T00:02:33-0700\tm5.16xlarge"
        "\tLinux/UNIX (Amazon VPC)\teu-west-1b",
        "SPOTINSTANCEPRICE\t1.256900\t2021-08-01T00:02:33-0700\tm5.16xlarge"
        "\tSUSE Linux (Amazon VPC)\teu-west-1b",
    ]
    write_csv(path, rows)
    table, report = read_prices(path)

    assert table["unique_id"].tolist() == [
        "eu-west-1b/m5.16xlarge/Linux/UNIX (Amazon VPC)",
        "eu-west-1b/m5.16xlarge/SUSE Linux (Amazon VPC)",
    ]
    assert table["y"].tolist() == [1.1569, 1.2569]
    assert table["ds"].tolist() == [pd.Timestamp("2021-08-01T07:02:33Z")] * 2
    assert report.rows_read == 2


def test_text_dump_zone_first_layout() -> None:
    table, report = read_prices(FIXTURES / "c5.2xlarge_us-east-1.csv")

    assert report.rows_kept == 56
    assert table["unique_id"].nunique() == 5
    assert set(table["instance_type"]) == {"c5.2xlarge"}
    assert set(table["region"]) == {"us-east-1"}
    assert table["ds"].max() == pd.Timestamp("2021-07-31T09:40:19Z")


def test_text_dump_with_header_reads() -> None:
    table, report = read_prices(FIXTURES / "tmp.txt")

    assert report.rows_kept == 140
    assert table["unique_id"].unique().tolist() == ["us-east-1a/m3.medium/Linux/UNIX"]
    assert table["ds"].min() == pd.Timestamp("2016-09-11T15:48:45Z")
    assert table["ds"].max() == pd.Timestamp("2016-09-12T11:48:38Z")


def test_csv_extra_columns_ignored(tmp_path: Path) -> None:
    lines = [
        ",AvailabilityZone,InstanceType,MaximumNetworkInterfaces,SpotPrice,ProductDescription,"
        "Timestamp",
        "0,us-east-1b,m5n.16xlarge,15,2.0791,Linux/UNIX,2024-02-01 18:48:32+00:00",
        "1,us-east-1a,x2iezn.12xlarge,15,4.0463,Linux/UNIX,2024-02-01 18:48:32+00:00",
    ]
    table, _ = read_prices(write_csv(tmp_path / "extras.csv", lines))

    assert table["unique_id"].tolist() == [
        "us-east-1a/x2iezn.12xlarge/Linux/UNIX",
        "us-east-1b/m5n.16xlarge/Linux/UNIX",
    ]
    assert table["y"].tolist() == [4.0463, 2.0791]


def test_real_csv_any_column_order_reads() -> None:
    table, report = read_prices(FIXTURES / "spot_price_history.csv")

    assert report.rows_kept == 869
    assert table["unique_id"].nunique() == 5
    assert table["ds"].max() == pd.Timestamp("2023-12-30T21:17:02Z")


def test_semicolon_crlf_csv_reads(tmp_path: Path) -> None:
    lines = [
        "SpotPrice;Timestamp;AvailabilityZone;InstanceType;ProductDescription",
        "0.031;2024-05-10T00:00:00Z;us-east-1a;m5.large;Linux/UNIX",
        "0.032;2024-05-10T01:00:00Z;us-east-1a;m5.large;Linux/UNIX",
    ]
    path = write_csv(tmp_path / "semicolon.csv", lines, newline="\r\n")
    table, report = read_prices(path)

    assert table["y"].tolist() == [0.031, 0.032]
    assert table["product_description"].tolist() == ["Linux/UNIX", "Linux/UNIX"]
    assert report.rows_read == 2


def test_double_carriage_return_tsv_reads(tmp_path: Path) -> None:
    lines = [
        "time\tzone\ttype\tprice",
        "2017-11-27T23:57:04.000Z\tus-east-1d\tc4.4xlarge\t0.2398",
        "2017-11-27T23:48:36.000Z\tus-east-1d\tc4.4xlarge\t0.2399",
    ]
    path = write_csv(tmp_path / "kths.txt", lines, newline="\r\r\n")
    table, report = read_prices(path, product_description="Linux/UNIX")

    assert table["unique_id"].unique().tolist() == ["us-east-1d/c4.4xlarge/Linux/UNIX"]
    assert table["y"].tolist() == [0.2399, 0.2398]
    assert report.rows_read == 2


def test_product_argument_ignored_when_column_present(tmp_path: Path) -> None:
    lines = [AWS_HEADER, "2024-05-10T00:00:00Z,us-east-1a,m5.large,Windows,0.09"]
    table, _ = read_prices(write_csv(tmp_path / "w.csv", lines), product_description="Linux/UNIX")

    assert table["product_description"].tolist() == ["Windows"]


def test_sqlite_table_reads(tmp_path: Path) -> None:
    path = tmp_path / "prices.db"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE PriceObjects (id INTEGER PRIMARY KEY, timestamp TEXT, spot_price REAL, "
            "instance_type TEXT, product_description TEXT, availability_zone TEXT)"
        )
        connection.executemany(
            "INSERT INTO PriceObjects (timestamp, spot_price, instance_type, product_description, "
            "availability_zone) VALUES (?, ?, ?, ?, ?)",
            [
                ("2013-01-01T08:37:44.000Z", 0.027, "m1.small", "Linux/UNIX", "us-east-1a"),
                ("2013-01-01T07:00:00.000Z", None, "m1.small", "Linux/UNIX", "us-east-1a"),
            ],
        )
    connection.close()

    table, report = read_prices(path)

    assert table["y"].tolist() == [0.027]
    assert table["ds"].tolist() == [pd.Timestamp("2013-01-01T08:37:44Z")]
    assert report.rejected["blank_price"] == 1


def test_sqlite_without_price_table_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE migrations (id INTEGER, name TEXT)")
    connection.close()

    with pytest.raises(IngestError) as raised:
        read_prices(path)
    assert str(path) in str(raised.value)
    assert "migrations" in str(raised.value)


def test_binary_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\x00\x01\x02\x03" * 100)

    with pytest.raises(IngestError) as raised:
        read_prices(path)
    assert str(path) in str(raised.value)


def test_corrupt_gzip_rejected(tmp_path: Path) -> None:
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(b"x" * 10_000)[:40])

    with pytest.raises(IngestError) as raised:
        read_prices(path)
    assert str(path) in str(raised.value)
    assert "gzip" in str(raised.value)


# --- Empty inputs ------------------------------------------------------------------------------


def test_empty_file_gives_zero_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_bytes(b"")
    table, report = read_prices(path)

    assert table.empty
    assert table.dtypes.equals(empty_table().dtypes)
    assert report.rows_read == 0
    assert report.files == [str(path)]


def test_real_empty_dumps_give_zero_rows() -> None:
    table, report = read_prices(
        [FIXTURES / "c1.medium-us-east-1d.gz", FIXTURES / "cg1.4xlarge-us-east-1a.gz"]
    )

    assert table.empty
    assert list(table.columns) == list(CANONICAL_COLUMNS)
    assert report.rows_read == 0
    assert len(report.files) == 2


def test_header_only_csv_gives_zero_rows(tmp_path: Path) -> None:
    table, report = read_prices(write_csv(tmp_path / "header.csv", [AWS_HEADER]))

    assert table.empty
    assert report.rows_read == 0


# --- Several files and folders ----------------------------------------------------------------


def daily_dump(day: int, hours: range) -> list[str]:
    """Rows of one day's --output text dump; each dump repeats the price in force at its start."""
    return [
        f"SPOTINSTANCEPRICE\t0.0{hour:02d}\t2021-08-{day:02d}T{hour:02d}:00:00-0700"
        f"\tm5.large\tLinux/UNIX (Amazon VPC)\teu-west-1a"
        for hour in hours
    ]


def test_overlapping_daily_dumps_deduplicated(tmp_path: Path) -> None:
    folder = tmp_path / "2021-08"
    (folder / "nested").mkdir(parents=True)
    first = daily_dump(1, range(1, 11))
    second = first[-3:] + daily_dump(2, range(1, 6))
    write_csv(folder / "data.2021-08-01T00_05_30.xz.txt", first)
    write_csv(folder / "data.2021-08-02T00_05_30.txt", second)
    write_csv(folder / "nested" / "data.2021-08-02T00_05_34.txt", second)
    (folder / ".hidden").write_text("not a price file")

    table, report = read_prices(folder)

    assert len(table) == 15
    assert report.rows_read == 10 + 8 + 8
    assert report.rejected["exact_duplicate"] == 3 + 8
    assert len(report.files) == 3
    assert_canonical(table)
    assert_counts_balance(report)


def test_list_of_files_deduplicated(tmp_path: Path) -> None:
    first = write_cli_json(tmp_path / "a.json", C02_RECORDS[:2])
    second = write_cli_json(tmp_path / "b.json", C02_RECORDS[1:])
    table, report = read_prices([first, str(second)])

    assert table["y"].tolist() == [0.03, 0.04, 0.05]
    assert report.rejected["exact_duplicate"] == 1
    assert report.files == [str(first), str(second)]


def test_progress_logs_one_line_per_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = write_cli_json(tmp_path / "a.json", C02_RECORDS[:1])
    second = write_cli_json(tmp_path / "b.json", C02_RECORDS[1:])
    with caplog.at_level(logging.INFO, logger="spot_forecast.ingest"):
        read_prices([first, second], progress=True)

    lines = [entry.getMessage() for entry in caplog.records if entry.levelno == logging.INFO]
    assert len(lines) == 2
    assert "a.json" in lines[0]
    assert "b.json" in lines[1]


# --- Unusable files ----------------------------------------------------------------------------


def test_missing_column_error_names_file(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "x.csv",
        ["Timestamp,Region,SpotPrice", "2026-02-27 21:02:32+00:00,us-east-1,0.0047"],
    )
    with pytest.raises(IngestError) as raised:
        read_prices(path)

    message = str(raised.value)
    assert message.startswith(f"{path}: ")
    assert "no AvailabilityZone, InstanceType or ProductDescription column" in message
    assert "found columns Timestamp, Region, SpotPrice" in message
    assert isinstance(raised.value, ValueError)


def test_missing_product_error_suggests_argument(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "kths.txt",
        ["time\tzone\ttype\tprice", "2017-11-27T23:57:04.000Z\tus-east-1d\tc4.4xlarge\t0.2398"],
    )
    with pytest.raises(IngestError) as raised:
        read_prices(path)

    assert "no ProductDescription column" in str(raised.value)
    assert "product_description" in str(raised.value)


def test_missing_path_rejected(tmp_path: Path) -> None:
    with pytest.raises(IngestError) as raised:
        read_prices(tmp_path / "absent.csv")
    assert "absent.csv: file not found" in str(raised.value)


def test_empty_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(IngestError) as raised:
        read_prices(tmp_path)
    assert "folder contains no files" in str(raised.value)


# --- Records, frames and reports ---------------------------------------------------------------


def test_boto3_records_match_cli_json(tmp_path: Path) -> None:
    boto3_records = [
        {
            **item,
            "Timestamp": dt.datetime.fromisoformat(item["Timestamp"].replace("Z", "+00:00")),
        }
        for item in C02_RECORDS
    ]
    expected, _ = read_prices(write_cli_json(tmp_path / "cli.json", C02_RECORDS))
    table, report = records_to_table(boto3_records)

    pd.testing.assert_frame_equal(table, expected)
    assert report.rows_read == 3
    assert report.files == []


def test_naive_datetime_records_are_utc() -> None:
    table, _ = records_to_table(
        [{**C02_RECORDS[0], "Timestamp": dt.datetime(2024, 5, 10, 3, 0)}]
    )

    assert table["ds"].tolist() == [pd.Timestamp("2024-05-10T03:00:00Z")]


def test_no_records_give_empty_table() -> None:
    table, report = records_to_table([])

    assert table.empty
    assert table.dtypes.equals(empty_table().dtypes)
    assert report.rows_read == 0


def test_records_missing_key_rejected() -> None:
    with pytest.raises(IngestError) as raised:
        records_to_table([{"Timestamp": "2024-05-10T00:00:00Z", "SpotPrice": "0.03"}])
    assert "no AvailabilityZone, InstanceType or ProductDescription key" in str(raised.value)


def test_canonical_table_round_trips(tmp_path: Path) -> None:
    original, _ = read_prices(FIXTURES / "c5.2xlarge_us-east-1.csv")
    again, report = canonicalize(original)
    path = tmp_path / "export.csv"
    original.to_csv(path, index=False)
    from_file, _ = read_prices(path)

    pd.testing.assert_frame_equal(again, original)
    pd.testing.assert_frame_equal(from_file, original)
    assert report.rows_kept == len(original)


def test_canonicalize_raw_aws_frame() -> None:
    frame = pd.DataFrame(C02_RECORDS[::-1] + [record("abc", "2024-05-10T04:00:00Z")])
    table, report = canonicalize(frame)

    assert table["y"].tolist() == [0.03, 0.04, 0.05]
    assert report.rejected["not_a_number"] == 1
    assert_canonical(table)


def test_report_summary_and_merge() -> None:
    first = IngestReport(files=["a", "b"], rows_read=100, rows_kept=90)
    first.rejected.update({"exact_duplicate": 8, "blank_price": 2})
    second = IngestReport(files=["c"], rows_read=20, rows_kept=10)
    second.rejected.update({"exact_duplicate": 10})

    merged = first.merge(second)

    assert merged.summary() == (
        "read 3 files, 120 rows: kept 100, rejected 20 (blank_price 2, exact_duplicate 18)"
    )
    assert first.summary() == (
        "read 2 files, 100 rows: kept 90, rejected 10 (blank_price 2, exact_duplicate 8)"
    )
    assert IngestReport(files=["a"], rows_read=1, rows_kept=1).summary() == (
        "read 1 file, 1 row: kept 1, rejected 0"
    )


# --- Every real file ---------------------------------------------------------------------------

# Outcomes for files whose contents are documented: rows kept, or None for a file that lacks a
# required column and must be rejected.
REAL_EXPECTED: dict[str, int | None] = {
    "cleanerzkp/2d25654/SpotPricings.csv": None,
    "cleanerzkp/7de56d7/SpotPricings.csv": None,
    "davestroud/LSTM/us_east_1a.csv": None,
    "davestroud/LSTM-playground/short_test.csv": None,
    "davestroud/LSTM-playground/ipynb_checkpoints/short_test-checkpoint.csv": None,
    "davestroud/results.json": 528,
    "davestroud/spot.json": 16,
    "hshazly/history_db/c1.medium-us-east-1d.gz": 0,
    "hshazly/history_db/cg1.4xlarge-us-east-1a.gz": 0,
    "hshazly/history_db/cg1.4xlarge-us-east-1c.gz": 0,
    "iantruslove/dev.db": 10_437,
    "kths/ceny_spot.txt": None,
    "kths/ceny_spot_all.txt.zst": None,
    "maliksudais24/spot_prices.csv": None,
    "mpette200/latest/eu-west-1_2022-03-13T17_00_58.xz": 816_644,
    "prateek-s/us-east-1a-Linux-c3.xlarge.csv.gz": 48_994,
    "prateek-s/us-east-1e-Linux-m3.medium.csv.gz": 1_191,
    "python-study-ko/sample/price.txt": 71,
    "sberdine77/spot-price-history.json": 1_085,
    "sberdine77/spot-price-history-Linux-Unix.json": 261,
    "sberdine77/spot-price-history-red-hat.json": 261,
    "sberdine77/spot-price-history-suse-linux.json": 261,
    "soso0024/spot_price_history.csv": 869,
    "unknown-cstdio/spot_prices.csv": None,
    "xiaochenwang94/m3medium/tmp.txt": 140,
    "xiaochenwang94/r3large/tmpa.txt": 1_225,
    "xiaochenwang94/r3large/tmpd.txt": 143,
}


def real_files() -> list[str]:
    if not SHARED_REAL.is_dir():
        return []
    return sorted(
        path.relative_to(SHARED_REAL).as_posix()
        for path in SHARED_REAL.rglob("*")
        if path.is_file() and path.name != "SOURCES.md"
    )


@pytest.mark.parametrize("relative_path", real_files() or ["(none)"])
def test_real_file_loads_or_names_itself(relative_path: str) -> None:
    if not SHARED_REAL.is_dir():
        pytest.skip(SHARED_MISSING)
    path = SHARED_REAL / relative_path
    expected = REAL_EXPECTED.get(relative_path, "loads")

    try:
        table, report = read_prices(path)
    except IngestError as error:
        assert path.name in str(error)
        assert expected is None, f"expected {relative_path} to load, got: {error}"
        return

    assert expected is not None, f"expected {relative_path} to be rejected"
    assert_canonical(table)
    assert_counts_balance(report)
    if isinstance(expected, int):
        assert report.rows_kept == expected


def test_real_zstd_long_window_with_product() -> None:
    path = SHARED_REAL / "kths" / "ceny_spot_all.txt.zst"
    if not path.is_file():
        pytest.skip(SHARED_MISSING)
    table, report = read_prices(path, product_description="Linux/UNIX")

    assert table["unique_id"].unique().tolist() == ["us-east-1d/c4.4xlarge/Linux/UNIX"]
    assert report.rows_read == 5_619_810
    assert report.rows_kept == 53_675
    assert report.rejected["exact_duplicate"] == 5_566_135
    assert table["ds"].min() == pd.Timestamp("2017-10-18T06:30:17Z")
    assert table["ds"].max() == pd.Timestamp("2017-12-16T10:08:34Z")


def test_real_daily_dump_folder_deduplicated() -> None:
    folder = SHARED_REAL / "mpette200" / "2021-08"
    if not folder.is_dir():
        pytest.skip(SHARED_MISSING)
    table, report = read_prices(folder)

    assert len(report.files) == 61
    assert report.rows_read == 743_317
    assert report.rows_kept == 242_031
    assert report.rejected["exact_duplicate"] == 501_286
    assert table["unique_id"].nunique() == 4_712
    assert set(table["product_description"]) == {
        "Linux/UNIX",
        "Linux/UNIX (Amazon VPC)",
        "Red Hat Enterprise Linux",
        "Red Hat Enterprise Linux (Amazon VPC)",
        "SUSE Linux",
        "SUSE Linux (Amazon VPC)",
        "Windows",
        "Windows (Amazon VPC)",
    }
