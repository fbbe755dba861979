"""Management: what the node does with the tasks and records it holds, besides running them.

Listing executions, deleting a task, health, statistics (the management calls of the API), and
the node's own upkeep: retention, and at start the recovery of what a previous run accepted. The
invocation calls (invoke, stream, watch, status, cancel) are the Invoker's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from spearlet.config import Settings
from spearlet.core.codes import ErrorCode
from spearlet.core.errors import FailedPrecondition, InvalidArgument, NotFound, StoreFault, StoreUnavailable
from spearlet.core.lifecycle import Lifecycle
from spearlet.core.models import Status, now_ms
from spearlet.core.queries import ExecutionPage, Stats, TaskSummary
from spearlet.engine.registry import TaskRegistry, page_limit
from spearlet.engine.scheduler import Scheduler
from spearlet.store.base import Store


@dataclass(slots=True)
class Health:
    status: str
    message: str
    uptime_seconds: int
    active_tasks: int
    running: int
    pending: int
    total_executions: int


class Management:
    def __init__(
        self, settings: Settings, store: Store, tasks: TaskRegistry, scheduler: Scheduler, lifecycle: Lifecycle
    ) -> None:
        self.settings = settings
        self.store = store
        self.tasks = tasks
        self.scheduler = scheduler
        self.lifecycle = lifecycle
        self.started_monotonic = time.monotonic()

    async def list_executions(
        self, task_id: str, status: Status, limit: int, start_after: str, invocation_id: str = ""
    ) -> ExecutionPage:
        """A page of records, ending at `limit` of them or `max_page_bytes` of what they store;
        with `invocation_id`, only that invocation's."""
        max_bytes = self.settings.max_page_bytes
        return await self.store.list_executions(
            task_id, status, page_limit(limit), start_after, max_bytes=max_bytes, invocation_id=invocation_id
        )

    async def delete_task(self, task_id: str, force: bool, cleanup_executions: bool) -> tuple[bool, int, str]:
        active = [
            r
            for r in (await self.store.unfinished())
            if r.task_id == task_id and self.scheduler.is_active(r.execution_id)
        ]
        if active and not force:
            raise FailedPrecondition(
                f"task {task_id!r} has {len(active)} active executions: cancel them or delete with force"
            )
        ends = {record.execution_id: self.lifecycle.waiter(record.execution_id) for record in active}
        for record in active:
            self.scheduler.request_stop(record.execution_id, True, "task deleted")
        if ends:
            # Their ends first, so that what is kept per task (metrics, history) goes with it.
            await asyncio.wait(ends.values(), timeout=5.0)
            for execution_id, end in ends.items():
                self.lifecycle.drop_waiter(execution_id, end)
        deleted, cleaned = await self.tasks.delete(task_id, cleanup_executions)
        if not deleted:
            raise NotFound(f"task {task_id!r} not found")
        return deleted, cleaned, f"task {task_id!r} deleted"

    def uptime_seconds(self) -> int:
        return int(time.monotonic() - self.started_monotonic)

    async def health(self) -> Health:
        pending = self.scheduler.pending_count
        fault = self.store.fault
        try:
            tasks, executions = await self.store.count_tasks(), await self.store.count_executions()
        except StoreFault as exc:
            fault, tasks, executions = exc, 0, 0
        status, message = "healthy", "serving"
        if isinstance(fault, StoreUnavailable):
            status, message = "unhealthy", str(fault)
        elif fault is not None:  # a full disk: stored work is still answered
            status, message = "degraded", str(fault)
        elif pending >= self.settings.max_pending:
            status, message = "unhealthy", f"pending queue full ({pending})"
        elif pending >= 0.8 * self.settings.max_pending:
            status, message = "degraded", f"pending queue {pending} of {self.settings.max_pending}"
        return Health(status, message, self.uptime_seconds(), tasks, self.scheduler.running_count, pending, executions)

    async def stats(self, time_range_hours: int) -> Stats:
        if time_range_hours < 0:
            raise InvalidArgument(f"time_range_hours must not be negative, got {time_range_hours}")
        since = now_ms() - time_range_hours * 3_600_000 if time_range_hours else 0
        return await self.store.stats(since)

    async def expire_records(self) -> int:
        """Apply the retention: terminal records older than `retention_hours` or beyond
        `retention_max_records` go; unfinished ones stay."""
        before = now_ms() - int(self.settings.retention_hours * 3_600_000)
        return await self.store.expire(before, self.settings.retention_max_records)

    async def recover(self) -> tuple[int, int]:
        """Finish what a previous run of this node accepted: (resubmitted, failed)."""
        resubmitted = failed = 0
        for record in await self.store.unfinished():
            task = await self.tasks.find(record.task_id)
            retry_left = record.attempts <= record.max_retries
            if task is not None and (record.status is Status.PENDING or retry_left):
                self.scheduler.submit(record, task)
                resubmitted += 1
                continue
            if task is None:
                record.end(Status.FAILED, ErrorCode.TASK_DELETED, "the task was deleted before it ran")
            else:
                message = f"the node restarted during attempt {record.attempts} and no retries were left"
                record.end(Status.FAILED, ErrorCode.NODE_RESTARTED, message)
            await self.scheduler.settle(record)
            failed += 1
        return resubmitted, failed

    async def task_summaries(self, task_ids: list[str]) -> dict[str, TaskSummary]:
        """Each task's execution count and last status, over every retained record."""
        return await self.store.task_summaries(task_ids)

    async def count_tasks(self) -> int:
        return await self.store.count_tasks()
