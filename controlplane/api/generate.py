"""Regenerates the Python bindings of `protos/` into `controlplane/api/`.

Run `python -m controlplane.api.generate` after changing a `.proto` file; a test fails while the
committed bindings differ from what this produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parents[2] / "protos"
API_DIR = Path(__file__).resolve().parent


def generate(out_dir: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    protos = sorted(str(p.name) for p in PROTO_DIR.glob("*.proto"))
    status = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", *protos]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else API_DIR)
