"""Op self-times of a Keras peer (tf.profiler) and a PyTorch peer
(torch.profiler)."""

import collections
import glob
import json
import os
import re
import tempfile


def _shares(counter, total, top=None):
    items = counter.most_common(top)
    return {k: {"ms_per_step": round(v, 2), "share": round(v / total, 3)}
            for k, v in items}


def profile_keras(peer, teacher, student, steps):
    """Op self-times of `steps` Keras steps (tf.profiler's
    framework_op_stats: the 500 ops with the largest self time, summed
    over threads), by part of the step and by op type."""
    import tensorflow as tf
    from tensorflow.python.profiler.internal import (
        _pywrap_profiler_plugin as plugin,
    )

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        peer.run(steps)
        tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                          recursive=True)
        data, ok = plugin.xspace_to_tools_data(paths, "framework_op_stats",
                                               {})
    if not ok:
        return {"error": str(data[:200])}
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    is_teacher = re.compile(rf"^{re.escape(teacher)}(_\d+)?$").match
    is_student = re.compile(rf"^{re.escape(student)}(_\d+)?$").match
    parts, types = collections.Counter(), collections.Counter()
    for row in table["rows"]:
        op = dict(zip(cols, [c["v"] if c else None for c in row["c"]]))
        if op["type"] == "IDLE":
            continue
        ms = op["total_self_time"] / 1000.0 / (steps + 1)
        scope = op["operation"].split("/")
        if scope[0] == "StatefulPartitionedCall":
            scope = scope[1:]
        if scope[0] == "gradient_tape":
            part = ("student backward" if len(scope) > 1
                    and is_student(scope[1]) else "backward, other")
        elif is_teacher(scope[0]):
            part = "teacher forward"
        elif is_student(scope[0]):
            part = "student forward"
        elif scope[0].lower().startswith("sgd"):
            part = "optimizer"
        else:
            part = "loss, metrics, weight decay, other"
        parts[part] += ms
        types[op["type"]] += ms
    total = sum(parts.values())
    return {"tool": "tf.profiler framework_op_stats", "steps": steps + 1,
            "parts": _shares(parts, total),
            "op_types": _shares(types, total, top=10)}


def profile_torch(peer, steps):
    """Self CPU time of `steps` PyTorch steps by ATen op (torch.profiler)."""
    import torch

    torch.set_num_threads(peer.threads)
    with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            peer.step()
    ops = collections.Counter()
    for event in prof.key_averages():
        ops[event.key] += event.self_cpu_time_total / 1000.0 / steps
    total = sum(ops.values())
    return {"tool": "torch.profiler self CPU time", "steps": steps,
            "op_types": _shares(ops, total, top=10)}
