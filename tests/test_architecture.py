"""The house plan holds: no import cycles, and no room imports a room on a higher floor.

Every ``import`` / ``from ... import`` statement of every module counts - at module level, inside
functions, and under ``TYPE_CHECKING`` - as do ``importlib.import_module("knowgate...")`` calls:
a cycle that only closes at run time, or an annotation that reaches upstairs, still ties the
rooms together. The floors are those of the house plan (shared/DESIGN.md, docs/architecture.md).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT_PACKAGE = "knowgate"

#: Floor of every room (a top-level module or subpackage of knowgate). A room may import rooms
#: on its own floor or below. ``config`` holds the router's configuration: it imports
#: ``models.config`` (floor 2) and ``policy.spec`` (floor 1), which puts it on floor 2.
FLOORS: dict[str, int] = {
    "errors": 0,
    "schema": 0,
    "jsonio": 0,
    "_version": 0,
    "text": 0,
    "checkpoint_cache": 0,
    "signals": 1,
    "policy": 1,
    "retrieval": 1,
    "prompting": 1,
    "models": 2,
    "config": 2,
    "routing": 3,
    "experiments": 4,
    "evaluation": 4,
    "studies": 4,
    "integrations": 5,
    "cli": 6,
    "__main__": 6,
}

#: Known violations outside the rooms this change regrouped, each to be removed by the change that
#: fixes it; the test fails on any violation not listed here, and on a listed one that is gone.
ALLOWED_UPWARD: set[tuple[str, str]] = set()
ALLOWED_CYCLES: list[set[str]] = []


def module_names(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``package`` under ``src``."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, from every import statement anywhere."""
    modules = module_names(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node)
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    targets.add(child if child in modules else base)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute | ast.Name)
                and getattr(node.func, "attr", getattr(node.func, "id", None))
                in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                targets.add(node.args[0].value)
        graph[name] = {
            _known(t, modules) for t in targets if t == package or t.startswith(package + ".")
        } - {name}
    return graph


def _known(target: str, modules: dict[str, Path]) -> str:
    """The deepest existing module of a dotted target (``a.b.Name`` -> ``a.b``)."""
    while target not in modules and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def room(module: str, package: str) -> str | None:
    """The room of a module (``knowgate.policy.base`` -> ``policy``); None for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == package else None


def upward_imports(
    graph: dict[str, set[str]], floors: dict[str, int], package: str
) -> set[tuple[str, str]]:
    """(importer, imported) pairs where a room imports the package root or a higher floor."""
    bad = set()
    for module, targets in graph.items():
        here = room(module, package)
        if here is None:  # the package root may re-export anything (lazily)
            continue
        for target in targets:
            there = room(target, package)
            if there is None or floors[there] > floors[here]:
                bad.add((module, target))
    return bad


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Every import cycle, one at a time: find one, drop one of its edges, look again."""
    work = {k: set(v) for k, v in graph.items()}
    found = []
    while True:
        try:
            graphlib.TopologicalSorter(work).prepare()
        except graphlib.CycleError as exc:
            cycle = exc.args[1]  # [a, b, ..., a]: each imports the next
            found.append(set(cycle))
            work[cycle[1]].discard(cycle[0])
        else:
            return found


# ------------------------------------------------------------------------------------- the code
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(SRC, ROOT_PACKAGE)


def test_every_room_has_a_floor(graph) -> None:
    rooms = {room(m, ROOT_PACKAGE) for m in graph} - {None}
    assert rooms - FLOORS.keys() == set(), "place new rooms in FLOORS (and docs/architecture.md)"


def test_the_graph_sees_imports_in_functions_and_under_type_checking(graph) -> None:
    # The router imports retrieval inside a function and only for annotations otherwise.
    assert "knowgate.retrieval" in graph["knowgate.routing.router"]
    # A relative-free ``from package import submodule`` points at the submodule.
    assert "knowgate.experiments.experiment_router" in graph["knowgate.experiments"]


def test_no_room_imports_upstairs_or_the_package_root(graph) -> None:
    found = upward_imports(graph, FLOORS, ROOT_PACKAGE)
    assert found - ALLOWED_UPWARD == set(), "imports from a higher floor (or the package root)"
    assert ALLOWED_UPWARD - found == set(), "fixed: remove these from ALLOWED_UPWARD"


def test_no_import_cycles(graph) -> None:
    found = cycles(graph)
    unexpected = [c for c in found if c not in ALLOWED_CYCLES]
    assert unexpected == [], "import cycles"
    assert [c for c in ALLOWED_CYCLES if c not in found] == [], "fixed: remove from ALLOWED_CYCLES"


# ------------------------------------------------------------------------- the checker itself
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_the_checker_finds_hidden_cycles_and_upward_imports(tmp_path) -> None:
    src = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.high import thing\n"
                "def f():\n    from . import b\n"
            ),
            "low/b.py": "import importlib\nimportlib.import_module('pkg.low.a')\n",
            "high.py": "from pkg.low.a import f\nthing = 1\n",
            "mid.py": "from pkg import high\n",
        },
    )
    graph = import_graph(src, "pkg")
    assert graph == {
        "pkg": set(),
        "pkg.low": set(),
        "pkg.low.a": {"pkg.high", "pkg.low.b"},
        "pkg.low.b": {"pkg.low.a"},
        "pkg.high": {"pkg.low.a"},
        "pkg.mid": {"pkg.high"},
    }
    floors = {"low": 0, "high": 2, "mid": 3}
    assert upward_imports(graph, floors, "pkg") == {("pkg.low.a", "pkg.high")}
    found = cycles(graph)
    assert {"pkg.low.a", "pkg.low.b"} in found and {"pkg.low.a", "pkg.high"} in found
    assert len(found) == 2


def test_the_checker_flags_imports_of_the_package_root(tmp_path) -> None:
    src = _package(tmp_path, {"__init__.py": "from pkg import a\n", "a.py": "import pkg\n"})
    graph = import_graph(src, "pkg")
    assert upward_imports(graph, {"a": 0}, "pkg") == {("pkg.a", "pkg")}
    assert cycles(graph) == [{"pkg", "pkg.a"}]
