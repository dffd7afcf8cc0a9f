"""The package runs on the oldest Python it declares (pyproject: requires-python >= 3.10)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "skulens"
MODULES = sorted(SRC.rglob("*.py"))
NEW_IN_311 = {"tomllib"}  # standard-library modules newer than 3.10 (each needs a guarded fallback)


def _id(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


@pytest.mark.parametrize("path", MODULES, ids=_id)
def test_every_module_parses_as_python_3_10(path: Path) -> None:
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside an `if sys.version_info ...:` (either branch)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "version_info" in ast.unparse(node.test):
            return True
    return False


def _unguarded_imports(source: str) -> list[str]:
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        else:
            continue
        found += [f"line {node.lineno}: {n}" for n in names if n in NEW_IN_311 and not _guarded(node, parents)]
    return found


def test_no_module_imports_tomllib_without_a_version_guard() -> None:
    bad = {_id(p): hits for p in MODULES if (hits := _unguarded_imports(p.read_text(encoding="utf-8")))}
    assert bad == {}


def test_the_guard_check_sees_an_unguarded_import() -> None:
    assert _unguarded_imports("import tomllib\n") == ["line 1: tomllib"]
    assert _unguarded_imports("from tomllib import loads\n") == ["line 1: tomllib"]
    guarded = "import sys\nif sys.version_info >= (3, 11):\n    import tomllib\nelse:\n    import tomli as tomllib\n"
    assert _unguarded_imports(guarded) == []
