"""Cluster scaling: completed/s of a 50 ms I/O-bound function (warm Python `greet.wait`) with 1, 2 and
3 nodes on one Redis, each node limited to `--concurrency` calls at once, beside its ideal
(`concurrency / 50 ms` per node).

    python -m bench.cluster_scaling [--executions 600] [--concurrency 8] [--runs 3]

Submits every call at once (spread over the nodes), then waits until the dispatch stream is empty
(an entry is deleted once its execution's final record is written), watching Redis rather than
asking a node, so that the watching costs the nodes nothing. Medians of `--runs`; also the CPU time
the node processes spend per execution (their workers' not included). Needs
`redis-server` (the venv's). Prints a table and writes bench/results/cluster_scaling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import grpc
import psutil
import redis.asyncio as aioredis
from google.protobuf import any_pb2, struct_pb2

from bench.common import Server, flush_redis, start_node, start_redis, table, write_results
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc

SECONDS_EACH = 0.05
SECONDS = any_pb2.Any()
SECONDS.Pack(struct_pb2.Value(number_value=SECONDS_EACH))
WAIT = pb.InvokeFunctionRequest(
    invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK, task_id="greet", function_name="wait",
    execution_mode=pb.EXECUTION_MODE_ASYNC, parameters=[pb.FunctionParameter(name="seconds", value=SECONDS)],
)  # fmt: skip
STREAM = "spearlet:dispatch"
DRAIN_TIMEOUT_S = 120.0


def _cpu_s(node: Server) -> float:
    """CPU seconds the node process has used (its event loop and threads; not its workers)."""
    times = psutil.Process(node.proc.pid).cpu_times()
    return float(times.user + times.system)


async def run(nodes: list[Server], url: str, executions: int) -> float:
    channels = [grpc.aio.insecure_channel(n.target) for n in nodes]
    stubs = [pb_grpc.FunctionServiceStub(c) for c in channels]
    watcher = aioredis.Redis.from_url(url)
    started = time.perf_counter()
    await asyncio.gather(*(stubs[i % len(stubs)].InvokeFunction(WAIT) for i in range(executions)))
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while await watcher.xlen(STREAM):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(nodes)} nodes did not finish {executions} calls within {DRAIN_TIMEOUT_S:g} s")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    await watcher.aclose()
    for channel in channels:
        await channel.close()
    return executions / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executions", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server, url = start_redis()
    ideal = args.concurrency / SECONDS_EACH
    figures: dict[str, Any] = {
        "executions": args.executions,
        "concurrency_per_node": args.concurrency,
        "ideal_per_node_per_s": ideal,
    }
    try:
        for count in (1, 2, 3):
            flush_redis(url)
            env = {"SPEARLET_STORE": url, "SPEARLET_MAX_CONCURRENCY": str(args.concurrency)}
            nodes = [start_node("--node-id", f"bench{i}", env=env) for i in range(count)]
            try:
                asyncio.run(run(nodes, url, 50 * count))  # warm up workers
                cpu_before = sum(_cpu_s(node) for node in nodes)
                rate = statistics.median(asyncio.run(run(nodes, url, args.executions)) for _ in range(args.runs))
                cpu_ms = (sum(_cpu_s(node) for node in nodes) - cpu_before) * 1000 / (args.runs * args.executions)
            finally:
                for node in nodes:
                    node.stop()
            figures[f"completed_per_s_{count}_nodes"] = round(rate, 1)
            figures[f"per_node_over_ideal_{count}_nodes"] = round(rate / count / ideal, 2)
            figures[f"node_cpu_ms_per_execution_{count}_nodes"] = round(cpu_ms, 2)
    finally:
        server.terminate()
        server.wait(10)
    print(table([(k, str(v)) for k, v in figures.items()]))
    print(f"wrote {write_results('cluster_scaling', figures)}")


if __name__ == "__main__":
    main()
