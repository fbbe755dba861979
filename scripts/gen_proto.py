"""Regenerate the committed gRPC stubs from the .proto files of src/spearlet/api/grpc/ and src/spearlet/sms/.

Usage: python scripts/gen_proto.py [OUT_DIR]   (default: the source tree itself)
The test suite runs this into a temporary directory and fails if the output differs.

spearlet.proto (the seed-era contract) goes to protobuf's default descriptor pool, as usual.
spear_head.proto (SPEAR's current services) shares its package and several of its type names, which
one pool cannot hold twice: its module is rewritten to build its descriptors in a pool of its own
(`POOL`, with the well-known types it imports), which the server's reflection also answers from.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PROTO = "spearlet/api/grpc/spearlet.proto"
HEAD_PROTO = "spearlet/api/grpc/spear_head.proto"
# The calls a node makes to SPEAR's SMS: package `sms`, no clash, the default pool.
SMS_PROTO = "spearlet/sms/sms.proto"
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = """# A pool of its own (scripts/gen_proto.py): spearlet.proto holds the same names in the default pool.
POOL = _descriptor_pool.DescriptorPool()
POOL.AddSerializedFile(google_dot_protobuf_dot_timestamp__pb2.DESCRIPTOR.serialized_pb)
DESCRIPTOR = POOL.AddSerializedFile("""

_DESCRIPTOR_STUB = "DESCRIPTOR: _descriptor.FileDescriptor\n"
_POOL_STUB = "from google.protobuf import descriptor_pool as _descriptor_pool\nPOOL: _descriptor_pool.DescriptorPool\n"


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    for proto in (PROTO, HEAD_PROTO, SMS_PROTO):
        args = [
            "protoc",
            f"-I{SRC}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            proto,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    module = out_dir / HEAD_PROTO.replace(".proto", "_pb2.py")
    text = module.read_text()
    if text.count(_DEFAULT_POOL) != 1:
        raise SystemExit(f"{module}: the generated code no longer has one {_DEFAULT_POOL!r}")
    module.write_text(text.replace(_DEFAULT_POOL, _OWN_POOL))
    stub = module.with_suffix(".pyi")
    text = stub.read_text()
    if text.count(_DESCRIPTOR_STUB) != 1:
        raise SystemExit(f"{stub}: the generated stub no longer has one {_DESCRIPTOR_STUB!r}")
    stub.write_text(text.replace(_DESCRIPTOR_STUB, _POOL_STUB + _DESCRIPTOR_STUB))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else SRC)
