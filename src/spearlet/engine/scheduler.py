"""The scheduler: per-task queues, concurrency limits, fairness, backpressure, retries.

Accepted executions wait in one queue per task. Whenever a slot frees up, the next task in
round-robin order that is under its own limit gets to start its oldest execution, so a flood on one
task does not starve another. The pending total is bounded: past it, submit refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from spearlet.config import Settings
from spearlet.core.background import Background
from spearlet.core.codes import ErrorCode
from spearlet.core.errors import ResourceExhausted, StoreFault
from spearlet.core.ids import execution_of_own_instance, own_instance_id
from spearlet.core.lifecycle import Event, Lifecycle
from spearlet.core.models import ExecutionRecord, Status, Task, now_ms
from spearlet.core.values import classify_output
from spearlet.runtimes.base import Invocation, Limits, NodeLimits, Outcome, Runtime, StopRequest
from spearlet.store.base import Store

log = logging.getLogger(__name__)

# Failures that another attempt cannot fix.
NOT_RETRYABLE = frozenset({ErrorCode.SPAWN_FAILED, ErrorCode.ARTIFACT_UNAVAILABLE, ErrorCode.OUTPUT_TOO_LARGE})
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 10.0
HELD_RETRY_S = 0.5  # how often ends held for a store that took no writes are tried again


def backoff_s(attempt: int) -> float:
    """Exponential backoff with full jitter before attempt number `attempt + 1`."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))


def node_limits(settings: Settings) -> NodeLimits:
    """The node's limits for one call, as runtimes take them."""
    return NodeLimits(
        memory_limit_mb=settings.memory_limit_mb,
        cpu_limit_s=settings.cpu_limit_s,
        output_limit_bytes=settings.output_limit_bytes,
        log_limit_bytes=settings.log_limit_bytes,
        file_limit_mb=settings.file_limit_mb,
        open_files=settings.open_files,
        max_processes=settings.max_processes,
    )


class _Started:
    """An attempt's start, told once: the record takes the instance it runs on, is written
    RUNNING (not awaited: while the node runs, this scheduler is the authority on what runs; a
    cancel of queued work removes it here first) and STARTED is published. A runtime with kept
    instances tells it once it has one; for the others it is told at once."""

    __slots__ = ("record", "scheduler", "told")

    def __init__(self, scheduler: Scheduler, record: ExecutionRecord) -> None:
        self.scheduler, self.record, self.told = scheduler, record, False

    def __call__(self, instance_id: str) -> None:
        if self.told:
            return
        self.told = True
        self.record.instance_id = instance_id
        self.scheduler.store.queue_transition(self.record)
        self.scheduler.lifecycle.publish(Event.STARTED, self.record)


@dataclass(slots=True)
class _Job:
    record: ExecutionRecord
    task: Task
    stop: StopRequest = field(default_factory=StopRequest)
    runner: asyncio.Task[None] | None = None


class Scheduler:
    def __init__(self, settings: Settings, store: Store, runtimes: dict[str, Runtime], lifecycle: Lifecycle) -> None:
        self.settings = settings
        self.store = store
        self.runtimes = runtimes
        self.lifecycle = lifecycle
        self.limits = node_limits(settings)
        self._queues: dict[str, deque[_Job]] = {}
        self._ring: deque[str] = deque()  # tasks with queued work, in service order
        self._pending: dict[str, _Job] = {}
        self._admitting = 0  # accepts being stored, counted against max_pending
        self._held: dict[str, ExecutionRecord] = {}  # ended while the store took no writes
        self._writing_held: asyncio.Task[None] | None = None
        self._running: dict[str, _Job] = {}
        self._running_per_task: dict[str, int] = {}
        self._durations: dict[tuple[str, str], deque[int]] = {}
        self._closing = False
        self._background = Background()

    # Figures for health, stats and estimates

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def running_count(self) -> int:
        return len(self._running)

    def is_active(self, execution_id: str) -> bool:
        return execution_id in self._pending or execution_id in self._running

    def task_limit(self, task: Task) -> int:
        """Calls of this task at once: its `max_concurrency`, and no more than its `max_instances`."""
        own = task.settings
        limit = self.settings.max_concurrency if own.max_concurrency is None else own.max_concurrency
        return max(1, min(limit, limit if own.max_instances is None else own.max_instances))

    def recent_duration_ms(self, task_id: str, function_name: str) -> float | None:
        """Mean of the last completed durations of this task and function, or None without history."""
        history = self._durations.get((task_id, function_name))
        return sum(history) / len(history) if history else None

    def tasks_in_use(self) -> list[Task]:
        """The tasks (as their work was accepted) of every execution queued or running here."""
        return [job.task for job in (*self._pending.values(), *self._running.values())]

    def queued_ahead(self, task_id: str) -> tuple[int, int]:
        """(executions queued for this task, executions of it running now)."""
        return len(self._queues.get(task_id, ())), self._running_per_task.get(task_id, 0)

    def forget_task(self, task_id: str) -> None:
        """Drop what is kept about a deleted task (its queue and counts go once empty)."""
        for key in [k for k in self._durations if k[0] == task_id]:
            del self._durations[key]

    # Submitting and cancelling

    def ensure_room(self) -> None:
        """Refuse new work once `max_pending` executions wait (or are being stored to wait):
        backpressure, not unbounded memory."""
        waiting = len(self._pending) + self._admitting
        if waiting >= self.settings.max_pending:
            raise ResourceExhausted(f"the node has {waiting} executions pending, its limit: try again later")

    @contextlib.contextmanager
    def admitting(self) -> Iterator[None]:
        """A place among the pending while a new record is being stored, so that concurrent
        accepts cannot all pass the room check before any of them is counted. The caller submits
        in the same turn of the loop as it leaves (the place passes to the submitted job)."""
        self.ensure_room()
        self._admitting += 1
        try:
            yield
        finally:
            self._admitting -= 1

    def submit(self, record: ExecutionRecord, task: Task) -> None:
        """Queue an accepted execution (admission is `ensure_room`'s job, before it is stored)."""
        job = _Job(record, task)
        self._pending[record.execution_id] = job
        queue = self._queues.get(task.task_id)
        if queue is None:
            queue = self._queues[task.task_id] = deque()
            self._ring.append(task.task_id)
        queue.append(job)
        self._pump()

    def request_stop(self, execution_id: str, force: bool, reason: str) -> bool:
        """Stop a queued or running execution. False when this node does not hold it."""
        job = self._pending.pop(execution_id, None)
        if job is not None:
            queue = self._queues.get(job.task.task_id)
            if queue is not None and job in queue:
                queue.remove(job)
            job.stop.request(force, reason)
            self._background.spawn(self._finish_unstarted(job, reason))
            return True
        job = self._running.get(execution_id)
        if job is not None:
            job.stop.request(force, reason)
            return True
        return False

    async def close(self) -> None:
        """Stop everything running; what is stopped by shutdown stays RUNNING or PENDING in the
        store and is finished by the next start (recovery)."""
        self._closing = True
        runners = [job.runner for job in self._running.values() if job.runner is not None]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await self._background.wait()
        if self._writing_held is not None:
            self._writing_held.cancel()
        if self._held:  # recovery (or a cluster's reclaiming) ends them after the next start
            log.warning("%d ended executions were never written: the store did not take writes", len(self._held))

    # Internals

    def _pump(self) -> None:
        """Start queued work while there is capacity, serving tasks round-robin."""
        if self._closing:
            return
        scanned = 0
        while self._ring and len(self._running) < self.settings.max_concurrency and scanned < len(self._ring):
            task_id = self._ring[0]
            self._ring.rotate(-1)
            queue = self._queues[task_id]
            if not queue:
                self._ring.remove(task_id)
                del self._queues[task_id]
                continue
            job = queue[0]
            if self._running_per_task.get(task_id, 0) >= self.task_limit(job.task):
                scanned += 1
                continue
            scanned = 0
            queue.popleft()
            if not queue:
                self._ring.remove(task_id)
                del self._queues[task_id]
            del self._pending[job.record.execution_id]
            self._running[job.record.execution_id] = job
            self._running_per_task[task_id] = self._running_per_task.get(task_id, 0) + 1
            job.runner = asyncio.get_running_loop().create_task(self._run(job))

    async def _finish_unstarted(self, job: _Job, reason: str) -> None:
        job.record.end(
            Status.CANCELLED, ErrorCode.CANCELLED, f"cancelled before it started{': ' + reason if reason else ''}"
        )
        await self._finalize(job.record)

    async def _run(self, job: _Job) -> None:
        record, task = job.record, job.task
        try:
            await self._attempts(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not a function failure: still end the record
            log.exception("execution %s failed inside the node", record.execution_id)
            record.end(Status.FAILED, ErrorCode.INTERNAL, f"internal error: {exc}")
            await self._finalize(record)
        finally:
            self._running.pop(record.execution_id, None)
            left = self._running_per_task.get(task.task_id, 1) - 1
            if left > 0:
                self._running_per_task[task.task_id] = left
            else:
                self._running_per_task.pop(task.task_id, None)
            self._pump()

    async def _attempts(self, job: _Job) -> None:
        record, task = job.record, job.task
        runtime = self.runtimes[task.artifact_type]
        limits = Limits.for_task(self.limits, task, record.timeout_ms)
        record.node = self.settings.node_id
        while True:
            record.status = Status.RUNNING
            record.attempts += 1
            record.started_at = record.started_at or now_ms()
            record.metrics["attempts"] = str(record.attempts)
            record.metrics["queue_wait_ms"] = str(record.queue_wait_ms)
            started = _Started(self, record)
            if not runtime.reports_instance:
                started(own_instance_id(record.execution_id))
            invocation = Invocation(
                record.execution_id,
                record.function_name,
                record.params,
                record.environment,
                limits,
                force_new_instance=record.force_new_instance,
                on_output=lambda chunk: self.lifecycle.publish_chunk(record.execution_id, chunk),
                on_instance=started,
            )
            outcome = await runtime.invoke(task, invocation, job.stop)
            started(record.instance_id)  # when it failed before it had an instance
            self._apply(record, outcome)
            retry = (
                outcome.status is Status.FAILED
                and record.attempts <= record.max_retries
                and outcome.error_code not in NOT_RETRYABLE
                and not job.stop.requested
            )
            if not retry:
                break
            try:
                await asyncio.wait_for(job.stop.wait(), backoff_s(record.attempts))
            except TimeoutError:
                continue
            record.status = Status.CANCELLED
            record.error_code = ErrorCode.CANCELLED
            record.error_message = f"cancelled between attempts{': ' + job.stop.reason if job.stop.reason else ''}"
            break
        record.completed_at = now_ms()
        if record.status is Status.COMPLETED:
            history = self._durations.setdefault((task.task_id, record.function_name), deque(maxlen=20))
            history.append(record.execution_time_ms)
        await self._finalize(record)

    async def destroy_instance(self, instance_id: str, reason: str) -> bool:
        """Stop an instance: a runtime's kept one (its call ends CANCELLED), or the own instance
        of an execution active here (that execution is stopped). False when none is known here."""
        execution_id = execution_of_own_instance(instance_id)
        if execution_id:
            return self.request_stop(execution_id, True, reason or "its instance was destroyed")
        for runtime in self.runtimes.values():
            if await runtime.destroy_instance(instance_id, reason):
                return True
        return False

    @staticmethod
    def _apply(record: ExecutionRecord, outcome: Outcome) -> None:
        record.status = outcome.status
        record.output = outcome.output
        record.output_kind = classify_output(outcome.output)
        record.error_code = outcome.error_code
        record.error_message = outcome.error_message
        record.logs = outcome.logs
        record.execution_time_ms = outcome.execution_time_ms
        record.memory_used_bytes = max(record.memory_used_bytes, outcome.memory_used_bytes)
        record.instance_id = outcome.instance_id or record.instance_id
        record.metrics.update(outcome.metrics)

    async def settle(self, record: ExecutionRecord) -> bool:
        """Store an ended record and announce it, unless another ending came first (then False).

        A store that cannot take the write now (unreachable, its disk full) does not hold up the
        announcement: the record is held here, answers status queries, and is written as soon as
        the store takes writes again (unless another ending reached the store first)."""
        try:
            stored = await self.store.transition(record)
        except StoreFault:
            self._held[record.execution_id] = record
            if self._writing_held is None or self._writing_held.done():
                self._writing_held = asyncio.get_running_loop().create_task(self._write_held())
            stored = True
        if stored:
            self.lifecycle.publish(Event.FINISHED, record)
        return stored

    def held(self, execution_id: str) -> ExecutionRecord | None:
        """The final record of an execution that ended while the store could not take it."""
        return self._held.get(execution_id)

    async def _write_held(self) -> None:
        while self._held:
            await asyncio.sleep(HELD_RETRY_S)
            for execution_id, record in list(self._held.items()):
                try:
                    if not await self.store.transition(record):
                        log.warning("execution %s ended otherwise while its end waited for the store", execution_id)
                except StoreFault:
                    break  # not yet: the next round tries again
                except Exception:
                    log.exception("the held end of execution %s could not be written", execution_id)
                del self._held[execution_id]

    async def _finalize(self, record: ExecutionRecord) -> None:
        try:
            if await self.settle(record):
                return
            # Someone else ended it first (a cancel racing completion): theirs is the final state.
            stored = await self.store.get_execution(record.execution_id)
        except Exception:
            stored = None
            log.exception("execution %s could not be stored as %s", record.execution_id, record.status.name)
        if stored is not None and stored.done:
            self.lifecycle.publish(Event.FINISHED, stored)
        else:
            self.lifecycle.publish(Event.FINISHED, record)  # waiters still get their answer
