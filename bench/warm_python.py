"""Warm Python invocation over gRPC against the bare echo floor, fresh-worker start time, and the
latency of a durable async accept.

    python bench/warm_python.py [--runs 3] [--calls 2000]

Prints a table and writes bench/results/warm_python.json. Each figure is the median of the runs.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from bench.common import (
    latencies,
    median_of,
    paired_latencies,
    percentile,
    start_echo,
    start_node,
    table,
    write_results,
)
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc

NOOP = pb.InvokeFunctionRequest(
    invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK, task_id="greet", function_name="noop",
    execution_mode=pb.EXECUTION_MODE_SYNC,
)  # fmt: skip
ACCEPT = pb.InvokeFunctionRequest(
    invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK, task_id="greet", function_name="noop",
    execution_mode=pb.EXECUTION_MODE_ASYNC,
)  # fmt: skip
FRESH = pb.InvokeFunctionRequest(
    invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK, task_id="greet", function_name="noop",
    execution_mode=pb.EXECUTION_MODE_SYNC, force_new_instance=True,
)  # fmt: skip


async def one_run(node_target: str, echo_target: str, calls: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(node_target) as node_ch, grpc.aio.insecure_channel(echo_target) as echo_ch:
        node = pb_grpc.FunctionServiceStub(node_ch)
        echo = pb_grpc.FunctionServiceStub(echo_ch)
        paired = await paired_latencies(
            {"echo": lambda: echo.InvokeFunction(NOOP), "warm": lambda: node.InvokeFunction(NOOP)}, calls
        )
        floor, warm = paired["echo"], paired["warm"]
        fresh = await latencies(lambda: node.InvokeFunction(FRESH), 40, warmup=3)
        accept = await latencies(lambda: node.InvokeFunction(ACCEPT), 500, warmup=20)
    return {
        "echo_p50_ms": percentile(floor, 0.5),
        "echo_p99_ms": percentile(floor, 0.99),
        "warm_p50_ms": percentile(warm, 0.5),
        "warm_p99_ms": percentile(warm, 0.99),
        "overhead_p50_ms": percentile(warm, 0.5) - percentile(floor, 0.5),
        "overhead_p99_ms": percentile(warm, 0.99) - percentile(floor, 0.99),
        "warm_over_echo_p50": percentile(warm, 0.5) / percentile(floor, 0.5),
        "fresh_worker_call_p50_ms": percentile(fresh, 0.5),
        "fresh_worker_call_p95_ms": percentile(fresh, 0.95),
        "async_accept_p50_ms": percentile(accept, 0.5),
        "async_accept_p99_ms": percentile(accept, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    node = start_node()
    echo = start_echo()
    try:
        runs = [asyncio.run(one_run(node.target, echo.target, args.calls)) for _ in range(args.runs)]
    finally:
        node.stop()
        echo.stop()
    figures = median_of(runs)
    print(table([(k, f"{v:.3f}") for k, v in figures.items()]))
    print(f"wrote {write_results('warm_python', {'median': figures, 'runs': runs})}")


if __name__ == "__main__":
    main()
