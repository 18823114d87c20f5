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
