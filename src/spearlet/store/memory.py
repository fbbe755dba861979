"""The in-memory store: tasks and execution records in the node's memory, gone when it stops.

Not durable: for tests and demos (`store = "memory"`). It keeps the contract of the other stores
(store/base.py), so what passes over it passes for the reasons it would over SQLite: records are
copied in and out (parameters as the JSON the other stores write, so a record they could not store
fails here too), status moves forward by compare-and-set, and a write's result reaches its waiter
on a later turn of the event loop, as a real store's does (a caller can go away while it waits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from spearlet.core.models import ALLOWED_FROM, ExecutionRecord, Status, Task
from spearlet.core.queries import ExecutionPage, Stats, TaskPage, TaskSummary
from spearlet.core.values import dump_params, load_params
from spearlet.store.base import PendingWrite, Store, stats_of

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Stored:
    seq: int  # creation order: listings and recovery follow it
    record: ExecutionRecord  # with empty params: they are kept as text
    params: str

    def copy(self) -> ExecutionRecord:
        return _copy(self.record, load_params(self.params))

    @property
    def size(self) -> int:
        """What the record would take stored (as SQLite counts it): a listing's pages are bounded by it."""
        r = self.record
        mappings = sum(len(k) + len(v) for m in (r.environment, r.metadata, r.metrics) for k, v in m.items())
        return len(self.params) + mappings + len(r.output) + len(r.error_message) + len(r.logs)


def _copy(record: ExecutionRecord, params: dict[str, object]) -> ExecutionRecord:
    return dataclasses.replace(
        record,
        params=params,
        environment=dict(record.environment),
        metadata=dict(record.metadata),
        metrics=dict(record.metrics),
    )


class MemoryStore(Store):
    def __init__(self) -> None:
        self._open = False
        self._tasks: dict[str, Task] = {}
        self._records: dict[str, _Stored] = {}  # in creation order
        self._keys: dict[str, str] = {}  # idempotency key -> execution id
        self._seq = 0

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("store is not open")

    # Tasks

    async def put_task(self, task: Task) -> None:
        self._check_open()
        old = self._tasks.get(task.task_id)
        if old is not None:
            task.created_at = old.created_at
        self._tasks[task.task_id] = dataclasses.replace(task, metadata=dict(task.metadata))

    async def get_task(self, task_id: str) -> Task | None:
        self._check_open()
        task = self._tasks.get(task_id)
        return None if task is None else dataclasses.replace(task, metadata=dict(task.metadata))

    async def list_tasks(self, prefix: str, limit: int, start_after: str) -> TaskPage:
        self._check_open()
        chosen = sorted(k for k in self._tasks if k.startswith(prefix) and k > start_after)
        tasks = [t for t in [await self.get_task(k) for k in chosen[:limit]] if t is not None]
        has_more = len(chosen) > limit
        return TaskPage(tasks, has_more, tasks[-1].task_id if has_more else "")

    async def delete_task(self, task_id: str, cleanup_executions: bool) -> tuple[bool, int]:
        self._check_open()
        if self._tasks.pop(task_id, None) is None:
            return False, 0
        if not cleanup_executions:
            return True, 0
        return True, self._delete([s for s in self._records.values() if s.record.task_id == task_id and s.record.done])

    async def task_summaries(self, task_ids: list[str]) -> dict[str, TaskSummary]:
        self._check_open()
        out = {task_id: TaskSummary() for task_id in task_ids}
        for stored in self._records.values():  # oldest first: the last seen is the newest
            summary = out.get(stored.record.task_id)
            if summary is not None:
                summary.execution_count += 1
                summary.last_status = stored.record.status
        return out

    async def count_tasks(self) -> int:
        self._check_open()
        return len(self._tasks)

    # Executions

    def create_execution(self, record: ExecutionRecord) -> PendingWrite[ExecutionRecord | None]:
        loop = asyncio.get_running_loop()
        pending: PendingWrite[ExecutionRecord | None] = PendingWrite(loop=loop)
        try:
            existing = self._insert(record)
        except Exception as exc:
            loop.call_soon(pending.set_exception, exc)
        else:
            loop.call_soon(pending.set_result, existing)
        return pending

    def _insert(self, record: ExecutionRecord) -> ExecutionRecord | None:
        """Store a new record; the existing one if its id or idempotency key is taken."""
        self._check_open()
        taken = self._records.get(record.execution_id)
        if taken is None and record.idempotency_key is not None:
            holder = self._keys.get(record.idempotency_key)
            taken = self._records.get(holder) if holder is not None else None
        if taken is not None:
            return taken.copy()
        params = dump_params(record.params)  # first: a record that cannot be stored stores nothing
        self._seq += 1
        self._records[record.execution_id] = _Stored(self._seq, _copy(record, {}), params)
        if record.idempotency_key is not None:
            self._keys[record.idempotency_key] = record.execution_id
        return None

    def queue_insert(self, record: ExecutionRecord) -> None:
        try:
            if self._insert(record) is not None:
                log.error("a queued record was not stored: execution %s exists", record.execution_id)
        except Exception as exc:
            log.error("a queued store write failed: %s", exc)

    def queue_transition(self, record: ExecutionRecord) -> None:
        try:
            self._transition(record)
        except Exception as exc:
            log.error("a queued store write failed: %s", exc)

    async def transition(self, record: ExecutionRecord) -> bool:
        return self._transition(record)

    def _transition(self, record: ExecutionRecord) -> bool:
        self._check_open()
        stored = self._records.get(record.execution_id)
        if stored is None or stored.record.status not in ALLOWED_FROM[record.status]:
            return False
        stored.record = _copy(record, {})
        return True

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        self._check_open()
        stored = self._records.get(execution_id)
        return None if stored is None else stored.copy()

    async def list_executions(
        self, task_id: str, status: Status, limit: int, start_after: str, max_bytes: int = 0, invocation_id: str = ""
    ) -> ExecutionPage:
        self._check_open()
        below = self._seq + 1
        if start_after:
            # An unknown one (the record expired meanwhile) ends the listing, as in SQLite.
            after = self._records.get(start_after)
            below = after.seq if after is not None else 0
        records: list[ExecutionRecord] = []
        read = 0
        for stored in self._newest_first():
            if stored.seq >= below:
                continue
            record = stored.record
            if (
                (not task_id or record.task_id == task_id)
                and status in (Status.UNKNOWN, record.status)
                and (not invocation_id or record.invocation_id == invocation_id)
            ):
                if len(records) == limit or (max_bytes and read >= max_bytes):
                    return ExecutionPage(records, True, records[-1].execution_id)
                records.append(stored.copy())
                read += stored.size
        return ExecutionPage(records, False, "")

    def _newest_first(self) -> Iterator[_Stored]:
        return reversed(self._records.values())

    async def cached_result(self, cache_key: str, since_ms: int) -> ExecutionRecord | None:
        self._check_open()
        hits = [
            s
            for s in self._records.values()
            if s.record.cache_key == cache_key
            and s.record.status is Status.COMPLETED
            and s.record.completed_at >= since_ms
        ]
        return max(hits, key=lambda s: (s.record.completed_at, s.seq)).copy() if hits else None

    async def expire(self, before_ms: int, keep: int) -> int:
        self._check_open()
        terminal = [s for s in self._records.values() if s.record.done]
        old = [s for s in terminal if s.record.completed_at < before_ms]
        beyond = terminal[: max(0, len(terminal) - keep)]  # all but the newest `keep`
        return self._delete(list({id(s): s for s in [*old, *beyond]}.values()))

    def _delete(self, gone: list[_Stored]) -> int:
        for stored in gone:
            record = stored.record
            del self._records[record.execution_id]
            if record.idempotency_key is not None and self._keys.get(record.idempotency_key) == record.execution_id:
                del self._keys[record.idempotency_key]
        return len(gone)

    async def unfinished(self) -> list[ExecutionRecord]:
        self._check_open()
        return [s.copy() for s in self._records.values() if not s.record.done]

    async def stats(self, since_ms: int) -> Stats:
        self._check_open()
        return stats_of(s.record for s in self._records.values() if s.record.created_at >= since_ms)

    async def count_executions(self) -> int:
        self._check_open()
        return len(self._records)
