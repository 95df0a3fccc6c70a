r"""Epochs that ended on a tf.data autotune wake-up, from protocol result lines.

With tf.data autotuning on, an iterator's model thread wakes up 10 ms, 20 ms,
40 ms, ... after the iterator starts, doubling up to a 60 s period: at
20.47, 40.95, 81.91 s and then every 60 s (141.91, 201.91, ...). Deleting
the iterator, which Keras does at the end of every `fit` call (the Runner
calls `fit` once per epoch), can wait for the next wake-up; the epoch's wall
time (`epoch_s` in a protocol line) then ends just after one of those marks.
`keras_semkd.data.pipeline.AUTOTUNE_NOTE` has the story; since the commit
that wrote it, `get_dataset` turns autotuning off.

For each git commit in the files, this counts the epochs (the first of each
run left out: it includes tracing) whose `epoch_s` lies within `--window_s`
after a mark, against the share expected by chance (marks per second of
the epoch lengths around it, times the window). How long each stall was
needs Keras' own epoch time, which is in the run logs, not in the lines.

    python benchmarks/epoch_stalls.py \
        results/sakd_confirmation/runs.jsonl results/sakd_followup/runs.jsonl
"""

import collections
import json
import os
import re
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_float("offset_s", 0.15,
                   "Seconds from epoch start to the iterator's start.")
flags.DEFINE_float("window_s", 0.5, "Width of the window after each mark.")
flags.DEFINE_string("logs_dir", None,
                    "A protocol's run logs (`<stage>_<pair>_<arm>_<seed>.txt`,"
                    " e.g. runs/sakd_protocol/logs): also compares each "
                    "epoch_s with Keras' own epoch time in the log.")
flags.DEFINE_float("stall_s", 10.0,
                   "With --logs_dir: an epoch this much longer than Keras' "
                   "time counts as stalled.")

#: The autotune period's cap: after 81.91 s the wake-ups are this far apart.
PERIOD_S = 60.0


def marks(up_to):
    """The autotune thread's wake-ups (s after the iterator starts) up to
    `up_to`, from 20 s on: 20.47, 40.95, 81.91, 141.91, ..."""
    out = [0.01 * (2 ** k - 1) for k in range(1, 14)]
    t = out[-1]
    while t + PERIOD_S <= up_to:
        t += PERIOD_S
        out.append(t)
    return [m for m in out if m >= 20.0]


def on_mark(seconds, offset, window):
    return any(0.0 <= seconds - (m + offset) < window
               for m in marks(seconds + 1.0))


def chance(seconds, window):
    """The chance that an epoch length spread uniformly over
    [0.7, 1.3] x `seconds` falls in a window: marks per second of that
    range times the window."""
    lo, hi = max(20.0, 0.7 * seconds), 1.3 * seconds
    n = sum(1 for m in marks(hi) if lo <= m <= hi)
    return n * window / (hi - lo)


def keras_epoch_seconds(record, logs_dir):
    """Keras' own (integer) seconds per epoch from the run's log, or None
    when the log is missing or does not hold one line per epoch (a resumed
    run's partial epoch)."""
    stage = record["protocol"].replace("sakd_", "", 1)
    path = os.path.join(logs_dir, f"{stage}_{record['pair']}_"
                        f"{record['arm']}_{record['seed']}.txt")
    steps = record.get("steps_per_epoch")
    if not steps or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        found = [int(x) for x in
                 re.findall(rf"\b{steps}/{steps} - (\d+)s - ", f.read())]
    return found if len(found) == len(record.get("epoch_s") or ()) else None


def main(argv):
    files = argv[1:]
    if not files:
        raise SystemExit("usage: epoch_stalls.py RUNS.jsonl [...]")
    by_commit = collections.defaultdict(lambda: [0, 0, 0.0, set()])
    gaps = collections.defaultdict(list)  # commit -> (epoch_s, gap)
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                r = json.loads(line)
                if r.get("shared_from"):
                    continue  # the same run's line, recorded twice
                c = by_commit[(r.get("git_commit") or "?")[:7]]
                c[3].add(path)
                for s in (r.get("epoch_s") or [])[1:]:
                    c[0] += 1
                    c[1] += on_mark(s, FLAGS.offset_s, FLAGS.window_s)
                    c[2] += chance(s, FLAGS.window_s)
                if FLAGS.logs_dir:
                    keras_s = keras_epoch_seconds(r, FLAGS.logs_dir)
                    if keras_s is not None:
                        gaps[(r.get("git_commit") or "?")[:7]].extend(
                            (s, s - k) for s, k in
                            zip(r["epoch_s"][1:], keras_s[1:]))
    print("| commit | epochs | on an autotune mark | by chance | files |")
    print("|---|---|---|---|---|")
    for commit, (n, hits, expected, paths) in sorted(by_commit.items()):
        print(f"| {commit} | {n} | {hits} ({100 * hits / n:.1f} %) | "
              f"{100 * expected / n:.1f} % | {', '.join(sorted(paths))} |")
    if gaps:
        print(f"\nAgainst Keras' epoch times in {FLAGS.logs_dir} (epochs "
              f"whose log has one line per epoch; stalled: > "
              f"{FLAGS.stall_s:g} s longer):\n")
        print("| commit | epochs | stalled | mean stall (s) | "
              "share of epoch time |")
        print("|---|---|---|---|---|")
        for commit, pairs in sorted(gaps.items()):
            stalls = [g for _, g in pairs if g > FLAGS.stall_s]
            total = sum(s for s, _ in pairs)
            lost = sum(g for _, g in pairs if g > 1.0)
            mean = f"{sum(stalls) / len(stalls):.0f}" if stalls else "—"
            print(f"| {commit} | {len(pairs)} | {len(stalls)} "
                  f"({100 * len(stalls) / len(pairs):.0f} %) | {mean} | "
                  f"{100 * lost / total:.1f} % |")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
