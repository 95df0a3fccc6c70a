"""Tests of the TF Serving export: layout, atomicity, versions, models.config,
reload equality, top-k, student-only content, `.keras` round trip, failure
clean-up and a `PredictRequest` answered by the reloaded signature."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip(
        "The SavedModel export needs the TensorFlow backend; received "
        f"backend={keras.backend.backend()!r}.",
        allow_module_level=True,
    )

import tensorflow as tf  # noqa: E402

from keras_semkd import data as data_lib  # noqa: E402
from keras_semkd import export  # noqa: E402
from keras_semkd import models  # noqa: E402
from keras_semkd.distillers import Distiller  # noqa: E402
from tests.tiny import tiny_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SERVING_API_PIP = "pip install --no-deps tensorflow-serving-api==2.21.0"
NORM = data_lib.get_normalization("cifar100")


def _spread_weights(model, seed=0):
    """Random weights with spread-out logits (no ties in the top-k) and
    non-trivial BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if "moving_variance" in v.path:
            value = rng.uniform(0.5, 1.5, shape)
        elif "moving_mean" in v.path:
            value = rng.normal(0.0, 0.1, shape)
        elif "gamma" in v.path:
            value = rng.uniform(0.8, 1.2, shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            value = rng.normal(0.0, 1.5 / np.sqrt(fan_in), shape)
        v.assign(value.astype(v.dtype))
    return model


def _images(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _keras_probs(model, images):
    return export.keras_probabilities(model, images, NORM)


def _serve(version_dir, images):
    loaded = tf.saved_model.load(version_dir)
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    return {k: v.numpy() for k, v in out.items()}


@pytest.fixture(scope="module")
def student():
    return _spread_weights(models.get("resnet8", num_classes=100), seed=3)


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    result = export.export_student(student, root, "resnet8",
                                   recipe={"name": "unit-test"})
    return root, result


# ---------------------------------------------------------------------------
# Layout, versions, models.config
# ---------------------------------------------------------------------------


def test_version_folder_is_complete_and_no_temporary_is_left(exported):
    root, result = exported
    model_dir = os.path.join(root, "resnet8")
    assert result.version == 1
    assert result.path == os.path.join(model_dir, "1")
    assert os.path.isfile(os.path.join(result.path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(result.path, "variables"))
    assert sorted(os.listdir(model_dir)) == ["1", "student-1.keras"]
    assert not [e for e in os.listdir(root) if e.startswith(".")]
    # readable by a model server running as another user
    for path in (result.path, result.keras_path, result.config_path,
                 os.path.join(result.path, "saved_model.pb")):
        assert os.stat(path).st_mode & 0o004, path
    meta = export.read_metadata(result.path)
    assert meta == result.metadata
    assert meta["version"] == 1 and meta["top_k"] == 5
    assert meta["class_names"] == list(data_lib.FINE_LABEL_NAMES)
    np.testing.assert_allclose(meta["normalization"]["mean"], NORM.mean)
    np.testing.assert_allclose(meta["normalization"]["std"], NORM.std)
    assert meta["recipe"] == {"name": "unit-test"}
    assert meta["signature"]["inputs"]["images"]["shape"] == [None, 32, 32, 3]


def test_signature_dtypes_and_shapes(exported):
    _, result = exported
    sig = tf.saved_model.load(result.path).signatures["serving_default"]
    (spec,) = sig.structured_input_signature[1].values()
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 32, 32, 3]
    outs = sig.structured_outputs
    assert set(outs) == set(export.OUTPUT_NAMES)
    assert outs["probabilities"].dtype == tf.float32
    assert outs["probabilities"].shape.as_list() == [None, 100]
    assert outs["top_k_classes"].dtype == tf.int32
    assert outs["top_k_classes"].shape.as_list() == [None, 5]
    assert outs["top_k_scores"].dtype == tf.float32
    assert outs["top_k_names"].dtype == tf.string


def test_next_export_gets_next_version_and_models_config_lists_all(
    student, tmp_path
):
    first = export.export_student(student, tmp_path, "resnet8")
    second = export.export_student(student, tmp_path, "resnet8")
    other = export.export_student(student, tmp_path, "other.model-b", 7)
    assert (first.version, second.version, other.version) == (1, 2, 7)
    assert export.list_versions(tmp_path / "resnet8") == [1, 2]
    assert os.path.isfile(tmp_path / "resnet8" / "student-2.keras")
    with open(tmp_path / "models.config", encoding="utf-8") as f:
        text = f.read()
    for name in ("resnet8", "other.model-b"):
        assert f'name: "{name}"' in text
        assert f'base_path: "/models/{name}"' in text
    assert text.count('model_platform: "tensorflow"') == 2
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError:
        return  # the text checks above still ran
    config = text_format.Parse(text,
                               model_server_config_pb2.ModelServerConfig())
    listed = {c.name: (c.base_path, c.model_platform)
              for c in config.model_config_list.config}
    assert listed == {
        "resnet8": ("/models/resnet8", "tensorflow"),
        "other.model-b": ("/models/other.model-b", "tensorflow"),
    }


def test_models_config_with_local_paths(student, tmp_path):
    export.export_student(student, tmp_path, "m", serving_base_path=None)
    with open(tmp_path / "models.config", encoding="utf-8") as f:
        assert f'base_path: "{tmp_path / "m"}"' in f.read()


def test_existing_version_is_refused_unless_overwrite(student, tmp_path):
    export.export_student(student, tmp_path, "m", 3)
    with pytest.raises(FileExistsError, match="version=3"):
        export.export_student(student, tmp_path, "m", 3)
    other = _spread_weights(models.get("resnet8", num_classes=100), seed=9)
    result = export.export_student(other, tmp_path, "m", 3, overwrite=True)
    assert sorted(os.listdir(tmp_path / "m")) == ["3", "student-3.keras"]
    images = _images(4)
    np.testing.assert_allclose(_serve(result.path, images)["probabilities"],
                               _keras_probs(other, images), atol=1e-5)


def test_failed_export_leaves_no_version_behind(student, tmp_path,
                                                monkeypatch):
    export.export_student(student, tmp_path, "m")
    with open(tmp_path / "models.config", encoding="utf-8") as f:
        config_before = f.read()

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(RuntimeError, match="simulated"):
        export.export_student(student, tmp_path, "m")
    monkeypatch.undo()
    # A failure after the SavedModel is written (while saving .keras).
    monkeypatch.setattr(keras.Model, "save", broken_save)
    with pytest.raises(RuntimeError, match="simulated"):
        export.export_student(student, tmp_path, "m")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "student-1.keras"]
    assert export.list_versions(tmp_path / "m") == [1]
    with open(tmp_path / "models.config", encoding="utf-8") as f:
        assert f.read() == config_before
    # and the next successful export takes version 2
    assert export.export_student(student, tmp_path, "m").version == 2


# ---------------------------------------------------------------------------
# Equality with Keras
# ---------------------------------------------------------------------------


def test_reload_equals_keras_probabilities(exported, student):
    _, result = exported
    images = _images(6)
    diff = export.reload_check(result.path, student, images)
    assert 0.0 <= diff <= 1e-5
    served = _serve(result.path, images)
    expected = _keras_probs(student, images)
    assert served["probabilities"].dtype == np.float32
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    np.testing.assert_allclose(served["probabilities"].sum(-1), 1.0,
                               atol=1e-5)
    # the logits are not flat: the check is not trivially satisfied
    assert expected.max(-1).min() > 0.05


def test_normalization_is_inside_the_graph(exported, student):
    """The graph equals the Keras model fed `(x / 255 - mean) / std`."""
    _, result = exported
    images = _images(3, seed=5)
    x = (images.astype(np.float64) / 255.0 - np.array(NORM.mean)) \
        / np.array(NORM.std)
    logits = keras.ops.convert_to_numpy(
        student(x.astype(np.float32), training=False)["logits"])
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(_serve(result.path, images)["probabilities"],
                               expected, atol=1e-5)


def test_top_k_agrees_with_argsort_and_class_names(exported, student):
    _, result = exported
    images = _images(6, seed=1)
    served = _serve(result.path, images)
    expected = _keras_probs(student, images)
    order = np.argsort(-expected, axis=-1, kind="stable")[:, :5]
    np.testing.assert_array_equal(served["top_k_classes"], order)
    assert served["top_k_classes"].dtype == np.int32
    np.testing.assert_allclose(served["top_k_scores"],
                               np.take_along_axis(expected, order, -1),
                               atol=1e-5)
    names = np.asarray(data_lib.FINE_LABEL_NAMES)[order]
    got = np.vectorize(lambda b: b.decode("utf-8"))(served["top_k_names"])
    np.testing.assert_array_equal(got, names)


def test_reload_check_raises_on_a_different_model(exported):
    _, result = exported
    other = _spread_weights(models.get("resnet8", num_classes=100), seed=11)
    with pytest.raises(export.ExportMismatchError, match="differs"):
        export.reload_check(result.path, other, _images(4))


def test_keras_file_round_trips_to_equal_outputs(exported, student):
    _, result = exported
    reloaded = keras.saving.load_model(result.keras_path, compile=False)
    images = _images(5, seed=2)
    np.testing.assert_allclose(_keras_probs(reloaded, images),
                               _keras_probs(student, images), atol=1e-6)
    # the file path itself is accepted as the reference model
    assert export.reload_check(result.path, result.keras_path, images) \
        <= 1e-5


def test_export_from_keras_path(exported, tmp_path, student):
    _, result = exported
    again = export.export_student(result.keras_path, tmp_path, "from_file",
                                  top_k=3)
    assert again.metadata["source"] == result.keras_path
    images = _images(4, seed=4)
    served = _serve(again.path, images)
    assert served["top_k_classes"].shape == (4, 3)
    np.testing.assert_allclose(served["probabilities"],
                               _keras_probs(student, images), atol=1e-5)


# ---------------------------------------------------------------------------
# Student only
# ---------------------------------------------------------------------------


def test_distiller_exports_the_student_only(tmp_path):
    teacher = _spread_weights(tiny_model("teacher", widths=(6, 12), seed=1))
    student = _spread_weights(tiny_model("student", widths=(4, 8), seed=2),
                              seed=1)
    distiller = Distiller(
        teacher, student,
        distillation_losses=[{"name": "fitnet", "weight": 1.0},
                             {"name": "kd", "weight": 0.9}],
    )
    term_vars = [v for t in distiller.distillation_terms for v in t.variables]
    assert term_vars  # the FitNet regressor has weights to leave out
    names = [f"n{i}" for i in range(5)]
    result = export.export_student(distiller, tmp_path, "tiny",
                                   dataset="synthetic", class_names=names,
                                   top_k=2)
    saved = [(n, s) for n, s in tf.train.list_variables(
        os.path.join(result.path, "variables", "variables"))
        if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert all(n.startswith("student_variables/") for n, _ in saved)
    assert len(saved) == len(student.variables)
    assert len(saved) < len(distiller.variables)
    assert sorted(tuple(s) for _, s in saved) == sorted(
        tuple(v.shape) for v in student.variables)
    assert sum(int(np.prod(s)) for _, s in saved) == sum(
        int(np.prod(v.shape)) for v in student.variables)
    # the exported values are the student's, in order
    reader = tf.train.load_checkpoint(
        os.path.join(result.path, "variables", "variables"))
    for i, v in enumerate(student.variables):
        np.testing.assert_array_equal(
            reader.get_tensor(f"student_variables/{i}/.ATTRIBUTES/"
                              "VARIABLE_VALUE"),
            keras.ops.convert_to_numpy(v))
    loaded = tf.saved_model.load(result.path)
    assert len(loaded.student_variables) == len(student.variables)
    # the sidecar .keras holds the student, not the distiller
    reloaded = keras.saving.load_model(result.keras_path, compile=False)
    assert reloaded.name == "student" and not isinstance(reloaded, Distiller)
    images = _images(3, size=8)
    norm = data_lib.get_normalization("synthetic")
    served = _serve(result.path, images)
    np.testing.assert_allclose(
        served["probabilities"],
        export.keras_probabilities(student, images, norm), atol=1e-5)
    got_names = served["top_k_names"].astype(str)
    np.testing.assert_array_equal(
        got_names, np.asarray(names)[served["top_k_classes"]])


# ---------------------------------------------------------------------------
# TF Serving's Predict API (protos only; no model server here)
# ---------------------------------------------------------------------------


def test_predict_request_is_answered_by_the_signature(exported, student):
    try:
        from tensorflow_serving.apis import predict_pb2
    except ImportError as e:
        pytest.skip(
            f"tensorflow-serving-api is not installed ({e}); install it "
            f"without its `tensorflow` dependency: `{SERVING_API_PIP}`"
        )
    _, result = exported
    images = _images(4, seed=6)

    # Client side: what a gRPC client sends.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "resnet8"
    request.model_spec.signature_name = "serving_default"
    request.model_spec.version.value = result.version
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    wire = request.SerializeToString()

    # Server side: decode, run the signature, encode the response.
    received = predict_pb2.PredictRequest.FromString(wire)
    assert received.model_spec.name == "resnet8"
    loaded = tf.saved_model.load(
        os.path.join(os.path.dirname(result.path),
                     str(received.model_spec.version.value)))
    signature = loaded.signatures[received.model_spec.signature_name]
    inputs = {k: tf.constant(tf.make_ndarray(v))
              for k, v in received.inputs.items()}
    assert inputs["images"].dtype == tf.uint8
    outputs = signature(**inputs)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(received.model_spec)
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    answer = predict_pb2.PredictResponse.FromString(
        response.SerializeToString())

    # Client side again.
    assert set(answer.outputs) == set(export.OUTPUT_NAMES)
    probs = tf.make_ndarray(answer.outputs["probabilities"])
    expected = _keras_probs(student, images)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    classes = tf.make_ndarray(answer.outputs["top_k_classes"])
    np.testing.assert_array_equal(
        classes, np.argsort(-expected, axis=-1, kind="stable")[:, :5])
    names = tf.make_ndarray(answer.outputs["top_k_names"]).astype(str)
    np.testing.assert_array_equal(
        names, np.asarray(data_lib.FINE_LABEL_NAMES)[classes])
    assert answer.outputs["top_k_names"].dtype == tf.string.as_datatype_enum


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_errors_say_what_was_received(student, tmp_path):
    with pytest.raises(ValueError, match="Received: name='../x'"):
        export.export_student(student, tmp_path, "../x")
    with pytest.raises(ValueError, match="top_k=0"):
        export.export_student(student, tmp_path, "m", top_k=0)
    with pytest.raises(ValueError, match="Received: 3 names"):
        export.export_student(student, tmp_path, "m",
                              class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="version=-1"):
        export.export_student(student, tmp_path, "m", -1)
    with pytest.raises(ValueError, match="dataset='image_folder'"):
        export.export_student(student, tmp_path, "m",
                              dataset="image_folder")
    with pytest.raises(TypeError, match="Received: 42"):
        export.export_student(42, tmp_path, "m")
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        export.export_student(str(tmp_path / "nope.keras"), tmp_path, "m")
    assert not (tmp_path / "m").exists() or not os.listdir(tmp_path / "m")
    with pytest.raises(ValueError, match="dtype=float32"):
        export.reload_check(tmp_path, student,
                            np.zeros((1, 32, 32, 3), np.float32))


# ---------------------------------------------------------------------------
# A student trained under JAX (slow: a second interpreter per backend)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_student_saved_under_jax_exports_under_tensorflow(tmp_path):
    keras_file = tmp_path / "student.keras"
    expected_file = tmp_path / "expected.npy"
    script = textwrap.dedent(f"""
        import numpy as np, keras
        from keras_semkd import data, models
        keras.utils.set_random_seed(0)
        m = models.get("resnet8", num_classes=100)
        m.compile(optimizer="sgd", loss={{"logits": keras.losses.
            SparseCategoricalCrossentropy(from_logits=True)}})
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 100, 16)
        xn = data.get_normalization("cifar100").apply_numpy(x)
        m.fit(xn, {{"logits": y}}, epochs=1, batch_size=8, verbose=0)
        m.save({str(keras_file)!r})
        logits = m.predict(xn[:4], verbose=0)["logits"]
        np.save({str(expected_file)!r}, np.asarray(
            keras.ops.softmax(logits)))
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", script], check=True, env=env,
                   cwd=ROOT, capture_output=True)
    result = export.export_student(str(keras_file), tmp_path / "out", "jax")
    x = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3),
                                          dtype=np.uint8)[:4]
    served = _serve(result.path, x)
    np.testing.assert_allclose(served["probabilities"],
                               np.load(expected_file), atol=1e-5)
    assert export.reload_check(result.path, str(keras_file), x) <= 1e-5
    with open(result.metadata_path, encoding="utf-8") as f:
        assert json.load(f)["source"] == str(keras_file)


# ---------------------------------------------------------------------------
# Honest exports (issue #11)
# ---------------------------------------------------------------------------


def test_signature_refuses_images_of_another_size(exported):
    _, result = exported
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"\[1,64,64,3\].*\[\?,32,32,3\]"):
        _serve(result.path, _images(1, size=64))


def test_reload_check_refuses_an_export_with_other_statistics(exported,
                                                              student):
    _, result = exported  # built with the cifar100 statistics
    cinic = data_lib.get_normalization("cinic10")
    with pytest.raises(export.ExportMismatchError, match="trained under"):
        export.reload_check(result.path, student, _images(2),
                            normalization=cinic)
    assert export.reload_check(result.path, student, _images(2),
                               normalization=NORM) <= 1e-5


def test_run_data_gives_classes_statistics_and_image_shape(student,
                                                           tmp_path):
    names = [f"c{i}" for i in range(100)]
    run_data = {"dataset": "image_folder", "class_names": names,
                "input_shape": [32, 32, 3],
                "normalization": {"mean": [0.1, 0.2, 0.3],
                                  "std": [0.3, 0.2, 0.1]}}
    result = export.export_student(student, tmp_path, "m", top_k=3,
                                   run_data=run_data)
    meta = export.read_metadata(result.path)
    assert meta["class_names"] == names and meta["dataset"] == "image_folder"
    assert meta["normalization"]["mean"] == [0.1, 0.2, 0.3]
    assert meta["run_data"] == run_data
    with pytest.raises(ValueError, match="class_names differ"):
        export.export_student(student, tmp_path, "m", run_data=run_data,
                              class_names=names[::-1])
    with pytest.raises(ValueError, match="normalization differs"):
        export.export_student(student, tmp_path, "m", run_data=run_data,
                              normalization="cifar100")
    with pytest.raises(ValueError, match=r"image_shape \(64, 64, 3\)"):
        export.export_student(student, tmp_path, "m", run_data=run_data,
                              image_shape=(64, 64, 3))
    assert export.list_versions(tmp_path / "m") == [1]


def test_stale_temporaries_are_removed_and_live_ones_kept(student, tmp_path):
    from keras_semkd.export import serving

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    stale_dir = model_dir / ".tmp-export-dead"
    stale_dir.mkdir()
    (stale_dir / "saved_model.pb").write_bytes(b"partial")
    (model_dir / ".tmp-export-dead.keras").write_bytes(b"partial")
    live, fd = serving._new_temporary(str(model_dir))
    try:
        export.export_student(student, tmp_path, "m")
        left = sorted(e for e in os.listdir(model_dir) if e.startswith("."))
        assert left == [os.path.basename(live)]
    finally:
        os.close(fd)
    assert export.clean_stale_temporaries(model_dir) == [live]
    assert sorted(os.listdir(model_dir)) == ["1", "student-1.keras"]
