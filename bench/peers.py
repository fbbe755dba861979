"""Celery (Redis broker and result backend, prefork workers) and RQ, measured the way spearlet is:
a no-op and a 10 ms sleep, sync (submit, wait for the result) at concurrency 1, and async (submit
all, then wait for all) end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import ROOT, percentile

WORKERS = 2  # one per core of this machine, as a user would start them


def _start(cmd: list[str], url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_REDIS": url, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def celery(url: str, sync_calls: int, async_calls: int) -> dict[str, Any]:
    os.environ["BENCH_REDIS"] = url
    from bench import peer_tasks

    peer_tasks.app.conf.broker_url = peer_tasks.app.conf.result_backend = url
    command = [sys.executable, "-m", "celery", "-A", "bench.peer_tasks", "worker", "--pool=prefork",
               f"--concurrency={WORKERS}", "--loglevel=WARNING", "--without-gossip", "--without-mingle"]  # fmt: skip
    worker = _start(command, url)
    try:
        deadline = time.monotonic() + 60
        while True:  # ready when it answers a task
            try:
                peer_tasks.noop.delay().get(timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        figures: dict[str, Any] = {}
        for name, task in (("noop", peer_tasks.noop), ("sleep10", peer_tasks.sleep10)):
            samples = []
            for _ in range(sync_calls):
                started = time.perf_counter()
                task.delay().get(timeout=30)
                samples.append((time.perf_counter() - started) * 1000)
            figures[f"{name}_sync_p50_ms"] = percentile(samples, 0.5)
            figures[f"{name}_sync_p99_ms"] = percentile(samples, 0.99)
            started = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                results = list(pool.map(lambda _, t=task: t.delay(), range(async_calls)))
            for result in results:
                result.get(timeout=120)
            figures[f"{name}_async_completed_per_s"] = async_calls / (time.perf_counter() - started)
        return figures
    finally:
        worker.terminate()
        worker.wait(30)


def rq(url: str, sync_calls: int, async_calls: int) -> dict[str, Any]:
    from redis import Redis
    from rq import Queue

    from bench import peer_tasks

    connection = Redis.from_url(url)
    queue = Queue("bench", connection=connection)
    workers = [_start([sys.executable, "-m", "rq.cli", "worker", "--url", url, "bench", "--quiet"], url)
               for _ in range(WORKERS)]  # fmt: skip

    def wait(job: Any, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not job.is_finished:
            if job.is_failed or time.monotonic() > deadline:
                raise RuntimeError(f"rq job {job.id} did not finish")
            time.sleep(0.001)

    try:
        wait(queue.enqueue(peer_tasks.rq_noop), timeout=60)
        figures: dict[str, Any] = {}
        for name, function in (("noop", peer_tasks.rq_noop), ("sleep10", peer_tasks.rq_sleep10)):
            samples = []
            for _ in range(sync_calls):
                started = time.perf_counter()
                wait(queue.enqueue(function))
                samples.append((time.perf_counter() - started) * 1000)
            figures[f"{name}_sync_p50_ms"] = percentile(samples, 0.5)
            figures[f"{name}_sync_p99_ms"] = percentile(samples, 0.99)
            started = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                jobs = list(pool.map(lambda _, f=function: queue.enqueue(f), range(async_calls)))
            for job in jobs:
                wait(job)
            figures[f"{name}_async_completed_per_s"] = async_calls / (time.perf_counter() - started)
        return figures
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(30)
