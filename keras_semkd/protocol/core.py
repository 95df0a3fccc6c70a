"""Long accuracy protocols that resume anywhere: result lines, a worker
pool of run processes, paired statistics.

A protocol is a list of runs, each identified by a key (e.g. pair, arm,
seed). Every finished run appends one JSON line to a results file
(`results/<protocol>/runs.jsonl`, committed); a protocol command skips the
runs already recorded there, so running the same command on any fresh
clone continues where the file ends, and the tables and plots are made from
that file alone.

Runs go a few at a time, each in a separate Python process with its own
thread settings (on 2 cores, two single-thread processes give more images
per second than one two-thread process for CIFAR-sized networks).
"""

import datetime
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

#: Fields every result line carries (issue #9's contract).
REQUIRED_FIELDS = ("protocol", "pair", "teacher", "student", "arm", "seed",
                   "epochs", "val_top1", "test_top1", "wall_s",
                   "git_commit", "date")


def git_commit(path=None):
    """The commit of the working tree at `path` (`+dirty` if modified), or
    `"unknown"` outside git."""
    cwd = path or os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, check=True,
            capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty.strip() else "")


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


class ResultsFile:
    """An append-only JSON-lines file of finished runs.

    Each line is one run; `key_fields` identify a run (a later line with the
    same key does not replace an earlier one: `records()` keeps the first,
    so a result is never silently overwritten).
    """

    def __init__(self, path, key_fields=("pair", "arm", "seed"),
                 required=REQUIRED_FIELDS):
        self.path = path
        self.key_fields = tuple(key_fields)
        self.required = tuple(required)

    def key(self, record):
        return tuple(record[k] for k in self.key_fields)

    def records(self):
        """The recorded runs, first line per key, in file order. A line that
        is not valid JSON (a run killed while writing) raises, naming it."""
        if not os.path.exists(self.path):
            return []
        out, seen = [], set()
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{self.path}:{number} is not a JSON line ({e}); "
                        "remove or repair it.") from None
                k = self.key(record)
                if k not in seen:
                    seen.add(k)
                    out.append(record)
        return out

    def done_keys(self):
        return {self.key(r) for r in self.records()}

    def append(self, record):
        """Appends one line (a single `write` on an `O_APPEND` file, then
        fsync), so concurrent run processes never interleave lines."""
        missing = [k for k in self.required if k not in record]
        if missing:
            raise ValueError(
                f"A result line needs the fields {list(self.required)}. "
                f"Missing: {missing}")
        for k in self.key_fields:
            if k not in record:
                raise ValueError(f"A result line needs its key field {k!r}.")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)),
                    exist_ok=True)
        line = json.dumps(record, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)


def fmt_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Timestamped progress lines to stdout and a log file."""

    def __init__(self, path):
        self.path = path
        self.started = time.time()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def __call__(self, message):
        line = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} "
                f"[{fmt_duration(time.time() - self.started)}] {message}")
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def run_pool(jobs, command, *, workers=2, threads_per_worker=1, log=print,
             log_path=None, cost=None, skip=None):
    """Runs `jobs` as separate processes, `workers` at a time.

    Args:
        jobs: list of job ids (strings).
        command: `job_id -> argv` of the process that runs one job.
        workers: processes at a time.
        threads_per_worker: TF intra-op threads of each process.
        log: progress callback (one line per started/finished job, ETA).
        log_path: `job_id -> path` of the job's stdout/stderr log.
        cost: optional `job_id -> relative cost` for the ETA.
        skip: optional `job_id -> bool`, asked right before a job starts:
            `True` drops it (e.g. another process has recorded it since the
            job list was made).

    Returns:
        list of the job ids that failed (non-zero exit).
    """
    env = dict(os.environ)
    env["TF_NUM_INTRAOP_THREADS"] = str(threads_per_worker)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cost = cost or (lambda job: 1.0)
    pending = list(jobs)
    total = len(pending)
    running, failures = {}, []
    done_cost, done_seconds, finished = 0.0, 0.0, 0
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop(0)
            if skip is not None and skip(job):
                log(f"skip   {job} (recorded meanwhile)")
                continue
            out = subprocess.DEVNULL
            if log_path is not None:
                path = log_path(job)
                os.makedirs(os.path.dirname(os.path.abspath(path)),
                            exist_ok=True)
                out = open(path, "a", encoding="utf-8")
            proc = subprocess.Popen(command(job), stdout=out,
                                    stderr=subprocess.STDOUT, env=env)
            running[proc] = (job, time.time(), out)
            log(f"start  {job}")
        time.sleep(2)
        for proc in [p for p in running if p.poll() is not None]:
            job, started, out = running.pop(proc)
            if out is not subprocess.DEVNULL:
                out.close()
            finished += 1
            took = time.time() - started
            if proc.returncode != 0:
                failures.append(job)
                where = f"; see {log_path(job)}" if log_path else ""
                log(f"FAILED {job} (exit {proc.returncode}){where}")
                continue
            done_cost += cost(job)
            done_seconds += took
            left = sum(cost(j) for j in pending) + sum(
                cost(j) for j, _, _ in running.values())
            eta = done_seconds / max(done_cost, 1e-9) * left / workers
            log(f"done   {job} in {fmt_duration(took)} "
                f"[{finished}/{total}, ETA {fmt_duration(eta)}]")
    return failures


# ---------------------------------------------------------------------------
# Statistics over paired seeds.
# ---------------------------------------------------------------------------
def mean_std(values):
    """`(mean, std)` with the sample standard deviation (ddof 1; 0 for
    one value)."""
    values = np.asarray(values, dtype="float64")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std


def paired_comparison(a, b):
    """Compares arm `a` with arm `b` over paired seeds.

    Args:
        a, b: `{seed: value}` dicts; only seeds present in both count.

    Returns:
        dict with `n`, `mean_diff` (a − b), `std_diff`, `wins` (seeds with
        a > b), `t` and `p` (one-sided paired t-test of mean(a − b) > 0;
        `nan` when fewer than 2 pairs or zero spread).
    """
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    diffs = np.asarray([a[s] - b[s] for s in seeds], dtype="float64")
    out = {"n": len(seeds), "seeds": seeds,
           "mean_diff": float(diffs.mean()) if seeds else float("nan"),
           "std_diff": float(diffs.std(ddof=1)) if len(seeds) > 1 else
           float("nan"),
           "wins": int((diffs > 0).sum()), "t": float("nan"),
           "p": float("nan")}
    if len(seeds) > 1 and out["std_diff"] > 0:
        t = out["mean_diff"] / (out["std_diff"] / math.sqrt(len(seeds)))
        out["t"] = float(t)
        out["p"] = float(stats.t.sf(t, df=len(seeds) - 1))
    elif len(seeds) > 1:
        # Every difference equal: the sign decides.
        out["p"] = 0.0 if out["mean_diff"] > 0 else 1.0
    return out


def python_command(script, *args):
    return [sys.executable, os.path.abspath(script), *args]
