"""The supply chain, checked statically: every install of the project (make, the Dockerfile) comes from lock
files that pin each package with its hashes, the locks satisfy pyproject.toml, CI audits them, and the wheel
declares what its generated gRPC stubs need.

The audit itself needs the network: ``make audit`` (run by .ci/run). Regenerating the locks: ``make lock``.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
LOCK_FILES = ["runtime.txt", "embedded.txt", "test.txt", "build.txt", "tools.txt"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def logical_lines(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = (
        line.split("#", 1)[0].strip() if not line.lstrip().startswith("--hash") else line
        for line in text.splitlines()
    )
    return [line for line in lines if line]


def locked(name: str) -> dict[str, tuple[Version, list[str]]]:
    """``{canonical name: (version, hashes)}`` of a lock file in requirements/."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    for line in logical_lines(LOCKS / name):
        requirement_text, *options = line.split(" --hash=")
        requirement = Requirement(requirement_text.strip())
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{name}: not pinned: {line}"
        pins[canonicalize_name(requirement.name)] = (Version(specifiers[0].version), options)
    return pins


def shell_commands(path: Path) -> list[list[str]]:
    """The words of each line of a Makefile recipe or Dockerfile RUN that calls pip, split on ``&&``."""
    commands = []
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        if line.lstrip().startswith("#"):
            continue
        for part in line.split("&&"):
            words = shlex.split(part.replace("$(LOCKED)", "--quiet --require-hashes"))
            if "pip" in words or "pip_audit" in words or any(word.endswith("/pip") for word in words):
                commands.append(words)
    return commands


@pytest.mark.parametrize("name", LOCK_FILES)
def test_every_locked_package_is_pinned_to_one_version_with_its_hashes(name):
    pins = locked(name)
    assert pins, f"{name} locks nothing"
    for package, (_, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", value.strip()) for value in hashes), (
            package
        )


def satisfied(lock: str, requirements: list[str]) -> None:
    pins = locked(lock)
    environment = default_environment() | {"python_version": "3.11", "python_full_version": "3.11.0"}
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(environment | {"extra": ""}):
            continue
        package = canonicalize_name(requirement.name)
        assert package in pins, f"{text} is not in requirements/{lock}: run `make lock`"
        version = pins[package][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {package}=={version}, outside {text}: run `make lock`"
        )


def test_the_runtime_lock_satisfies_every_dependency_of_pyproject():
    satisfied("runtime.txt", PYPROJECT["project"]["dependencies"])


def test_the_embedded_lock_satisfies_the_dependencies_and_the_embedded_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    satisfied("embedded.txt", PYPROJECT["project"]["dependencies"] + extras["embedded"])


def test_the_test_lock_satisfies_the_dependencies_and_the_embedded_and_test_extras():
    extras = PYPROJECT["project"]["optional-dependencies"]
    satisfied("test.txt", PYPROJECT["project"]["dependencies"] + extras["embedded"] + extras["test"])


def test_the_build_lock_satisfies_the_build_system_requirements():
    satisfied("build.txt", PYPROJECT["build-system"]["requires"])


def test_a_package_in_several_locks_has_the_same_version_in_each():
    versions: dict[str, set[Version]] = {}
    for name in ["runtime.txt", "embedded.txt", "test.txt", "build.txt"]:
        for package, (version, _) in locked(name).items():
            versions.setdefault(package, set()).add(version)
    assert {package: found for package, found in versions.items() if len(found) > 1} == {}


@pytest.mark.parametrize("path", ["Makefile", "Dockerfile"])
def test_every_pip_install_is_from_a_lock_with_hashes_or_the_project_without_dependencies(path):
    installs = [words for words in shell_commands(ROOT / path) if "install" in words]
    assert installs
    for words in installs:
        from_lock = "--require-hashes" in words and "-r" in words
        project_only = "--no-deps" in words and "-r" not in words
        assert from_lock or project_only, " ".join(words)


@pytest.mark.parametrize("path", ["Makefile", "Dockerfile"])
def test_the_project_is_built_with_the_locked_build_backend(path):
    builds = [
        words
        for words in shell_commands(ROOT / path)
        if "wheel" in words or "-e" in words or any(word.startswith("/wheels") for word in words)
    ]
    assert builds
    for words in builds:
        if "wheel" in words or "-e" in words:
            assert "--no-build-isolation" in words and "--no-deps" in words, " ".join(words)


def test_the_dockerfile_installs_the_build_and_runtime_locks():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements/build.txt" in dockerfile and "runtime.txt" in dockerfile


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), one list per stage."""
    stages: list[list[str]] = []
    for line in re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_image_installs_the_runtime_lock_alone_and_its_final_stage_copies_only_the_venv():
    """The embedded engines (and the test and build tools) stay out of the production image; the final stage
    installs nothing, so no wheel, cache or build backend is in any of its layers."""
    text = (ROOT / "Dockerfile").read_text()
    for lock in ("embedded.txt", "test.txt", "tools.txt"):
        assert lock not in text, lock
    *build, final = dockerfile_stages()
    assert build, "a build stage and a final stage"
    assert not any("pip" in line.split() or "install" in line.split() for line in final), final
    copies = [line for line in final if line.startswith(("COPY", "ADD"))]
    assert copies == ["COPY --from=build /opt/venv /opt/venv"]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    venv_installs = [words for words in shell_commands(ROOT / "Dockerfile") if "--python" in words]
    assert venv_installs and all(
        words[words.index("--python") + 1] == "/opt/venv/bin/python" for words in venv_installs
    )


def test_the_docker_build_context_leaves_out_secrets_and_environments():
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    # Everything is left out, then what the Dockerfile copies is let back in.
    assert "*" in ignored and "!requirements/runtime.txt" in ignored
    assert not any(
        line.startswith("!") and ("secrets" in line or ".venv" in line or ".mesh" in line) for line in ignored
    )


def test_make_installs_the_embedded_lock_for_up_and_test():
    recipe = (ROOT / "Makefile").read_text().split("\n$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "-r requirements/embedded.txt" in recipe


def test_ci_audits_the_locks_before_running_the_tests():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make audit" in ci and "make test" in ci
    assert ci.index("make audit") < ci.index("make test")
    audit_recipe = (ROOT / "Makefile").read_text().split("\naudit:", 1)[1]
    assert "$(LOCKS)" in audit_recipe.split("\n\n", 1)[0]


def test_the_wheel_requires_what_its_generated_stubs_were_generated_for():
    """A ``*_pb2_grpc.py`` module refuses to import under a grpcio older than its generator, and a
    ``*_pb2.py`` under a protobuf older than its gencode: the build adds both bounds to the wheel's
    metadata (hatch_build.py), beside pyproject.toml's own."""
    texts = [stub.read_text() for stub in (ROOT / "crypto_mesh" / "proto").glob("*_pb2*.py")]
    grpc = {
        v for text in texts for v in re.findall(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'", text, re.MULTILINE)
    }
    gencode = {
        ".".join(parts)
        for text in texts
        for parts in re.findall(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", text)
    }
    assert grpc and gencode
    requires = {str(Requirement(text)) for text in importlib.metadata.requires("crypto-mesh") or []}
    assert f"grpcio>={max(grpc, key=Version)}" in requires
    assert f"protobuf>={max(gencode, key=Version)}" in requires
