"""Training and evaluation have one shape: a spec module, a runner that imports it, and components,
with imports that never go round in a circle. Imports are read from the source (module level AND
inside functions, where a circle hides behind a lazy import), so the check needs no ML library."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
ML_LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")
PACKAGES = {"workers.core.training": "job", "workers.core.evaluation": "runner"}  # package: its runner


def imported_names(source: str) -> set[str]:
    """Every dotted name an `import` or `from ... import` anywhere in the source may load (a
    `from pkg import mod` gives both pkg and pkg.mod)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, "the project uses absolute imports only"
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def package_graph(folder: Path, package: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> modules of the same package it imports, module -> every name it imports)."""
    modules = {path.stem for path in folder.glob("*.py") if path.stem != "__init__"}
    everything = {m: imported_names((folder / f"{m}.py").read_text(encoding="utf-8")) for m in modules}
    inside = {m: {name[len(package) + 1:].split(".")[0] for name in names if name.startswith(package + ".")}
              & modules - {m} for m, names in everything.items()}
    return inside, everything


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            cycle = visit(target, path + [module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def _graph(package: str):
    return package_graph(REPO / package.replace(".", "/"), package)


def test_a_circle_hidden_behind_a_lazy_import_is_found(tmp_path):
    (tmp_path / "a.py").write_text("def run():\n    from pkg.b import helper\n    return helper()\n")
    (tmp_path / "b.py").write_text("from pkg import a\n\ndef helper():\n    return a\n")
    (tmp_path / "c.py").write_text("import os\n")
    inside, _ = package_graph(tmp_path, "pkg")
    assert inside == {"a": {"b"}, "b": {"a"}, "c": set()}
    assert find_cycle(inside) in (["a", "b", "a"], ["b", "a", "b"])
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_of_the_package_imports_one_that_imports_it_back(package):
    inside, _ = _graph(package)
    assert {"spec", PACKAGES[package]} <= set(inside)
    cycle = find_cycle(inside)
    assert cycle is None, f"{package} imports in a circle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_the_spec_imports_no_ml_library_and_nothing_of_the_runner_side(package):
    inside, everything = _graph(package)
    ml = {name for name in everything["spec"] if name.split(".")[0] in ML_LIBRARIES}
    assert not ml, f"{package}.spec imports {sorted(ml)}"
    # The spec may read leaf modules of its package (tables such as presets, pure helpers such as
    # extract), which import nothing of the package themselves: so it never reaches the runner or
    # the components the runner drives.
    leaves = {m for m, targets in inside.items() if not targets}
    beyond = sorted(inside["spec"] - leaves)
    assert not beyond, f"{package}.spec imports {beyond}, which import more of the package"
    assert "spec" in inside[PACKAGES[package]], "the runner takes its spec from the spec module"


def test_the_training_spec_imports_only_the_presets_table_of_its_package():
    inside, _ = _graph("workers.core.training")
    assert inside["spec"] == {"presets"}
    # the runner's collaborators take the spec's vocabularies from the spec, not from the runner
    assert {m for m, targets in inside.items() if "job" in targets} == set()

