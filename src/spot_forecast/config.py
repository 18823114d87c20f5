"""Settings shared by train.py, the command line and the service.

Every default lives here once. Each field can be overridden with an environment variable named
``SPOT_FORECAST_<FIELD>`` (for example ``SPOT_FORECAST_LOOKBACK=96``) or a ``.env`` file.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Effective configuration of one run or one service process."""

    model_config = SettingsConfigDict(env_prefix="SPOT_FORECAST_", env_file=".env", extra="ignore")

    model_name: str = Field("spot_lstm", description="Name of the model in the BentoML model store.")
    freq: str = Field("1h", description="Grid frequency; the model only forecasts at this step.")
    lookback: int = Field(168, ge=8, le=2016, description="Hours of history the model reads.")
    horizon: int = Field(168, ge=1, le=168, description="Maximum hours the model forecasts.")
    quantiles: tuple[float, ...] = Field(
        (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95),
        description="Quantile levels the network outputs; must include 0.1, 0.5 and 0.9.",
    )
    validation_days: int = Field(14, ge=1, description="Days at the end held out for validation.")
    epochs: int = Field(8, ge=1, description="Training epochs.")
    batch_size: int = Field(256, ge=1, description="Training batch size in windows.")
    lstm_units: int = Field(32, ge=1, description="Units of the LSTM layer.")
    hidden_units: int = Field(256, ge=1, description="Units of each dense layer after the LSTM.")
    recurrent_hours: int = Field(
        48, ge=1, description="Most recent hours of the window that the LSTM reads."
    )
    learning_rate: float = Field(
        1e-3, gt=0, description="Initial Adam learning rate, decayed along a cosine to 5 %."
    )
    loss_price_power: float = Field(
        0.0, ge=0,
        description="Each training window's loss is weighted by its last price to this power. "
        "Errors in USD grow with the price, so 1 would fit USD errors and 0 relative errors.",
    )
    loss_step_power: float = Field(
        1.0, ge=0, le=1,
        description="Each horizon step's loss is weighted by its mean absolute log change to "
        "the power -loss_step_power: 0 weighs steps equally, 1 equalises their typical error.",
    )
    median_loss_weight: float = Field(
        3.0, gt=0, description="Weight of the 0.5 level in the pinball loss, the others weigh 1."
    )
    calibration_days: int = Field(
        14, ge=1,
        description="Days at the end of the data a fit may read (before the validation days in "
        "train.py, before the cut-off in the backtest) that calibrate the medians and intervals "
        "instead of training the network.",
    )
    calibration_every: int = Field(
        12, ge=1, description="Hours between calibration origins."
    )
    max_train_windows: int = Field(
        150_000, ge=1, description="Training windows sampled per epoch budget (seeded)."
    )
    seed: int = Field(20220213, description="Seed for window sampling and weight initialisation.")
    products: tuple[str, ...] = Field(
        ("Linux/UNIX", "Windows"),
        description="Product descriptions trained on. RHEL and SUSE are Linux plus a fixed premium.",
    )
    data_paths: tuple[Path, ...] = Field(
        (PROJECT_ROOT / "data" / "eu-west-1_2022-03-13T17_00_58.xz",),
        description="Files or folders that train.py reads when given no paths.",
    )
    history_hours: int = Field(
        336, ge=8, description="Hours of recent history stored with the model for every series."
    )
    max_history: int = Field(
        4032, ge=8, description="Maximum number of hourly prices a client may send."
    )
    max_body_bytes: int = Field(5_000_000, ge=1024, description="Largest request body accepted.")
    tf_threads: int = Field(
        0, ge=0, description="TensorFlow threads per worker; 0 splits the usable cores among workers."
    )
    workers: int = Field(1, ge=1, description="Service worker processes, each with its own model.")
    max_batch_size: int = Field(
        2048, ge=1, description="Most windows in one model call of the adaptive batcher."
    )
    archive_path: Path = Field(
        PROJECT_ROOT / "archive",
        description="Folder of the Parquet price archive that `spot-forecast ingest` appends to.",
    )
    aws_max_attempts: int = Field(
        8, ge=1, description="Attempts per EC2 API call, first try included (botocore standard retries)."
    )
    aws_max_calls: int = Field(
        10_000,
        ge=1,
        description="Maximum describe_spot_price_history calls per region and run, a guard against "
        "pagination that never ends. The shipped eu-west-1 sample (90 days of 2022) has 816,644 "
        "records, about 820 calls of 1,000 records.",
    )
    aws_workers: int = Field(8, ge=1, description="Regions fetched in parallel.")

    @field_validator("quantiles")
    @classmethod
    def _check_quantiles(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        for level in levels:
            if not 0.0 < level < 1.0:
                raise ValueError(f"quantile level {level} must lie strictly between 0 and 1")
        for required in (0.1, 0.5, 0.9):
            if required not in levels:
                raise ValueError(f"quantiles {levels} must include {required}")
        return tuple(sorted(set(levels)))
