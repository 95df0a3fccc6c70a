"""`tune`: a resumable keras-tuner search whose best trial is a recipe.

```python
best = tune(recipe.override(**{"data.validation_split": 0.1}), teacher,
            tuner="bayesian", max_trials=20, epochs=30,
            directory="tuning", project_name="kd")
best["values"]        # {"terms.kd.weight": ..., ...}
best["recipe"]        # the base recipe with those values applied
best["recipe_path"]   # tuning/kd/best_recipe.json (Recipe.from_json reads it)
```

The search state lives in `directory/project_name` (keras-tuner's oracle
and trials, plus `tuning_config.json` with the base recipe, search space,
tuner and epochs). Calling `tune` again with the same directory and
`overwrite=False` resumes it: finished trials are not run again, and only
the trials missing to reach `max_trials` are run. Resuming with another
recipe, search space, tuner or epoch budget raises instead of silently
mixing incomparable trials.
"""

import contextlib
import io
import json
import os

import keras_tuner

from keras_semkd.configs import experiment
from keras_semkd.tuning import hypermodel as hypermodel_lib

#: Tuner names accepted by `tune` -> keras-tuner classes.
TUNERS = {
    "random": keras_tuner.RandomSearch,
    "hyperband": keras_tuner.Hyperband,
    "bayesian": keras_tuner.BayesianOptimization,
}

BEST_RECIPE_FILE = "best_recipe.json"
CONFIG_FILE = "tuning_config.json"


def _project_dir(directory, project_name):
    return os.path.join(directory, project_name)


def make_tuner(hypermodel, *, tuner="random", max_trials=10, epochs=1,
               directory="tuning", project_name="tuning", overwrite=False,
               seed=0, **tuner_kwargs):
    """Creates the keras-tuner tuner of `hypermodel` (objective `val_top1`).

    `tuner` is `"random"` (`RandomSearch`), `"hyperband"` (`Hyperband`,
    `max_epochs=epochs`; `max_trials` caps its number of trials) or
    `"bayesian"` (`BayesianOptimization`). keras-tuner reads a seed of 0 as
    "unseeded", so the oracle gets `seed + 1`. `tuner_kwargs` go to the
    tuner (e.g. `factor=2` for Hyperband, `num_initial_points` for
    Bayesian optimization).
    """
    if tuner not in TUNERS:
        raise ValueError(
            f"tuner must be one of {sorted(TUNERS)}. Received: tuner={tuner!r}"
        )
    if not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(
            f"max_trials must be an integer >= 1. Received: "
            f"max_trials={max_trials!r}"
        )
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"epochs must be an integer >= 1. Received: epochs={epochs!r}"
        )
    kwargs = dict(
        hypermodel=hypermodel, objective=hypermodel_lib.objective(),
        seed=int(seed) + 1, directory=directory, project_name=project_name,
        overwrite=overwrite,
    )
    if tuner == "hyperband":
        kwargs["max_epochs"] = epochs
    else:
        kwargs["max_trials"] = max_trials
    kwargs.update(tuner_kwargs)
    declaring = (hypermodel.declaring_only()
                 if hasattr(hypermodel, "declaring_only")
                 else contextlib.nullcontext())
    with declaring:
        try:
            result = TUNERS[tuner](**kwargs)
        except ImportError as e:
            raise ImportError(
                f"tuner={tuner!r} needs a package keras-tuner imports on "
                "demand (BayesianOptimization needs scikit-learn: "
                f"`pip install scikit-learn`). Underlying error: {e}"
            ) from e
    if tuner == "hyperband":
        # Hyperband sizes its brackets from max_epochs; the oracle's
        # max_trials still stops the search after that many trials.
        result.oracle.max_trials = max_trials
    return result


def _check_resume(path, config):
    """Raises when the project at `path` was started with another config."""
    with open(path, encoding="utf-8") as f:
        previous = json.load(f)
    changed = sorted(k for k in set(config) | set(previous)
                     if config.get(k) != previous.get(k))
    if changed:
        raise ValueError(
            f"The tuning project in {os.path.dirname(path)!r} was started "
            f"with a different {', '.join(changed)}; resuming would mix "
            "incomparable trials. Pass overwrite=True to start over, or "
            "another project_name. Received: "
            + "; ".join(f"{k}={config.get(k)!r} (was {previous.get(k)!r})"
                        for k in changed)
        )


def _trial_order(trial):
    """Sort key: the order trials were created. keras-tuner pads ids to the
    width of `max_trials`, which a resume with more trials changes, so "1"
    and "02" compare as numbers."""
    tid = str(trial.trial_id)
    return (int(tid), tid) if tid.isdigit() else (float("inf"), tid)


def best_recipe(hypermodel, tuner):
    """`(values, recipe, score, trial_id)` of the tuner's best trial.

    Equal scores are common (top-1 on a small validation set moves in steps
    of 1/n), and keras-tuner breaks them by the order of `oracle.trials`,
    which a resumed project reloads differently. Here the earliest trial
    (smallest numeric `trial_id`) wins a tie, so a resumed search names the same best
    trial as the run that wrote it.
    """
    trials = [t for t in tuner.oracle.trials.values()
              if t.status == "COMPLETED" and t.score is not None]
    if not trials:
        raise RuntimeError(
            "No tuning trial finished with a score; see the trials in "
            f"{tuner.project_dir!r}."
        )
    sign = 1.0 if tuner.oracle.objective.direction == "max" else -1.0
    best = max(sign * float(t.score) for t in trials)
    trial = min((t for t in trials if sign * float(t.score) == best),
                key=_trial_order)
    values = hypermodel.overrides(trial.hyperparameters)
    base = hypermodel.base_recipe
    recipe = base.override(name=f"{base.name}-tuned", **values)
    return values, recipe, float(trial.score), trial.trial_id


def export_best_recipe(recipe, directory, project_name):
    """Writes `recipe` as JSON to `directory/project_name/best_recipe.json`
    and returns the path."""
    path = os.path.join(_project_dir(directory, project_name),
                        BEST_RECIPE_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(recipe.to_json())
        f.write("\n")
    os.replace(tmp, path)
    return path


def tune(base_recipe, teacher=None, *, tuner="random", max_trials=10,
         epochs=None, directory="tuning", project_name=None, overwrite=False,
         seed=None, search_space=None, student_builder=None, data_dir=None,
         verbose=1, callbacks=None, tuner_kwargs=None):
    """Searches a recipe's hyperparameters; returns the best as a recipe.

    Every trial distills `teacher` into a fresh student built from
    `base_recipe` with the trial's values applied (see
    `DistillationHyperModel`), trains on the train part for `epochs` and
    scores `val_top1` on the validation split carved out of train (the
    recipe's `data.validation_split` must be > 0; test is never read).

    Args:
        base_recipe: a `keras_semkd.configs.Recipe` with a teacher and
            `data.validation_split > 0`.
        teacher: the trained teacher (shared, frozen); `None` loads it from
            `base_recipe.teacher_weights`.
        tuner: `"random"`, `"hyperband"` or `"bayesian"`.
        max_trials: total number of trials of the project (finished ones
            included when resuming).
        epochs: training epochs per trial (Hyperband's `max_epochs`);
            default: the recipe's.
        directory, project_name: the search state lives in
            `directory/project_name` (default project: the recipe's name).
        overwrite: start over instead of resuming an existing project.
        seed: the tuner's seed; default: the recipe's.
        search_space: dict `path -> entry`; default
            `default_search_space(base_recipe)`.
        student_builder: optional `(recipe, input_shape) -> keras.Model`.
        data_dir: overrides the recipe's data location.
        verbose: Keras / keras-tuner verbosity (0 is silent).
        callbacks: extra Keras callbacks for every trial.
        tuner_kwargs: extra keyword arguments for the keras-tuner class.

    Returns:
        dict with `values` (best hyperparameter values, path -> value),
        `recipe` (the base recipe with them applied, named
        `"<name>-tuned"`), `recipe_path` (its JSON,
        `directory/project_name/best_recipe.json`), `score` (its
        `val_top1`), `trial_id`, `num_trials` (trials in the project) and
        `tuner` (the keras-tuner object).
    """
    if not isinstance(base_recipe, experiment.Recipe):
        raise TypeError(
            "base_recipe must be a keras_semkd.configs.Recipe. "
            f"Received: base_recipe={base_recipe!r} of type "
            f"{type(base_recipe).__name__}"
        )
    epochs = base_recipe.epochs if epochs is None else epochs
    seed = base_recipe.seed if seed is None else seed
    project_name = project_name or base_recipe.name
    hm = hypermodel_lib.DistillationHyperModel(
        base_recipe, teacher, search_space, student_builder=student_builder,
        data_dir=data_dir,
    )
    config = {
        "base_recipe": base_recipe.to_dict(),
        "search_space": hm.search_space,
        "tuner": tuner,
        "epochs": epochs,
    }
    # Round-trip through JSON so tuples/lists compare like the stored copy.
    config = json.loads(json.dumps(config))
    config_path = os.path.join(_project_dir(directory, project_name),
                               CONFIG_FILE)
    if not overwrite and os.path.exists(config_path):
        _check_resume(config_path, config)
    quiet = (contextlib.redirect_stdout(io.StringIO()) if not verbose
             else contextlib.nullcontext())
    with quiet:  # keras-tuner prints "Reloading Tuner from ..."
        search = make_tuner(
            hm, tuner=tuner, max_trials=max_trials, epochs=epochs,
            directory=directory, project_name=project_name,
            overwrite=overwrite, seed=seed, **(tuner_kwargs or {}),
        )
    os.makedirs(os.path.dirname(config_path), exist_ok=True)
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    search.search(epochs=epochs, callbacks=list(callbacks or []),
                  verbose=verbose)
    values, recipe, score, trial_id = best_recipe(hm, search)
    path = export_best_recipe(recipe, directory, project_name)
    return {
        "values": values,
        "recipe": recipe,
        "recipe_path": path,
        "score": score,
        "trial_id": trial_id,
        "num_trials": len(search.oracle.trials),
        "tuner": search,
    }
