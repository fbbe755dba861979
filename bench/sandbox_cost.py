"""What the bubblewrap sandbox adds to a call: a process call and a cold Python worker, each p50 on a
node with the sandbox and on one without it (`sandbox = "off"`), measured in turns on the same machine.

    python -m bench.sandbox_cost [--rounds 10]

Targets (issue 22): under 10 ms added to a process call, under 20 ms to a fresh Python worker. A warm
Python call runs in the sandbox its worker started in, so it costs nothing more (also measured).
Both nodes run workers on one interpreter, the one a node without the sandbox can give the function
user, so that the figures compare sandboxes, not interpreters (how long an interpreter takes to
start depends on what its site-packages load).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import Server, invoke_request, percentile, start_node, table, write_results
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.runtimes.python import SYSTEM_PYTHON
from spearlet.runtimes.sandbox import world_runnable

PROCESS = invoke_request("echo")
COLD = pb.InvokeFunctionRequest(
    invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK, task_id="greet", function_name="noop", force_new_instance=True
)
WARM = invoke_request("greet", "noop")
KINDS = {"process": (PROCESS, 10), "cold_python": (COLD, 3), "warm_python": (WARM, 20)}


async def _timed(stub: pb_grpc.FunctionServiceStub, request: pb.InvokeFunctionRequest, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = await stub.InvokeFunction(request)
        out.append((time.perf_counter() - started) * 1000)
        if not response.success:
            raise RuntimeError(f"{request.task_id}: {response.result.error_message}")
    return out


async def _measure(nodes: dict[str, Server], rounds: int) -> dict[str, float]:
    channels = {mode: grpc.aio.insecure_channel(node.target) for mode, node in nodes.items()}
    try:
        stubs = {mode: pb_grpc.FunctionServiceStub(channel) for mode, channel in channels.items()}
        samples: dict[tuple[str, str], list[float]] = {(m, k): [] for m in nodes for k in KINDS}
        for stub in stubs.values():  # warm-up: first calls, caches, the first worker
            for request, n in KINDS.values():
                await _timed(stub, request, n)
        for _ in range(rounds):  # in turns, so that both met the same moments of a noisy machine
            for kind, (request, n) in KINDS.items():
                for mode, stub in stubs.items():
                    samples[(mode, kind)] += await _timed(stub, request, n)
    finally:
        for channel in channels.values():
            await channel.close()
    figures: dict[str, float] = {}
    for kind in KINDS:
        sandboxed = percentile(samples[("sandbox", kind)], 0.5)
        bare = percentile(samples[("off", kind)], 0.5)
        figures[f"{kind}_p50_ms_sandbox"] = sandboxed
        figures[f"{kind}_p50_ms_no_sandbox"] = bare
        figures[f"{kind}_p50_ms_added_by_sandbox"] = sandboxed - bare
    return figures


def sandbox_cost(rounds: int) -> dict[str, float]:
    own = sys.executable
    interpreter = own if os.geteuid() != 0 or world_runnable(own) else SYSTEM_PYTHON
    with tempfile.TemporaryDirectory(prefix="spearlet-sandbox-bench-") as tmp:
        nodes: dict[str, Server] = {}
        try:
            for mode, sandbox in (("sandbox", "required"), ("off", "off")):
                env = {"SPEARLET_SANDBOX": sandbox, "SPEARLET_PYTHON_EXECUTABLE": interpreter}
                nodes[mode] = start_node(data_dir=Path(tmp) / mode, env=env)
            return asyncio.run(_measure(nodes, rounds))
        finally:
            for node in nodes.values():
                node.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    figures = sandbox_cost(args.rounds)
    print(table([(k, f"{v:,.2f}") for k, v in figures.items()]))
    print(f"wrote {write_results('sandbox_cost', {'rounds': args.rounds, **figures})}")


if __name__ == "__main__":
    main()
