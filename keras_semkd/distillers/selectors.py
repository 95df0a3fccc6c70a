"""Feature selectors (`"@stages"`, `"@hint"`, ...) resolved against the
named outputs of a teacher and a student (zoo models or tapped views).

See `keras_semkd.configs.experiment` for what each selector means (this
module does not import `configs/`: the arrow points the other way).
"""

from keras_semkd import models as zoo

SELECTORS = (
    "@stages",
    "@last_stage",
    "@hint",
    "@stages_preact",
    "@last_stage_preact",
)


def _stage_keys(model, preact=False):
    keys = zoo.feature_keys(model, preact=preact)
    if not keys:
        raise ValueError(
            f"Model {model.name!r} has no stage features (outputs "
            f"{sorted(model.output)}); with your own models, tap them with "
            "Distiller(..., features='auto') or by layer name.")
    return list(keys)


def select(selector, model):
    """Returns the list of output keys a selector stands for."""
    outputs = set(model.output)
    if selector == "@stages":
        return _stage_keys(model)
    if selector == "@stages_preact":
        return _stage_keys(model, preact=True)
    if selector == "@last_stage":
        return _stage_keys(model)[-1:]
    if selector == "@last_stage_preact":
        return _stage_keys(model, preact=True)[-1:]
    if selector == "@hint":
        stages = _stage_keys(model)
        # RepDistiller's hint_layer=2 is feat[2] = the second stage map.
        return [stages[1] if len(stages) > 1 else stages[0]]
    if selector.startswith("@"):
        raise ValueError(
            f"Unknown feature selector {selector!r}. Known selectors: "
            f"{', '.join(SELECTORS)}"
        )
    if selector not in outputs:
        raise ValueError(
            f"Model {model.name!r} has no output {selector!r}. Available "
            f"outputs: {sorted(outputs)}"
        )
    return [selector]


def resolve_keys(spec, model):
    """The output keys of a `teacher_keys`/`student_keys` value (a key, a
    selector or a list of them)."""
    if spec is None:
        return None
    items = [spec] if isinstance(spec, str) else list(spec)
    keys = []
    for item in items:
        keys.extend(select(item, model))
    return keys


def has_selector(spec):
    if spec is None:
        return False
    items = [spec] if isinstance(spec, str) else list(spec)
    return any(isinstance(i, str) and i.startswith("@") for i in items)


def resolve_term(term, teacher, student):
    """A term dict with its `teacher_keys`/`student_keys` resolved.

    Teacher and student key lists produced by list-valued selectors are
    paired from the first element and truncated to the shorter one."""
    term = dict(term)
    t = resolve_keys(term.get("teacher_keys"), teacher)
    s = resolve_keys(term.get("student_keys", term.get("teacher_keys")),
                     student)
    if t is not None:
        if s is not None and len(t) != len(s):
            n = min(len(t), len(s))
            t, s = t[:n], s[:n]
        term["teacher_keys"] = t
        term["student_keys"] = s
    return term
