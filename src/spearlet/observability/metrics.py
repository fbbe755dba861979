"""Prometheus metrics: the seed's execution metrics, gRPC method latency and codes, pool figures.

Execution metrics come from lifecycle events; gauges (running, queued, pool sizes) are read from the
scheduler and the pool when Prometheus scrapes, so they are never stale.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from spearlet.core.lifecycle import Event
from spearlet.core.models import ExecutionRecord, Status
from spearlet.engine.scheduler import Scheduler
from spearlet.runtimes.pool import Pool

M = TypeVar("M", bound=MetricWrapperBase)
OTHER_FUNCTIONS = "_other"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, scheduler: Scheduler, pools: dict[str, Pool], max_functions: int = 20) -> None:
        self.max_functions = max_functions
        # Function names are the caller's to choose: each task's first `max_functions` get a label
        # of their own, later ones share OTHER_FUNCTIONS, so no caller can grow /metrics for good.
        self._functions: dict[str, set[str]] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.duration = Histogram(
            "spearlet_execution_duration_seconds", "Execution time of finished executions",
            ["task", "function"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.finished = Counter(
            "spearlet_executions_total", "Finished executions by final status (completed, failed, timeout, cancelled)",
            ["task", "function", "status"], registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "spearlet_queue_wait_seconds",
            "Time from acceptance to start",
            ["task"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.status_queries = Counter(
            "spearlet_status_queries_total", "Status queries of executions", ["transport"], registry=r
        )
        self.grpc_latency = Histogram(
            "spearlet_grpc_request_duration_seconds", "gRPC method latency", ["method"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.grpc_codes = Counter(
            "spearlet_grpc_requests_total", "gRPC calls by status code", ["method", "code"], registry=r
        )
        self._completions: deque[float] = deque()
        self._children: dict[tuple[object, ...], Any] = {}  # (id of the metric, *labels) -> child
        r.register(_LiveFigures(scheduler, pools, self))

    def on_event(self, event: Event, record: ExecutionRecord) -> None:
        if event is Event.STARTED and record.attempts == 1:
            self._child(self.queue_wait, record.task_id).observe(record.queue_wait_ms / 1000)
        elif event is Event.FINISHED:
            task, function = record.task_id, self._function_label(record.task_id, record.function_name)
            self._child(self.finished, task, function, record.status.name.lower()).inc()
            if record.started_at:
                self._child(self.duration, task, function).observe(record.execution_time_ms / 1000)
            if record.status is Status.COMPLETED:
                self._completions.append(time.monotonic())

    def _function_label(self, task_id: str, function: str) -> str:
        known = self._functions.setdefault(task_id, set())
        if function in known:
            return function
        if len(known) < self.max_functions:
            known.add(function)
            return function
        return OTHER_FUNCTIONS

    def _child(self, metric: M, *labels: str) -> M:
        """`metric.labels(*labels)`, remembered: labels() takes a lock and builds keys each call."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def forget_task(self, task_id: str) -> None:
        """Drop a deleted task's series (a few dozen lines each) and their cached children."""
        per_task = {
            id(self.duration): self.duration,
            id(self.finished): self.finished,
            id(self.queue_wait): self.queue_wait,
        }
        for key in [k for k in self._children if k[0] in per_task and k[1] == task_id]:
            metric = per_task[cast(int, key[0])]
            labels = cast(tuple[str, ...], key[1:])
            metric.remove(*labels)
            del self._children[key]
        self._functions.pop(task_id, None)

    def completion_rate(self, window_s: float = 60.0) -> float:
        """Executions completed per second over the last minute."""
        cutoff = time.monotonic() - window_s
        while self._completions and self._completions[0] < cutoff:
            self._completions.popleft()
        return len(self._completions) / window_s

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        self._child(self.grpc_latency, method).observe(seconds)
        self._child(self.grpc_codes, method, code).inc()
        if method == "GetExecutionStatus":
            self.count_status_query("grpc")

    def count_status_query(self, transport: str) -> None:
        self._child(self.status_queries, transport).inc()


class _LiveFigures(Collector):
    def __init__(self, scheduler: Scheduler, pools: dict[str, Pool], metrics: Metrics) -> None:
        self.scheduler = scheduler
        self.pools = pools
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        s = self.scheduler
        yield GaugeMetricFamily("spearlet_running_executions", "Executions running now", value=s.running_count)
        yield GaugeMetricFamily(
            "spearlet_queue_length", "Executions waiting in the scheduler's queues", value=s.pending_count
        )
        yield GaugeMetricFamily(
            "spearlet_pending_executions", "Accepted executions not finished (queued or running)",
            value=s.pending_count + s.running_count,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "spearlet_completion_rate", "Executions completed per second over the last minute",
            value=self.metrics.completion_rate(),
        )  # fmt: skip
        size = GaugeMetricFamily("spearlet_pool_instances", "Warm instances per task", labels=["runtime", "task"])
        hits = CounterMetricFamily(
            "spearlet_pool_warm_hits", "Calls served by an already warm instance", labels=["runtime"]
        )
        started = CounterMetricFamily("spearlet_pool_instances_started", "Instances started", labels=["runtime"])
        for runtime, pool in self.pools.items():
            for task_id, count in pool.sizes().items():
                size.add_metric([runtime, task_id], count)
            hits.add_metric([runtime], pool.warm_hits)
            started.add_metric([runtime], pool.started)
        yield size
        yield hits
        yield started
