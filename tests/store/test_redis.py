"""The Redis store against a real redis-server: the same contract as the SQLite store."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from spearlet.core.ids import new_execution_id
from spearlet.core.models import ExecutionRecord, Mode, OutputKind, Status, Task, now_ms
from spearlet.store.redis import RedisStore
from tests.store.pages import pages_of

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, retention_ms=60_000)
    await s.open()
    await s.redis.flushall()
    try:
        yield s
    finally:
        await s.close()


def make_record(task_id: str = "t", **fields: object) -> ExecutionRecord:
    fields.setdefault("created_at", now_ms())
    return ExecutionRecord(new_execution_id(), task_id, "f", Mode.ASYNC, **fields)  # type: ignore[arg-type]


async def test_records_round_trip_with_bytes_params_and_output(store: RedisStore) -> None:
    record = make_record(params={"b": b"\x00\xff", "n": [1, {"x": None}]}, output=b"\x01", output_kind=OutputKind.BYTES)
    assert await store.create_execution(record) is None
    assert await store.get_execution(record.execution_id) == record


async def test_an_existing_id_or_idempotency_key_returns_the_existing_record(store: RedisStore) -> None:
    first = make_record(idempotency_key="t:k")
    assert await store.create_execution(first) is None
    again = make_record(idempotency_key="t:k")
    existing = await store.create_execution(again)
    assert existing is not None and existing.execution_id == first.execution_id
    same_id = dataclasses.replace(make_record(), execution_id=first.execution_id)
    assert (await store.create_execution(same_id)).execution_id == first.execution_id  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("stored", "new", "allowed"),
    [
        (Status.PENDING, Status.RUNNING, True),
        (Status.RUNNING, Status.RUNNING, True),
        (Status.RUNNING, Status.COMPLETED, True),
        (Status.PENDING, Status.CANCELLED, True),
        (Status.COMPLETED, Status.RUNNING, False),
        (Status.CANCELLED, Status.COMPLETED, False),
        (Status.PENDING, Status.PENDING, False),
    ],
)
async def test_status_moves_only_forward(store: RedisStore, stored: Status, new: Status, allowed: bool) -> None:
    record = make_record(status=stored)
    assert await store.create_execution(record) is None
    assert await store.transition(dataclasses.replace(record, status=new)) is allowed
    assert (await store.get_execution(record.execution_id)).status is (new if allowed else stored)  # type: ignore[union-attr]


async def test_queued_writes_are_seen_in_order(store: RedisStore) -> None:
    record = make_record()
    store.queue_insert(record)
    store.queue_transition(dataclasses.replace(record, status=Status.RUNNING, attempts=1))
    got = await store.get_execution(record.execution_id)
    assert got is not None and got.status is Status.RUNNING and got.attempts == 1


async def test_listing_pages_newest_first_and_filters(store: RedisStore) -> None:
    records = [make_record(task_id="a") for _ in range(5)] + [make_record(task_id="b", status=Status.RUNNING)]
    for record in records:
        assert await store.create_execution(record) is None
    page = await store.list_executions("a", Status.UNKNOWN, 2, "")
    assert [r.execution_id for r in page.executions] == [records[4].execution_id, records[3].execution_id]
    assert page.has_more
    rest = await store.list_executions("a", Status.UNKNOWN, 10, page.next_start_after)
    assert [r.execution_id for r in rest.executions] == [r.execution_id for r in records[2::-1]]
    running = await store.list_executions("", Status.RUNNING, 10, "")
    assert [r.execution_id for r in running.executions] == [records[5].execution_id]


async def test_unfinished_terminal_expiry_and_stats(store: RedisStore) -> None:
    done = make_record(status=Status.RUNNING, started_at=1)
    waiting = make_record()
    for record in (done, waiting):
        assert await store.create_execution(record) is None
    finished = dataclasses.replace(done, status=Status.COMPLETED, execution_time_ms=40, completed_at=now_ms())
    assert await store.transition(finished)
    assert [r.execution_id for r in await store.unfinished()] == [waiting.execution_id]
    assert 0 < await store.redis.pttl(f"spearlet:exec:{done.execution_id}") <= 60_000  # retention by expiry
    assert await store.redis.pttl(f"spearlet:exec:{waiting.execution_id}") == -1  # unfinished never expire
    stats = await store.stats(0)
    assert stats.total == 2 and stats.by_status[Status.COMPLETED] == 1
    assert stats.average_execution_time_ms == 40


async def test_tasks_and_the_result_cache(store: RedisStore) -> None:
    task = Task("t1", "t1", "process", "/x", created_at=5, updated_at=5)
    await store.put_task(task)
    await store.put_task(dataclasses.replace(task, created_at=9, updated_at=9))
    assert (await store.get_task("t1")).created_at == 5  # type: ignore[union-attr]
    assert [t.task_id for t in (await store.list_tasks("t", 10, "")).tasks] == ["t1"]
    cached = make_record(cache_key="k1", status=Status.RUNNING)
    assert await store.create_execution(cached) is None
    assert await store.transition(dataclasses.replace(cached, status=Status.COMPLETED, completed_at=now_ms()))
    hit = await store.cached_result("k1", now_ms() - 10_000)
    assert hit is not None and hit.execution_id == cached.execution_id
    assert await store.cached_result("k1", now_ms() + 10_000) is None
    assert await store.delete_task("t1", cleanup_executions=False) == (True, 0)


async def test_a_page_ends_after_the_record_that_brings_its_stored_size_past_max_bytes(store: RedisStore) -> None:
    records = [make_record(params={"blob": "x" * 10_000}) for _ in range(7)]
    for record in records:
        assert await store.create_execution(record) is None
    seen = await pages_of(store, max_bytes=25_000)
    newest_first = [r.execution_id for r in reversed(records)]
    assert [len(p) for p in seen] == [3, 3, 1] and [i for p in seen for i in p] == newest_first
