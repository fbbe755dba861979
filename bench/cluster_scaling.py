"""Cluster scaling: completed/s of a 50 ms I/O-bound function (warm Python `greet.wait`) with 1, 2 and
3 nodes on one Redis, each node limited to `--concurrency` calls at once.

    python -m bench.cluster_scaling [--executions 600] [--concurrency 8]

Needs `redis-server` on PATH. Prints a table and writes bench/results/cluster_scaling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import grpc
from google.protobuf import any_pb2, struct_pb2

from bench.common import Server, flush_redis, start_node, start_redis, table, write_results
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc

SECONDS = any_pb2.Any()
SECONDS.Pack(struct_pb2.Value(number_value=0.05))
WAIT = pb.InvokeFunctionRequest(
    invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK, task_id="greet", function_name="wait",
    execution_mode=pb.EXECUTION_MODE_ASYNC, parameters=[pb.FunctionParameter(name="seconds", value=SECONDS)],
)  # fmt: skip


async def run(nodes: list[Server], executions: int) -> float:
    channels = [grpc.aio.insecure_channel(n.target) for n in nodes]
    stubs = [pb_grpc.FunctionServiceStub(c) for c in channels]
    started = time.perf_counter()
    accepted = await asyncio.gather(*(stubs[i % len(stubs)].InvokeFunction(WAIT) for i in range(executions)))
    pending = {a.execution_id for a in accepted}
    while pending:
        await asyncio.sleep(0.05)
        page = await stubs[0].ListExecutions(
            pb.ListExecutionsRequest(task_id="greet", status_filter=pb.EXECUTION_STATUS_COMPLETED, limit=1000)
        )
        pending -= {e.execution_id for e in page.executions}
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return executions / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executions", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    server, url = start_redis()
    figures: dict[str, Any] = {"executions": args.executions, "concurrency_per_node": args.concurrency}
    try:
        for count in (1, 2, 3):
            flush_redis(url)
            env = {"SPEARLET_STORE": url, "SPEARLET_MAX_CONCURRENCY": str(args.concurrency)}
            nodes = [start_node("--node-id", f"bench{i}", env=env) for i in range(count)]
            try:
                asyncio.run(run(nodes, 50))  # warm up workers
                figures[f"completed_per_s_{count}_nodes"] = round(asyncio.run(run(nodes, args.executions)), 1)
            finally:
                for node in nodes:
                    node.stop()
    finally:
        server.terminate()
    print(table([(k, str(v)) for k, v in figures.items()]))
    print(f"wrote {write_results('cluster_scaling', figures)}")


if __name__ == "__main__":
    main()
