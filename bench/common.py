"""Shared pieces of the benchmarks: processes on loopback, timing, figures, JSON results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil
from google.protobuf import any_pb2, struct_pb2

from spearlet.api.grpc import spearlet_pb2 as pb
from tests.helpers import flush_redis as flush_redis

# Shared with the tests, which import nothing from here.
from tests.helpers import percentile as percentile
from tests.helpers import start_redis as start_redis

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
T = TypeVar("T")


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


START_TIMEOUT_S = 300.0  # a node opening 100k records on a loaded machine took over a minute


def start(
    cmd: list[str],
    env: dict[str, str] | None = None,
    *,
    grpc: bool = True,
    http: bool = False,
    timeout: float = START_TIMEOUT_S,
) -> Server:
    """Start a server process and wait for the lines it prints when ready: `gRPC host:port` if
    `grpc`, `HTTP url` if `http` (a node prints both; the echo and floor servers one). Raises,
    naming the command, if they do not come within `timeout` seconds or the process exits."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})}
    )  # fmt: skip
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    # A thread reads the lines so that the wait has a deadline; it keeps draining stdout after, so a
    # server that prints more never blocks on a full pipe.
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    target = http_url = ""
    while (grpc and not target) or (http and not http_url):
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            proc.wait()
            wanted = " and ".join(name for name, wait in (("gRPC", grpc), ("HTTP", http)) if wait)
            raise TimeoutError(f"{cmd} printed no {wanted} line within {timeout:g} s (killed)") from None
        if not line:
            raise RuntimeError(f"{cmd} exited before it was ready: exit status {proc.wait()}")
        if m := re.search(r"gRPC\s+(\S+)", line):
            target = m.group(1)
        if m := re.search(r"HTTP\s+(\S+)", line):
            http_url = m.group(1)
    return Server(proc, target, http_url)


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)
    lines.put("")  # end of file: the process exited


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 120.0, every: float = 0.01
) -> None:
    """Poll `check` until it is true; raise TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        await asyncio.sleep(every)


async def bounded(work: Awaitable[T], what: str, timeout: float) -> T:
    """`work`, or a TimeoutError naming `what` after `timeout` seconds (a hung server or call)."""
    try:
        return await asyncio.wait_for(work, timeout)
    except TimeoutError:
        raise TimeoutError(f"{what} did not finish within {timeout:g} s") from None


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
    return start(cmd, env={"SPEARLET_LOG_LEVEL": "WARNING", **(env or {})}, http=True)


def start_echo() -> Server:
    return start([sys.executable, str(ROOT / "bench" / "echo_server.py")])


def start_floor() -> Server:
    return start([sys.executable, str(ROOT / "bench" / "floor_server.py")])


def start_http_floor() -> Server:
    return start([sys.executable, str(ROOT / "bench" / "http_floor.py")], grpc=False, http=True)


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


@contextlib.contextmanager
def time_limit(what: str, seconds: int) -> Iterator[None]:
    """Raise TimeoutError naming `what` in the main thread if the block lasts over `seconds`: for
    blocking work (sync gRPC calls wait in short slices, so the signal's handler gets to run)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"{what} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


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
