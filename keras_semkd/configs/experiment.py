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
"""

import dataclasses
import json
from typing import Any, Mapping, Optional, Tuple

SELECTORS = (
    "@stages",
    "@last_stage",
    "@hint",
    "@stages_preact",
    "@last_stage_preact",
)


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
        object.__setattr__(self, "milestones",
                           tuple(int(m) for m in self.milestones))
        if self.learning_rate <= 0:
            raise ValueError(
                "learning_rate must be > 0. "
                f"Received: learning_rate={self.learning_rate}"
            )
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(
                "milestones must be increasing. "
                f"Received: milestones={self.milestones}"
            )


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
    limit_train: Optional[int] = None  # first N training examples (smoke)
    limit_eval: Optional[int] = None

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(
                f"batch_size must be > 0. Received: {self.batch_size}"
            )
        if not 0.0 <= self.validation_split < 1.0:
            raise ValueError(
                "validation_split must be in [0, 1). "
                f"Received: {self.validation_split}"
            )


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

    def distillation_losses(self):
        """The terms as the `Distiller`'s `distillation_losses` list
        (selectors still unresolved)."""
        return [t.to_dict() for t in self.terms]

    def override(self, **changes):
        """Returns a copy with dotted-path overrides applied, e.g.
        `override(**{"optimizer.learning_rate": 0.01, "epochs": 2,
        "terms.kd.weight": 0.5, "terms.kd.temperature": 2})`."""
        d = self.to_dict()
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
