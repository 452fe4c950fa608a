"""The package's layering (docs/architecture.md), checked on the source: every import of one of
ldmkit's parts by another, at module level or inside a function, is an arrow allowed below; the
arrows form no cycle; importing the maths layer loads nothing above it; `import ldmkit` loads
no torch; no module imports another's private names."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ldmkit"

# part -> its layer; a part may import only parts of lower layers, and those of its own layer
# named in SAME_LAYER. The front ends (apps) are imported by nothing but `python -m ldmkit`.
LAYERS = {
    "config": 0, "utils": 0, "storage": 0,
    "diffusion": 1, "nets": 1, "conditioning": 1, "data": 1,
    "autoencoders": 2, "metrics": 2,
    "model": 3,
    "io": 4, "finetune": 4, "family": 4,
    "pipelines": 5,
    "train": 6,
    "apps": 7, "__main__": 8,
}
SAME_LAYER = set()  # no arrow between parts of one layer: diffusion and nets never meet, nor io, finetune, family
ROOT_IMPORTS = {"pipelines"}  # ldmkit/__init__.py: Pipeline, imported lazily
ROOT_IMPORTERS = {"apps"}  # ldmkit.__version__, for the PNGs' "software" text


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every `import` / `from ... import` in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return [(target, names) for target, names in found if target == "ldmkit" or target.startswith("ldmkit.")]


def _part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "ldmkit"


def _arrows() -> dict[tuple[str, str], str]:
    """(importing part, imported part) -> one place it happens."""
    arrows = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _part(_module_name(path))
        for target, _ in _imports(path):
            there = _part(target)
            if there != here:
                arrows.setdefault((here, there), str(path.relative_to(PACKAGE.parent)))
    return arrows


def test_every_part_has_a_layer():
    parts = {_part(_module_name(p)) for p in PACKAGE.rglob("*.py")} - {"ldmkit"}
    assert parts <= set(LAYERS), f"parts without a layer in LAYERS: {sorted(parts - set(LAYERS))}"


def test_every_import_goes_down_the_layers():
    wrong = []
    for (here, there), where in _arrows().items():
        if here == "ldmkit":
            allowed = there in ROOT_IMPORTS
        elif there == "ldmkit":
            allowed = here in ROOT_IMPORTERS
        else:
            allowed = LAYERS[there] < LAYERS[here] or (here, there) in SAME_LAYER
        if not allowed:
            wrong.append(f"{here} (layer {LAYERS.get(here)}) -> {there} (layer {LAYERS.get(there)}), in {where}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_parts_import_each_other_without_a_cycle():
    graph: dict[str, set[str]] = {}
    for here, there in _arrows():
        graph.setdefault(here, set()).add(there)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_module_imports_another_modules_private_names():
    wrong = [f"{path.relative_to(PACKAGE.parent)}: from {target} import {name}"
             for path in PACKAGE.rglob("*.py") for target, names in _imports(path)
             for name in names if name.startswith("_") and not name.startswith("__")]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module, above", [
    ("ldmkit.diffusion", ["ldmkit.nets", "ldmkit.model", "ldmkit.io", "ldmkit.pipelines", "ldmkit.train",
                          "ldmkit.apps"]),
    ("ldmkit.nets", ["ldmkit.diffusion", "ldmkit.model", "ldmkit.io", "ldmkit.pipelines", "ldmkit.train",
                     "ldmkit.apps"]),
    ("ldmkit.model", ["ldmkit.io", "ldmkit.finetune", "ldmkit.pipelines", "ldmkit.train", "ldmkit.apps"]),
    ("ldmkit.pipelines", ["ldmkit.train", "ldmkit.apps"]),
    ("ldmkit", ["torch", "ldmkit.pipelines"]),
])
def test_importing_a_layer_loads_nothing_above_it(module, above):
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                 .stdout.split())
    wrong = sorted(name for name in loaded for top in above if name == top or name.startswith(top + "."))
    assert not wrong, f"import {module} loaded {wrong}"
