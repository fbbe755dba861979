"""The same two functions for every peer: a no-op and a 10 ms sleep (Celery app and RQ jobs)."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0"))  # fmt: skip
app.conf.update(result_expires=3600, worker_prefetch_multiplier=4, task_ignore_result=False)


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="sleep10")
def sleep10() -> None:
    time.sleep(0.01)


def rq_noop() -> None:
    return None


def rq_sleep10() -> None:
    time.sleep(0.01)
