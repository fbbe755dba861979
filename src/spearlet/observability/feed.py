"""Every execution change this node sees, for live views: the node-wide event stream
(GET /api/v1/events) that keeps the dashboard's tables current without reloading them.

Each subscriber holds the latest view of each execution that changed since it last read, so a slow
reader gets one row per execution instead of every step of it; past `backlog` distinct executions
it is told it lagged (and reloads what it shows) rather than letting the node buffer without bound.
With no subscriber, an event costs one test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from spearlet.core.errors import ResourceExhausted
from spearlet.core.lifecycle import Event
from spearlet.core.models import ExecutionRecord

MAX_SUBSCRIBERS = 32
BACKLOG = 2000

View = dict[str, Any]


class Subscription:
    def __init__(self, feed: ExecutionFeed, backlog: int) -> None:
        self._feed = feed
        self._backlog = backlog
        self._views: dict[str, View] = {}
        self._lagged = False
        self._ready = asyncio.Event()

    def offer(self, execution_id: str, view: View) -> None:
        if self._lagged:
            return
        self._views.pop(execution_id, None)  # re-inserted: the newest change goes last
        self._views[execution_id] = view
        if len(self._views) > self._backlog:
            self._views.clear()
            self._lagged = True
        self._ready.set()

    async def next(self, timeout_s: float) -> list[View] | None:
        """The views changed since the last call, oldest change first (empty after `timeout_s`
        without any); None when this subscriber fell more than `backlog` executions behind."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            return []
        self._ready.clear()
        if self._lagged:
            self._lagged = False
            return None
        views = list(self._views.values())
        self._views.clear()
        return views

    def close(self) -> None:
        self._feed.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ExecutionFeed:
    """A lifecycle listener: subscribe `feed.on_event`. `view` renders a record once per event for
    every subscriber (the HTTP record view, without result or logs)."""

    def __init__(
        self,
        view: Callable[[ExecutionRecord], View],
        max_subscribers: int = MAX_SUBSCRIBERS,
        backlog: int = BACKLOG,
    ) -> None:
        self._view = view
        self._max = max_subscribers
        self._backlog = backlog
        self._subscribers: list[Subscription] = []

    def check_room(self) -> None:
        """Refuse a new subscriber beyond the limit: what a transport asks before it answers."""
        if len(self._subscribers) >= self._max:
            raise ResourceExhausted(f"{self._max} event streams are open already: close one, or poll instead")

    def subscribe(self) -> Subscription:
        self.check_room()
        subscription = Subscription(self, self._backlog)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def on_event(self, event: Event, record: ExecutionRecord) -> None:
        if not self._subscribers:
            return
        view = self._view(record)
        for subscription in self._subscribers:
            subscription.offer(record.execution_id, view)
