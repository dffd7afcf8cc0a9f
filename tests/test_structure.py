"""The package's shape: no import cycles, stages import one way, every module imports in any order.

The import graph comes from an AST walk of src/skulens (function-level imports included, since a lazy
import is still a dependency; imports under `if TYPE_CHECKING:` are not, since they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "skulens"

# The stages in the order of the data's journey: a module may import its own stage and those before it.
# Peers at one rank (search and deploy) may import each other only where no cycle results (checked apart).
RANK = {
    "_version": 0, "config": 0, "data": 0,
    "models": 1,
    "evaluate": 2,
    "train": 3,
    "search": 4, "deploy": 4, "detect": 4, "recommend": 5,
    "serve": 6,
    "api": 7, "cli": 7, "": 7,  # "" is the package's __init__: the lazy public front
}
# Known exceptions, each with its reason. Keep this list short.
ALLOWED_UPWARD = {
    # Model.evaluate(...) is the convenience the README has always shown; it reaches the evaluator lazily
    # (the evaluator imports Model only for type checking). `skulens.evaluate(model, ...)` is the front door.
    ("skulens.models.predictor", "skulens.evaluate.evaluator"),
}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                skip.update(id(n) for n in ast.walk(stmt))
    return skip


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    deps: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for cand in (target, *(f"{target}.{a.name}" for a in node.names)):
                if cand in mods and cand != name:
                    deps.add(cand)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name in mods and a.name != name)
    return deps


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    return cycles


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "skulens.models.predictor" in graph
    assert find_cycles(graph) == []


def test_stages_import_one_way() -> None:
    graph = import_graph()
    wrong = []
    for mod, deps in graph.items():
        for dep in deps:
            if RANK[_stage(mod)] < RANK[_stage(dep)] and (mod, dep) not in ALLOWED_UPWARD:
                wrong.append(f"{mod} -> {dep}")
    assert wrong == []


def test_no_stage_imports_the_front_or_a_face() -> None:
    graph = import_graph()
    faces = ("skulens.api", "skulens.cli", "skulens.serve")
    wrong = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
             if d.startswith(faces) and not m.startswith(("skulens.cli", "skulens.serve")) and m != "skulens"]
    assert wrong == []
    # The CLI is one package; the serve stage never reaches into it.
    assert not [m for m, deps in graph.items() if m.startswith("skulens.serve") and
                any(d.startswith("skulens.cli") for d in deps)]


def test_every_user_error_class_named_by_the_cli_exists() -> None:
    import importlib

    from skulens.cli._errors import USER_ERROR_CLASSES

    for module, name in USER_ERROR_CLASSES:
        assert issubclass(getattr(importlib.import_module(module), name), Exception), (module, name)


def test_data_imports_nothing_from_models() -> None:
    graph = import_graph()
    assert not [(m, d) for m, deps in graph.items() if _stage(m) == "data" for d in deps if _stage(d) != "data"]


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_every_module_imports_in_any_order(order: str) -> None:
    names = sorted(n for n in import_graph() if not n.endswith("__main__"))  # __main__ runs the CLI
    if order == "reversed":
        names.reverse()
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"


def test_the_front_functions_and_their_subpackages_both_import() -> None:
    code = ("import skulens, skulens.train.engine as e, skulens.evaluate.metrics as m\n"
            "from skulens.evaluate.report import write_report\n"
            "assert callable(skulens.train) and callable(skulens.evaluate)\n"
            "assert e.fit and m.EvalReport and write_report\n"
            "assert skulens.train.__doc__.startswith('Fine-tune') and skulens.evaluate.__doc__.startswith('Evaluate')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
