"""No module reaches into another class's or module's private attributes (a ratchet).

An attribute access ``x._name`` is foreign when ``x`` is not ``self``/``cls`` and the
module itself defines no ``_name`` (as ``self._name``, a private function or a slot).
The pipeline (``resilience/``), ``concurrency/``, ``limits/`` and ``backends/`` must
have none, and neither may the rest of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import headway

SRC = Path(headway.__file__).parent

#: Foreign private accesses allowed in src/headway: none left; never raise it.
BUDGET = 0


def _own_names(tree: ast.Module) -> set[str]:
    own: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            own.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            own.update(value if isinstance(value, tuple) else ())
    return own


def foreign_accesses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in own:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"{path.relative_to(SRC)}:{node.lineno}: .{name}")
    return found


def test_the_pipeline_uses_public_interfaces_only() -> None:
    strict = [
        *sorted((SRC / "resilience").rglob("*.py")),
        *sorted((SRC / "concurrency").rglob("*.py")),
        *sorted((SRC / "limits").rglob("*.py")),
        *sorted((SRC / "backends").rglob("*.py")),
        SRC / "http" / "_attempt.py",
        SRC / "events.py",
        SRC / "errors.py",
        SRC / "__init__.py",
    ]
    found = [hit for path in strict for hit in foreign_accesses(path)]
    assert found == []


def test_foreign_private_access_does_not_grow() -> None:
    found = [hit for path in sorted(SRC.rglob("*.py")) for hit in foreign_accesses(path)]
    assert len(found) <= BUDGET, "\n".join(found)


def test_the_checker_finds_a_foreign_access(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f(pool):\n    return pool._in_use\n", encoding="utf-8")
    assert [hit.split(": ")[1] for hit in _relative(module)] == ["._in_use"]


def _relative(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _own_names(tree)
    return [
        f"{path.name}:{n.lineno}: .{n.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and n.attr.startswith("_")
        and not n.attr.startswith("__")
        and n.attr not in own
    ]
