"""Typed, frozen experiment configs that round-trip through JSON.

A distillation run is data: which teacher and student, which distillation
terms with which weights and arguments, how to optimize, which data. This
module imports no TensorFlow; builders elsewhere turn a config into models,
a `Distiller` and `tf.data` pipelines.

Feature selectors: a term's `teacher_keys` / `student_keys` may be concrete
output keys (`"stage2"`, `"embedding"`, `"logits"`) or selectors resolved
against each model's stage features when the distiller is built, so one
method declaration fits every teacher/student pair:

- `"@stages"`: every stage feature map (RepDistiller's `feat[1:-1]`); teacher
  and student lists are paired from the first stage, truncated to the
  shorter list (as RepDistiller's `zip` does);
- `"@last_stage"`: the last stage map (RepDistiller's `feat[-2]`);
- `"@hint"`: RepDistiller's FitNet hint (`feat[2]`, our `"stage2"`);
- `"@stages_preact"` / `"@last_stage_preact"`: the pre-activation variants
  where a model has them (falling back to the post-activation map).

`keras_semkd.distillers.selectors` resolves them (and lists them as
`SELECTORS`).
"""

import dataclasses
import json
import math
import numbers
import typing
from typing import Any, Mapping, Optional, Tuple

def _kind(hint):
    """A readable name of a field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{_kind(inner[0])} or null"
    if origin is tuple:
        return "a list of " + {bool: "booleans", int: "integers",
                               float: "numbers", str: "strings"}.get(
            args[0], getattr(args[0], "__name__", str(args[0])))
    return {bool: "a boolean", int: "an integer", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value, hint, where):
    """Checks `value` against the declared type `hint` of field `where`
    and returns it normalized (ints for float fields become floats,
    lists become tuples); raises a `ValueError` naming the field, the
    expected type and what was received."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)

    def bad(extra=""):
        name = where.rsplit(".", 1)[-1]
        return ValueError(
            f"{where} must be {_kind(hint)}{extra}. Received: "
            f"{name}={value!r} ({type(value).__name__})"
        )

    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad()
        if isinstance(value, numbers.Integral):
            return int(value)
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise bad()
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad()
        if not math.isfinite(float(value)):
            raise bad(" (finite)")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(
                value, (list, tuple)):
            raise bad()
        try:
            return tuple(_coerce(v, args[0], where) for v in value)
        except ValueError:
            raise bad() from None
    return value


def _check_types(obj):
    """Applies `_coerce` to every field of the frozen dataclass `obj`
    whose declared type is a plain scalar, an `Optional` scalar or a
    `Tuple[scalar, ...]`."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        hint = hints[field.name]
        args = typing.get_args(hint)
        scalar = (bool, int, float, str)
        if hint in scalar or (args and all(
                a in scalar or a is type(None) or a is Ellipsis
                for a in args)):
            value = _coerce(getattr(obj, field.name), hint,
                            f"{type(obj).__name__}.{field.name}")
            object.__setattr__(obj, field.name, value)


def _check_range(where, value, ok, requirement):
    if value is not None and not ok(value):
        name = where.rsplit(".", 1)[-1]
        raise ValueError(
            f"{where} must be {requirement}. Received: {name}={value!r}"
        )


def _flatten(d, prefix=""):
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; term lists are keyed by term
    name (`terms.<name>.<field>`, the override syntax)."""
    flat = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if key == "terms" and not prefix and isinstance(value, list):
            names = [t.get("name") for t in value]
            for i, term in enumerate(value):
                label = term.get("name") if names.count(
                    term.get("name")) == 1 else f"{term.get('name')}#{i}"
                for k, v in term.items():
                    if k != "name":
                        flat[f"terms.{label}.{k}"] = v
            flat["terms"] = tuple(names)
        elif isinstance(value, dict):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _check_fields(cls, data):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"Unknown {cls.__name__} field(s) {unknown}. "
            f"Known fields: {sorted(names)}"
        )


@dataclasses.dataclass(frozen=True)
class Term:
    """One weighted distillation term: a registered loss name, its weight
    and its constructor arguments (which may use feature selectors)."""

    name: str
    weight: float
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(
                f"A term needs a loss name. Received: name={self.name!r}"
            )
        try:
            object.__setattr__(self, "weight", float(self.weight))
        except (TypeError, ValueError):
            raise ValueError(
                f"Term {self.name!r}: weight must be a number. "
                f"Received: weight={self.weight!r}"
            ) from None
        if not math.isfinite(self.weight):
            raise ValueError(
                f"Term {self.name!r}: weight must be finite. "
                f"Received: weight={self.weight!r}"
            )
        if not isinstance(self.kwargs, Mapping):
            raise ValueError(
                f"Term {self.name!r}: kwargs must be a mapping. "
                f"Received: kwargs={self.kwargs!r}"
            )
        object.__setattr__(self, "kwargs", dict(self.kwargs))

    def to_dict(self):
        return {"name": self.name, "weight": self.weight, **self.kwargs}

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        if "name" not in data or "weight" not in data:
            raise ValueError(
                f"A term dict needs 'name' and 'weight'. Received: {data}"
            )
        name, weight = data.pop("name"), data.pop("weight")
        if "kwargs" in data and len(data) == 1:
            data = dict(data["kwargs"])
        return cls(name=name, weight=weight, kwargs=data)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """SGD with step decay, the CIFAR-100 KD protocol (RepDistiller).

    `weight_decay` follows PyTorch's *coupled* L2 semantics: the gradient
    gets `weight_decay * w` added before momentum (implemented as an L2
    regularizer of `weight_decay / 2` on every trainable weight, see
    docs), not Keras' decoupled `weight_decay`.
    """

    learning_rate: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    milestones: Tuple[int, ...] = (150, 180, 210)
    decay_rate: float = 0.1

    def __post_init__(self):
        _check_types(self)
        if self.learning_rate <= 0:
            raise ValueError(
                "learning_rate must be > 0. "
                f"Received: learning_rate={self.learning_rate}"
            )
        _check_range("OptimizerConfig.momentum", self.momentum,
                     lambda v: 0.0 <= v < 1.0, "in [0, 1)")
        _check_range("OptimizerConfig.weight_decay", self.weight_decay,
                     lambda v: v >= 0.0, ">= 0")
        _check_range("OptimizerConfig.decay_rate", self.decay_rate,
                     lambda v: v > 0.0, "> 0")
        for m in self.milestones:
            _check_range("OptimizerConfig.milestones", m,
                         lambda v: v > 0, "positive epochs")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(
                "milestones must be increasing. "
                f"Received: milestones={self.milestones}"
            )


# Datasets whose images have one fixed size (DataConfig.image_size is
# refused for them).
_FIXED_SIZE_DATASETS = ("cifar100", "cinic10")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset and how to batch it."""

    dataset: str = "cifar100"
    data_dir: Optional[str] = None
    batch_size: int = 64
    validation_split: float = 0.0
    # Seed of the validation carve-out; None: the recipe's seed. Fix it to
    # keep one validation set across seeds (and the teacher's training
    # images disjoint from it).
    split_seed: Optional[int] = None
    augment: bool = True
    # At most N training examples per epoch (whole batches of the shuffled
    # epoch stream: a fresh random draw every epoch), for smoke runs.
    limit_train: Optional[int] = None
    # Evaluate on a stratified subset of N images of the evaluation split
    # (the same subset for every seed); reported as a subset.
    limit_eval: Optional[int] = None
    # Images resized to (height, width) on load: every image of an
    # `image_folder` (any size, mixed sizes too); the size `synthetic` data
    # are generated at (square). None: the data's own size.
    image_size: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        _check_types(self)
        if not self.dataset:
            raise ValueError(
                f"DataConfig.dataset must name a dataset. Received: "
                f"dataset={self.dataset!r}"
            )
        _check_range("DataConfig.split_seed", self.split_seed,
                     lambda v: v >= 0, ">= 0")
        for name in ("limit_train", "limit_eval"):
            _check_range(f"DataConfig.{name}", getattr(self, name),
                         lambda v: v >= 1, ">= 1 (or null for no limit)")
        if self.image_size is not None:
            size = self.image_size
            if isinstance(size, int) and not isinstance(size, bool):
                size = (size, size)
            if (not isinstance(size, (list, tuple)) or len(size) != 2
                    or not all(isinstance(d, int) and not isinstance(d, bool)
                               and d >= 1 for d in size)):
                raise ValueError(
                    "DataConfig.image_size must be [height, width] with "
                    "positive integers (or one integer), or null. "
                    f"Received: image_size={self.image_size!r}")
            size = (int(size[0]), int(size[1]))
            if self.dataset in _FIXED_SIZE_DATASETS:
                raise ValueError(
                    "DataConfig.image_size resizes image_folder data on "
                    "load (and sizes synthetic data); "
                    f"{self.dataset!r} images are 32x32: leave it null. "
                    f"Received: dataset={self.dataset!r}, "
                    f"image_size={self.image_size!r}")
            if self.dataset == "synthetic" and size[0] != size[1]:
                raise ValueError(
                    "Synthetic images are square: give one size. Received: "
                    f"image_size={self.image_size!r}")
            object.__setattr__(self, "image_size", size)
        if self.batch_size <= 0:
            raise ValueError(
                f"batch_size must be > 0. Received: {self.batch_size}"
            )
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(
                "validation_split must be in [0, 1). "
                f"Received: {self.validation_split}"
            )

    def loader_kwargs(self):
        """The keyword arguments of `get_dataset` / `load_split` set here
        beyond the common ones (`image_size` when set)."""
        if self.image_size is None:
            return {}
        if self.dataset == "synthetic":
            return {"image_size": self.image_size[0]}
        return {"image_size": tuple(self.image_size)}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A complete distillation (or teacher-training) experiment.

    `teacher=None` trains `student` alone (teacher training or the
    student-alone baseline).
    """

    name: str
    student: str
    teacher: Optional[str] = None
    terms: Tuple[Term, ...] = ()
    student_loss_weight: float = 1.0
    epochs: int = 240
    optimizer: OptimizerConfig = dataclasses.field(
        default_factory=OptimizerConfig
    )
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    num_classes: int = 100
    seed: int = 0
    mixed_precision: Optional[str] = None
    teacher_weights: Optional[str] = None
    #: Validation runs the teacher and the terms (`True`) or the student
    #: alone (`False`: held-out accuracy only, no teacher forward pass).
    validate_terms: bool = True

    def __post_init__(self):
        terms = tuple(
            t if isinstance(t, Term) else Term.from_dict(t) for t in self.terms
        )
        object.__setattr__(self, "terms", terms)
        if isinstance(self.optimizer, Mapping):
            _check_fields(OptimizerConfig, self.optimizer)
            object.__setattr__(self, "optimizer",
                               OptimizerConfig(**self.optimizer))
        if isinstance(self.data, Mapping):
            _check_fields(DataConfig, self.data)
            object.__setattr__(self, "data", DataConfig(**self.data))
        if not isinstance(self.optimizer, OptimizerConfig):
            raise ValueError(
                "Recipe.optimizer must be an OptimizerConfig or a dict. "
                f"Received: optimizer={self.optimizer!r}"
            )
        if not isinstance(self.data, DataConfig):
            raise ValueError(
                "Recipe.data must be a DataConfig or a dict. "
                f"Received: data={self.data!r}"
            )
        _check_types(self)
        if not self.name or not self.student:
            raise ValueError(
                "A recipe needs a name and a student. Received: "
                f"name={self.name!r}, student={self.student!r}"
            )
        _check_range("Recipe.num_classes", self.num_classes,
                     lambda v: v >= 2, ">= 2")
        _check_range("Recipe.seed", self.seed, lambda v: v >= 0, ">= 0")
        _check_range("Recipe.student_loss_weight", self.student_loss_weight,
                     lambda v: v >= 0.0, ">= 0")
        if terms and self.teacher is None:
            raise ValueError(
                f"Recipe {self.name!r} has distillation terms but no "
                "teacher."
            )
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0. Received: {self.epochs}")
        if self.mixed_precision not in (None, "mixed_bfloat16",
                                        "mixed_float16"):
            raise ValueError(
                "mixed_precision must be None, 'mixed_bfloat16' or "
                f"'mixed_float16'. Received: {self.mixed_precision!r}"
            )

    # -- (de)serialization ---------------------------------------------------
    def to_dict(self):
        d = dataclasses.asdict(self)
        d["terms"] = [t.to_dict() for t in self.terms]
        d["optimizer"]["milestones"] = list(self.optimizer.milestones)
        if d["data"]["image_size"] is None:
            # Written only when set: the config.json of a run made before
            # the field existed stays the same, so the run still resumes.
            del d["data"]["image_size"]
        else:
            d["data"]["image_size"] = list(d["data"]["image_size"])
        if d["validate_terms"]:
            # Likewise written only when not the default.
            del d["validate_terms"]
        return d

    def to_json(self, **kwargs):
        kwargs.setdefault("indent", 2)
        kwargs.setdefault("sort_keys", True)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data):
        _check_fields(cls, data)
        return cls(**data)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    def diff(self, other):
        """The fields that differ from `other` (a `Recipe` or its dict),
        as `{dotted.path: (this value, other value)}`; a field missing on
        one side reads as `"<absent>"`. Term fields are keyed
        `terms.<name>.<field>`, as in `override`."""
        mine = _flatten(self.to_dict())
        theirs = _flatten(other.to_dict() if isinstance(other, Recipe)
                          else Recipe.from_dict(other).to_dict())
        absent = "<absent>"
        return {
            key: (mine.get(key, absent), theirs.get(key, absent))
            for key in sorted(set(mine) | set(theirs))
            if mine.get(key, absent) != theirs.get(key, absent)
        }

    def distillation_losses(self):
        """The terms as the `Distiller`'s `distillation_losses` list
        (selectors still unresolved)."""
        return [t.to_dict() for t in self.terms]

    def override(self, **changes):
        """Returns a copy with dotted-path overrides applied, e.g.
        `override(**{"optimizer.learning_rate": 0.01, "epochs": 2,
        "terms.kd.weight": 0.5, "terms.kd.temperature": 2})`."""
        d = self.to_dict()
        d["data"].setdefault("image_size", None)
        for path, value in changes.items():
            parts = path.split(".")
            if parts[0] == "terms":
                if len(parts) != 3:
                    raise ValueError(
                        "Term overrides look like 'terms.<name>.<field>'. "
                        f"Received: {path!r}"
                    )
                matches = [t for t in d["terms"] if t["name"] == parts[1]]
                if not matches:
                    raise ValueError(
                        f"Recipe {self.name!r} has no term {parts[1]!r}. "
                        f"Terms: {[t['name'] for t in d['terms']]}"
                    )
                for t in matches:
                    t[parts[2]] = value
                continue
            target = d
            for p in parts[:-1]:
                if p not in target or not isinstance(target[p], dict):
                    raise ValueError(
                        f"Unknown config section {p!r} in override "
                        f"{path!r}."
                    )
                target = target[p]
            if parts[-1] not in target:
                raise ValueError(
                    f"Unknown config field {parts[-1]!r} in override "
                    f"{path!r}. Known: {sorted(target)}"
                )
            target[parts[-1]] = value
        return Recipe.from_dict(d)
