"""Build hook: generate the Python gRPC stubs in ``crypto_mesh/proto/`` from the contracts in ``proto/``.

The ``.proto`` files are compiled as if they lived in ``crypto_mesh/proto/`` so that the generated modules
import each other as ``crypto_mesh.proto.<name>_pb2``. Runs on every wheel and editable build.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def generate_stubs(root: Path) -> list[Path]:
    """Compile ``root/proto/*.proto`` into ``root/crypto_mesh/proto/``; return the generated files.

    Raises RuntimeError if protoc reports an error.
    """
    from grpc_tools import protoc  # build-time dependency (pyproject [build-system])
    import grpc_tools

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


class ProtoStubsHook(BuildHookInterface):
    """Hatchling hook that runs :func:`generate_stubs` before the wheel is assembled."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        generate_stubs(Path(self.root))


if __name__ == "__main__":
    for path in generate_stubs(Path(__file__).parent):
        print(path)
