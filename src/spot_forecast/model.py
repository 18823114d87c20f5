"""The global LSTM: build, train, and turn its outputs into prices.

The network reads a window of shape ``(batch, lookback, N_FEATURES)`` (see ``windows``) and returns
quantiles of the scaled log ratio ``log(future / last price) / scale`` with shape
``(batch, horizon, n_quantiles)``, levels in ascending order. The median head starts at zero,
which is the last-value forecast, so training starts from the baseline and moves away only where
the data supports it. Quantiles cannot cross: the levels below the median are the median minus
cumulative softplus steps, and the levels above add cumulative softplus steps.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def configure_threads(threads: int) -> None:
    """Size TensorFlow's thread pools; 0 means one thread per usable core.

    Must run before TensorFlow executes its first operation in the process.
    """
    import tensorflow as tf

    if threads <= 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:
        logger.warning("TensorFlow was already initialised; its thread pools keep their sizes")


def build_model(
    *,
    lookback: int,
    n_features: int,
    horizon: int,
    quantiles: Sequence[float],
    units: int = 64,
    seed: int = 0,
):
    """Build the quantile LSTM (uncompiled).

    Returns a ``keras.Model`` mapping ``(batch, lookback, n_features)`` to
    ``(batch, horizon, len(quantiles))``.
    """
    import keras
    from keras import layers

    from spot_forecast.layers import CumulativeSpread, LastStep

    quantiles = sorted(quantiles)
    median_index = quantiles.index(0.5)
    n_lower = median_index
    n_upper = len(quantiles) - median_index - 1
    init = keras.initializers.GlorotUniform(seed=seed)

    inputs = keras.Input(shape=(lookback, n_features), name="window")
    masked = layers.Masking(mask_value=0.0)(inputs)
    encoded = layers.LSTM(units, kernel_initializer=init, name="lstm")(masked)
    # The last observed step's features give the network a direct view of the current state.
    last_row = LastStep(name="last_row")(inputs)
    hidden = layers.Concatenate()([encoded, last_row])
    hidden = layers.Dense(units, activation="relu", kernel_initializer=init, name="hidden")(hidden)

    median = layers.Dense(horizon, kernel_initializer="zeros", name="median")(hidden)
    median = layers.Reshape((horizon, 1))(median)
    parts = []
    if n_lower:
        lower = layers.Dense(horizon * n_lower, activation="softplus", name="lower_steps")(hidden)
        lower = layers.Reshape((horizon, n_lower))(lower)
        lower = CumulativeSpread(reverse=True, name="lower_spread")(lower)
        parts.append(layers.Subtract()([median, lower]))
    parts.append(median)
    if n_upper:
        upper = layers.Dense(horizon * n_upper, activation="softplus", name="upper_steps")(hidden)
        upper = layers.Reshape((horizon, n_upper))(upper)
        upper = CumulativeSpread(name="upper_spread")(upper)
        parts.append(layers.Add()([median, upper]))
    outputs = layers.Concatenate(axis=-1, name="quantiles")(parts) if len(parts) > 1 else median
    return keras.Model(inputs, outputs, name="spot_lstm")


def pinball_loss(quantiles: Sequence[float]):
    """Pinball loss averaged over quantiles and the horizon steps that have a target.

    Targets have shape ``(batch, horizon)`` and may hold NaN past the end of a series; those steps
    are left out of the mean.
    """
    from keras import ops

    levels = np.asarray(sorted(quantiles), dtype=np.float32)

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        known = ops.logical_not(ops.isnan(y_true))
        target = ops.where(known, y_true, 0.0)[..., None]
        error = target - y_pred
        tau = ops.convert_to_tensor(levels)
        per_level = ops.maximum(tau * error, (tau - 1.0) * error)
        weight = ops.cast(known, "float32")[..., None]
        return ops.sum(per_level * weight) / (ops.sum(weight) * len(levels) + 1e-9)

    return loss


def check_finite(name: str, array: np.ndarray) -> None:
    """Raise ValueError naming the array if it holds NaN or infinity."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite values (first at index {first}); "
            "check the input prices for zeros, NaN or infinity"
        )


def fit_model(
    model,
    inputs: np.ndarray,
    targets: np.ndarray,
    *,
    quantiles: Sequence[float],
    epochs: int,
    batch_size: int,
    learning_rate: float = 1e-3,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    verbose: int = 2,
):
    """Compile ``model`` with the pinball loss and fit it; returns the Keras history.

    Inputs must be finite; targets may hold NaN only where a step has no observed future.
    """
    import keras

    check_finite("training inputs", inputs)
    known_targets = targets[~np.isnan(targets)]
    check_finite("training targets", known_targets)
    if known_targets.size == 0:
        raise ValueError("training targets are all missing: the series are shorter than one step")

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=1.0),
        loss=pinball_loss(quantiles),
    )
    history = model.fit(
        inputs,
        targets,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        validation_data=validation,
        verbose=verbose,
    )
    final_loss = history.history["loss"][-1]
    if not np.isfinite(final_loss):
        raise RuntimeError(f"training diverged: final loss {final_loss}")
    return history


def to_prices(scaled_quantiles: np.ndarray, last_prices: np.ndarray, scale: float) -> np.ndarray:
    """Turn scaled log-ratio quantiles ``(n, horizon, q)`` into positive prices.

    Exponents are clipped to +-20 (a factor of about 5e8), so a wild output cannot overflow to
    infinity or underflow to zero.
    """
    exponent = np.clip(np.asarray(scaled_quantiles, dtype=np.float64) * scale, -20.0, 20.0)
    return np.asarray(last_prices, dtype=np.float64)[:, None, None] * np.exp(exponent)
