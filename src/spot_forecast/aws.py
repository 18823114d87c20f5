"""Fetch Spot price history and zone IDs from the EC2 API with boto3.

Behaviour of ``describe_spot_price_history`` that this module relies on:

* It keeps 90 days of history. Older start times are clamped with a warning.
* Each series' first record is usually stamped before ``StartTime``: it is the price in force at
  the start, and it is kept.
* Pages can be short or empty while a ``NextToken`` remains, and the last page carries an
  empty-string token.

Credentials come from boto3's standard chain (environment, shared files, SSO, instance role).
Error messages are logged without request signatures or access key IDs. ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_EC2`` are honoured by botocore itself; ``endpoint_url`` overrides them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .series import empty_table

if TYPE_CHECKING:
    from botocore.config import Config

    from .ingest import IngestReport

logger = logging.getLogger(__name__)

#: History that ``describe_spot_price_history`` returns, counted back from now.
MAX_HISTORY = pd.Timedelta(days=90)
#: Error codes meaning the account cannot use a region: invalid credentials there, or a region
#: not enabled for the account. Such a region is skipped with a warning.
ACCESS_ERROR_CODES = frozenset({"AuthFailure", "OptInRequired"})
#: Records requested per call (``MaxResults``).
PAGE_SIZE = 1000

# Records are converted to a table in chunks of this many, so a region's raw dicts never all
# sit in memory at once (90 days of a large region are millions of records).
_CHUNK_RECORDS = 100_000
_PROGRESS_EVERY_CALLS = 25
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+$")
_ZONE_NAME = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d+(?:-[a-z]+-\d+)?[a-z]$")
_ZONE_ID = re.compile(r"^[a-z]{2,5}\d+(?:-[a-z]+\d+)?-az\d+$")
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
_SIGNATURE_FIELD = re.compile(r"(Credential|Signature|X-Amz-Security-Token)=[^\s,&\"']+")

ClientFactory = Callable[[str], Any]


@dataclass
class RegionFetch:
    """Result of fetching one region.

    ``table`` is the canonical table with zone names, as ``ingest.records_to_table`` returns it,
    and ``zone_ids`` maps those names to zone IDs. ``error_code`` is set when the region was not
    fetched, and then ``table`` is empty.
    """

    region: str
    start_time: pd.Timestamp
    table: pd.DataFrame = field(default_factory=empty_table)
    zone_ids: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    records_fetched: int = 0
    report: IngestReport | None = None
    error_code: str | None = None
    error_message: str = ""

    @property
    def ok(self) -> bool:
        """Whether the region was fetched."""
        return self.error_code is None

    @property
    def access_denied(self) -> bool:
        """Whether the error code is one of ``ACCESS_ERROR_CODES``."""
        return self.error_code in ACCESS_ERROR_CODES


def parse_regions(text: str) -> list[str]:
    """Split a comma-separated region list and check each name, keeping the given order."""
    regions: list[str] = []
    for item in text.split(","):
        region = item.strip()
        if not region:
            continue
        if not _REGION.match(region):
            raise ValueError(
                f"region {region!r} is invalid; expected a name such as eu-west-1 or us-gov-west-1"
            )
        if region not in regions:
            regions.append(region)
    if not regions:
        raise ValueError(f"no region in {text!r}; pass names such as eu-west-1,us-east-1")
    return regions


def client_config(max_attempts: int) -> Config:
    """Return the botocore config for EC2 clients: standard retry mode.

    Standard mode retries throttling (``RequestLimitExceeded``, ``Throttling``) and transient
    errors with exponential backoff and jitter. ``max_attempts`` counts the first try too.
    """
    from botocore.config import Config

    return Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        user_agent_extra="spot-forecast",
    )


def make_ec2_client(region: str, *, endpoint_url: str | None = None, max_attempts: int = 8) -> Any:
    """Create an EC2 client for ``region`` with its own boto3 session.

    Each region gets its own session because boto3 sessions are not thread-safe.
    ``endpoint_url=None`` leaves the choice to botocore, which reads ``AWS_ENDPOINT_URL``.
    """
    import boto3

    session = boto3.session.Session()
    return session.client(
        "ec2",
        region_name=region,
        endpoint_url=endpoint_url,
        config=client_config(max_attempts),
    )


def clamp_start_time(start: pd.Timestamp, *, now: pd.Timestamp, region: str) -> pd.Timestamp:
    """Return ``start``, or the oldest time EC2 keeps if ``start`` is older, with a warning."""
    earliest = now - MAX_HISTORY
    if start >= earliest:
        return start
    logger.warning(
        "%s: start time %s is more than 90 days ago, and EC2 keeps only 90 days of Spot price "
        "history, so fetching from %s; prices between the two are not available",
        region,
        _format_time(start),
        _format_time(earliest),
    )
    return earliest


def fetch_zone_ids(client: Any) -> dict[str, str]:
    """Map the account's zone names in the client's region to zone IDs (``use1-az4``)."""
    response = client.describe_availability_zones()
    return {
        zone["ZoneName"]: zone["ZoneId"]
        for zone in response.get("AvailabilityZones", [])
        if zone.get("ZoneName") and zone.get("ZoneId")
    }


def iter_price_pages(
    client: Any,
    *,
    region: str,
    start_time: pd.Timestamp,
    instance_types: Sequence[str] = (),
    products: Sequence[str] = (),
    max_calls: int = 10_000,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the records of each ``describe_spot_price_history`` page, oldest call first.

    An empty page with a token continues; an empty or missing token ends. A token seen before
    ends the loop with a warning, and so does reaching ``max_calls``.
    """
    # The loop watches the tokens itself because boto3's paginator raises PaginationError when
    # a token equals the one just before it, and never stops a cycle such as t1, t2, t1.
    # Returning before the next iteration means the paginator makes no further call.
    paginator = client.get_paginator("describe_spot_price_history")
    params: dict[str, Any] = {
        "StartTime": start_time.to_pydatetime(),
        "PaginationConfig": {"PageSize": PAGE_SIZE},
    }
    if instance_types:
        params["InstanceTypes"] = list(instance_types)
    if products:
        params["ProductDescriptions"] = list(products)

    seen_tokens: set[str] = set()
    calls = 0
    for page in paginator.paginate(**params):
        calls += 1
        yield page.get("SpotPriceHistory", [])
        token = page.get("NextToken") or ""
        if not token:
            return
        if token in seen_tokens:
            logger.warning(
                "%s: EC2 returned a pagination token it had returned before, after %d calls; "
                "stopping this region's pull here, records already received are kept",
                region,
                calls,
            )
            return
        if calls >= max_calls:
            logger.warning(
                "%s: stopped after %d describe_spot_price_history calls (the configured maximum) "
                "with more pages pending; raise SPOT_FORECAST_AWS_MAX_CALLS to fetch the rest",
                region,
                calls,
            )
            return
        seen_tokens.add(token)
        if calls % _PROGRESS_EVERY_CALLS == 0:
            logger.info("%s: %d calls so far", region, calls)


def fetch_region(
    region: str,
    client: Any,
    *,
    start_time: pd.Timestamp,
    instance_types: Sequence[str] = (),
    products: Sequence[str] = (),
    max_calls: int = 10_000,
) -> RegionFetch:
    """Fetch zone IDs and price history of one region into a ``RegionFetch``.

    These errors end the region with ``error_code`` set and a warning, and are not raised:
    ``ACCESS_ERROR_CODES``, any client error left after the retries, a connection failure and
    missing credentials.
    """
    from botocore.exceptions import ClientError

    result = RegionFetch(region=region, start_time=start_time)
    try:
        result.zone_ids = _fetch_zone_ids_if_allowed(client, region)
        _fetch_prices_into(
            result,
            client,
            instance_types=instance_types,
            products=products,
            max_calls=max_calls,
        )
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", "Unknown"))
        return _failed(result, code, _redact(str(error)))
    except _connection_and_credential_errors() as error:
        return _failed(result, type(error).__name__, _redact(str(error)))
    logger.info(
        "%s: fetched %d records in %d calls, kept %d",
        region,
        result.records_fetched,
        result.calls,
        len(result.table),
    )
    return result


def fetch_regions(
    regions: Iterable[str],
    *,
    start_times: Mapping[str, pd.Timestamp],
    client_factory: ClientFactory,
    instance_types: Sequence[str] = (),
    products: Sequence[str] = (),
    max_calls: int = 10_000,
    max_workers: int = 8,
) -> Iterator[RegionFetch]:
    """Fetch several regions in parallel threads, yielding each result as it completes.

    ``start_times`` gives each region's start (already clamped). ``client_factory(region)``
    returns the EC2 client to use, normally ``make_ec2_client``.
    """
    regions = list(regions)
    if not regions:
        return

    def fetch_one(region: str) -> RegionFetch:
        start = start_times[region]
        try:
            client = client_factory(region)
        except _connection_and_credential_errors() as error:
            failed = RegionFetch(region=region, start_time=start)
            return _failed(failed, type(error).__name__, _redact(str(error)))
        logger.info("%s: fetching Spot prices since %s", region, _format_time(start))
        return fetch_region(
            region,
            client,
            start_time=start,
            instance_types=instance_types,
            products=products,
            max_calls=max_calls,
        )

    with ThreadPoolExecutor(max_workers=min(max_workers, len(regions))) as pool:
        futures = [pool.submit(fetch_one, region) for region in regions]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            # Reached early when the caller stops iterating or raises. Regions not started yet
            # are dropped, and the pool waits only for the fetches already running.
            for future in futures:
                future.cancel()


def _fetch_zone_ids_if_allowed(client: Any, region: str) -> dict[str, str]:
    """Fetch zone IDs, or return none when IAM denies ec2:DescribeAvailabilityZones."""
    from botocore.exceptions import ClientError

    try:
        return fetch_zone_ids(client)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "UnauthorizedOperation":
            raise
    logger.warning(
        "%s: not allowed to call ec2:DescribeAvailabilityZones, so series are stored by zone "
        "name without zone IDs; grant that action to record zone IDs",
        region,
    )
    return {}


def _fetch_prices_into(
    result: RegionFetch,
    client: Any,
    *,
    instance_types: Sequence[str],
    products: Sequence[str],
    max_calls: int,
) -> None:
    from .ingest import records_to_table

    tables: list[pd.DataFrame] = []
    reports: list[IngestReport] = []
    buffer: list[dict[str, Any]] = []

    def flush() -> None:
        table, report = records_to_table(buffer)
        tables.append(table)
        reports.append(report)
        buffer.clear()

    pages = iter_price_pages(
        client,
        region=result.region,
        start_time=result.start_time,
        instance_types=instance_types,
        products=products,
        max_calls=max_calls,
    )
    for records in pages:
        result.calls += 1
        result.records_fetched += len(records)
        buffer.extend(records)
        if len(buffer) >= _CHUNK_RECORDS:
            flush()
    flush()

    result.table, result.report = _combine_chunks(tables, reports)
    # Records come from the region asked, even for zones whose name region_of cannot parse.
    result.table["region"] = result.region


def _combine_chunks(
    tables: list[pd.DataFrame], reports: list[IngestReport]
) -> tuple[pd.DataFrame, IngestReport]:
    """Concatenate chunk tables, dropping rows repeated across chunks (counted as duplicates)."""
    report = reports[0]
    for other in reports[1:]:
        report = report.merge(other)
    non_empty = [table for table in tables if not table.empty]
    if len(non_empty) <= 1:
        return (non_empty[0] if non_empty else tables[0]), report
    combined = pd.concat(non_empty, ignore_index=True)
    before = len(combined)
    combined = combined.drop_duplicates(["unique_id", "ds"], keep="first")
    repeated = before - len(combined)
    report.rows_kept -= repeated
    report.rejected["exact_duplicate"] += repeated
    return combined.sort_values(["unique_id", "ds"], ignore_index=True), report


def _failed(result: RegionFetch, code: str, message: str) -> RegionFetch:
    result.error_code = code
    result.error_message = message
    result.table = empty_table()
    if result.access_denied:
        logger.warning(
            "%s: skipped because the request failed with %s (%s); enable the region for this "
            "account, check the credentials, or remove the region from --regions",
            result.region,
            code,
            message,
        )
    else:
        logger.warning("%s: skipped after error %s (%s)", result.region, code, message)
    return result


def _connection_and_credential_errors() -> tuple[type[Exception], ...]:
    from botocore import exceptions

    return (
        exceptions.ConnectionError,
        exceptions.HTTPClientError,
        exceptions.NoCredentialsError,
        exceptions.PartialCredentialsError,
        exceptions.CredentialRetrievalError,
        exceptions.ProfileNotFound,
    )


def _redact(message: str) -> str:
    """Remove access key IDs and signature fields that some AWS error messages echo back."""
    message = _SIGNATURE_FIELD.sub(r"\1=<redacted>", message)
    return _ACCESS_KEY_ID.sub("<access key id>", message)


def _format_time(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def load_zone_ids(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read one account's zone name to zone ID mapping from a file.

    Accepted: the JSON output of ``aws ec2 describe-availability-zones`` (any regions), a JSON
    object ``{"us-east-1a": "use1-az4"}``, or CSV with a header naming ``ZoneName`` and
    ``ZoneId`` (or ``zone_name`` and ``zone_id``).
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ValueError(f"zone map {source} cannot be read: {error.strerror}") from error
    stripped = text.lstrip()
    if stripped.startswith("{"):
        mapping = _zone_ids_from_json(source, stripped)
    else:
        mapping = _zone_ids_from_csv(source, text)
    if not mapping:
        raise ValueError(
            f"zone map {source} contains no zone; expected the output of "
            "`aws ec2 describe-availability-zones` or CSV with ZoneName,ZoneId"
        )
    for name, zone_id in mapping.items():
        if not _ZONE_NAME.match(name) or not _ZONE_ID.match(zone_id):
            raise ValueError(
                f"zone map {source}: {name!r} -> {zone_id!r} is invalid; expected a zone name "
                "such as us-east-1a and a zone ID such as use1-az4"
            )
    return mapping


def _zone_ids_from_json(source: Path, text: str) -> dict[str, str]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"zone map {source} is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(
            f"zone map {source} is a JSON {type(document).__name__}; expected an object, such as "
            "the output of `aws ec2 describe-availability-zones`"
        )
    if "AvailabilityZones" in document:
        return {
            str(zone.get("ZoneName", "")): str(zone.get("ZoneId", ""))
            for zone in document["AvailabilityZones"]
        }
    return {str(name): str(zone_id) for name, zone_id in document.items()}


def _zone_ids_from_csv(source: Path, text: str) -> dict[str, str]:
    reader = csv.DictReader(io.StringIO(text))
    fields = {name.strip().lower().replace("_", ""): name for name in reader.fieldnames or []}
    if "zonename" not in fields or "zoneid" not in fields:
        raise ValueError(
            f"zone map {source} has columns {reader.fieldnames}; expected ZoneName and ZoneId"
        )
    return {
        row[fields["zonename"]].strip(): row[fields["zoneid"]].strip()
        for row in reader
        if row.get(fields["zonename"])
    }
