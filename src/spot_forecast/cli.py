"""The ``spot-forecast`` command line.

Exit codes:

* 0: success.
* 1: failure. Nothing was stored, the archive is locked, missing or unreadable, or a series
  was not found.
* 2: invalid command line (reported by argparse).
* 3: partial success. Some regions or files were stored, and others were skipped, or rows were
  rejected because their zone name belongs to another account. The printed summary lists them.

Each subcommand is added by its own ``_add_*_command(commands)`` function, which sets a
``handler(args, settings) -> int`` default. New subcommands follow the same pattern.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .config import Settings

if TYPE_CHECKING:
    from .archive import AppendReport
    from .aws import ClientFactory
    from .ingest import IngestReport

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

_DURATION = re.compile(r"^(\d+)([dh])$")
# Reasons that ingest counts among rejected rows but that are duplicates, not bad input.
_DUPLICATE_REASONS = ("exact_duplicate", "conflicting_duplicate")
_FOREIGN_ZONE_REASON = "foreign_zone_name"
_MAX_SUGGESTIONS = 10


@dataclass
class IngestSummary:
    """Totals of one ``ingest`` run over its sources (regions or files)."""

    command: str
    records_label: str = "records read"
    stored: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    records_read: int = 0
    rows_new: int = 0
    duplicates_in_input: int = 0
    duplicates_archived: int = 0
    conflicting_archived: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, source: str, ingest_report: IngestReport, append_report: AppendReport) -> None:
        """Add the counts of one stored source."""
        self.stored.append(source)
        self.records_read += ingest_report.rows_read
        for reason, count in ingest_report.rejected.items():
            if reason in _DUPLICATE_REASONS:
                self.duplicates_in_input += count
            else:
                self.rejected[reason] += count
        self.rows_new += append_report.rows_new
        self.duplicates_archived += append_report.rows_duplicate
        self.conflicting_archived += append_report.rows_conflicting
        self.rejected.update(append_report.rejected)

    def exit_code(self) -> int:
        """Return ``EXIT_OK``, ``EXIT_PARTIAL`` or ``EXIT_FAILED`` (see the module docstring)."""
        if not self.stored:
            return EXIT_FAILED
        if self.skipped or self.rejected[_FOREIGN_ZONE_REASON]:
            return EXIT_PARTIAL
        return EXIT_OK

    def lines(self, source_noun: str) -> list[str]:
        """Format the summary that the command prints at the end."""
        outcome = {EXIT_OK: "done", EXIT_PARTIAL: "partial success", EXIT_FAILED: "failed"}
        rejected = sum(self.rejected.values())
        skipped = [f"{source}: {reason}" for source, reason in self.skipped]
        lines = [
            f"{self.command}: {outcome[self.exit_code()]}",
            f"  {source_noun} stored: {_count_and_list(self.stored)}",
            f"  {source_noun} skipped: {_count_and_list(skipped)}",
            f"  {self.records_label}: {self.records_read}",
            f"  new rows: {self.rows_new}",
            f"  duplicate rows: {self.duplicates_archived + self.duplicates_in_input} "
            f"({self.duplicates_archived} already archived, of which "
            f"{self.conflicting_archived} with a different price; "
            f"{self.duplicates_in_input} repeated in the input)",
            f"  rejected rows: {rejected}",
        ]
        if rejected:
            reasons = ", ".join(
                f"{reason} {count}" for reason, count in self.rejected.most_common()
            )
            lines[-1] += f" ({reasons})"
        return lines


def _count_and_list(names: list[str]) -> str:
    return f"{len(names)} ({', '.join(names)})" if names else "0"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spot-forecast`` command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose - args.quiet)

    from pydantic import ValidationError

    from .archive import ArchiveError
    from .ingest import IngestError

    try:
        settings = Settings()
    except ValidationError as error:
        print(f"spot-forecast: error: invalid SPOT_FORECAST_* setting: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return int(args.handler(args, settings))
    except (ArchiveError, IngestError) as error:
        print(f"spot-forecast: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("spot-forecast: interrupted; the archive keeps what was stored", file=sys.stderr)
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="spot-forecast",
        description="Archive, inspect and forecast Amazon EC2 Spot prices.",
        epilog="Exit codes: 0 success, 1 failure, 2 invalid command line, 3 partial success.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (repeatable)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="log only warnings")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_ingest_command(commands)
    _add_history_command(commands)
    _add_plot_command(commands)
    _add_evaluate_command(commands)
    _add_calibrate_command(commands)
    return parser


# ---------------------------------------------------------------------------------------------
# ingest


def _add_ingest_command(commands: argparse._SubParsersAction) -> None:
    ingest = commands.add_parser(
        "ingest",
        help="append Spot prices to the archive",
        description="Append Spot prices from AWS or from files to the Parquet archive.",
    )
    sources = ingest.add_subparsers(dest="source", required=True, metavar="SOURCE")

    aws = sources.add_parser(
        "aws",
        help="fetch from the EC2 API",
        description="Fetch Spot price history with describe-spot-price-history. Regions already "
        "in the archive are fetched from their newest archived time on. Credentials come from "
        "the standard AWS chain (environment, ~/.aws, SSO, instance role).",
    )
    aws.add_argument(
        "--regions",
        required=True,
        type=_regions_argument,
        help="comma-separated, e.g. eu-west-1,us-east-1",
    )
    aws.add_argument(
        "--days",
        type=_positive_int,
        default=90,
        help="days of history to fetch for a region the archive does not hold yet (max 90)",
    )
    aws.add_argument(
        "--instance-types",
        type=_list_argument,
        default=(),
        help="comma-separated, e.g. m5.large,c5.xlarge",
    )
    aws.add_argument(
        "--products",
        type=_list_argument,
        default=(),
        help='comma-separated, e.g. "Linux/UNIX,Windows"',
    )
    aws.add_argument(
        "--endpoint-url", help="EC2 endpoint to call instead of AWS, e.g. a local stand-in"
    )
    _add_archive_options(aws)
    aws.set_defaults(handler=_run_ingest_aws)

    files = sources.add_parser(
        "files",
        help="import price files",
        description="Import AWS CLI JSON or text dumps, CSV or TSV, compressed or not.",
    )
    files.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or folder")
    files.add_argument(
        "--zone-map",
        type=Path,
        help="this account's zone names and IDs: output of `aws ec2 describe-availability-zones` "
        "or CSV with ZoneName,ZoneId. Series are then stored by zone ID",
    )
    files.add_argument(
        "--product-description", help="product of files that have no ProductDescription column"
    )
    _add_archive_options(files)
    files.set_defaults(handler=_run_ingest_files)


def _add_archive_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--archive", type=Path, help="archive folder (default: settings archive_path)"
    )
    parser.add_argument(
        "--account",
        type=_account_argument,
        help="12-digit AWS account the data comes from. Zone names are per account, so rows "
        "stored by zone name from different accounts are never merged",
    )


def _run_ingest_aws(args: argparse.Namespace, settings: Settings) -> int:
    summary = ingest_aws(
        args.archive or settings.archive_path,
        args.regions,
        days=args.days,
        instance_types=args.instance_types,
        products=args.products,
        account=args.account,
        endpoint_url=args.endpoint_url,
        settings=settings,
    )
    print("\n".join(summary.lines("regions")))
    return summary.exit_code()


def _run_ingest_files(args: argparse.Namespace, settings: Settings) -> int:
    from .aws import load_zone_ids

    zone_ids = load_zone_ids(args.zone_map) if args.zone_map else None
    summary = ingest_files(
        args.archive or settings.archive_path,
        args.paths,
        account=args.account,
        zone_ids=zone_ids,
        product_description=args.product_description,
    )
    print("\n".join(summary.lines("files")))
    return summary.exit_code()


def ingest_aws(
    archive_path: Path,
    regions: Sequence[str],
    *,
    days: int = 90,
    instance_types: Sequence[str] = (),
    products: Sequence[str] = (),
    account: str | None = None,
    endpoint_url: str | None = None,
    settings: Settings | None = None,
    client_factory: ClientFactory | None = None,
    now: pd.Timestamp | None = None,
) -> IngestSummary:
    """Fetch regions from EC2 and append each to the archive as it completes.

    The archive stays locked for the whole run, so a second run fails at once instead of
    fetching the same data. ``client_factory(region)`` replaces ``aws.make_ec2_client`` (tests
    pass stubbed clients), and ``now`` replaces the current time.
    """
    from .archive import ArchiveWriter, latest_by_region
    from .aws import MAX_HISTORY, clamp_start_time, fetch_regions, make_ec2_client

    settings = settings or Settings()
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    if days > MAX_HISTORY.days:
        logger.warning(
            "--days %d is more than the %d days EC2 keeps; fetching %d days",
            days,
            MAX_HISTORY.days,
            MAX_HISTORY.days,
        )
        days = MAX_HISTORY.days
    factory = client_factory or partial(
        make_ec2_client, endpoint_url=endpoint_url, max_attempts=settings.aws_max_attempts
    )

    summary = IngestSummary(command="spot-forecast ingest aws", records_label="records fetched")
    with ArchiveWriter(archive_path) as writer:
        latest = latest_by_region(archive_path, instance_types=instance_types, products=products)
        start_times = {}
        for region in regions:
            if region in latest:
                logger.info(
                    "%s: archive contains prices up to %s; fetching from there",
                    region,
                    latest[region].strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
            start = latest.get(region, now - pd.Timedelta(days=days))
            start_times[region] = clamp_start_time(start, now=now, region=region)

        results = fetch_regions(
            regions,
            start_times=start_times,
            client_factory=factory,
            instance_types=instance_types,
            products=products,
            max_calls=settings.aws_max_calls,
            max_workers=settings.aws_workers,
        )
        for done, result in enumerate(results, start=1):
            if not result.ok:
                summary.skipped.append((result.region, result.error_code or "error"))
                continue
            append_report = writer.append(result.table, account=account, zone_ids=result.zone_ids)
            assert result.report is not None  # set for every region fetched without error
            summary.add(result.region, result.report, append_report)
            logger.info(
                "%s: stored (%d of %d regions): %s",
                result.region,
                done,
                len(regions),
                append_report.summary(),
            )
    return summary


def ingest_files(
    archive_path: Path,
    paths: Sequence[Path],
    *,
    account: str | None = None,
    zone_ids: dict[str, str] | None = None,
    product_description: str | None = None,
) -> IngestSummary:
    """Read each path and append it to the archive. Unreadable paths are skipped with a warning."""
    from .archive import ArchiveWriter
    from .ingest import IngestError, read_prices

    summary = IngestSummary(command="spot-forecast ingest files")
    with ArchiveWriter(archive_path) as writer:
        for done, path in enumerate(paths, start=1):
            try:
                table, ingest_report = read_prices(
                    path, product_description=product_description, progress=True
                )
            except IngestError as error:
                logger.warning("%s: skipped: %s", path, error)
                summary.skipped.append((str(path), "unreadable"))
                continue
            append_report = writer.append(table, account=account, zone_ids=zone_ids)
            summary.add(str(path), ingest_report, append_report)
            logger.info(
                "%s: stored (%d of %d paths): %s", path, done, len(paths), append_report.summary()
            )
    return summary


# ---------------------------------------------------------------------------------------------
# history


def _add_history_command(commands: argparse._SubParsersAction) -> None:
    history = commands.add_parser(
        "history",
        help="print the archived prices of one series",
        description="Print a series as CSV (ds,y). With --since, the first row is the price in "
        "force at that time, which may be stamped earlier.",
    )
    history.add_argument(
        "series_id",
        metavar="SERIES_ID",
        help="e.g. eu-west-1a/m5.large/Linux/UNIX or use1-az4/m5.large/Linux/UNIX",
    )
    history.add_argument(
        "--since",
        type=_time_argument,
        help="ISO 8601 UTC time (2024-05-10T00:00Z) or age (7d, 12h)",
    )
    history.add_argument(
        "--plot", type=_output_file, metavar="PNG", help="also draw the series to this file"
    )
    history.add_argument(
        "--archive", type=Path, help="archive folder (default: settings archive_path)"
    )
    history.set_defaults(handler=_run_history)


def _run_history(args: argparse.Namespace, settings: Settings) -> int:
    from .archive import list_series, read_archive
    from .series import split_series_id

    try:
        _, instance_type, product = split_series_id(args.series_id)
    except ValueError as error:
        print(f"spot-forecast: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    archive_path = args.archive or settings.archive_path
    frame = read_archive(archive_path, series=args.series_id, since=args.since)
    if frame.empty:
        similar = [
            unique_id
            for unique_id in list_series(archive_path)
            if unique_id.endswith(f"/{instance_type}/{product}")
        ]
        message = f"spot-forecast: error: no prices for series {args.series_id!r} in {archive_path}"
        if args.since is not None:
            message += f" since {args.since.isoformat()}"
        if similar:
            message += f"; series of {instance_type} {product}: " + ", ".join(
                similar[:_MAX_SUGGESTIONS]
            )
        print(message, file=sys.stderr)
        return EXIT_FAILED

    print("ds,y")
    for stamp, price in zip(frame["ds"], frame["y"], strict=True):
        print(f"{stamp.strftime('%Y-%m-%dT%H:%M:%SZ')},{price:.6f}")
    if args.plot is not None:
        plot_series(frame, args.plot, title=args.series_id)
        print(f"wrote {args.plot}", file=sys.stderr)
    return EXIT_OK


#: Smallest y-range of a price chart, as a share of the mean price drawn. Spot prices often stay
#: flat for days, and without a floor the axis would magnify float noise into a wide fan.
MIN_PRICE_SPAN = 0.02


def format_price_axes(axes, prices: np.ndarray) -> None:
    """Label a price chart with plain USD values and concise UTC dates.

    The y-range is widened to at least ``MIN_PRICE_SPAN`` of the mean price, centred on it.
    """
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    prices_formatter = axes.yaxis.get_major_formatter()
    prices_formatter.set_useOffset(False)
    prices_formatter.set_scientific(False)
    low, high = axes.get_ylim()
    middle = float(np.nanmean(prices))
    if high - low < MIN_PRICE_SPAN * middle:
        axes.set_ylim(middle * (1 - MIN_PRICE_SPAN / 2), middle * (1 + MIN_PRICE_SPAN / 2))
    axes.set_xlabel("time (UTC)")
    axes.set_ylabel("USD per instance-hour")
    axes.grid(alpha=0.3)


def plot_series(frame: pd.DataFrame, path: Path, *, title: str):
    """Draw prices as a step line (a price is in force until the next record) and save an image.

    Returns the matplotlib figure.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots()
    axes.step(frame["ds"], frame["y"], where="post")
    axes.set_title(title)
    format_price_axes(axes, frame["y"].to_numpy())
    figure.savefig(path, dpi=100)
    return figure


# ---------------------------------------------------------------------------------------------
# plot


def _add_plot_command(commands: argparse._SubParsersAction) -> None:
    plot = commands.add_parser(
        "plot",
        help="draw a series' forecast fan chart as a PNG",
        description="Forecast a series that the stored model has history for, in this process, and "
        "draw its recent history, the median and the 80 % and 90 % intervals, as the /ui page "
        "does.",
    )
    plot.add_argument("series_id", metavar="SERIES_ID", help="e.g. eu-west-1a/m5.large/Linux/UNIX")
    plot.add_argument("--horizon", type=_positive_int, default=72,
                      help="hours to forecast, 1 to the model's horizon (default 72)")
    plot.add_argument("--history-hours", type=_positive_int, default=168,
                      help="hours of history to draw (default 168)")
    plot.add_argument("--out", type=_output_file,
                      help="PNG file (default: SERIES_ID with / as _ .png)")
    plot.add_argument("--model", help="model tag (default: SPOT_FORECAST_MODEL_TAG, else "
                      "<model_name>:latest)")
    plot.set_defaults(handler=_run_plot)


def _model_tag(args: argparse.Namespace, settings: Settings) -> str:
    """Return the model a command uses: --model, else SPOT_FORECAST_MODEL_TAG, else the latest."""
    import os

    return args.model or os.environ.get("SPOT_FORECAST_MODEL_TAG") or f"{settings.model_name}:latest"


def _run_plot(args: argparse.Namespace, settings: Settings) -> int:
    from .forecast import Guard, Predictor, forecast_histories
    from .store import ModelFormatError, load_bundle

    tag = _model_tag(args, settings)
    try:
        bundle = load_bundle(tag)
    except ModelFormatError as error:
        print(f"spot-forecast: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    series = bundle.history.get(args.series_id)
    if series is None:
        import difflib

        similar = [uid for uid in bundle.history if uid.split("/", 1)[-1] ==
                   args.series_id.split("/", 1)[-1]]
        if similar:
            hint = f"; series of the same type and product: {', '.join(sorted(similar))}"
        else:
            close = difflib.get_close_matches(args.series_id, list(bundle.history), n=5,
                                              cutoff=0.6)
            hint = f"; close matches: {', '.join(close)}" if close else ""
        print(f"spot-forecast: error: model {bundle.tag} holds no history for series "
              f"{args.series_id!r}{hint}", file=sys.stderr)
        return EXIT_FAILED
    if args.horizon > bundle.horizon:
        print(f"spot-forecast: error: --horizon is {args.horizon}; model {bundle.tag} forecasts "
              f"1 to {bundle.horizon} hours", file=sys.stderr)
        return EXIT_USAGE

    predictor = Predictor(bundle.model, bundle.lookback)
    (forecast,) = forecast_histories(
        predictor, [(series.unique_id, series.values, series.end, args.horizon)],
        scaler=bundle.scaler, quantiles=bundle.quantiles, guard=Guard.from_metadata(bundle.metadata),
    )
    history = pd.Series(series.values, index=series.index()).iloc[-args.history_hours:]
    out = args.out or Path(args.series_id.replace("/", "_").replace(" ", "_") + ".png")
    plot_fan_chart(history, forecast, out, title=f"{args.series_id} ({bundle.tag})")
    print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


def plot_fan_chart(history: pd.Series, forecast, path: Path, *, title: str):
    """Draw hourly history as steps, then the forecast median and its 80 % and 90 % bands.

    Returns the matplotlib figure.
    """
    from matplotlib.figure import Figure

    levels = list(forecast.quantiles)
    times = forecast.ds.insert(0, forecast.last_ds)

    def with_last(level: float):
        return [forecast.last_y, *forecast.values[:, levels.index(level)]]

    figure = Figure(figsize=(10, 4), layout="constrained")
    axes = figure.subplots()
    axes.step(history.index, history.to_numpy(), where="post", color="#333333", label="history")
    if 0.05 in levels and 0.95 in levels:
        axes.fill_between(times, with_last(0.05), with_last(0.95), color="#1565c0", alpha=0.12,
                          linewidth=0, label="90 % interval")
    axes.fill_between(times, with_last(0.1), with_last(0.9), color="#1565c0", alpha=0.25,
                      linewidth=0, label="80 % interval")
    axes.plot(times, with_last(0.5), color="#1565c0", linewidth=2, label="median")
    axes.axvline(forecast.last_ds, color="#888888", linestyle="--", linewidth=1)
    axes.set_title(title)
    format_price_axes(axes, np.concatenate([history.to_numpy(), forecast.median]))
    axes.legend(loc="upper left")
    figure.savefig(path, dpi=100)
    return figure


# ---------------------------------------------------------------------------------------------
# arguments and logging


def _regions_argument(text: str) -> list[str]:
    from .aws import parse_regions

    try:
        return parse_regions(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _list_argument(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _output_file(text: str) -> Path:
    """Accept a file path whose folder exists, so a command fails before its work, not after."""
    path = Path(text)
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(
            f"folder {str(folder)!r} of {text!r} does not exist; create it or write elsewhere"
        )
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name such as "
                                         f"{str(path / 'chart.png')!r}")
    return path


def _time_argument(text: str) -> pd.Timestamp:
    match = _DURATION.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = pd.Timedelta(days=amount) if unit == "d" else pd.Timedelta(hours=amount)
        return pd.Timestamp.now(tz="UTC") - delta
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time; use ISO 8601 such as 2024-05-10T00:00Z, or an age such as 7d"
        ) from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _account_argument(text: str) -> str:
    account = text.strip()
    if not re.fullmatch(r"\d{12}", account):
        raise argparse.ArgumentTypeError(f"{text!r} is not a 12-digit AWS account ID")
    return account


def _configure_logging(verbosity: int) -> None:
    level = logging.INFO
    if verbosity > 0:
        level = logging.DEBUG
    elif verbosity < 0:
        level = logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # botocore logs request headers at DEBUG, and they contain the access key ID.
    for name in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)



# ---------------------------------------------------------------------------------------------
# evaluate


def _add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    from .evaluate import add_arguments

    evaluate = commands.add_parser(
        "evaluate",
        help="backtest the model and the baselines and write the report",
        description="Train the model on data up to a cut-off, forecast from origins every 24 "
        "hours after it with the model and the baselines, and write evaluation.md, "
        "evaluation.json and figures. About 7 minutes on 2 CPU cores with the defaults, 20 with "
        "--decisions.",
    )
    add_arguments(evaluate)
    evaluate.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from .evaluate import run_from_args

    try:
        return run_from_args(args, settings)
    except ValueError as error:
        print(f"spot-forecast: error: {error}", file=sys.stderr)
        return EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# calibrate


def _add_calibrate_command(commands: argparse._SubParsersAction) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="refit a stored model's job-cost levels and risk map on the latest prices",
        description="Forecast origins every 8 hours in the last days of the prices whose next "
        "72 hours are known, refit the job-cost percentile levels and the price-risk map on "
        "what happened, and save a new version of the model that the service loads next. Run "
        "it after each ingest. Under a minute on 2 CPU cores with the bundled data.",
    )
    calibrate.add_argument("--model", help="model tag (default: SPOT_FORECAST_MODEL_TAG, else "
                           "<model_name>:latest)")
    source = calibrate.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, nargs="+", metavar="FILE",
                        help="price files (default: settings data_paths)")
    source.add_argument("--archive", type=Path, help="read the prices from this archive folder")
    calibrate.add_argument("--days", type=_positive_int, default=14,
                           help="days of origins to refit on (default: 14)")
    calibrate.set_defaults(handler=_run_calibrate)


def _run_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from .calibration import calibrate, min_calibration_days
    from .decision_backtest import DecisionConfig
    from .store import ModelFormatError
    from .training import load_events

    config = DecisionConfig(calibration_days=args.days)
    if args.days < min_calibration_days(config):
        print(f"spot-forecast: error: --days is {args.days}; a refit needs at least "
              f"{min_calibration_days(config)} days of origins whose next {config.horizon} hours "
              "are known", file=sys.stderr)
        return EXIT_USAGE
    try:
        table = load_events(settings, args.data, args.archive)
        result = calibrate(_model_tag(args, settings), table, config)
    except (ValueError, ModelFormatError) as error:
        print(f"spot-forecast: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    details = result.details
    low, middle, high = result.model.levels_for(24)
    print(f"saved {result.tag}: refitted on {details['origins']} origins from "
          f"{details['first_origin']} to {details['last_origin']} "
          f"({details['series']} series); 24-hour job-cost percentiles now read at path levels "
          f"{low:.3f}, {middle:.3f}, {high:.3f}")
    print("Restart the service to use it; where SPOT_FORECAST_MODEL_TAG pins a version, set it "
          "to the new tag.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
