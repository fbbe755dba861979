"""Lifecycle events of executions, and the listeners that subscribe to them.

Waiting callers, metrics, watchers and completion callbacks all hang off these events instead of
being woven into the invoker's or the scheduler's code paths.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from enum import Enum

from spearlet.core.models import ExecutionRecord

log = logging.getLogger(__name__)


class Event(Enum):
    ACCEPTED = "accepted"
    STARTED = "started"
    FINISHED = "finished"


Listener = Callable[[Event, ExecutionRecord], None]


class Lifecycle:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._waiters: dict[str, list[asyncio.Future[ExecutionRecord]]] = {}

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, event: Event, record: ExecutionRecord) -> None:
        for listener in self._listeners:
            try:
                listener(event, record)
            except Exception:  # a broken listener must not break an execution
                log.exception("lifecycle listener failed on %s of %s", event.value, record.execution_id)
        if event is Event.FINISHED:
            for future in self._waiters.pop(record.execution_id, ()):
                if not future.done():
                    future.set_result(record)

    def waiter(self, execution_id: str) -> asyncio.Future[ExecutionRecord]:
        """A future resolved with the final record. Take it before the work can finish."""
        future: asyncio.Future[ExecutionRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(execution_id, []).append(future)
        return future

    def drop_waiter(self, execution_id: str, future: asyncio.Future[ExecutionRecord]) -> None:
        waiters = self._waiters.get(execution_id)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[execution_id]
