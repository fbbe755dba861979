"""Overload: several clients push async submissions, sync calls and cancels beyond the node's
capacity for a while (clients - 4 submitters, 2 sync callers, 2 cancellers). The node must refuse
quickly (RESOURCE_EXHAUSTED) instead of growing queues or memory, and come back to normal latency
and memory once the load stops. Run by tests/e2e/test_overload.py, and for longer by
`python -m bench.overload`.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.protobuf import any_pb2, struct_pb2

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from tests.helpers import percentile, start_node


def _request(function: str, mode: pb.ExecutionMode, seconds: float = 0.0) -> pb.InvokeFunctionRequest:
    parameters = []
    if seconds:
        packed = any_pb2.Any()
        packed.Pack(struct_pb2.Value(number_value=seconds))
        parameters.append(pb.FunctionParameter(name="seconds", value=packed))
    return pb.InvokeFunctionRequest(
        invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK, task_id="greet", function_name=function,
        execution_mode=mode, parameters=parameters,
    )  # fmt: skip


NOOP = _request("noop", pb.EXECUTION_MODE_SYNC)


async def _sync_latency(stub: pb_grpc.FunctionServiceStub, n: int = 200) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await stub.InvokeFunction(NOOP)
        samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 0.5)


async def measure(seconds: float, clients: int, max_pending: int, data_dir: Path) -> dict[str, Any]:
    node = start_node(data_dir, env={"SPEARLET_MAX_PENDING": str(max_pending)})
    process = psutil.Process(node.proc.pid)
    try:
        async with grpc.aio.insecure_channel(node.grpc_target) as channel:
            stub = pb_grpc.FunctionServiceStub(channel)
            await _sync_latency(stub, 50)
            before_ms = await _sync_latency(stub)
            rss_start = process.memory_info().rss
            counts = {"accepted": 0, "sync_ok": 0, "refused": 0, "cancelled": 0, "other_errors": 0}
            refusal_ms: list[float] = []
            ids: list[str] = []
            peak = {"rss": rss_start, "pending": 0}
            deadline = time.monotonic() + seconds
            rng = random.Random(1)

            async def submitter() -> None:
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    try:
                        response = await stub.InvokeFunction(_request("wait", pb.EXECUTION_MODE_ASYNC, 0.2))
                        ids.append(response.execution_id)
                        counts["accepted"] += 1
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                            counts["other_errors"] += 1
                            continue
                        counts["refused"] += 1
                        refusal_ms.append((time.perf_counter() - started) * 1000)
                        await asyncio.sleep(0.01)  # a polite client backs off a little

            async def caller() -> None:
                while time.monotonic() < deadline:
                    try:
                        await stub.InvokeFunction(NOOP)
                        counts["sync_ok"] += 1
                    except grpc.aio.AioRpcError as exc:
                        key = "refused" if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED else "other_errors"
                        counts[key] += 1
                        await asyncio.sleep(0.01)

            async def canceller() -> None:
                while time.monotonic() < deadline:
                    if ids:
                        victim = ids[rng.randrange(len(ids))]
                        await stub.CancelExecution(pb.CancelExecutionRequest(execution_id=victim, force=True))
                        counts["cancelled"] += 1
                    await asyncio.sleep(0.005)

            async def sampler() -> None:
                while time.monotonic() < deadline:
                    peak["rss"] = max(peak["rss"], process.memory_info().rss)
                    health = await stub.GetHealth(pb.GetHealthRequest(include_details=True))
                    peak["pending"] = max(peak["pending"], health.details.pending_executions)
                    await asyncio.sleep(0.25)

            mix = [submitter] * max(1, clients - 4) + [caller, caller, canceller, canceller]
            await asyncio.gather(sampler(), *(role() for role in mix))
            drain_started = time.monotonic()
            while (await stub.GetHealth(pb.GetHealthRequest(include_details=True))).details.pending_executions:
                await asyncio.sleep(0.2)
            drain_s = time.monotonic() - drain_started
            await asyncio.sleep(1.0)
            after_ms = await _sync_latency(stub)
            rss_end = process.memory_info().rss
            health = (await stub.GetHealth(pb.GetHealthRequest())).status
    finally:
        node.stop()
    return {
        "seconds": seconds,
        "clients": clients,
        "max_pending": max_pending,
        **counts,
        "refusal_p50_ms": round(percentile(refusal_ms, 0.5), 2) if refusal_ms else None,
        "refusal_p99_ms": round(percentile(refusal_ms, 0.99), 2) if refusal_ms else None,
        "peak_pending": peak["pending"],
        "sync_p50_before_ms": round(before_ms, 3),
        "sync_p50_after_ms": round(after_ms, 3),
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_peak_mb": round(peak["rss"] / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "drain_seconds": round(drain_s, 1),
        "health_after": health,
    }
