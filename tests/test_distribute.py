"""Distribution: strategy selection, two workers on loopback vs one worker,
chief-only writing, and JAX data parallelism over two host devices.

The multi-worker test starts two `MultiWorkerMirroredStrategy` worker
processes on 127.0.0.1 (free ports from the OS) and one plain
single-process run, each a short `Runner` distillation on the generated
dataset with the same *global* batch, and checks that losses, metrics and
final student weights agree. The models use `BatchNormalization(
synchronized=True)`: with the zoo's per-replica BN each worker normalizes
with the statistics of its half batch, which is a different (if standard)
computation, so exact agreement is only expected with synchronized BN.
"""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_semkd import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = keras.backend.backend()
TIMEOUT = 240  # seconds per process; the whole test normally takes < 60


# -- strategy selection (in process) -----------------------------------------
def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ValueError, match="Known: auto, none"):
        distribute.make_strategy("horovod")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute only")
def test_multi_worker_needs_a_valid_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG, which is not set"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{cluster")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["127.0.0.1:1"]},
        "task": {"type": "worker", "index": 1}}))
    with pytest.raises(ValueError, match="not in its cluster"):
        distribute.make_strategy("multi_worker")


def test_is_chief_follows_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief()
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    for index, chief in ((0, True), (1, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps(
            {"cluster": workers, "task": {"type": "worker", "index": index}}))
        assert distribute.is_chief() is chief
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": dict(workers, chief=["127.0.0.1:3"]),
        "task": {"type": "worker", "index": 0}}))
    assert not distribute.is_chief()


def test_single_worker_datasets_are_left_alone():
    assert distribute.num_workers(None) == 1
    marker = object()
    assert distribute.prepare_dataset(marker, None) is marker
    distribute.check_same_on_all_workers(None, (1, 2), "anything")


class _FakeResolver:
    def __init__(self, workers):
        self.workers = workers

    def cluster_spec(self):
        class _Spec:
            def as_dict(spec):
                return {"worker": [f"w{i}" for i in range(self.workers)]}

        return _Spec()


class _FakeStrategy:
    def __init__(self, workers):
        self.cluster_resolver = _FakeResolver(workers)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute only")
def test_multi_worker_fixes_are_scoped_to_their_block():
    from keras.src.backend.tensorflow import trainer as tf_trainer

    originals = (tf_trainer.TensorFlowTrainer._maybe_symbolic_build,
                 tf_trainer.reduce_per_replica)

    def current():
        return (tf_trainer.TensorFlowTrainer._maybe_symbolic_build,
                tf_trainer.reduce_per_replica)

    # No strategy, or one spanning one worker: nothing is touched.
    for strategy in (None, _FakeStrategy(1)):
        with distribute.multi_worker_fixes(strategy):
            assert current() == originals
    # Several workers: patched inside (nested blocks too), restored after.
    with distribute.multi_worker_fixes(_FakeStrategy(2)):
        patched = current()
        assert patched[0] is not originals[0]
        assert patched[1] is not originals[1]
        with distribute.multi_worker_fixes(_FakeStrategy(2)):
            assert current() == patched
        assert current() == patched
    assert current() == originals
    # Restored on an error inside the block as well.
    with pytest.raises(RuntimeError):
        with distribute.multi_worker_fixes(_FakeStrategy(2)):
            raise RuntimeError("boom")
    assert current() == originals


def test_learning_rate_scaling():
    assert distribute.scale_learning_rate(0.05, 128) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="global_batch=0"):
        distribute.scale_learning_rate(0.05, 0)


# -- two workers on loopback vs one process -----------------------------------
def tiny_sync_bn(num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0,
                 name="tiny_sync_bn", widths=(4, 8), seed=0):
    """A zoo-contract model (dict outputs) with synchronized BN."""
    from keras import layers

    keras.utils.set_random_seed(seed)
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    inputs = keras.Input(input_shape, name="images")
    h, outputs = inputs, {}
    for i, width in enumerate(widths, start=1):
        h = layers.Conv2D(width, 3, strides=1 if i == 1 else 2,
                          padding="same", use_bias=False,
                          kernel_regularizer=reg, name=f"{name}_conv{i}")(h)
        h = layers.BatchNormalization(synchronized=True,
                                      name=f"{name}_bn{i}")(h)
        h = layers.ReLU(name=f"{name}_relu{i}")(h)
        outputs[f"stage{i}"] = h
    outputs["embedding"] = layers.GlobalAveragePooling2D()(h)
    outputs["logits"] = layers.Dense(num_classes, kernel_regularizer=reg,
                                     name=f"{name}_fc")(outputs["embedding"])
    return keras.Model(inputs, outputs, name=name)


# One distillation run: `worker` (MWMS from TF_CONFIG) or `single` (no
# strategy). Everything the test compares goes to OUT (the test's own
# folder); the Runner itself writes only under RUN_DIR, and only on the
# chief.
_RUN = """
import json, sys, time
started = time.time()
mode, run_dir, teacher_path, out = sys.argv[1:5]
from keras_semkd import distribute
# MWMS must exist before any other TensorFlow work in the process.
strategy = distribute.make_strategy(
    "multi_worker" if mode == "worker" else "none")
import numpy as np
from keras_semkd import configs, models, training
from tests.test_distribute import tiny_sync_bn

models.MODELS.register("dist_teacher", lambda **kw: tiny_sync_bn(
    widths=(8, 16), seed=1, **dict(kw, name="dist_teacher")))
models.MODELS.register("dist_student", lambda **kw: tiny_sync_bn(
    widths=(4, 8), seed=2, **dict(kw, name="dist_student")))
recipe = configs.Recipe(
    name="dist", teacher="dist_teacher", student="dist_student",
    terms=(configs.Term("kd", 0.9, {"temperature": 4.0}),
           configs.Term("vid", 1.0, {"teacher_keys": "@stages"})),
    student_loss_weight=0.1, epochs=2,
    optimizer=configs.OptimizerConfig(learning_rate=0.05, milestones=(1,),
                                      weight_decay=5e-4),
    data=configs.DataConfig(dataset="synthetic", batch_size=16,
                            limit_train=64, limit_eval=32),
    num_classes=10, seed=3, teacher_weights=teacher_path)
runner = training.Runner(recipe, run_dir, checkpoint_every=3,
                         strategy=strategy)
report = runner.run(verbose=0)
weights = [np.asarray(w) for w in runner.model.student.weights]
weights += [np.asarray(w) for w in runner.model.distillation_terms[1].weights]
np.savez(out + ".npz", *weights)
history = [{k: v for k, v in r.items() if k != "seconds"}
           for r in report["history"]]
caught = None
if mode == "worker":
    # The workers' consistency check (a collective): equal values pass,
    # different ones raise on every worker.
    distribute.check_same_on_all_workers(strategy, (7, 3), "a constant")
    try:
        distribute.check_same_on_all_workers(
            strategy, (int(runner.chief),), "who is chief")
        caught = False
    except ValueError as e:
        caught = "disagree on who is chief" in str(e)
with open(out + ".json", "w") as f:
    json.dump({"history": history, "chief": runner.chief, "caught": caught,
               "replicas": strategy.num_replicas_in_sync if strategy else 1,
               "seconds": time.time() - started}, f)
"""


def _free_ports(n):
    """`n` distinct free TCP ports on the loopback interface."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start(args, env_extra, log_path):
    """Starts one run; its output goes to `log_path` (a file, so a chatty
    process can never block on a full pipe)."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    env.update(env_extra)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _RUN, *args], cwd=ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT,
        )
    proc.log_path = log_path
    return proc


def _tail(proc):
    with open(proc.log_path, errors="replace") as f:
        return f.read()[-4000:]


def _wait_all(procs, timeout):
    """Waits for every process; kills all of them on the first failure or
    when `timeout` seconds have passed, and reports the output."""
    deadline = time.monotonic() + timeout
    try:
        pending = dict(procs)
        while pending:
            for name, proc in list(pending.items()):
                if proc.poll() is None:
                    continue
                del pending[name]
                if proc.returncode != 0:
                    raise AssertionError(
                        f"{name} exited with {proc.returncode}:\n"
                        f"{_tail(proc)}")
            if pending and time.monotonic() > deadline:
                raise AssertionError(
                    f"{sorted(pending)} still running after {timeout} s; "
                    "output:\n" + "\n".join(
                        f"--- {n}\n{_tail(p)}" for n, p in pending.items()))
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _load(out):
    with open(out + ".json") as f:
        result = json.load(f)
    with np.load(out + ".npz") as data:
        result["weights"] = [data[f"arr_{i}"] for i in range(len(data))]
    return result


def _files(folder):
    """Files under `folder`; TensorBoard event files by their folder."""
    names = set()
    for d, _, fs in os.walk(folder):
        rel = os.path.relpath(d, folder)
        for f in fs:
            names.add(rel if "tfevents" in f else os.path.join(rel, f))
    return sorted(os.path.normpath(n) for n in names)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute only")
def test_two_workers_on_loopback_match_one_worker(tmp_path):
    teacher_path = str(tmp_path / "teacher.weights.h5")
    tiny_sync_bn(widths=(8, 16), seed=1, name="dist_teacher").save_weights(
        teacher_path)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, outs = {}, {}
    for name, index in (("worker0", 0), ("worker1", 1), ("single", None)):
        outs[name] = str(tmp_path / "out" / name)
        os.makedirs(os.path.dirname(outs[name]), exist_ok=True)
        env = {} if index is None else {"TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})}
        mode = "single" if index is None else "worker"
        procs[name] = _start([mode, str(tmp_path / f"run_{name}"),
                              teacher_path, outs[name]], env,
                             outs[name] + ".log")
    _wait_all(procs, TIMEOUT)
    w0, w1, single = (_load(outs[n]) for n in ("worker0", "worker1",
                                               "single"))
    assert (w0["chief"], w1["chief"], single["chief"]) == (True, False, True)
    assert (w0["replicas"], w1["replicas"], single["replicas"]) == (2, 2, 1)
    assert w0["caught"] is True and w1["caught"] is True

    # Same global batch -> same losses, metrics and weights.
    assert len(w0["history"]) == len(single["history"]) == 2
    for got, want in zip(w0["history"], single["history"]):
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4,
                                       atol=1e-6, err_msg=key)
    assert w0["history"] == w1["history"]
    for a, b, c in zip(w0["weights"], w1["weights"], single["weights"]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)

    # Only the chief wrote: the non-chief's run directory does not exist.
    chief_files = _files(str(tmp_path / "run_worker0"))
    for name in ("config.json", "history.csv", "report.json", "state.npz",
                 "state.json", "checkpoints/last.weights.h5",
                 "checkpoints/best.weights.h5"):
        assert name in chief_files, (name, chief_files)
    assert "tensorboard/train" in chief_files, chief_files
    assert not os.path.exists(tmp_path / "run_worker1")
    assert _files(str(tmp_path / "run_single")) == chief_files
    # The chief's saved training state (weights, loss parts, optimizer
    # slots) is the single run's.
    with np.load(tmp_path / "run_worker0" / "state.npz") as a, \
            np.load(tmp_path / "run_single" / "state.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6,
                                       err_msg=key)


# -- JAX: DataParallel over two host devices ----------------------------------
_JAX = """
import json
import numpy as np
import jax
import keras
from keras_semkd import distribute
from keras_semkd.distillers import Distiller
from tests.tiny import tiny_batch, tiny_model

assert len(jax.devices()) == 2, jax.devices()
x, y = tiny_batch(16)

def step():
    # Plain BN: under DataParallel XLA partitions the *global* computation,
    # so batch statistics are over the whole batch on any device count.
    d = Distiller(tiny_model("t", widths=(6, 12), seed=1),
                  tiny_model("s", seed=2), {"kd": 0.9},
                  student_loss_weight=0.1)
    d.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
    h = d.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    placed = len(d.student.weights[0].value.sharding.device_set)
    return (h.history["loss"], [np.asarray(w) for w in d.student.weights],
            placed)

assert distribute.make_strategy("auto") is None
dist = keras.distribution.distribution()
assert isinstance(dist, keras.distribution.DataParallel), dist
mesh = dist.device_mesh
losses2, weights2, placed2 = step()
keras.distribution.set_distribution(None)
losses1, weights1, placed1 = step()
assert (placed2, placed1) == (2, 1), (placed2, placed1)
np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
for a, b in zip(weights2, weights1):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("RESULT", json.dumps({"devices": int(np.prod(mesh.shape)),
                            "axes": list(mesh.axis_names),
                            "losses": [losses2, losses1]}))
"""


def test_jax_data_parallel_over_two_host_devices():
    pytest.importorskip("jax")
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="jax",
               TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", _JAX], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines()
            if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["devices"] == 2 and result["axes"] == ["batch"]
