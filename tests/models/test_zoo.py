"""Tests of the CIFAR model zoo: names, sizes, outputs, errors, save/load.

Expected parameter counts and feature shapes are RepDistiller's
(`HobbitLong/RepDistiller/models`, num_classes=100, 32x32 inputs).
Models are built once per test session and shared between tests.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_semkd import models
from keras_semkd.models import base

PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "ResNet50": 23_705_252,
}
NAMES = list(PARAMS)


def _stages(stem, stages, embedding, preact=True):
    """Expected {key: per-example shape} for a 32x32 input."""
    shapes = {"stem": stem}
    for i, shape in enumerate(stages, start=1):
        shapes[f"stage{i}"] = shape
        if preact:
            shapes[f"stage{i}_preact"] = shape
    shapes["embedding"] = (embedding,)
    shapes["logits"] = (100,)
    return shapes


def _resnet(w):
    return _stages((32, 32, w[0]), [(32, 32, w[1]), (16, 16, w[2]),
                                    (8, 8, w[3])], w[3])


def _wrn(k):
    return _stages((32, 32, 16), [(32, 32, 16 * k), (16, 16, 32 * k),
                                  (8, 8, 64 * k)], 64 * k)


_VGG = _stages((32, 32, 64), [(16, 16, 128), (8, 8, 256), (4, 4, 512),
                              (4, 4, 512)], 512)

SHAPES = {
    **{n: _resnet((16, 16, 32, 64)) for n in NAMES if n.startswith("resnet")
       and not n.endswith("x4")},
    "resnet8x4": _resnet((32, 64, 128, 256)),
    "resnet32x4": _resnet((32, 64, 128, 256)),
    "wrn_16_1": _wrn(1),
    "wrn_16_2": _wrn(2),
    "wrn_40_1": _wrn(1),
    "wrn_40_2": _wrn(2),
    **{n: _VGG for n in NAMES if n.startswith("vgg")},
    "MobileNetV2": _stages((16, 16, 16), [(16, 16, 12), (8, 8, 16),
                                          (4, 4, 48), (2, 2, 160)], 1280,
                           preact=False),
    "ShuffleV1": _stages((32, 32, 24), [(16, 16, 240), (8, 8, 480),
                                        (4, 4, 960)], 960),
    "ShuffleV2": _stages((32, 32, 24), [(16, 16, 116), (8, 8, 232),
                                        (4, 4, 464)], 1024),
    "ResNet50": _stages((32, 32, 64), [(32, 32, 256), (16, 16, 512),
                                       (8, 8, 1024), (4, 4, 2048)], 2048),
}

# One model per family for the default save/load suite.
REPRESENTATIVE = ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1",
                  "ShuffleV2"]

_CACHE = {}


def _model(name):
    if name not in _CACHE:
        keras.utils.set_random_seed(0)
        _CACHE[name] = models.get(name)
    return _CACHE[name]


def _images(batch=2, size=32, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((batch, size, size, channels), dtype=np.float32)


def _forward(model, x):
    """Inference-mode outputs as NumPy. JAX compiles op by op when called
    eagerly, so one jitted `predict_on_batch` is much faster there; the
    TensorFlow backend is fastest eagerly (no graph tracing)."""
    if keras.backend.backend() == "jax":
        out = model.predict_on_batch(x)
    else:
        out = model(x, training=False)
    return {k: ops.convert_to_numpy(v) for k, v in out.items()}


def _outputs(name):
    key = ("outputs", name)
    if key not in _CACHE:
        _CACHE[key] = _forward(_model(name), _images())
    return _CACHE[key]


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _CACHE.clear()
    keras.backend.clear_session()


def _count(model):
    return sum(math.prod(w.shape) for w in model.trainable_weights)


# -- registry -----------------------------------------------------------------
def test_names_are_repdistillers():
    assert sorted(models.names(), key=str.lower) == sorted(NAMES,
                                                           key=str.lower)
    assert len(models.MODELS) == 22


def test_lookup_is_case_insensitive():
    model = models.get("RESNET8", num_classes=10)
    assert model.name == "resnet8"
    assert model.output["logits"].shape == (None, 10)


def test_unknown_name_lists_known_models():
    with pytest.raises(KeyError) as info:
        models.get("resnet9000")
    message = str(info.value)
    for name in ("resnet8x4", "wrn_40_2", "MobileNetV2", "ShuffleV2",
                 "ResNet50"):
        assert name in message


# -- sizes and outputs --------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(name):
    model = _model(name)
    assert isinstance(model, keras.Model)
    assert model.name == name
    assert _count(model) == PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_output_keys_and_shapes(name):
    out = _outputs(name)
    expected = SHAPES[name]
    assert set(out) == set(expected)
    for key, shape in expected.items():
        assert out[key].shape == (2,) + shape, key
        assert np.all(np.isfinite(out[key])), key
    # The symbolic outputs agree with the computed ones.
    for key, tensor in _model(name).output.items():
        assert tuple(tensor.shape) == (None,) + expected[key], key


@pytest.mark.parametrize("name", NAMES)
def test_preact_is_stage_before_relu(name):
    """`stage{i}` is ReLU(`stage{i}_preact`) wherever RepDistiller's preact
    is the block's pre-ReLU sum (WRN's preact is a BN output instead)."""
    out = _outputs(name)
    keys = models.feature_keys(_model(name))
    if name == "MobileNetV2":
        assert not any(k.endswith("_preact") for k in out)
        return
    for key in keys:
        preact = out[f"{key}_preact"]
        if name.startswith("wrn"):
            # The next BN of the stage output; at init (moving mean 0,
            # variance 1, gamma 1, beta 0) it divides by sqrt(1 + eps).
            np.testing.assert_allclose(preact, out[key] / math.sqrt(1 + 1e-5),
                                       rtol=1e-6, atol=1e-6)
            continue
        expected = np.maximum(preact, 0.0)
        if name == "ShuffleV2":
            # RepDistiller returns the pre-shuffle concat as preact.
            expected = ops.convert_to_numpy(
                base.ChannelShuffle(2)(expected)
            )
        np.testing.assert_allclose(out[key], expected, rtol=1e-6, atol=1e-6)


def test_wrn_embedding_pools_relu_of_last_preact():
    out = _outputs("wrn_16_1")
    pooled = np.maximum(out["stage3_preact"], 0.0).mean(axis=(1, 2))
    np.testing.assert_allclose(out["embedding"], pooled, rtol=1e-5,
                               atol=1e-6)


# -- feature keys -------------------------------------------------------------
def test_feature_keys_order():
    resnet = _model("resnet8")
    assert models.feature_keys(resnet) == ["stage1", "stage2", "stage3"]
    assert models.feature_keys(resnet, preact=True) == [
        "stage1_preact", "stage2_preact", "stage3_preact"]
    assert models.feature_keys(resnet, include_stem=True) == [
        "stem", "stage1", "stage2", "stage3"]
    assert models.feature_keys(_model("vgg8"), preact=True) == [
        "stage1_preact", "stage2_preact", "stage3_preact", "stage4_preact"]
    # MobileNetV2 has no preact variant: RepDistiller returns the same maps.
    assert models.feature_keys(_model("MobileNetV2"), preact=True) == [
        "stage1", "stage2", "stage3", "stage4"]


@pytest.mark.parametrize("name", NAMES)
def test_feature_keys_mirror_repdistiller_feats(name):
    """stem + stages + embedding has the length of RepDistiller's `feats`,
    and stages go shallow to deep (non-increasing spatial size)."""
    model = _model(name)
    n_feats = {"vgg": 6, "Mob": 6, "Res": 6}.get(name[:3], 5)
    keys = models.feature_keys(model, include_stem=True) + ["embedding"]
    assert len(keys) == n_feats
    sizes = [model.output[k].shape[1] for k in keys[1:-1]]
    assert sizes == sorted(sizes, reverse=True)


def test_feature_keys_needs_dict_outputs():
    inputs = keras.Input((4, 4, 3))
    plain = keras.Model(inputs, keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="dict outputs"):
        models.feature_keys(plain)


# -- argument validation ------------------------------------------------------
@pytest.mark.parametrize("num_classes", [0, -3, 2.5, "10", True, None])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="Received: num_classes="):
        models.get("resnet8", num_classes=num_classes)


@pytest.mark.parametrize("input_shape", [
    (32, 32), (32, 32, 3, 1), (32, 32, 0), (None, 32, 3), (32.0, 32, 3),
    "32x32x3", 32,
])
def test_bad_input_shape(input_shape):
    with pytest.raises(ValueError, match="Received: input_shape="):
        models.get("resnet8", input_shape=input_shape)


@pytest.mark.parametrize("name, too_small", [
    ("resnet8", (3, 32, 3)), ("wrn_16_1", (32, 3, 3)), ("vgg8", (7, 7, 3)),
    ("MobileNetV2", (16, 15, 1)), ("ShuffleV1", (7, 8, 3)),
    ("ShuffleV2", (4, 4, 3)), ("ResNet50", (7, 7, 3)),
])
def test_input_too_small(name, too_small):
    with pytest.raises(ValueError) as info:
        models.get(name, input_shape=too_small)
    message = str(info.value)
    assert f"Received: input_shape={too_small}" in message
    assert "at least" in message


@pytest.mark.parametrize("name, smallest, last_stage", [
    ("resnet8", (4, 4, 1), (1, 1)), ("wrn_16_1", (4, 6, 3), (1, 2)),
    ("vgg8", (8, 9, 3), (1, 1)), ("MobileNetV2", (16, 16, 3), (1, 1)),
    ("ShuffleV1", (8, 8, 3), (1, 1)), ("ShuffleV2", (8, 9, 2), (1, 2)),
    ("ResNet50", (8, 8, 3), (1, 1)),
])
def test_smallest_input_builds(name, smallest, last_stage):
    model = models.get(name, num_classes=3, input_shape=smallest)
    last = models.feature_keys(model)[-1]
    assert tuple(model.output[last].shape[1:3]) == last_stage
    assert tuple(model.output["logits"].shape) == (None, 3)


def test_smallest_input_runs():
    model = models.get("resnet8", num_classes=3, input_shape=(4, 5, 1))
    out = _forward(model, _images(2, 4, 1)[:, :, :1].repeat(5, axis=2))
    assert out["stage3"].shape == (2, 1, 2, 64)
    assert out["logits"].shape == (2, 3)


def test_vgg_uses_fourth_pool_at_64():
    """RepDistiller's `if h == 64: x = self.pool3(x)`."""
    model = models.get("vgg8", input_shape=(64, 64, 3))
    assert tuple(model.output["stage3"].shape) == (None, 8, 8, 512)
    assert tuple(model.output["stage4"].shape) == (None, 4, 4, 512)


@pytest.mark.parametrize("weight_decay", [-1e-4, float("nan"), "5e-4", True])
def test_bad_weight_decay(weight_decay):
    with pytest.raises(ValueError, match="Received: weight_decay="):
        models.get("resnet8", weight_decay=weight_decay)


# -- weight decay and init ----------------------------------------------------
def test_weight_decay_matches_pytorch_sgd_on_every_weight():
    assert _model("resnet8").losses == []
    wd = 5e-4
    model = models.get("ShuffleV1", weight_decay=wd)
    weights = model.trainable_weights
    # One L2 term per trainable weight: kernels, biases, BN gamma and beta.
    assert len(model.losses) == len(weights)
    total = sum(float(ops.convert_to_numpy(loss)) for loss in model.losses)
    expected = 0.5 * wd * sum(
        float(np.sum(np.square(ops.convert_to_numpy(w)))) for w in weights
    )
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def _std(weight):
    return float(np.std(ops.convert_to_numpy(weight)))


def test_init_follows_repdistiller():
    vgg = _model("vgg8")
    for layer in vgg.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.momentum == 0.9 and layer.epsilon == 1e-5
    # He-normal fan_out: std sqrt(2 / (3 * 3 * 512)) for a 512->512 conv.
    kernel = vgg.get_layer("block4_conv0").kernel
    np.testing.assert_allclose(_std(kernel), math.sqrt(2 / (9 * 512)),
                               rtol=0.02)
    np.testing.assert_allclose(_std(vgg.get_layer("classifier").kernel),
                               0.01, rtol=0.05)
    # Depthwise convs: fan_out = k * k * channels as in PyTorch.
    dw = _model("MobileNetV2").get_layer("group6_block0_dw_conv")
    np.testing.assert_allclose(_std(dw.kernel), math.sqrt(2 / (9 * 480)),
                               rtol=0.1)
    # ShuffleNets keep PyTorch's default init: U(-1/sqrt(fan_in), ...).
    pw = ops.convert_to_numpy(
        _model("ShuffleV2").get_layer("stage3_block0_pw1").kernel
    )
    bound = 1 / math.sqrt(232)
    assert np.abs(pw).max() <= bound
    assert np.abs(pw).max() > 0.9 * bound
    # No conv bias except in VGG.
    resnet = _model("resnet8")
    assert all(not layer.use_bias for layer in resnet.layers
               if isinstance(layer, keras.layers.Conv2D))


# -- save / load --------------------------------------------------------------
def _check_round_trip(name, tmp_path, **kwargs):
    keras.utils.set_random_seed(1)
    model = models.get(name, **kwargs) if kwargs else _model(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.name == model.name
    assert models.feature_keys(loaded) == models.feature_keys(model)
    assert models.feature_keys(loaded, preact=True) == models.feature_keys(
        model, preact=True)
    expected = (_forward(model, _images()) if kwargs else _outputs(name))
    got = _forward(loaded, _images())
    assert set(got) == set(expected)
    for key in expected:
        # 1e-5: oneDNN may pick another float32 kernel for the reloaded
        # graph (seen on an AMX Xeon: 2e-6 apart); a wrong or missing
        # weight is off by orders of magnitude more.
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5,
                                   atol=1e-5, err_msg=key)
    assert len(loaded.losses) == len(model.losses)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_save_load_round_trip(name, tmp_path):
    _check_round_trip(name, tmp_path)


def test_save_load_keeps_weight_decay(tmp_path):
    _check_round_trip("resnet8", tmp_path, weight_decay=5e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES
                                  if n not in REPRESENTATIVE])
def test_save_load_round_trip_all(name, tmp_path):
    _check_round_trip(name, tmp_path)
