"""The shape of the package, read from its source (docs/architecture.md explains it).

No import circles (type-only imports count: a circle is a design smell even when it does
not break at import); no module reaches into another object's ``_private`` members;
modules stay small; the roles (broker, worker, clients, top) share only socket-free
modules; every module names its public API in ``__all__``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "madrpc"
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__about__")
MAX_MODULE_LINES = 400
ROLES = {"broker", "worker", "client", "async_client"}
"""Each role is one process (or object) with its own socket; roles never import each other.
(``local`` and ``cli`` put roles together by design; ``top`` is an application of the
client.)"""


def tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))


def imports(module: str) -> set[str]:
    """Modules of the package that ``module`` imports, type-only imports included."""
    found: set[str] = set()
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("madrpc."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("madrpc."))
    return found & set(MODULES)


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            circle = visit(imported, path + [module])
            if circle is not None:
                return circle
        done.add(module)
        return None

    for module in graph:
        circle = visit(module, [])
        if circle is not None:
            return circle
    return None


def test_no_module_is_part_of_an_import_circle() -> None:
    graph = {module: imports(module) for module in MODULES}

    assert find_circle(graph) is None


def test_find_circle_notices_a_circle() -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def private_reaches(module: str) -> list[str]:
    """``x._name`` where ``x`` is not ``self`` or ``cls`` (dunders are public)."""
    reaches = []
    for node in ast.walk(tree(module)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not (node.attr.startswith("__") and node.attr.endswith("__"))
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            reaches.append(f"{module}.py:{node.lineno}: {ast.unparse(node)}")
    return reaches


def test_no_module_reaches_into_another_objects_private_members() -> None:
    assert [reach for module in MODULES for reach in private_reaches(module)] == []


@pytest.mark.parametrize("module", MODULES)
def test_every_module_stays_small(module: str) -> None:
    lines = len((PACKAGE / f"{module}.py").read_text(encoding="utf-8").splitlines())

    assert lines <= MAX_MODULE_LINES, f"{module}.py has {lines} lines: a part is missing"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_roles_do_not_import_each_other(role: str) -> None:
    assert imports(role) & (ROLES - {role}) == set()


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__init__"])
def test_every_module_lists_exactly_its_public_names_in_all(module: str) -> None:
    loaded = importlib.import_module(f"madrpc.{module}")
    listed = set(getattr(loaded, "__all__", ()))
    defined = {
        name for name, member in vars(loaded).items()
        if not name.startswith("_")
        and (inspect.isclass(member) or inspect.isfunction(member))
        and member.__module__ == loaded.__name__
    }

    assert [name for name in listed if not hasattr(loaded, name)] == []
    assert defined - listed == set()
