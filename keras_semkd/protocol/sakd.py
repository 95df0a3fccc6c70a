"""The SAKD protocols (issue #9): teacher runs, student runs, the report.

`experiments/sakd_protocol.py` is the command line; this module does the
work so that tests can drive it without importing `experiments/`.
Definitions (pairs, arms, schedules, data split) are in
`keras_semkd.configs.sakd_protocol`.
"""

import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np

from keras_semkd.configs import sakd_protocol as spec
from keras_semkd.protocol import core

TEACHER_FIELDS = ("protocol", "teacher", "epochs", "val_top1", "test_top1",
                  "wall_s", "git_commit", "date", "weights", "md5")


@dataclasses.dataclass(frozen=True)
class Options:
    results_dir: str = "results"
    runs_dir: str = os.path.join("runs", "sakd_protocol")
    data_dir: str = None
    smoke: bool = False
    #: Where shipped teacher weights are read and written (repo root).
    weights_root: str = "."


#: Smoke runs: 2 steps per epoch, 1 epoch, 256 evaluation images.
SMOKE_STEPS = 2
SMOKE_EVAL = 256


def progress(options):
    return core.Progress(os.path.join(options.runs_dir, "progress.log"))


def results_file(stage, options):
    return core.ResultsFile(
        os.path.join(options.results_dir, f"sakd_{stage}", "runs.jsonl"))


def teachers_file(options):
    return core.ResultsFile(
        os.path.join(options.results_dir, "sakd_teachers", "teachers.jsonl"),
        key_fields=("teacher",), required=TEACHER_FIELDS)


def teacher_path(model, options):
    path = spec.teacher_weights_path(model)
    if options.smoke:
        return os.path.join(options.runs_dir, "teachers",
                            os.path.basename(path))
    return os.path.join(options.weights_root, path)


def _md5(path):
    import hashlib

    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Stage definitions.
# ---------------------------------------------------------------------------
def stage_plan(stage):
    """`(pairs, arms per pair, seeds, epochs, steps_per_epoch, score_test)`
    of a stage."""
    if stage == "screening":
        s = spec.SCREENING
        return (s["pairs"], s["arms"], s["seeds"], s["epochs"],
                s["steps_per_epoch"], False)
    if stage == "confirmation":
        c = spec.CONFIRMATION
        return (c["pairs"], c["arms"], c["seeds"], spec.STUDENT_EPOCHS,
                None, True)
    if stage == "followup":
        f = spec.FOLLOWUP
        return (f["pairs"], f["arms"], f["seeds"], spec.STUDENT_EPOCHS,
                None, False)
    raise ValueError(f"Unknown stage {stage!r}")


def base_arm(stage):
    """The arm a non-confirmation stage compares every arm with
    (`arm − base`): KD for screening, the confirmed SAKD for follow-ups."""
    return spec.FOLLOWUP["base"] if stage == "followup" \
        else spec.SCREENING_BASE


def stage_recipe(stage, pair, arm, seed, options):
    _, _, _, epochs, steps, _ = stage_plan(stage)
    if options.smoke:
        epochs, steps = 1, SMOKE_STEPS
    optimizer = (spec.SCREENING["optimizer"] if stage == "screening"
                 else spec.STUDENT_OPTIMIZER)
    recipe = spec.student_recipe(pair, arm, seed, epochs=epochs,
                                 steps_per_epoch=steps, protocol=stage,
                                 optimizer=optimizer)
    if options.smoke:
        recipe = dataclasses.replace(
            recipe, data=dataclasses.replace(recipe.data,
                                             limit_eval=SMOKE_EVAL))
    return recipe


def job_id(stage, pair, arm, seed):
    return f"{stage}:{pair}:{arm}:{seed}"


def parse_job(job):
    parts = job.split(":")
    if parts[0] == "teacher" and len(parts) == 2:
        return ("teacher", parts[1])
    if len(parts) != 4:
        raise ValueError(f"Bad job id {job!r}")
    return parts[0], parts[1], parts[2], int(parts[3])


def plan_jobs(stage, options, pairs=None, arms=None, seeds=None):
    """The job ids of a stage not yet recorded in its results file, seeds
    outermost (a partial table still has every arm)."""
    s_pairs, s_arms, s_seeds, _, _, _ = stage_plan(stage)
    pairs = list(pairs or s_pairs)
    seeds = [int(s) for s in (seeds or s_seeds)]
    for p in pairs:  # unknown names fail here, before any training
        if p not in s_arms:
            raise KeyError(f"Pair {p!r} is not in the {stage} plan "
                           f"({sorted(s_arms)})")
        for a in (arms or s_arms[p]):
            spec.arm_terms(a)
    done = results_file(stage, options).done_keys()
    jobs, planned = [], {}
    for seed in seeds:
        for pair in pairs:
            for arm in (arms or s_arms[pair]):
                if (pair, arm, seed) in done:
                    continue
                # A run that does not depend on the pair (the student alone)
                # runs once; its line is shared with the other pairs.
                same = _pair_free_key(stage, pair, arm, seed, options)
                if same is not None and same in planned:
                    continue
                if same is not None:
                    planned[same] = pair
                jobs.append(job_id(stage, pair, arm, seed))
    return jobs


def _pair_free_key(stage, pair, arm, seed, options):
    """For a run without a teacher (the student alone), a key that is equal
    for every pair whose run would be the same computation (the recipe
    without its name); `None` for runs that depend on the teacher."""
    recipe = stage_recipe(stage, pair, arm, seed, options)
    if recipe.teacher is not None or recipe.terms:
        return None
    config = recipe.to_dict()
    config.pop("name")
    return json.dumps(config, sort_keys=True)


def share_pair_free_runs(stage, options, log=None):
    """Records, for every pair, the lines of teacher-free runs (the student
    alone) already run under another pair with the same recipe (but its
    name): the same computation (same student, seed, data stream and
    optimizer; checked equal where both were run), so it is run once. A
    shared line keeps the run's numbers and cost and names its source in
    `shared_from`. Returns the number of lines added."""
    pairs, s_arms, seeds, _, _, _ = stage_plan(stage)
    results = results_file(stage, options)
    records = results.records()
    done = {results.key(r) for r in records}
    by_key = {}
    for r in records:
        if r.get("shared_from"):
            continue
        key = _pair_free_key(stage, r["pair"], r["arm"], r["seed"], options)
        if key is not None:
            by_key.setdefault(key, r)
    added = 0
    for seed in seeds:
        for pair in pairs:
            for arm in s_arms[pair]:
                if (pair, arm, seed) in done:
                    continue
                key = _pair_free_key(stage, pair, arm, seed, options)
                source = by_key.get(key) if key is not None else None
                if source is None:
                    continue
                t_name, s_name = spec.PAIRS[pair]
                line = dict(source, pair=pair, teacher=t_name,
                            student=s_name, date=core.utc_now(),
                            git_commit=core.git_commit(),
                            recipe=stage_recipe(stage, pair, arm, seed,
                                                options).to_dict(),
                            shared_from={"pair": source["pair"],
                                         "date": source["date"],
                                         "git_commit": source["git_commit"]})
                results.append(line)
                added += 1
                if log:
                    log(f"shared {source['pair']}:{arm}:{seed} -> {pair}")
    return added


def job_cost(job):
    """Relative cost of a job, for the ETA (MobileNetV2 teacher steps are
    cheaper than resnet20's)."""
    kind = parse_job(job)
    if kind[0] == "teacher":
        return 3.0
    return 0.8 if kind[1] == "mbv2-r8" else 1.0


# ---------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------
def _command(script, options):
    def command(job):
        args = [sys.executable, os.path.abspath(script), f"--run_one={job}",
                f"--results_dir={_strip_smoke(options.results_dir, options)}",
                f"--runs_dir={_strip_smoke(options.runs_dir, options)}",
                f"--smoke={options.smoke}"]
        if options.data_dir:
            args.append(f"--data_dir={options.data_dir}")
        return args

    return command


def _strip_smoke(path, options):
    return path[:-len("-smoke")] if options.smoke and path.endswith(
        "-smoke") else path


def _job_log(options):
    def path(job):
        return os.path.join(options.runs_dir, "logs",
                            job.replace(":", "_") + ".txt")

    return path


def run_teachers(options, log, workers=2, threads=1, script=None):
    todo = [m for m in spec.TEACHERS
            if not os.path.exists(teacher_path(m, options))]
    log(f"teachers to train: {todo or 'none'}")
    failures = core.run_pool(
        [f"teacher:{m}" for m in todo], _command(script, options),
        workers=workers, threads_per_worker=threads, log=log,
        log_path=_job_log(options), cost=job_cost)
    if failures:
        raise SystemExit(f"teacher runs failed: {failures}")


def run_stage(stage, options, log, pairs=None, arms=None, seeds=None,
              workers=2, threads=1, script=None):
    s_pairs, _, _, _, _, _ = stage_plan(stage)
    needed = {spec.PAIRS[p][0] for p in (pairs or s_pairs)}
    missing = [m for m in needed
               if not os.path.exists(teacher_path(m, options))]
    if missing:
        if options.smoke:
            run_teachers(options, log, workers, threads, script)
        else:
            raise FileNotFoundError(
                f"Teacher weights missing for {missing}: run "
                "--stage=teachers first (or check out the shipped "
                "weights/sakd_protocol/).")
    share_pair_free_runs(stage, options, log)
    jobs = plan_jobs(stage, options, pairs, arms, seeds)
    log(f"{stage}: {len(jobs)} runs to do, {workers} at a time")
    results = results_file(stage, options)

    def recorded(job):
        _, pair, arm, seed = parse_job(job)
        return (pair, arm, seed) in results.done_keys()

    failures = core.run_pool(jobs, _command(script, options),
                             workers=workers, threads_per_worker=threads,
                             log=log, log_path=_job_log(options),
                             cost=job_cost, skip=recorded)
    share_pair_free_runs(stage, options, log)
    return failures


def build_teacher(model, options):
    """The frozen protocol teacher `model` with its shipped weights."""
    from keras_semkd.distillers import build

    teacher = build.build_model(model, 100)
    path = teacher_path(model, options)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Teacher weights {path!r} not found: run "
            "experiments/sakd_protocol.py --stage=teachers.")
    teacher.load_weights(path)
    teacher.trainable = False
    return teacher


def evaluate_top1(model, split, options, limit=None):
    """Top-1 (%) of a dict-output model on the protocol's `split`
    (`"validation"` = the carve-out, `"test"` = the official test set)."""
    from keras import ops

    from keras_semkd import data as data_lib

    ds, info = data_lib.get_dataset(
        "cifar100", split, 250, data_dir=options.data_dir,
        validation_split=spec.DATA.validation_split,
        split_seed=spec.DATA.split_seed)
    correct, total = 0, 0
    for x, y in ds:
        logits = model(x, training=False)["logits"]
        pred = ops.convert_to_numpy(ops.argmax(logits, axis=-1))
        y = np.asarray(y)
        correct += int((pred == y).sum())
        total += int(y.shape[0])
        if limit and total >= limit:
            break
    return 100.0 * correct / total, total


def run_job(job, options):
    """Runs one job in this process and appends its result line."""
    import keras

    from keras_semkd import training

    kind = parse_job(job)
    started = time.time()
    # The code this process runs is the checkout it started from: a
    # checkout during the run must not relabel the line.
    commit = core.git_commit()
    if kind[0] == "teacher":
        model = kind[1]
        recipe = spec.teacher_recipe(model)
        if options.smoke:
            recipe = dataclasses.replace(
                recipe, epochs=1, data=dataclasses.replace(
                    recipe.data, limit_train=SMOKE_STEPS * 64,
                    limit_eval=SMOKE_EVAL))
        run_dir = os.path.join(options.runs_dir, f"teacher-{model}")
        runner = training.Runner(recipe, run_dir, checkpoint_every=200,
                                 data_dir=options.data_dir)
        report = runner.run(verbose=2)
        limit = SMOKE_EVAL if options.smoke else None
        test_top1, n_test = evaluate_top1(runner.student, "test", options,
                                          limit)
        path = teacher_path(model, options)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        shutil.copyfile(os.path.join(run_dir, "checkpoints",
                                     "last.weights.h5"), path)
        teachers_file(options).append({
            "protocol": "sakd_teachers", "teacher": model,
            "epochs": recipe.epochs,
            "val_top1": 100.0 * report["last"]["top1"],
            "test_top1": test_top1, "test_images": n_test,
            "wall_s": round(time.time() - started, 1),
            "epoch_s": [round(h["seconds"], 1) for h in report["history"]],
            "git_commit": commit, "date": core.utc_now(),
            "weights": spec.teacher_weights_path(model), "md5": _md5(path),
            "recipe": recipe.to_dict(),
        })
        return
    stage, pair, arm, seed = kind
    recipe = stage_recipe(stage, pair, arm, seed, options)
    if recipe.mixed_precision:
        keras.mixed_precision.set_global_policy(recipe.mixed_precision)
    teacher = (build_teacher(recipe.teacher, options)
               if recipe.teacher else None)
    run_dir = os.path.join(options.runs_dir, stage, pair, arm, f"seed{seed}")
    runner = training.Runner(recipe, run_dir, teacher=teacher,
                             checkpoint_every=200, data_dir=options.data_dir)
    report = runner.run(verbose=2)
    _, _, _, _, _, score_test = stage_plan(stage)
    test_top1 = None
    if score_test:
        limit = SMOKE_EVAL if options.smoke else None
        test_top1, _ = evaluate_top1(runner.student, "test", options, limit)
    t_name, s_name = spec.PAIRS[pair]
    results_file(stage, options).append({
        "protocol": f"sakd_{stage}", "pair": pair, "teacher": t_name,
        "student": s_name, "arm": arm, "seed": seed,
        "epochs": recipe.epochs,
        "steps_per_epoch": runner.steps_per_epoch,
        "val_top1": 100.0 * report["last"]["top1"],
        "val_top1_best": 100.0 * report["best_top1"],
        "test_top1": test_top1,
        # This process's time: less than the run's when it was resumed.
        "wall_s": round(time.time() - started, 1),
        "resumed_at": report["resumed_at"],
        "epoch_s": [round(h["seconds"], 1) for h in report["history"]],
        "epoch_steps": [h.get("steps") for h in report["history"]],
        "val_curve": [round(100.0 * h["val_top1"], 2)
                      for h in report["history"]],
        "git_commit": commit, "date": core.utc_now(),
        "recipe": recipe.to_dict(),
    })
    share_pair_free_runs(stage, options)


# ---------------------------------------------------------------------------
# The report: tables, paired statistics, plots, from runs.jsonl alone.
# ---------------------------------------------------------------------------
def _by_arm(records, pair, metric):
    out = {}
    for r in records:
        if r["pair"] == pair and r.get(metric) is not None:
            out.setdefault(r["arm"], {})[r["seed"]] = float(r[metric])
    return out


def _full_epoch_seconds(record):
    """Mean seconds of the record's whole epochs: an epoch resumed mid-way
    times only its remaining steps, so it is left out where the line says
    so (`epoch_steps`, recorded since 2026-12-06; older lines count every
    epoch, and the per-arm median over runs damps them)."""
    secs = record.get("epoch_s") or []
    steps = record.get("epoch_steps") or [None] * len(secs)
    full = [s for s, n in zip(secs, steps)
            if n is None or n == record.get("steps_per_epoch", n)]
    return float(np.mean(full)) if full else None


def summarize(records, stage):
    """Per pair: arm statistics and SAKD's paired comparisons.

    Returns a JSON-able dict. The metric is test top-1 for the
    confirmation protocol, validation top-1 for screening.
    """
    metric = "test_top1" if stage == "confirmation" else "val_top1"
    reference = spec.REFERENCE_ARM
    out = {"metric": metric, "pairs": {}}
    for pair in sorted({r["pair"] for r in records}):
        arms = _by_arm(records, pair, metric)
        vals = _by_arm(records, pair, "val_top1")
        rows = {}
        for arm, seeds in arms.items():
            m, s = core.mean_std(list(seeds.values()))
            vm, vs = core.mean_std(list(vals.get(arm, {}).values()) or [0])
            secs = [_full_epoch_seconds(r) for r in records
                    if r["pair"] == pair and r["arm"] == arm]
            secs = [x for x in secs if x is not None]
            rows[arm] = {"n": len(seeds), "mean": m, "std": s,
                         "val_mean": vm, "val_std": vs,
                         "seconds_per_epoch": float(np.median(secs))
                         if secs else None,
                         "per_seed": seeds}
        comparisons = {}
        if stage == "screening":
            # Screening: every design against logit KD (arm − kd).
            if spec.SCREENING_BASE in arms:
                for arm in arms:
                    if arm != spec.SCREENING_BASE:
                        comparisons[arm] = core.paired_comparison(
                            arms[arm], arms[spec.SCREENING_BASE])
        elif stage == "followup":
            # Follow-ups: every arm against the confirmed SAKD (arm − sakd),
            # on validation, paired by seed with the confirmation's runs.
            base = base_arm(stage)
            if base in arms:
                for arm in arms:
                    if arm != base:
                        comparisons[arm] = core.paired_comparison(
                            arms[arm], arms[base])
        elif reference in arms:
            for arm in arms:
                if arm != reference:
                    comparisons[arm] = core.paired_comparison(
                        arms[reference], arms[arm])
        verdict = None
        if reference in arms and stage == "confirmation":
            verdict = win_verdict(comparisons, pair)
        out["pairs"][pair] = {"arms": rows, "comparisons": comparisons,
                              "verdict": verdict}
    out["completeness"] = completeness(records, stage)
    return out


def completeness(records, stage):
    """How much of a stage's plan the records hold: `{"recorded",
    "planned", "seeds", "min_seeds", "complete_pairs"}` over the planned
    (pair, arm, seed) runs (`seeds`: planned seeds per arm;
    `complete_pairs`: the pairs with every planned run recorded)."""
    pairs, arms, seeds, _, _, _ = stage_plan(stage)
    planned = {(p, a, int(s)) for p in pairs for a in arms[p] for s in seeds}
    have = {(r["pair"], r["arm"], int(r["seed"])) for r in records
            if r.get("protocol", f"sakd_{stage}") == f"sakd_{stage}"}
    per_arm = [sum((p, a, int(s)) in have for s in seeds)
               for p in pairs for a in arms[p]]
    missing = planned - have
    return {"recorded": len(planned & have), "planned": len(planned),
            "seeds": len(seeds), "min_seeds": min(per_arm) if per_arm else 0,
            "complete_pairs": [p for p in pairs
                               if not any(m[0] == p for m in missing)]}


def win_verdict(comparisons, pair):
    """Issue #9's rule (`spec.WIN_RULE`) applied to one pair's paired
    comparisons.

    Returns `{"wins", "reasons", "out_of_reach"}`. `out_of_reach` maps the
    baselines against which SAKD is already not positive on more seeds
    than the rule allows out of the planned ones to that count: the rule cannot be met
    whatever the missing seeds give, so a partial table is already
    decided against a win. (Means and p-values of a partial table decide
    nothing, so only the seed count is used for this.)
    """
    rule = spec.WIN_RULE
    planned = len(spec.CONFIRMATION["seeds"])
    reasons, out_of_reach = [], {}
    ok = True
    for arm in rule["baselines"]:
        c = comparisons.get(arm)
        if c is None:
            reasons.append(f"{arm}: not run")
            ok = False
            continue
        good = (c["mean_diff"] >= rule["margin"] and c["p"] < rule["p"]
                and c["wins"] >= rule["wins"] and c["n"] >= planned)
        ok &= good
        if c["n"] - c["wins"] > planned - rule["wins"]:
            out_of_reach[arm] = c["n"] - c["wins"]
        reasons.append(f"{arm}: {c['mean_diff']:+.2f}, p={c['p']:.3f}, "
                       f"{c['wins']}/{c['n']} {'ok' if good else 'no'}")
    for arm in spec.CONFIRMATION["ablations"].get(pair, ()):
        c = comparisons.get(arm)
        if c is None:
            continue
        good = c["mean_diff"] > 0
        ok &= good
        reasons.append(f"{arm}: {c['mean_diff']:+.2f} "
                       f"{'ok' if good else 'no'}")
    return {"wins": bool(ok), "reasons": reasons,
            "out_of_reach": out_of_reach}


def markdown(summary, stage):
    metric = summary["metric"]
    lines = []
    done = _partial(summary)
    if done:
        lines.append(
            f"**Partial: {done['recorded']} of the {done['planned']} planned "
            "runs are recorded** (the least-run arm has "
            f"{done['min_seeds']} of {done['seeds']} seeds). "
            "Means, paired differences, p-values and "
            "wins cover only the seeds recorded so far; "
            + ("the verdict applies the rule (which needs 5 seeds) to them "
               "and is not the protocol's result."
               if stage == "confirmation" else
               "they are provisional.") + "\n")
    for pair, data in summary["pairs"].items():
        t, s = spec.PAIRS[pair]
        lines.append(f"**{pair}** ({t} → {s}), {metric.replace('_', ' ')} "
                     "(%), mean ± std over seeds:\n")
        diff_name = (f"{spec.REFERENCE_ARM} − arm" if stage == "confirmation"
                     else f"arm − {base_arm(stage)}")
        head = "| arm | n | " + ("test top-1 | val top-1 |"
                               if stage == "confirmation" else
                               "val top-1 |") + \
            f" {diff_name} | one-sided p | wins | s/epoch |"
        lines.append(head)
        lines.append("|" + "---|" * (head.count("|") - 1))
        order = sorted(data["arms"],
                       key=lambda a: -data["arms"][a]["mean"])
        for arm in order:
            r = data["arms"][arm]
            c = data["comparisons"].get(arm)
            diff = (f"{c['mean_diff']:+.2f} ± {c['std_diff']:.2f}"
                    if c else "—")
            p = f"{c['p']:.3f}" if c and c["p"] == c["p"] else "—"
            wins = f"{c['wins']}/{c['n']}" if c else "—"
            sec = (f"{r['seconds_per_epoch']:.0f}"
                   if r["seconds_per_epoch"] else "—")
            cols = f"{r['mean']:.2f} ± {r['std']:.2f} |"
            if stage == "confirmation":
                cols += f" {r['val_mean']:.2f} ± {r['val_std']:.2f} |"
            lines.append(f"| {arm} | {r['n']} | {cols} {diff} | {p} | "
                         f"{wins} | {sec} |")
        if data.get("verdict"):
            v = data["verdict"]
            lines.append("")
            lines.append(f"Verdict ({pair}): SAKD "
                         f"{'WINS' if v['wins'] else 'does not win'} by the "
                         "issue's rule — " + "; ".join(v["reasons"]) + ".")
            if done and pair in done["complete_pairs"]:
                lines.append("")
                lines.append(f"Every planned run of {pair} is recorded: "
                             "its verdict is final.")
            elif v.get("out_of_reach") and done:
                need = spec.WIN_RULE["wins"]
                planned = len(spec.CONFIRMATION["seeds"])
                against = ", ".join(
                    f"{arm} ({lost} seeds not positive)"
                    for arm, lost in v["out_of_reach"].items())
                lines.append("")
                lines.append(
                    f"Already decided ({pair}): SAKD cannot win by the rule "
                    f"whatever the missing seeds give: it needs {need} of "
                    f"{planned} seeds positive against each baseline, and "
                    f"against {against} that is out of reach.")
        lines.append("")
    return "\n".join(lines)


def _partial(summary):
    """The summary's completeness when it covers only part of the plan,
    else None."""
    done = summary.get("completeness")
    return done if done and done["recorded"] < done["planned"] else None


def _partial_tag(summary):
    done = _partial(summary)
    return (f" (partial, {done['recorded']}/{done['planned']} runs)"
            if done else "")


def plot(summary, stage, path):
    """One panel per pair: every seed as a dot, mean ± std as a bar, arms
    sorted by mean; the reference arm in blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(summary["pairs"])
    if not pairs:
        return
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.5 * len(pairs), 4.2),
                             squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        arms = summary["pairs"][pair]["arms"]
        order = sorted(arms, key=lambda a: arms[a]["mean"])
        for i, arm in enumerate(order):
            r = arms[arm]
            color = ("#1f77b4" if arm.startswith("sakd") else
                     "#888888" if arm == "student" else "#ff7f0e")
            ax.barh(i, r["mean"], xerr=r["std"], color=color, alpha=0.7,
                    capsize=3)
            ax.scatter(list(r["per_seed"].values()),
                       [i] * len(r["per_seed"]), color="black", s=9,
                       zorder=3)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([f"{a} (n={arms[a]['n']})" for a in order],
                           fontsize=8)
        lo = min(min(arms[a]["per_seed"].values()) for a in order)
        hi = max(max(arms[a]["per_seed"].values()) for a in order)
        ax.set_xlim(lo - 2, hi + 1)
        t, s = spec.PAIRS[pair]
        ax.set_title(f"{stage}{_partial_tag(summary)}: {t} → {s}",
                     fontsize=10)
        ax.set_xlabel(f"{summary['metric'].replace('_', ' ')} (%)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_paired(summary, stage, path):
    """Per pair, the per-seed paired differences of every comparison (dots)
    with their mean and a 95 % t interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    pairs = [p for p in summary["pairs"]
             if summary["pairs"][p]["comparisons"]]
    if not pairs:
        return
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.5 * len(pairs), 4.2),
                             squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        data = summary["pairs"][pair]
        comps = data["comparisons"]
        order = sorted(comps, key=lambda a: comps[a]["mean_diff"])
        for i, arm in enumerate(order):
            c = comps[arm]
            if stage == "confirmation":
                a = data["arms"][spec.REFERENCE_ARM]["per_seed"]
                b = data["arms"][arm]["per_seed"]
            else:
                a = data["arms"][arm]["per_seed"]
                b = data["arms"][base_arm(stage)]["per_seed"]
            diffs = [a[s] - b[s] for s in c["seeds"]]
            ax.scatter(diffs, [i] * len(diffs), color="black", s=10,
                       zorder=3)
            if c["n"] > 1 and c["std_diff"] == c["std_diff"]:
                half = stats.t.ppf(0.975, c["n"] - 1) * c["std_diff"] / \
                    np.sqrt(c["n"])
                ax.errorbar(c["mean_diff"], i, xerr=half, fmt="o",
                            color="#1f77b4", capsize=3)
        ax.axvline(0.0, color="grey", lw=1)
        if stage == "confirmation":
            ax.axvline(0.5, color="grey", lw=1, ls="--")
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels(order, fontsize=8)
        t, s = spec.PAIRS[pair]
        what = (f"{spec.REFERENCE_ARM} − arm" if stage == "confirmation"
                else f"arm − {base_arm(stage)}")
        ax.set_xlabel(f"paired difference, {what} "
                      f"({summary['metric'].replace('_', ' ')}, points)")
        ax.set_title(f"{stage}{_partial_tag(summary)}: {t} → {s}; "
                     "mean and 95 % CI", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(records):
    """Per pair and arm, the validation top-1 after each epoch, and per
    pair SAKD's (`spec.REFERENCE_ARM`) paired per-epoch difference to
    every other arm.

    Returns `{pair: {"arms": {arm: {"epochs", "mean", "n"}}, "diffs":
    {arm: {"epochs", "mean", "n"}}}}` over the records carrying a
    `val_curve`; differences pair seeds as the tables do."""
    out = {}
    for pair in sorted({r["pair"] for r in records}):
        by_arm = {}
        for r in records:
            if r["pair"] == pair and r.get("val_curve"):
                by_arm.setdefault(r["arm"], {})[r["seed"]] = np.asarray(
                    r["val_curve"], dtype="float64")
        arms = {}
        for arm, seeds in by_arm.items():
            length = min(len(c) for c in seeds.values())
            stack = np.stack([c[:length] for c in seeds.values()])
            arms[arm] = {"epochs": list(range(1, length + 1)),
                         "mean": stack.mean(axis=0).tolist(),
                         "n": len(seeds)}
        diffs = {}
        reference = by_arm.get(spec.REFERENCE_ARM)
        if reference is not None:
            for arm, seeds in by_arm.items():
                common = sorted(set(seeds) & set(reference))
                if arm == spec.REFERENCE_ARM or not common:
                    continue
                length = min(min(len(seeds[s]), len(reference[s]))
                             for s in common)
                d = np.stack([reference[s][:length] - seeds[s][:length]
                              for s in common])
                diffs[arm] = {"epochs": list(range(1, length + 1)),
                              "mean": d.mean(axis=0).tolist(),
                              "n": len(common)}
        out[pair] = {"arms": arms, "diffs": diffs}
    return out


def plot_curves(records, stage, path, summary=None):
    """Per pair: the mean validation curve of every arm (top) and SAKD's
    mean paired per-epoch difference to each arm (bottom). Shows at which
    epochs a gap opens or closes, which the end-of-run tables cannot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(records)
    if not data:
        return
    tag = _partial_tag(summary) if summary else ""
    # One color per arm in every panel.
    names = sorted({arm for c in data.values() for arm in c["arms"]})
    palette = plt.get_cmap("tab10")
    colors = {arm: palette(i % 10) for i, arm in enumerate(names)}
    fig, axes = plt.subplots(2, len(data), figsize=(6.5 * len(data), 7.5),
                             squeeze=False)
    for col, (pair, c) in enumerate(data.items()):
        top, bottom = axes[0][col], axes[1][col]
        for arm in sorted(c["arms"]):
            a = c["arms"][arm]
            top.plot(a["epochs"], a["mean"], marker=".", color=colors[arm],
                     lw=2.2 if arm == spec.REFERENCE_ARM else 1.2,
                     label=f"{arm} (n={a['n']})")
        for arm in sorted(c["diffs"]):
            d = c["diffs"][arm]
            bottom.plot(d["epochs"], d["mean"], marker=".",
                        color=colors[arm], label=f"{arm} (n={d['n']})")
        bottom.axhline(0.0, color="grey", lw=1)
        t, s = spec.PAIRS[pair]
        top.set_title(f"{stage}{tag}: {t} → {s}", fontsize=10)
        top.set_ylabel("validation top-1 (%), mean over seeds")
        bottom.set_ylabel(f"{spec.REFERENCE_ARM} − arm, validation "
                          "(points, paired mean)")
        bottom.set_xlabel("epoch")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(stage, options, log=print, docs=()):
    """Writes a stage's table, summary and plots from its `runs.jsonl`;
    pastes the table into the marked block of each Markdown file in `docs`
    (`paste_table`)."""
    records = results_file(stage, options).records()
    if not records:
        log(f"{stage}: no recorded runs")
        return None
    if stage == "followup":
        # The reference arms are the confirmation's runs of the same seeds
        # (validation top-1 only; their test numbers are not read here).
        pairs = {r["pair"] for r in records}
        seeds = {r["seed"] for r in records}
        records = records + [
            dict(r, test_top1=None)
            for r in results_file("confirmation", options).records()
            if r["pair"] in pairs and r["seed"] in seeds
            and r["arm"] in spec.FOLLOWUP["compare_to"]]
    summary = summarize(records, stage)
    out = os.path.join(options.results_dir, f"sakd_{stage}")
    text = markdown(summary, stage)
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=str)
    plot(summary, stage, os.path.join(out, f"sakd_{stage}.png"))
    plot_paired(summary, stage, os.path.join(out, f"sakd_{stage}_paired.png"))
    if stage == "confirmation":
        plot_curves(records, stage,
                    os.path.join(out, f"sakd_{stage}_curves.png"), summary)
    for doc in docs:
        if paste_table(doc, stage, text):
            log(f"{stage}: table pasted into {doc}")
    log("\n" + text)
    return summary


def table_markers(stage):
    """The HTML comments that enclose a stage's generated table in a
    Markdown document (`paste_table`)."""
    return (f"<!-- sakd_{stage}:table:start -->",
            f"<!-- sakd_{stage}:table:end -->")


def paste_table(path, stage, text):
    """Replaces what lies between `table_markers(stage)` in the Markdown
    file `path` with `text`; returns False when the file has no such block.
    Raises ValueError on a start marker without its end."""
    start, end = table_markers(stage)
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    i = doc.find(start)
    if i < 0:
        return False
    j = doc.find(end, i)
    if j < 0:
        raise ValueError(f"{path}: {start} has no {end}")
    doc = doc[:i + len(start)] + "\n" + text.strip() + "\n" + doc[j:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)
    return True
