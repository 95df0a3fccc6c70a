"""Tests of keras_semkd.tuning: hp -> recipe mapping, the three tuners,
validation on the carved split only, resuming, the exported best recipe
and search-space errors.

Tiny models on the generated `synthetic` dataset (32x32, 10 classes), a few
batches per epoch, one epoch per trial.
"""

import json
import os
import shutil

import keras
import keras_tuner
import pytest

import keras_semkd.data
from keras_semkd import tuning
from keras_semkd.configs import DataConfig
from keras_semkd.configs import OptimizerConfig
from keras_semkd.configs import Recipe
from keras_semkd.configs import Term
from keras_semkd.distillers import Distiller
from keras_semkd.tuning import DistillationHyperModel
from tests.tiny import tiny_model

NUM_CLASSES = 10  # synthetic's default


def make_recipe(terms=(Term("kd", 0.9, {"temperature": 4.0}),), **data):
    fields = dict(dataset="synthetic", batch_size=32, validation_split=0.1,
                  augment=False, limit_train=64, limit_eval=64)
    fields.update(data)
    return Recipe(
        name="tiny-kd", teacher="tiny_teacher", student="tiny_student",
        terms=terms, student_loss_weight=0.1, epochs=1,
        optimizer=OptimizerConfig(learning_rate=0.05, milestones=()),
        data=DataConfig(**fields), num_classes=NUM_CLASSES, seed=0,
    )


def student_builder(recipe, input_shape):
    return tiny_model("student", widths=(4, 8), num_classes=NUM_CLASSES,
                      spatial=input_shape[0], seed=2)


@pytest.fixture(scope="module")
def teacher():
    return tiny_model("teacher", widths=(8, 16), num_classes=NUM_CLASSES,
                      spatial=32, seed=1)


def run_tune(teacher, directory, **kwargs):
    kwargs.setdefault("tuner", "random")
    kwargs.setdefault("max_trials", 2)
    return tuning.tune(
        kwargs.pop("recipe", make_recipe()), teacher, epochs=1,
        directory=str(directory), project_name="proj",
        student_builder=student_builder, verbose=0, **kwargs,
    )


@pytest.fixture
def fit_calls(monkeypatch):
    """Counts DistillationHyperModel.fit calls (one per trial run)."""
    calls = []
    original = DistillationHyperModel.fit

    def spy(self, hp, model, *args, **kwargs):
        calls.append(dict(hp.values))
        return original(self, hp, model, *args, **kwargs)

    monkeypatch.setattr(DistillationHyperModel, "fit", spy)
    return calls


# -- search space ---------------------------------------------------------
def test_default_search_space_from_terms():
    recipe = make_recipe(terms=[
        {"name": "kd", "weight": 0.9, "temperature": 4.0},
        {"name": "at", "weight": 1000.0},
    ])
    space = tuning.default_search_space(recipe, student_loss_weight=True)
    assert space == {
        "terms.kd.weight": {"type": "log", "min": 0.09, "max": 9.0,
                            "default": 0.9},
        "terms.kd.temperature": {"type": "float", "min": 1.0, "max": 8.0,
                                 "default": 4.0},
        "terms.at.weight": {"type": "log", "min": 100.0, "max": 10000.0,
                            "default": 1000.0},
        "optimizer.learning_rate": {"type": "log", "min": 0.005,
                                    "max": 0.25, "default": 0.05},
        "student_loss_weight": {"type": "log", "min": 0.01, "max": 1.0,
                                "default": 0.1},
    }
    # A temperature known only from the loss' constructor default (DKD: 4).
    dkd = make_recipe(terms=[{"name": "dkd", "weight": 1.0}])
    assert "terms.dkd.temperature" in tuning.default_search_space(dkd)
    assert tuning.validate_search_space(space, recipe) == space


@pytest.mark.parametrize("space, match", [
    ({"terms.nope.weight": {"type": "log", "min": 0.1, "max": 1.0}},
     "has no term 'nope'"),
    ({"terms.kd.temprature": {"type": "float", "min": 1, "max": 8}},
     "no tunable field 'temprature'"),
    ({"optimizer.lr": {"type": "log", "min": 0.01, "max": 0.1}},
     "optimizer fields are"),
    ({"bogus": {"type": "float", "min": 0, "max": 1}},
     "'bogus' is not a recipe field"),
    ({"optimizer": {"type": "float", "min": 0, "max": 1}},
     "optimizer fields are"),
    ({"terms.kd.weight": {"type": "log", "min": 1.0, "max": 0.1}},
     r"bad range.*min=1.0, max=0.1"),
    ({"terms.kd.weight": {"type": "log", "min": 0.0, "max": 1.0}},
     "needs min > 0"),
    ({"terms.kd.weight": {"type": "uniform", "min": 0.1, "max": 1.0}},
     "'type' must be one of"),
    ({"terms.kd.weight": {"type": "float", "min": 0.1}},
     "needs 'min' and 'max'"),
    ({"terms.kd.weight": {"type": "float", "min": 0.1, "max": 1.0,
                          "values": [1]}},
     r"unknown key\(s\) \['values'\]"),
    ({"data.batch_size": {"type": "int", "min": 8.5, "max": 64}},
     "integer bounds"),
    ({"data.batch_size": {"type": "choice", "values": []}},
     "non-empty list"),
    ({"data.batch_size": {"type": "choice", "values": [32, "64"]}},
     "share one type"),
    ({"optimizer.learning_rate": {"type": "float", "min": -0.1,
                                  "max": 0.1}},
     "learning_rate must be > 0"),
    ({"data.validation_split": {"type": "float", "min": 0.0, "max": 0.2}},
     "never on test"),
    ({"terms.kd.weight": {"type": "log", "min": 0.1, "max": 1.0,
                          "default": 5.0}},
     r"default must lie in \[0.1, 1.0\]"),
    ({"terms.kd.weight": "log"}, "must be a dict"),
    ({}, "search space is empty"),
])
def test_bad_search_space_raises(teacher, space, match):
    with pytest.raises(ValueError, match=match):
        DistillationHyperModel(make_recipe(), teacher, space)


def test_zero_validation_split_raises(teacher):
    with pytest.raises(ValueError, match=r"never on test.*validation_split="
                                         r"0\.0"):
        DistillationHyperModel(make_recipe(validation_split=0.0), teacher)
    with pytest.raises(ValueError, match="never on test"):
        tuning.tune(make_recipe(validation_split=0.0), teacher,
                    directory="unused", verbose=0)


def test_unknown_tuner_raises(teacher, tmp_path):
    with pytest.raises(ValueError, match="tuner must be one of.*'grid'"):
        run_tune(teacher, tmp_path, tuner="grid")


# -- hp -> recipe -> Distiller ----------------------------------------------
def test_hp_values_map_exactly_onto_the_built_distiller(teacher):
    recipe = make_recipe(terms=[
        {"name": "kd", "weight": 0.9, "temperature": 4.0},
        {"name": "dkd", "weight": 1.0, "alpha": 1.0, "beta": 8.0,
         "temperature": 4.0, "warmup_epochs": 0},
    ])
    space = {
        "terms.kd.weight": {"type": "log", "min": 0.01, "max": 10.0},
        "terms.kd.temperature": {"type": "float", "min": 1.0, "max": 8.0},
        "terms.dkd.weight": {"type": "log", "min": 0.1, "max": 10.0},
        "terms.dkd.beta": {"type": "choice", "values": [2.0, 8.0]},
        "student_loss_weight": {"type": "float", "min": 0.0, "max": 1.0},
        "optimizer.learning_rate": {"type": "log", "min": 1e-3, "max": 1.0},
        "optimizer.momentum": {"type": "float", "min": 0.5, "max": 0.99},
    }
    hm = DistillationHyperModel(recipe, teacher, space,
                                student_builder=student_builder)
    hp = keras_tuner.HyperParameters()
    hm.declare_hyperparameters(hp)
    chosen = {
        "terms.kd.weight": 0.123, "terms.kd.temperature": 2.5,
        "terms.dkd.weight": 3.25, "terms.dkd.beta": 2.0,
        "student_loss_weight": 0.375, "optimizer.learning_rate": 0.0375,
        "optimizer.momentum": 0.8,
    }
    hp.values.update(chosen)
    model = hm.build(hp)
    assert isinstance(model, Distiller)
    by_name = dict(zip((t.name for t in model.distillation_terms),
                       model.distillation_terms))
    weights = dict(zip(by_name, model.distillation_weights))
    assert weights == {"kd": 0.123, "dkd": 3.25}
    assert by_name["kd"].temperature == 2.5
    assert by_name["dkd"].temperature == 4.0  # untouched
    assert by_name["dkd"].beta == 2.0
    assert model.student_loss_weight == 0.375
    assert float(keras.ops.convert_to_numpy(
        model.optimizer.learning_rate)) == pytest.approx(0.0375)
    assert model.optimizer.momentum == 0.8
    # The recipe view of the same trial.
    trial_recipe = hm.recipe_for(hp)
    assert trial_recipe.optimizer.learning_rate == 0.0375
    assert trial_recipe.student_loss_weight == 0.375
    assert {t.name: t.weight for t in trial_recipe.terms} == weights
    # Every trial: a fresh student, the one shared frozen teacher.
    again = hm.build(hp)
    assert again.student is not model.student
    assert again.teacher is model.teacher is teacher
    assert not teacher.trainable


def test_fit_refuses_outside_data(teacher):
    hm = DistillationHyperModel(make_recipe(), teacher,
                                student_builder=student_builder)
    hp = keras_tuner.HyperParameters()
    model = hm.build(hp)
    with pytest.raises(ValueError, match=r"own train/validation data.*"
                                         r"\['validation_data'\]"):
        hm.fit(hp, model, validation_data=("x", "y"))
    with pytest.raises(ValueError, match="1 positional"):
        hm.fit(hp, model, "x")


# -- searches --------------------------------------------------------------
@pytest.fixture(scope="module")
def random_search(teacher, tmp_path_factory):
    """One random search of 2 trials, recording every get_dataset call and
    the datasets each Distiller.fit received."""
    directory = tmp_path_factory.mktemp("random")
    calls, fits = [], []
    mp = pytest.MonkeyPatch()
    original_get = keras_semkd.data.get_dataset
    original_fit = Distiller.fit

    def get_dataset(name, split, *args, **kwargs):
        ds, info = original_get(name, split, *args, **kwargs)
        calls.append({"name": name, "split": split, "dataset": ds,
                      "validation_split": kwargs.get("validation_split")})
        return ds, info

    def fit(self, x=None, *args, **kwargs):
        fits.append({"x": x, "validation_data": kwargs["validation_data"]})
        return original_fit(self, x, *args, **kwargs)

    mp.setattr(keras_semkd.data, "get_dataset", get_dataset)
    mp.setattr(Distiller, "fit", fit)
    # limit_eval=None: the validation pipeline reaches fit unwrapped.
    recipe = make_recipe(limit_eval=None)
    try:
        result = run_tune(teacher, directory, recipe=recipe, max_trials=2)
    finally:
        mp.undo()
    return {"result": result, "calls": calls, "fits": fits,
            "directory": directory, "recipe": recipe}


def test_random_search_validates_on_carved_split_never_test(random_search):
    calls, fits = random_search["calls"], random_search["fits"]
    assert random_search["result"]["num_trials"] == 2
    assert len(fits) == 2
    assert calls, "get_dataset was never called"
    assert {c["split"] for c in calls} == {"train", "validation"}
    assert all(c["validation_split"] == 0.1 for c in calls)
    validation_sets = [c["dataset"] for c in calls
                       if c["split"] == "validation"]
    for f in fits:
        assert any(f["validation_data"] is v for v in validation_sets)


def test_best_recipe_json_round_trips(random_search):
    result = random_search["result"]
    path = result["recipe_path"]
    assert path == os.path.join(str(random_search["directory"]), "proj",
                                "best_recipe.json")
    with open(path, encoding="utf-8") as f:
        loaded = Recipe.from_json(f.read())
    assert loaded == result["recipe"]
    values = result["values"]
    assert set(values) == {"terms.kd.weight", "terms.kd.temperature",
                           "optimizer.learning_rate"}
    assert loaded.terms[0].weight == values["terms.kd.weight"]
    assert loaded.terms[0].kwargs["temperature"] == \
        values["terms.kd.temperature"]
    assert loaded.optimizer.learning_rate == \
        values["optimizer.learning_rate"]
    assert loaded.name == "tiny-kd-tuned"
    # Everything not searched is the base recipe's.
    base = random_search["recipe"]
    assert loaded == base.override(name="tiny-kd-tuned", **values)
    # The best trial is the best-scored one (the earliest among equals).
    trials = result["tuner"].oracle.trials
    best = trials[result["trial_id"]]
    assert {k: best.hyperparameters.values[k] for k in values} == values
    assert result["score"] == best.score == max(
        t.score for t in trials.values())
    assert not any(t.score == best.score and int(t.trial_id) <
                   int(best.trial_id) for t in trials.values())


def test_resume_does_not_redo_finished_trials(random_search, teacher,
                                              tmp_path, fit_calls):
    directory = tmp_path / "copy"
    shutil.copytree(random_search["directory"], directory)
    recipe = random_search["recipe"]
    again = run_tune(teacher, directory, recipe=recipe, max_trials=2)
    assert fit_calls == []
    assert again["num_trials"] == 2
    assert again["values"] == random_search["result"]["values"]
    more = run_tune(teacher, directory, recipe=recipe, max_trials=3)
    assert len(fit_calls) == 1
    assert more["num_trials"] == 3
    finished = {t.trial_id for t in more["tuner"].oracle.trials.values()
                if t.status == "COMPLETED"}
    assert len(finished) == 3


@pytest.mark.parametrize("direction", ["max", "min"])
def test_best_recipe_breaks_ties_by_trial_order_not_dict_order(teacher,
                                                               direction):
    # A resumed project reloads oracle.trials in another order; with equal
    # scores keras-tuner's own get_best_trials follows that order.
    hm = DistillationHyperModel(make_recipe(), teacher)
    hp = keras_tuner.HyperParameters()
    hm.declare_hyperparameters(hp)
    scores = {"1": 0.5, "02": 0.25, "03": 0.5, "0": 0.25}
    if direction == "min":
        scores = {k: -v for k, v in scores.items()}
    trials = {}
    for i, (tid, score) in enumerate(scores.items()):
        t = keras_tuner.engine.trial.Trial(hp.copy(), trial_id=tid,
                                           status="COMPLETED")
        t.hyperparameters.values["terms.kd.weight"] = float(i + 1)
        t.score = score
        trials[tid] = t
    running = keras_tuner.engine.trial.Trial(hp.copy(), trial_id="04",
                                             status="RUNNING")
    running.score = None
    trials["04"] = running

    class Oracle:
        objective = keras_tuner.Objective("val_top1", direction=direction)

    class Tuner:
        oracle = Oracle()
        project_dir = "unused"

    for order in (list(trials), list(reversed(trials))):
        Tuner.oracle.trials = {k: trials[k] for k in order}
        values, recipe, score, trial_id = tuning.best_recipe(hm, Tuner)
        # "1" was created before "03" ("02" is a padded id of trial 2).
        assert trial_id == "1"
        assert score == scores["1"]
        assert values["terms.kd.weight"] == 1.0
        assert recipe.terms[0].weight == 1.0
    Tuner.oracle.trials = {"04": running}
    with pytest.raises(RuntimeError, match="No tuning trial finished"):
        tuning.best_recipe(hm, Tuner)


def test_resume_with_another_search_space_raises(random_search, teacher,
                                                 tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(random_search["directory"], directory)
    space = {"terms.kd.weight": {"type": "log", "min": 0.5, "max": 2.0}}
    with pytest.raises(ValueError, match="different search_space"):
        run_tune(teacher, directory, recipe=random_search["recipe"],
                 search_space=space)


def test_hyperband_runs(teacher, tmp_path, fit_calls):
    result = run_tune(teacher, tmp_path, tuner="hyperband", max_trials=2)
    assert 1 <= result["num_trials"] <= 2
    assert len(fit_calls) == result["num_trials"]
    assert all(c["tuner/epochs"] == 1 for c in fit_calls)
    assert os.path.exists(result["recipe_path"])


def test_bayesian_runs(teacher, tmp_path, fit_calls):
    pytest.importorskip("sklearn", reason="BayesianOptimization needs "
                                          "scikit-learn")
    result = run_tune(teacher, tmp_path, tuner="bayesian", max_trials=2)
    assert result["num_trials"] == 2
    assert len(fit_calls) == 2
    with open(os.path.join(tmp_path, "proj", "tuning_config.json")) as f:
        assert json.load(f)["tuner"] == "bayesian"
