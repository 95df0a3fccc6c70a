r"""Distillation training throughput, side by side, on CPU.

Peers, each timed on the same synthetic batch held in memory (random
normal images, random labels: no input pipeline, no augmentation):

    keras_kd             our `Distiller`, KD (CE·0.1 + KD·0.9, T=4)
    keras_sakd           our `Distiller`, KD + SAKD (its default terms)
    keras_kd_feat        our `Distiller`, KD + plain MSE on "stage3": the
                         same objective as the keras_distillation peer
    keras_distillation   `keras.distillation.Distiller`: LogitsDistillation
                         (T=4) + FeatureDistillation (MSE) on the last stage
    torch_kd             RepDistiller's KD loop in PyTorch
                         (benchmarks/torch_reference.py), NCHW,
                         `torch.set_num_threads(physical cores)`
    torch_kd@1t          the same with one thread (`@<n>t`: n threads,
                         `@cl`: channels-last tensors; any torch peer)
    teacher_infer        Keras teacher inference alone (`predict`)
    student_step         Keras student CE-only training step alone (`fit`)
    torch_teacher_infer  PyTorch teacher inference alone
    torch_student_step   PyTorch student CE-only step alone

All peers of a pair live in ONE process and are timed round-robin (the order
rotates every repeat), `--repeats` times `--steps` steps each after
`--warmup` untimed steps; a run's rate is `steps · batch / seconds` and the
median over repeats is reported. Keras steps run through the standard
`fit`/`predict` loops; a callback stamps the end of every step and the
first step of every call (iterator and callback setup) is not timed.
Students train with SGD(0.05, momentum 0.9) and weight decay 5e-4
everywhere (the zoo's coupled L2 for our Distiller and the Keras student
step; `SGD(weight_decay=5e-4)` for keras.distillation, whose `compute_loss`
drops model regularization losses; `SGD(weight_decay=5e-4)` for PyTorch).

`--mixed_precision` adds, per pair, a fresh subprocess that builds our
Distiller in float32 and under `mixed_bfloat16` and times them round-robin.
`--memory` adds, per pair and peer, a fresh subprocess that runs that peer
alone and reports its peak RSS (Linux `VmHWM`; see `peak_rss_mib`) and
the RSS after imports. `--profile` records op self-times of keras_kd
(tf.profiler) and torch_kd (torch.profiler) after timing.

Every run also records the process CPU time, so img/CPU-s (less sensitive
to other processes on a shared machine) is reported next to img/s, and
the ratios are given both from medians and paired within each repeat.

Example (the measurements in docs/bench_throughput.md; pass one pair per
command to give each its own --steps):

    python benchmarks/bench_throughput.py --pairs=resnet32x4:resnet8x4 \
        --steps=5 --warmup=2 --repeats=3 --mixed_precision --memory \
        --profile --out=/tmp/bench/pair1.json
"""

import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from throughput import machine  # noqa: E402
from throughput import profiles as profiles_lib  # noqa: E402
from throughput import ratios as ratios_lib  # noqa: E402
from throughput import report  # noqa: E402
from throughput import timing  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PEERS = (
    "keras_kd", "keras_sakd", "keras_kd_feat", "keras_distillation",
    "torch_kd", "teacher_infer", "student_step", "torch_teacher_infer",
    "torch_student_step",
)
DEFAULT_PEERS = (
    "keras_kd", "keras_sakd", "keras_kd_feat", "keras_distillation",
    "torch_kd", "torch_kd@1t", "teacher_infer", "student_step",
    "torch_teacher_infer@1t", "torch_student_step@1t",
)

FLAGS = flags.FLAGS
flags.DEFINE_list("pairs", ["resnet32x4:resnet8x4", "resnet56:resnet20"],
                  "teacher:student pairs.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 20, "Timed steps per run.")
flags.DEFINE_integer("warmup", 3, "Untimed steps per peer before timing "
                     "(tracing included).")
flags.DEFINE_integer("repeats", 3, "Runs per peer; the median is reported.")
flags.DEFINE_list("peers", list(DEFAULT_PEERS),
                  f"Peers to time, of {PEERS}; torch peers take options "
                  "after '@': '<n>t' (threads), 'cl' (channels-last), "
                  "joined by '_' (torch_kd@1t_cl).")
flags.DEFINE_bool("mixed_precision", False,
                  "Also time our Distiller under mixed_bfloat16 (fresh "
                  "subprocess per pair, against float32 in that process).")
flags.DEFINE_list("mixed_peers", ["keras_kd", "keras_sakd"],
                  "Peers timed by --mixed_precision.")
flags.DEFINE_bool("memory", False,
                  "Also measure the peak RSS of each peer alone (fresh "
                  "subprocess per pair and peer).")
flags.DEFINE_list("memory_peers", ["keras_kd", "keras_sakd",
                                   "keras_distillation", "torch_kd"],
                  "Peers measured by --memory.")
flags.DEFINE_integer("memory_steps", 3, "Timed steps in a --memory child.")
flags.DEFINE_bool("profile", False,
                  "Also profile keras_kd (tf.profiler op stats) and "
                  "torch_kd (torch.profiler) per pair, after timing.")
flags.DEFINE_integer("profile_steps", 3, "Steps recorded by --profile.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_list("plot_from", None,
                  "Only plot: result JSONs of earlier runs (--out) to draw "
                  "into --plot (no timing).")
flags.DEFINE_string("plot", None,
                    "Write a PNG of img/s and img/CPU-s per peer and pair "
                    "(from this run, or from --plot_from).")
flags.DEFINE_integer("num_classes", 100, "Number of classes.")
flags.DEFINE_integer("seed", 0, "Seed of weights and the synthetic batch.")
flags.DEFINE_integer("torch_threads", 0,
                     "torch.set_num_threads; 0: the physical cores.")
flags.DEFINE_string("jit_compile", "auto",
                    "`jit_compile` of the Keras peers: auto (Keras' "
                    "default: off on CPU-only TF), true or false.")
flags.DEFINE_enum("child", None, ["mixed", "memory"],
                  "Internal: run as a --mixed_precision / --memory child.")


def _parse_pair(pair):
    teacher, sep, student = pair.partition(":")
    if not sep or not teacher or not student:
        raise app.UsageError(
            f"--pairs entries are teacher:student. Received: {pair!r}")
    return teacher, student


def _release(peers):
    peers.clear()
    gc.collect()
    if "keras" in sys.modules:
        import keras

        keras.backend.clear_session()


def bench_pair(pair, peers):
    teacher, student = _parse_pair(pair)
    batch = timing.synthetic_batch(FLAGS.batch_size, FLAGS.num_classes,
                                   FLAGS.seed)
    if any(p.startswith("keras") or p in ("teacher_infer", "student_step")
           for p in peers):
        import keras

        keras.utils.set_random_seed(FLAGS.seed)
    built = timing.build_peers(peers, teacher, student, batch)
    results = timing.time_round_robin(built, FLAGS.steps, FLAGS.repeats,
                                      FLAGS.batch_size)
    profiles = {}
    if FLAGS.profile:
        if "keras_kd" in built:
            profiles["keras_kd"] = profiles_lib.profile_keras(
                built["keras_kd"], teacher, student, FLAGS.profile_steps)
        if "torch_kd" in built:
            profiles["torch_kd"] = profiles_lib.profile_torch(
                built["torch_kd"], FLAGS.profile_steps)
    _release(built)
    pair_ratios = ratios_lib.ratios(results)
    pair_ratios.update(ratios_lib.ratios(results, "median_img_per_cpu_s",
                                         "_per_cpu_s"))
    paired = ratios_lib.paired_ratios(results)
    entry = {"peers": results, "ratios": pair_ratios,
             "paired_ratios": paired,
             "targets": ratios_lib.check_targets(pair_ratios),
             "targets_paired": ratios_lib.check_targets(paired)}
    if profiles:
        entry["profile"] = profiles
    return entry


def child_mixed(pair):
    """float32 and mixed_bfloat16 Distillers in one process, round-robin."""
    import keras

    teacher, student = _parse_pair(pair)
    batch = timing.synthetic_batch(FLAGS.batch_size, FLAGS.num_classes,
                                   FLAGS.seed)
    keras.utils.set_random_seed(FLAGS.seed)
    peers = timing.build_peers(FLAGS.peers, teacher, student, batch)
    # Layers read the global policy when built; the float32 peers above
    # are built (and traced) already.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    peers.update(timing.build_peers(FLAGS.peers, teacher, student, batch,
                                    suffix="@mixed_bfloat16"))
    results = timing.time_round_robin(peers, FLAGS.steps, FLAGS.repeats,
                                      FLAGS.batch_size)
    out = {}
    for name in FLAGS.peers:
        low = results.get(f"{name}@mixed_bfloat16")
        full = results.get(name)
        if low and full:
            out[f"{name}_bf16_vs_fp32"] = round(
                low["median_img_per_s"] / full["median_img_per_s"], 3)
    return {"peers": results, "ratios": out}


def child_memory(pair):
    """One peer alone: RSS after imports, then peak RSS over build,
    warm-up and `--memory_steps` steps."""
    (name,) = FLAGS.peers
    teacher, student = _parse_pair(pair)
    if name.startswith("torch"):
        import torch  # noqa: F401

        import torch_reference  # noqa: F401
    else:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        import keras_semkd  # noqa: F401
        from keras_semkd.distillers import build  # noqa: F401

        keras.utils.set_random_seed(FLAGS.seed)
    after_imports = machine.peak_rss_mib()
    batch = timing.synthetic_batch(FLAGS.batch_size, FLAGS.num_classes,
                                   FLAGS.seed)
    peers = timing.build_peers([name], teacher, student, batch)
    if not peers:
        return {}
    times, _ = peers[name].run(FLAGS.memory_steps)
    peak = machine.peak_rss_mib()
    return {
        "rss_after_imports_mib": round(after_imports, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_over_imports_mib": round(peak - after_imports, 1),
        "img_per_s_alone": round(FLAGS.batch_size * len(times) / sum(times),
                                 2),
    }


def run_child(kind, pair, peers, steps, repeats):
    """Runs this script as a fresh child process; returns its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "child.json")
        cmd = [
            sys.executable, os.path.abspath(__file__), f"--child={kind}",
            f"--pairs={pair}", f"--peers={','.join(peers)}",
            f"--batch_size={FLAGS.batch_size}", f"--steps={steps}",
            f"--warmup={FLAGS.warmup}", f"--repeats={repeats}",
            f"--memory_steps={FLAGS.memory_steps}",
            f"--num_classes={FLAGS.num_classes}", f"--seed={FLAGS.seed}",
            f"--torch_threads={FLAGS.torch_threads}",
            f"--jit_compile={FLAGS.jit_compile}", f"--out={out}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            logging.error("child %s %s %s failed:\n%s", kind, pair, peers,
                          proc.stderr[-3000:])
            return {"error": proc.stderr[-500:]}
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def main(argv):
    del argv
    unknown = sorted({p.partition("@")[0] for p in FLAGS.peers}
                     - set(PEERS))
    if unknown:
        raise app.UsageError(f"Unknown peers {unknown}; known: {PEERS}")
    if FLAGS.plot_from:
        if not FLAGS.plot:
            raise app.UsageError("--plot_from needs --plot=<file.png>.")
        payloads = []
        for path in FLAGS.plot_from:
            with open(path, encoding="utf-8") as f:
                payloads.append(json.load(f))
        report.plot_results(payloads, FLAGS.plot)
        print(f"wrote {FLAGS.plot}")
        return
    if FLAGS.child == "mixed":
        report.write_json(child_mixed(FLAGS.pairs[0]))
        return
    if FLAGS.child == "memory":
        report.write_json(child_memory(FLAGS.pairs[0]))
        return
    start = time.perf_counter()
    payload = {
        "command": " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "machine": machine.machine_info(),
        "uptime_before": machine.uptime(),
        "config": {k: FLAGS[k].value for k in (
            "pairs", "batch_size", "steps", "warmup", "repeats", "peers",
            "mixed_precision", "mixed_peers", "memory", "memory_peers",
            "memory_steps",
            "num_classes", "seed", "jit_compile", "profile",
            "profile_steps")},
        "torch_threads": FLAGS.torch_threads or machine.physical_cores(),
        "input": "synthetic: one random-normal batch and random labels, "
                 "held in memory (no input pipeline)",
        "pairs": {},
    }
    if any(p.startswith("torch") for p in FLAGS.peers):
        payload["param_counts"] = report.param_counts(
            [_parse_pair(p) for p in FLAGS.pairs])
    for pair in FLAGS.pairs:
        logging.info("== %s", pair)
        entry = bench_pair(pair, FLAGS.peers)
        payload["pairs"][pair] = entry
        report.write_json(payload)
    for pair in FLAGS.pairs:
        entry = payload["pairs"][pair]
        if FLAGS.mixed_precision:
            logging.info("== %s: mixed_bfloat16 child", pair)
            entry["mixed_precision"] = run_child(
                "mixed", pair, FLAGS.mixed_peers, FLAGS.steps, FLAGS.repeats)
        if FLAGS.memory:
            entry["memory"] = {}
            for peer in FLAGS.memory_peers:
                if peer not in FLAGS.peers:
                    continue
                logging.info("== %s: memory child %s", pair, peer)
                entry["memory"][peer] = run_child(
                    "memory", pair, [peer], FLAGS.memory_steps, 1)
        report.write_json(payload)
    payload["uptime_after"] = machine.uptime()
    payload["wall_s"] = round(time.perf_counter() - start, 1)
    report.write_json(payload)
    if FLAGS.plot:
        report.plot_results([payload], FLAGS.plot)
    print(f"machine: {payload['machine']['nproc']} CPUs "
          f"({payload['machine']['cpu_model']}); torch threads "
          f"{payload['torch_threads']}; input: {payload['input']}")
    print(f"uptime before: {payload['uptime_before']}")
    print(f"uptime after:  {payload['uptime_after']}")
    for name, counts in payload.get("param_counts", {}).items():
        print(f"params {name}: keras {counts['keras']} torch "
              f"{counts['torch']} equal={counts['equal']}")
    for pair, entry in payload["pairs"].items():
        print(report.format_table(pair, entry))
        mixed = entry.get("mixed_precision")
        if mixed and "peers" in mixed:
            print(report.format_table(f"{pair} [fp32 vs mixed_bfloat16 child]",
                               mixed))
    print(f"\nwall time {payload['wall_s']:.0f} s")


if __name__ == "__main__":
    app.run(main)
