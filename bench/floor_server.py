"""The least a warm sync call of this design can cost: a grpc.aio server whose InvokeFunction parses
the request, does one framed round trip to a real Python worker (python_worker.py, the no-op of the
bundled greet task) and one SQLite insert+commit in WAL mode, then answers. No scheduler, pool,
records, limits, timeouts, cancel, metrics or events: what is left between this and spearlet is the
cost of those. Prints its port, serves until killed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import grpc
import uvloop

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.node.node import bundled_tasks_file
from spearlet.runtimes.python import WORKER

_HEADER = struct.Struct(">I")


async def main() -> None:
    data = Path(tempfile.mkdtemp(prefix="spearlet-floor-"))
    conn = sqlite3.connect(data / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE executions (seq INTEGER PRIMARY KEY, execution_id TEXT UNIQUE, output BLOB)")
    examples = bundled_tasks_file().parent
    worker = subprocess.Popen(
        [sys.executable, "-I", "-u", str(WORKER), str(examples), "greet:handler"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), worker.stdout)
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, worker.stdin)

    async def frame() -> bytes:
        (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        return await reader.readexactly(length)

    await frame()  # ready
    one_at_a_time = asyncio.Lock()

    async def invoke(request: pb.InvokeFunctionRequest, context: grpc.aio.ServicerContext) -> pb.InvokeFunctionResponse:
        call = {"id": "floor", "function": request.function_name, "params": {}, "environment": {}, "deadline": 0}
        body = json.dumps(call).encode()
        async with one_at_a_time:
            writer.write(_HEADER.pack(len(body)) + body)
            output = await frame()
        execution_id = str(uuid.uuid4())
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO executions (execution_id, output) VALUES (?, ?)", (execution_id, output))
        conn.execute("COMMIT")
        return pb.InvokeFunctionResponse(
            success=True,
            execution_id=execution_id,
            task_id=request.task_id,
            result=pb.ExecutionResult(status=pb.EXECUTION_STATUS_COMPLETED, metrics={"attempts": "1"}),
        )

    handler = grpc.method_handlers_generic_handler(
        "spearlet.FunctionService",
        {
            "InvokeFunction": grpc.unary_unary_rpc_method_handler(
                invoke,
                request_deserializer=pb.InvokeFunctionRequest.FromString,
                response_serializer=pb.InvokeFunctionResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"gRPC  127.0.0.1:{port}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        worker.kill()


if __name__ == "__main__":
    uvloop.run(main())  # the loop the node runs on
