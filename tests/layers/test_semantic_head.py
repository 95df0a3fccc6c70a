"""Tests of the SAKD semantic head."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_semkd.layers import SemanticHead
from tests.layers.grad_utils import value_and_grads


def np_head(x, weights, standardize=True):
    h = np.asarray(x, dtype="float64")
    if standardize:
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        h = (h - mean) / np.sqrt(var + 1e-6)
    pairs = list(zip(weights[::2], weights[1::2]))
    for i, (kernel, bias) in enumerate(pairs):
        h = h @ kernel + bias
        if i < len(pairs) - 1:
            h = np.maximum(h, 0.0)
    return h


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(
        "float32"
    )


def test_shapes_and_weights():
    head = SemanticHead(7, hidden_units=(16, 8))
    out = head(rand((3, 12)))
    assert tuple(out.shape) == (3, 7)
    assert [tuple(w.shape) for w in head.trainable_weights] == [
        (12, 16), (16,), (16, 8), (8,), (8, 7), (7,)
    ]
    assert head.compute_output_shape((None, 12)) == (None, 7)
    linear = SemanticHead(4, hidden_units=())
    linear(rand((2, 5)))
    assert len(linear.trainable_weights) == 2


@pytest.mark.parametrize("standardize", [True, False])
def test_golden_values(standardize):
    head = SemanticHead(3, hidden_units=(4,), standardize=standardize)
    x = rand((2, 5), seed=1)
    head.build((None, 5))
    weights = [rand(w.shape, seed=10 + i) for i, w in
               enumerate(head.get_weights())]
    head.set_weights(weights)
    np.testing.assert_allclose(np.asarray(head(x)), np_head(x, weights,
                                                            standardize),
                               rtol=1e-5, atol=1e-5)


def test_standardization_makes_head_scale_free():
    head = SemanticHead(3, hidden_units=(4,))
    x = rand((2, 6), seed=2)
    np.testing.assert_allclose(np.asarray(head(x)),
                               np.asarray(head(0.1 * x + 5.0)), rtol=1e-3,
                               atol=1e-3)


def test_detach_weights_keeps_input_gradient_and_blocks_weight_gradient():
    # Seeded, and wide enough that no draw leaves every ReLU dead on the
    # two inputs (with 4 unseeded units some test orders gave an all-zero
    # input gradient).
    keras.utils.set_random_seed(7)
    head = SemanticHead(3, hidden_units=(16,))
    x = rand((2, 5), seed=3)
    head.build((None, 5))
    values = [np.asarray(v) for v in head.trainable_variables]

    def run(detach):
        def fn(inputs, *weights):
            out, _ = head.stateless_call(list(weights), [], inputs,
                                         detach_weights=detach)
            return out
        return value_and_grads(fn, [x] + values)

    out_a, grads_a = run(False)
    out_b, grads_b = run(True)
    np.testing.assert_allclose(out_a, out_b, rtol=1e-6)
    np.testing.assert_allclose(grads_a[0], grads_b[0], rtol=1e-5, atol=1e-7)
    assert np.abs(grads_a[0]).max() > 0
    assert all(np.abs(g).max() > 0 for g in grads_a[1:])
    assert all(np.abs(g).max() == 0 for g in grads_b[1:])


def test_low_precision_input_gives_float32():
    head = SemanticHead(3)
    out = head(ops.cast(ops.convert_to_tensor(rand((2, 5))), "bfloat16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert np.all(np.isfinite(np.asarray(out)))


def test_get_config_round_trip():
    head = SemanticHead(5, hidden_units=(8,), activation="gelu",
                        standardize=False, name="h")
    config = head.get_config()
    assert config["num_classes"] == 5
    assert config["hidden_units"] == [8]
    assert config["standardize"] is False
    clone = SemanticHead.from_config(config)
    assert clone.get_config() == config


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((6,))
    model = keras.Model(inputs, SemanticHead(4, hidden_units=(5,))(inputs))
    path = os.path.join(tmp_path, "head.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = rand((3, 6), seed=4)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)),
                               atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"num_classes": 0}, "num_classes=0"),
     ({"num_classes": 2.5}, "num_classes=2.5"),
     ({"num_classes": 3, "hidden_units": (4, 0)}, r"hidden_units=\(4, 0\)")],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SemanticHead(**kwargs)


def test_invalid_input_shape():
    with pytest.raises(ValueError, match=r"\(batch, features\)"):
        SemanticHead(3).build((None, 4, 4))
