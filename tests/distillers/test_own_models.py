"""Your own Keras models as teacher and student: keras.applications
teachers, functional, Sequential and subclassed students, features by
layer name or "auto", logits read before a softmax, one forward pass, and
trained students that load in plain Keras."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_semkd import models as zoo
from keras_semkd.distillers import Distiller
from keras_semkd.distillers import layer_paths
from keras_semkd.distillers import tapped_view

BACKEND = keras.backend.backend()
# The backend-specific part (the Distiller's JAX step) is covered by the
# functional and subclassed cases; JAX repeats of the slower cases (model
# building and XLA compiles in JAX's eager mode) run with `-m slow`.
SLOW_ON_JAX = [pytest.mark.slow] if BACKEND == "jax" else []


def slow_on_jax(test):
    return pytest.mark.slow(test) if BACKEND == "jax" else test
SHAPE = (32, 32, 3)
CLASSES = 5
MOBILENET_STAGES = ["block_1_expand_relu", "block_3_expand_relu",
                    "block_6_expand_relu", "block_13_expand_relu",
                    "out_relu"]
RESNET50_STAGES = ["conv1_relu", "conv2_block3_out", "conv3_block4_out",
                   "conv4_block6_out", "conv5_block3_out"]
# Every method the issue names, with one Distiller: one compile per pair.
ALL_TERMS = [
    {"name": "kd", "weight": 0.9},
    {"name": "fitnet", "weight": 1.0},
    {"name": "at", "weight": 100.0},
    {"name": "crd", "weight": 0.5, "num_data": 16, "nce_k": 8,
     "feat_dim": 16},
    {"name": "sakd", "weight": 1.0, "prefit_steps": 2},
]


# -- models -----------------------------------------------------------------
@pytest.fixture(scope="module")
def mobilenet():
    """keras.applications' MobileNetV2 as it comes: softmax head."""
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        input_shape=SHAPE, alpha=0.35, weights=None, classes=CLASSES)


def functional_student(seed=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            name="c1")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same",
                            activation="relu", name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same",
                            activation="relu", name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, name="fc")(x),
                       name="own_cnn")


def sequential_student(seed=2):
    """Unbuilt (no Input): the Distiller builds it at the teacher's
    shape."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES),
    ], name="own_sequential")


@keras.saving.register_keras_serializable(package="tests")
class SubclassedStudent(keras.Model):
    """A subclassed CNN; with `named=True` its call returns a dict of
    named outputs (logits and stage maps)."""

    def __init__(self, named=False, **kwargs):
        super().__init__(**kwargs)
        self.named = named
        self.c1 = keras.layers.Conv2D(8, 3, padding="same",
                                      activation="relu")
        self.c2 = keras.layers.Conv2D(16, 3, strides=2, padding="same",
                                      activation="relu")
        self.c3 = keras.layers.Conv2D(32, 3, strides=2, padding="same",
                                      activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.fc = keras.layers.Dense(CLASSES)

    def call(self, x):
        s1 = self.c1(x)
        s2 = self.c2(s1)
        s3 = self.c3(s2)
        emb = self.pool(s3)
        logits = self.fc(emb)
        if self.named:
            return {"logits": logits, "stage1": s1, "stage2": s2,
                    "stage3": s3, "embedding": emb}
        return logits

    def get_config(self):
        return {**super().get_config(), "named": self.named}


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n,) + SHAPE).astype("float32")
    y = (np.arange(n) % CLASSES).astype("int32")
    return x, y


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _fit_one_epoch(distiller, with_index=False, n=16):
    x, y = _data(n)
    target = {"label": y, "index": np.arange(n, dtype="int32")} \
        if with_index else y
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    before = [_np(w).copy() for w in distiller.student.trainable_weights]
    t_before = [_np(w).copy() for w in distiller.teacher.weights]
    history = distiller.fit(x, target, batch_size=8, epochs=1, verbose=0)
    logs = {k: v[-1] for k, v in history.history.items()}
    for key, value in logs.items():
        assert np.isfinite(value), (key, value)
    changed = [not np.allclose(a, _np(w))
               for a, w in zip(before, distiller.student.trainable_weights)]
    assert any(changed), "the student did not train"
    for a, w in zip(t_before, distiller.teacher.weights):
        np.testing.assert_array_equal(a, _np(w))
    return logs


# -- item 2: automatic taps ------------------------------------------------
def test_auto_picks_the_stage_boundaries_of_keras_applications(mobilenet):
    view = tapped_view(mobilenet, "auto", role="teacher")
    pool = mobilenet.layers[-2]  # its name depends on what was built before
    assert isinstance(pool, keras.layers.GlobalAveragePooling2D)
    assert view.features == {
        **{f"stage{i}": n for i, n in enumerate(MOBILENET_STAGES, 1)},
        "embedding": pool.name}
    shapes = view.output_shapes
    assert [shapes[f"stage{i}"][1] for i in range(1, 6)] == [16, 8, 4, 2, 1]
    assert shapes["embedding"] == (None, 1280)
    assert shapes["logits"] == (None, CLASSES)


@pytest.mark.skipif(BACKEND == "jax", reason="ResNet50 builds slowly in "
                    "JAX's eager mode; the taps are backend-free")
def test_auto_on_resnet50_and_the_issue_example_layer():
    model = keras.applications.ResNet50(input_shape=SHAPE, weights=None,
                                        classes=CLASSES)
    view = tapped_view(model, "auto", role="teacher")
    assert [view.features[f"stage{i}"] for i in range(1, 6)] == \
        RESNET50_STAGES
    assert view.features["embedding"] == "avg_pool"
    # The issue's MobileNetV2 example: block_6_expand_relu is the last layer
    # at 28x28 of a 224x224 MobileNetV2, a stage boundary.
    big = keras.applications.MobileNetV2(input_shape=(224, 224, 3),
                                         alpha=0.35, weights=None)
    stages = tapped_view(big, "auto", role="teacher").features
    assert stages["stage3"] == "block_6_expand_relu"


def test_auto_on_own_students():
    view = tapped_view(functional_student(), "auto", role="student")
    assert view.features == {"stage1": "c1", "stage2": "bn2",
                             "stage3": "c3", "embedding": "pool"}
    seq = sequential_student()
    view = tapped_view(seq, "auto", role="student", input_shape=SHAPE)
    assert [view.output_shapes[f"stage{i}"][1:3] for i in (1, 2, 3)] == \
        [(32, 32), (16, 16), (8, 8)]
    assert seq.built  # built as a model, so it saves and reloads


def test_auto_skips_squeeze_excitation_padding_and_preprocessing():
    inputs = keras.Input(SHAPE)
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(8, 3, strides=2, name="stem")(x)
    squeeze = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    squeeze = keras.layers.Conv2D(8, 1, activation="sigmoid",
                                  name="excite")(squeeze)
    x = keras.layers.Multiply(name="se_out")([x, squeeze])
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same",
                            name="down")(x)
    head = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    head = keras.layers.Conv2D(CLASSES, 1, name="head")(head)
    logits = keras.layers.Flatten(name="flat")(head)
    model = keras.Model(inputs, logits)
    view = tapped_view(model, "auto", role="teacher")
    assert view.features == {"stage1": "se_out", "stage2": "down"}


def test_auto_without_feature_maps_says_what_to_do():
    inputs = keras.Input((12,))
    mlp = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match="no convolutional stages.*Name"):
        tapped_view(mlp, "auto", role="teacher")


# -- item 1: features by layer name, nested layers --------------------------
def test_nested_backbone_layers_by_name_and_path():
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(
        input_shape=SHAPE, alpha=0.35, weights=None, include_top=False)
    model = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(CLASSES)])
    paths = layer_paths(model)
    assert f"{backbone.name}/block_6_expand_relu" in paths
    view = tapped_view(model, {
        "s2": "block_6_expand_relu",
        "s3": f"{backbone.name}/block_13_expand_relu"}, role="teacher")
    assert view.features == {
        "s2": f"{backbone.name}/block_6_expand_relu",
        "s3": f"{backbone.name}/block_13_expand_relu"}
    x, _ = _data(2)
    out = view.model(x)
    np.testing.assert_allclose(_np(out["logits"]), _np(model(x)), atol=1e-5)
    probe = keras.Model(backbone.input,
                        backbone.get_layer("block_6_expand_relu").output)
    np.testing.assert_allclose(_np(out["s2"]), _np(probe(x)), atol=1e-5)


def test_bad_layer_names_are_reported_before_training(mobilenet):
    with pytest.raises(ValueError, match="no layer 'block_6_expand_rel'.*"
                                         "block_6_expand_relu"):
        Distiller(mobilenet, functional_student(), {"kd": 1.0},
                  features={"teacher": {"s": "block_6_expand_rel"}})
    with pytest.raises(ValueError, match="keys 'teacher' and 'student'"):
        Distiller(mobilenet, functional_student(), {"kd": 1.0},
                  features={"techer": "auto"})
    with pytest.raises(ValueError, match="None, 'auto' or a dict"):
        Distiller(mobilenet, functional_student(), {"kd": 1.0},
                  features={"teacher": ["c1"]})
    inputs = keras.Input(SHAPE)
    conv = keras.layers.Conv2D(3, 3, padding="same", name="shared")
    x = conv(conv(inputs))
    twice = keras.Model(inputs, keras.layers.Dense(CLASSES)(
        keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match="called 2 times"):
        tapped_view(twice, {"s": "shared"}, role="student")
    # An ambiguous name (two nested models with the same layer names).
    a = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(
        3, 3, padding="same", name="conv")], name="a")
    b = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(
        3, 3, padding="same", name="conv")], name="b")
    both = keras.Sequential([a, b, keras.layers.Flatten(),
                             keras.layers.Dense(CLASSES)])
    with pytest.raises(ValueError, match=r"ambiguous.*\['a/conv', 'b/conv'\]"):
        tapped_view(both, {"s": "conv"}, role="student")
    assert tapped_view(both, {"s": "b/conv"},
                       role="student").features == {"s": "b/conv"}


# -- item 3: logits, not probabilities ---------------------------------------
def test_softmax_head_of_keras_applications_is_read_before_the_softmax(
        mobilenet):
    view = tapped_view(mobilenet, None, role="teacher")
    assert "without its softmax" in view.logits
    x, _ = _data(4)
    logits = _np(view.model(x)["logits"])
    probs = _np(mobilenet(x))
    np.testing.assert_allclose(_np(keras.ops.softmax(logits)), probs,
                               atol=1e-6)
    assert not np.allclose(logits.sum(-1), 1.0)
    # The model itself is unchanged: still probabilities.
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("head", ["activation", "softmax_layer"])
def test_separate_softmax_layers_are_skipped(head):
    inputs = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3)(inputs))
    scores = keras.layers.Dense(CLASSES, name="scores")(x)
    probs = (keras.layers.Activation("softmax")(scores)
             if head == "activation" else keras.layers.Softmax()(scores))
    model = keras.Model(inputs, probs)
    view = tapped_view(model, None, role="teacher")
    x, _ = _data(3)
    want = keras.Model(inputs, scores)(x)
    np.testing.assert_allclose(_np(view.model(x)["logits"]), _np(want),
                               atol=1e-6)


@keras.saving.register_keras_serializable(package="tests")
class HiddenSoftmax(keras.layers.Layer):
    """A custom head that applies a softmax inside."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units)

    def call(self, x):
        return keras.ops.softmax(self.dense(x))


class SoftmaxSubclassed(SubclassedStudent):
    def call(self, x):
        return keras.ops.softmax(super().call(x))


def test_probabilities_without_a_visible_softmax_are_refused():
    inputs = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3)(inputs))
    custom = keras.Model(inputs, HiddenSoftmax(CLASSES)(x))
    for teacher in (custom, SoftmaxSubclassed()):
        with pytest.raises(ValueError, match="outputs probabilities"):
            Distiller(teacher, functional_student(), {"kd": 1.0},
                      input_shape=SHAPE)


def test_logits_layer_can_be_named():
    inputs = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(
        keras.layers.Conv2D(4, 3)(inputs))
    scores = keras.layers.Dense(CLASSES, name="scores")(x)
    probs = keras.layers.Lambda(keras.ops.softmax, name="lambda_softmax")(
        scores)
    model = keras.Model(inputs, probs)
    with pytest.raises(ValueError, match="outputs probabilities"):
        tapped_view(model, None, role="teacher")
    view = tapped_view(model, {"logits": "scores"}, role="teacher")
    assert view.features == {"logits": "scores"}
    x, _ = _data(2)
    np.testing.assert_allclose(
        _np(keras.ops.softmax(view.model(x)["logits"])), _np(model(x)),
        atol=1e-6)


# -- item 1 / 4: every student kind, every method ----------------------------
@pytest.mark.parametrize("make_student", [
    functional_student,
    pytest.param(sequential_student, marks=SLOW_ON_JAX)],
    ids=["functional", "sequential"])
def test_keras_applications_teacher_every_method(mobilenet, make_student):
    distiller = Distiller(mobilenet, make_student(), ALL_TERMS,
                          student_loss_weight=0.1, features="auto")
    assert distiller.features["teacher"]["stage3"] == "block_6_expand_relu"
    assert set(distiller.features["student"]) == {
        "stage1", "stage2", "stage3", "embedding"}
    logs = _fit_one_epoch(distiller, with_index=True)
    for name in ("kd", "fitnet", "at", "crd", "sakd"):
        assert logs[f"distill/{name}"] > 0, name
    assert distiller.get_config()["features"] == distiller.features


def test_subclassed_student_logits_only_and_with_its_own_outputs(mobilenet):
    # No layer graph: asking for taps says what to do ...
    with pytest.raises(ValueError, match=r"subclassed keras.Model.*return a "
                                         r"dict from call\(\).*functional "
                                         r"API.*logits only"):
        Distiller(mobilenet, SubclassedStudent(), {"kd": 1.0},
                  features="auto")
    # ... logits-only distillation works as is ...
    distiller = Distiller(mobilenet, SubclassedStudent(), {"kd": 0.9},
                          student_loss_weight=0.1)
    assert distiller.features == {"teacher": None, "student": None}
    _fit_one_epoch(distiller)
    # ... and a subclassed model that returns named outputs gets feature
    # terms on them (teacher tapped automatically).
    distiller = Distiller(
        mobilenet, SubclassedStudent(named=True),
        [{"name": "kd", "weight": 0.9}, {"name": "at", "weight": 100.0},
         {"name": "fitnet", "weight": 1.0},
         {"name": "sakd", "weight": 1.0, "prefit_steps": 2}],
        student_loss_weight=0.1,
        features={"teacher": "auto", "student": None})
    logs = _fit_one_epoch(distiller)
    assert logs["distill/at"] > 0 and logs["distill/sakd"] > 0


def test_selectors_pair_auto_stages_from_the_first(mobilenet):
    distiller = Distiller(
        mobilenet, functional_student(),
        [{"name": "at", "weight": 1.0, "teacher_keys": "@stages"}],
        features="auto")
    term = distiller.distillation_terms[0]
    assert term.teacher_keys == ("stage1", "stage2", "stage3")
    assert term.student_keys == ("stage1", "stage2", "stage3")


@pytest.mark.skipif(BACKEND == "jax", reason="ResNet50 builds slowly in "
                    "JAX's eager mode; MobileNetV2 covers JAX")
def test_resnet50_teacher_into_own_student():
    keras.utils.set_random_seed(0)
    teacher = keras.applications.ResNet50(input_shape=SHAPE, weights=None,
                                          classes=CLASSES)
    distiller = Distiller(
        teacher, functional_student(),
        [{"name": "kd", "weight": 0.9}, {"name": "fitnet", "weight": 1.0},
         {"name": "at", "weight": 100.0}],
        student_loss_weight=0.1, features="auto")
    logs = _fit_one_epoch(distiller)
    assert logs["distill/fitnet"] > 0 and logs["distill/at"] > 0


# -- one forward pass ---------------------------------------------------------
class CallCounter(keras.layers.Layer):
    """Counts its calls in training in a non-trainable variable."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros",
                                     trainable=False, name="calls")

    def call(self, x, training=False):
        if training:
            self.calls.assign(self.calls + 1.0)
        return x


def test_student_runs_once_per_step_with_features():
    keras.utils.set_random_seed(3)
    inputs = keras.Input(SHAPE)
    counter = CallCounter(name="counter")
    x = counter(inputs)
    s1 = keras.layers.Conv2D(8, 3, padding="same", name="s1")(x)
    s2 = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="s2")(s1)
    logits = keras.layers.Dense(CLASSES)(
        keras.layers.GlobalAveragePooling2D()(s2))
    student = keras.Model(inputs, logits)
    teacher = functional_student(seed=4)
    distiller = Distiller(
        teacher, student,
        [{"name": "kd", "weight": 1.0},
         {"name": "at", "weight": 1.0, "teacher_keys": ["stage1", "stage2"],
          "student_keys": ["a", "b"]}],
        features={"teacher": "auto", "student": {"a": "s1", "b": "s2"}})
    x, y = _data(8)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    if BACKEND == "jax" and hasattr(distiller, "jax_state_sync"):
        distiller.jax_state_sync()
    assert float(_np(counter.calls)) == 1.0


# -- saving ---------------------------------------------------------------------
@slow_on_jax
def test_distiller_config_and_file_keep_the_taps(mobilenet, tmp_path):
    distiller = Distiller(mobilenet, functional_student(),
                          [{"name": "kd", "weight": 0.9},
                           {"name": "at", "weight": 10.0}],
                          student_loss_weight=0.1, features="auto")
    _fit_one_epoch(distiller)
    clone = Distiller.from_config(distiller.get_config())
    assert clone.features == distiller.features
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.features == distiller.features
    x, _ = _data(4)
    for key in ("logits", "stage2"):
        np.testing.assert_allclose(
            _np(loaded.student_view(x)[key]),
            _np(distiller.student_view(x)[key]), atol=1e-5)
        np.testing.assert_allclose(
            _np(loaded.teacher_view(x)[key]),
            _np(distiller.teacher_view(x)[key]), atol=1e-5)


@slow_on_jax
def test_trained_students_load_in_plain_keras(mobilenet, tmp_path):
    """Functional, Sequential and zoo students distilled from a
    keras.applications teacher, saved, then loaded in a fresh process that
    never imports keras_semkd (no custom objects needed)."""
    students = {"functional": functional_student(),
                "sequential": sequential_student(),
                "zoo": zoo.get("resnet8", num_classes=CLASSES)}
    x, _ = _data(3)
    np.save(tmp_path / "x.npy", x)
    for kind, student in students.items():
        features = {"teacher": "auto",
                    "student": None if kind == "zoo" else "auto"}
        distiller = Distiller(mobilenet, student,
                              [{"name": "kd", "weight": 0.9},
                               {"name": "at", "weight": 10.0}],
                              student_loss_weight=0.1, features=features)
        _fit_one_epoch(distiller)
        distiller.student.save(str(tmp_path / f"{kind}.keras"))
        out = distiller.student(x)
        np.save(tmp_path / f"{kind}.npy",
                _np(out["logits"] if kind == "zoo" else out))
    code = f"""
import sys
import keras
import numpy as np
x = np.load("x.npy")
for kind in {sorted(students)!r}:
    model = keras.saving.load_model(kind + ".keras")
    out = model(x)
    out = out["logits"] if kind == "zoo" else out
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out),
                               np.load(kind + ".npy"), atol=1e-5)
    print("loaded", kind, type(model).__name__)
assert not any(m.startswith("keras_semkd") for m in sys.modules)
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=300, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("loaded") == 3, proc.stdout


# -- keras-hub -----------------------------------------------------------------
@slow_on_jax
def test_keras_hub_image_classifier_teacher():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=SHAPE)
    teacher = keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=CLASSES, activation="softmax")
    distiller = Distiller(
        teacher, functional_student(),
        [{"name": "kd", "weight": 0.9}, {"name": "at", "weight": 100.0},
         {"name": "fitnet", "weight": 1.0}],
        student_loss_weight=0.1, features="auto")
    name = backbone.name
    assert distiller.features["teacher"] == {
        "stage1": f"{name}/conv1_relu", "stage2": f"{name}/stack0_block0_out",
        "stage3": f"{name}/stack1_block0_out", "embedding": "pooler"}
    assert "without its softmax" in distiller._views["teacher"].logits
    logs = _fit_one_epoch(distiller)
    assert logs["distill/at"] > 0


def test_softmax_head_inside_a_nested_classifier(mobilenet):
    """A whole keras.applications classifier nested in a Sequential: the
    logits come from inside the nested model, before its softmax."""
    wrapper = keras.Sequential([keras.Input(SHAPE), mobilenet],
                               name="wrapper")
    view = tapped_view(wrapper, {"s3": "block_6_expand_relu"},
                       role="teacher")
    assert "without its softmax" in view.logits
    x, _ = _data(2)
    out = view.model(x)
    np.testing.assert_allclose(_np(keras.ops.softmax(out["logits"])),
                               _np(mobilenet(x)), atol=1e-6)
    assert out["s3"].shape[1:] == (4, 4, 96)


def test_chosen_layers_are_logged(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="absl")
    view = tapped_view(functional_student(), "auto", role="student")
    assert "student own_cnn taps: stage1 <- c1 (32, 32, 8)" in caplog.text
    assert all(path in caplog.text for path in view.features.values())
