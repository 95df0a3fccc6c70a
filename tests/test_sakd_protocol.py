"""The SAKD protocols (issue #9): result lines, resume by skipping recorded
runs, paired statistics, and the paired-seed guarantee on the real
CIFAR-100 recipes."""

import json
import os

import numpy as np
import pytest

from keras_semkd.configs import sakd_protocol as spec
from keras_semkd.protocol import core
from keras_semkd.protocol import sakd as runs


def _line(pair="mbv2-r8", arm="kd", seed=0, **extra):
    record = {"protocol": "sakd_confirmation", "pair": pair,
              "teacher": spec.PAIRS[pair][0], "student": spec.PAIRS[pair][1],
              "arm": arm, "seed": seed, "epochs": 10, "val_top1": 40.0,
              "test_top1": 39.0, "wall_s": 1.0, "git_commit": "x",
              "date": "2026-12-02T00:00:00Z"}
    record.update(extra)
    return record


def test_results_file_appends_and_keeps_the_first_line(tmp_path):
    f = core.ResultsFile(os.path.join(tmp_path, "r", "runs.jsonl"))
    assert f.records() == []
    f.append(_line(seed=0, test_top1=30.0))
    f.append(_line(seed=1))
    f.append(_line(seed=0, test_top1=99.0))  # a duplicate never overwrites
    records = f.records()
    assert [r["seed"] for r in records] == [0, 1]
    assert records[0]["test_top1"] == 30.0
    assert f.done_keys() == {("mbv2-r8", "kd", 0), ("mbv2-r8", "kd", 1)}
    with pytest.raises(ValueError, match="Missing: \\['test_top1'\\]"):
        bad = _line()
        del bad["test_top1"]
        f.append(bad)


def test_a_torn_line_is_reported_with_its_number(tmp_path):
    path = os.path.join(tmp_path, "runs.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps(_line()) + "\n" + '{"pair": "mb')
    with pytest.raises(ValueError, match="runs.jsonl:2 is not a JSON line"):
        core.ResultsFile(path).records()


def test_plan_skips_recorded_runs_seeds_outermost(tmp_path):
    options = runs.Options(results_dir=str(tmp_path))
    jobs = runs.plan_jobs("confirmation", options)
    # The student alone is one run per seed, shared by both pairs.
    n_arms = sum(len(a) for a in spec.CONFIRMATION["arms"].values()) - 1
    assert len(jobs) == n_arms * len(spec.CONFIRMATION["seeds"])
    assert all(j.endswith(":0") for j in jobs[:n_arms])
    assert "confirmation:mbv2-r8:student:0" in jobs
    assert "confirmation:r20-r8:student:0" not in jobs
    f = runs.results_file("confirmation", options)
    f.append(_line(pair="r20-r8", arm="kd", seed=0))
    left = runs.plan_jobs("confirmation", options)
    assert len(left) == len(jobs) - 1
    assert "confirmation:r20-r8:kd:0" not in left
    with pytest.raises(KeyError, match="Unknown protocol arm"):
        runs.plan_jobs("confirmation", options, arms=["nope"])


def test_student_alone_runs_once_and_is_shared_by_the_pairs(tmp_path):
    options = runs.Options(results_dir=str(tmp_path))
    f = runs.results_file("confirmation", options)
    f.append(_line(pair="mbv2-r8", arm="student", seed=1, test_top1=43.2))
    f.append(_line(pair="mbv2-r8", arm="kd", seed=1))
    assert runs.share_pair_free_runs("confirmation", options) == 1
    shared = [r for r in f.records() if r["pair"] == "r20-r8"]
    assert len(shared) == 1  # the student alone only, not KD
    line = shared[0]
    assert (line["arm"], line["seed"], line["test_top1"]) == (
        "student", 1, 43.2)
    assert line["teacher"] == "resnet20"
    assert line["shared_from"]["pair"] == "mbv2-r8"
    assert line["recipe"]["name"] == "sakd_confirmation-r20-r8-student"
    # Its recipe is the source run's but for the name.
    source = runs.stage_recipe("confirmation", "mbv2-r8", "student", 1,
                               options).to_dict()
    assert {**line["recipe"], "name": source["name"]} == source
    left = runs.plan_jobs("confirmation", options)
    assert not any(j.endswith(":student:1") for j in left)
    assert runs.share_pair_free_runs("confirmation", options) == 0


def test_paired_comparison_matches_scipy():
    from scipy import stats

    a = {0: 41.0, 1: 42.5, 2: 40.2, 3: 43.1, 4: 41.9}
    b = {0: 40.1, 1: 41.9, 2: 40.6, 3: 42.0, 4: 41.0, 9: 10.0}
    c = core.paired_comparison(a, b)
    seeds = [0, 1, 2, 3, 4]
    want = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds],
                           alternative="greater")
    assert c["n"] == 5 and c["wins"] == 4
    np.testing.assert_allclose(c["mean_diff"], np.mean(
        [a[s] - b[s] for s in seeds]))
    np.testing.assert_allclose(c["p"], want.pvalue, rtol=1e-10)
    np.testing.assert_allclose(c["t"], want.statistic, rtol=1e-10)


def test_summary_verdict_follows_the_issue_rule():
    records = []
    base = {"kd": 40.0, "fitnet": 40.2, "crd": 39.8,
            "sakd_no_branch": 40.5, "sakd_no_alignment": 40.4}
    noise = [0.1, -0.2, 0.3, 0.0, -0.1]
    for seed in range(5):
        for arm, value in base.items():
            records.append(_line(arm=arm, seed=seed,
                                 test_top1=value + noise[seed]))
        # SAKD: +1 over KD on every seed but one (+0.2 there)
        bump = 0.2 if seed == 2 else 1.2
        records.append(_line(arm="sakd", seed=seed,
                             test_top1=40.0 + noise[seed] + bump))
    summary = runs.summarize(records, "confirmation")
    verdict = summary["pairs"]["mbv2-r8"]["verdict"]
    assert verdict["wins"], verdict
    # remove the margin over FitNet: no longer a win
    for r in records:
        if r["arm"] == "fitnet":
            r["test_top1"] += 0.8
    verdict = runs.summarize(records, "confirmation")["pairs"]["mbv2-r8"][
        "verdict"]
    assert not verdict["wins"]
    assert any(reason.startswith("fitnet") and reason.endswith("no")
               for reason in verdict["reasons"])
    text = runs.markdown(runs.summarize(records, "confirmation"),
                         "confirmation")
    assert "| sakd | 5 |" in text and "does not win" in text


def test_a_partial_table_says_so_and_a_complete_one_does_not():
    pairs, arms, seeds, _, _, _ = runs.stage_plan("confirmation")
    records = [_line(pair=p, arm=a, seed=s, test_top1=40.0 + s)
               for p in pairs for a in arms[p] for s in seeds]
    summary = runs.summarize(records, "confirmation")
    assert summary["completeness"] == {
        "recorded": len(records), "planned": len(records),
        "seeds": len(seeds), "min_seeds": len(seeds),
        "complete_pairs": list(pairs)}
    assert "Partial" not in runs.markdown(summary, "confirmation")
    dropped = [r for r in records
               if not (r["arm"] == "crd" and r["seed"] == seeds[-1])]
    summary = runs.summarize(dropped, "confirmation")
    done = summary["completeness"]
    assert done["recorded"] == len(records) - len(pairs)
    assert done["min_seeds"] == len(seeds) - 1
    assert done["complete_pairs"] == []
    text = runs.markdown(summary, "confirmation")
    assert text.startswith(
        f"**Partial: {done['recorded']} of the {len(records)} planned runs "
        f"are recorded** (the least-run arm has {len(seeds) - 1} of "
        f"{len(seeds)} seeds).")


def test_every_recipe_of_the_plans_resolves():
    for stage in ("screening", "confirmation", "followup"):
        pairs, arms, seeds, _, _, _ = runs.stage_plan(stage)
        for pair in pairs:
            for arm in arms[pair]:
                recipe = runs.stage_recipe(stage, pair, arm, 0,
                                           runs.Options())
                assert recipe.data.split_seed == 0
                assert recipe.data.validation_split == 0.1
                assert (recipe.teacher is None) == (arm == "student")


def _cifar_available():
    from keras_semkd.data import paths

    return paths.default_cifar100_dir() is not None


@pytest.mark.skipif(not _cifar_available(), reason="no CIFAR-100 copy")
def test_paired_seeds_same_student_init_and_data_stream(tmp_path):
    """Within a seed every arm starts from the same student weights and
    sees the same batches (the issue's paired-seed guarantee)."""
    from keras_semkd import training
    from keras_semkd.distillers import build

    arms = ("student", "kd", "crd") + tuple(
        a for a in spec.CONFIRMATION["arms"]["mbv2-r8"]
        if a.startswith("sakd"))[:1]
    teacher = build.build_model("MobileNetV2", 100)
    weights, batches = {}, {}
    for arm in arms:
        recipe = spec.student_recipe("mbv2-r8", arm, 3)
        runner = training.Runner(recipe, os.path.join(tmp_path, arm),
                                 teacher=None if arm == "student" else
                                 teacher)
        runner._build()
        weights[arm] = [np.array(w) for w in runner.student.weights]
        ds, _ = runner._datasets(1)
        x, y = next(iter(ds))
        batches[arm] = (np.array(x), np.array(
            y["label"] if isinstance(y, dict) else y))
    ref = arms[0]
    for arm in arms[1:]:
        assert len(weights[arm]) == len(weights[ref])
        for a, b in zip(weights[arm], weights[ref]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(batches[arm][0], batches[ref][0])
        np.testing.assert_array_equal(batches[arm][1], batches[ref][1])
    # another seed: other weights
    recipe = spec.student_recipe("mbv2-r8", "kd", 4)
    runner = training.Runner(recipe, os.path.join(tmp_path, "s4"),
                             teacher=teacher)
    runner._build()
    assert any(not np.array_equal(np.array(a), b) for a, b in
               zip(runner.student.weights, weights["kd"]))


def test_report_writes_table_summary_and_plots(tmp_path):
    options = runs.Options(results_dir=str(tmp_path))
    f = runs.results_file("screening", options)
    for seed in range(3):
        for arm, v in (("kd", 40.0), ("twin", 41.0), ("probe", 39.5)):
            f.append(_line(arm=arm, seed=seed, val_top1=v + 0.1 * seed,
                           test_top1=None, epoch_s=[10.0, 12.0]))
    summary = runs.report("screening", options, log=lambda *_: None)
    out = os.path.join(tmp_path, "sakd_screening")
    for name in ("table.md", "summary.json", "sakd_screening.png",
                 "sakd_screening_paired.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    twin = summary["pairs"]["mbv2-r8"]["comparisons"]["twin"]
    assert twin["mean_diff"] == pytest.approx(1.0) and twin["wins"] == 3
    assert summary["metric"] == "val_top1"


def test_pool_skips_a_job_recorded_after_planning(tmp_path):
    import sys

    started = []
    failures = core.run_pool(
        ["a", "b"], lambda job: started.append(job) or [sys.executable,
                                                         "-c", "pass"],
        workers=1, log=lambda *_: None, skip=lambda job: job == "b")
    assert failures == [] and started == ["a"]


def test_followup_is_validation_only_and_paired_with_the_confirmation(
        tmp_path):
    options = runs.Options(results_dir=str(tmp_path))
    jobs = runs.plan_jobs("followup", options)
    n_arms = sum(len(a) for a in spec.FOLLOWUP["arms"].values())
    assert len(jobs) == n_arms * len(spec.FOLLOWUP["seeds"])
    bf16 = runs.stage_recipe("followup", "r20-r8", "sakd_bf16", 1, options)
    fp32 = runs.stage_recipe("confirmation", "r20-r8", "sakd", 1, options)
    assert bf16.mixed_precision == "mixed_bfloat16"
    assert fp32.mixed_precision is None
    assert bf16.terms == fp32.terms and bf16.data == fp32.data
    recipe = runs.stage_recipe("followup", "mbv2-r8", "sakd_ce1", 0,
                               options)
    same = runs.stage_recipe("confirmation", "mbv2-r8", "sakd", 0, options)
    # The confirmation's settings; only the objective's weights differ.
    assert (recipe.epochs, recipe.optimizer, recipe.data, recipe.seed) == (
        same.epochs, same.optimizer, same.data, same.seed)
    assert recipe.student_loss_weight == 1.0
    assert recipe.terms[0] == same.terms[0]
    # The early-alignment arm is the confirmed SAKD but for the window,
    # which ends at the schedule's first decay.
    early = runs.stage_recipe("followup", "mbv2-r8", "sakd_align_early", 0,
                              options)
    (sakd_term, *rest), (early_term, *early_rest) = same.terms, early.terms
    assert early_term.kwargs == {**sakd_term.kwargs,
                                 "alignment_epochs":
                                 same.optimizer.milestones[0]}
    assert (early.student_loss_weight, early_rest, early.optimizer) == (
        same.student_loss_weight, rest, same.optimizer)
    assert runs.stage_plan("followup")[-1] is False  # no test scoring
    conf = runs.results_file("confirmation", options)
    for seed in range(3):
        conf.append(_line(arm="sakd", seed=seed, val_top1=43.0 + seed,
                          test_top1=44.0))
        conf.append(_line(arm="at", seed=seed, val_top1=30.0))
    conf.append(_line(arm="sakd", seed=4, val_top1=99.0))  # not followed up
    f = runs.results_file("followup", options)
    for seed in range(3):
        f.append(_line(arm="sakd_ce1", seed=seed, val_top1=43.5 + seed,
                       test_top1=None))
    summary = runs.report("followup", options, log=lambda *_: None)
    data = summary["pairs"]["mbv2-r8"]
    assert summary["metric"] == "val_top1"
    assert set(data["arms"]) == {"sakd", "sakd_ce1"}  # AT not compared
    assert data["arms"]["sakd"]["n"] == 3
    c = data["comparisons"]["sakd_ce1"]
    assert c["mean_diff"] == pytest.approx(0.5) and c["wins"] == 3
    assert os.path.getsize(os.path.join(
        tmp_path, "sakd_followup", "sakd_followup_paired.png")) > 0


def test_report_pastes_its_table_into_marked_blocks_only(tmp_path):
    options = runs.Options(results_dir=str(tmp_path))
    f = runs.results_file("confirmation", options)
    for seed in range(2):
        for arm, v in (("kd", 40.0), ("sakd", 41.0)):
            f.append(_line(arm=arm, seed=seed, test_top1=v + seed))
    start, end = runs.table_markers("confirmation")
    doc = os.path.join(tmp_path, "doc.md")
    with open(doc, "w") as out:
        out.write(f"intro\n{start}\nold table\n{end}\nafter\n")
    other = os.path.join(tmp_path, "other.md")
    with open(other, "w") as out:
        out.write("no markers here\n")
    runs.report("confirmation", options, log=lambda *_: None,
                docs=[doc, other])
    text = open(doc).read()
    assert text.startswith(f"intro\n{start}\n**Partial: 4 of the ")
    assert "old table" not in text and "| sakd | 2 |" in text
    assert text.endswith(f"{end}\nafter\n")
    assert open(other).read() == "no markers here\n"
    with open(doc, "w") as out:
        out.write(f"{start}\nno end\n")
    with pytest.raises(ValueError, match="has no"):
        runs.paste_table(doc, "confirmation", "x")


def test_a_partial_table_says_when_the_rule_is_already_out_of_reach():
    planned = len(spec.CONFIRMATION["seeds"])
    allowed = planned - spec.WIN_RULE["wins"]  # seeds that may be lost
    records = []
    for seed in range(allowed + 1):
        for arm, value in {"kd": 40.0, "fitnet": 40.2, "crd": 42.0}.items():
            records.append(_line(arm=arm, seed=seed, test_top1=value))
        records.append(_line(arm="sakd", seed=seed, test_top1=41.0))
    summary = runs.summarize(records, "confirmation")
    verdict = summary["pairs"]["mbv2-r8"]["verdict"]
    # Behind CRD on allowed + 1 seeds: 4/5 positive cannot be reached.
    assert verdict["out_of_reach"] == {"crd": allowed + 1}
    text = runs.markdown(summary, "confirmation")
    assert "Already decided (mbv2-r8)" in text
    assert f"crd ({allowed + 1} seeds not positive)" in text
    # One seed fewer behind CRD: the missing seeds could still make it.
    records = [r for r in records if r["seed"] != allowed]
    summary = runs.summarize(records, "confirmation")
    assert summary["pairs"]["mbv2-r8"]["verdict"]["out_of_reach"] == {}
    assert "Already decided" not in runs.markdown(summary, "confirmation")


def test_seconds_per_epoch_leaves_out_epochs_resumed_mid_way():
    whole = _line(arm="kd", seed=0, steps_per_epoch=100,
                  epoch_s=[100.0, 110.0], epoch_steps=[100, 100])
    resumed = _line(arm="kd", seed=1, steps_per_epoch=100,
                    epoch_s=[120.0, 10.0], epoch_steps=[100, 8])
    older = _line(arm="kd", seed=2, epoch_s=[90.0, 30.0])  # no epoch_steps
    assert runs._full_epoch_seconds(whole) == 105.0
    assert runs._full_epoch_seconds(resumed) == 120.0
    assert runs._full_epoch_seconds(older) == 60.0
    assert runs._full_epoch_seconds(_line(arm="kd")) is None
    summary = runs.summarize([whole, resumed, older], "confirmation")
    assert summary["pairs"]["mbv2-r8"]["arms"]["kd"][
        "seconds_per_epoch"] == 105.0


def test_curves_pair_seeds_per_epoch_and_plot(tmp_path):
    records = [
        _line(arm="sakd", seed=0, val_curve=[20.0, 30.0, 40.0]),
        _line(arm="sakd", seed=1, val_curve=[22.0, 32.0, 42.0]),
        _line(arm="kd", seed=0, val_curve=[10.0, 25.0, 41.0]),
        _line(arm="kd", seed=2, val_curve=[99.0, 99.0, 99.0]),  # unpaired
        _line(arm="crd", seed=1, val_curve=[12.0, 30.0]),  # shorter
    ]
    c = runs.curves(records)["mbv2-r8"]
    assert c["arms"]["sakd"] == {"epochs": [1, 2, 3],
                                 "mean": [21.0, 31.0, 41.0], "n": 2}
    assert c["arms"]["kd"]["n"] == 2
    # Only seed 0 pairs SAKD with KD: the gap closes from +10 to −1.
    assert c["diffs"]["kd"] == {"epochs": [1, 2, 3],
                                "mean": [10.0, 5.0, -1.0], "n": 1}
    assert c["diffs"]["crd"] == {"epochs": [1, 2], "mean": [10.0, 2.0],
                                 "n": 1}
    assert "sakd" not in c["diffs"]
    path = os.path.join(tmp_path, "curves.png")
    runs.plot_curves(records, "confirmation", path)
    assert os.path.getsize(path) > 0


def test_a_complete_pair_in_a_partial_table_is_called_final():
    pairs, arms, seeds, _, _, _ = runs.stage_plan("confirmation")
    value = {"crd": 42.0, "sakd": 41.0}
    records = [_line(pair="mbv2-r8", arm=a, seed=s,
                     test_top1=value.get(a, 40.0))
               for a in arms["mbv2-r8"] for s in seeds]
    # r20-r8 lacks its last seed and trails CRD on the others.
    records += [_line(pair="r20-r8", arm=a, seed=s,
                      test_top1=value.get(a, 40.0))
                for a in arms["r20-r8"] for s in seeds[:-1]]
    text = runs.markdown(runs.summarize(records, "confirmation"),
                         "confirmation")
    assert text.startswith("**Partial")
    assert "Every planned run of mbv2-r8 is recorded" in text
    assert "Already decided (mbv2-r8)" not in text
    assert "Every planned run of r20-r8" not in text
    assert "Already decided (r20-r8)" in text


def test_a_line_records_the_commit_its_process_started_from(tmp_path,
                                                            monkeypatch):
    # A checkout while a run trains (a pool worker keeps the code it
    # imported) must not relabel its line with the new commit.
    from keras_semkd import training

    commits = iter(["started-here", "checked-out-later"])
    monkeypatch.setattr(core, "git_commit", lambda *a: next(commits))

    class FakeRunner:
        steps_per_epoch = 3
        student = None

        def __init__(self, recipe, run_dir, **kwargs):
            self.epochs = recipe.epochs

        def run(self, verbose=0):
            core.git_commit()  # someone checks out another commit
            history = [{"seconds": 1.0, "val_top1": 0.25, "steps": 3}
                       for _ in range(self.epochs)]
            return {"last": {"top1": 0.25}, "best_top1": 0.25,
                    "resumed_at": None, "history": history}

    monkeypatch.setattr(training, "Runner", FakeRunner)
    monkeypatch.setattr(runs, "build_teacher", lambda *a, **k: None)
    options = runs.Options(results_dir=str(tmp_path),
                           runs_dir=str(tmp_path / "runs"))
    runs.run_job("followup:mbv2-r8:sakd_ce1:0", options)
    (line,) = runs.results_file("followup", options).records()
    assert line["git_commit"] == "started-here"
    assert (line["arm"], line["seed"], line["val_top1"]) == (
        "sakd_ce1", 0, 25.0)
