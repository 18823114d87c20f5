"""Custom Keras layers of the quantile LSTM.

They are registered as serialisable so that a saved ``.keras`` file loads without
``safe_mode=False`` (Keras refuses to load ``Lambda`` layers by default). Importing this module
imports Keras, so the rest of the package imports it only inside functions.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="spot_forecast")
class LastStep(keras.layers.Layer):
    """Select the last time step: ``(batch, time, features)`` to ``(batch, features)``."""

    def call(self, inputs):
        return inputs[:, -1, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


@keras.saving.register_keras_serializable(package="spot_forecast")
class CumulativeSpread(keras.layers.Layer):
    """Cumulative sum over the last axis, optionally flipped.

    Applied to non-negative softplus steps of shape ``(batch, horizon, k)``, it gives distances
    from the median that grow outwards. ``reverse=True`` lists them from the farthest level to the
    nearest, the order of the levels below the median.
    """

    def __init__(self, reverse: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.reverse = reverse

    def call(self, inputs):
        spread = ops.cumsum(inputs, axis=-1)
        return ops.flip(spread, axis=-1) if self.reverse else spread

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "reverse": self.reverse}


@keras.saving.register_keras_serializable(package="spot_forecast")
class LagChanges(keras.layers.Layer):
    """Relative changes ``log(last price / price lag hours before)`` read from a window.

    Column ``level_column`` of a window holds ``log(price / last price) / scale``, so the change over
    ``lag`` hours is minus that column ``lag`` rows before the last row. Front padding reads as
    zero, the same as no change. Output shape ``(batch, len(lags))``.
    """

    def __init__(self, lags, lookback: int, level_column: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.lags = [int(lag) for lag in lags]
        self.lookback = int(lookback)
        self.level_column = int(level_column)
        for lag in self.lags:
            if not 0 < lag < self.lookback:
                raise ValueError(f"lag {lag} must lie between 1 and lookback - 1 = {lookback - 1}")

    def call(self, inputs):
        rows = [self.lookback - 1 - lag for lag in self.lags]
        return -ops.take(inputs[:, :, self.level_column], rows, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.lags))

    def get_config(self):
        return {
            **super().get_config(),
            "lags": self.lags,
            "lookback": self.lookback,
            "level_column": self.level_column,
        }


@keras.saving.register_keras_serializable(package="spot_forecast")
class ChangeCounts(keras.layers.Layer):
    """Price changes in the last day and the whole window, and the share of observed rows.

    Counts are divided by 4 and 10, roughly their upper quartiles on the 2022 eu-west-1 data, so
    the three outputs share a scale near one. Output shape ``(batch, 3)``.
    """

    def __init__(self, change_column: int = 2, observed_column: int = 7, **kwargs):
        super().__init__(**kwargs)
        self.change_column = int(change_column)
        self.observed_column = int(observed_column)

    def call(self, inputs):
        changes = inputs[:, :, self.change_column]
        observed = inputs[:, :, self.observed_column]
        return ops.stack(
            [
                ops.sum(changes[:, -24:], axis=1) / 4.0,
                ops.sum(changes, axis=1) / 10.0,
                ops.mean(observed, axis=1),
            ],
            axis=1,
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 3)

    def get_config(self):
        return {
            **super().get_config(),
            "change_column": self.change_column,
            "observed_column": self.observed_column,
        }


@keras.saving.register_keras_serializable(package="spot_forecast")
class QuantileCalibration(keras.layers.Layer):
    """Fixed correction of quantile outputs, fitted after training on a calibration slice.

    Input and output have shape ``(batch, horizon, n_quantiles)`` in scaled log ratios, levels
    ascending. At each step ``h``:

    1. the median moves toward zero (the last value) by at most ``median_threshold[h]``, and
       every level moves with it (soft thresholding);
    2. each level's distance from the median is multiplied by ``spread_scale[h, level]``;
    3. distances are made non-decreasing away from the median, so levels cannot cross.

    Both weights are non-trainable. A new layer has thresholds of zero and scales of one, which
    leaves outputs unchanged.
    """

    def __init__(self, median_index: int, **kwargs):
        super().__init__(**kwargs)
        self.median_index = int(median_index)

    def build(self, input_shape):
        horizon, n_quantiles = int(input_shape[1]), int(input_shape[2])
        self.median_threshold = self.add_weight(
            name="median_threshold", shape=(horizon,), initializer="zeros", trainable=False
        )
        self.spread_scale = self.add_weight(
            name="spread_scale", shape=(horizon, n_quantiles), initializer="ones", trainable=False
        )

    def call(self, inputs):
        median = inputs[:, :, self.median_index]
        shrunk = median - ops.clip(median, -self.median_threshold, self.median_threshold)
        distances = (inputs - median[:, :, None]) * self.spread_scale

        below = [-distances[:, :, j] for j in range(self.median_index)]
        above = [distances[:, :, j] for j in range(self.median_index + 1, inputs.shape[-1])]
        for j in range(len(below) - 2, -1, -1):
            below[j] = ops.maximum(below[j], below[j + 1])
        for j in range(1, len(above)):
            above[j] = ops.maximum(above[j], above[j - 1])
        levels = [shrunk - d for d in below] + [shrunk] + [shrunk + d for d in above]
        return ops.stack(levels, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "median_index": self.median_index}
