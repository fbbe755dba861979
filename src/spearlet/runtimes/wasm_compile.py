"""Compile a WebAssembly module (binary or WAT text) for the node, in a process of its own.

`python -I wasm_compile.py SOURCE OUTPUT` writes the serialized module to OUTPUT and exits 0; a
module that does not compile exits 3 with wasmtime's message on stdout. The node runs this under
memory and CPU limits, so a module that would take gigabytes or minutes to compile costs this
process, not the node. The engine must be configured as the node's (runtimes.wasm.engine_config),
or the node refuses to load the result; it imports nothing of the node, to start fast.
"""

from __future__ import annotations

import sys

import wasmtime
from wasmtime import _ffi as ffi

INVALID = 3


def main(source: str, output: str) -> int:
    config = wasmtime.Config()
    config.epoch_interruption = True  # as runtimes.wasm.engine_config
    # As the node's engine (runtimes.wasm_memory): a module compiled for copy-on-write memory
    # images does not load into an engine without them.
    ffi.wasmtime_config_memory_init_cow_set(config.ptr(), False)
    engine = wasmtime.Engine(config)
    with open(source, "rb") as f:
        code = f.read()
    try:
        module = wasmtime.Module(engine, code)  # from bytes: no path of the node in its errors
    except wasmtime.WasmtimeError as exc:
        sys.stdout.write(str(exc)[:4096])
        return INVALID
    with open(output, "xb") as out:
        out.write(module.serialize())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
