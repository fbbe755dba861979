"""The Store interface (store/base.py), one suite run over every store: memory, SQLite (a real file)
and Redis (a real redis-server). What a store does beyond it (SQLite's group commit, staging and
kept records; Redis's expiry) is tested in its own file.

Records are values (the interface's docstring says why): a store keeps no reference to a record it
is handed and hands out none of its own, except that a record given to `queue_insert` may be kept
and written as it is later, never read as ended before its final transition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from spearlet.core.models import ALLOWED_FROM, ExecutionRecord, Mode, OutputKind, Status, now_ms
from spearlet.core.queries import TaskSummary
from spearlet.store.base import Store
from spearlet.store.memory import MemoryStore
from spearlet.store.redis import RedisStore
from spearlet.store.sqlite import SqliteStore
from tests.store.factories import REAL_STATUSES, add, all_executions, make_record, make_task
from tests.store.pages import pages_of

pytestmark = pytest.mark.timeout(60)

Factory = Callable[[], Store]


def factory(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Makes stores of `kind` over one backing (file, server): a new one sees what the last stored."""
    if kind == "memory":
        return MemoryStore
    if kind == "sqlite":
        return lambda: SqliteStore(tmp_path / "spearlet.db")
    url: str = request.getfixturevalue("redis_url")
    return lambda: RedisStore(url, retention_ms=60_000)


async def opened(make: Factory) -> Store:
    store = make()
    await store.open()
    if isinstance(store, RedisStore):
        await store.redis.flushall()
    return store


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await opened(factory(request.param, request, tmp_path))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(params=["sqlite", "redis"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """The stores that keep what they stored across a close (not memory: see the README)."""
    return factory(request.param, request, tmp_path)


# Tasks


async def test_put_task_then_get_task_returns_it(store: Store) -> None:
    task = make_task("hello", description="greets", metadata={"timeout_ms": "500"}, digest="ab" * 32)
    await store.put_task(task)
    assert await store.get_task("hello") == task


async def test_get_task_unknown_returns_none(store: Store) -> None:
    assert await store.get_task("nope") is None


async def test_put_task_again_replaces_fields_but_keeps_created_at(store: Store) -> None:
    await store.put_task(make_task("hello", description="v1", created_at=1_000, updated_at=1_000))
    again = make_task("hello", description="v2", location="/v2.sh", created_at=9_000, updated_at=9_000)
    await store.put_task(again)
    assert again.created_at == 1_000  # the registry keeps the task it stored
    got = await store.get_task("hello")
    assert got is not None
    assert got.created_at == 1_000
    assert (got.description, got.location, got.updated_at) == ("v2", "/v2.sh", 9_000)
    assert await store.count_tasks() == 1


async def test_a_task_read_is_a_copy_its_reader_may_change(store: Store) -> None:
    await store.put_task(make_task("hello", metadata={"k": "v"}))
    first = await store.get_task("hello")
    assert first is not None
    first.metadata["k"] = "changed"  # the registry localizes the tasks it reads
    first.local_path = "/elsewhere"
    assert await store.get_task("hello") == make_task("hello", metadata={"k": "v"})


async def test_list_tasks_filters_by_prefix_in_id_order(store: Store) -> None:
    for task_id in ["b1", "ab", "a2", "a1", "ba"]:
        await store.put_task(make_task(task_id))
    page = await store.list_tasks("a", 100, "")
    assert [t.task_id for t in page.tasks] == ["a1", "a2", "ab"]
    assert not page.has_more and page.next_start_after == ""
    everything = await store.list_tasks("", 100, "")
    assert [t.task_id for t in everything.tasks] == ["a1", "a2", "ab", "b1", "ba"]
    assert await store.count_tasks() == 5


async def test_list_tasks_prefix_is_literal_not_a_like_pattern(store: Store) -> None:
    for task_id in ["a_b", "axb", "a%c", "aZc"]:
        await store.put_task(make_task(task_id))
    assert [t.task_id for t in (await store.list_tasks("a_", 100, "")).tasks] == ["a_b"]
    assert [t.task_id for t in (await store.list_tasks("a%", 100, "")).tasks] == ["a%c"]


async def test_list_tasks_pages_with_limit_and_start_after(store: Store) -> None:
    for i in range(5):
        await store.put_task(make_task(f"p{i}"))
    await store.put_task(make_task("q0"))

    first = await store.list_tasks("p", 2, "")
    assert [t.task_id for t in first.tasks] == ["p0", "p1"]
    assert first.has_more and first.next_start_after == "p1"

    second = await store.list_tasks("p", 2, first.next_start_after)
    assert [t.task_id for t in second.tasks] == ["p2", "p3"]
    assert second.has_more and second.next_start_after == "p3"

    last = await store.list_tasks("p", 2, second.next_start_after)
    assert [t.task_id for t in last.tasks] == ["p4"]
    assert not last.has_more and last.next_start_after == ""


async def test_list_tasks_full_last_page_reports_no_more(store: Store) -> None:
    for i in range(4):
        await store.put_task(make_task(f"p{i}"))
    page = await store.list_tasks("", 2, "p1")
    assert [t.task_id for t in page.tasks] == ["p2", "p3"]
    assert not page.has_more and page.next_start_after == ""


async def test_delete_task_without_cleanup_keeps_its_executions(store: Store) -> None:
    await store.put_task(make_task("t"))
    done = await add(store, Status.COMPLETED, task_id="t")
    assert await store.delete_task("t", cleanup_executions=False) == (True, 0)
    assert await store.get_task("t") is None
    assert await store.count_tasks() == 0
    assert await store.get_execution(done.execution_id) == done


async def test_delete_task_with_cleanup_removes_only_its_terminal_records(store: Store) -> None:
    await store.put_task(make_task("t"))
    await store.put_task(make_task("other"))
    records = {status: await add(store, status, task_id="t") for status in REAL_STATUSES}
    other = await add(store, Status.COMPLETED, task_id="other")

    assert await store.delete_task("t", cleanup_executions=True) == (True, 4)

    remaining = set(await all_executions(store, "t"))
    assert remaining == {records[Status.PENDING].execution_id, records[Status.RUNNING].execution_id}
    assert await store.get_execution(records[Status.FAILED].execution_id) is None
    assert await store.get_execution(other.execution_id) == other
    assert await store.get_task("other") is not None


async def test_delete_unknown_task_reports_false_and_cleans_nothing(store: Store) -> None:
    orphan = await add(store, Status.COMPLETED, task_id="ghost")
    assert await store.delete_task("ghost", cleanup_executions=True) == (False, 0)
    assert await store.get_execution(orphan.execution_id) == orphan


async def test_task_summaries_count_records_and_name_the_newest_status(store: Store) -> None:
    await add(store, Status.COMPLETED, task_id="a")
    await add(store, Status.FAILED, task_id="a")
    await add(store, Status.RUNNING, task_id="b")
    await add(store, Status.COMPLETED, task_id="c")
    summaries = await store.task_summaries(["a", "b", "none"])
    assert summaries == {
        "a": TaskSummary(2, Status.FAILED),
        "b": TaskSummary(1, Status.RUNNING),
        "none": TaskSummary(0, Status.UNKNOWN),
    }


# Creating executions


async def test_create_execution_returns_none_and_stores_the_record(store: Store) -> None:
    record = make_record(params={"n": 1}, idempotency_key="k1", timeout_ms=500, environment={"A": "1"})
    assert await store.create_execution(record) is None
    assert await store.get_execution(record.execution_id) == record


async def test_create_execution_duplicate_id_returns_existing_and_stores_nothing(store: Store) -> None:
    original = make_record(function_name="first")
    assert await store.create_execution(original) is None
    duplicate = make_record(function_name="second")
    duplicate.execution_id = original.execution_id

    assert await store.create_execution(duplicate) == original
    assert await store.get_execution(original.execution_id) == original
    assert await all_executions(store) == [original.execution_id]


async def test_create_execution_duplicate_idempotency_key_returns_existing(store: Store) -> None:
    original = make_record(idempotency_key="client-42", function_name="first")
    assert await store.create_execution(original) is None
    retry = make_record(idempotency_key="client-42", function_name="second")

    assert await store.create_execution(retry) == original
    assert await store.get_execution(retry.execution_id) is None
    assert await all_executions(store) == [original.execution_id]


async def test_create_execution_without_idempotency_key_never_collides(store: Store) -> None:
    first, second = make_record(), make_record()
    assert await store.create_execution(first) is None
    assert await store.create_execution(second) is None
    assert set(await all_executions(store)) == {first.execution_id, second.execution_id}


async def test_concurrent_creates_all_land(store: Store) -> None:
    records = [make_record(task_id="busy") for _ in range(200)]
    results = await asyncio.gather(*(store.create_execution(r) for r in records))
    assert results == [None] * 200
    assert set(await all_executions(store, "busy")) == {r.execution_id for r in records}


async def test_a_taken_id_or_key_among_concurrent_creates_gets_the_existing_record(store: Store) -> None:
    taken = make_record(function_name="first")
    assert await store.create_execution(taken) is None
    same_id = dataclasses.replace(taken, function_name="second")
    keyed, same_key = make_record(idempotency_key="k"), make_record(idempotency_key="k")
    fresh = make_record()
    results = await asyncio.gather(*(store.create_execution(r) for r in (same_id, keyed, same_key, fresh)))
    assert results[0] == taken and results[3] is None
    # One of the two with the key is stored, whichever came first; the other gets it.
    winner = keyed if results[1] is None else same_key
    assert results[1:3] == ([None, keyed] if winner is keyed else [same_key, None])
    assert set(await all_executions(store)) == {taken.execution_id, winner.execution_id, fresh.execution_id}


async def test_a_record_that_cannot_be_stored_fails_alone_among_concurrent_creates(store: Store) -> None:
    bad, good = make_record(params={"x": object()}), make_record()  # object(): not JSON
    pending_bad, pending_good = store.create_execution(bad), store.create_execution(good)
    assert await asyncio.wait_for(pending_good, 5) is None
    with pytest.raises(TypeError):
        await asyncio.wait_for(pending_bad, 5)
    assert await store.get_execution(good.execution_id) is not None
    assert await store.get_execution(bad.execution_id) is None


async def test_a_create_whose_caller_goes_away_still_stores_the_record(store: Store) -> None:
    record = make_record()

    async def caller() -> ExecutionRecord | None:
        return await store.create_execution(record)

    leaving = asyncio.ensure_future(caller())
    await asyncio.sleep(0)  # the caller waits for the write
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await store.get_execution(record.execution_id) == record


# Transitions


@pytest.mark.parametrize(
    ("stored", "new", "allowed"),
    [
        (Status.PENDING, Status.RUNNING, True),
        (Status.RUNNING, Status.COMPLETED, True),
        (Status.RUNNING, Status.RUNNING, True),  # a new attempt
        (Status.PENDING, Status.CANCELLED, True),
        (Status.RUNNING, Status.TIMEOUT, True),
        (Status.COMPLETED, Status.RUNNING, False),
        (Status.COMPLETED, Status.CANCELLED, False),
        (Status.CANCELLED, Status.COMPLETED, False),
        (Status.FAILED, Status.PENDING, False),
        (Status.PENDING, Status.PENDING, False),
        (Status.RUNNING, Status.PENDING, False),
    ],
)
async def test_transition_moves_status_forward_only(store: Store, stored: Status, new: Status, allowed: bool) -> None:
    record = make_record(status=stored, error_message="before")
    assert await store.create_execution(record) is None
    update = dataclasses.replace(record, status=new, error_message="after", metrics={"m": "1"})

    assert await store.transition(update) is allowed

    got = await store.get_execution(record.execution_id)
    assert got == (update if allowed else record)


async def test_transition_agrees_with_allowed_from_for_every_pair(store: Store) -> None:
    outcomes: dict[tuple[Status, Status], bool] = {}
    for stored, new in itertools.product(REAL_STATUSES, repeat=2):
        record = make_record(status=stored)
        assert await store.create_execution(record) is None
        record.status = new
        outcomes[(stored, new)] = await store.transition(record)
        got = await store.get_execution(record.execution_id)
        assert got is not None
        assert got.status is (new if outcomes[(stored, new)] else stored)
    assert outcomes == {(s, n): s in ALLOWED_FROM[n] for s, n in outcomes}


async def test_transition_of_unknown_execution_returns_false(store: Store) -> None:
    assert await store.transition(make_record(status=Status.RUNNING)) is False
    assert await all_executions(store) == []


async def test_transition_writes_every_field_of_the_record(store: Store) -> None:
    record = await add(store, Status.PENDING)
    record.status = Status.RUNNING
    record.started_at = record.created_at + 5
    record.attempts = 1
    record.node = "vm"
    assert await store.transition(record)
    record.status = Status.COMPLETED
    record.completed_at = record.started_at + 40
    record.execution_time_ms = 40
    record.memory_used_bytes = 9_600_000
    record.output = b'{"greeting": "hi"}'
    record.output_kind = OutputKind.JSON
    record.logs = "line 1\nline 2"
    record.metrics = {"attempts": "1"}
    record.instance_id = "w-1"
    record.error_code, record.error_message = "", ""
    assert await store.transition(record)
    assert await store.get_execution(record.execution_id) == record


# Records are values


async def test_a_record_changed_after_its_create_is_stored_as_it_was(store: Store) -> None:
    record = make_record(metrics={"estimate": "none"})
    assert await store.create_execution(record) is None
    record.status = Status.COMPLETED
    record.metrics["later"] = "1"
    got = await store.get_execution(record.execution_id)
    assert got is not None and got.status is Status.PENDING and got.metrics == {"estimate": "none"}


async def test_a_queued_transition_stores_the_record_as_it_was_when_queued(store: Store) -> None:
    record = await add(store, Status.PENDING)
    record.status, record.attempts = Status.RUNNING, 1
    store.queue_transition(record)
    record.attempts, record.output = 2, b"later"  # the scheduler goes on with the same record
    got = await store.get_execution(record.execution_id)
    assert got is not None and (got.status, got.attempts, got.output) == (Status.RUNNING, 1, b"")


async def test_the_final_transition_of_a_record_its_owner_kept_changing_is_accepted(store: Store) -> None:
    """The scheduler's path: one record, changed in place, each change written, ended by a CAS."""
    record = make_record()
    assert await store.create_execution(record) is None
    record.status = Status.RUNNING
    store.queue_transition(record)
    record.status, record.output = Status.COMPLETED, b"done"  # the outcome, not written yet
    assert await store.transition(record)
    assert await store.get_execution(record.execution_id) == record


async def test_a_record_read_is_a_copy_its_reader_may_change(store: Store) -> None:
    record = await add(store, Status.RUNNING, metrics={"attempts": "1"})
    for read in (
        await store.get_execution(record.execution_id),
        (await store.unfinished())[0],
        (await store.list_executions("", Status.UNKNOWN, 10, "")).executions[0],
    ):
        assert read is not None and read is not record
        read.end(Status.CANCELLED, "CANCELLED", "ended by a reader")  # recovery, a cluster's cancel
        read.metrics["queue_wait_ms"] = "5"
    assert await store.get_execution(record.execution_id) == record


async def test_a_cached_result_read_is_a_copy_its_reader_may_change(store: Store) -> None:
    record = await add(store, Status.COMPLETED, cache_key="k", completed_at=now_ms(), metrics={"attempts": "1"})
    hit = await store.cached_result("k", 0)
    assert hit is not None
    hit.metrics["cache_hit"] = "true"
    hit.status = Status.FAILED
    assert await store.get_execution(record.execution_id) == record


async def test_a_queued_insert_is_never_read_as_ended_before_its_final_transition(store: Store) -> None:
    record = make_record(mode=Mode.SYNC)
    store.queue_insert(record)  # may be kept as it is, and written later as it is then
    record.status, record.attempts = Status.RUNNING, 1
    store.queue_transition(record)
    record.status, record.output = Status.COMPLETED, b"done"
    got = await store.get_execution(record.execution_id)
    assert got is not None and got is not record and got.status is Status.RUNNING
    assert [r.execution_id for r in await store.unfinished()] == [record.execution_id]
    assert await store.transition(record)
    assert await store.get_execution(record.execution_id) == record


# Values


async def test_bytes_params_and_output_round_trip_exactly(store: Store) -> None:
    params = {
        "blob": bytes(range(256)),
        "empty": b"",
        "nested": {"list": [b"\x00\xff", 1, 2.5, "s", None, True], "deeper": {"raw": b"\x80abc"}},
        "text": "héllo ✓",
    }
    record = make_record(params=params, output=b"\xff\xfe\x00binary", output_kind=OutputKind.BYTES)
    assert await store.create_execution(record) is None
    got = await store.get_execution(record.execution_id)
    assert got is not None
    assert got.params == params
    assert got.params["blob"] == bytes(range(256)) and isinstance(got.params["nested"]["list"][0], bytes)
    assert got.output == b"\xff\xfe\x00binary"


# Listing


async def test_list_executions_returns_newest_first(store: Store) -> None:
    ids = [(await add(store)).execution_id for _ in range(4)]
    page = await store.list_executions("", Status.UNKNOWN, 10, "")
    assert [r.execution_id for r in page.executions] == ids[::-1]
    assert not page.has_more and page.next_start_after == ""


async def test_list_executions_filters_by_task_and_status(store: Store) -> None:
    a_done = await add(store, Status.COMPLETED, task_id="a")
    a_failed = await add(store, Status.FAILED, task_id="a")
    b_done = await add(store, Status.COMPLETED, task_id="b")
    a_pending = await add(store, Status.PENDING, task_id="a")

    assert await all_executions(store, "a") == [a_pending.execution_id, a_failed.execution_id, a_done.execution_id]
    assert await all_executions(store, "", Status.COMPLETED) == [b_done.execution_id, a_done.execution_id]
    assert await all_executions(store, "a", Status.COMPLETED) == [a_done.execution_id]
    assert await all_executions(store, "b", Status.FAILED) == []


async def test_list_executions_filters_by_invocation_id_alone_or_with_a_task(store: Store) -> None:
    first = await add(store, task_id="a", invocation_id="inv-1")
    await add(store, task_id="a", invocation_id="inv-2")
    second = await add(store, Status.COMPLETED, task_id="b", invocation_id="inv-1")
    await add(store, task_id="a")

    page = await store.list_executions("", Status.UNKNOWN, 10, "", invocation_id="inv-1")
    assert [r.execution_id for r in page.executions] == [second.execution_id, first.execution_id]
    assert page.executions[0].invocation_id == "inv-1"
    page = await store.list_executions("a", Status.UNKNOWN, 10, "", invocation_id="inv-1")
    assert [r.execution_id for r in page.executions] == [first.execution_id]
    page = await store.list_executions("", Status.UNKNOWN, 1, "", invocation_id="inv-1")
    assert page.has_more and page.next_start_after == second.execution_id
    page = await store.list_executions("", Status.UNKNOWN, 1, page.next_start_after, invocation_id="inv-1")
    assert [r.execution_id for r in page.executions] == [first.execution_id] and not page.has_more


async def test_the_invocation_id_and_instance_id_are_stored_and_kept_through_transitions(store: Store) -> None:
    record = make_record(invocation_id="inv-7", instance_id="own-x")
    assert await store.create_execution(record) is None
    record.status, record.instance_id = Status.RUNNING, "worker-1"
    assert await store.transition(record)
    got = await store.get_execution(record.execution_id)
    assert got is not None and (got.invocation_id, got.instance_id) == ("inv-7", "worker-1")
    queued = make_record(invocation_id="inv-8")
    store.queue_insert(queued)
    got = await store.get_execution(queued.execution_id)
    assert got is not None and got.invocation_id == "inv-8"


async def test_list_executions_pages_with_start_after(store: Store) -> None:
    ids = [(await add(store, task_id="t")).execution_id for _ in range(5)]
    await add(store, task_id="elsewhere")
    newest_first = ids[::-1]

    seen: list[str] = []
    start_after = ""
    pages = 0
    while True:
        page = await store.list_executions("t", Status.UNKNOWN, 2, start_after)
        pages += 1
        seen += [r.execution_id for r in page.executions]
        if not page.has_more:
            assert page.next_start_after == ""
            break
        assert page.next_start_after == page.executions[-1].execution_id
        start_after = page.next_start_after
    assert seen == newest_first
    assert pages == 3


async def test_a_page_ends_after_the_record_that_brings_its_stored_size_past_max_bytes(store: Store) -> None:
    ids = [(await add(store, params={"blob": "x" * 10_000})).execution_id for _ in range(7)]
    seen = await pages_of(store, max_bytes=25_000)
    assert [len(p) for p in seen] == [3, 3, 1] and [i for p in seen for i in p] == ids[::-1]


async def test_unfinished_returns_pending_and_running_in_the_order_they_were_stored(store: Store) -> None:
    # One millisecond for all, as calls accepted together have: the store's order decides.
    first = await add(store, Status.PENDING, created_at=1_000)
    second = await add(store, Status.PENDING, created_at=1_000)
    await add(store, Status.COMPLETED, created_at=1_000)
    await add(store, Status.CANCELLED, created_at=1_000)
    others = [await add(store, Status.PENDING, created_at=1_000) for _ in range(4)]
    second.status = Status.RUNNING  # moved forward after later records were created
    assert await store.transition(second)

    unfinished = await store.unfinished()
    assert [r.execution_id for r in unfinished] == [r.execution_id for r in (first, second, *others)]
    assert [r.status for r in unfinished] == [Status.PENDING, Status.RUNNING] + [Status.PENDING] * 4


# Stats and counts


async def test_stats_counts_by_status_and_averages_completed_only(store: Store) -> None:
    since = 10_000
    await add(store, Status.COMPLETED, task_id="t", function_name="f", created_at=since, execution_time_ms=100)
    await add(store, Status.COMPLETED, task_id="t", function_name="f", created_at=since + 1, execution_time_ms=300)
    await add(store, Status.FAILED, task_id="t", function_name="", created_at=since + 2, execution_time_ms=5_000)
    await add(store, Status.PENDING, task_id="u", function_name="g", created_at=since + 3)

    stats = await store.stats(since)
    assert stats.by_status == {Status.COMPLETED: 2, Status.FAILED: 1, Status.PENDING: 1}
    assert stats.total == 4
    assert stats.average_execution_time_ms == pytest.approx(200.0)
    assert stats.by_function == {"t/f": 2, "t": 1, "u/g": 1}
    assert stats.by_task == {"t": 3, "u": 1}


async def test_stats_ignores_records_created_before_since_ms(store: Store) -> None:
    await add(store, Status.COMPLETED, task_id="old", created_at=1_000, execution_time_ms=9_999)
    await add(store, Status.COMPLETED, task_id="new", created_at=5_000, execution_time_ms=10)

    stats = await store.stats(5_000)
    assert stats.total == 1
    assert stats.by_status == {Status.COMPLETED: 1}
    assert stats.average_execution_time_ms == pytest.approx(10.0)
    assert stats.by_task == {"new": 1}
    assert (await store.stats(0)).total == 2


async def test_stats_of_nothing_is_zero(store: Store) -> None:
    await add(store, Status.FAILED, created_at=1_000)
    stats = await store.stats(2_000)
    assert stats.total == 0 and stats.by_status == {} and stats.by_function == {}
    assert stats.average_execution_time_ms == 0.0


async def test_counting_records_includes_queued_inserts(store: Store) -> None:
    await add(store, Status.COMPLETED)
    await add(store, Status.PENDING)
    store.queue_insert(make_record(mode=Mode.SYNC))
    assert await store.count_executions() == 3
    assert (await store.stats(0)).total == 3


# Queued writes


async def test_queued_writes_are_seen_by_the_next_operation_in_order(store: Store) -> None:
    record = make_record(status=Status.PENDING)
    store.queue_insert(record)
    running = dataclasses.replace(record, status=Status.RUNNING, attempts=1, started_at=now_ms())
    store.queue_transition(running)
    got = await store.get_execution(record.execution_id)
    assert got is not None and got.status is Status.RUNNING and got.attempts == 1


async def test_a_queued_insert_is_read_at_once(store: Store) -> None:
    record = make_record(mode=Mode.SYNC)
    store.queue_insert(record)
    got = await store.get_execution(record.execution_id)
    assert got == record and got is not record


async def test_listings_and_stats_include_queued_inserts(store: Store) -> None:
    record = make_record(task_id="queued", mode=Mode.SYNC)
    store.queue_insert(record)
    assert await all_executions(store, "queued") == [record.execution_id]
    assert (await store.stats(0)).by_task == {"queued": 1}


async def test_an_id_that_is_queued_is_taken(store: Store) -> None:
    queued = make_record(mode=Mode.STREAM)
    store.queue_insert(queued)  # a stream's id reaches its client at once
    again = dataclasses.replace(queued, mode=Mode.SYNC)  # the client sends it back as its own id
    existing = await store.create_execution(again)
    assert existing is not None and existing.mode is Mode.STREAM


# The result cache


async def test_the_result_cache_finds_the_newest_success_within_the_window(store: Store) -> None:
    older = await add(store, Status.COMPLETED, cache_key="k1", completed_at=now_ms() - 5_000)
    newer = await add(store, Status.COMPLETED, cache_key="k1", completed_at=now_ms())
    await add(store, Status.FAILED, cache_key="k1", completed_at=now_ms() + 1)  # failures are never cached
    await add(store, Status.COMPLETED, cache_key="k2", completed_at=now_ms() + 2)
    hit = await store.cached_result("k1", now_ms() - 10_000)
    assert hit == newer
    assert await store.cached_result("k1", now_ms() + 10_000) is None
    assert await store.cached_result("k3", 0) is None
    assert older.execution_id != newer.execution_id


async def test_a_record_stored_completed_with_a_cache_key_is_a_cached_result(store: Store) -> None:
    record = make_record(status=Status.COMPLETED, cache_key="k", completed_at=now_ms(), output=b"1")
    assert await store.create_execution(record) is None
    assert await store.cached_result("k", now_ms() - 1_000) == record


# Retention


async def test_expire_removes_old_terminal_records_but_never_unfinished_ones(store: Store) -> None:
    old_done = make_record(status=Status.COMPLETED, created_at=900, completed_at=1_000)
    old_failed = make_record(status=Status.FAILED, created_at=1_900, completed_at=2_000)
    recent_done = make_record(status=Status.COMPLETED, completed_at=now_ms())
    old_pending = make_record(status=Status.PENDING, created_at=500)
    old_running = make_record(status=Status.RUNNING, created_at=600, started_at=700)
    for record in (old_done, old_failed, recent_done, old_pending, old_running):
        assert await store.create_execution(record) is None
    removed = await store.expire(before_ms=now_ms() - 60_000, keep=100)
    assert removed == 2
    left = {r.execution_id for r in (await store.list_executions("", Status.UNKNOWN, 100, "")).executions}
    assert left == {recent_done.execution_id, old_pending.execution_id, old_running.execution_id}
    assert await store.get_execution(old_done.execution_id) is None
    assert await store.count_executions() == 3


async def test_expire_keeps_only_the_newest_terminal_records_beyond_the_count(store: Store) -> None:
    done = [make_record(status=Status.COMPLETED, completed_at=now_ms()) for _ in range(5)]
    running = make_record(status=Status.RUNNING)
    for record in [*done, running]:
        assert await store.create_execution(record) is None
    removed = await store.expire(before_ms=0, keep=2)
    assert removed == 3
    left = {r.execution_id for r in (await store.list_executions("", Status.UNKNOWN, 100, "")).executions}
    assert left == {done[-1].execution_id, done[-2].execution_id, running.execution_id}


async def test_unfinished_records_do_not_count_against_the_records_kept(store: Store) -> None:
    done = [await add(store, Status.COMPLETED) for _ in range(3)]
    running = await add(store, Status.RUNNING)
    assert await store.expire(before_ms=0, keep=3) == 0
    assert set(await all_executions(store)) == {r.execution_id for r in (*done, running)}


async def test_the_idempotency_key_of_an_expired_record_is_free_again(store: Store) -> None:
    first = await add(store, Status.COMPLETED, idempotency_key="t:k", created_at=500, completed_at=1_000)
    assert await store.expire(before_ms=now_ms(), keep=100) == 1
    again = make_record(idempotency_key="t:k")
    assert await store.create_execution(again) is None
    assert await store.get_execution(again.execution_id) == again
    assert await store.get_execution(first.execution_id) is None


# Durability (memory is not durable: README, Configuration)


async def test_records_and_tasks_survive_closing_and_reopening_the_store(durable: Factory) -> None:
    first = await opened(durable)
    task = make_task("keep", metadata={"k": "v"})
    await first.put_task(task)
    record = await add(first, Status.COMPLETED, task_id="keep", params={"b": b"\x01"}, output=b"ok")
    await first.close()

    again = durable()
    await again.open()
    try:
        assert await again.get_task("keep") == task
        assert await again.get_execution(record.execution_id) == record
    finally:
        await again.close()


async def test_closing_the_store_writes_queued_records_for_the_next_start(durable: Factory) -> None:
    first = await opened(durable)
    record = make_record(mode=Mode.SYNC)
    first.queue_insert(record)
    record.status, record.attempts = Status.RUNNING, 1
    first.queue_transition(record)
    await first.close()
    again = durable()
    await again.open()
    try:
        assert [r.execution_id for r in await again.unfinished()] == [record.execution_id]
        assert await again.get_execution(record.execution_id) == record
    finally:
        await again.close()
