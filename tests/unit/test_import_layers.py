"""Imports flow one way (docs/ARCHITECTURE.md): ``crypto_mesh`` is the ground floor and imports no service;
each service imports ``crypto_mesh`` and itself, never another service or the launcher; ``launcher`` sits on top
and may import them all. No module imports itself back through a circle.

The modules are read with ``ast`` (every ``import``, also inside functions), not imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "aggregator", "socket_proxy", "etl", "profile_bff")
PACKAGES = ("crypto_mesh", "launcher", *SERVICES)
#: What each package may import of the project's packages, itself aside.
ALLOWED = {
    "crypto_mesh": set(),
    "launcher": {"crypto_mesh", *SERVICES},
    **{service: {"crypto_mesh"} for service in SERVICES},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The project modules ``path`` imports (``from a.b import c`` counts ``a.b`` and ``a.b.c`` if that is a
    module)."""
    found = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = {
        _module_name(path): path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts or package != "auth"
    }
    # A package naming itself (``from crypto_mesh.binance import control`` in its ``__init__``) loads only the
    # submodule, which is counted on its own.
    return {
        name: {target for target in _imports(path) if target in modules and target != name}
        for name, path in modules.items()
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in ALLOWED[package] | {package}
    )
    assert wrong == []


def test_no_module_imports_itself_back_through_a_circle():
    graph = _graph()
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


#: Fixtures of tests/conftest.py that start or reach a real engine: a unit test needs none of them.
ENGINE_FIXTURES = frozenset(
    {
        "postgres",
        "fresh_database",
        "redis_server",
        "redis_database_url",
        "redis_url",
        "redis_cluster_url",
        "kafka_server",
        "kafka_bootstrap",
        "clickhouse_url",
        "exchange",
        "proxy",
    }
)


def _test_modules(directory: str) -> list[Path]:
    return sorted((ROOT / "tests" / directory).glob("test_*.py"))


@pytest.mark.parametrize("directory", ["unit", "integration"])
def test_no_test_module_imports_another_test_module(directory):
    wrong = []
    for path in _test_modules(directory):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            wrong += [f"{path.name} imports {name}" for name in names if name.startswith("test_")]
    assert wrong == []


def test_unit_tests_ask_for_no_engine():
    wrong = []
    for path in _test_modules("unit"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                wanted = {argument.arg for argument in node.args.args} & ENGINE_FIXTURES
                wrong += [f"{path.name}::{node.name} uses {name}" for name in sorted(wanted)]
    assert _test_modules("unit") and wrong == []
