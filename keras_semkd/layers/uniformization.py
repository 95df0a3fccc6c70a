"""Parameter-free self-attention uniformization of feature maps.

SAKD (Guo et al., Visual Intelligence 1:6, 2023) turns teacher and student
features of different shapes into vectors of one length with a
parameter-free self-attention operation applied identically to both
networks. Only the paper's abstract is public: the modes below are this
project's design candidates (see `docs/method.md`), not the paper's text.

Every mode first aligns the spatial size with a parameter-free rule,
**adaptive average pooling** to a configured `grid = (g_h, g_w)` (PyTorch's
`AdaptiveAvgPool2d` bins: output cell `i` averages input rows
`floor(i·H/g_h) ≤ h < ceil((i+1)·H/g_h)`, likewise for columns). When `H`
is a multiple of `g_h` the bins are the disjoint `H/g_h` blocks (plain
average pooling); when it is not, bins have `⌈H/g_h⌉` or `⌈H/g_h⌉ + 1` rows
and neighbouring bins can share one row; when `H < g_h` each input row is
repeated in about `g_h/H` cells, i.e. nearest-neighbour upsampling. The
result is `X ∈ R^{N×C}`, `N = g_h·g_w` tokens (row-major positions).

Then, with `τ` the `temperature` and rows of a softmax max-subtracted:

* `"spatial"` (U1, default): positions are tokens, rows L2-normalized over
  channels, `A = softmax(X̂ X̂ᵀ / τ) ∈ R^{N×N}`, `u = vec(A)`, `L = N²`.
  `u` only depends on the cosine similarities between positions, so it is
  invariant to *any* orthogonal change of the channel basis (in particular
  channel permutations) and to a positive rescaling of each position:
  teacher and student channels need no correspondence.
* `"channel"` (U2): channels are tokens, each channel map L2-normalized over
  positions, `A = softmax(X̃ᵀ X̃ / τ) ∈ R^{C×C}`, `w = 1/C · Aᵀ1` (attention
  each channel receives, `Σ w = 1`), `u = X̃ w / ‖X̃ w‖`, `L = N`: an
  attention-weighted relative of attention transfer's map. Invariant to
  channel permutations and per-channel positive scaling.
* `"grouped"` (U3): the channel axis is split into `groups` contiguous
  groups (`C % groups == 0` for every input), U1 in each,
  `L = groups·N²`. Invariant to permutations inside a group only; which
  teacher group meets which student group is fixed by channel order.

`token_norm` (modes `"spatial"` and `"grouped"`) chooses how the tokens are
scaled before the inner products:

* `"position"` (default): every position L2-normalized over channels, so
  `A` depends on cosine similarities only (magnitudes are dropped);
* `"map"`: the whole map divided by its mean squared position norm,
  `X̄ = X / sqrt(mean_i ‖x_i‖²)`, `A = softmax(X̄ X̄ᵀ / τ)`: invariant to a
  rescaling of the map and to orthogonal channel changes, but strong
  positions keep their larger inner products, so per-position magnitude
  (what attention transfer's map measures) stays in `A`.

Everything is computed in float32 whatever the input dtype.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_semkd.utils.numerics import adaptive_average_pool
from keras_semkd.utils.numerics import l2_normalize

MODES = ("spatial", "channel", "grouped")
TOKEN_NORMS = ("position", "map")
_EPSILON = 1e-12  # on squared norms


def _normalize_grid(grid):
    value = grid
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        value = (int(grid), int(grid))
    try:
        value = tuple(int(g) for g in value)
        ok = len(value) == 2 and all(g >= 1 for g in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "grid must be a positive integer or a pair (grid_h, grid_w) of "
            f"positive integers. Received: grid={grid!r}"
        )
    return value


def _l2_normalize(x, axis):
    # PyTorch's F.normalize with eps = 1e-6 (its squared norm floored at
    # _EPSILON = 1e-12): the shared helper.
    return l2_normalize(x, axis=axis, eps=math.sqrt(_EPSILON))


def _log_softmax(logits):
    """Max-subtracted log-softmax over the last axis."""
    shifted = logits - ops.stop_gradient(
        ops.max(logits, axis=-1, keepdims=True)
    )
    return shifted - ops.log(ops.sum(ops.exp(shifted), axis=-1,
                                     keepdims=True))


@keras.saving.register_keras_serializable(package="keras_semkd")
class AttentionUniformization(keras.layers.Layer):
    """Maps a `(B, H, W, C)` feature map to a `(B, L)` vector, no weights.

    `L` depends on `mode`, `grid` and `groups` only (not on `H`, `W`, `C`),
    so teacher and student features of any shapes become comparable vectors
    through the very same operation. The formulas are in the module
    docstring; `docs/method.md` explains the choice.

    Args:
        mode: `"spatial"` (U1, default, `L = N²`), `"channel"` (U2,
            `L = N`) or `"grouped"` (U3, `L = groups·N²`), `N = g_h·g_w`.
        grid: int or `(g_h, g_w)`: the spatial grid every input is
            adaptively average-pooled to (default 4: 4×4, `N = 16`).
        temperature: softmax temperature `τ > 0` on cosine similarities.
        groups: number of channel groups for `"grouped"` (ignored
            otherwise); every input's `C` must be a multiple of it.
        token_norm: `"position"` (default: cosine similarities) or
            `"map"` (one scale per map, magnitudes kept); see the module
            docstring. Ignored by `"channel"`.
        **kwargs: base `Layer` arguments. The dtype policy defaults to
            `"float32"`; the computation is float32 in any case.

    Call arguments:
        inputs: `(B, H, W, C)` tensor with static `H`, `W`, `C`.
        log_space: return `log u` instead of `u` (modes whose rows are
            attention distributions only: `"spatial"`, `"grouped"`); used
            for a stable KL between rows.

    Output: `(B, L)` float32. For `"spatial"`/`"grouped"` it is made of
    `L / N` consecutive rows of `N` probabilities (`output_rows` of them),
    `u[g·N² + i·N + j] = A_g[i, j]`.
    """

    def __init__(self, mode="spatial", grid=4, temperature=0.1, groups=4,
                 token_norm="position", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(
                f"mode must be one of {MODES}. Received: mode={mode!r}"
            )
        try:
            temperature = float(temperature)
        except (TypeError, ValueError):
            temperature = float("nan")
        if not temperature > 0 or math.isinf(temperature):
            raise ValueError(
                "temperature must be a finite number > 0. "
                f"Received: temperature={temperature!r}"
            )
        if (not isinstance(groups, (int, np.integer)) or
                isinstance(groups, bool) or groups < 1):
            raise ValueError(
                "groups must be a positive integer. "
                f"Received: groups={groups!r}"
            )
        if token_norm not in TOKEN_NORMS:
            raise ValueError(
                f"token_norm must be one of {TOKEN_NORMS}. "
                f"Received: token_norm={token_norm!r}"
            )
        self.mode = mode
        self.token_norm = token_norm
        self.grid = _normalize_grid(grid)
        self.temperature = temperature
        self.groups = int(groups)
        self.supports_masking = False

    # -- sizes -------------------------------------------------------------
    @property
    def tokens(self):
        """`N = g_h·g_w`, the number of spatial tokens after pooling."""
        return self.grid[0] * self.grid[1]

    @property
    def output_length(self):
        """`L`, the length of every output vector."""
        n = self.tokens
        if self.mode == "spatial":
            return n * n
        if self.mode == "grouped":
            return self.groups * n * n
        return n

    @property
    def output_rows(self):
        """Number of attention rows (each a distribution over `N`) in the
        output, or `None` for `"channel"` whose output is a unit vector."""
        if self.mode == "spatial":
            return self.tokens
        if self.mode == "grouped":
            return self.groups * self.tokens
        return None

    def check_input_shape(self, input_shape, what="inputs"):
        """Raises `ValueError` unless `input_shape` can be uniformized."""
        input_shape = tuple(input_shape)
        if len(input_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} expects {what} of rank 4 "
                "(batch, height, width, channels). "
                f"Received: {what} with shape {input_shape}"
            )
        if any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"{type(self).__name__} needs static height, width and "
                f"channels (the pooling bins are fixed when the graph is "
                f"built). Received: {what} with shape {input_shape}"
            )
        if self.mode == "grouped" and input_shape[3] % self.groups:
            raise ValueError(
                f"mode='grouped' with groups={self.groups} needs a channel "
                f"count divisible by {self.groups}. Received: {what} with "
                f"shape {input_shape} ({input_shape[3]} channels)"
            )

    # -- layer API ---------------------------------------------------------
    def build(self, input_shape):
        self.check_input_shape(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        self.check_input_shape(input_shape)
        return (input_shape[0], self.output_length)

    def call(self, inputs, log_space=False):
        if log_space and self.mode == "channel":
            raise ValueError(
                "log_space=True needs attention rows; mode='channel' "
                "returns a unit vector. Received: mode='channel', "
                "log_space=True"
            )
        self.check_input_shape(inputs.shape)
        x = ops.cast(inputs, "float32")
        x = adaptive_average_pool(x, self.grid)
        n = self.tokens
        channels = x.shape[-1]
        x = ops.reshape(x, (-1, n, channels))  # (B, N, C)
        if self.mode == "channel":
            xt = _l2_normalize(x, axis=1)  # each channel map unit-norm
            sim = ops.matmul(ops.transpose(xt, (0, 2, 1)), xt)  # (B, C, C)
            attn = ops.exp(_log_softmax(sim / self.temperature))
            weights = ops.mean(attn, axis=1)  # (B, C), received attention
            u = ops.einsum("bnc,bc->bn", xt, weights)
            return _l2_normalize(u, axis=-1)
        if self.mode == "grouped":
            g = self.groups
            x = ops.reshape(x, (-1, n, g, channels // g))
            x = ops.transpose(x, (0, 2, 1, 3))  # (B, G, N, C/G)
        if self.token_norm == "map":
            # One scale per map (per group): mean squared position norm.
            sq = ops.mean(ops.sum(ops.square(x), axis=-1, keepdims=True),
                          axis=-2, keepdims=True)
            xn = x * ops.rsqrt(ops.maximum(sq, _EPSILON))
        else:
            xn = _l2_normalize(x, axis=-1)
        sim = ops.matmul(xn, ops.swapaxes(xn, -1, -2))  # (B, [G,] N, N)
        log_attn = _log_softmax(sim / self.temperature)
        out = log_attn if log_space else ops.exp(log_attn)
        return ops.reshape(out, (-1, self.output_length))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mode": self.mode,
                "grid": list(self.grid),
                "temperature": self.temperature,
                "groups": self.groups,
                "token_norm": self.token_norm,
            }
        )
        return config
