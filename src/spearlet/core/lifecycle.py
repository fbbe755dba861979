"""Lifecycle events of executions, and the listeners that subscribe to them.

Waiting callers, metrics, watchers and completion callbacks all hang off these events instead of
being woven into the invoker's or the scheduler's code paths.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from spearlet.core.models import ExecutionRecord, Status

log = logging.getLogger(__name__)
T = TypeVar("T")


class Event(Enum):
    ACCEPTED = "accepted"
    STARTED = "started"
    CHUNK = "chunk"
    FINISHED = "finished"


Listener = Callable[[Event, ExecutionRecord], None]


@dataclass(frozen=True, slots=True)
class Update:
    """What a watcher of one execution receives: a status change, a chunk of output, or the end
    (FINISHED, with the final record)."""

    event: Event
    execution_id: str
    status: Status
    chunk: bytes = b""
    record: ExecutionRecord | None = None


class Lifecycle:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._waiters: dict[str, list[asyncio.Future[ExecutionRecord]]] = {}
        self._watchers: dict[str, list[asyncio.Queue[Update]]] = {}

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, event: Event, record: ExecutionRecord) -> None:
        for listener in self._listeners:
            try:
                listener(event, record)
            except Exception:  # a broken listener must not break an execution
                log.exception("lifecycle listener failed on %s of %s", event.value, record.execution_id)
        watchers = self._watchers.get(record.execution_id)
        if watchers:
            update = Update(
                event, record.execution_id, record.status, record=record if event is Event.FINISHED else None
            )
            for queue in watchers:
                queue.put_nowait(update)
        if event is Event.FINISHED:
            for future in self._waiters.pop(record.execution_id, ()):
                if not future.done():
                    future.set_result(record)

    def publish_chunk(self, execution_id: str, chunk: bytes) -> None:
        """A piece of output as the function produced it; only watchers care (the record keeps
        the whole output), so with none this costs a dict lookup."""
        watchers = self._watchers.get(execution_id)
        if watchers:
            update = Update(Event.CHUNK, execution_id, Status.RUNNING, chunk=chunk)
            for queue in watchers:
                queue.put_nowait(update)

    def watch(self, execution_id: str) -> asyncio.Queue[Update]:
        """Updates of one execution from now on; `unwatch` when done. The queue is bounded by the
        execution's output limit, as chunks are pieces of that output."""
        queue: asyncio.Queue[Update] = asyncio.Queue()
        self._watchers.setdefault(execution_id, []).append(queue)
        return queue

    def unwatch(self, execution_id: str, queue: asyncio.Queue[Update]) -> None:
        _discard(self._watchers, execution_id, queue)

    def waiter(self, execution_id: str) -> asyncio.Future[ExecutionRecord]:
        """A future resolved with the final record. Take it before the work can finish."""
        future: asyncio.Future[ExecutionRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(execution_id, []).append(future)
        return future

    def drop_waiter(self, execution_id: str, future: asyncio.Future[ExecutionRecord]) -> None:
        _discard(self._waiters, execution_id, future)


def _discard(lists: dict[str, list[T]], key: str, item: T) -> None:
    """Take `item` out of `lists[key]`, and the key with its last item."""
    items = lists.get(key)
    if items and item in items:
        items.remove(item)
        if not items:
            del lists[key]
