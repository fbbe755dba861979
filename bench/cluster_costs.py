"""What an async execution costs a cluster node: Redis round trips per execution, and async no-ops
end to end beside Celery on the same Redis.

    python -m bench.cluster_costs [--executions 1000] [--runs 3]

Round trips: one cluster node on a fresh redis-server runs `--executions` async no-ops (16 callers),
while a MONITOR connection counts every command a client sent (a command a Lua script runs is not a
round trip and MONITOR marks it `lua`); `INFO commandstats` before and after gives the commands by
name (those scripts ran included). Both include the node's periodic work (lease renewal, heartbeats,
reclaim) over the run. The rate: the same no-ops submitted 16 at a time until all are completed,
in turns with Celery's (bench/peers.py: prefork workers, Redis broker and result backend) on the same
Redis; medians of `--runs`. Writes bench/results/cluster_costs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from typing import Any

import grpc
import redis
import redis.asyncio as aioredis

from bench import peers
from bench.common import Server, flush_redis, invoke_request, start_node, start_redis, table, write_results
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc

NOOP_ASYNC = invoke_request("greet", "noop", pb.EXECUTION_MODE_ASYNC)
STREAM = "spearlet:dispatch"
DRAIN_TIMEOUT_S = 120.0


def _node(url: str) -> Server:
    return start_node("--node-id", "costs0", env={"SPEARLET_STORE": url})


async def _completed_per_s(node: Server, url: str, n: int) -> float:
    """Submit `n` async no-ops 16 at a time; the rate once every one has completed (its stream
    entry is deleted after its final record is written)."""
    watcher = aioredis.Redis.from_url(url)
    async with grpc.aio.insecure_channel(node.target) as channel:
        stub = pb_grpc.FunctionServiceStub(channel)
        left = list(range(n))
        started = time.perf_counter()

        async def submitter() -> None:
            while left:
                left.pop()
                await stub.InvokeFunction(NOOP_ASYNC)

        await asyncio.gather(*(submitter() for _ in range(16)))
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while await watcher.xlen(STREAM):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster node did not finish {n} no-ops within {DRAIN_TIMEOUT_S:g} s")
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
    await watcher.aclose()
    return n / elapsed


class _Monitor:
    """Counts the commands clients send (not those Lua scripts run, nor its own)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.sent: dict[str, int] = {}
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("MONITOR did not start")

    def _run(self) -> None:
        with self.client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self.ready.set()
            try:
                for command in monitor.listen():
                    if command.get("client_type") != "lua":
                        name = str(command.get("command", "")).split(" ", 1)[0].lower()
                        self.sent[name] = self.sent.get(name, 0) + 1
            except (redis.ConnectionError, ValueError, AttributeError):
                pass  # closed by stop()

    def stop(self) -> dict[str, int]:
        self.client.connection_pool.disconnect()
        self.thread.join(5)
        return self.sent


def _commandstats(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in client.info("commandstats").items()}


def round_trips(url: str, executions: int) -> dict[str, Any]:
    flush_redis(url)
    node = _node(url)
    client = redis.Redis.from_url(url)
    try:
        asyncio.run(_completed_per_s(node, url, 50))  # warm: the worker, the task, the connections
        time.sleep(0.5)
        before = _commandstats(client)
        monitor = _Monitor(url)
        asyncio.run(_completed_per_s(node, url, executions))
        sent = monitor.stop()
        after = _commandstats(client)
    finally:
        node.stop()
        client.close()
    # The bench's own: its INFO, its MONITOR, its polling of the stream's length.
    ours = {"info", "monitor", "xlen", "client", "hello", "ping"}
    deltas = {k: after[k] - before.get(k, 0) for k in after if k not in ours and after[k] > before.get(k, 0)}
    sent = {k: v for k, v in sent.items() if k not in ours}
    return {
        "round_trips_per_execution": sum(sent.values()) / executions,
        "round_trips_by_name": dict(sorted(sent.items(), key=lambda kv: -kv[1])),
        "commands_per_execution_incl_scripts": sum(deltas.values()) / executions,
        "commands_by_name": dict(sorted(deltas.items(), key=lambda kv: -kv[1])),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server, url = start_redis()
    figures: dict[str, Any] = {"executions": args.executions, "runs": args.runs}
    try:
        figures.update(round_trips(url, args.executions))
        ours, celery = [], []
        for _ in range(args.runs):  # in turns, so a noisy moment of the machine hits both
            flush_redis(url)
            node = _node(url)
            try:
                asyncio.run(_completed_per_s(node, url, 50))
                ours.append(asyncio.run(_completed_per_s(node, url, args.executions)))
            finally:
                node.stop()
            flush_redis(url)
            celery.append(peers.celery(url, 20, args.executions)["noop_async_completed_per_s"])
        figures["cluster_async_noop_completed_per_s"] = statistics.median(ours)
        figures["celery_noop_async_completed_per_s"] = statistics.median(celery)
        figures["cluster_async_noop_over_celery"] = statistics.median(ours) / statistics.median(celery)
    finally:
        server.terminate()
        server.wait(10)
    rows = [(k, f"{v:,.2f}") for k, v in figures.items() if isinstance(v, float | int)]
    rows += [(f"round trips: {k}", str(v)) for k, v in figures["round_trips_by_name"].items()]
    rows += [(f"commands: {k}", str(v)) for k, v in figures["commands_by_name"].items()]
    print(table(rows))
    print(f"wrote {write_results('cluster_costs', figures)}")


if __name__ == "__main__":
    main()
