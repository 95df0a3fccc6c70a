"""The results: the text table, the JSON file, parameter counts (ours and
the PyTorch reference's), and the plot of saved results."""

import json
import os
import statistics

import numpy as np
from absl import flags
from absl import logging

FLAGS = flags.FLAGS


def format_table(pair, entry):
    rows = [f"\n{pair}  (batch {FLAGS.batch_size}, {FLAGS.steps} steps x "
            f"{FLAGS.repeats} repeats, median)",
            f"{'peer':<30}{'img/s':>8}{'ms/step':>9}{'img/CPU-s':>11}"
            f"{'CPU':>6}   runs (img/s)"]
    for label, r in entry["peers"].items():
        runs = " ".join(f"{v:.0f}" for v in r["img_per_s"])
        util = statistics.median(r["cpu_utilization"])
        rows.append(f"{label:<30}{r['median_img_per_s']:>8.1f}"
                    f"{r['median_step_ms']:>9.0f}"
                    f"{r['median_img_per_cpu_s']:>11.1f}{util:>6.2f}   "
                    f"{runs}")
    for key, value in entry.get("ratios", {}).items():
        if isinstance(value, str):
            rows.append(f"  {key:<40}{value:>8}")
        else:
            rows.append(f"  {key:<40}{value:>8.3f}")
    for group, how in (("targets", "of medians"),
                       ("targets_paired", "paired per repeat")):
        for key, t in entry.get(group, {}).items():
            rows.append(f"  target {key} ({how}): {t['value']:.3f} (want "
                        f"{t['target']}) -> {'HIT' if t['hit'] else 'MISS'}")
    for label, prof in entry.get("profile", {}).items():
        for group in ("parts", "op_types"):
            if group in prof:
                rows.append(f"  profile {label} {group}: " + ", ".join(
                    f"{k} {v['ms_per_step']:.0f} ms ({v['share']:.0%})"
                    for k, v in list(prof[group].items())[:6]))
    for label, m in entry.get("memory", {}).items():
        if "peak_rss_mib" in m:
            rows.append(f"  peak RSS {label:<28}{m['peak_rss_mib']:>9.0f} MiB"
                        f" (+{m['peak_over_imports_mib']:.0f} over imports)")
    return "\n".join(rows)


def write_json(payload):
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)),
                    exist_ok=True)
        with open(FLAGS.out, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
        logging.info("Wrote %s", FLAGS.out)


def param_counts(pairs):
    """Our models' and the PyTorch reference's parameter counts."""
    try:
        import torch_reference
    except ImportError:
        return {}
    from keras_semkd.distillers import build

    out = {}
    for name in sorted({m for p in pairs for m in p}):
        if name not in torch_reference.ARCHITECTURES:
            continue
        ours = build.build_model(name, FLAGS.num_classes)
        trainable = sum(int(np.prod(w.shape)) for w in ours.trainable_weights)
        theirs = torch_reference.count_parameters(
            torch_reference.get(name, FLAGS.num_classes))
        out[name] = {"keras": [trainable, ours.count_params()],
                     "torch": list(theirs),
                     "equal": [trainable, ours.count_params()] == list(theirs)}
    return out


def plot_results(payloads, path):
    """Bars of median img/s (left) and img per CPU-second (right) per peer,
    one group per pair, from result payloads (`--out` JSONs); the
    `mixed_bfloat16` child's peers are drawn as `<peer>@mixed_bfloat16`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = {}
    for payload in payloads:
        for pair, entry in payload["pairs"].items():
            peers = dict(entry["peers"])
            mixed = (entry.get("mixed_precision") or {}).get("peers", {})
            for name, stats in mixed.items():
                if "@" in name:  # the child's float32 peers repeat ours
                    peers[name] = stats
            pairs[pair] = (peers, payload.get("date", ""))
    if not pairs:
        raise ValueError("No benchmark results to plot.")
    fig, axes = plt.subplots(len(pairs), 2, squeeze=False,
                             figsize=(12, 3.2 * len(pairs)))
    for row, (pair, (peers, date)) in enumerate(pairs.items()):
        names = list(peers)
        for col, (key, label) in enumerate((
                ("median_img_per_s", "img/s (median of repeats)"),
                ("median_img_per_cpu_s", "img per CPU-second"))):
            ax = axes[row][col]
            values = [peers[n].get(key, 0.0) or 0.0 for n in names]
            colors = ["#1f77b4" if n.startswith("keras_kd")
                      or n.startswith("keras_sakd") else
                      "#d62728" if n.startswith("torch") else
                      "#2ca02c" if n == "keras_distillation" else "#999999"
                      for n in names]
            ax.barh(range(len(names)), values, color=colors)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names, fontsize=8)
            ax.invert_yaxis()
            for i, v in enumerate(values):
                ax.text(v, i, f" {v:.1f}", va="center", fontsize=7)
            ax.set_xlabel(label)
            ax.set_title(f"{pair}, batch 64 ({date[:10]})", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
