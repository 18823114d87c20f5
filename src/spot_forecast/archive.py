"""On-disk Parquet archive of Spot price events.

Layout, hive-style so that DuckDB, pandas, Spark and Athena read the folder as one table::

    <archive>/region=<region>/date=<YYYY-MM-DD>/data.parquet

There is one file per region and UTC day of ``ds``, so a daily pull rewrites only the days that
received new rows. Files hold the columns of ``FILE_SCHEMA``. ``region`` and ``date`` exist only in
the folder names, because a column present in both places makes pandas and pyarrow fail to merge
the schema. Timestamps are stored in microseconds, which Spark reads and nanoseconds it does not.

Writers hold an exclusive lock on ``<archive>/.lock`` (an OS file lock, so the operating system
releases it when a writer dies). Each changed file is written to a hidden temporary file in the
same folder, flushed to disk and renamed over the old one, so readers see either the old or the
new file, never a partial one. Readers take no lock. Temporary names start with a dot and end in
``.tmp``, so readers that skip hidden files (pyarrow, pandas) or read ``*.parquet`` ignore them.

Series are keyed by availability zone ID (``use1-az4``) when it is known and by zone name
otherwise, because zone names map to different physical zones in different accounts. Rows keyed
by zone name record the account they came from. Rows for a zone name that the archive already
contains from another account are rejected, so two accounts are never merged under one name.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from .series import CANONICAL_COLUMNS, empty_table, region_of

logger = logging.getLogger(__name__)

#: Columns stored in each Parquet file, in this order.
FILE_SCHEMA = pa.schema(
    [
        ("unique_id", pa.string()),
        ("ds", pa.timestamp("us", tz="UTC")),
        ("y", pa.float64()),
        ("availability_zone", pa.string()),
        ("availability_zone_id", pa.string()),
        ("instance_type", pa.string()),
        ("product_description", pa.string()),
        ("account", pa.string()),
    ]
)
#: Partition keys, encoded in folder names as ``key=value``.
PARTITION_SCHEMA = pa.schema([("region", pa.string()), ("date", pa.string())])
PARTITION_FILE = "data.parquet"
LOCK_FILE = ".lock"

_KEY = ["unique_id", "ds"]
_ZONE_ID = re.compile(r"^[a-z]{2,5}\d+(?:-[a-z]+\d+)?-az\d+$")
_REGION = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_TEMP_SUFFIX = ".tmp"


class ArchiveError(RuntimeError):
    """The archive is missing, unreadable or cannot be written."""


class ArchiveLockedError(ArchiveError):
    """Another run holds the archive's write lock."""


@dataclass
class AppendReport:
    """Counts of one or more appends. ``rows_duplicate`` includes ``rows_conflicting``."""

    rows_offered: int = 0
    rows_new: int = 0
    rows_duplicate: int = 0
    rows_conflicting: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    files_written: int = 0

    def merge(self, other: AppendReport) -> AppendReport:
        """Return the sum of this report and ``other``."""
        return AppendReport(
            rows_offered=self.rows_offered + other.rows_offered,
            rows_new=self.rows_new + other.rows_new,
            rows_duplicate=self.rows_duplicate + other.rows_duplicate,
            rows_conflicting=self.rows_conflicting + other.rows_conflicting,
            rejected=self.rejected + other.rejected,
            files_written=self.files_written + other.files_written,
        )

    def summary(self) -> str:
        """Format the counts as one line for logs and command output."""
        text = (
            f"{self.rows_new} new, {self.rows_duplicate} duplicate "
            f"({self.rows_conflicting} with a different price), "
            f"{sum(self.rejected.values())} rejected, {self.files_written} files written"
        )
        if self.rejected:
            reasons = ", ".join(
                f"{reason}: {count}" for reason, count in self.rejected.most_common()
            )
            text += f" (rejected: {reasons})"
        return text


class ArchiveWriter:
    """Exclusive write access to an archive, for use as a context manager.

    Entering creates the folder if needed, takes the lock and deletes temporary files that an
    interrupted writer left behind. ``lock_timeout`` is how many seconds to wait for the lock;
    0 raises ``ArchiveLockedError`` at once when another run holds it.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 0.0) -> None:
        self.root = Path(path)
        self.lock_timeout = lock_timeout
        self._lock: FileLock | None = None

    def __enter__(self) -> ArchiveWriter:
        if self.root.exists() and not self.root.is_dir():
            raise ArchiveError(f"archive path {self.root} is a file; pass a folder")
        lock_path = self.root / LOCK_FILE
        # fallback_to_soft=False: a soft lock (a file that exists) would outlive a killed writer.
        lock = FileLock(lock_path, timeout=self.lock_timeout, fallback_to_soft=False)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout:
            raise ArchiveLockedError(
                f"archive {self.root} is locked by another spot-forecast run (lock file "
                f"{lock_path}); wait for that run to finish, then retry"
            ) from None
        except OSError as error:
            raise ArchiveError(
                f"cannot open archive {self.root} for writing: {error}; check that the folder "
                "is writable, or pass another --archive"
            ) from error
        self._lock = lock
        self._remove_temporary_files()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def append(
        self,
        table: pd.DataFrame,
        *,
        account: str | None = None,
        zone_ids: Mapping[str, str] | None = None,
    ) -> AppendReport:
        """Add the rows of a canonical table that the archive does not contain yet.

        A row is a duplicate when the archive already has its (series, ``ds``). The archived
        price is kept, and a different new price is counted in ``rows_conflicting``.
        ``zone_ids`` maps the zone names of ``account`` to zone IDs. Rows whose zone ID is known
        are stored under a series id that starts with the zone ID. Rows with no valid region,
        and rows with a zone name that the archive contains from another account, are rejected.
        """
        if self._lock is None:
            raise ArchiveError("ArchiveWriter.append was called outside a `with` block")
        rows, report = _prepare_rows(table, account=account, zone_ids=zone_ids or {})
        rows = self._reject_foreign_zone_names(rows, account, report)

        repeated = rows.duplicated(_KEY, keep="first")
        first_price = rows.groupby(_KEY, sort=False)["y"].transform("first")
        report.rows_duplicate += int(repeated.sum())
        report.rows_conflicting += int((repeated & (rows["y"] != first_price)).sum())
        rows = rows[~repeated]
        if rows.empty:
            return report

        # Days are written oldest first. A run killed between two files then leaves every region
        # complete up to some day, so the next incremental fetch, which starts at the newest
        # archived time, fills in what is missing.
        partitions = rows.groupby(["date", "region"], sort=True)
        for (day, region), part in partitions:
            self._merge_partition(str(region), str(day), part, report)
        if report.rows_conflicting:
            logger.warning(
                "%d rows had the same series and time as archived rows but a different price; "
                "kept the archived prices",
                report.rows_conflicting,
            )
        return report

    def _merge_partition(
        self, region: str, day: str, rows: pd.DataFrame, report: AppendReport
    ) -> None:
        target = self.root / f"region={region}" / f"date={day}" / PARTITION_FILE
        stored = rows[list(FILE_SCHEMA.names)]
        if target.exists():
            archived = _read_file(target)
            joined = stored[_KEY + ["y"]].merge(
                archived[_KEY + ["y"]],
                on=_KEY,
                how="left",
                suffixes=("", "_archived"),
                indicator=True,
            )
            is_new = (joined["_merge"] == "left_only").to_numpy()
            conflicting = (~is_new) & (joined["y"] != joined["y_archived"]).to_numpy()
            report.rows_duplicate += int((~is_new).sum())
            report.rows_conflicting += int(conflicting.sum())
            fresh = stored[is_new]
            if fresh.empty:
                return
            combined = pd.concat([archived, fresh], ignore_index=True)
        else:
            fresh = stored
            combined = stored

        combined = combined.sort_values(_KEY, kind="stable", ignore_index=True)
        table = pa.Table.from_pandas(combined, schema=FILE_SCHEMA, preserve_index=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(table, target)
        report.rows_new += len(fresh)
        report.files_written += 1
        logger.debug("wrote %s: %d new rows, %d in file", target, len(fresh), len(combined))

    def _reject_foreign_zone_names(
        self, rows: pd.DataFrame, account: str | None, report: AppendReport
    ) -> pd.DataFrame:
        named = rows["availability_zone_id"].isna()
        if not named.any():
            return rows
        owners = _zone_name_owners(self.root, set(rows.loc[named, "region"]))
        incoming = account or ""
        zones = rows["availability_zone"].where(named)
        foreign_zones = {
            zone for zone, accounts in owners.items() if accounts and incoming not in accounts
        }
        foreign = named & zones.isin(foreign_zones)
        if not foreign.any():
            return rows

        rejected_zones = sorted(set(rows.loc[foreign, "availability_zone"]))
        holders = sorted({holder for zone in rejected_zones for holder in owners[zone]})
        logger.warning(
            "rejected %d rows for zone names %s from %s because the archive already contains "
            "these zone names from %s, and a zone name maps to different physical zones in "
            "different accounts. Pass --zone-map with each account's zone IDs (aws ec2 "
            "describe-availability-zones) to store both by zone ID",
            int(foreign.sum()),
            ", ".join(rejected_zones),
            _describe_account(incoming),
            " and ".join(_describe_account(holder) for holder in holders),
        )
        report.rejected["foreign_zone_name"] += int(foreign.sum())
        return rows[~foreign]

    def _remove_temporary_files(self) -> None:
        # Only called with the lock held, so no live writer owns these files.
        leftovers = [path for path in self.root.rglob(f".*{_TEMP_SUFFIX}") if path.is_file()]
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            logger.info(
                "removed %d temporary files left by an interrupted run in %s",
                len(leftovers),
                self.root,
            )


def append_prices(
    path: str | os.PathLike[str],
    table: pd.DataFrame,
    *,
    account: str | None = None,
    zone_ids: Mapping[str, str] | None = None,
    lock_timeout: float = 0.0,
) -> AppendReport:
    """Lock the archive, append a canonical table (see ``ArchiveWriter.append``) and unlock."""
    with ArchiveWriter(path, lock_timeout=lock_timeout) as writer:
        return writer.append(table, account=account, zone_ids=zone_ids)


def read_archive(
    path: str | os.PathLike[str],
    *,
    series: str | Iterable[str] | None = None,
    since: pd.Timestamp | str | None = None,
    regions: Iterable[str] | None = None,
    with_price_in_force: bool = True,
    with_zone_columns: bool = False,
) -> pd.DataFrame:
    """Read archived prices as a canonical table sorted by ``unique_id`` and ``ds``.

    ``since`` keeps rows at or after that time (naive times are UTC). With
    ``with_price_in_force``, each series also keeps its last row before ``since``, the price in
    force at ``since``, as the EC2 API does. Finding that row reads every day before ``since``.
    ``with_zone_columns`` adds ``availability_zone_id`` and ``account`` after the canonical columns.
    Raises ``ArchiveError`` when the folder does not exist.
    """
    dataset = _open_dataset(Path(path))
    selection: pads.Expression | None = None
    if series is not None:
        requested = [series] if isinstance(series, str) else list(series)
        selection = _and(selection, pads.field("unique_id").isin(requested))
    if regions is not None:
        selection = _and(selection, pads.field("region").isin(list(regions)))

    columns = list(CANONICAL_COLUMNS)
    if with_zone_columns:
        columns += ["availability_zone_id", "account"]
    if since is None:
        frame = dataset.to_table(columns=columns, filter=selection).to_pandas()
        return _finish_frame(frame, columns)

    start = _utc_timestamp(since, "since")
    start_scalar = pa.scalar(start.to_pydatetime(), type=FILE_SCHEMA.field("ds").type)
    start_day = start.strftime("%Y-%m-%d")
    recent_filter = _and(
        selection, (pads.field("date") >= start_day) & (pads.field("ds") >= start_scalar)
    )
    parts = [dataset.to_table(columns=columns, filter=recent_filter).to_pandas()]
    if with_price_in_force:
        earlier_filter = _and(
            selection, (pads.field("date") <= start_day) & (pads.field("ds") < start_scalar)
        )
        earlier = dataset.to_table(columns=columns, filter=earlier_filter).to_pandas()
        earlier = earlier.sort_values(_KEY, kind="stable").groupby("unique_id").tail(1)
        parts.insert(0, earlier)
    frame = pd.concat(parts, ignore_index=True)
    return _finish_frame(frame, columns)


def latest_by_region(
    path: str | os.PathLike[str],
    *,
    instance_types: Iterable[str] | None = None,
    products: Iterable[str] | None = None,
) -> dict[str, pd.Timestamp]:
    """Return the newest ``ds`` per region, optionally among some instance types and products.

    Reads the newest day of each region first and older days only while no row matches. A
    missing archive returns an empty dict.
    """
    root = Path(path)
    if not root.is_dir():
        return {}
    type_set = set(instance_types) if instance_types else None
    product_set = set(products) if products else None

    latest: dict[str, pd.Timestamp] = {}
    for region_dir in sorted(root.glob("region=*")):
        region = region_dir.name.split("=", 1)[1]
        for day_dir in sorted(region_dir.glob("date=*"), reverse=True):
            target = day_dir / PARTITION_FILE
            if not target.is_file():
                continue
            frame = _read_file(target, ["ds", "instance_type", "product_description"])
            if type_set is not None:
                frame = frame[frame["instance_type"].isin(type_set)]
            if product_set is not None:
                frame = frame[frame["product_description"].isin(product_set)]
            if not frame.empty:
                latest[region] = frame["ds"].max()
                break
    return latest


def list_series(path: str | os.PathLike[str]) -> list[str]:
    """Return the sorted ids of all series in the archive."""
    dataset = _open_dataset(Path(path))
    ids = dataset.to_table(columns=["unique_id"]).column("unique_id").unique()
    return sorted(str(value) for value in ids.to_pylist())


@contextmanager
def _temporary_name(target: Path) -> Iterator[Path]:
    temp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{_TEMP_SUFFIX}")
    try:
        yield temp
    finally:
        temp.unlink(missing_ok=True)


def _write_atomically(table: pa.Table, target: Path) -> None:
    """Write ``table`` to a temporary file, flush it to disk and rename it to ``target``."""
    with _temporary_name(target) as temp:
        pq.write_table(table, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable. Windows cannot open a folder, and there os.replace is
    # the best this function can do.
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _prepare_rows(
    table: pd.DataFrame, *, account: str | None, zone_ids: Mapping[str, str]
) -> tuple[pd.DataFrame, AppendReport]:
    """Add zone IDs, account and day to a canonical table and reject rows with no valid region."""
    missing = [column for column in CANONICAL_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(
            f"table is missing canonical columns {missing}; build it with "
            "spot_forecast.ingest.read_prices or canonicalize"
        )
    report = AppendReport(rows_offered=len(table))
    rows = table[list(CANONICAL_COLUMNS)].copy()
    rows["ds"] = pd.to_datetime(rows["ds"], utc=True).astype("datetime64[us, UTC]")
    rows["y"] = rows["y"].astype("float64")

    # Zone attributes are worked out once per distinct zone (a few dozen) and then spread to
    # the rows by their factorize codes.
    codes, distinct = pd.factorize(rows["availability_zone"].astype(str))
    names_by_id = {zone_id: name for name, zone_id in zone_ids.items()}
    per_zone = pd.DataFrame(
        [_zone_attributes(str(zone), zone_ids, names_by_id) for zone in distinct],
        columns=["zone_id", "name", "region"],
        dtype=object,
    )
    per_row = per_zone.iloc[codes].set_index(rows.index)

    rows["availability_zone"] = per_row["name"]
    rows["availability_zone_id"] = per_row["zone_id"]
    rows["region"] = per_row["region"].fillna(rows["region"]).fillna("")
    rows["account"] = account
    zone_key = per_row["zone_id"].fillna(per_row["name"])
    rows["unique_id"] = zone_key + "/" + rows["instance_type"] + "/" + rows["product_description"]
    day_codes, days = pd.factorize(rows["ds"].dt.floor("D"))
    rows["date"] = np.array([day.strftime("%Y-%m-%d") for day in days], dtype=object)[day_codes]

    valid_region = rows["region"].astype(str).str.fullmatch(_REGION.pattern)
    if not valid_region.all():
        bad = sorted(set(rows.loc[~valid_region, "availability_zone"].astype(str)))[:5]
        logger.warning(
            "rejected %d rows whose zone has no region (zones %s); pass --zone-map so zone IDs "
            "resolve to zone names",
            int((~valid_region).sum()),
            ", ".join(bad),
        )
        report.rejected["no_region"] += int((~valid_region).sum())
        rows = rows[valid_region]
    return rows, report


def _zone_attributes(
    zone: str, zone_ids: Mapping[str, str], names_by_id: Mapping[str, str]
) -> tuple[str | None, str, str | None]:
    """Return (zone ID, zone name, region) of one zone as a file or the API spelled it.

    The region is None unless the zone is a zone ID whose name ``zone_ids`` contains, because
    only then does it differ from the region the canonical table already has.
    """
    if not _ZONE_ID.match(zone):
        return zone_ids.get(zone), zone, None
    name = names_by_id.get(zone, zone)
    return zone, name, (region_of(name) or None) if name != zone else None


def _zone_name_owners(root: Path, regions: set[str]) -> dict[str, set[str]]:
    """Map each zone name stored by name in ``regions`` to its accounts ('' when unknown)."""
    if not root.is_dir():
        return {}
    dataset = _open_dataset(root)
    selection = (
        pads.field("region").isin(sorted(regions)) & pads.field("availability_zone_id").is_null()
    )
    table = dataset.to_table(columns=["availability_zone", "account"], filter=selection)
    pairs = table.group_by(["availability_zone", "account"]).aggregate([]).to_pylist()
    owners: dict[str, set[str]] = {}
    for pair in pairs:
        owners.setdefault(pair["availability_zone"], set()).add(pair["account"] or "")
    return owners


def _describe_account(account: str) -> str:
    return f"account {account}" if account else "an unknown account (ingested without --account)"


def _open_dataset(root: Path) -> pads.Dataset:
    if not root.is_dir():
        raise ArchiveError(
            f"archive {root} not found; create it with `spot-forecast ingest files` or "
            "`spot-forecast ingest aws`, or pass the folder that holds it"
        )
    partitioning = pads.partitioning(PARTITION_SCHEMA, flavor="hive")
    schema = pa.unify_schemas([FILE_SCHEMA, PARTITION_SCHEMA])
    return pads.dataset(root, format="parquet", partitioning=partitioning, schema=schema)


def _read_file(target: Path, columns: list[str] | None = None) -> pd.DataFrame:
    try:
        return pq.ParquetFile(target).read(columns=columns).to_pandas()
    except (OSError, pa.ArrowException) as error:
        raise ArchiveError(
            f"archive file {target} is unreadable ({error}); restore it from a backup or delete "
            "it and ingest that day again"
        ) from error


def _finish_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    if frame.empty:
        result = empty_table()
        for column in columns[len(CANONICAL_COLUMNS) :]:
            result[column] = pd.Series(dtype=object)
        return result[columns]
    frame = frame[columns].sort_values(_KEY, kind="stable", ignore_index=True)
    # The same dtypes as the tables that ingest returns, so callers can concatenate both.
    return frame.astype(empty_table().dtypes.to_dict())


def _utc_timestamp(value: pd.Timestamp | str, name: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except ValueError as error:
        raise ValueError(
            f"{name}={value!r} is not a valid time; use ISO 8601 such as 2024-05-10T00:00Z"
        ) from error
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _and(left: pads.Expression | None, right: pads.Expression) -> pads.Expression:
    return right if left is None else left & right
