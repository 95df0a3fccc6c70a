"""The import arrows of ../shared/STYLE.md, read from the source (no import
runs): every arrow between the package's parts points down a tier, no
module-level import circle, configs import no TensorFlow, nothing in the
package or the tests imports `experiments/` or `benchmarks/`."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "keras_semkd")

#: Tier of each top-level part of the package; an import must go to a
#: strictly lower tier (STYLE.md: experiments -> configs/tuning/export/data
#: -> distillers -> losses/models -> layers -> registry). `training`,
#: `resolve` and `protocol` orchestrate the parts below them.
TIERS = {
    "registry": 0, "utils": 0,
    "layers": 1,
    "losses": 2, "models": 2,
    "distillers": 3,
    "configs": 4, "data": 4, "export": 4, "distribute": 4, "plotting": 4,
    "evaluation": 4,
    "training": 5, "resolve": 5,
    "tuning": 6, "protocol": 6,
}
#: Arrows inside one tier that are allowed, and why: the serving export
#: bakes the data's normalization statistics and class names into the
#: signature.
SIBLING_ARROWS = {("export", "data")}


def _modules():
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                if name.endswith(".__init__"):
                    name = name[: -len(".__init__")]
                out[name] = path
    return out


MODULES = _modules()


def _imports(path):
    """Names of the modules `path` imports (`from p import m` counts as
    `p.m` when that is a module)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                names.add(sub if sub in MODULES else node.module)
    return names


def _part(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_part_has_a_tier():
    parts = {_part(m) for m in MODULES} - {None}
    assert parts <= set(TIERS), sorted(parts - set(TIERS))


def test_arrows_point_down_a_tier():
    wrong = []
    for module, path in MODULES.items():
        src = _part(module)
        for name in _imports(path):
            dst = _part(name) if name.startswith("keras_semkd.") else None
            if src is None or dst is None or dst == src:
                continue
            if TIERS[dst] < TIERS[src] or (src, dst) in SIBLING_ARROWS:
                continue
            wrong.append(f"{module} -> {name}")
    assert not wrong, wrong


def test_no_import_circle_between_modules():
    # Package __init__ files re-export their modules; arrows into a
    # package's __init__ from its own modules are the usual Python idiom and
    # not counted.
    graph = {}
    for module, path in MODULES.items():
        graph[module] = {
            n for n in _imports(path)
            if n in MODULES and n != module
            and not (os.path.basename(MODULES[n]) == "__init__.py"
                     and module.startswith(n + "."))
            and not (os.path.basename(path) == "__init__.py"
                     and n.startswith(module + "."))
        }
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == "open":
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_configs_import_no_tensorflow_or_keras():
    for module, path in MODULES.items():
        if _part(module) != "configs":
            continue
        heavy = {n for n in _imports(path)
                 if n.split(".")[0] in ("tensorflow", "keras", "jax")}
        assert not heavy, (module, heavy)


@pytest.mark.parametrize("folder", ["keras_semkd", "tests"])
def test_nothing_imports_the_scripts(folder):
    bad = []
    for base, _, files in os.walk(os.path.join(ROOT, folder)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(base, f)
                for name in _imports(path):
                    if name.split(".")[0] in ("experiments", "benchmarks"):
                        bad.append((os.path.relpath(path, ROOT), name))
    assert not bad, bad


def test_no_loss_imports_another_loss():
    """Shared numerics live in `keras_semkd.utils`; a loss module imports
    only the losses' base (issue #12)."""
    allowed = {"keras_semkd.losses", "keras_semkd.losses.base"}
    bad = {}
    for name, path in MODULES.items():
        if not name.startswith("keras_semkd.losses.") or \
                name == "keras_semkd.losses.base":
            continue
        others = {m for m in _imports(path)
                  if m.startswith("keras_semkd.losses") and m not in allowed
                  and m in MODULES}
        if others:
            bad[name] = sorted(others)
    assert not bad, bad
