"""The floor for any gRPC call here: a bare grpc.aio server answering FunctionService/InvokeFunction
with a fixed, realistic response and doing nothing else. Prints its port, serves until killed."""

from __future__ import annotations

import sys

import grpc
import uvloop

from spearlet.api.grpc import spearlet_pb2 as pb

RESPONSE = pb.InvokeFunctionResponse(
    success=True,
    execution_id="01a22739-353b-78ab-a5d6-c55f0cb9a71d",
    task_id="greet",
    instance_id="greet/1",
    result=pb.ExecutionResult(status=pb.EXECUTION_STATUS_COMPLETED, execution_time_ms=1, metrics={"attempts": "1"}),
).SerializeToString()


async def main(port: int) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return RESPONSE

    handler = grpc.method_handlers_generic_handler(
        "spearlet.FunctionService", {"InvokeFunction": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"gRPC  127.0.0.1:{bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))  # the loop the node runs on
