"""The store interface. The embedded SQLite store is the default; a cluster swaps in another."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar, cast

from spearlet.core.errors import StoreFault
from spearlet.core.models import ExecutionRecord, Status, Task
from spearlet.core.queries import ExecutionPage, Stats, TaskPage, TaskSummary

T = TypeVar("T")


class PendingWrite(asyncio.Future[T]):
    """A store operation that, once asked for, runs to its end: cancelling whoever waits for it
    does not cancel it (the waiter's CancelledError comes when it ends), and they can still read
    how it went (Invoker._create starts work stored for a caller that went away). Cheaper than
    asyncio.shield, which costs a future and a turn of the loop. Every one is settled, the store
    sees to that, even at close. asyncio.wait_for on one returns its outcome once it ends instead
    of raising TimeoutError."""

    _task: asyncio.Task[T] | None = None  # the write, when it is a coroutine (pending_write)

    def cancel(self, msg: Any = None) -> bool:
        return False


def pending_write(write: Coroutine[Any, Any, T]) -> PendingWrite[T]:
    """`write` run as a task that cannot be cancelled from outside."""
    loop = asyncio.get_running_loop()
    pending: PendingWrite[T] = PendingWrite(loop=loop)
    task = loop.create_task(write)

    def settle(done: asyncio.Task[T]) -> None:
        pending._task = None
        if done.cancelled():  # the loop is closing
            super(PendingWrite, pending).cancel()
        elif done.exception() is not None:
            pending.set_exception(cast(BaseException, done.exception()))
        else:
            pending.set_result(done.result())

    pending._task = task  # the loop keeps only a weak reference to a task
    task.add_done_callback(settle)
    return pending


def stats_of(records: Iterable[ExecutionRecord]) -> Stats:
    """Stats of `records`, counted one by one (a store that cannot ask its backend to count)."""
    stats = Stats()
    durations = []
    for record in records:
        stats.total += 1
        stats.by_status[record.status] = stats.by_status.get(record.status, 0) + 1
        key = f"{record.task_id}/{record.function_name}" if record.function_name else record.task_id
        stats.by_function[key] = stats.by_function.get(key, 0) + 1
        stats.by_task[record.task_id] = stats.by_task.get(record.task_id, 0) + 1
        if record.status is Status.COMPLETED:
            durations.append(record.execution_time_ms)
    stats.average_execution_time_ms = sum(durations) / len(durations) if durations else 0.0
    return stats


class Store(abc.ABC):
    """Durable tasks and execution records. Every method is safe to call from the event loop.

    Records are values: a store keeps no reference to a record it is handed, and hands out none of
    its own. A write stores the record as it is when the write is done (`queue_transition`: when
    called, as its caller goes on changing it), and every read returns a record its caller may
    change (its fields and `metrics`; `params`, `environment` and `metadata` are never changed
    after creation) without changing what is stored. The scheduler relies on it: it changes one
    record in place through an execution's whole life and ends with a compare-and-set `transition`
    that a store holding that same record would compare with itself; readers that end a record
    (recovery, a cluster's cancel) change the copy they read before they store it. The exception is
    `queue_insert`: a store may keep that record (and what `queue_transition` hands it for the same
    id) for a moment and store it as it is then, readers seeing it unended until its final
    `transition`. tests/store/test_contract.py holds every store to this interface.

    A store that cannot take writes (unreachable, its disk full) raises a StoreFault subclass from
    the operations that need it, and says so in `fault` until it takes writes again.
    """

    @property
    def fault(self) -> StoreFault | None:
        """Why the store takes no writes now; None when it does."""
        return None

    def check_writable(self) -> None:
        """Refuse new work at once while the store is known to be unable to store it."""
        fault = self.fault
        if fault is not None:
            raise type(fault)(str(fault))

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # Tasks
    @abc.abstractmethod
    async def put_task(self, task: Task) -> None:
        """Insert or replace a task, keeping its original `created_at`."""

    @abc.abstractmethod
    async def get_task(self, task_id: str) -> Task | None: ...

    @abc.abstractmethod
    async def list_tasks(self, prefix: str, limit: int, start_after: str) -> TaskPage: ...

    @abc.abstractmethod
    async def delete_task(self, task_id: str, cleanup_executions: bool) -> tuple[bool, int]:
        """Delete a task; returns (deleted, number of execution records removed)."""

    @abc.abstractmethod
    async def task_summaries(self, task_ids: list[str]) -> dict[str, TaskSummary]: ...

    # Executions
    @abc.abstractmethod
    def create_execution(self, record: ExecutionRecord) -> PendingWrite[ExecutionRecord | None]:
        """Store a new PENDING record durably. If its id or idempotency key exists already,
        store nothing and return the existing record."""

    @abc.abstractmethod
    def queue_insert(self, record: ExecutionRecord) -> None:
        """Store a new record without waiting: for an id that cannot exist yet (a fresh UUIDv7).
        Every later operation of this store sees it; a failure is logged. A store may hold it in
        memory for a moment and write it once, as it is then (SQLite: up to STAGE_S)."""

    @abc.abstractmethod
    def queue_transition(self, record: ExecutionRecord) -> None:
        """`transition` without waiting for the outcome (the forward-only rule still holds)."""

    @abc.abstractmethod
    async def transition(self, record: ExecutionRecord) -> bool:
        """Write `record` if its status may follow the stored one (models.ALLOWED_FROM). What is
        fixed at creation (task, function, parameters, keys) is not the transition's to change.

        Returns False, writing nothing, when the stored record has moved on (for example it
        was cancelled): the caller lost the race and must re-read."""

    @abc.abstractmethod
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None: ...

    @abc.abstractmethod
    async def list_executions(
        self, task_id: str, status: Status, limit: int, start_after: str, max_bytes: int = 0, invocation_id: str = ""
    ) -> ExecutionPage:
        """Newest first; empty `task_id` means every task, UNKNOWN status means every status, empty
        `invocation_id` every invocation (else only the records of that invocation). With
        `max_bytes`, the page ends (has_more) after the record that brings the stored size of its
        records past it: one page never makes the node read more than about that much."""

    @abc.abstractmethod
    async def cached_result(self, cache_key: str, since_ms: int) -> ExecutionRecord | None:
        """The newest COMPLETED record with this cache key that completed at or after `since_ms`."""

    @abc.abstractmethod
    async def expire(self, before_ms: int, keep: int) -> int:
        """Delete terminal records completed before `before_ms`, and all but the newest `keep`
        terminal records. PENDING and RUNNING records never expire. Returns how many went."""

    @abc.abstractmethod
    async def unfinished(self) -> list[ExecutionRecord]:
        """PENDING and RUNNING records, oldest first: what a restarted node must finish."""

    @abc.abstractmethod
    async def stats(self, since_ms: int) -> Stats: ...

    async def count_executions(self) -> int:
        """How many records the store holds (health asks on every probe: a store that can count
        without reading them all should)."""
        return (await self.stats(0)).total

    @abc.abstractmethod
    async def count_tasks(self) -> int: ...
