"""Synthetic hourly Spot prices shared by the training and evaluation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

START = pd.Timestamp("2024-04-01T00:00Z")


def synthetic_events(days: int = 20, seed: int = 0) -> pd.DataFrame:
    """Hourly events of four series whose prices change by about 1 % in a third of the hours."""
    rng = np.random.default_rng(seed)
    frames = []
    for zone in ("us-east-1a", "us-east-1b"):
        for instance_type in ("m5.large", "c5.xlarge"):
            hours = days * 24
            steps = (rng.random(hours) < 0.3) * rng.normal(0.002, 0.01, hours)
            frames.append(pd.DataFrame({
                "unique_id": f"{zone}/{instance_type}/Linux/UNIX",
                "ds": pd.date_range(START, periods=hours, freq="1h"),
                "y": 0.05 * np.exp(np.cumsum(steps)),
                "availability_zone": zone,
                "instance_type": instance_type,
                "product_description": "Linux/UNIX",
                "region": "us-east-1",
            }))
    return pd.concat(frames, ignore_index=True)
