"""Train the global Spot price LSTM and save it to the BentoML model store.

With no arguments it trains on the real eu-west-1 history bundled in data/, holds out the last
14 days for validation, prints the model against the last-value baseline, and saves the bundle
as ``spot_lstm``. Every default comes from ``spot_forecast.config.Settings`` and can be set with
``SPOT_FORECAST_*`` environment variables or the options below.

    python train.py                       # default run on the bundled data
    python train.py data/folder --epochs 3
    python train.py --archive ~/spot-archive
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from spot_forecast.config import Settings

logger = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        help="price history files or folders (default: the bundled data)")
    parser.add_argument("--archive", type=Path, help="train from a Parquet archive instead")
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--lookback", type=int, help="hours of history the model reads")
    parser.add_argument("--horizon", type=int, help="maximum hours the model forecasts (1-168)")
    parser.add_argument("--max-train-windows", type=int, help="training windows to sample")
    parser.add_argument("--validation-days", type=int, help="days held out at the end")
    parser.add_argument("--model-name", help="name in the BentoML model store")
    parser.add_argument("--no-save", action="store_true", help="train and report, save nothing")
    return parser.parse_args(argv)


def fail(message: str) -> None:
    """Print one error line to stderr, as the spot-forecast commands do."""
    print(f"train.py: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {
        key: value
        for key, value in {
            "epochs": args.epochs,
            "lookback": args.lookback,
            "horizon": args.horizon,
            "max_train_windows": args.max_train_windows,
            "validation_days": args.validation_days,
            "model_name": args.model_name,
        }.items()
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        for problem in error.errors():
            field = str(problem["loc"][0]) if problem["loc"] else "settings"
            option = f"--{field.replace('_', '-')}" if field in overrides else field
            fail(f"invalid {option} {problem.get('input')!r}: {problem['msg']} "
                 f"(option or SPOT_FORECAST_{field.upper()})")
        return 2
    logger.info("settings: %s", settings.model_dump_json())

    from spot_forecast.archive import ArchiveError
    from spot_forecast.training import format_metrics_table, train

    if args.paths and args.archive:
        fail("give price files or --archive, not both")
        return 2
    try:
        result = train(settings, paths=args.paths or None, archive=args.archive,
                       save=not args.no_save)
    except (ValueError, FileNotFoundError, ArchiveError) as error:
        fail(f"training failed: {error}")
        return 1

    print()
    print("Validation on the held-out period (median forecast vs. last value):")
    print(format_metrics_table(result.metrics))
    if result.guard_steps:
        print(f"The last value replaces the model at {len(result.guard_steps)} of "
              f"{settings.horizon} steps where the model was less accurate.")
    if result.tag:
        print(f"Saved {result.tag} to the BentoML model store.")
    print(f"Finished in {result.seconds:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
