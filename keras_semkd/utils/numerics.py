"""The one home of the numerical helpers that layers, models and losses share.

Everything here is backend-agnostic (`keras.ops` only), channels-last, and
reproduces a PyTorch formula where the project ports RepDistiller or
mdistiller code:

* **Pooling.** `adaptive_pool_matrix` / `adaptive_average_pool`: PyTorch's
  `AdaptiveAvgPool2d` bins for any input and output size;
  `match_spatial_size`, RepDistiller's rule for pairing two maps.
* **Normalization and flattening.** `l2_normalize` (`F.normalize`),
  `flatten_features` (`x.view(B, -1)`).
* **PyTorch defaults.** `torch_default_kernel` / `torch_default_bias`
  (`nn.Conv2d` / `nn.Linear` init), `BN_MOMENTUM` / `BN_EPSILON`
  (`nn.BatchNorm2d`), `weight_decay_regularizer` (the coupled L2 of PyTorch
  SGD's `weight_decay`).
* **Validators.** `check_weight_decay`, `check_warmup_epochs`.
* **Warm-up.** `linear_warmup`, mdistiller's epoch warm-up factor.

This module imports nothing from the package: it sits below `layers/`,
`models/` and `losses/` (see `../shared/STYLE.md`).
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

# PyTorch's `BatchNorm2d(momentum=0.1, eps=1e-5)` in Keras terms.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------


def _output_size(output_size):
    if isinstance(output_size, numbers.Integral):
        return int(output_size), int(output_size)
    out_h, out_w = (int(v) for v in output_size)
    return out_h, out_w


def adaptive_pool_matrix(size, bins):
    """`(bins, size)` float32 matrix of PyTorch's adaptive average pooling.

    Row `i` averages the input indices `floor(i·size/bins) ≤ j <
    ceil((i+1)·size/bins)`; every row sums to one. With `size < bins`
    each input index is repeated in about `bins/size` rows
    (nearest-neighbour upsampling).
    """
    matrix = np.zeros((bins, size), dtype="float32")
    for i in range(bins):
        start = (i * size) // bins
        end = -(-((i + 1) * size) // bins)  # ceil
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_average_pool(x, output_size):
    """PyTorch's `F.adaptive_avg_pool2d` for a channels-last map.

    Pools a static-size `(B, H, W, C)` map to `(B, g_h, g_w, C)`,
    `output_size` being `g` or `(g_h, g_w)` (any ratio: divisible or not,
    smaller or larger than the input). The result is float32.

    When `H`, `W` are multiples of the output size the bins are disjoint
    blocks and this is a plain average pooling (`ops.average_pool`, several
    times faster on CPU than a reshape and a mean); otherwise separable
    pooling matrices (`adaptive_pool_matrix`) apply the same rule.
    """
    x = ops.cast(x, "float32")
    _, height, width, _ = x.shape
    gh, gw = _output_size(output_size)
    if (height, width) == (gh, gw):
        return x
    if height % gh == 0 and width % gw == 0:
        window = (height // gh, width // gw)
        return ops.average_pool(x, window, strides=window, padding="valid",
                                data_format="channels_last")
    ph = ops.convert_to_tensor(adaptive_pool_matrix(height, gh))
    pw = ops.convert_to_tensor(adaptive_pool_matrix(width, gw))
    x = ops.einsum("ih,bhwc->biwc", ph, x)
    return ops.einsum("jw,biwc->bijc", pw, x)


def match_spatial_size(f_s, f_t):
    """Pools the larger of two `(B, H, W, C)` maps down to the smaller's
    `H × W` by adaptive average pooling (RepDistiller's rule for AT, VID and
    NST, applied per axis so non-square maps work too)."""
    size = (
        min(int(f_s.shape[1]), int(f_t.shape[1])),
        min(int(f_s.shape[2]), int(f_t.shape[2])),
    )
    if tuple(f_s.shape[1:3]) != size:
        f_s = adaptive_average_pool(f_s, size)
    if tuple(f_t.shape[1:3]) != size:
        f_t = adaptive_average_pool(f_t, size)
    return f_s, f_t


# ---------------------------------------------------------------------------
# Normalization and flattening
# ---------------------------------------------------------------------------


def l2_normalize(x, axis=-1, eps=1e-12):
    """PyTorch's `F.normalize(x, dim=axis, eps=eps)`: `x / max(‖x‖₂, eps)`.

    Written as `x / sqrt(max(Σx², eps²))`, which has the same value and a
    finite (zero) gradient at `x = 0`, where `sqrt` alone would give NaN.
    """
    sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x / ops.sqrt(ops.maximum(sq, eps * eps))


def flatten_features(x):
    """`(B, ...) -> (B, prod(...))` (`x.view(B, -1)`), in float32."""
    x = ops.cast(x, "float32")
    dim = math.prod(int(d) for d in x.shape[1:])
    return ops.reshape(x, (-1, dim))


# ---------------------------------------------------------------------------
# PyTorch defaults: initializers and the coupled L2 regularizer
# ---------------------------------------------------------------------------


def torch_default_kernel():
    """PyTorch's default `Conv2d`/`Linear` weight init,
    `kaiming_uniform_(a=sqrt(5))` = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Keras' fan_in of a (grouped) `Conv2D` kernel `(kh, kw, in / groups, out)`
    is `kh * kw * in / groups`, the same as PyTorch's; likewise for
    `Conv2DTranspose` and `Dense`."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in):
    """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def weight_decay_regularizer(weight_decay):
    """Coupled L2 matching PyTorch SGD's `weight_decay`.

    PyTorch SGD adds `weight_decay * w` to each gradient, i.e. it minimises
    `loss + 0.5 * weight_decay * ||w||^2`. `keras.regularizers.L2(l2)` adds
    `l2 * ||w||^2`, so `l2 = weight_decay / 2` gives the same gradient
    (RepDistiller applies it to its regressors and embeddings too).
    Returns `None` (no regularizer, no extra ops) when `weight_decay == 0`.
    """
    if not weight_decay:
        return None
    return keras.regularizers.L2(weight_decay / 2.0)


# ---------------------------------------------------------------------------
# Validators
# ---------------------------------------------------------------------------


def check_weight_decay(weight_decay):
    """Returns `weight_decay` as a float; raises `ValueError` unless it is a
    finite number `>= 0`."""
    if (not isinstance(weight_decay, numbers.Real)
            or isinstance(weight_decay, bool)
            or not math.isfinite(weight_decay) or weight_decay < 0):
        raise ValueError(
            "weight_decay must be a finite number >= 0. "
            f"Received: weight_decay={weight_decay!r}"
        )
    return float(weight_decay)


def check_warmup_epochs(warmup_epochs):
    """Returns `warmup_epochs` as an int; raises `ValueError` unless it is
    an integer `>= 0`."""
    if not (isinstance(warmup_epochs, numbers.Integral)
            and warmup_epochs >= 0):
        raise ValueError(
            "warmup_epochs must be an integer >= 0. "
            f"Received: warmup_epochs={warmup_epochs!r}"
        )
    return int(warmup_epochs)


# ---------------------------------------------------------------------------
# Warm-up
# ---------------------------------------------------------------------------


def linear_warmup(epoch, warmup_epochs):
    """mdistiller's warm-up factor `min(e / warmup, 1)` for the 0-based
    Keras `epoch` (mdistiller counts epochs from 1, so `e = epoch + 1`).

    Args:
        epoch: float32 scalar tensor (or number), the 0-based epoch.
        warmup_epochs: Python int >= 0; 0 means no warm-up (factor 1).

    Returns:
        float32 scalar tensor in `(0, 1]`.
    """
    epoch = ops.cast(epoch, "float32")
    if warmup_epochs <= 0:
        return ops.ones_like(epoch)
    return ops.minimum((epoch + 1.0) / float(warmup_epochs), 1.0)


def kd_loss(teacher_logits, student_logits, temperature=4.0):
    """Per-example Hinton KD loss.

    `T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))`, summed over classes,
    one value per example (the batch mean is taken by the caller, so this
    is RepDistiller's `DistillKL`: `KL(..., reduction="sum") * T² / B`).

    Args:
        teacher_logits: `(batch, classes)` teacher logits.
        student_logits: `(batch, classes)` student logits.
        temperature: softening temperature `T > 0`.

    Returns:
        `(batch,)` float32 tensor.
    """
    t = ops.cast(teacher_logits, "float32") / temperature
    s = ops.cast(student_logits, "float32") / temperature
    log_p_t = ops.log_softmax(t, axis=-1)
    log_p_s = ops.log_softmax(s, axis=-1)
    p_t = ops.exp(log_p_t)
    kl = ops.sum(p_t * (log_p_t - log_p_s), axis=-1)
    return kl * (temperature**2)
