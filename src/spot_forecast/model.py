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


#: Lags in hours of the relative changes fed straight to the dense layers; lags at or past the
#: lookback are dropped.
LAGS = (1, 2, 3, 6, 12, 24, 48, 72, 120, 167)


def build_model(
    *,
    lookback: int,
    n_features: int,
    horizon: int,
    quantiles: Sequence[float],
    units: int = 128,
    lstm_units: int = 32,
    recurrent_hours: int = 48,
    seed: int = 0,
):
    """Build the quantile LSTM (uncompiled).

    An LSTM of ``lstm_units`` reads the last ``recurrent_hours`` rows of the window. Its state,
    the relative changes at ``LAGS``, counts of recent price changes and the last row's features
    feed two dense layers of ``units``. The relative changes carry most of the signal, and a short
    recurrent span keeps training affordable on two CPU cores.

    Returns a ``keras.Model`` mapping ``(batch, lookback, n_features)`` to
    ``(batch, horizon, len(quantiles))``.
    """
    import keras
    from keras import layers

    from spot_forecast.layers import ChangeCounts, CumulativeSpread, LagChanges, LastStep
    from spot_forecast.windows import CHANGE_COLUMN, LEVEL_COLUMN, OBSERVED_COLUMN

    quantiles = sorted(quantiles)
    median_index = quantiles.index(0.5)
    n_lower = median_index
    n_upper = len(quantiles) - median_index - 1
    init = keras.initializers.GlorotUniform(seed=seed)
    recurrent_hours = min(recurrent_hours, lookback)

    inputs = keras.Input(shape=(lookback, n_features), name="window")
    recent = layers.Cropping1D((lookback - recurrent_hours, 0), name="recent")(inputs)
    masked = layers.Masking(mask_value=0.0)(recent)
    encoded = layers.LSTM(lstm_units, kernel_initializer=init, name="lstm")(masked)
    lags = [lag for lag in LAGS if lag < lookback]
    changes = LagChanges(lags, lookback, LEVEL_COLUMN, name="lag_changes")(inputs)
    counts = ChangeCounts(CHANGE_COLUMN, OBSERVED_COLUMN, name="change_counts")(inputs)
    # The last observed step's features give the network a direct view of the current state.
    last_row = LastStep(name="last_row")(inputs)
    hidden = layers.Concatenate()([encoded, changes, counts, last_row])
    hidden = layers.Dense(units, activation="relu", kernel_initializer=init, name="hidden")(hidden)
    hidden = layers.Dense(units, activation="relu", kernel_initializer=init, name="hidden_2")(hidden)

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


def pinball_loss(
    quantiles: Sequence[float],
    step_weights: Sequence[float] | None = None,
    median_weight: float = 1.0,
):
    """Pinball loss of each window, averaged over quantiles and the steps that have a target.

    Targets have shape ``(batch, horizon)`` and may hold NaN past the end of a series; those steps
    are left out of the mean. ``step_weights`` (shape ``(horizon,)``) weigh the steps, so that
    short horizons, whose log changes are about a hundred times smaller than at 168 hours, still
    shape the shared layers. ``median_weight`` weighs the 0.5 level against the others. The loss
    is returned per window, so Keras applies sample weights.
    """
    from keras import ops

    levels = np.asarray(sorted(quantiles), dtype=np.float32)
    level_weights = np.where(np.isclose(levels, 0.5), median_weight, 1.0).astype(np.float32)
    level_weights /= level_weights.mean()
    weights = None if step_weights is None else np.asarray(step_weights, dtype=np.float32)

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        known = ops.logical_not(ops.isnan(y_true))
        target = ops.where(known, y_true, 0.0)[..., None]
        error = target - y_pred
        tau = ops.convert_to_tensor(levels)
        per_level = ops.maximum(tau * error, (tau - 1.0) * error)
        per_level = per_level * ops.convert_to_tensor(level_weights)
        weight = ops.cast(known, "float32")
        if weights is not None:
            weight = weight * ops.convert_to_tensor(weights)[None, :]
        total = ops.sum(ops.sum(per_level, axis=-1) * weight, axis=-1)
        return total / (ops.sum(weight, axis=-1) * len(levels) + 1e-9)

    return loss


def step_weights(raw_targets: np.ndarray, power: float) -> np.ndarray:
    """Loss weight of each step: the mean absolute log change there to the power ``-power``.

    Weights are scaled to a mean of one. A power of 0 weighs every step the same, and 1 makes
    every step's typical error count the same. Steps without any change weigh one.
    """
    size = np.nanmean(np.abs(np.asarray(raw_targets, dtype=np.float64)), axis=0)
    if power == 0 or not np.all(np.isfinite(size) & (size > 0)):
        return np.ones(size.shape)
    weights = size ** -power
    return weights / weights.mean()


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
    sample_weight: np.ndarray | None = None,
    loss_step_weights: np.ndarray | None = None,
    median_weight: float = 1.0,
    verbose: int = 2,
):
    """Compile ``model`` with the pinball loss and fit it; returns the Keras history.

    The learning rate decays along a cosine to 5 % of ``learning_rate``, and the final weights
    are an exponential moving average of the weights over the last steps (momentum 0.99). Both
    make the per-step outputs less noisy than the weights of the last batch.
    Inputs must be finite; targets may hold NaN only where a step has no observed future.
    """
    import keras

    check_finite("training inputs", inputs)
    known_targets = targets[~np.isnan(targets)]
    check_finite("training targets", known_targets)
    if known_targets.size == 0:
        raise ValueError("training targets are all missing: the series are shorter than one step")

    steps = epochs * int(np.ceil(len(inputs) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=schedule, clipnorm=1.0, use_ema=True, ema_momentum=0.99
        ),
        loss=pinball_loss(quantiles, loss_step_weights, median_weight),
    )
    history = model.fit(
        inputs,
        targets,
        sample_weight=sample_weight,
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


#: Largest spread scale the calibration may choose; a larger one would mean the network's
#: intervals carry no information at that step.
MAX_SPREAD_SCALE = 20.0
#: Median threshold that moves every median of a step to the last value.
SNAP_ALL = 1e9
#: Candidate thresholds tried per step: zero, SNAP_ALL and quantiles of |median| at these levels.
THRESHOLD_LEVELS = np.linspace(0.025, 0.975, 39)
#: Steps in the running median that smooths thresholds over neighbouring steps.
THRESHOLD_SMOOTHING = 9


def shrink_medians(
    scaled_quantiles: np.ndarray, thresholds: np.ndarray, median_index: int
) -> np.ndarray:
    """Move each median toward zero by at most its step's threshold, and every level with it.

    This is soft thresholding, as ``QuantileCalibration`` applies it: a median closer to zero
    than the threshold becomes zero (the last value), a larger one shrinks by the threshold.
    """
    values = np.asarray(scaled_quantiles, dtype=np.float64)
    medians = values[..., median_index]
    limit = np.asarray(thresholds, dtype=np.float64)[None, :]
    return values - np.clip(medians, -limit, limit)[..., None]


def fit_median_threshold(
    scaled_quantiles: np.ndarray,
    raw_targets: np.ndarray,
    last_prices: np.ndarray,
    *,
    scale: float,
    median_index: int,
) -> np.ndarray:
    """Per-step thresholds of ``shrink_medians``, shape ``(horizon,)``, fitted on calibration data.

    Most Spot prices do not change within a day, so a median a hair away from the last price costs
    more than it gains. At each step the threshold minimises the mean absolute error in USD over
    the calibration windows, among zero, ``SNAP_ALL`` and quantiles of ``|median|``. A running
    median over ``THRESHOLD_SMOOTHING`` steps then smooths the thresholds, so that a forecast
    path does not jump between shrunk and kept steps.
    """
    medians = np.asarray(scaled_quantiles, dtype=np.float64)[..., median_index]
    raw_targets = np.asarray(raw_targets, dtype=np.float64)
    last_prices = np.asarray(last_prices, dtype=np.float64)
    horizon = medians.shape[1]
    thresholds = np.zeros(horizon)
    for step in range(horizon):
        known = ~np.isnan(raw_targets[:, step])
        if not known.any():
            continue
        median = medians[known, step]
        last = last_prices[known]
        actual = last * np.exp(raw_targets[known, step])
        candidates = np.concatenate(
            [[0.0], np.quantile(np.abs(median), THRESHOLD_LEVELS), [SNAP_ALL]]
        )
        shrunk = median[None, :] - np.clip(median[None, :], -candidates[:, None],
                                           candidates[:, None])
        forecast = last[None, :] * np.exp(np.clip(shrunk * scale, -20.0, 20.0))
        cost = np.abs(actual[None, :] - forecast).mean(axis=1)
        thresholds[step] = candidates[int(np.argmin(cost))]
    return running_median(thresholds, THRESHOLD_SMOOTHING)


def running_median(values: np.ndarray, width: int) -> np.ndarray:
    """Median over ``width`` neighbouring entries, the ends repeated as padding."""
    values = np.asarray(values, dtype=np.float64)
    if width <= 1 or len(values) == 0:
        return values
    half = width // 2
    padded = np.concatenate([np.full(half, values[0]), values, np.full(half, values[-1])])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    return np.median(windows, axis=1)


def fit_spread_scale(
    scaled_quantiles: np.ndarray, scaled_targets: np.ndarray, quantiles: Sequence[float]
) -> np.ndarray:
    """Per-step factors on the distances from the median, shape ``(horizon, n_quantiles)``.

    Each pair of levels ``(q, 1 - q)`` gets one factor per step: the smallest that makes the
    central interval cover ``1 - 2q`` of the calibration targets (split-conformal scaling).
    Windows whose target equals the median need a factor of zero. The median's factor stays one,
    and factors are capped at ``MAX_SPREAD_SCALE``.
    """
    levels = sorted(quantiles)
    median_index = levels.index(0.5)
    values = np.asarray(scaled_quantiles, dtype=np.float64)
    targets = np.asarray(scaled_targets, dtype=np.float64)
    medians = values[..., median_index]
    factors = np.ones((values.shape[1], len(levels)))
    for j in range(median_index):
        k = len(levels) - 1 - j
        if not np.isclose(levels[j] + levels[k], 1.0):
            raise ValueError(f"quantile levels {levels} are not symmetric around 0.5")
        below = medians - values[..., j]
        above = values[..., k] - medians
        with np.errstate(divide="ignore", invalid="ignore"):
            needed = np.where(
                targets < medians,
                (medians - targets) / below,
                np.where(targets > medians, (targets - medians) / above, 0.0),
            )
        needed[np.isnan(targets)] = np.nan
        coverage = levels[k] - levels[j]
        factor = np.full(values.shape[1], 1.0)
        known = ~np.isnan(needed).all(axis=0)
        factor[known] = np.nanquantile(needed[:, known], coverage, axis=0, method="inverted_cdf")
        factors[:, j] = factors[:, k] = np.minimum(factor, MAX_SPREAD_SCALE)
    return factors


def calibrate_model(model, median_threshold: np.ndarray, spread_scale: np.ndarray, quantiles):
    """Return ``model`` followed by a ``QuantileCalibration`` layer holding the fitted values."""
    import keras

    from spot_forecast.layers import QuantileCalibration

    calibration = QuantileCalibration(sorted(quantiles).index(0.5), name="calibration")
    outputs = calibration(model.output)
    calibration.set_weights([
        np.asarray(median_threshold, dtype=np.float32),
        np.asarray(spread_scale, dtype=np.float32),
    ])
    return keras.Model(model.input, outputs, name=model.name)
