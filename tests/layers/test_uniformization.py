"""Tests of the parameter-free attention uniformization."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_semkd.layers import AttentionUniformization
from keras_semkd.utils.numerics import adaptive_average_pool
from keras_semkd.utils.numerics import adaptive_pool_matrix
from tests.layers.grad_utils import value_and_grads

MODES = ("spatial", "channel", "grouped")


# -- an independent NumPy reference ------------------------------------------
def np_pool(x, grid):
    """Adaptive average pooling by explicit loops over the bins."""
    b, h, w, c = x.shape
    gh, gw = grid
    out = np.zeros((b, gh, gw, c), dtype="float64")
    for i in range(gh):
        h0, h1 = int(np.floor(i * h / gh)), int(np.ceil((i + 1) * h / gh))
        for j in range(gw):
            w0, w1 = int(np.floor(j * w / gw)), int(np.ceil((j + 1) * w / gw))
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def np_unit(v, axis):
    return v / np.maximum(np.linalg.norm(v, axis=axis, keepdims=True), 1e-6)


def np_uniformize(x, mode, grid, temperature, groups=4):
    x = np_pool(np.asarray(x, dtype="float64"), grid)
    b, gh, gw, c = x.shape
    n = gh * gw
    x = x.reshape(b, n, c)
    out = []
    for e in range(b):
        if mode == "spatial":
            xn = np_unit(x[e], axis=1)
            out.append(np_softmax(xn @ xn.T / temperature).reshape(-1))
        elif mode == "grouped":
            parts = []
            for g in range(groups):
                sl = x[e][:, g * c // groups:(g + 1) * c // groups]
                xn = np_unit(sl, axis=1)
                parts.append(np_softmax(xn @ xn.T / temperature).reshape(-1))
            out.append(np.concatenate(parts))
        else:
            xt = np_unit(x[e], axis=0)  # (N, C), columns unit
            a = np_softmax(xt.T @ xt / temperature)  # (C, C)
            weights = a.mean(axis=0)  # received attention per channel
            u = xt @ weights
            out.append(u / np.linalg.norm(u))
    return np.stack(out)


def rand(shape, seed=0, positive=False):
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    return np.abs(x) if positive else x


# -- sizes --------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_output_length_independent_of_channels_and_size(mode):
    layer = AttentionUniformization(mode=mode, grid=4, groups=4)
    lengths = {"spatial": 256, "channel": 16, "grouped": 1024}[mode]
    for shape in [(2, 8, 8, 4), (2, 16, 16, 12), (2, 3, 5, 8), (2, 2, 2, 20)]:
        out = layer(rand(shape))
        assert tuple(out.shape) == (2, lengths), (shape, out.shape)
        assert layer.output_length == lengths
        assert layer.compute_output_shape((None,) + shape[1:]) == (
            None, lengths
        )


def test_rectangular_grid_lengths():
    layer = AttentionUniformization(grid=(2, 3))
    assert layer.grid == (2, 3) and layer.tokens == 6
    assert tuple(layer(rand((1, 5, 7, 3))).shape) == (1, 36)


@pytest.mark.parametrize("mode", MODES)
def test_no_weights(mode):
    layer = AttentionUniformization(mode=mode)
    layer(rand((2, 8, 8, 8)))
    assert layer.weights == []
    assert layer.trainable_weights == []
    assert layer.non_trainable_weights == []


# -- the pooling rule ---------------------------------------------------------
def test_pool_matrix_hand_values():
    np.testing.assert_allclose(
        adaptive_pool_matrix(3, 4),
        [[1, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0.5], [0, 0, 1]],
    )
    np.testing.assert_allclose(  # not divisible: neighbouring bins overlap
        adaptive_pool_matrix(6, 4),
        [[.5, .5, 0, 0, 0, 0], [0, .5, .5, 0, 0, 0],
         [0, 0, 0, .5, .5, 0], [0, 0, 0, 0, .5, .5]],
    )
    np.testing.assert_allclose(  # smaller than the grid: repetition
        adaptive_pool_matrix(2, 4), [[1, 0], [1, 0], [0, 1], [0, 1]]
    )
    np.testing.assert_allclose(  # divisible: disjoint blocks
        adaptive_pool_matrix(8, 4),
        np.kron(np.eye(4), [[0.5, 0.5]]),
    )


@pytest.mark.parametrize(
    "shape,grid",
    [((2, 8, 8, 3), (4, 4)), ((2, 6, 3, 2), (4, 4)), ((1, 2, 2, 3), (4, 4)),
     ((2, 7, 5, 3), (4, 3)), ((1, 4, 4, 2), (4, 4))],
)
def test_pooling_matches_loops_and_keras(shape, grid):
    x = rand(shape)
    got = np.asarray(adaptive_average_pool(ops.convert_to_tensor(x), grid))
    np.testing.assert_allclose(got, np_pool(x, grid), atol=1e-6)
    ref = ops.adaptive_average_pool(
        ops.convert_to_tensor(x), grid, data_format="channels_last"
    )
    np.testing.assert_allclose(got, np.asarray(ref), atol=1e-6)


# -- golden values ------------------------------------------------------------
def test_golden_values_hand_computed():
    # Two positions (grid 1x2), two channels: cos = 0 between [1, 0] and
    # [0, 2]; softmax([1, 0] / 0.5) = [e^2, 1] / (e^2 + 1).
    x = np.array([[[[1.0, 0.0], [0.0, 2.0]]]], dtype="float32")
    out = AttentionUniformization(grid=(1, 2), temperature=0.5)(x)
    p = np.exp(2.0) / (np.exp(2.0) + 1.0)
    np.testing.assert_allclose(
        np.asarray(out), [[p, 1 - p, 1 - p, p]], rtol=1e-6
    )
    # "channel": channel maps [1, 0] and [0, 1] (after normalization) are
    # orthogonal; the attention matrix is symmetric, both channels receive
    # weight 1/2, u = [1, 1]/2 normalized = [1, 1]/sqrt(2).
    out = AttentionUniformization(mode="channel", grid=(1, 2))(x)
    np.testing.assert_allclose(np.asarray(out), [[2 ** -0.5] * 2], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "shape,grid,temperature",
    [((2, 8, 8, 8), (4, 4), 0.1), ((2, 6, 3, 4), (3, 4), 0.5)],
)
def test_golden_values_numpy(mode, shape, grid, temperature):
    x = rand(shape, seed=3)
    layer = AttentionUniformization(mode=mode, grid=grid,
                                    temperature=temperature)
    got = np.asarray(layer(x))
    want = np_uniformize(x, mode, grid, temperature)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["spatial", "grouped"])
def test_rows_are_distributions_and_log_space(mode):
    layer = AttentionUniformization(mode=mode, grid=4)
    x = rand((3, 8, 8, 8))
    u = np.asarray(layer(x))
    rows = u.reshape(3, layer.output_rows, layer.tokens)
    np.testing.assert_allclose(rows.sum(-1), 1.0, rtol=1e-5)
    log_u = np.asarray(layer(x, log_space=True))
    np.testing.assert_allclose(np.exp(log_u), u, rtol=1e-5)


def test_channel_mode_is_unit_vector():
    u = np.asarray(AttentionUniformization(mode="channel")(rand((3, 8, 8, 6))))
    np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, rtol=1e-5)


# -- claimed invariances ------------------------------------------------------
def test_spatial_invariant_to_channel_basis_and_position_scale():
    layer = AttentionUniformization(mode="spatial", grid=4)
    x = rand((2, 8, 8, 6), seed=1)
    base = np.asarray(layer(x))
    perm = np.random.default_rng(0).permutation(6)
    np.testing.assert_allclose(np.asarray(layer(x[..., perm])), base,
                               atol=1e-6)
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((6, 6)))
    rotated = (x @ q.astype("float32")).astype("float32")
    np.testing.assert_allclose(np.asarray(layer(rotated)), base, atol=1e-5)
    # a positive scale per pooled position (constant over each 2x2 block)
    scale = np.kron(
        np.random.default_rng(2).uniform(0.1, 10, (2, 4, 4)),
        np.ones((2, 2)),
    )[..., None].astype("float32")
    np.testing.assert_allclose(np.asarray(layer(x * scale)), base, atol=1e-5)


def test_channel_mode_invariances():
    layer = AttentionUniformization(mode="channel", grid=4)
    x = rand((2, 8, 8, 6), seed=1)
    base = np.asarray(layer(x))
    perm = np.random.default_rng(0).permutation(6)
    np.testing.assert_allclose(np.asarray(layer(x[..., perm])), base,
                               atol=1e-6)
    scale = np.random.default_rng(3).uniform(0.1, 10, (1, 1, 1, 6))
    np.testing.assert_allclose(
        np.asarray(layer((x * scale).astype("float32"))), base, atol=1e-5
    )


def test_grouped_invariant_within_groups_only():
    layer = AttentionUniformization(mode="grouped", grid=4, groups=2)
    x = rand((2, 8, 8, 6), seed=1)
    base = np.asarray(layer(x))
    within = np.array([2, 0, 1, 5, 3, 4])
    np.testing.assert_allclose(np.asarray(layer(x[..., within])), base,
                               atol=1e-6)
    across = np.array([0, 3, 2, 1, 4, 5])
    assert not np.allclose(np.asarray(layer(x[..., across])), base,
                           atol=1e-4)


# -- numerics -----------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_input(mode, dtype):
    layer = AttentionUniformization(mode=mode)
    x = rand((2, 8, 8, 8), seed=4)
    ref = np.asarray(layer(x))
    low = ops.cast(ops.convert_to_tensor(x), dtype)
    out = layer(low)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    out = np.asarray(out)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, atol=2e-2 if dtype == "bfloat16"
                               else 3e-3)


@pytest.mark.parametrize("mode", MODES)
def test_stable_with_sharp_temperature_and_large_inputs(mode):
    layer = AttentionUniformization(mode=mode, temperature=1e-3)
    x = rand((2, 8, 8, 8), seed=5) * 1e4
    x[0, :4] = 0.0  # dead positions: zero vectors
    out = np.asarray(layer(x))
    assert np.all(np.isfinite(out))
    if mode != "channel":
        log_out = np.asarray(layer(x, log_space=True))
        assert np.all(np.isfinite(log_out))


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_input(mode):
    layer = AttentionUniformization(mode=mode, temperature=0.5)
    x = rand((2, 6, 6, 8), seed=6)
    weights = rand((2, layer.output_length), seed=7)
    _, (grad,) = value_and_grads(
        lambda t: layer(t) * ops.convert_to_tensor(weights), [x]
    )
    assert grad.shape == x.shape
    assert np.all(np.isfinite(grad))
    assert np.abs(grad).max() > 0


def test_same_op_for_every_call():
    # The uniformization is a pure function of its input: two instances with
    # the same config (or one instance called twice) give identical outputs.
    x = rand((2, 8, 8, 5), seed=8)
    a = AttentionUniformization(grid=4)
    b = AttentionUniformization.from_config(a.get_config())
    np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x)))
    np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(a(x)))


# -- contract -----------------------------------------------------------------
def test_get_config_round_trip():
    layer = AttentionUniformization(mode="grouped", grid=(2, 3),
                                    temperature=0.3, groups=2, name="u")
    config = layer.get_config()
    for key, value in [("mode", "grouped"), ("grid", [2, 3]),
                       ("temperature", 0.3), ("groups", 2)]:
        assert config[key] == value
        assert getattr(layer, key) == (tuple(value) if key == "grid"
                                       else value)
    clone = AttentionUniformization.from_config(config)
    assert clone.get_config() == config


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((8, 8, 6))
    outputs = AttentionUniformization(grid=2, temperature=0.2)(inputs)
    model = keras.Model(inputs, outputs)
    path = os.path.join(tmp_path, "u.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = rand((2, 8, 8, 6), seed=9)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)),
                               atol=1e-7)
    assert isinstance(loaded.layers[-1], AttentionUniformization)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"mode": "pixels"}, "mode must be one of"),
     ({"temperature": 0}, "temperature=0"),
     ({"temperature": float("inf")}, "temperature=inf"),
     ({"grid": 0}, "grid=0"),
     ({"grid": (2, 2, 2)}, r"grid=\(2, 2, 2\)"),
     ({"groups": 0}, "groups=0")],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttentionUniformization(**kwargs)


def test_invalid_inputs():
    with pytest.raises(ValueError, match=r"rank 4.*\(2, 8, 8\)"):
        AttentionUniformization()(rand((2, 8, 8)))
    with pytest.raises(ValueError, match="6 channels"):
        AttentionUniformization(mode="grouped", groups=4)(rand((2, 8, 8, 6)))
    with pytest.raises(ValueError, match="log_space=True"):
        AttentionUniformization(mode="channel")(rand((2, 8, 8, 6)),
                                                log_space=True)
    with pytest.raises(ValueError, match="static height"):
        AttentionUniformization().compute_output_shape((None, None, 8, 3))


# -- token_norm="map": one scale per map, magnitudes kept ----------------------
def np_uniformize_map(x, grid, temperature):
    x = np_pool(np.asarray(x, dtype="float64"), grid)
    b, gh, gw, c = x.shape
    x = x.reshape(b, gh * gw, c)
    out = []
    for e in range(b):
        scale = np.mean(np.sum(x[e] ** 2, axis=1))
        xn = x[e] / np.sqrt(scale)
        out.append(np_softmax(xn @ xn.T / temperature).reshape(-1))
    return np.stack(out)


def test_map_token_norm_golden_values():
    x = rand((2, 6, 6, 5), seed=21, positive=True)
    layer = AttentionUniformization(grid=3, temperature=0.5, token_norm="map")
    np.testing.assert_allclose(np.asarray(layer(x)),
                               np_uniformize_map(x, (3, 3), 0.5),
                               rtol=1e-4, atol=1e-6)


def test_map_token_norm_keeps_position_magnitude():
    x = rand((1, 4, 4, 6), seed=22, positive=True)
    louder = x.copy()
    louder[:, 0, 0, :] *= 5.0  # one position 5x stronger, same direction
    for norm, changes in (("position", False), ("map", True)):
        layer = AttentionUniformization(grid=4, temperature=0.5,
                                        token_norm=norm)
        a, b = np.asarray(layer(x)), np.asarray(layer(louder))
        assert (np.abs(a - b).max() > 1e-3) == changes, norm


def test_map_token_norm_invariances():
    x = rand((2, 4, 4, 6), seed=23)
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((6, 6)))
    layer = AttentionUniformization(grid=2, temperature=0.3, token_norm="map")
    ref = np.asarray(layer(x))
    np.testing.assert_allclose(np.asarray(layer(7.0 * x)), ref, rtol=1e-4,
                               atol=1e-6)
    rotated = (x.reshape(-1, 6) @ q).reshape(x.shape).astype("float32")
    np.testing.assert_allclose(np.asarray(layer(rotated)), ref, rtol=1e-4,
                               atol=1e-6)


def test_token_norm_validation_and_config():
    with pytest.raises(ValueError, match="token_norm=.unit."):
        AttentionUniformization(token_norm="unit")
    layer = AttentionUniformization(token_norm="map")
    assert layer.get_config()["token_norm"] == "map"
    clone = AttentionUniformization.from_config(layer.get_config())
    assert clone.token_norm == "map"
