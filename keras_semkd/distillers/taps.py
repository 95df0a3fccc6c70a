"""Tapped views: any Keras model as a teacher or student.

The distillation terms read *named* outputs (`"logits"`, `"stage2"`,
`"embedding"`, ...). The model zoo returns them as a dict; any other model
gets a **tapped view** built here once: a functional `keras.Model` over the
same layers (the same weights: training the view trains the model) whose
output is a dict

* `"logits"` (the model's `logits_key`): the model's output, or its
  pre-softmax tensor when the output is a softmax (see below);
* one entry per declared feature, the output of a layer named by the user
  (`{"s2": "block_6_expand_relu"}`; a layer inside a nested backbone by its
  name or by its path `"mobilenetv2_1.00_224/block_6_expand_relu"`);
* with `"auto"`: `"stage1"`, ..., `"stageN"` (shallow to deep), the last
  layer of each spatial resolution of a convolutional backbone (its stage
  boundaries), and `"embedding"`, the pooled feature fed to the classifier.

The view is one graph: the teacher and the student each run once per step,
their features come out of that same pass. A nested backbone with taps
inside becomes a sub-view (the same layers, with the tapped tensors as extra
outputs) called where the backbone was called.

Models:

* functional models (`keras.applications`, keras-hub tasks and backbones)
  and `keras.Sequential` (built or not): the graph is re-traced through
  nested models, so any layer of a nested backbone can be tapped;
* subclassed models: their `call()` is Python code, Keras keeps no layer
  graph, so they run as one opaque op. Their output (logits, or a dict of
  named outputs) is used as is; asking for layer taps raises an error that
  says what to do instead.

Logits, not probabilities. A classifier whose last op is a softmax — a
`Softmax` layer, `Activation("softmax")`, or a layer built with
`activation="softmax"` (`keras.applications`' default
`classifier_activation`) — is read before the softmax: the view outputs the
softmax's input, or the same layer (same weights) without its activation.
A model whose output still sums to one over the classes after that (a
softmax hidden in a custom layer or a subclassed `call`) is refused before
training.

The choices are logged (absl, INFO) and returned as `TappedView.features`
(key -> layer path), which the `Distiller` puts in its config so a reload
taps the same layers.
"""

import dataclasses
import difflib
from typing import Optional

import keras
import numpy as np
from absl import logging
from keras import tree
from keras.src.models.functional import Functional

AUTO = "auto"
ROLES = ("teacher", "student")

# Layers that never mark a stage boundary: they only pad, drop or reshape
# values on the way to the next op.
_PASS_THROUGH = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.ActivityRegularization,
)
_POOLING = (keras.layers.GlobalAveragePooling2D,
            keras.layers.GlobalMaxPooling2D)


# ---------------------------------------------------------------------------
# What a model is
# ---------------------------------------------------------------------------


def is_graph_model(model):
    """True for a functional or Sequential model whose graph can be traced
    (a functional subclass that overrides `call` is not: its `call` may do
    more than the graph)."""
    if isinstance(model, keras.Sequential):
        return type(model).call is keras.Sequential.call
    if isinstance(model, Functional):
        return type(model).call is Functional.call
    return False


def known_input_shape(model):
    """The `(H, W, C)` a model takes, or `None` when it does not know yet
    (an unbuilt Sequential or subclassed model)."""
    inputs = None
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        if len(inputs) != 1:
            raise ValueError(
                "Distillation needs models with one image input. Received: "
                f"model {model.name!r} with {len(inputs)} inputs "
                f"{[tuple(t.shape) for t in inputs]}"
            )
        return tuple(inputs[0].shape[1:])
    config = model.get_build_config() if model.built else None
    shape = (config or {}).get("input_shape")
    if shape is not None and len(shape) >= 2 and all(
            isinstance(d, (int, type(None))) for d in shape):
        return tuple(shape[1:])
    return None


def _is_softmax(activation):
    return activation is keras.activations.softmax or getattr(
        activation, "__name__", None) == "softmax"


def _single_tensor(outputs):
    if isinstance(outputs, keras.KerasTensor):
        return outputs
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1 and \
            isinstance(outputs[0], keras.KerasTensor):
        return outputs[0]
    return None


# ---------------------------------------------------------------------------
# Tracing: one pass over the graph, through nested models
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Record:
    """One op call of the traced graph."""

    path: str
    op: object
    args: tuple
    kwargs: dict
    outputs: object
    nested: bool = False

    @property
    def output(self):
        return _single_tensor(self.outputs)

    @property
    def first_input(self):
        for x in tree.flatten((self.args, self.kwargs)):
            if isinstance(x, keras.KerasTensor):
                return x
        return None



def _walk(model, inputs, call):
    """Runs `inputs` through `model` one operation at a time, each through
    `call(op, *args, **kwargs)`: a `Sequential`'s layers in order, a
    functional model's graph through Keras' own graph runner."""
    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = call(layer, x)
        return x
    return model._run_through_graph(inputs, operation_fn=lambda op: op,
                                    call_fn=call)

class _Tracer:
    """Calls every op of a model on new symbolic inputs, recording each call
    (path, op, inputs, outputs), nested functional/Sequential models traced
    through: a flat record of the graph, for finding layers, stages and the
    logits. (No model is made of it: names of nested layers may repeat.)"""

    def __init__(self):
        self.records = []
        self.by_output = {}

    def trace(self, model, inputs, prefix=""):
        # Called later with `training=...`, the view passes it to every op
        # that takes it, as the original model does (Keras' functional
        # call overrides a node's own `training` argument too).
        return _walk(model, inputs,
                     lambda op, *a, **k: self._call(op, prefix, *a, **k))

    def _call(self, op, prefix, *args, **kwargs):
        path = prefix + op.name
        if isinstance(op, keras.Model) and is_graph_model(op):
            # A nested backbone: trace through it.
            inputs = args[0] if args else kwargs.get("inputs")
            outputs = self.trace(op, inputs, prefix=path + "/")
            self._add(_Record(path, op, args, kwargs, outputs, nested=True))
            return outputs
        outputs = op(*args, **kwargs)
        self._add(_Record(path, op, args, kwargs, outputs))
        return outputs

    def _add(self, record):
        self.records.append(record)
        out = record.output
        if out is not None:
            self.by_output.setdefault(id(out), record)


# ---------------------------------------------------------------------------
# Layer lookup
# ---------------------------------------------------------------------------


def _find(records, name, role, model):
    """The record a user's layer name (or path) stands for."""
    exact = [r for r in records if r.path == name]
    matches = exact or [r for r in records
                        if r.path.rsplit("/", 1)[-1] == name]
    paths = sorted({r.path for r in matches})
    if not matches:
        known = [r.path for r in records]
        close = difflib.get_close_matches(
            name, known + [p.rsplit("/", 1)[-1] for p in known], n=5)
        hint = f" Close names: {close}." if close else ""
        raise ValueError(
            f"The {role} {model.name!r} has no layer {name!r}.{hint} "
            "List the names with keras_semkd.distillers.layer_paths(model) "
            "(nested layers as 'backbone/layer'). "
            f"Received: features={{{role!r}: {{..: {name!r}}}}}"
        )
    if len(paths) > 1:
        raise ValueError(
            f"Layer name {name!r} of the {role} {model.name!r} is "
            f"ambiguous: it names {paths}. Use the full path."
        )
    if len(matches) > 1:
        raise ValueError(
            f"Layer {paths[0]!r} of the {role} {model.name!r} is called "
            f"{len(matches)} times in the graph (a shared layer), so its "
            "output is not one tensor; tap a layer that is called once."
        )
    record = matches[0]
    if record.output is None:
        raise ValueError(
            f"Layer {record.path!r} of the {role} {model.name!r} returns "
            f"{type(record.outputs).__name__} of several tensors; tap a "
            "layer with one output."
        )
    return record


def layer_paths(model):
    """The layers (and ops) of a model that can be tapped, in graph order:
    `"name"` for a top-level layer, `"backbone/name"` inside a nested model.

    Raises:
        ValueError: for a subclassed model (no layer graph).
    """
    if not is_graph_model(model):
        raise ValueError(_no_graph_message(model, "model"))
    shape = known_input_shape(model)
    if shape is None:
        raise ValueError(
            f"Model {model.name!r} does not know its input shape yet: "
            "build it first (model.build((None, H, W, C))).")
    tracer = _Tracer()
    tracer.trace(model, keras.Input(shape))
    return [r.path for r in tracer.records]


# ---------------------------------------------------------------------------
# Automatic stage taps
# ---------------------------------------------------------------------------


def _spatial(record):
    out = record.output
    if out is None or len(out.shape) != 4 or any(
            d is None for d in out.shape[1:]):
        return None
    return int(out.shape[1]), int(out.shape[2])


def auto_stages(records, input_shape):
    """The stage boundaries of a traced convolutional graph: for each
    spatial resolution the last op producing it, shallow to deep.

    A resolution counts when no later op (padding excluded) produces a
    larger map, so the squeeze maps of squeeze-and-excitation blocks and
    the 1×1 maps of a pooled head are not stages; ops that only reproduce
    the input image's shape (rescaling, normalization layers) are skipped.
    """
    sized = []
    for r in records:
        size = _spatial(r)
        if size is None or r.nested or isinstance(
                r.op, (keras.layers.ZeroPadding2D, keras.layers.InputLayer)):
            continue
        if tuple(r.output.shape[1:]) == tuple(input_shape):
            continue
        sized.append((r, size))
    stages = []
    for i, (r, size) in enumerate(sized):
        area = size[0] * size[1]
        later = sized[i + 1:]
        if any(s == size for _, s in later):
            continue  # not the last op at this size
        if any(s[0] * s[1] > area for _, s in later):
            continue  # a side branch (e.g. SE squeeze) or a decoder
        first = next(x for x, s in sized if s == size)
        if isinstance(first.op, _POOLING):
            continue  # a pooled head, not a backbone stage
        stages.append(r)
    return stages


def _embedding(records, by_output, logits_record):
    """The pooled feature the classifier reads: the 2-D input of the logits
    layer, looked up through dropout-like layers."""
    x = logits_record.first_input
    while x is not None:
        producer = by_output.get(id(x))
        if producer is None or not isinstance(producer.op, _PASS_THROUGH):
            break
        x = producer.first_input
    if x is None or len(x.shape) != 2:
        return None
    return by_output.get(id(x))


# ---------------------------------------------------------------------------
# Logits
# ---------------------------------------------------------------------------


class _WithoutActivation(keras.layers.Layer):
    """Calls a built layer (same weights) with its activation set to linear:
    the pre-softmax logits of a `Dense(..., activation="softmax")` head."""

    def __init__(self, layer, **kwargs):
        kwargs.setdefault("name", f"{layer.name}_logits")
        super().__init__(dtype=layer.dtype_policy, **kwargs)
        self.layer = layer

    def call(self, *args, **kwargs):
        activation = self.layer.activation
        self.layer.activation = keras.activations.linear
        try:
            return self.layer.call(*args, **kwargs)
        finally:
            self.layer.activation = activation

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)


def _pre_softmax(record, by_output):
    """Where the logits are when `record` applies a softmax: `(path, kind,
    how)` with kind `"output"` (the output of the op at `path`, the
    softmax's input) or `"without_activation"` (the layer at `path`
    called without its softmax activation); `None` when `record` is not a
    softmax."""
    op = record.op
    separate = isinstance(op, keras.layers.Softmax) or (
        type(op).__name__ == "Softmax"
        and type(op).__module__.startswith("keras.")) or (
        isinstance(op, keras.layers.Activation)
        and _is_softmax(op.activation))
    if separate:
        producer = by_output.get(id(record.first_input))
        if producer is None:
            return None
        return (producer.path, "output",
                f"the input of softmax {record.path!r}")
    if _is_softmax(getattr(op, "activation", None)) and isinstance(
            op, keras.layers.Layer) and not record.nested:
        return (record.path, "without_activation",
                f"{record.path!r} without its softmax activation")
    return None


def _transparent(record):
    """Whether Keras' own layer computes the logits, so that a softmax in
    it would have been found from its class or `activation`."""
    if record is None or record.nested:
        return False
    op = record.op
    module = type(op).__module__
    return module.startswith("keras.") and not isinstance(
        op, (keras.layers.Lambda, keras.layers.TFSMLayer))


def _looks_like_probabilities(values):
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape[-1] < 2:
        return False
    return bool((values >= 0).all() and np.allclose(values.sum(-1), 1.0,
                                                    atol=1e-3))


def _probe_logits(view, logits_key, input_shape, role, model, dtype):
    """Runs the view on two random images; raises when the logits are
    probabilities (rows >= 0 summing to 1)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (2,) + tuple(input_shape)).astype(
        dtype or "float32")
    out = view(x, training=False)[logits_key]
    if _looks_like_probabilities(keras.ops.convert_to_numpy(
            keras.ops.cast(out, "float32"))):
        raise ValueError(
            f"The {role} {model.name!r} outputs probabilities (every row "
            "is >= 0 and sums to 1), and no softmax layer or activation was "
            "found to read the logits before it. Distillation needs logits: "
            "end the model in a linear layer (keras.applications: "
            "classifier_activation=None; a custom layer or a subclassed "
            "call(): return the scores before the softmax), or name the "
            f"pre-softmax layer: features={{{role!r}: {{{logits_key!r}: "
            "'<layer name>'}}."
        )


# ---------------------------------------------------------------------------
# The view
# ---------------------------------------------------------------------------


class _Builder:
    """Re-traces a model on new inputs, calling its own ops (nested models
    stay one op each), and collects the tensors at the wanted paths. A
    nested model with wanted paths inside is replaced by a sub-view of it
    (same layers, the wanted tensors as extra outputs) of the same name."""

    def __init__(self, wanted, names):
        self.wanted = wanted  # path -> "output" | "without_activation"
        self.found = {}
        self.names = set(names)

    def _unique(self, name):
        candidate, i = name, 1
        while candidate in self.names:
            i += 1
            candidate = f"{name}_{i}"
        self.names.add(candidate)
        return candidate

    def build(self, model, inputs, prefix=""):
        return _walk(model, inputs,
                     lambda op, *a, **k: self._call(op, prefix, *a, **k))

    def _call(self, op, prefix, *args, **kwargs):
        path = prefix + op.name
        inner = sorted(p for p in self.wanted if p.startswith(path + "/"))
        if inner:
            outputs = self._sub_view(op, path, inner, *args, **kwargs)
        else:
            outputs = op(*args, **kwargs)
        kind = self.wanted.get(path)
        if kind == "output":
            self.found[path] = _single_tensor(outputs)
        elif kind == "without_activation":
            layer = _WithoutActivation(op, name=self._unique(
                f"{op.name}_logits"))
            self.found[path] = layer(*args, **kwargs)
        return outputs

    def _sub_view(self, op, path, inner, *args, **kwargs):
        x = args[0] if args else kwargs.pop("inputs")
        sub_inputs = tree.map_structure(
            lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype), x)
        outer_found, self.found = self.found, {}
        try:
            outputs = self.build(op, sub_inputs, prefix=path + "/")
            taps = [self.found[p] for p in inner]
        finally:
            self.found = outer_found
        flat = tree.flatten(outputs)
        sub = keras.Model(sub_inputs, flat + taps, name=op.name)
        call_kwargs = {k: v for k, v in kwargs.items() if k == "training"}
        result = list(tree.flatten(sub(x, **call_kwargs)))
        self.found.update(zip(inner, result[len(flat):]))
        return tree.pack_sequence_as(outputs, result[:len(flat)])


@dataclasses.dataclass(frozen=True)
class TappedView:
    """What `tapped_view` returns.

    Attributes:
        model: a `keras.Model` with dict outputs (the model itself when it
            already returns a dict with the logits and nothing was tapped).
        features: key -> layer path of every tapped feature (the `"auto"`
            choice resolved), `None` when nothing was tapped.
        logits: how the logits were found (for the log and errors).
    """

    model: keras.Model
    features: Optional[dict]
    logits: str

    @property
    def output_shapes(self):
        return {k: tuple(v.shape) for k, v in self.model.output.items()}


def _no_graph_message(model, role):
    return (
        f"The {role} {model.name!r} is a subclassed keras.Model "
        f"({type(model).__name__}): its call() is Python code, so Keras "
        "keeps no graph of its layers and features cannot be tapped by "
        "layer name. Either (1) return a dict from call(), e.g. "
        "{'logits': logits, 'stage1': x1, 'stage2': x2, 'stage3': x3}, and "
        f"drop features for the {role} (the losses read those keys); or (2) "
        "build the model with the functional API (keras.Model(inputs, "
        "outputs)) or keras.Sequential; or (3) distill logits only (kd, "
        f"dkd) with features={{{role!r}: None}}."
    )


def check_spec(spec, role):
    """Validates one model's features: `None`, `"auto"` or a dict
    key -> layer name."""
    if spec is None or spec == AUTO:
        return spec
    if not isinstance(spec, dict):
        raise ValueError(
            f"The {role}'s features must be None, 'auto' or a dict "
            "{key: layer name}, e.g. {'stage2': 'block_6_expand_relu'}. "
            f"Received: {spec!r}"
        )
    for key, name in spec.items():
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"Feature keys of the {role} must be non-empty strings. "
                f"Received: key {key!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"Feature {key!r} of the {role} must name a layer. "
                f"Received: {name!r}")
    return dict(spec)


def split_features(features):
    """`(teacher_spec, student_spec)` from the `Distiller`'s `features`:
    `None`, `"auto"` (both) or `{"teacher": spec, "student": spec}`."""
    if features is None or features == AUTO:
        return features, features
    if not isinstance(features, dict):
        raise ValueError(
            "features must be None, 'auto' or a dict {'teacher': ..., "
            "'student': ...} with None, 'auto' or {key: layer name} for "
            f"each. Received: features={features!r}"
        )
    unknown = sorted(set(features) - set(ROLES))
    if unknown:
        raise ValueError(
            f"features takes the keys 'teacher' and 'student'. Received "
            f"unknown key(s) {unknown} in features={features!r}"
        )
    return (check_spec(features.get("teacher"), "teacher"),
            check_spec(features.get("student"), "student"))


def tapped_view(model, features=None, *, role="model", logits_key="logits",
                input_shape=None):
    """Builds the tapped view of `model` (see the module docstring).

    Args:
        model: any `keras.Model`.
        features: `None` (logits only, or the model's own dict outputs),
            `"auto"` (stage boundaries and embedding) or a dict
            `{key: layer name or path}`; the key `logits_key` there names
            the layer giving the logits.
        role: `"teacher"` or `"student"`, for messages.
        logits_key: the output key of the logits.
        input_shape: `(H, W, C)` for a model that does not know it (an
            unbuilt Sequential or subclassed model).

    Returns:
        A `TappedView`.
    """
    features = check_spec(features, role)
    shape = known_input_shape(model) or (
        tuple(input_shape) if input_shape is not None else None)
    if shape is None:
        raise ValueError(
            f"The {role} {model.name!r} does not know its input shape (an "
            "unbuilt model) and the other model does not either: build it "
            "(model.build((None, H, W, C))) or pass "
            "input_shape=(H, W, C) to the Distiller.")
    if not model.built and isinstance(model, keras.Sequential):
        # Built as a model (not only its layers), so it saves and reloads.
        model.build((None,) + tuple(shape))
    own = _own_outputs(model)
    if (isinstance(own, dict) and logits_key in own and not features):
        return TappedView(model=model, features=None,
                          logits=f"output {logits_key!r}")
    if features == AUTO and isinstance(own, dict) and any(
            k.startswith("stage") for k in own) and logits_key in own:
        logging.info("%s %s: 'auto' uses its own outputs %s", role,
                     model.name, sorted(own))
        return TappedView(model=model, features=None,
                          logits=f"output {logits_key!r}")

    dtype = None
    try:
        dtype = model.inputs[0].dtype
    except (AttributeError, TypeError, ValueError, IndexError):
        dtype = None
    if not is_graph_model(model):
        return _opaque_view(model, features, role, logits_key, shape, dtype)

    # -- pass 1: a flat record of the graph, to find the layers ----------
    tracer = _Tracer()
    outputs = tracer.trace(model, keras.Input(shape, dtype=dtype))
    records, by_output = tracer.records, tracer.by_output
    own_keys = sorted(outputs) if isinstance(outputs, dict) else None
    explicit = dict(features) if isinstance(features, dict) else {}
    logits_layer = explicit.pop(logits_key, None)
    logits_record = None
    wanted = {}  # path -> "output" | "without_activation"
    resolved = {}
    if logits_layer is not None:
        logits_record = _find(records, logits_layer, role, model)
        wanted[logits_record.path] = "output"
        resolved[logits_key] = logits_record.path
        logits_source = ("path", logits_record.path)
        how = f"layer {logits_record.path!r}"
    else:
        if isinstance(outputs, dict):
            if logits_key not in outputs:
                raise ValueError(
                    f"The {role} {model.name!r} has no {logits_key!r} "
                    f"output. Available outputs: {own_keys}; name the "
                    f"logits layer with features={{{role!r}: "
                    f"{{{logits_key!r}: '<layer>'}}}}.")
            logits_tensor = outputs[logits_key]
            how = f"output {logits_key!r}"
        else:
            logits_tensor = _single_tensor(outputs)
            how = "output"
            if logits_tensor is None:
                raise ValueError(
                    f"The {role} {model.name!r} returns "
                    f"{tree.map_structure(lambda t: tuple(t.shape), outputs)}"
                    ": several outputs, and none is named. Return the "
                    f"logits alone, or a dict with a {logits_key!r} entry, "
                    "or name the logits layer: features={"
                    f"{role!r}: {{{logits_key!r}: '<layer>'}}}}.")
        logits_source = ("own", None)
        logits_record = by_output.get(id(logits_tensor))
        pre = (_pre_softmax(logits_record, by_output)
               if logits_record is not None else None)
        if pre is not None:
            path, kind, how = pre
            wanted[path] = kind
            logits_source = ("path", path)
            logging.info("%s %s: its output is a softmax; the logits are %s",
                         role, model.name, how)
            if kind == "output":
                logits_record = next(r for r in records if r.path == path)

    if features == AUTO:
        stages = auto_stages(records, shape)
        if not stages:
            raise ValueError(
                f"features='auto' found no convolutional stages in the "
                f"{role} {model.name!r} (no 4-D feature maps). Name the "
                f"layers instead: features={{{role!r}: {{'stage1': "
                "'<layer>', ...}}.")
        taps = {f"stage{i}": r for i, r in enumerate(stages, start=1)}
        emb = (_embedding(records, by_output, logits_record)
               if logits_record is not None else None)
        if emb is not None:
            taps["embedding"] = emb
    else:
        taps = {key: _find(records, name, role, model)
                for key, name in explicit.items()}
    for key, record in taps.items():
        if key == logits_key or (own_keys and key in own_keys):
            raise ValueError(
                f"Feature key {key!r} of the {role} {model.name!r} clashes "
                f"with one of its own outputs {own_keys or [logits_key]}; "
                "choose another key.")
        wanted.setdefault(record.path, "output")
        resolved[key] = record.path

    # -- pass 2: the view, nested models kept whole -----------------------
    inputs = keras.Input(shape, dtype=dtype, name=f"{role}_images")
    builder = _Builder(wanted, [r.op.name for r in records])
    outputs = builder.build(model, inputs)
    named = dict(outputs) if isinstance(outputs, dict) else {}
    if logits_source[0] == "own":
        named[logits_key] = (outputs[logits_key] if isinstance(outputs, dict)
                             else _single_tensor(outputs))
    else:
        named[logits_key] = builder.found[logits_source[1]]
    for key, path in resolved.items():
        if key != logits_key:
            named[key] = builder.found[path]
    view = keras.Model(inputs, named, name=f"{model.name}_tapped")
    return _finish(view, model, role, logits_key, shape, dtype, how,
                   resolved, transparent=_transparent(logits_record))


def _opaque_view(model, features, role, logits_key, shape, dtype):
    """The view of a subclassed model: one opaque op, its own outputs."""
    if features:
        raise ValueError(_no_graph_message(model, role))
    inputs = keras.Input(shape, dtype=dtype, name=f"{role}_images")
    try:
        outputs = model(inputs)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            f"Could not call the {role} {model.name!r} on a symbolic input "
            f"of shape {(None,) + tuple(shape)}: make its call() work on "
            "keras.Input tensors (keras.ops only) or build it as a "
            "functional model. Underlying error: "
            f"{type(e).__name__}: {e}") from e
    if isinstance(outputs, dict):
        if logits_key not in outputs:
            raise ValueError(
                f"The {role} {model.name!r} has no {logits_key!r} output. "
                f"Available outputs: {sorted(outputs)}")
        named, how = dict(outputs), f"output {logits_key!r}"
    elif _single_tensor(outputs) is not None:
        named, how = {logits_key: _single_tensor(outputs)}, "output"
    else:
        raise ValueError(
            f"The {role} {model.name!r} returns "
            f"{tree.map_structure(lambda t: tuple(t.shape), outputs)}: "
            "several outputs, and none is named. Return the logits alone "
            f"or a dict with a {logits_key!r} entry.")
    view = keras.Model(inputs, named, name=f"{model.name}_view")
    return _finish(view, model, role, logits_key, shape, dtype, how, {},
                   transparent=False)


def _finish(view, model, role, logits_key, shape, dtype, how, resolved,
            transparent):
    out = view.output[logits_key]
    if len(out.shape) != 2:
        raise ValueError(
            f"The {role}'s logits ({how}) must have shape (batch, "
            f"classes). Received: shape {tuple(out.shape)}")
    if role == "teacher":
        view.trainable = False
    if not transparent:
        # Opaque code computes the logits (a subclassed model, a custom or
        # Lambda layer): check on numbers that they are not probabilities.
        _probe_logits(view, logits_key, shape, role, model,
                      dtype=keras.backend.standardize_dtype(dtype)
                      if dtype is not None else None)
    if resolved:
        logging.info("%s %s taps: %s", role, model.name, ", ".join(
            f"{k} <- {v} {tuple(view.output[k].shape[1:])}"
            for k, v in resolved.items()))
    return TappedView(model=view, features=resolved or None, logits=how)


def _own_outputs(model):
    """The symbolic outputs of a graph model, or `None`."""
    if not is_graph_model(model):
        return None
    try:
        return model.output
    except (AttributeError, ValueError):
        pass
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    return outputs[0] if outputs and len(outputs) == 1 else outputs
