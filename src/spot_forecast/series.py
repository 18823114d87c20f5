"""The canonical price table and series ids shared by every stage.

A series is one (availability zone, instance type, product description). Its id is
``"<availability_zone>/<instance_type>/<product_description>"``, for example
``eu-west-1a/m5.large/Linux/UNIX``. The product keeps its exact string, so ``Linux/UNIX`` and
``Linux/UNIX (Amazon VPC)`` are two series.
"""

from __future__ import annotations

import re

import pandas as pd

#: Columns of the canonical table, in this order. ``ds`` is tz-aware UTC, ``y`` is float64 USD/h.
CANONICAL_COLUMNS = (
    "unique_id",
    "ds",
    "y",
    "availability_zone",
    "instance_type",
    "product_description",
    "region",
)

_ZONE_NAME = re.compile(r"^([a-z]{2}(?:-gov)?-[a-z]+-\d+)[a-z]$")
_ZONE_ID = re.compile(r"^([a-z]{2,5}\d+)-az\d+$")


def series_id(availability_zone: str, instance_type: str, product_description: str) -> str:
    """Join the three keys of a series into its id."""
    return f"{availability_zone}/{instance_type}/{product_description}"


def split_series_id(unique_id: str) -> tuple[str, str, str]:
    """Split a series id into (availability zone, instance type, product description).

    The product may itself contain ``/`` (``Linux/UNIX``), so only the first two separators count.
    """
    parts = unique_id.split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(
            f"series id {unique_id!r} is invalid: expected "
            "'<availability_zone>/<instance_type>/<product_description>', "
            "for example 'eu-west-1a/m5.large/Linux/UNIX'"
        )
    return parts[0], parts[1], parts[2]


def region_of(availability_zone: str) -> str:
    """Return the region of a zone name (``eu-west-1a`` -> ``eu-west-1``).

    Zone ids such as ``use1-az4`` carry only an abbreviated region, returned as is (``use1``);
    an unknown form returns an empty string.
    """
    match = _ZONE_NAME.match(availability_zone)
    if match:
        return match.group(1)
    match = _ZONE_ID.match(availability_zone)
    if match:
        return match.group(1)
    return ""


def empty_table() -> pd.DataFrame:
    """Return an empty canonical table with the right dtypes."""
    frame = pd.DataFrame({column: pd.Series(dtype=object) for column in CANONICAL_COLUMNS})
    frame["ds"] = pd.Series(dtype="datetime64[ns, UTC]")
    frame["y"] = pd.Series(dtype="float64")
    return frame
