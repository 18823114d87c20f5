"""Read Spot price history from files or boto3 records into the canonical table.

Accepted inputs, recognised by content rather than by file name:

* AWS CLI JSON ``{"SpotPriceHistory": [...]}``, a bare JSON list of the same records, or several
  such documents one after another (JSON Lines, concatenated CLI pages). UTF-8, or UTF-16/32
  with a byte order mark.
* AWS CLI ``--output text`` dumps without a header, whose rows start with ``SPOTINSTANCEPRICE`` or
  ``SPOTPRICEHISTORY``. The column order differs between tool versions, so each column's role is
  inferred from its values.
* Delimited text (comma, semicolon or tab) with a header naming the AWS columns ``Timestamp``,
  ``AvailabilityZone``, ``InstanceType``, ``ProductDescription``, ``SpotPrice`` in any order, or the
  canonical snake_case names. Extra columns are ignored.
* A SQLite database with a table holding those five columns.
* Any of these compressed with gzip, xz, zstd or bzip2 (recognised by magic bytes).

Every reader ends in the same core as :func:`canonicalize`, which validates, converts to UTC,
removes duplicates and sorts. Each input row is either kept or counted under exactly one reason
in ``REJECT_REASONS``.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import csv
import gzip
import io
import itertools
import json
import logging
import lzma
import re
import sqlite3
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import zstandard

from spot_forecast.series import CANONICAL_COLUMNS, empty_table, region_of

logger = logging.getLogger(__name__)

#: Reasons a row is not kept, in the order they are checked. A row gets the first that applies.
#:
#: * ``malformed_row``: a delimited line with more fields than the header, or a JSON entry that
#:   is not an object.
#: * ``missing_key``: blank availability zone, instance type or product description.
#: * ``bad_zone``: the zone is neither a zone name (``us-east-1a``) nor a zone ID (``use1-az4``).
#: * ``blank_price``: empty price text, or a missing value (None, NaN object) in a record.
#: * ``not_a_number``: price text that is not a number (``abc``, ``0,05``).
#: * ``non_finite``: price text ``NaN``, ``inf``, ``-inf`` or ``Infinity``.
#: * ``non_positive``: zero or negative price.
#: * ``bad_timestamp``: not an ISO 8601 timestamp, or outside the years 1677-2262.
#: * ``exact_duplicate``: same series, timestamp and price as a kept row. Not an error.
#: * ``conflicting_duplicate``: same series and timestamp as a kept row, different price.
REJECT_REASONS: tuple[str, ...] = (
    "malformed_row",
    "missing_key",
    "bad_zone",
    "blank_price",
    "not_a_number",
    "non_finite",
    "non_positive",
    "bad_timestamp",
    "exact_duplicate",
    "conflicting_duplicate",
)

#: Reasons that mean the input itself was wrong; duplicates are expected in overlapping dumps.
_INVALID_REASONS = frozenset(REJECT_REASONS) - {"exact_duplicate"}

#: AWS column names, in the order that error messages list them.
AWS_COLUMNS: tuple[str, ...] = (
    "Timestamp",
    "AvailabilityZone",
    "InstanceType",
    "ProductDescription",
    "SpotPrice",
)

# Header names accepted for each AWS column, lower-cased with everything but letters and digits
# removed, so "AvailabilityZone", "availability_zone" and "Availability Zone" all match. The first
# alias present wins, so "InstanceType" beats the CLI text header's "Type" tag column.
_COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "Timestamp": ("timestamp", "ds", "time"),
    "AvailabilityZone": ("availabilityzone", "zone", "az"),
    "InstanceType": ("instancetype", "type"),
    "ProductDescription": ("productdescription", "product"),
    "SpotPrice": ("spotprice", "y", "price"),
}

_EXPECTED_FORMATS = (
    "Expected AWS CLI JSON, --output text, or CSV with "
    "Timestamp, AvailabilityZone, InstanceType, ProductDescription, SpotPrice"
)

# First field of each row in AWS CLI `--output text` and ec2-api-tools dumps.
_TEXT_ROW_TAGS = frozenset({"SPOTINSTANCEPRICE", "SPOTPRICEHISTORY"})
_TEXT_SAMPLE_LINES = 50
_TIMESTAMP_START = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")

_COMPRESSION_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_ZIP_MAGIC = b"PK\x03\x04"
_BYTE_ORDER_MARKS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)

# The largest window zstd allows (2 GiB). Frames written with `zstd --long=27` declare 128 MiB,
# which some decoders reject by default. This is a limit: the decoder's buffer follows the window
# that each frame declares.
_ZSTD_MAX_WINDOW_SIZE = 1 << zstandard.WINDOWLOG_MAX
_HEAD_BYTES = 64 * 1024
_BLOCK_BYTES = 8 * 1024 * 1024
# Raw rows are de-duplicated whenever the rows added since the last pass outnumber the rows kept
# then (and at least this many), so memory stays near twice the unique rows plus one block.
_MIN_ROWS_BEFORE_DEDUPLICATION = 250_000
_SQL_CHUNK_ROWS = 200_000

# datetime64[ns], the resolution of the canonical table, covers only these years.
_EARLIEST_TIMESTAMP = pd.Timestamp("1677-09-22", tz="UTC")
_LATEST_TIMESTAMP = pd.Timestamp("2262-04-11", tz="UTC")


class IngestError(ValueError):
    """A file or frame that cannot be read at all; the message names it and what is missing."""


@dataclass
class IngestReport:
    """Counts from one ingest run: every row read is either kept or counted under one reason."""

    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_kept: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def rows_rejected(self) -> int:
        """Rows not kept, exact duplicates included."""
        return sum(self.rejected.values())

    def merge(self, other: IngestReport) -> IngestReport:
        """Return a new report with the counts of both added.

        Rows that the two tables have in common are not detected here, so ``rows_kept`` can
        exceed the rows of the two tables concatenated and de-duplicated.
        """
        return IngestReport(
            files=[*self.files, *other.files],
            rows_read=self.rows_read + other.rows_read,
            rows_kept=self.rows_kept + other.rows_kept,
            rejected=self.rejected + other.rejected,
        )

    def summary(self) -> str:
        """Describe the run in one line, e.g. ``read 3 files, 120 rows: kept 100, rejected 20``."""
        rows = f"{self.rows_read} {'row' if self.rows_read == 1 else 'rows'}"
        if self.files:
            noun = "file" if len(self.files) == 1 else "files"
            rows = f"{len(self.files)} {noun}, {rows}"
        text = f"read {rows}: kept {self.rows_kept}, rejected {self.rows_rejected}"
        details = _format_reasons(self.rejected)
        if details:
            text += f" ({details})"
        return text


def read_prices(
    paths: str | Path | Iterable[str | Path],
    *,
    product_description: str | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, IngestReport]:
    """Read price files and folders into one canonical table, de-duplicated across all files.

    Folders are searched recursively in name order, skipping names that start with a dot. A file
    named twice is read once. Every file must be readable, so one unusable file raises
    IngestError for the whole call. ``product_description`` fills the ProductDescription of files that have
    no such column (it is ignored for files that have one). An empty file gives zero rows and a
    warning, because a pull that found no records can leave one.

    Raises:
        IngestError: a path does not exist, a folder contains no files, or a file is in no known
            format or lacks a required column. The message starts with the file path.
    """
    files = _expand_paths(paths)
    accumulator = _RawRowAccumulator()
    rejected: collections.Counter[str] = collections.Counter()
    rows_read = 0
    for path in files:
        file_rows, file_format = _read_file_into(path, accumulator, rejected, product_description)
        rows_read += file_rows
        log_level = logging.INFO if progress else logging.DEBUG
        logger.log(log_level, "read %s (%s): %d rows", path, file_format, file_rows)

    table, report = _finish(accumulator, rejected, rows_read)
    report.files = [str(path) for path in files]
    _log_rejects(_describe_sources(report.files), report)
    return table, report


def records_to_table(records: Iterable[Mapping[str, object]]) -> tuple[pd.DataFrame, IngestReport]:
    """Convert records as boto3 ``describe_spot_price_history`` returns them into the table.

    Each record needs AvailabilityZone, InstanceType, ProductDescription, SpotPrice (a string or a
    number) and Timestamp (a datetime, naive meaning UTC, or an ISO 8601 string).

    Raises:
        IngestError: no record has one of the five keys.
    """
    rows = list(records)
    if not rows:
        return empty_table(), IngestReport()
    frame = pd.DataFrame.from_records(rows)
    columns = _resolve_columns(list(frame.columns), "records", noun="key")
    table, report = _canonicalize_resolved(_select_columns(frame, columns), len(rows))
    _log_rejects("records", report)
    return table, report


def canonicalize(frame: pd.DataFrame) -> tuple[pd.DataFrame, IngestReport]:
    """Validate, convert, de-duplicate and sort a frame of raw AWS columns.

    The frame needs the five AWS columns (or their snake_case names); other columns are ignored.
    Values may be strings, numbers or datetimes.

    Raises:
        IngestError: a required column is missing.
    """
    columns = _resolve_columns(list(frame.columns), "frame")
    table, report = _canonicalize_resolved(_select_columns(frame, columns), len(frame))
    _log_rejects("frame", report)
    return table, report


def validate_prices(values: Sequence[object]) -> list[str]:
    """Return the reject reason of each price, or an empty string where the price is valid.

    The reasons are ``blank_price``, ``not_a_number``, ``non_finite`` and ``non_positive``, with
    the same rules as file ingest.
    """
    text = _as_text(pd.Series(list(values), dtype=object))
    reasons, _ = _price_reasons(text)
    return reasons.tolist()


# ---------------------------------------------------------------------------------------------
# Files and formats


def _expand_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """List the files to read: given files as they are, folders searched recursively."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    seen: set[Path] = set()
    requested_paths = [Path(path) for path in paths]
    if not requested_paths:
        raise IngestError("no paths given: pass a file, a folder or a list of them")
    for path in requested_paths:
        if path.is_dir():
            found = sorted(
                child
                for child in path.rglob("*")
                if child.is_file()
                and not any(part.startswith(".") for part in child.relative_to(path).parts)
            )
            if not found:
                raise IngestError(f"{path}: folder contains no files")
        elif path.is_file():
            found = [path]
        else:
            raise IngestError(f"{path}: file not found")
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files


def _read_file_into(
    path: Path,
    accumulator: _RawRowAccumulator,
    rejected: collections.Counter[str],
    product_description: str | None,
) -> tuple[int, str]:
    """Add the raw rows of one file to the accumulator; return the rows read and the format."""
    with contextlib.ExitStack() as stack:
        stream, compression = _open_decompressed(path, stack)
        try:
            chunks, file_format = _open_chunks(
                path, stream, compression, rejected, product_description
            )
            rows_read = 0
            malformed_before = rejected["malformed_row"]
            for chunk in chunks:
                rows_read += len(chunk)
                accumulator.add(chunk)
            rows_read += rejected["malformed_row"] - malformed_before
        except (OSError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError) as error:
            action = "read file" if compression == "plain" else f"decompress {compression} data"
            raise IngestError(f"{path}: failed to {action}: {error}") from error
    if compression != "plain":
        file_format = f"{file_format}, {compression}"
    return rows_read, file_format


def _open_chunks(
    path: Path,
    stream: IO[bytes],
    compression: str,
    rejected: collections.Counter[str],
    product_description: str | None,
) -> tuple[Iterator[pd.DataFrame], str]:
    """Detect the format of a decompressed stream; return a reader of raw frames and the format."""
    head = _read_head(stream)
    for bom, encoding in _BYTE_ORDER_MARKS:
        if head.startswith(bom):
            break
    else:
        encoding = ""
    file_format = _detect_format(path, head, encoding)

    if file_format == "empty":
        logger.warning("%s: file is empty, so it adds no rows", path)
        return iter([]), file_format
    if file_format == "sqlite":
        data = None if compression == "plain" else head + stream.read()
        return _read_sqlite(path, data, product_description), file_format

    blocks = _iter_blocks(head, stream)
    if encoding and encoding != "utf-8":
        # NOTE: UTF-16 and UTF-32 files are decoded whole, so they are held in memory.
        text = b"".join(blocks).decode(encoding, errors="replace")[1:]
        blocks = iter([text.encode("utf-8")])
    elif encoding == "utf-8":
        blocks = _skip_prefix(blocks, len(b"\xef\xbb\xbf"))
    if file_format == "json":
        return _read_json(path, blocks, rejected, product_description), file_format
    return _read_delimited(path, blocks, rejected, product_description), file_format


def _open_decompressed(path: Path, stack: contextlib.ExitStack) -> tuple[IO[bytes], str]:
    """Open a file and wrap it in the decompressor its magic bytes name."""
    raw = stack.enter_context(path.open("rb"))
    magic = raw.read(8)
    raw.seek(0)
    for prefix, compression in _COMPRESSION_MAGIC:
        if magic.startswith(prefix):
            break
    else:
        return raw, "plain"
    if compression == "gzip":
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw)
    elif compression == "xz":
        stream = lzma.LZMAFile(raw)
    elif compression == "bzip2":
        stream = bz2.BZ2File(raw)
    else:
        decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW_SIZE)
        stream = decompressor.stream_reader(raw, read_across_frames=True)
    return stack.enter_context(stream), compression


def _read_head(stream: IO[bytes]) -> bytes:
    """Read the first bytes of a stream, looping because decompressors may return short reads."""
    parts: list[bytes] = []
    size = 0
    while size < _HEAD_BYTES:
        part = stream.read(_HEAD_BYTES - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _iter_blocks(head: bytes, stream: IO[bytes]) -> Iterator[bytes]:
    """Yield the head, then the rest of the stream in large blocks."""
    if head:
        yield head
    while True:
        block = stream.read(_BLOCK_BYTES)
        if not block:
            return
        yield block


def _skip_prefix(blocks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """Drop the first ``count`` bytes, which lie in the first block (a byte order mark)."""
    first = next(blocks, b"")
    yield first[count:]
    yield from blocks


def _detect_format(path: Path, head: bytes, encoding: str) -> str:
    """Name the format of a decompressed file from its first bytes."""
    if head.startswith(_SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(_ZIP_MAGIC):
        raise IngestError(f"{path}: zip archives are not supported; extract the files first")
    if encoding:
        text = head.decode(encoding, errors="ignore").lstrip("\ufeff")
    elif b"\x00" in head:
        raise IngestError(
            f"{path}: binary file in no known format (not gzip, xz, zstd, bzip2 or SQLite). "
            + _EXPECTED_FORMATS
        )
    else:
        text = head.decode("utf-8", errors="replace")
    stripped = text.lstrip()
    if not stripped:
        return "empty"
    if stripped[0] in "{[":
        return "json"
    return "delimited"


# ---------------------------------------------------------------------------------------------
# JSON


def _read_json(
    path: Path,
    blocks: Iterator[bytes],
    rejected: collections.Counter[str],
    product_description: str | None,
) -> Iterator[pd.DataFrame]:
    """Yield the records of one or more JSON documents as one raw frame.

    NOTE: the whole file is parsed at once, so memory grows with the file.
    """
    text = b"".join(blocks).decode("utf-8", errors="replace")
    records: list[Mapping[str, object]] = []
    for document in _iter_json_documents(path, text):
        if isinstance(document, dict) and "SpotPriceHistory" in document:
            entries = document["SpotPriceHistory"]
        elif isinstance(document, list):
            entries = document
        else:
            entries = [document]
        if not isinstance(entries, list):
            raise IngestError(f"{path}: SpotPriceHistory is not a list. {_EXPECTED_FORMATS}")
        for entry in entries:
            if isinstance(entry, dict):
                records.append(entry)
            else:
                rejected["malformed_row"] += 1
    if not records:
        return
    frame = pd.DataFrame.from_records(records)
    columns = _resolve_columns(
        list(frame.columns), str(path), noun="key", product_description=product_description
    )
    yield _select_columns(frame, columns, product_description)


def _iter_json_documents(path: Path, text: str) -> Iterator[object]:
    """Yield each JSON value in the text: one document, JSON Lines, or concatenated pages."""
    decoder = json.JSONDecoder()
    position = 0
    length = len(text)
    while True:
        while position < length and text[position].isspace():
            position += 1
        if position >= length:
            return
        try:
            document, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise IngestError(
                f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
            ) from error
        yield document


# ---------------------------------------------------------------------------------------------
# Delimited text: CSV, TSV and AWS CLI --output text


def _read_delimited(
    path: Path,
    blocks: Iterator[bytes],
    rejected: collections.Counter[str],
    product_description: str | None,
) -> Iterator[pd.DataFrame]:
    """Yield raw frames from delimited text, one per block of whole lines.

    Carriage returns are removed first, which handles ``\\r\\n`` and ``\\r\\r\\n`` line ends.
    """
    chunks = _iter_line_chunks(block.replace(b"\r", b"") for block in blocks)
    first_chunk = next(chunks, b"").lstrip(b"\n")
    first_line, _, rest = first_chunk.partition(b"\n")
    header = first_line.decode("utf-8", errors="replace")

    tag = header.split("\t", 1)[0].strip().strip('"').upper()
    if tag in _TEXT_ROW_TAGS:
        sample = first_chunk.split(b"\n", _TEXT_SAMPLE_LINES)[:_TEXT_SAMPLE_LINES]
        positions = _classify_text_columns(path, sample)
        delimiter = "\t"
        field_count = len(header.split("\t"))
        rest = first_chunk
    else:
        delimiter = max(("\t", ";", ","), key=header.count)
        names = next(csv.reader([header], delimiter=delimiter))
        field_count = len(names)
        columns = _resolve_columns(names, str(path), product_description=product_description)
        positions = {aws: names.index(name) for aws, name in columns.items()}

    for chunk in itertools.chain([rest], chunks):
        if chunk.strip():
            yield _parse_delimited_chunk(
                chunk, delimiter, field_count, positions, rejected, product_description
            )


def _iter_line_chunks(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Regroup blocks so that each chunk ends at a line end (the last may lack one)."""
    pending = b""
    for block in blocks:
        pending += block
        cut = pending.rfind(b"\n")
        if cut >= 0:
            yield pending[: cut + 1]
            pending = pending[cut + 1 :]
    if pending:
        yield pending


def _classify_text_columns(path: Path, lines: list[bytes]) -> dict[str, int]:
    """Find which field of ``--output text`` rows contains which AWS column, from their values.

    The first sample line whose fields resolve to exactly one price, timestamp, zone, instance
    type and product (the one field left over) decides.
    """
    for line in lines:
        fields = [value.strip() for value in line.decode("utf-8", errors="replace").split("\t")]
        roles: dict[str, list[int]] = collections.defaultdict(list)
        for index, value in enumerate(fields[1:], start=1):
            roles[_text_field_role(value)].append(index)
        if all(len(roles[role]) == 1 for role in AWS_COLUMNS):
            return {role: roles[role][0] for role in AWS_COLUMNS}
    raise IngestError(
        f"{path}: rows start with SPOTINSTANCEPRICE or SPOTPRICEHISTORY, but none of the "
        f"first {_TEXT_SAMPLE_LINES} lines has one price, timestamp, "
        "availability zone, instance type and product description separated by tabs"
    )


def _text_field_role(value: str) -> str:
    """Guess which AWS column a field of an ``--output text`` row belongs to."""
    try:
        if np.isfinite(float(value)):
            return "SpotPrice"
    except ValueError:
        pass
    if _TIMESTAMP_START.match(value):
        return "Timestamp"
    if region_of(value):
        return "AvailabilityZone"
    if _INSTANCE_TYPE.match(value):
        return "InstanceType"
    if value:
        return "ProductDescription"
    return "blank"


def _parse_delimited_chunk(
    chunk: bytes,
    delimiter: str,
    field_count: int,
    positions: Mapping[str, int],
    rejected: collections.Counter[str],
    product_description: str | None,
) -> pd.DataFrame:
    """Parse whole lines into a raw frame; lines with too many fields count as malformed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        frame = pd.read_csv(
            io.BytesIO(chunk),
            sep=delimiter,
            header=None,
            # No usecols: with it the parser accepts lines that have too many fields.
            names=list(range(field_count)),
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            on_bad_lines="warn",
            encoding="utf-8",
            encoding_errors="replace",
            engine="c",
        )
    for warning in caught:
        if issubclass(warning.category, pd.errors.ParserWarning):
            rejected["malformed_row"] += str(warning.message).count("Skipping line")
    return _select_columns(frame, positions, product_description)


# ---------------------------------------------------------------------------------------------
# SQLite


def _read_sqlite(
    path: Path, data: bytes | None, product_description: str | None
) -> Iterator[pd.DataFrame]:
    """Yield raw frames from the first table that has the five AWS columns.

    ``data`` is the decompressed database when the file was compressed. Otherwise the file is
    opened read-only in place.
    """
    try:
        if data is None:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        else:
            connection = sqlite3.connect(":memory:")
            connection.deserialize(data)
    except sqlite3.Error as error:
        raise IngestError(f"{path}: failed to open SQLite database: {error}") from error

    with contextlib.closing(connection):
        try:
            tables = [
                row[0]
                for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                )
            ]
            for table in tables:
                quoted = '"' + table.replace('"', '""') + '"'
                names = [row[1] for row in connection.execute(f"PRAGMA table_info({quoted})")]
                try:
                    columns = _resolve_columns(
                        names, str(path), product_description=product_description
                    )
                except IngestError:
                    continue
                query = f"SELECT * FROM {quoted}"
                for frame in pd.read_sql_query(query, connection, chunksize=_SQL_CHUNK_ROWS):
                    yield _select_columns(frame, columns, product_description)
                return
        except sqlite3.Error as error:
            raise IngestError(f"{path}: failed to read SQLite database: {error}") from error
    raise IngestError(
        f"{path}: SQLite database has no table with Timestamp, AvailabilityZone, InstanceType, "
        f"ProductDescription and SpotPrice columns; found tables {', '.join(tables) or 'none'}"
    )


# ---------------------------------------------------------------------------------------------
# Columns


def _normalize_name(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _resolve_columns(
    names: Sequence[object],
    source: str,
    *,
    noun: str = "column",
    product_description: str | None = None,
) -> dict[str, object]:
    """Map each AWS column to the label of the input column that contains it.

    ProductDescription may be absent when ``product_description`` supplies it.

    Raises:
        IngestError: a required column is absent; the message lists the columns found.
    """
    normalized: dict[str, object] = {}
    for name in names:
        normalized.setdefault(_normalize_name(name), name)

    columns: dict[str, object] = {}
    missing: list[str] = []
    for aws, aliases in _COLUMN_ALIASES.items():
        label = next((normalized[alias] for alias in aliases if alias in normalized), None)
        if label is not None:
            columns[aws] = label
        elif not (aws == "ProductDescription" and product_description is not None):
            missing.append(aws)
    if missing:
        found = ", ".join(str(name) or "(unnamed)" for name in names) or "none"
        names_missing = missing[-1]
        if len(missing) > 1:
            names_missing = ", ".join(missing[:-1]) + " or " + names_missing
        message = f"{source}: no {names_missing} {noun}; found {noun}s {found}. "
        message += _EXPECTED_FORMATS
        if missing == ["ProductDescription"]:
            message += (
                ". To read a file without products, pass product_description "
                "(for example 'Linux/UNIX')"
            )
        raise IngestError(message)
    return columns


def _select_columns(
    frame: pd.DataFrame, columns: Mapping[str, object], product_description: str | None = None
) -> pd.DataFrame:
    """Return the five AWS columns as stripped text, empty where a value is missing."""
    selected = {aws: _as_text(frame[label]) for aws, label in columns.items()}
    if "ProductDescription" not in selected:
        selected["ProductDescription"] = pd.Series(
            product_description or "", index=frame.index, dtype="str"
        )
    return pd.DataFrame({aws: selected[aws] for aws in AWS_COLUMNS})


def _as_text(values: pd.Series) -> pd.Series:
    """Convert values of any type to stripped strings, with missing values as empty strings."""
    return values.astype("str").fillna("").str.strip()


# ---------------------------------------------------------------------------------------------
# The shared core: validate, convert, de-duplicate, sort


class _RawRowAccumulator:
    """Collect raw frames, dropping exact duplicate text rows often enough to bound memory."""

    def __init__(self) -> None:
        self._parts: list[pd.DataFrame] = []
        self._pending_rows = 0
        self._unique_rows = 0
        self.duplicates = 0

    def add(self, frame: pd.DataFrame) -> None:
        self._parts.append(frame)
        self._pending_rows += len(frame)
        if self._pending_rows > max(self._unique_rows, _MIN_ROWS_BEFORE_DEDUPLICATION):
            self._deduplicate()

    def frame(self) -> pd.DataFrame:
        """Return every unique raw row added so far, in order of first appearance."""
        self._deduplicate()
        if not self._parts:
            return pd.DataFrame({aws: pd.Series(dtype="str") for aws in AWS_COLUMNS})
        return self._parts[0]

    def _deduplicate(self) -> None:
        if not self._parts:
            return
        merged = self._parts[0]
        if len(self._parts) > 1:
            merged = pd.concat(self._parts, ignore_index=True)
        unique = merged.drop_duplicates(ignore_index=True)
        self.duplicates += len(merged) - len(unique)
        self._parts = [unique]
        self._unique_rows = len(unique)
        self._pending_rows = 0


def _canonicalize_resolved(raw: pd.DataFrame, rows_read: int) -> tuple[pd.DataFrame, IngestReport]:
    """Canonicalize a raw text frame whose columns are the five AWS names."""
    accumulator = _RawRowAccumulator()
    accumulator.add(raw)
    return _finish(accumulator, collections.Counter(), rows_read)


def _finish(
    accumulator: _RawRowAccumulator, rejected: collections.Counter[str], rows_read: int
) -> tuple[pd.DataFrame, IngestReport]:
    """Turn the unique raw rows into the canonical table and complete the counts."""
    raw = accumulator.frame()
    rejected = collections.Counter(rejected)
    if accumulator.duplicates:
        rejected["exact_duplicate"] += accumulator.duplicates

    reasons, prices = _row_reasons(raw)
    timestamps = pd.to_datetime(raw["Timestamp"], utc=True, format="ISO8601", errors="coerce")
    in_range = (timestamps >= _EARLIEST_TIMESTAMP) & (timestamps <= _LATEST_TIMESTAMP)
    reasons = np.where((reasons == "") & ~in_range.to_numpy(), "bad_timestamp", reasons)
    for reason, count in zip(*np.unique(reasons[reasons != ""], return_counts=True)):
        rejected[str(reason)] += int(count)

    valid = reasons == ""
    table, exact, conflicting = _build_table(raw[valid], prices[valid], timestamps[valid])
    if exact:
        rejected["exact_duplicate"] += exact
    if conflicting:
        rejected["conflicting_duplicate"] += conflicting

    report = IngestReport(rows_read=rows_read, rows_kept=len(table), rejected=rejected)
    return table, report


def _row_reasons(raw: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Return each raw row's first reject reason (empty when valid) and its parsed price."""
    zone = raw["AvailabilityZone"]
    blank_key = (
        (zone == "") | (raw["InstanceType"] == "") | (raw["ProductDescription"] == "")
    ).to_numpy()
    # NOTE: region_of knows zone names and zone IDs only, so Local Zones such as
    # us-west-2-lax-1a are rejected as bad_zone.
    bad_zone = _map_distinct(zone, region_of) == ""
    reasons, prices = _price_reasons(raw["SpotPrice"])
    # Assigned from the last reason to the first, so the first that applies stays.
    reasons[bad_zone] = "bad_zone"
    reasons[blank_key] = "missing_key"
    return reasons, prices


def _price_reasons(text: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return each price's reject reason (empty when valid) and its value as float64."""
    prices = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    lowered = text.str.lower().str.lstrip("+-")
    blank = (text == "").to_numpy()
    nan_text = lowered.isin(["nan"]).to_numpy()
    not_a_number = np.isnan(prices) & ~blank & ~nan_text
    non_finite = nan_text | np.isinf(prices)
    with np.errstate(invalid="ignore"):
        non_positive = prices <= 0
    # Assigned from the last reason to the first, so the first that applies stays.
    reasons = np.full(len(text), "", dtype=object)
    reasons[non_positive] = "non_positive"
    reasons[non_finite] = "non_finite"
    reasons[not_a_number] = "not_a_number"
    reasons[blank] = "blank_price"
    return reasons, prices


def _map_distinct(values: pd.Series, function: Callable[[str], str]) -> np.ndarray:
    """Apply a string function once per distinct value; return an object array per row."""
    codes, distinct = pd.factorize(values)
    mapped = np.array([function(value) for value in distinct], dtype=object)
    return mapped[codes]


def _build_table(
    raw: pd.DataFrame, prices: np.ndarray, timestamps: pd.Series
) -> tuple[pd.DataFrame, int, int]:
    """Assemble the canonical table from valid raw rows, keeping one price per series and time.

    Returns the table and the counts of exact and conflicting duplicates dropped. Rows that
    differ only in how their text was written (``0.05`` and ``0.050000``, ``Z`` and ``+00:00``)
    count as exact duplicates. Of conflicting prices the highest is kept: the rule does not
    depend on input order, and a cost forecast built on it errs high rather than low.
    """
    if raw.empty:
        return empty_table(), 0, 0
    unique_id = (
        raw["AvailabilityZone"] + "/" + raw["InstanceType"] + "/" + raw["ProductDescription"]
    )
    # Sorted codes make the series order lexicographic, so all later work is on numpy integers.
    codes, ids = pd.factorize(unique_id, sort=True)
    _, first_rows = np.unique(codes, return_index=True)
    keys = raw.iloc[first_rows]
    nanoseconds = timestamps.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").view("int64")

    order = np.lexsort((prices, nanoseconds, codes))
    codes, nanoseconds, prices = codes[order], nanoseconds[order], prices[order]
    same_event = (codes[1:] == codes[:-1]) & (nanoseconds[1:] == nanoseconds[:-1])
    exact = int((same_event & (prices[1:] == prices[:-1])).sum())
    conflicting = int(same_event.sum()) - exact
    # The last row of each (series, timestamp) run has the highest price.
    keep = np.append(~same_event, True)
    codes, nanoseconds, prices = codes[keep], nanoseconds[keep], prices[keep]

    zones = keys["AvailabilityZone"].to_numpy(dtype=object)
    per_series = {
        "unique_id": np.asarray(ids, dtype=object),
        "availability_zone": zones,
        "instance_type": keys["InstanceType"].to_numpy(dtype=object),
        "product_description": keys["ProductDescription"].to_numpy(dtype=object),
        "region": np.array([region_of(zone) for zone in zones], dtype=object),
    }
    columns: dict[str, pd.Series] = {
        name: pd.Series(values[codes], dtype=object) for name, values in per_series.items()
    }
    columns["ds"] = pd.Series(pd.to_datetime(nanoseconds, unit="ns", utc=True))
    columns["y"] = pd.Series(prices, dtype="float64")
    table = pd.DataFrame({name: columns[name] for name in CANONICAL_COLUMNS})
    return table, exact, conflicting


# ---------------------------------------------------------------------------------------------
# Logging


def _format_reasons(rejected: Mapping[str, int]) -> str:
    """List nonzero counts as ``reason count``, known reasons first in check order."""
    ordered = [reason for reason in REJECT_REASONS if rejected.get(reason)]
    ordered += sorted(
        reason for reason in rejected if reason not in REJECT_REASONS and rejected[reason]
    )
    return ", ".join(f"{reason} {rejected[reason]}" for reason in ordered)


def _describe_sources(files: Sequence[str]) -> str:
    if len(files) == 1:
        return files[0]
    return f"{len(files)} files"


def _log_rejects(source: str, report: IngestReport) -> None:
    """Warn when invalid or conflicting rows were dropped; exact duplicates are only logged."""
    invalid = {
        reason: count for reason, count in report.rejected.items() if reason in _INVALID_REASONS
    }
    if any(invalid.values()):
        logger.warning(
            "%s: dropped %d of %d rows (%s)",
            source,
            sum(invalid.values()),
            report.rows_read,
            _format_reasons(invalid),
        )
    duplicates = report.rejected.get("exact_duplicate", 0)
    if duplicates:
        logger.info("%s: dropped %d exact duplicate rows", source, duplicates)
