"""The benchmark suite: spearlet beside a bare gRPC echo and beside Celery and RQ, in one run.

    make bench            # or: python -m bench.suite [--runs 3] [--quick]

Starts its own node(s), echo server and redis-server on loopback, runs bounded workloads, and prints
a table of figures (each the median of --runs runs) with ratios to the baselines measured in the
same run; writes bench/results/suite.json with the machine's description.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench import peers
from bench.client_overhead import client_overhead
from bench.common import (
    Server,
    bounded,
    cpu_per_call,
    flush_redis,
    invoke_request,
    latencies,
    paired_latencies,
    paired_throughput,
    percentile,
    start_echo,
    start_floor,
    start_http_floor,
    start_node,
    start_redis,
    table,
    throughput,
    time_limit,
    wait_until,
    write_results,
)  # fmt: skip
from bench.http_door import http_figures
from bench.sandbox_cost import sandbox_cost
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.core.ids import new_execution_id
from spearlet.core.models import ExecutionRecord, Mode, Status, now_ms
from spearlet.store.sqlite import FINISHED_KEPT, SqliteStore

_call = invoke_request


NOOP = _call("greet", "noop")
NOOP_ASYNC = _call("greet", "noop", pb.EXECUTION_MODE_ASYNC)
SLEEP10 = _call("greet", "wait", seconds=0.01)
SLEEP10_ASYNC = _call("greet", "wait", pb.EXECUTION_MODE_ASYNC, seconds=0.01)


def _node(data_dir: Path, **env: str) -> Server:
    return start_node(env=env, data_dir=data_dir)


async def _drained(stub: pb_grpc.FunctionServiceStub, timeout: float = 300.0) -> None:
    async def idle() -> bool:
        details = (await stub.GetHealth(pb.GetHealthRequest(include_details=True))).details
        return not details.pending_executions and not details.running_executions

    await wait_until(idle, "the node to finish its pending and running executions", timeout)


async def _completed_per_s(stub: pb_grpc.FunctionServiceStub, request: pb.InvokeFunctionRequest, n: int) -> float:
    """Submit `n` async executions 16 at a time, then wait until all are done: end-to-end rate."""
    started = time.perf_counter()
    queue = list(range(n))

    async def submitter() -> None:
        while queue:
            queue.pop()
            await stub.InvokeFunction(request)

    await asyncio.gather(*(submitter() for _ in range(16)))
    await _drained(stub)
    return n / (time.perf_counter() - started)


async def spearlet_figures(node: Server, echo: Server, floor: Server, quick: bool) -> dict[str, float]:
    calls = 500 if quick else 2000
    seconds = 3.0 if quick else 8.0
    async with (
        grpc.aio.insecure_channel(node.target) as nch,
        grpc.aio.insecure_channel(echo.target) as ech,
        grpc.aio.insecure_channel(floor.target) as fch,
    ):
        stub, echo_stub = pb_grpc.FunctionServiceStub(nch), pb_grpc.FunctionServiceStub(ech)
        floor_stub = pb_grpc.FunctionServiceStub(fch)
        f: dict[str, float] = {}
        # Each speed in turns with the echo, so a noisy moment of the machine hits both; the floor
        # server does the least a sync call of this design must (bench/floor_server.py).
        paired = await paired_latencies(
            {
                "echo": lambda: echo_stub.InvokeFunction(NOOP),
                "floor": lambda: floor_stub.InvokeFunction(NOOP),
                "sync": lambda: stub.InvokeFunction(NOOP),
            },
            calls,
        )
        f["echo_p50_ms"], f["echo_p99_ms"] = percentile(paired["echo"], 0.5), percentile(paired["echo"], 0.99)
        f["floor_p50_ms"], f["floor_p99_ms"] = percentile(paired["floor"], 0.5), percentile(paired["floor"], 0.99)
        f["sync_noop_p50_ms"] = percentile(paired["sync"], 0.5)
        f["sync_noop_p99_ms"] = percentile(paired["sync"], 0.99)
        status_request = pb.GetExecutionStatusRequest(
            execution_id=(await stub.InvokeFunction(NOOP)).execution_id, include_result=True
        )
        # Read in turn, twice as many finished records as the store keeps in memory: each query
        # reads the file, as a first read of a result does.
        many = itertools.cycle([
            pb.GetExecutionStatusRequest(execution_id=done.execution_id, include_result=True)
            for _ in range(2 * FINISHED_KEPT // 16)
            for done in await asyncio.gather(*(stub.InvokeFunction(NOOP) for _ in range(16)))
        ])  # fmt: skip
        rates = await paired_throughput(
            {
                "echo": lambda: echo_stub.InvokeFunction(NOOP),
                "sync": lambda: stub.InvokeFunction(NOOP),
                "status": lambda: stub.GetExecutionStatus(status_request),
                "status_from_file": lambda: stub.GetExecutionStatus(next(many)),
            },
            16,
            seconds,
        )
        f["echo_calls_per_s_c16"] = rates["echo"]
        f["sync_noop_calls_per_s_c16"] = rates["sync"]
        f["status_queries_per_s_c16"] = rates["status"]
        f["status_queries_from_file_per_s_c16"] = rates["status_from_file"]
        f["echo_server_cpu_us_per_call"] = await cpu_per_call(
            echo.proc.pid, lambda: echo_stub.InvokeFunction(NOOP), 16, 2
        )
        f["status_node_cpu_us_per_call"] = await cpu_per_call(
            node.proc.pid, lambda: stub.GetExecutionStatus(status_request), 16, 2
        )
        sleepy = await latencies(lambda: stub.InvokeFunction(SLEEP10), calls // 4, warmup=20)
        f["sync_sleep10_p50_ms"], f["sync_sleep10_p99_ms"] = percentile(sleepy, 0.5), percentile(sleepy, 0.99)
        accept = await latencies(lambda: stub.InvokeFunction(NOOP_ASYNC), calls // 2)
        f["async_accept_p50_ms"], f["async_accept_p99_ms"] = percentile(accept, 0.5), percentile(accept, 0.99)
        await _drained(stub)
        # With the no-ops it accepts running alongside on the same two cores (acceptance alone is
        # measured on a node of its own: see accept_rate).
        f["async_accepted_per_s_c16_while_running"] = await throughput(
            lambda: stub.InvokeFunction(NOOP_ASYNC), 16, seconds
        )
        await _drained(stub)
        n = 1000 if quick else 3000
        f["async_noop_completed_per_s"] = await _completed_per_s(stub, NOOP_ASYNC, n)
        f["async_sleep10_completed_per_s"] = await _completed_per_s(stub, SLEEP10_ASYNC, n // 2)
        cancels = []
        for _ in range(10 if quick else 30):
            accepted = await stub.InvokeFunction(_call("greet", "wait", pb.EXECUTION_MODE_ASYNC, seconds=30))
            query = pb.GetExecutionStatusRequest(execution_id=accepted.execution_id)

            async def running(query: pb.GetExecutionStatusRequest = query) -> bool:
                status: int = (await stub.GetExecutionStatus(query)).result.status
                return status == pb.EXECUTION_STATUS_RUNNING

            await wait_until(running, f"execution {accepted.execution_id} to start running", 60, every=0.005)
            started = time.perf_counter()
            await stub.CancelExecution(pb.CancelExecutionRequest(execution_id=accepted.execution_id))
            cancels.append((time.perf_counter() - started) * 1000)
        f["cancel_running_p50_ms"] = percentile(cancels, 0.5)
        cold_python = await latencies(lambda: stub.InvokeFunction(pb.InvokeFunctionRequest(
            invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK, task_id="greet", function_name="noop",
            force_new_instance=True)), 20, warmup=2)  # fmt: skip
        f["cold_python_worker_call_p50_ms"] = percentile(cold_python, 0.5)
        cold_process = await latencies(lambda: stub.InvokeFunction(_call("echo")), 50, warmup=5)
        f["process_call_p50_ms"] = percentile(cold_process, 0.5)
        wasm = await latencies(lambda: stub.InvokeFunction(_call("wasm-hello")), 200, warmup=20)
        f["wasm_call_p50_ms"] = percentile(wasm, 0.5)
    return f


def accept_rate(echo: Server, seconds: float) -> dict[str, float]:
    """Async accepts per second, each committed before its answer, while the accepted work waits
    (long sleeps): the node's acceptance alone, in turns with the echo floor. A node of its own,
    thrown away after."""
    with tempfile.TemporaryDirectory(prefix="spearlet-accept-") as tmp:
        node = _node(Path(tmp) / "data", SPEARLET_MAX_PENDING="1000000")
        try:

            async def measure() -> dict[str, float]:
                async with (
                    grpc.aio.insecure_channel(node.target) as channel,
                    grpc.aio.insecure_channel(echo.target) as echo_channel,
                ):
                    stub = pb_grpc.FunctionServiceStub(channel)
                    echo_stub = pb_grpc.FunctionServiceStub(echo_channel)
                    queued = _call("sleep", mode=pb.EXECUTION_MODE_ASYNC, seconds=600)
                    rates = await paired_throughput(
                        {"echo": lambda: echo_stub.InvokeFunction(NOOP), "accept": lambda: stub.InvokeFunction(queued)},
                        16,
                        seconds,
                    )
                    rates["cpu_us_per_accept"] = await cpu_per_call(
                        node.proc.pid, lambda: stub.InvokeFunction(queued), 16, 2
                    )
                    return rates

            return asyncio.run(bounded(measure(), "the accept-rate figures", 600))
        finally:
            node.stop()


def _fill_store(data_dir: Path, count: int) -> None:
    """`count` finished records, as a node that served them would have kept."""

    async def fill() -> None:
        store = SqliteStore(data_dir / "spearlet.db")
        await store.open()
        now = now_ms()
        for i in range(count):
            record = ExecutionRecord(new_execution_id(), "greet", "noop", Mode.ASYNC, status=Status.COMPLETED,
                                     created_at=now, started_at=now, completed_at=now, attempts=1)  # fmt: skip
            store.queue_insert(record)
            if i % 5000 == 4999:
                await store.count_tasks()  # let the writer catch up
        await store.close()

    data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(fill())


async def _held_by(stub: pb_grpc.FunctionServiceStub, slow: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(ms the slow call took, the longest of the status queries made one after another meanwhile,
    in ms): how long the slow call holds up everything else on the node."""
    request = pb.GetExecutionStatusRequest(execution_id=new_execution_id())
    await stub.GetExecutionStatus(request)
    started = time.perf_counter()
    call = asyncio.ensure_future(slow())
    longest = 0.0
    while not call.done():
        sent = time.perf_counter()
        await stub.GetExecutionStatus(request)
        longest = max(longest, time.perf_counter() - sent)
    await call
    return (time.perf_counter() - started) * 1000, longest * 1000


async def _growth_figures(node: Server, calls: int, size: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(node.target) as channel:
        stub = pb_grpc.FunctionServiceStub(channel)
        samples = await latencies(lambda: stub.InvokeFunction(NOOP_ASYNC), calls)
        await _drained(stub)
        stats_ms, beside_ms = await _held_by(stub, lambda: stub.GetStats(pb.GetStatsRequest()))
    return {
        f"accept_p50_ms_{size}_records": percentile(samples, 0.5),
        f"accept_p99_ms_{size}_records": percentile(samples, 0.99),
        f"get_stats_ms_{size}_records": stats_ms,
        f"status_longest_ms_beside_get_stats_{size}_records": beside_ms,
    }


def growth(quick: bool) -> dict[str, float]:
    """Accept latency and node RSS with many retained records, and with many queued."""
    f: dict[str, float] = {}
    sizes = (1000, 10_000) if quick else (1000, 10_000, 100_000)
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="spearlet-growth-") as tmp:
            data = Path(tmp) / "data"
            _fill_store(data, size)
            node = _node(data, SPEARLET_RETENTION_MAX_RECORDS="1000000")
            try:
                f.update(asyncio.run(bounded(_growth_figures(node, 500, size), f"growth with {size} records", 900)))
                f[f"rss_mb_{size}_records"] = psutil.Process(node.proc.pid).memory_info().rss / 2**20
            finally:
                node.stop()
    queued = 2000 if quick else 10_000
    with tempfile.TemporaryDirectory(prefix="spearlet-queued-") as tmp:
        node = _node(Path(tmp) / "data", SPEARLET_MAX_PENDING=str(queued + 100), SPEARLET_MAX_CONCURRENCY="1")
        try:
            rss_before = psutil.Process(node.proc.pid).memory_info().rss

            async def fill_queue() -> tuple[float, float]:
                async with grpc.aio.insecure_channel(node.target) as channel:
                    stub = pb_grpc.FunctionServiceStub(channel)
                    slow = _call("greet", "wait", pb.EXECUTION_MODE_ASYNC, seconds=60)
                    for _ in range(queued // 100):
                        await asyncio.gather(*(stub.InvokeFunction(slow) for _ in range(100)))
                    samples = await latencies(lambda: stub.InvokeFunction(slow), 50, warmup=0)
                return percentile(samples, 0.5), percentile(samples, 0.99)

            f[f"accept_p50_ms_{queued}_queued"], f[f"accept_p99_ms_{queued}_queued"] = asyncio.run(
                bounded(fill_queue(), f"filling a queue of {queued}", 600)
            )
            f[f"rss_growth_mb_{queued}_queued"] = (psutil.Process(node.proc.pid).memory_info().rss - rss_before) / 2**20
        finally:
            node.stop()
    return f


def _http_door(node: Server, seconds: float) -> dict[str, float]:
    """The HTTP rows, in turns with a bare FastAPI app (bench/http_door.py); none without wrk."""
    if shutil.which("wrk") is None:
        print("wrk is not installed (make bench installs it): the HTTP rows are left out")
        return {}
    floor = start_http_floor()
    try:
        with time_limit("the HTTP door figures", int(8 * seconds) + 300):
            return http_figures(node, floor, seconds)
    finally:
        floor.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller workloads, one run")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    own: list[dict[str, float]] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="spearlet-suite-") as tmp:
            node, echo, floor = _node(Path(tmp) / "data", SPEARLET_MAX_PENDING="1000000"), start_echo(), start_floor()
            try:
                run = asyncio.run(bounded(spearlet_figures(node, echo, floor, args.quick), "the node figures", 1800))
                with time_limit("the client-overhead figures", 600):
                    run.update(client_overhead(node.target, 500 if args.quick else 2000))
                run.update(_http_door(node, 3.0 if args.quick else 8.0))
            finally:
                node.stop()
                floor.stop()
            try:
                rates = accept_rate(echo, 3.0 if args.quick else 8.0)
                run["async_accepted_per_s_c16"] = rates["accept"]
                run["echo_calls_per_s_c16_beside_accepts"] = rates["echo"]
                run["accept_node_cpu_us_per_call"] = rates["cpu_us_per_accept"]
            finally:
                echo.stop()
            own.append(run)
    figures: dict[str, Any] = {k: statistics.median(r[k] for r in own) for k in own[0]}
    # Kept at once: a later part that fails (a timeout on a loaded machine) must not lose these.
    write_results("suite", {"runs": runs, "quick": args.quick, "partial": True, **figures})
    figures.update(growth(args.quick))
    with time_limit("the sandbox-cost figures", 1200):
        figures.update(sandbox_cost(3 if args.quick else 10))
    server, url = start_redis()
    try:
        sync_calls, async_calls = (100, 300) if args.quick else (300, 1000)
        for name, measure in (("celery", peers.celery), ("rq", peers.rq)):
            flush_redis(url)
            for key, value in measure(url, sync_calls, async_calls).items():
                figures[f"{name}_{key}"] = value
    finally:
        server.terminate()
    ratios = {
        "sync_p50_over_echo": figures["sync_noop_p50_ms"] / figures["echo_p50_ms"],
        "floor_p50_over_echo": figures["floor_p50_ms"] / figures["echo_p50_ms"],
        "accepted_per_s_over_echo_calls_per_s": figures["async_accepted_per_s_c16"]
        / figures["echo_calls_per_s_c16_beside_accepts"],
        "async_noop_completed_over_celery": figures["async_noop_completed_per_s"]
        / figures["celery_noop_async_completed_per_s"],
        "status_queries_over_echo_calls_per_s": figures["status_queries_per_s_c16"] / figures["echo_calls_per_s_c16"],
        "status_queries_from_file_over_echo_calls_per_s": figures["status_queries_from_file_per_s_c16"]
        / figures["echo_calls_per_s_c16"],
    }
    big = "100000" if not args.quick else "10000"
    ratios["accept_p99_large_over_1k_records"] = (
        figures[f"accept_p99_ms_{big}_records"] / figures["accept_p99_ms_1000_records"]
    )
    if "http_sync_noop_requests_per_s_c16" in figures:
        ratios["http_invoke_over_floor"] = (
            figures["http_sync_noop_requests_per_s_c16"] / figures["http_floor_invoke_requests_per_s_c16"]
        )
        ratios["http_status_over_floor"] = (
            figures["http_status_requests_per_s_c16"] / figures["http_floor_status_requests_per_s_c16"]
        )
    figures["ratios"] = ratios
    rows = [(k, f"{v:,.2f}") for k, v in figures.items() if isinstance(v, float | int)]
    rows += [(f"ratio: {k}", f"{v:.2f}") for k, v in ratios.items()]
    print(table(rows))
    print(f"wrote {write_results('suite', {'runs': runs, 'quick': args.quick, **figures})}")


if __name__ == "__main__":
    main()
