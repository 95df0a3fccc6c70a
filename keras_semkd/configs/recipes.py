"""Named experiments (recipes): the CIFAR-100 protocol for every standard
teacher/student pair and method, plus short GPU and CPU smoke variants.

Names: `"<teacher>-<student>-<method>"` (e.g. `"resnet32x4-resnet8x4-kd"`),
`"teacher-<model>"` for teacher training, `"cpu_smoke"`. `get(name)`
returns a frozen `Recipe`; `names()` lists them.
"""

from keras_semkd.configs.experiment import DataConfig
from keras_semkd.configs.experiment import OptimizerConfig
from keras_semkd.configs.experiment import Recipe
from keras_semkd.configs.experiment import Term
from keras_semkd.registry import Registry

RECIPES = Registry("recipe")

#: The 13 teacher -> student pairs of the CIFAR-100 benchmark (RepDistiller).
STANDARD_PAIRS = (
    ("resnet56", "resnet20"),
    ("resnet110", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("vgg13", "vgg8"),
    ("vgg13", "MobileNetV2"),
    ("ResNet50", "MobileNetV2"),
    ("ResNet50", "vgg8"),
    ("resnet32x4", "ShuffleV1"),
    ("resnet32x4", "ShuffleV2"),
    ("wrn_40_2", "ShuffleV1"),
)

#: Students trained with lr 0.01 in the protocol (RepDistiller).
LOW_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")

#: method -> (student loss weight, terms). Weights and hyperparameters are
#: RepDistiller's / mdistiller's CIFAR-100 defaults (docs/method.md).
#: Feature taps are selectors (see `configs.experiment`), resolved per
#: pair. Terms with learned parts get the recipe's weight decay and CRD its
#: `num_data` from the training split when the distiller is built.
METHODS = {
    "student": (1.0, ()),
    "kd": (0.1, (Term("kd", 0.9, {"temperature": 4.0}),)),
    "fitnet": (1.0, (Term("fitnet", 100.0, {"teacher_keys": "@hint"}),)),
    "at": (1.0, (Term("at", 1000.0, {"teacher_keys": "@stages"}),)),
    "sp": (1.0, (Term("sp", 3000.0, {"teacher_keys": "@last_stage"}),)),
    "cc": (1.0, (Term("cc", 0.02, {"teacher_keys": "embedding"}),)),
    "vid": (1.0, (Term("vid", 1.0, {"teacher_keys": "@stages"}),)),
    "rkd": (1.0, (Term("rkd", 1.0, {"teacher_keys": "embedding"}),)),
    "pkt": (1.0, (Term("pkt", 30000.0, {"teacher_keys": "embedding"}),)),
    "nst": (1.0, (Term("nst", 50.0, {"teacher_keys": "@stages"}),)),
    "crd": (1.0, (Term("crd", 0.8, {"teacher_keys": "embedding"}),)),
    "dkd": (1.0, (Term("dkd", 1.0, {"alpha": 1.0, "beta": 8.0,
                                     "temperature": 4.0,
                                     "warmup_epochs": 20}),)),
    "reviewkd": (1.0, (Term("reviewkd", 1.0, {
        "teacher_keys": ["@stages_preact", "embedding"],
        "student_keys": ["@stages", "embedding"],
        "warmup_epochs": 20}),)),
    # Our SAKD design (docs/method.md §3, the SAKDLoss defaults):
    # native-grid uniformized alignment + per-stage twin branches,
    # composed with logit KD as in the KD recipe.
    "sakd": (0.1, (Term("sakd", 1.0, {"teacher_keys": "@stages"}),
                   Term("kd", 0.9, {"temperature": 4.0}))),
}

#: The first SAKD design (v1; the `SAKDLoss` defaults until issue #9): one
#: 4x4 grid, per-position (cosine) tokens, one head on all stages' uniformized
#: vectors co-trained during training, beta = gamma = 1, 1-epoch warm-up.
#: Pinned where results were recorded with it (the CPU protocol, the
#: screening's `sakd_v1`); docs/method.md Appendix A.
SAKD_V1 = {
    "teacher_keys": "@stages", "mode": "spatial", "grid": 4,
    "temperature": 0.1, "token_norm": "position", "alignment": "kl",
    "alignment_weight": 1.0, "semantic": "shared", "head_scope": "joint",
    "head_input": "uniformized", "pool_grid": 1, "head_weight": 1.0,
    "semantic_ce_weight": 1.0, "semantic_kd_weight": 1.0,
    "head_temperature": 4.0, "warmup_epochs": 1, "prefit_steps": 0,
}


def register_method(name, student_loss_weight, terms):
    """Adds a method to `METHODS` (used by loss modules' recipes)."""
    if name in METHODS:
        raise ValueError(f"Method {name!r} is already declared.")
    METHODS[name] = (student_loss_weight, tuple(terms))


def protocol_optimizer(student):
    lr = 0.01 if student in LOW_LR_STUDENTS else 0.05
    return OptimizerConfig(learning_rate=lr)


def make_recipe(teacher, student, method, **overrides):
    """The standard-protocol recipe of `method` for a pair."""
    if method not in METHODS:
        raise KeyError(
            f"Unknown method {method!r}. Known methods: "
            f"{', '.join(sorted(METHODS))}"
        )
    weight, terms = METHODS[method]
    fields = dict(
        name=f"{teacher}-{student}-{method}",
        teacher=None if method == "student" else teacher,
        student=student,
        terms=terms,
        student_loss_weight=weight,
        optimizer=protocol_optimizer(student),
    )
    fields.update(overrides)
    return Recipe(**fields)


def quick_teacher_recipe(recipe, epochs):
    """The recipe of a quick teacher for `recipe` (its teacher trained
    alone for `epochs` epochs on the same data, classes and seed, SGD 0.05
    without decay), used by the scripts when no teacher weights are given."""
    return Recipe(
        name=f"{recipe.name}-teacher", student=recipe.teacher, epochs=epochs,
        optimizer=OptimizerConfig(learning_rate=0.05, milestones=()),
        data=recipe.data, num_classes=recipe.num_classes, seed=recipe.seed,
    )


def get(name):
    """Returns the recipe registered as `name` (built lazily, so methods
    declared after import are included)."""
    _register_all()
    return RECIPES.get(name)()


def names():
    _register_all()
    return RECIPES.names()


_REGISTERED = set()


def _register_all():
    for teacher, student in STANDARD_PAIRS:
        for method in METHODS:
            key = f"{teacher}-{student}-{method}"
            if key in _REGISTERED:
                continue
            RECIPES.register(
                key,
                lambda t=teacher, s=student, m=method: make_recipe(t, s, m),
            )
            _REGISTERED.add(key)
    for model in sorted({m for pair in STANDARD_PAIRS for m in pair}):
        key = f"teacher-{model}"
        if key not in _REGISTERED:
            RECIPES.register(
                key,
                lambda m=model: Recipe(
                    name=f"teacher-{m}", student=m,
                    optimizer=protocol_optimizer(m),
                ),
            )
            _REGISTERED.add(key)
    for variant in CPU_PROTOCOL_VARIANTS:
        key = f"cpu_protocol-{variant}"
        if key not in _REGISTERED:
            RECIPES.register(key, lambda v=variant: cpu_protocol(v))
            _REGISTERED.add(key)
    if "cpu_protocol-teacher" not in _REGISTERED:
        RECIPES.register("cpu_protocol-teacher", cpu_protocol_teacher)
        _REGISTERED.add("cpu_protocol-teacher")
    if "cpu_smoke" not in _REGISTERED:
        RECIPES.register("cpu_smoke", _cpu_smoke)
        _REGISTERED.add("cpu_smoke")
    for method in METHODS:
        key = f"gpu_short-{method}"
        if method != "student" and key not in _REGISTERED:
            RECIPES.register(key, lambda m=method: _gpu_short(m))
            _REGISTERED.add(key)


def _gpu_short(method):
    """A quarter of the protocol for one GPU lease: resnet32x4 -> resnet8x4,
    60 epochs with the decay milestones scaled by 1/4 (37/45/52). Not the
    published protocol; for quick comparisons on a GPU machine."""
    return make_recipe(
        "resnet32x4", "resnet8x4", method, name=f"gpu_short-{method}",
        epochs=60,
        optimizer=OptimizerConfig(learning_rate=0.05,
                                  milestones=(37, 45, 52)),
    )


def _cpu_smoke():
    """The README's main job, a few minutes on 2 CPU cores: resnet20 ->
    resnet8 with KD, 4 epochs of 12,800 CIFAR-100 training images each (a
    fresh random draw every epoch: 800 steps, about one pass over the
    training set), lr 0.05 then 0.005 for the last epoch, top-1 on the
    10,000 test images. `experiments/distill.py` trains the same student
    alone on the same budget next to it (the teacher is the shipped one, or
    is trained first when there is none)."""
    return Recipe(
        name="cpu_smoke",
        teacher="resnet20",
        student="resnet8",
        terms=METHODS["kd"][1],
        student_loss_weight=METHODS["kd"][0],
        epochs=4,
        optimizer=OptimizerConfig(learning_rate=0.05, milestones=(3,)),
        data=DataConfig(batch_size=64, limit_train=12800),
    )


#: The CPU accuracy protocol (BENCHMARKS.md, `experiments/cpu_protocol.py`):
#: resnet20 -> resnet8 on the full CIFAR-100, sized so the whole table
#: (9 variants x 3 seeds) fits in about 2 hours on 2 CPU cores. Variant ->
#: (method, changes to the method's terms keyed by term name, recipe
#: overrides).
CPU_PROTOCOL_VARIANTS = {
    "student": ("student", {}, {}),
    "kd": ("kd", {}, {}),
    "fitnet": ("fitnet", {}, {}),
    "at": ("at", {}, {}),
    # SAKD as it was when these runs were recorded: the first design (v1),
    # pinned, and its ablations (docs/method.md Appendix A).
    "sakd": ("sakd", {"sakd": SAKD_V1}, {}),
    "sakd_no_alignment": ("sakd", {"sakd": {**SAKD_V1,
                                            "alignment_weight": 0.0}}, {}),
    "sakd_no_semantic": ("sakd", {"sakd": {**SAKD_V1, "semantic": "none"}},
                         {}),
    "sakd_grouped": ("sakd", {"sakd": {**SAKD_V1, "mode": "grouped"}}, {}),
    # Mixed precision check: KD in mixed_bfloat16 against KD in float32.
    "kd_bf16": ("kd", {}, {"mixed_precision": "mixed_bfloat16"}),
}

CPU_PROTOCOL_TEACHER = "resnet20"
CPU_PROTOCOL_STUDENT = "resnet8"
CPU_PROTOCOL_EPOCHS = 4


def cpu_protocol_teacher():
    """The protocol's teacher: resnet20, 10 epochs (lr 0.05, x0.1 at 6
    and 9), trained once; its weights ship in the repo (BENCHMARKS.md)."""
    return Recipe(
        name="cpu_protocol-teacher",
        student=CPU_PROTOCOL_TEACHER,
        epochs=10,
        optimizer=OptimizerConfig(learning_rate=0.05, milestones=(6, 9)),
    )


def cpu_protocol(variant, seed=0):
    """A student run of the CPU protocol: resnet8, 4 epochs over the full
    training set (lr 0.05, x0.1 at epoch 3), batch 64, evaluated on the
    10,000 test images."""
    if variant not in CPU_PROTOCOL_VARIANTS:
        raise KeyError(
            f"Unknown CPU-protocol variant {variant!r}. Known: "
            f"{', '.join(CPU_PROTOCOL_VARIANTS)}"
        )
    method, term_changes, overrides = CPU_PROTOCOL_VARIANTS[variant]
    weight, terms = METHODS[method]
    terms = tuple(
        Term(t.name, t.weight, {**t.kwargs, **term_changes.get(t.name, {})})
        for t in terms
    )
    return make_recipe(
        CPU_PROTOCOL_TEACHER, CPU_PROTOCOL_STUDENT, method,
        name=f"cpu_protocol-{variant}",
        terms=terms,
        epochs=CPU_PROTOCOL_EPOCHS,
        optimizer=OptimizerConfig(learning_rate=0.05, milestones=(3,)),
        seed=seed,
        **overrides,
    )
