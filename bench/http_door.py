"""The HTTP door against its floor: a sync no-op invoke and a status GET over HTTP/1.1, loaded by
Debian's `wrk` (16 connections, one thread), in turns with a bare FastAPI app on uvicorn in the same
venv (bench/http_floor.py), so that both meet the same moments of a noisy machine.

    python -m bench.http_door [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

from bench.common import Server, start_http_floor, start_node, table, write_results

CONNECTIONS = 16
INVOKE_BODY = json.dumps({
    "invocation_type": "INVOCATION_TYPE_EXISTING_TASK",
    "task_id": "greet",
    "function_name": "noop",
    "execution_mode": "EXECUTION_MODE_SYNC",
})  # fmt: skip
_POST = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
"""


class NoLoadTool(RuntimeError):
    """wrk is not installed (make bench installs Debian's)."""


def wrk(url: str, seconds: float, script: Path | None = None) -> float:
    """Requests per second that wrk reaches against `url` with 16 connections for `seconds`; raises
    if any answer was not 2xx (a figure of errors is no figure)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise NoLoadTool("wrk is not installed: `apt-get install wrk` (make bench does)")
    command = [binary, "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "10s"]
    command += ["-s", str(script)] if script is not None else []
    out = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        raise RuntimeError(f"wrk {url}: {m.group(1)} answers were not 2xx")
    if m := re.search(r"Socket errors:.*", out):
        raise RuntimeError(f"wrk {url}: {m.group(0)}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk {url}: no Requests/sec in its output:\n{out}")
    return float(m.group(1))


def in_turns(loads: dict[str, tuple[str, Path | None]], seconds: float, turn_s: float = 2.0) -> dict[str, float]:
    """Requests/s of each load, in turns of `turn_s` until each had `seconds` (a turn's first
    instants include wrk's connecting: the same for every load)."""
    done = dict.fromkeys(loads, 0.0)
    turns = max(1, round(seconds / turn_s))
    for _ in range(turns):
        for name, (url, script) in loads.items():
            done[name] += wrk(url, turn_s, script) * turn_s
    return {name: done[name] / (turns * turn_s) for name in loads}


def http_figures(node: Server, floor: Server, seconds: float) -> dict[str, float]:
    """Sync no-op invoke and status GET requests/s, the node's and the floor's, measured in turns."""
    with tempfile.TemporaryDirectory(prefix="spearlet-http-bench-") as tmp:
        post = Path(tmp) / "post.lua"
        post.write_text(_POST.format(body=json.dumps(INVOKE_BODY)))
        answer = httpx.post(f"{node.http_url}/api/v1/invoke", content=INVOKE_BODY, timeout=30)
        answer.raise_for_status()
        status = f"/api/v1/executions/{answer.json()['execution_id']}/status"
        # The node starts warm workers as concurrent calls need them (each a fresh, sandboxed
        # interpreter): a warm-up at the same concurrency, so that the turns measure calls.
        wrk(f"{node.http_url}/api/v1/invoke", 3, post)
        rates = in_turns(
            {
                "floor_invoke": (f"{floor.http_url}/api/v1/invoke", post),
                "invoke": (f"{node.http_url}/api/v1/invoke", post),
                "floor_status": (f"{floor.http_url}{status}", None),
                "status": (f"{node.http_url}{status}", None),
            },
            seconds,
        )
    return {
        "http_sync_noop_requests_per_s_c16": rates["invoke"],
        "http_floor_invoke_requests_per_s_c16": rates["floor_invoke"],
        "http_status_requests_per_s_c16": rates["status"],
        "http_floor_status_requests_per_s_c16": rates["floor_status"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spearlet-http-door-") as tmp:
        node = start_node(data_dir=Path(tmp) / "data", env={"SPEARLET_MAX_PENDING": "1000000"})
        floor = start_http_floor()
        try:
            figures = http_figures(node, floor, args.seconds)
        finally:
            node.stop()
            floor.stop()
    figures["http_invoke_over_floor"] = (
        figures["http_sync_noop_requests_per_s_c16"] / figures["http_floor_invoke_requests_per_s_c16"]
    )
    figures["http_status_over_floor"] = (
        figures["http_status_requests_per_s_c16"] / figures["http_floor_status_requests_per_s_c16"]
    )
    print(table([(k, f"{v:,.2f}") for k, v in figures.items()]))
    print(f"wrote {write_results('http_door', figures)}")


if __name__ == "__main__":
    main()
