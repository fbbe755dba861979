"""The dashboard at thousands of executions, in the system's headless Chromium (as its tests).

    python -m bench.dashboard [--stored 8000] [--live 3000]

Fills a node with `--stored` finished executions, then measures in the browser: the first page of
50 rows, ten pages back, and, with the table open, `--live` more executions arriving through the
event stream: the page's long tasks (over 50 ms of wall time, the browser's own measure of a page
that freezes), the CPU time of its longest task and of its main thread in all (from a trace: on a
machine shared with other work, wall time also counts the waits for a core), and the rows it holds.
Target (issue 21, "without freezing"): every task of the page under 100 ms of CPU (input answered
within 100 ms, RAIL's bound), one page of rows held whatever arrives. Most of a task's time under
a flood is laying out the table again (all of it: a row inserted at the top moves every row).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.common import invoke_request, start_node, table, write_results
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from tests.api.http.browser import FLAGS, chromium

NOOP = invoke_request("greet", "noop", mode=pb.EXECUTION_MODE_ASYNC)
LONG_TASKS = (
    "window.longTasks = []; new PerformanceObserver((list) => { for (const e of list.getEntries())"
    " window.longTasks.push(e.duration); }).observe({type: 'longtask', buffered: true});"
)


async def fill(target: str, count: int, concurrency: int = 64) -> float:
    """Accept `count` async executions; returns how many per second were accepted."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.FunctionServiceStub(channel)
        left = iter(range(count))

        async def worker() -> None:
            for _ in left:
                response = await stub.InvokeFunction(NOOP)
                if not response.success:
                    raise RuntimeError(response.message)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


async def measure(url: str, target: str, live: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright, expect

    path = chromium()
    if path is None:
        raise SystemExit("no Chromium: `make setup` installs Debian's chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=FLAGS, headless=True)
        page = await browser.new_page(viewport={"width": 1280, "height": 860})
        await page.add_init_script(LONG_TASKS)
        started = time.perf_counter()
        await page.goto(f"{url}/#/executions")
        await page.locator("#executions tbody tr").nth(49).wait_for()
        first_page_s = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(10):
            await page.locator("#older").click()
            await expect(page.locator("#page-status")).to_contain_text(f"Page {i + 2} ")
        ten_pages_s = time.perf_counter() - started
        await page.goto(f"{url}/#/overview")
        await page.goto(f"{url}/#/executions")
        await expect(page.locator("#live")).to_have_attribute("data-state", "on")
        await page.evaluate("window.longTasks = []")
        trace = Path(tempfile.mkdtemp(prefix="spearlet-trace-")) / "trace.json"
        await browser.start_tracing(
            page=page, path=str(trace), categories=["devtools.timeline", "disabled-by-default-devtools.timeline"]
        )
        load_before = os.getloadavg()[0]
        rate = await fill(target, live)
        await page.wait_for_timeout(1000)  # the last changes reach the page
        await browser.stop_tracing()
        long_tasks: list[float] = await page.evaluate("window.longTasks")
        rows = await page.locator("#executions tbody tr").count()
        await browser.close()
    cpu_ms, longest_cpu_ms, span_s = renderer_cpu(trace)
    return {
        "first_page_s": round(first_page_s, 3),
        "ten_pages_back_s": round(ten_pages_s, 3),
        "live_executions": live,
        "live_accepted_per_s": round(rate),
        "long_tasks_wall": len(long_tasks),
        "longest_task_wall_ms": max(long_tasks, default=0),
        "longest_task_cpu_ms": round(longest_cpu_ms, 1),
        "page_cpu_share": f"{100 * cpu_ms / 1000 / span_s:.1f}% of a core",
        "rows_held": rows,
        "load_average_1m": round(max(load_before, os.getloadavg()[0]), 1),
    }


def renderer_cpu(trace: Path) -> tuple[float, float, float]:
    """The page's main thread in a Chromium trace: CPU ms in all, CPU ms of its longest task, and
    the seconds the trace spans."""
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    names = [e for e in events if e.get("name") == "thread_name"]
    main = {(e["pid"], e["tid"]) for e in names if e["args"]["name"] == "CrRendererMain"}
    tasks = [e for e in events if e.get("name") == "RunTask" and e.get("ph") == "X" and (e["pid"], e["tid"]) in main]
    stamps = [e["ts"] for e in events if e.get("ph") == "X"]
    span_s = (max(stamps) - min(stamps)) / 1e6 if stamps else 1.0
    cpu = [e.get("tdur", 0) / 1000 for e in tasks]
    return sum(cpu), max(cpu, default=0.0), span_s


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stored", type=int, default=8000)
    parser.add_argument("--live", type=int, default=3000)
    args = parser.parse_args()
    node = start_node()
    try:
        stored_rate = await fill(node.target, args.stored)
        figures = {"stored": args.stored, "stored_accepted_per_s": round(stored_rate)}
        figures.update(await measure(node.http_url, node.target, args.live))
    finally:
        node.stop()
    print(table([(k, str(v)) for k, v in figures.items()]))
    print(f"written to {write_results('dashboard', figures)}")


if __name__ == "__main__":
    asyncio.run(main())
