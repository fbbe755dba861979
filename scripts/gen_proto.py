"""Regenerate the committed gRPC stubs from the .proto files of PROTOS (the node's API, the SMS client's).

Usage: python scripts/gen_proto.py [OUT_DIR]   (default: the source tree itself)
The test suite runs this into a temporary directory and fails if the output differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PROTOS = ("spearlet/api/grpc/spearlet.proto", "spearlet/sms/sms.proto")


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{SRC}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else SRC)
