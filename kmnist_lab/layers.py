"""Custom layers: the cosine classification head used by margin losses.

`CosineDense` replaces the last `Dense` of a classifier when the loss works on
cosines (AM-Softmax, ARM-Softmax): both the feature vector and every class weight
column are L2-normalised, so the head's output is `cos(theta_j)` in `[-1, 1]` and
the loss's scale `s` alone sets the logit range.
"""

from __future__ import annotations

import keras
from keras import ops

from kmnist_lab.errors import ConfigError

_HALF_DTYPES = ("float16", "bfloat16")


def l2_normalize(x, axis=-1, epsilon=1e-7):
    """`x / sqrt(sum(x^2) + epsilon)` along `axis`.

    Adding `epsilon` under the square root (instead of clipping the norm) keeps the
    function smooth: a zero vector maps to zero with a finite gradient
    `1 / sqrt(epsilon)` rather than `0 / 0`.

    Args:
        x: tensor to normalise.
        axis: axis along which the L2 norm is taken.
        epsilon: positive constant added to the squared norm.

    Returns:
        Tensor of the same shape and dtype as `x` with norms `<= 1` along `axis`.
    """
    square_sum = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(square_sum + epsilon)


@keras.saving.register_keras_serializable(package="kmnist_lab")
class CosineDense(keras.layers.Layer):
    """Dense layer without bias whose outputs are cosines `cos(x, w_j)`.

    `out_j = <x / |x|, w_j / |w_j|>`, with `|v| = sqrt(sum(v^2) + epsilon)`, as in
    the AM-Softmax head (Wang et al. 2018, https://arxiv.org/abs/1801.05599).
    The result is clipped to `[-1, 1]` against float rounding. The layer always
    computes in (at least) float32: under a `mixed_float16` / `mixed_bfloat16`
    policy it defaults to a float32 policy, so its output is float32 and feeds a
    margin loss without a half-precision round trip.

    Args:
        units: number of classes (output width), a positive integer.
        epsilon: positive constant added to squared norms; a zero input row or
            weight column then gives finite outputs (0) and finite gradients.
        kernel_initializer: initializer of the `(input_dim, units)` kernel.
        kernel_regularizer: optional regularizer of the kernel.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(
        self,
        units,
        epsilon=1e-7,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ConfigError(f"`units` must be a positive integer. Received: units={units}")
        if not epsilon > 0:
            raise ConfigError(f"`epsilon` must be > 0. Received: epsilon={epsilon}")
        if kwargs.get("dtype") is None:
            # Mixed precision: keep the head (and its output) in float32.
            global_policy = keras.config.dtype_policy()
            if global_policy.compute_dtype in _HALF_DTYPES:
                kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.units = units
        self.epsilon = float(epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"The last dimension of the input of {self.name} must be defined. "
                f"Received: input_shape={input_shape}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_dim, self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def _output_dtype(self):
        return "float32" if self.compute_dtype in _HALF_DTYPES else self.compute_dtype

    def call(self, inputs):
        x = ops.cast(inputs, self._output_dtype())
        w = ops.cast(self.kernel, self._output_dtype())
        x = l2_normalize(x, axis=-1, epsilon=self.epsilon)
        w = l2_normalize(w, axis=0, epsilon=self.epsilon)
        return ops.clip(ops.matmul(x, w), -1.0, 1.0)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape(inputs.shape)
        return keras.KerasTensor(shape, dtype=self._output_dtype())

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "epsilon": self.epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config
