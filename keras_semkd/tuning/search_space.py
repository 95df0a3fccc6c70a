"""Search spaces as data: dotted recipe paths -> hyperparameter ranges.

A search space is a plain dict that maps a dotted `Recipe.override` path to
the range keras-tuner samples it from::

    {
        "terms.kd.weight": {"type": "log", "min": 0.09, "max": 9.0},
        "terms.kd.temperature": {"type": "float", "min": 1.0, "max": 8.0},
        "optimizer.learning_rate": {"type": "log", "min": 0.005,
                                    "max": 0.25},
        "data.batch_size": {"type": "choice", "values": [64, 128]},
    }

Entry types:

- `"log"`: a float sampled log-uniformly in `[min, max]` (`min > 0`);
- `"float"`: a float sampled uniformly in `[min, max]` (optional `step`);
- `"int"`: an integer in `[min, max]` (optional `step`);
- `"choice"`: one of `values` (numbers, strings or booleans of one type).

Every entry may set a `default` (inside its range, or among its values).
Each path is the name of its keras-tuner hyperparameter, so a trial's
values map back onto the recipe one to one.
"""

import dataclasses
import inspect
import math

from keras_semkd import losses as losses_lib
from keras_semkd.configs import experiment

#: The entry types of a search space.
HP_TYPES = ("log", "float", "int", "choice")

_KEYS = {
    "log": {"type", "min", "max", "default"},
    "float": {"type", "min", "max", "step", "default"},
    "int": {"type", "min", "max", "step", "default"},
    "choice": {"type", "values", "default"},
}
_SECTIONS = {
    "optimizer": experiment.OptimizerConfig,
    "data": experiment.DataConfig,
}
# Recipe fields that are not single tunable values.
_NOT_TUNABLE = {"terms", "optimizer", "data", "name"}

#: Log-uniform loss weights span `[w / WEIGHT_FACTOR, w * WEIGHT_FACTOR]`.
WEIGHT_FACTOR = 10.0
#: Temperatures span `[T * TEMPERATURE_RANGE[0], T * TEMPERATURE_RANGE[1]]`
#: (1 to 8 for the KD default of 4).
TEMPERATURE_RANGE = (0.25, 2.0)
#: The learning rate spans `[lr * LR_RANGE[0], lr * LR_RANGE[1]]`.
LR_RANGE = (0.1, 5.0)


def _loss_class(name):
    try:
        return losses_lib.LOSSES.get(name)
    except KeyError:
        return None


def _constructor_args(name):
    """{argument: default} of a registered loss' constructor."""
    cls = _loss_class(name)
    if cls is None:
        return {}
    params = inspect.signature(cls.__init__).parameters
    return {
        p.name: p.default
        for p in params.values()
        if p.name != "self"
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _term_temperature(term):
    if "temperature" in term.kwargs:
        value = term.kwargs["temperature"]
    else:
        value = _constructor_args(term.name).get("temperature")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value > 0 else None


def _sig(x):
    """`x` rounded to 6 significant digits (readable ranges)."""
    return float(f"{x:.6g}")


def default_search_space(recipe, *, student_loss_weight=False,
                         learning_rate=True, temperature=True):
    """The search space derived from a recipe's terms.

    For every term with a positive weight: `terms.<name>.weight`,
    log-uniform over `[w / 10, w * 10]`; for every term with a temperature
    (in its arguments or its loss' constructor): `terms.<name>.temperature`,
    uniform over `[T / 4, 2 T]` (1 to 8 for KD's 4). Optionally the
    learning rate, log-uniform over `[lr / 10, 5 lr]`, and the student
    loss weight, log-uniform over `[w / 10, w * 10]`. Each entry's default
    is the recipe's own value.

    Args:
        recipe: a `keras_semkd.configs.Recipe`.
        student_loss_weight: also tune `student_loss_weight`.
        learning_rate: also tune `optimizer.learning_rate`.
        temperature: also tune the terms' temperatures.

    Returns:
        A dict `path -> entry` (see the module docstring).
    """
    if not isinstance(recipe, experiment.Recipe):
        raise TypeError(
            "default_search_space needs a keras_semkd.configs.Recipe. "
            f"Received: recipe={recipe!r} of type {type(recipe).__name__}"
        )
    space = {}
    seen = set()
    for term in recipe.terms:
        if term.name in seen:
            continue
        seen.add(term.name)
        if term.weight > 0:
            space[f"terms.{term.name}.weight"] = {
                "type": "log",
                "min": _sig(term.weight / WEIGHT_FACTOR),
                "max": _sig(term.weight * WEIGHT_FACTOR),
                "default": term.weight,
            }
        t = _term_temperature(term) if temperature else None
        if t is not None:
            space[f"terms.{term.name}.temperature"] = {
                "type": "float",
                "min": _sig(t * TEMPERATURE_RANGE[0]),
                "max": _sig(t * TEMPERATURE_RANGE[1]),
                "default": t,
            }
    if learning_rate:
        lr = recipe.optimizer.learning_rate
        space["optimizer.learning_rate"] = {
            "type": "log",
            "min": _sig(lr * LR_RANGE[0]),
            "max": _sig(lr * LR_RANGE[1]),
            "default": lr,
        }
    if student_loss_weight and recipe.student_loss_weight > 0:
        w = recipe.student_loss_weight
        space["student_loss_weight"] = {
            "type": "log",
            "min": _sig(w / WEIGHT_FACTOR),
            "max": _sig(w * WEIGHT_FACTOR),
            "default": w,
        }
    return space


# -- validation ---------------------------------------------------------------
def _is_number(x):
    return (isinstance(x, (int, float)) and not isinstance(x, bool)
            and math.isfinite(x))


def _check_path(path, recipe):
    """Raises `ValueError` unless `path` names one tunable recipe field."""
    if not isinstance(path, str) or not path:
        raise ValueError(
            "Search space keys are dotted recipe paths such as "
            f"'terms.kd.weight'. Received: {path!r}"
        )
    if path.startswith("tuner/"):
        raise ValueError(
            f"Search space path {path!r}: names starting with 'tuner/' are "
            "reserved by keras-tuner."
        )
    parts = path.split(".")
    if parts[0] == "terms":
        names = [t.name for t in recipe.terms]
        if len(parts) != 3:
            raise ValueError(
                "Term paths look like 'terms.<name>.<field>'. "
                f"Received: {path!r}"
            )
        _, name, field = parts
        if name not in names:
            raise ValueError(
                f"Unknown search space path {path!r}: recipe "
                f"{recipe.name!r} has no term {name!r}. Terms: {names}"
            )
        term = next(t for t in recipe.terms if t.name == name)
        known = {"weight", *term.kwargs, *_constructor_args(name)}
        known -= {"teacher_keys", "student_keys", "name"}
        if field not in known:
            raise ValueError(
                f"Unknown search space path {path!r}: term {name!r} has no "
                f"tunable field {field!r}. Known: {sorted(known)}"
            )
        return
    fields = {f.name for f in dataclasses.fields(experiment.Recipe)}
    tunable = sorted(fields - _NOT_TUNABLE)
    if parts[0] not in fields:
        raise ValueError(
            f"Unknown search space path {path!r}: {parts[0]!r} is not a "
            f"recipe field. Known: terms.<name>.<field>, optimizer.<field>, "
            f"data.<field>, {', '.join(tunable)}"
        )
    if parts[0] in _SECTIONS:
        section = _SECTIONS[parts[0]]
        known = sorted(f.name for f in dataclasses.fields(section))
        if len(parts) != 2 or parts[1] not in known:
            raise ValueError(
                f"Unknown search space path {path!r}: {parts[0]} fields are "
                f"{known}."
            )
        return
    if len(parts) != 1 or parts[0] in _NOT_TUNABLE:
        raise ValueError(
            f"Unknown search space path {path!r}: it must name a single "
            f"field. Tunable top-level fields: {tunable}"
        )


def _check_entry(path, entry):
    """Returns the normalized copy of one entry, or raises `ValueError`."""
    if not isinstance(entry, dict):
        raise ValueError(
            f"Search space entry {path!r} must be a dict such as "
            "{'type': 'log', 'min': 0.01, 'max': 1.0}. "
            f"Received: {entry!r}"
        )
    kind = entry.get("type")
    if kind not in HP_TYPES:
        raise ValueError(
            f"Search space entry {path!r}: 'type' must be one of "
            f"{HP_TYPES}. Received: type={kind!r}"
        )
    unknown = sorted(set(entry) - _KEYS[kind])
    if unknown:
        raise ValueError(
            f"Search space entry {path!r} of type {kind!r}: unknown key(s) "
            f"{unknown}. Allowed: {sorted(_KEYS[kind])}"
        )
    out = {"type": kind}
    if kind == "choice":
        values = entry.get("values")
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(
                f"Search space entry {path!r}: 'values' must be a non-empty "
                f"list. Received: values={values!r}"
            )
        for v in values:
            if not (isinstance(v, (str, bool)) or _is_number(v)):
                raise ValueError(
                    f"Search space entry {path!r}: choices must be numbers, "
                    f"strings or booleans. Received: values={values!r}"
                )
        values = list(values)
        if all(_is_number(v) for v in values) and any(
            isinstance(v, float) for v in values
        ):
            values = [float(v) for v in values]
        if len({type(v) for v in values}) > 1:
            raise ValueError(
                f"Search space entry {path!r}: choices must share one type. "
                f"Received: values={values!r}"
            )
        if len(set(values)) != len(values):
            raise ValueError(
                f"Search space entry {path!r}: choices must be distinct. "
                f"Received: values={values!r}"
            )
        out["values"] = values
        if "default" in entry:
            if entry["default"] not in values:
                raise ValueError(
                    f"Search space entry {path!r}: default must be one of "
                    f"the values. Received: default={entry['default']!r}, "
                    f"values={values!r}"
                )
            out["default"] = values[values.index(entry["default"])]
        return out
    for key in ("min", "max"):
        if key not in entry:
            raise ValueError(
                f"Search space entry {path!r} of type {kind!r} needs 'min' "
                f"and 'max'. Received: {entry!r}"
            )
        if not _is_number(entry[key]):
            raise ValueError(
                f"Search space entry {path!r}: {key!r} must be a finite "
                f"number. Received: {key}={entry[key]!r}"
            )
    lo, hi = entry["min"], entry["max"]
    if kind == "int":
        if not (float(lo).is_integer() and float(hi).is_integer()):
            raise ValueError(
                f"Search space entry {path!r} of type 'int' needs integer "
                f"bounds. Received: min={lo!r}, max={hi!r}"
            )
        lo, hi = int(lo), int(hi)
    else:
        lo, hi = float(lo), float(hi)
    if not lo < hi:
        raise ValueError(
            f"Search space entry {path!r}: bad range, 'min' must be smaller "
            f"than 'max'. Received: min={lo}, max={hi}"
        )
    if kind == "log" and lo <= 0:
        raise ValueError(
            f"Search space entry {path!r} of type 'log' needs min > 0. "
            f"Received: min={lo}"
        )
    out["min"], out["max"] = lo, hi
    if "step" in entry and entry["step"] is not None:
        step = entry["step"]
        if not _is_number(step) or step <= 0 or (
            kind == "int" and not float(step).is_integer()
        ):
            raise ValueError(
                f"Search space entry {path!r}: 'step' must be a positive "
                f"{'integer' if kind == 'int' else 'number'}. "
                f"Received: step={step!r}"
            )
        out["step"] = int(step) if kind == "int" else float(step)
    if "default" in entry:
        default = entry["default"]
        if not _is_number(default) or not lo <= default <= hi:
            raise ValueError(
                f"Search space entry {path!r}: default must lie in "
                f"[{lo}, {hi}]. Received: default={default!r}"
            )
        if kind == "int" and not float(default).is_integer():
            raise ValueError(
                f"Search space entry {path!r}: default must be an integer. "
                f"Received: default={default!r}"
            )
        out["default"] = int(default) if kind == "int" else float(default)
    return out


def candidate_values(entry):
    """The values an entry's range is checked with (its ends, or choices)."""
    if entry["type"] == "choice":
        return list(entry["values"])
    return [entry["min"], entry["max"]]


def validate_search_space(search_space, recipe, check=None):
    """Checks a search space against a recipe; returns a normalized copy.

    Every path must name a tunable field of `recipe` (an existing term and
    one of its fields or constructor arguments, an optimizer or data field,
    or a scalar top-level field) and every entry a well-formed range. Each
    range's ends (or each choice) are applied with `recipe.override`, so
    values the config rejects (a learning rate <= 0, a validation split
    >= 1, ...) fail here rather than in the middle of a search.

    Args:
        search_space: dict `path -> entry` (see the module docstring).
        recipe: the base `Recipe`.
        check: optional callable run on every candidate recipe; raise
            `ValueError` to reject it.

    Raises:
        ValueError: naming the offending path and what was received.
    """
    if not isinstance(search_space, dict):
        raise ValueError(
            "A search space is a dict mapping dotted recipe paths to "
            "entries. Received: "
            f"{search_space!r} of type {type(search_space).__name__}"
        )
    if not search_space:
        raise ValueError(
            "The search space is empty: give at least one path to tune. "
            "Received: {}"
        )
    out = {}
    for path, entry in search_space.items():
        _check_path(path, recipe)
        entry = _check_entry(path, entry)
        for value in candidate_values(entry):
            try:
                candidate = recipe.override(**{path: value})
                if check is not None:
                    check(candidate)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"Search space entry {path!r}: the recipe rejects "
                    f"{path}={value!r}: {e}"
                ) from e
        out[path] = entry
    return out


# -- keras-tuner --------------------------------------------------------------
def declare(hp, search_space):
    """Declares every entry on a `keras_tuner.HyperParameters`; returns the
    current values as a dict `path -> value`."""
    values = {}
    for path, entry in search_space.items():
        kind = entry["type"]
        kwargs = {}
        if "default" in entry:
            kwargs["default"] = entry["default"]
        if kind == "choice":
            values[path] = hp.Choice(path, entry["values"], **kwargs)
        elif kind == "int":
            values[path] = hp.Int(path, entry["min"], entry["max"],
                                  step=entry.get("step", 1), **kwargs)
        elif kind == "log":
            values[path] = hp.Float(path, entry["min"], entry["max"],
                                    sampling="log", **kwargs)
        else:
            values[path] = hp.Float(path, entry["min"], entry["max"],
                                    step=entry.get("step"), **kwargs)
    return values


def overrides_from_values(values, search_space):
    """The `Recipe.override` changes of a trial: its values restricted to
    the search space (keras-tuner's own `tuner/...` entries dropped)."""
    missing = [p for p in search_space if p not in values]
    if missing:
        raise ValueError(
            f"The hyperparameter values lack {missing}. "
            f"Received: {sorted(values)}"
        )
    return {p: values[p] for p in search_space}
