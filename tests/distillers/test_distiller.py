"""Tests of the Distiller: objective, logs, freezing, errors, saving,
backends and MirroredStrategy equivalence."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_semkd.distillers import Distiller
from keras_semkd.losses import kd_loss
from tests.tiny import tiny_batch
from tests.tiny import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
BACKEND = keras.backend.backend()


def _np_kd(t, s, temperature):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    t, s = np.float64(t), np.float64(s)
    lt, ls = log_softmax(t / temperature), log_softmax(s / temperature)
    return (np.exp(lt) * (lt - ls)).sum(-1) * temperature**2


def _np_ce(logits, y):
    logits = np.float64(logits)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(y)), y]


def test_kd_golden_value_by_hand():
    # T=1: p_t = (1/4, 3/4), p_s = (1/2, 1/2):
    # KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.1308120...
    t = np.array([[0.0, np.log(3.0)]], "float32")
    s = np.zeros((1, 2), "float32")
    got = keras.ops.convert_to_numpy(kd_loss(t, s, temperature=1.0))
    expected = 0.25 * np.log(0.5) + 0.75 * np.log(1.5)
    np.testing.assert_allclose(got, [expected], rtol=1e-6)
    np.testing.assert_allclose(got, [0.13081203], rtol=1e-6)
    # T=2 scales the logits by 1/2 and the KL by T^2 = 4.
    got2 = keras.ops.convert_to_numpy(kd_loss(2 * t, 2 * s, temperature=2.0))
    np.testing.assert_allclose(got2, 4 * got, rtol=1e-6)


def test_kd_matches_formula_on_random_logits():
    rng = np.random.default_rng(1)
    t = rng.standard_normal((6, 7)).astype("float32") * 3
    s = rng.standard_normal((6, 7)).astype("float32") * 3
    got = keras.ops.convert_to_numpy(kd_loss(t, s, temperature=4.0))
    np.testing.assert_allclose(got, _np_kd(t, s, 4.0), rtol=1e-5, atol=1e-7)
    same = keras.ops.convert_to_numpy(kd_loss(t, t, temperature=4.0))
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def _distiller(**kw):
    teacher = tiny_model("teacher", widths=(6, 12), seed=1)
    student = tiny_model("student", widths=(4, 8), seed=2)
    kw.setdefault("distillation_losses", {"kd": 0.9})
    kw.setdefault("student_loss_weight", 0.1)
    return Distiller(teacher, student, **kw)


def test_objective_equals_weighted_sum_computed_by_hand():
    d = _distiller()
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    x, y = tiny_batch(8)
    logs = d.test_on_batch(x, y, return_dict=True)
    t = keras.ops.convert_to_numpy(d.teacher(x, training=False)["logits"])
    s = keras.ops.convert_to_numpy(d.student(x, training=False)["logits"])
    ce = _np_ce(s, y).mean()
    kd = _np_kd(t, s, 4.0).mean()
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-4)
    np.testing.assert_allclose(logs["distill/kd"], kd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logs["loss"], 0.1 * ce + 0.9 * kd, rtol=1e-4)


def test_fit_logs_fixed_keys_trains_student_and_freezes_teacher():
    d = _distiller()
    d.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    x, y = tiny_batch(32)
    teacher_before = [np.array(w) for w in d.teacher.weights]
    student_before = [np.array(w) for w in d.student.trainable_weights]
    history = d.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert set(history.history) == {
        "loss", "student_loss", "distill/kd", "accuracy"
    }
    assert all(np.isfinite(v).all() for v in history.history.values())
    for before, w in zip(teacher_before, d.teacher.weights):
        np.testing.assert_array_equal(before, np.array(w))
    changed = [
        not np.allclose(b, np.array(w))
        for b, w in zip(student_before, d.student.trainable_weights)
    ]
    assert all(changed)
    # Only the student (and loss parts) are trainable.
    ids = {id(v) for v in d.teacher.weights}
    assert not any(id(v) in ids for v in d.trainable_variables)
    out = d(x)
    assert set(out) == set(d.student.output)


def test_term_declarations_are_equivalent():
    a = _distiller(distillation_losses={"kd": 0.5})
    b = _distiller(distillation_losses=[{"name": "kd", "weight": 0.5}])
    c = _distiller(distillation_losses=[("kd", 0.5)])
    for d in (a, b, c):
        assert [t.name for t in d.distillation_terms] == ["kd"]
        assert d.distillation_weights == [0.5]
    d = _distiller(distillation_losses=[
        {"name": "kd", "weight": 0.5, "temperature": 2.0}
    ])
    assert d.distillation_terms[0].temperature == 2.0


def test_config_and_keras_file_round_trip(tmp_path):
    d = _distiller(distillation_losses=[
        {"name": "kd", "weight": 0.7, "temperature": 3.0}
    ])
    d.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"])
    x, y = tiny_batch(16)
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    config = d.get_config()
    json.dumps(config)
    clone = Distiller.from_config(config)
    assert clone.distillation_weights == [0.7]
    assert clone.distillation_terms[0].temperature == 3.0
    path = str(tmp_path / "distiller.keras")
    d.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Distiller)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)["logits"]),
        keras.ops.convert_to_numpy(d(x)["logits"]),
        rtol=1e-6, atol=1e-6,
    )
    a = d.evaluate(x, y, verbose=0, return_dict=True)
    b = loaded.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)


# -- errors raised before training -----------------------------------------
def test_class_count_mismatch_is_reported():
    teacher = tiny_model("teacher", num_classes=10)
    student = tiny_model("student", num_classes=5)
    with pytest.raises(ValueError, match="10 classes.*5"):
        Distiller(teacher, student, {"kd": 1.0})


def test_unknown_loss_lists_known_names():
    with pytest.raises(KeyError, match="Known distillation loss names: .*kd"):
        _distiller(distillation_losses={"kdd": 1.0})


def test_missing_feature_tap_lists_available_outputs():
    with pytest.raises(ValueError, match="stage9.*Available teacher"):
        _distiller(distillation_losses=[
            {"name": "kd", "weight": 1.0, "teacher_keys": "stage9"}
        ])


def test_single_output_model_is_read_as_logits():
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(
        inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs))
    )
    d = Distiller(plain, tiny_model("s"), {"kd": 1.0})
    assert sorted(d.teacher_view.output) == ["logits"]
    x, _ = tiny_batch(4)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(d.teacher_view(x)["logits"]),
        keras.ops.convert_to_numpy(plain(x)), atol=1e-6)
    # Features it does not have are named in the error, with the way out.
    with pytest.raises(ValueError, match=r"stage1.*Available teacher "
                                         r"outputs: \['logits'\]"):
        Distiller(plain, tiny_model("s"), {"at": 1.0})


def test_input_shape_mismatch_between_models():
    teacher = tiny_model("teacher", spatial=16)
    student = tiny_model("student", spatial=8)
    with pytest.raises(ValueError, match="same input shape"):
        Distiller(teacher, student, {"kd": 1.0})


def test_wrong_image_shape_and_labels_fail_before_training():
    d = _distiller()
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = tiny_batch(8, spatial=16)
    with pytest.raises(ValueError, match=r"\(16, 16, 3\).*\(8, 8, 3\)"):
        d.fit(x, y, verbose=0)
    x, y = tiny_batch(8)
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 5\)"):
        d.fit(x, y + 5, verbose=0)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.data check")
def test_wrong_image_shape_in_tf_dataset():
    import tensorflow as tf

    d = _distiller()
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = tiny_batch(8, spatial=16)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    with pytest.raises(ValueError, match="images have shape"):
        d.fit(ds, verbose=0)


def test_bad_weight_and_temperature():
    with pytest.raises(ValueError, match="weight"):
        _distiller(distillation_losses=[{"name": "kd", "weight": "high"}])
    with pytest.raises(ValueError, match="temperature=0"):
        _distiller(distillation_losses=[
            {"name": "kd", "weight": 1.0, "temperature": 0}
        ])


# -- backends and distribution ---------------------------------------------
def _run(script, env_extra, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3",
               **env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


_MIRRORED = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from keras import layers
from keras_semkd.distillers import Distiller

def model(name, width, seed):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    h = layers.Conv2D(width, 3, padding="same", name=name + "_c")(inp)
    h = layers.BatchNormalization(synchronized=True, name=name + "_bn")(h)
    f = layers.ReLU()(h)
    emb = layers.GlobalAveragePooling2D()(f)
    return keras.Model(inp, {"stage1": f, "embedding": emb,
                             "logits": layers.Dense(5, name=name + "_fc")(emb)},
                       name=name)

def run(replicas, terms):
    devices = ["/cpu:0", "/cpu:1"][:replicas]
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        t, s = model("t", 6, 1), model("s", 4, 2)
        d = Distiller(t, s, terms, student_loss_weight=0.1)
        d.compile(optimizer=keras.optimizers.SGD(0.5))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, 16).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    h = d.fit(ds, epochs=2, verbose=0, shuffle=False)
    return h.history["loss"], [np.array(w) for w in s.trainable_weights]

terms = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"kd": 0.9}
l1, w1 = run(1, TERMS)
l2, w2 = run(2, TERMS)
np.testing.assert_allclose(l1, l2, rtol=1e-5)
for a, b in zip(w1, w2):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("OK", l1, l2)
"""


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute only")
@pytest.mark.parametrize("terms", [{"kd": 0.9}])
def test_one_and_two_replicas_give_same_loss_and_weights(terms):
    out = _run(_MIRRORED.replace("TERMS", repr(terms)), {})
    assert "OK" in out


@pytest.mark.skipif(BACKEND != "tensorflow", reason="cross-backend check")
def test_weights_trained_under_jax_load_under_tensorflow(tmp_path):
    pytest.importorskip("jax")
    path = str(tmp_path / "student.keras")
    script = f"""
    import numpy as np, keras
    from keras_semkd.distillers import Distiller
    from tests.tiny import tiny_model, tiny_batch
    d = Distiller(tiny_model("teacher", widths=(6, 12), seed=1),
                  tiny_model("student", seed=2), {{"kd": 0.9}})
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = tiny_batch(16)
    before = np.array(d.student.trainable_weights[0])
    h = d.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert not np.allclose(before, np.array(d.student.trainable_weights[0]))
    assert h.history["loss"][1] < h.history["loss"][0] * 1.5
    d.student.save({path!r})
    np.save({path!r} + ".npy", np.asarray(d.student(x)["logits"]))
    print("trained", keras.backend.backend())
    """
    out = _run(script, {"KERAS_BACKEND": "jax"})
    assert "trained jax" in out
    student = keras.saving.load_model(path)
    x, _ = tiny_batch(16)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(student(x)["logits"]),
        np.load(path + ".npy"), rtol=1e-5, atol=1e-5,
    )
