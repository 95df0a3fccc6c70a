"""From a script's choices to a runnable recipe, in one place.

`experiments/distill.py` and `experiments/tune.py` (and user code) name a
recipe (or a `method` with a `teacher` and a `student`), change some of its
fields (dotted overrides, flag values), and run on the data that is here:
CIFAR-100 without a local copy falls back, loudly, to the small generated
dataset, and the class count follows a changed dataset. The quick teacher
trained when no teacher weights are given is `training.train_quick_teacher`.

Sits beside `training` at the top of the import arrows (uses `configs` and
`data`).
"""

import json

from absl import logging

from keras_semkd import configs
from keras_semkd import data as data_lib

#: Data fields the generated-data fallback resets (CIFAR-100 sized limits
#: mean nothing on the generated set), unless they were given explicitly.
_FALLBACK_RESETS = ("data.limit_train", "data.limit_eval")


def parse_value(text):
    """A command-line value: JSON when it parses (`0.1`, `[1, 2]`,
    `true`, `null`), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items):
    """`["optimizer.learning_rate=0.1", ...]` -> `{dotted key: value}`."""
    changes = {}
    for item in items:
        if "=" not in item:
            raise ValueError(
                f"An override needs key=value. Received: {item!r}")
        key, value = item.split("=", 1)
        changes[key.strip()] = parse_value(value)
    return changes


def parse_image_size(values):
    """`["64"]` -> `[64, 64]`, `["64", "48"]` -> `[64, 48]`."""
    try:
        size = [int(v) for v in values]
    except ValueError:
        size = []
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"image_size takes H,W or N (positive integers). Received: "
            f"{','.join(str(v) for v in values)!r}")
    return size


def resolve_recipe(name=None, *, method=None, teacher=None, student=None,
                   changes=None):
    """The recipe `name` (or `configs.make_recipe(teacher, student,
    method)`) with `changes` ({dotted key: value}, `None` values skipped)
    applied, then `with_available_data`.

    Raises:
        ValueError: `method` without both `teacher` and `student`, or an
            unknown field in `changes`.
        KeyError: an unknown recipe or method name (listing the known).
    """
    if method:
        if not (teacher and student):
            raise ValueError(
                "A method needs a teacher and a student. Received: "
                f"method={method!r}, teacher={teacher!r}, "
                f"student={student!r}")
        recipe = configs.make_recipe(teacher, student, method)
    else:
        recipe = configs.get(name)
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    if changes:
        recipe = recipe.override(**changes)
    return with_available_data(recipe, explicit=changes)


def with_available_data(recipe, explicit=()):
    """CIFAR-100 without a local copy -> the generated dataset (with a
    warning; the limits not in `explicit` are reset), and the class count
    of any dataset other than CIFAR-100 read from the data."""
    dataset = recipe.data.dataset
    changes = {}
    if (dataset == "cifar100" and not recipe.data.data_dir
            and data_lib.default_cifar100_dir() is None):
        logging.warning(
            "No CIFAR-100 copy found (looked in %s). Running on a small "
            "GENERATED dataset instead: accuracies are not CIFAR-100 "
            "numbers.",
            ", ".join(str(p) for p in data_lib.paths.data_search_paths()),
        )
        dataset = "synthetic"
        changes["data.dataset"] = dataset
        changes.update({k: None for k in _FALLBACK_RESETS
                        if k not in explicit})
    if dataset != "cifar100":
        data = recipe.override(**changes).data if changes else recipe.data
        info = data_lib.load_split(dataset, "train", data_dir=data.data_dir,
                                   **data.loader_kwargs())[2]
        changes["num_classes"] = info.num_classes
    return recipe.override(**changes) if changes else recipe
