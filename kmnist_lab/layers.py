"""Custom layers: the cosine classification head used by margin losses.

`CosineDense` replaces the last `Dense` of a classifier when the loss works on
cosines (AM-Softmax, ARM-Softmax): both the feature vector and every class weight
column are L2-normalised, so the head's output is `cos(theta_j)` in `[-1, 1]` and
the loss's scale `s` alone sets the logit range.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

from kmnist_lab.errors import ConfigError, is_int, is_real

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
        epsilon: positive finite constant added to squared norms; a zero input row or
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
        if not is_int(units) or units < 1:
            raise ConfigError(f"`units` must be a positive integer. Received: units={units!r}")
        if not is_real(epsilon) or not 0 < epsilon < math.inf:
            raise ConfigError(
                f"`epsilon` must be a finite number > 0. Received: epsilon={epsilon!r}"
            )
        if kwargs.get("dtype") is None:
            # Mixed precision: keep the head (and its output) in float32.
            global_policy = keras.config.dtype_policy()
            if global_policy.compute_dtype in _HALF_DTYPES:
                kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.units = int(units)
        self.epsilon = float(epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"the last dimension of the input of {self.name} must be defined. "
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


@keras.saving.register_keras_serializable(package="kmnist_lab")
class RandomAffine(keras.layers.Layer):
    """Random rotation + translation of images, active only in training.

    Why not `keras.layers.RandomRotation`/`RandomTranslation`: on TensorFlow they
    use `ImageProjectiveTransformV3`, which XLA cannot compile, so they switch the
    whole training step off XLA (`bn_mlp` on TensorFlow trained at 5,100 samples/s
    with them against 8,600 with this layer, docs/performance.md). This
    layer does the same bilinear warp with `keras.ops` gathers, which XLA, JAX and
    PyTorch all compile.

    Each image is rotated by `a ~ U(-max_rotation, max_rotation)` degrees about its
    centre and shifted by `(dx, dy) ~ U(-max_translation, max_translation) * (W, H)`;
    output pixel `p` samples the input at `R(-a) (p - c - t) + c` (bilinear), and
    samples outside the image read `fill_value`.

    Args:
        max_rotation: degrees, >= 0 (report E: small rotations).
        max_translation: fraction of the image size, in [0, 1).
        fill_value: value of pixels coming from outside the image.
        seed: seed of the layer's random generator.
    """

    def __init__(
        self, max_rotation=10.0, max_translation=0.1, fill_value=-1.0, seed=None, **kwargs
    ):
        super().__init__(**kwargs)
        if not is_real(max_rotation) or not 0 <= max_rotation < math.inf:
            raise ConfigError(
                "`max_rotation` must be a finite number >= 0 (degrees). "
                f"Received: max_rotation={max_rotation!r}"
            )
        if not is_real(max_translation) or not 0 <= max_translation < 1:
            raise ConfigError(
                "`max_translation` must be a number in [0, 1). "
                f"Received: max_translation={max_translation!r}"
            )
        if not is_real(fill_value) or not math.isfinite(fill_value):
            raise ConfigError(
                f"`fill_value` must be a finite number. Received: fill_value={fill_value!r}"
            )
        self.max_rotation = float(max_rotation)
        self.max_translation = float(max_translation)
        self.fill_value = float(fill_value)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        if not training:
            return images
        batch = ops.shape(images)[0]
        h, w = images.shape[1], images.shape[2]
        limit = self.max_rotation * 3.141592653589793 / 180.0
        angle = keras.random.uniform((batch,), -limit, limit, seed=self.seed_generator)
        shift = keras.random.uniform(
            (batch, 2), -self.max_translation, self.max_translation, seed=self.seed_generator
        )
        return self.transform(images, angle, shift[:, 0] * w, shift[:, 1] * h)

    def transform(self, images, angle, dx, dy):
        """Warps `images` (B, H, W, C) by per-image `angle` (radians) and shifts (pixels).

        `bilinear_warp`; on TensorFlow compiled by XLA on its own (`_xla_warp`).
        """
        warp = _xla_warp() if keras.backend.backend() == "tensorflow" else bilinear_warp
        return warp(images, angle, dx, dy, self.fill_value)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "max_rotation": self.max_rotation,
            "max_translation": self.max_translation,
            "fill_value": self.fill_value,
            "seed": self.seed,
        }


def bilinear_warp(images, angle, dx, dy, fill_value):
    """`images` (B, H, W, C) rotated by `angle` (B,) radians and shifted by `dx`, `dy`
    (B,) pixels, sampled bilinearly; pixels from outside the image read `fill_value`.

    Output pixel `p` of image `b` samples the input at `R(-angle_b) (p - c - t_b) + c`
    (`c` the image centre, `t_b = (dx_b, dy_b)`). Each of the four bilinear
    neighbours is one `ops.take_along_axis` gather.

    Args:
        images: (B, H, W, C) images.
        angle: (B,) rotation angles, radians.
        dx: (B,) horizontal shifts, pixels.
        dy: (B,) vertical shifts, pixels.
        fill_value: value read for samples outside the image.

    Returns:
        The warped images, shape and dtype of `images`. Integer images (raw uint8
        pixels) are rounded to the nearest value and saturated to their dtype's range,
        so a `fill_value` below 0 reads 0 on every backend.
    """
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    dtype = keras.backend.standardize_dtype(images.dtype)
    ys, xs = ops.meshgrid(
        ops.arange(h, dtype="float32"), ops.arange(w, dtype="float32"), indexing="ij"
    )
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    xs = ops.reshape(xs, (1, -1)) - cx - ops.reshape(dx, (-1, 1))
    ys = ops.reshape(ys, (1, -1)) - cy - ops.reshape(dy, (-1, 1))
    cos, sin = ops.reshape(ops.cos(angle), (-1, 1)), ops.reshape(ops.sin(angle), (-1, 1))
    src_x = cos * xs + sin * ys + cx
    src_y = -sin * xs + cos * ys + cy
    x0, y0 = ops.floor(src_x), ops.floor(src_y)
    flat = ops.reshape(ops.cast(images, "float32"), (-1, h * w, c))
    out = 0.0
    for oy in (0.0, 1.0):
        for ox in (0.0, 1.0):
            px, py = x0 + ox, y0 + oy
            weight = (1.0 - ops.abs(src_x - px)) * (1.0 - ops.abs(src_y - py))
            inside = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
            index = ops.cast(ops.clip(py, 0, h - 1) * w + ops.clip(px, 0, w - 1), "int32")
            index = ops.repeat(ops.expand_dims(index, -1), c, axis=-1)
            value = ops.take_along_axis(flat, index, axis=1)
            value = ops.where(ops.expand_dims(inside, -1), value, fill_value)
            out = out + ops.expand_dims(weight, -1) * value
    out = ops.reshape(out, (-1, h, w, c))
    if "int" in dtype:
        # A bare cast truncates (199.99 -> 199) and is backend-defined out of range
        # (PyTorch wraps the default fill -1 to 255 in uint8).
        info = np.iinfo(dtype)
        out = ops.clip(ops.round(out), float(info.min), float(info.max))
    return ops.cast(out, dtype)


@functools.cache
def _xla_warp():
    """`bilinear_warp` compiled by XLA on its own (TensorFlow backend only).

    A model step that runs without XLA (`residual_cnn`, `resnet18`: XLA measured
    slower for their convolutions) would otherwise run the warp's ~60 small ops one
    by one: 2.0-2.5 ms per batch of 64 on the project's 2-core CPU, against 0.85 ms
    for the same ops as one XLA cluster inside the step, and `residual_cnn`'s
    `train.py` epochs took 5.5 s instead of 6.3 (docs/performance.md, "Augmentation").
    Inside a step that is compiled by XLA already, this is inlined.
    """
    import tensorflow as tf

    return tf.function(bilinear_warp, jit_compile=True)


@keras.saving.register_keras_serializable(package="kmnist_lab")
class SmallMapConv2D(keras.layers.Conv2D):
    """`Conv2D` for feature maps of a few pixels: one matrix product per output pixel.

    Output pixel `q` is `y_q = concat_{p in W(q)} x_p @ concat_{p in W(q)} K[t(p, q)]`,
    where `W(q)` are the input pixels inside `q`'s receptive field (padding excluded)
    and `t(p, q)` the kernel tap that joins them: the convolution's own sum, with no
    multiply-adds spent on padding. On a 2x2 map a 3x3 convolution with padding 1
    reads 4 of its 9 taps per output pixel, so this does 4/9 of a convolution's
    nominal multiply-adds, in 4 matrix products of `(batch, 4 C) x (4 C, F)`. The
    taps are picked by a product with a constant 0/1 matrix rather than a gather, so
    that the kernel's gradient is a matrix product too, not a scatter-add.

    On this project's 2-core CPU, TensorFlow's oneDNN convolutions run ResNet-18's
    last stage (2x2 maps, 512 channels) forward and backward in 42-45 ms per batch
    of 128 and per layer; this layer in 17-19 ms, and the whole ResNet-18 trains 16-18 %
    faster (docs/performance.md, "Small feature maps"). Convolution libraries pick
    among algorithms by shape on GPUs (cuDNN); neither Keras nor TensorFlow's CPU
    path offers this one, hence this layer.

    The kernel is a standard `(kh, kw, in_channels, filters)` `Conv2D` kernel and the
    output equals `Conv2D`'s (up to float rounding), so weights move freely between
    the two. The work grows with the number of output pixels, so the layer is meant
    for maps of at most a few pixels a side; `kmnist_lab.models` uses it where it
    measured faster.

    Args:
        filters: output channels.
        kernel_size: int or `(kh, kw)`.
        strides: int or `(sh, sw)`.
        padding: `"valid"` or `"same"` (Keras' convention, extra row/column at the
            bottom/right).
        zero_padding: with `padding="valid"`, zero rows/columns added on every side
            first, as PyTorch's `Conv2d(padding=n)` (a ResNet's stride-2 3x3
            convolutions use 1).
        **kwargs: other `keras.layers.Conv2D` arguments (`use_bias`, `activation`,
            initializers, regularizers, `name`, ...). Only `channels_last`,
            dilation 1 and one group are supported.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", zero_padding=0, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)
        if not is_int(zero_padding) or zero_padding < 0:
            raise ConfigError(
                f"`zero_padding` must be an integer >= 0. Received: zero_padding={zero_padding!r}"
            )
        zero_padding = int(zero_padding)
        if zero_padding and self.padding != "valid":
            raise ConfigError(
                "`zero_padding` applies to padding='valid' only. "
                f"Received: padding={self.padding!r}, zero_padding={zero_padding}"
            )
        unsupported = {
            "data_format": (self.data_format, "channels_last"),
            "dilation_rate": (self.dilation_rate, (1, 1)),
            "groups": (self.groups, 1),
        }
        for arg, (value, allowed) in unsupported.items():
            if value != allowed:
                raise ConfigError(
                    f"SmallMapConv2D supports {arg}={allowed!r} only. Received: {arg}={value!r}"
                )
        self.zero_padding = zero_padding

    def _geometry(self, height, width):
        """`(out_h, out_w, pad_top, pad_left)` for an input of `height x width`."""
        dims = []
        for size, k, s in zip((height, width), self.kernel_size, self.strides):
            if self.padding == "same":
                out = -(-size // s)
                before = max((out - 1) * s + k - size, 0) // 2
            else:
                out = (size + 2 * self.zero_padding - k) // s + 1
                before = self.zero_padding
            dims.append((out, before))
        (out_h, top), (out_w, left) = dims
        return out_h, out_w, top, left

    def _windows(self, height, width):
        """For each output pixel (row-major): its input pixels and their kernel taps."""
        out_h, out_w, top, left = self._geometry(height, width)
        kh, kw = self.kernel_size
        sh, sw = self.strides
        windows = []
        for i in range(out_h):
            for j in range(out_w):
                pixels, taps = [], []
                for a in range(kh):
                    for b in range(kw):
                        y, x = i * sh - top + a, j * sw - left + b
                        if 0 <= y < height and 0 <= x < width:
                            pixels.append(y * width + x)
                            taps.append(a * kw + b)
                windows.append((pixels, taps))
        return out_h, out_w, windows

    def build(self, input_shape):
        if input_shape[1] is None or input_shape[2] is None:
            raise ConfigError(
                "SmallMapConv2D needs a static height and width (its matrix products are "
                f"laid out per output pixel). Received input shape {tuple(input_shape)}"
            )
        out_h, out_w, _, _ = self._geometry(*input_shape[1:3])
        if out_h < 1 or out_w < 1:
            raise ConfigError(
                f"SmallMapConv2D: a {input_shape[1]}x{input_shape[2]} input gives no output "
                f"pixels with kernel_size={self.kernel_size}, strides={self.strides}, "
                f"padding={self.padding!r}, zero_padding={self.zero_padding} (the output "
                "must be at least 1x1)"
            )
        empty = [
            i for i, (pixels, _) in enumerate(self._windows(*input_shape[1:3])[2]) if not pixels
        ]
        if empty:
            raise ConfigError(
                f"SmallMapConv2D: with zero_padding={self.zero_padding}, output pixels {empty} "
                f"of a {input_shape[1]}x{input_shape[2]} input see only padding. Use "
                f"zero_padding < kernel_size {self.kernel_size}"
            )
        super().build(input_shape)

    def convolution_op(self, inputs, kernel):
        height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
        out_h, out_w, windows = self._windows(height, width)
        kh, kw = self.kernel_size
        flat = ops.reshape(inputs, (-1, height * width, channels))
        all_pixels = list(range(height * width))
        # Every window's taps, stacked, as one product with a constant 0/1 selector
        # (rows: the windows' taps in order; columns: the kernel's taps): its gradient is
        # the transposed product, where a gather's would be a scatter-add (TensorFlow's
        # UnsortedSegmentSum, single-threaded on CPU).
        taps = [t for _, window_taps in windows for t in window_taps]
        selector = np.zeros((len(taps), kh * kw), dtype=np.float32)
        selector[np.arange(len(taps)), taps] = 1.0
        selector = ops.convert_to_tensor(selector, dtype=kernel.dtype)
        stacked = ops.matmul(selector, ops.reshape(kernel, (kh * kw, -1)))
        sizes = np.cumsum([len(window_taps) for _, window_taps in windows])[:-1]
        parts = [stacked]
        if len(windows) > 1:
            parts = ops.split(stacked, [int(size) for size in sizes], axis=0)
        columns = []
        for (pixels, window_taps), part in zip(windows, parts):
            x = flat if pixels == all_pixels else ops.take(flat, pixels, axis=1)
            x = ops.reshape(x, (-1, len(pixels) * channels))
            w = ops.reshape(part, (len(window_taps) * channels, self.filters))
            columns.append(ops.matmul(x, w))
        return ops.reshape(ops.stack(columns, axis=1), (-1, out_h, out_w, self.filters))

    def compute_output_shape(self, input_shape):
        batch, height, width = input_shape[0], input_shape[1], input_shape[2]
        out_h, out_w, _, _ = self._geometry(height, width)
        return (batch, out_h, out_w, self.filters)

    def get_config(self):
        return {**super().get_config(), "zero_padding": self.zero_padding}


@keras.saving.register_keras_serializable(package="kmnist_lab")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`BatchNormalization` that trains through TensorFlow's fused kernel.

    The function is Keras' (Ioffe & Szegedy 2015, arXiv:1502.03167): in training,
    `y = gamma * (x - mean_B) / sqrt(var_B + epsilon) + beta` over the batch (and
    spatial) axes, then `moving = momentum * moving + (1 - momentum) * stat_B` with
    the biased batch variance; at inference the moving statistics replace the batch
    ones. Only the training computation differs: on the TensorFlow backend, a
    float32 training call on a channels-last 4-D input runs one `FusedBatchNormV3`
    op (oneDNN's fused kernel on CPU, cuDNN's on GPU) and its fused gradient, where
    Keras 3 builds the same function from separate moments, normalisation and
    gradient ops. tf.keras had this (`fused=True`); Keras 3 dropped it.

    On this project's 2-core CPU a 14x14x64 BatchNorm + ReLU at batch 128 takes
    2.4 ms forward and backward fused against 5.8 ms unfused, and ResNet-18 (20
    BatchNorms) trains faster by the amount in docs/performance.md ("Fused
    BatchNorm"). Every other case (JAX, torch, inference, masks, renorm,
    `synchronized`, 2-D inputs, other axes or dtypes) is `BatchNormalization.call`
    itself, so the layer is a drop-in replacement whose weights, config and
    SavedModel are Keras'.

    TensorFlow's op returns the Bessel-corrected batch variance `var_B * n / (n - 1)`
    (`n` values per channel); it is scaled back to the biased `var_B` for the moving
    average, as Keras computes it.

    Args:
        **kwargs: `keras.layers.BatchNormalization` arguments.
    """

    def _fused(self, inputs, training, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and bool(training)
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) == "float32"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        ones = tf.ones((channels,), inputs.dtype)
        outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=self.gamma.value if self.scale else ones,
            offset=self.beta.value if self.center else ones * 0.0,
            mean=tf.zeros((0,), inputs.dtype),
            variance=tf.zeros((0,), inputs.dtype),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        n = tf.cast(tf.size(inputs) // channels, inputs.dtype)
        variance = variance * ops.maximum(n - 1.0, 0.0) / ops.maximum(n, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return outputs
