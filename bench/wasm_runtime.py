"""WASM runtime costs, in process: compile time of the example module, and instantiate+run of a
trivial module with the module cached (a fresh store per call, as in production).

    python bench/wasm_runtime.py [--calls 2000]

Prints a table and writes bench/results/wasm_runtime.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
from pathlib import Path

from bench.common import percentile, table, write_results
from spearlet.core.models import Task
from spearlet.runtimes.base import Invocation, Limits, StopRequest
from spearlet.runtimes.wasm import WasmOptions, WasmRuntime

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "spearlet" / "examples" / "wasm"
LIMITS = Limits(timeout_ms=10_000, memory_bytes=0, cpu_seconds=0, output_bytes=1 << 20, log_bytes=65536,
                file_bytes=0, open_files=0)  # fmt: skip


def task_for(path: Path) -> Task:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Task(
        task_id=path.stem, name=path.stem, artifact_type="wasm", location=str(path), local_path=str(path), digest=digest
    )


async def measure(calls: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as data:
        runtime = WasmRuntime(WasmOptions(cache_dir=Path(data) / "wasm-cache"))
        try:
            echo = task_for(EXAMPLES / "echo.wat")
            started = time.perf_counter()
            await runtime.prepare(echo)
            figures["compile_echo_example_ms"] = (time.perf_counter() - started) * 1000
            hello = task_for(EXAMPLES / "hello.wat")
            await runtime.prepare(hello)
            invocation = Invocation("bench", "", {}, {}, LIMITS)
            samples = []
            for i in range(calls + 100):
                started = time.perf_counter()
                await runtime.invoke(hello, invocation, StopRequest())
                if i >= 100:
                    samples.append((time.perf_counter() - started) * 1000)
            figures["instantiate_run_p50_ms"] = percentile(samples, 0.5)
            figures["instantiate_run_p99_ms"] = percentile(samples, 0.99)
        finally:
            await runtime.close()
        # A restarted node: the module comes from the on-disk cache instead of being compiled.
        again = WasmRuntime(WasmOptions(cache_dir=Path(data) / "wasm-cache"))
        try:
            started = time.perf_counter()
            await again.prepare(echo)
            figures["load_echo_from_cache_ms"] = (time.perf_counter() - started) * 1000
        finally:
            await again.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    figures = asyncio.run(measure(parser.parse_args().calls))
    print(table([(k, f"{v:.3f}") for k, v in figures.items()]))
    print(f"wrote {write_results('wasm_runtime', figures)}")


if __name__ == "__main__":
    main()
