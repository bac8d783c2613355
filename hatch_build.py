"""Build hook: generate the Python gRPC stubs in ``crypto_mesh/proto/`` from the contracts in ``proto/``.

The ``.proto`` files are compiled as if they lived in ``crypto_mesh/proto/`` so that the generated modules
import each other as ``crypto_mesh.proto.<name>_pb2``. Runs on every wheel and editable build.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def generate_stubs(root: Path) -> list[Path]:
    """Compile ``root/proto/*.proto`` into ``root/crypto_mesh/proto/``; return the generated files.

    Raises RuntimeError if protoc reports an error.
    """
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency (pyproject [build-system])

    sources = sorted((root / "proto").glob("*.proto"))
    out_dir = root / "crypto_mesh" / "proto"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "crypto_mesh" / "proto"
        staged.mkdir(parents=True)
        for source in sources:
            shutil.copy(source, staged / source.name)
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{tmp}",
            f"-I{well_known}",
            f"--python_out={root}",
            f"--pyi_out={root}",
            f"--grpc_python_out={root}",
            *[str(staged / s.name) for s in sources],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {[s.name for s in sources]}")
    return sorted(out_dir.glob("*_pb2*.py*"))


_GRPC_GENERATED = re.compile(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'", re.MULTILINE)
_PROTOBUF_GENCODE = re.compile(
    r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),"
)


def stub_runtime_requirements(stubs: list[Path]) -> list[str]:
    """The runtime requirements of generated stubs (PEP 508 strings): the grpcio a ``*_pb2_grpc.py`` module
    was generated for (``GRPC_GENERATED_VERSION``: it refuses to import under an older grpcio) and the
    protobuf gencode version a ``*_pb2.py`` module validates at import (``ValidateProtobufRuntimeVersion``).
    Stubs without these checks (older generators) add nothing."""
    grpc_versions, protobuf_versions = set(), set()
    for stub in stubs:
        text = stub.read_text(encoding="utf-8")
        grpc_versions.update(_GRPC_GENERATED.findall(text))
        protobuf_versions.update(".".join(match) for match in _PROTOBUF_GENCODE.findall(text))

    def newest(versions: set[str]) -> str:
        return max(versions, key=lambda version: tuple(int(part) for part in version.split(".")))

    requirements = []
    if grpc_versions:
        requirements.append(f"grpcio>={newest(grpc_versions)}")
    if protobuf_versions:
        requirements.append(f"protobuf>={newest(protobuf_versions)}")
    return requirements


class ProtoStubsHook(BuildHookInterface):
    """Hatchling hook that runs :func:`generate_stubs` before the wheel is assembled, and adds the stubs'
    runtime requirements (:func:`stub_runtime_requirements`) to the wheel's dependencies: pyproject.toml's
    lower bounds are what the hand-written code needs, the stubs need what their generator was."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        stubs = generate_stubs(Path(self.root))
        build_data["dependencies"].extend(stub_runtime_requirements(stubs))


if __name__ == "__main__":
    for path in generate_stubs(Path(__file__).parent):
        print(path)
