"""The zoo's BatchNormalization: TF's fused kernel with Keras' semantics."""

import keras
import numpy as np
import pytest

from keras_semkd import models
from keras_semkd.models.batch_norm import BatchNormalization


def _pair(shape, **kwargs):
    ours = BatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                          **kwargs)
    ours.build(shape)
    ref.build(shape)
    rng = np.random.default_rng(1)
    for a, b in zip(ours.weights, ref.weights):
        value = rng.uniform(0.5, 1.5, a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ours, ref


def _grads(layer, x):
    """Output, d(loss)/d(input) and d(loss)/d(weights) of a nonlinear loss
    in training mode, on the active backend."""
    x = keras.ops.convert_to_tensor(x)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.sin(y))
        gx, *gw = tape.gradient(loss, [x] + layer.trainable_weights)
        return y, gx, gw
    return layer(x, training=True), None, None


@pytest.mark.parametrize("shape", [(8, 6, 6, 5), (3, 4, 4, 16)])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True),
                                          (True, False)])
def test_matches_keras_batch_norm(shape, center, scale):
    ours, ref = _pair(shape, center=center, scale=scale)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 1).astype("float32")
    y1, gx1, gw1 = _grads(ours, x)
    y2, gx2, gw2 = _grads(ref, x)
    np.testing.assert_allclose(y1, y2, atol=2e-5)
    # Moving statistics: Keras' biased variance, Keras' momentum.
    for a, b in zip(ours.non_trainable_weights, ref.non_trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-6)
    if gx1 is not None:
        np.testing.assert_allclose(gx1, gx2, atol=1e-4)
        for a, b in zip(gw1, gw2):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ours(x, training=False),
                               ref(x, training=False), atol=2e-5)


def test_moving_variance_is_the_biased_batch_variance():
    layer = BatchNormalization(momentum=0.0)  # moving = last batch
    x = np.random.default_rng(2).standard_normal((4, 3, 3, 2)) \
        .astype("float32")
    layer(x, training=True)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               x.reshape(-1, 2).var(axis=0, ddof=0),
                               rtol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(),
                               x.reshape(-1, 2).mean(axis=0), atol=1e-6)


def test_frozen_layer_uses_moving_statistics():
    ours, ref = _pair((2, 4, 4, 3))
    ours.trainable = ref.trainable = False
    x = np.random.default_rng(3).standard_normal((2, 4, 4, 3)) \
        .astype("float32")
    np.testing.assert_allclose(ours(x, training=True),
                               ref(x, training=True), atol=2e-5)


def test_mixed_bfloat16_output_dtype_and_values():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        ours = BatchNormalization()
        ref = keras.layers.BatchNormalization()
        x = np.random.default_rng(4).standard_normal((4, 4, 4, 8)) \
            .astype("float32")
        y1, y2 = ours(x, training=True), ref(x, training=True)
        assert keras.backend.standardize_dtype(y1.dtype) == "bfloat16"
        assert ours.moving_mean.dtype == "float32"
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(keras.ops.cast(y1, "float32")),
            keras.ops.convert_to_numpy(keras.ops.cast(y2, "float32")),
            atol=0.05)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_falls_back_to_keras_for_other_ranks_and_masks():
    layer = BatchNormalization()
    x = np.random.default_rng(5).standard_normal((6, 5)).astype("float32")
    assert not layer._can_fuse(keras.ops.convert_to_tensor(x), None)
    ref = keras.layers.BatchNormalization()
    np.testing.assert_allclose(layer(x, training=True),
                               ref(x, training=True), atol=1e-5)
    x4 = np.zeros((1, 2, 2, 3), "float32")
    assert not BatchNormalization(fused=False)._can_fuse(
        keras.ops.convert_to_tensor(x4), None)
    fuses = BatchNormalization()._can_fuse(keras.ops.convert_to_tensor(x4),
                                           None)
    assert fuses == (keras.backend.backend() == "tensorflow")


def test_config_round_trip_and_weight_files_interchange(tmp_path):
    layer = BatchNormalization(fused=False, momentum=0.8, epsilon=1e-4)
    # Keras' own config: `fused` is an execution choice, not saved.
    assert layer.get_config() == keras.layers.BatchNormalization(
        momentum=0.8, epsilon=1e-4, name=layer.name).get_config()
    clone = BatchNormalization.from_config(layer.get_config())
    assert (clone.fused, clone.momentum, clone.epsilon) == (True, 0.8, 1e-4)
    # Configs saved before `fused` left the config still load.
    old = BatchNormalization.from_config(dict(layer.get_config(),
                                              fused=False))
    assert old.fused is False

    def net(bn_class):
        inputs = keras.Input((4, 4, 3))
        h = keras.layers.Conv2D(5, 3, padding="same", name="conv")(inputs)
        return keras.Model(inputs, bn_class(name="bn")(h))

    src, dst = net(keras.layers.BatchNormalization), net(BatchNormalization)
    rng = np.random.default_rng(6)
    for w in src.weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    src.save_weights(str(tmp_path / "plain.weights.h5"))
    dst.load_weights(str(tmp_path / "plain.weights.h5"))
    x = rng.standard_normal((2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(dst(x, training=False),
                               src(x, training=False), atol=2e-5)


def test_zoo_models_use_it_and_round_trip(tmp_path):
    model = models.get("resnet8", num_classes=10)
    bns = [l for l in model.layers
           if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(isinstance(l, BatchNormalization) for l in bns)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(7).standard_normal((2, 32, 32, 3)) \
        .astype("float32")
    np.testing.assert_allclose(loaded(x)["logits"], model(x)["logits"],
                               atol=1e-5)


def test_saves_as_keras_batch_norm():
    config = keras.saving.serialize_keras_object(BatchNormalization())
    assert config["module"] == "keras.layers"
    assert config["class_name"] == "BatchNormalization"
    assert config["registered_name"] is None
    # Only serialization is redirected: Keras' name still means Keras' class.
    plain = keras.saving.deserialize_keras_object(config)
    assert type(plain) is keras.layers.BatchNormalization


def test_zoo_model_file_loads_in_plain_keras(tmp_path):
    """A saved zoo model loads in a process that never imports keras_semkd
    (it used to fail: "Could not locate class 'BatchNormalization'")."""
    import subprocess
    import sys

    model = models.get("resnet8", num_classes=10)
    x = np.random.default_rng(8).standard_normal((2, 32, 32, 3)) \
        .astype("float32")
    path = tmp_path / "resnet8.keras"
    model.save(str(path))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy",
            keras.ops.convert_to_numpy(model(x)["logits"]))
    code = f"""
import sys
import keras
import numpy as np
m = keras.saving.load_model({str(path)!r})
assert not any(k.startswith("keras_semkd") for k in sys.modules), "imported"
x = np.load({str(tmp_path / "x.npy")!r})
got = keras.ops.convert_to_numpy(m(x)["logits"])
np.testing.assert_allclose(got, np.load({str(tmp_path / "want.npy")!r}),
                           atol=1e-5)
bns = [l for l in m.layers if isinstance(l, keras.layers.BatchNormalization)]
assert bns and all(type(l) is keras.layers.BatchNormalization for l in bns)
print("ok", type(bns[0]).__module__)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=300, cwd=str(tmp_path),
                          env=_env_without_project())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok keras." in proc.stdout


def _env_without_project():
    """The environment of a fresh process that cannot import keras_semkd
    from the source tree (the editable install still could: the test
    checks `sys.modules` instead)."""
    import os

    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env
