"""Pictures and tables from run directories: training curves (loss and
accuracy per epoch, student vs a teacher reference line) as PNG, the
confusion matrix as PNG, and results tables as Markdown."""

import csv
import math

import numpy as np


def read_history(path):
    """Reads a run's `history.csv` into {column: list of floats}."""
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no epochs.")
    columns = {}
    for key in rows[0]:
        values = []
        for r in rows:
            try:
                values.append(float(r[key]))
            except (TypeError, ValueError):
                values.append(math.nan)
        columns[key] = values
    return columns


def plot_training_curves(histories, path, teacher_top1=None, title=None):
    """Loss and top-1 per epoch of one or more runs, as a PNG.

    Args:
        histories: {label: history dict (from `read_history`) or CSV path}.
        path: output PNG path.
        teacher_top1: the teacher's test top-1, drawn as a reference line.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for label, hist in histories.items():
        if isinstance(hist, str):
            hist = read_history(hist)
        epochs = hist["epoch"]
        for key, style in (("loss", "-"), ("val_loss", "--")):
            if key in hist:
                ax_loss.plot(epochs, hist[key], style,
                             label=f"{label} {key}")
        for key, style in (("top1", "-"), ("val_top1", "--")):
            if key in hist:
                ax_acc.plot(epochs, np.array(hist[key]) * 100, style,
                            label=f"{label} {'train' if key == 'top1' else 'test'}")
    if teacher_top1 is not None:
        ax_acc.axhline(teacher_top1 * 100, color="k", linestyle=":",
                       label="teacher (test)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("top-1 accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(confusion, path, class_names=None, title=None):
    """The row-normalized confusion matrix as a PNG heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = confusion / confusion.sum(axis=1, keepdims=True)
    n = confusion.shape[0]
    size = min(12, 3 + n * 0.09)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(np.nan_to_num(rates), cmap="viridis", vmin=0, vmax=1)
    if class_names is not None and n <= 20:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def results_table(rows, columns=None, digits=2):
    """A Markdown table.

    Args:
        rows: list of dicts; values that are lists/tuples of numbers are
            shown as `mean ± std` (std over the runs, ddof=1).
        columns: column order (default: keys of the first row).
        digits: decimals.
    """
    if not rows:
        raise ValueError("results_table needs at least one row.")
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, (list, tuple, np.ndarray)):
            arr = np.asarray(v, np.float64)
            if arr.size == 1:
                return f"{arr[0]:.{digits}f}"
            return (f"{arr.mean():.{digits}f} ± "
                    f"{arr.std(ddof=1):.{digits}f}")
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns)
                     + " |")
    return "\n".join(lines) + "\n"
