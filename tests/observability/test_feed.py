"""ExecutionFeed: every subscriber gets each execution's latest view, a slow one is told it lagged,
and the number of subscribers is bounded."""

from __future__ import annotations

import asyncio

import pytest

from spearlet.core.errors import ResourceExhausted
from spearlet.core.lifecycle import Event
from spearlet.core.models import ExecutionRecord, Mode, Status
from spearlet.observability.feed import ExecutionFeed

pytestmark = pytest.mark.timeout(30)


def record(execution_id: str, status: Status) -> ExecutionRecord:
    return ExecutionRecord(execution_id, "t", "", Mode.ASYNC, status=status)


def feed(**kwargs: int) -> ExecutionFeed:
    return ExecutionFeed(lambda r: {"id": r.execution_id, "status": r.status.name}, **kwargs)


async def test_each_subscriber_gets_the_latest_view_of_each_changed_execution_in_order_of_change() -> None:
    f = feed()
    with f.subscribe() as first, f.subscribe() as second:
        f.on_event(Event.ACCEPTED, record("a", Status.PENDING))
        f.on_event(Event.ACCEPTED, record("b", Status.PENDING))
        f.on_event(Event.FINISHED, record("a", Status.COMPLETED))

        expected = [{"id": "b", "status": "PENDING"}, {"id": "a", "status": "COMPLETED"}]
        assert await first.next(1) == expected
        assert await second.next(1) == expected
        assert await first.next(0.05) == []  # nothing new: an empty batch when the wait ends


async def test_a_views_state_is_taken_at_the_event_not_when_it_is_read() -> None:
    f = feed()
    with f.subscribe() as reader:
        changing = record("a", Status.RUNNING)
        f.on_event(Event.STARTED, changing)
        changing.status = Status.COMPLETED  # the scheduler changes its record in place

        assert await reader.next(1) == [{"id": "a", "status": "RUNNING"}]


async def test_a_subscriber_that_falls_behind_its_backlog_is_told_it_lagged_then_goes_on() -> None:
    f = feed(backlog=3)
    with f.subscribe() as slow:
        for i in range(5):
            f.on_event(Event.ACCEPTED, record(str(i), Status.PENDING))

        assert await slow.next(1) is None
        f.on_event(Event.ACCEPTED, record("later", Status.PENDING))
        assert await slow.next(1) == [{"id": "later", "status": "PENDING"}]


async def test_subscribers_are_bounded_and_a_closed_one_frees_its_place() -> None:
    f = feed(max_subscribers=1)
    first = f.subscribe()
    with pytest.raises(ResourceExhausted, match="1 event streams are open"):
        f.subscribe()
    first.close()
    with f.subscribe():
        pass


async def test_without_subscribers_no_view_is_made() -> None:
    made: list[str] = []
    f = ExecutionFeed(lambda r: made.append(r.execution_id) or {})
    f.on_event(Event.ACCEPTED, record("a", Status.PENDING))
    assert made == []
    await asyncio.sleep(0)
