"""Tasks and execution records for the store tests, and the moves every store is put through."""

from __future__ import annotations

from typing import Any

from spearlet.core.ids import new_execution_id
from spearlet.core.models import ExecutionRecord, Mode, Status, Task, now_ms
from spearlet.store.base import Store

REAL_STATUSES = [s for s in Status if s is not Status.UNKNOWN]


def make_task(task_id: str, **fields: Any) -> Task:
    defaults: dict[str, Any] = {
        "name": task_id,
        "artifact_type": "process",
        "location": f"/opt/{task_id}.sh",
        "created_at": 1_000,
        "updated_at": 1_000,
    }
    defaults.update(fields)
    return Task(task_id=task_id, **defaults)


def make_record(task_id: str = "t", function_name: str = "f", **fields: Any) -> ExecutionRecord:
    fields.setdefault("created_at", now_ms())
    fields.setdefault("mode", Mode.ASYNC)
    return ExecutionRecord(execution_id=new_execution_id(), task_id=task_id, function_name=function_name, **fields)


async def add(store: Store, status: Status = Status.PENDING, **fields: Any) -> ExecutionRecord:
    """A record stored PENDING, then moved forward to `status` the way the scheduler does."""
    record = make_record(**fields)
    assert await store.create_execution(record) is None
    if status is not Status.PENDING:
        record.status = Status.RUNNING
        assert await store.transition(record)
    if status.terminal:
        record.status = status
        assert await store.transition(record)
    return record


async def all_executions(store: Store, task_id: str = "", status: Status = Status.UNKNOWN) -> list[str]:
    page = await store.list_executions(task_id, status, 10_000, "")
    return [r.execution_id for r in page.executions]
