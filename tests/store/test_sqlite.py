"""SqliteStore against a real SQLite file: tasks, execution records, paging, stats, durability, group commit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from spearlet.core.ids import new_execution_id
from spearlet.core.models import ALLOWED_FROM, ExecutionRecord, Mode, OutputKind, Status, Task, now_ms
from spearlet.store.sqlite import (
    _SELECT_UNFINISHED,
    FINISHED_KEPT,
    FINISHED_KEPT_BYTES,
    FINISHED_KEPT_MAX_BYTES,
    STAGE_S,
    SqliteStore,
    _exec_row,
    _insert_op,
)
from tests.store.pages import pages_of

pytestmark = pytest.mark.timeout(60)

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


async def add(store: SqliteStore, status: Status = Status.PENDING, **fields: Any) -> ExecutionRecord:
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


async def all_executions(store: SqliteStore, task_id: str = "", status: Status = Status.UNKNOWN) -> list[str]:
    page = await store.list_executions(task_id, status, 10_000, "")
    return [r.execution_id for r in page.executions]


async def hold_writer(store: SqliteStore) -> tuple[threading.Event, asyncio.Future[None]]:
    """Block the database thread until the event is set, so later operations queue up into one batch."""
    release = threading.Event()
    entered = threading.Event()

    def op(conn: sqlite3.Connection) -> None:
        entered.set()
        if not release.wait(20):
            raise TimeoutError("the test never released the writer")

    held = store._run(op, inline=False)  # on the writer thread, never on ours
    await asyncio.get_running_loop().run_in_executor(None, entered.wait, 20)
    return release, held


@contextlib.asynccontextmanager
async def traced(store: SqliteStore) -> AsyncIterator[list[str]]:
    """The SQL statements that reach the file inside the block (switching the trace on and off
    adds none: it runs without a transaction)."""
    statements: list[str] = []
    await store._run(lambda conn: conn.set_trace_callback(statements.append), atomic=True)
    try:
        yield statements
    finally:
        await store._run(lambda conn: conn.set_trace_callback(None), atomic=True)


async def settle_submissions() -> None:
    """Let freshly created tasks run up to the point where they have queued their operation."""
    for _ in range(3):
        await asyncio.sleep(0)


# Tasks


async def test_put_task_then_get_task_returns_it(store: SqliteStore) -> None:
    task = make_task("hello", description="greets", metadata={"timeout_ms": "500"}, digest="ab" * 32)
    await store.put_task(task)
    assert await store.get_task("hello") == task


async def test_get_task_unknown_returns_none(store: SqliteStore) -> None:
    assert await store.get_task("nope") is None


async def test_put_task_again_replaces_fields_but_keeps_created_at(store: SqliteStore) -> None:
    await store.put_task(make_task("hello", description="v1", created_at=1_000, updated_at=1_000))
    await store.put_task(make_task("hello", description="v2", location="/v2.sh", created_at=9_000, updated_at=9_000))
    got = await store.get_task("hello")
    assert got is not None
    assert got.created_at == 1_000
    assert (got.description, got.location, got.updated_at) == ("v2", "/v2.sh", 9_000)
    assert await store.count_tasks() == 1


async def test_list_tasks_filters_by_prefix_in_id_order(store: SqliteStore) -> None:
    for task_id in ["b1", "ab", "a2", "a1", "ba"]:
        await store.put_task(make_task(task_id))
    page = await store.list_tasks("a", 100, "")
    assert [t.task_id for t in page.tasks] == ["a1", "a2", "ab"]
    assert not page.has_more and page.next_start_after == ""
    everything = await store.list_tasks("", 100, "")
    assert [t.task_id for t in everything.tasks] == ["a1", "a2", "ab", "b1", "ba"]


async def test_list_tasks_prefix_is_literal_not_a_like_pattern(store: SqliteStore) -> None:
    for task_id in ["a_b", "axb", "a%c", "aZc"]:
        await store.put_task(make_task(task_id))
    assert [t.task_id for t in (await store.list_tasks("a_", 100, "")).tasks] == ["a_b"]
    assert [t.task_id for t in (await store.list_tasks("a%", 100, "")).tasks] == ["a%c"]


async def test_list_tasks_pages_with_limit_and_start_after(store: SqliteStore) -> None:
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


async def test_list_tasks_full_last_page_reports_no_more(store: SqliteStore) -> None:
    for i in range(4):
        await store.put_task(make_task(f"p{i}"))
    page = await store.list_tasks("", 2, "p1")
    assert [t.task_id for t in page.tasks] == ["p2", "p3"]
    assert not page.has_more and page.next_start_after == ""


async def test_delete_task_without_cleanup_keeps_its_executions(store: SqliteStore) -> None:
    await store.put_task(make_task("t"))
    done = await add(store, Status.COMPLETED, task_id="t")
    assert await store.delete_task("t", cleanup_executions=False) == (True, 0)
    assert await store.get_task("t") is None
    assert await store.get_execution(done.execution_id) == done


async def test_delete_task_with_cleanup_removes_only_its_terminal_records(store: SqliteStore) -> None:
    await store.put_task(make_task("t"))
    await store.put_task(make_task("other"))
    records = {status: await add(store, status, task_id="t") for status in REAL_STATUSES}
    other = await add(store, Status.COMPLETED, task_id="other")

    assert await store.delete_task("t", cleanup_executions=True) == (True, 4)

    remaining = set(await all_executions(store, "t"))
    assert remaining == {records[Status.PENDING].execution_id, records[Status.RUNNING].execution_id}
    assert await store.get_execution(other.execution_id) == other
    assert await store.get_task("other") is not None


async def test_delete_unknown_task_reports_false_and_cleans_nothing(store: SqliteStore) -> None:
    orphan = await add(store, Status.COMPLETED, task_id="ghost")
    assert await store.delete_task("ghost", cleanup_executions=True) == (False, 0)
    assert await store.get_execution(orphan.execution_id) == orphan


# Creating executions


async def test_create_execution_returns_none_and_stores_the_record(store: SqliteStore) -> None:
    record = make_record(params={"n": 1}, idempotency_key="k1", timeout_ms=500, environment={"A": "1"})
    assert await store.create_execution(record) is None
    assert await store.get_execution(record.execution_id) == record


async def test_create_execution_duplicate_id_returns_existing_and_stores_nothing(store: SqliteStore) -> None:
    original = make_record(function_name="first")
    assert await store.create_execution(original) is None
    duplicate = make_record(function_name="second")
    duplicate.execution_id = original.execution_id

    assert await store.create_execution(duplicate) == original
    assert await store.get_execution(original.execution_id) == original
    assert await all_executions(store) == [original.execution_id]


async def test_create_execution_duplicate_idempotency_key_returns_existing(store: SqliteStore) -> None:
    original = make_record(idempotency_key="client-42", function_name="first")
    assert await store.create_execution(original) is None
    retry = make_record(idempotency_key="client-42", function_name="second")

    assert await store.create_execution(retry) == original
    assert await store.get_execution(retry.execution_id) is None
    assert await all_executions(store) == [original.execution_id]


async def test_the_file_itself_refuses_a_second_record_with_the_same_idempotency_key(store: SqliteStore) -> None:
    first = make_record(idempotency_key="t:k")
    assert await store.create_execution(first) is None
    second = make_record(idempotency_key="t:k")
    with pytest.raises(sqlite3.IntegrityError):  # written past create_execution's own check
        await store._run(_insert_op(_exec_row(second)))


async def test_create_execution_without_idempotency_key_never_collides(store: SqliteStore) -> None:
    first, second = make_record(), make_record()
    assert await store.create_execution(first) is None
    assert await store.create_execution(second) is None
    assert set(await all_executions(store)) == {first.execution_id, second.execution_id}


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
async def test_transition_moves_status_forward_only(
    store: SqliteStore, stored: Status, new: Status, allowed: bool
) -> None:
    record = make_record(status=stored, error_message="before")
    assert await store.create_execution(record) is None
    update = dataclasses.replace(record, status=new, error_message="after", metrics={"m": "1"})

    assert await store.transition(update) is allowed

    got = await store.get_execution(record.execution_id)
    assert got == (update if allowed else record)


async def test_transition_agrees_with_allowed_from_for_every_pair(store: SqliteStore) -> None:
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


async def test_transition_of_unknown_execution_returns_false(store: SqliteStore) -> None:
    assert await store.transition(make_record(status=Status.RUNNING)) is False
    assert await all_executions(store) == []


async def test_transition_writes_every_field_of_the_record(store: SqliteStore) -> None:
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
    assert await store.transition(record)
    assert await store.get_execution(record.execution_id) == record


# Values


async def test_bytes_params_and_output_round_trip_exactly(store: SqliteStore) -> None:
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


async def test_list_executions_returns_newest_first(store: SqliteStore) -> None:
    ids = [(await add(store)).execution_id for _ in range(4)]
    page = await store.list_executions("", Status.UNKNOWN, 10, "")
    assert [r.execution_id for r in page.executions] == ids[::-1]
    assert not page.has_more and page.next_start_after == ""


async def test_list_executions_filters_by_task_and_status(store: SqliteStore) -> None:
    a_done = await add(store, Status.COMPLETED, task_id="a")
    a_failed = await add(store, Status.FAILED, task_id="a")
    b_done = await add(store, Status.COMPLETED, task_id="b")
    a_pending = await add(store, Status.PENDING, task_id="a")

    assert await all_executions(store, "a") == [a_pending.execution_id, a_failed.execution_id, a_done.execution_id]
    assert await all_executions(store, "", Status.COMPLETED) == [b_done.execution_id, a_done.execution_id]
    assert await all_executions(store, "a", Status.COMPLETED) == [a_done.execution_id]
    assert await all_executions(store, "b", Status.FAILED) == []


async def test_list_executions_pages_with_start_after(store: SqliteStore) -> None:
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


async def test_unfinished_returns_pending_and_running_oldest_first(store: SqliteStore) -> None:
    first = await add(store, Status.PENDING)
    second = await add(store, Status.PENDING)
    await add(store, Status.COMPLETED)
    await add(store, Status.CANCELLED)
    fourth = await add(store, Status.PENDING)
    second.status = Status.RUNNING  # moved forward after later records were created
    assert await store.transition(second)

    unfinished = await store.unfinished()
    assert [r.execution_id for r in unfinished] == [first.execution_id, second.execution_id, fourth.execution_id]
    assert [r.status for r in unfinished] == [Status.PENDING, Status.RUNNING, Status.PENDING]


# Stats


async def test_stats_counts_by_status_and_averages_completed_only(store: SqliteStore) -> None:
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


async def test_stats_ignores_records_created_before_since_ms(store: SqliteStore) -> None:
    await add(store, Status.COMPLETED, task_id="old", created_at=1_000, execution_time_ms=9_999)
    await add(store, Status.COMPLETED, task_id="new", created_at=5_000, execution_time_ms=10)

    stats = await store.stats(5_000)
    assert stats.total == 1
    assert stats.by_status == {Status.COMPLETED: 1}
    assert stats.average_execution_time_ms == pytest.approx(10.0)
    assert stats.by_task == {"new": 1}
    assert (await store.stats(0)).total == 2


async def test_stats_of_nothing_is_zero(store: SqliteStore) -> None:
    await add(store, Status.FAILED, created_at=1_000)
    stats = await store.stats(2_000)
    assert stats.total == 0 and stats.by_status == {} and stats.by_function == {}
    assert stats.average_execution_time_ms == 0.0


# Durability and the writer thread


async def test_records_survive_closing_and_reopening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "data" / "spearlet.db"
    first = SqliteStore(path)
    await first.open()
    task = make_task("keep", metadata={"k": "v"})
    await first.put_task(task)
    record = await add(first, Status.COMPLETED, task_id="keep", params={"b": b"\x01"}, output=b"ok")
    await first.close()

    again = SqliteStore(path)
    await again.open()
    try:
        assert await again.get_task("keep") == task
        assert await again.get_execution(record.execution_id) == record
    finally:
        await again.close()


async def test_database_is_in_wal_mode(store: SqliteStore) -> None:
    await store.count_tasks()
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_open_on_an_unusable_path_raises(tmp_path: Path) -> None:
    directory = tmp_path / "not-a-file"
    directory.mkdir()
    with pytest.raises(RuntimeError, match="cannot open store"):
        await SqliteStore(directory).open()


async def test_operations_on_a_closed_store_raise(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "spearlet.db")
    with pytest.raises(RuntimeError, match="not open"):
        await s.get_task("t")
    await s.open()
    await s.close()
    with pytest.raises(RuntimeError, match="not open"):
        await s.get_task("t")


async def test_concurrent_creates_all_land(store: SqliteStore) -> None:
    records = [make_record(task_id="busy") for _ in range(200)]
    results = await asyncio.gather(*(store.create_execution(r) for r in records))
    assert results == [None] * 200
    assert set(await all_executions(store, "busy")) == {r.execution_id for r in records}


async def test_creates_made_in_the_same_turn_of_the_loop_share_one_commit(store: SqliteStore) -> None:
    async with traced(store) as statements:
        records = [make_record(task_id="together") for _ in range(16)]
        assert await asyncio.gather(*(store.create_execution(r) for r in records)) == [None] * 16
    assert sum(s.strip().upper() == "COMMIT" for s in statements) == 1
    assert set(await all_executions(store, "together")) == {r.execution_id for r in records}


async def test_a_taken_id_or_key_among_creates_made_together_gets_the_existing_record(store: SqliteStore) -> None:
    taken = make_record(function_name="first")
    assert await store.create_execution(taken) is None
    same_id = dataclasses.replace(taken, function_name="second")
    keyed, same_key = make_record(idempotency_key="k"), make_record(idempotency_key="k")
    fresh = make_record()
    results = await asyncio.gather(*(store.create_execution(r) for r in (same_id, keyed, same_key, fresh)))
    assert results == [taken, None, keyed, None]
    assert set(await all_executions(store)) == {taken.execution_id, keyed.execution_id, fresh.execution_id}


async def test_queued_writes_share_one_commit(store: SqliteStore) -> None:
    async with traced(store) as statements:
        release, held = await hold_writer(store)
        statements.clear()
        records = [make_record(task_id="batched") for _ in range(200)]
        tasks = [asyncio.ensure_future(store.create_execution(r)) for r in records]
        await settle_submissions()
        release.set()
        await held
        assert await asyncio.gather(*tasks) == [None] * 200

    commits = sum(1 for s in statements if s.strip().upper() == "COMMIT")
    assert 1 <= commits <= 2, f"{commits} commits for 200 queued writes"
    assert len(await all_executions(store, "batched")) == 200


async def test_failing_operation_in_a_batch_does_not_undo_the_others(store: SqliteStore) -> None:
    before = make_record(task_id="batch")
    after = make_record(task_id="batch")

    def bad(conn: sqlite3.Connection) -> None:
        # Write something first, so a missing rollback of this op alone would show.
        conn.execute(
            "INSERT INTO tasks (task_id, name, description, artifact_id, artifact_type, location, version, "
            "checksum, metadata, local_path, digest, created_at, updated_at) "
            "VALUES ('half-written', 'x', '', '', 'process', '/x', '', '', '{}', '', '', 0, 0)"
        )
        raise sqlite3.IntegrityError("boom")

    release, held = await hold_writer(store)
    tasks: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(store.create_execution(before)),
        asyncio.ensure_future(store._run(bad, inline=False)),
        asyncio.ensure_future(store.put_task(make_task("good"))),
        asyncio.ensure_future(store.create_execution(after)),
    ]
    await settle_submissions()
    release.set()
    await held
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert results[0] is None and results[2] is None and results[3] is None
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert await store.get_execution(before.execution_id) == before
    assert await store.get_execution(after.execution_id) == after
    assert await store.get_task("good") is not None
    assert await store.get_task("half-written") is None
    # The writer keeps serving after the failure.
    await store.put_task(make_task("later"))
    assert await store.get_task("later") is not None


async def test_a_store_from_before_the_result_cache_opens_and_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE executions (seq INTEGER PRIMARY KEY AUTOINCREMENT, execution_id TEXT NOT NULL UNIQUE, "
            "task_id TEXT NOT NULL, function_name TEXT NOT NULL, mode INTEGER NOT NULL, status INTEGER NOT NULL, "
            "params TEXT NOT NULL, timeout_ms INTEGER NOT NULL, max_retries INTEGER NOT NULL, environment TEXT NOT NULL, "
            "metadata TEXT NOT NULL, idempotency_key TEXT UNIQUE, node TEXT NOT NULL, instance_id TEXT NOT NULL, "
            "attempts INTEGER NOT NULL, created_at INTEGER NOT NULL, started_at INTEGER NOT NULL, "
            "completed_at INTEGER NOT NULL, execution_time_ms INTEGER NOT NULL, memory_used_bytes INTEGER NOT NULL, "
            "output BLOB NOT NULL, output_kind INTEGER NOT NULL, error_code TEXT NOT NULL, error_message TEXT NOT NULL, "
            "logs TEXT NOT NULL, metrics TEXT NOT NULL)"
        )
    store = SqliteStore(path)
    await store.open()
    try:
        record = ExecutionRecord(new_execution_id(), "t", "", Mode.ASYNC, created_at=1)
        assert await store.create_execution(record) is None
        assert (await store.get_execution(record.execution_id)) is not None
    finally:
        await store.close()


async def test_a_store_with_the_earlier_indexes_opens_without_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    first = SqliteStore(path)
    await first.open()
    await first.close()
    with sqlite3.connect(path) as conn:  # as stores were written before the indexes were cut
        conn.execute("DROP INDEX executions_not_completed")
        conn.execute("CREATE INDEX executions_status ON executions (status, seq)")
        conn.execute("CREATE INDEX executions_created ON executions (created_at)")
    again = SqliteStore(path)
    await again.open()
    await again.close()
    with sqlite3.connect(path) as conn:
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"executions_not_completed", "executions_task"} <= indexes
    assert not indexes & {"executions_status", "executions_created"}


async def query_plan(store: SqliteStore, sql: str, *args: Any) -> str:
    plan = await store._run(lambda conn: conn.execute(f"EXPLAIN QUERY PLAN {sql}", args).fetchall(), atomic=True)
    return " / ".join(row[3] for row in plan)


async def test_recovery_finds_unfinished_records_through_the_status_index(store: SqliteStore) -> None:
    assert "executions_not_completed" in await query_plan(store, _SELECT_UNFINISHED)


async def test_a_listing_by_a_status_other_than_completed_uses_the_status_index(store: SqliteStore) -> None:
    async with traced(store) as statements:
        await store.list_executions("", Status.FAILED, 10, "")
    listing = next(s for s in statements if s.lstrip().startswith("SELECT"))
    assert "executions_not_completed" in await query_plan(store, listing)


async def test_expire_removes_old_terminal_records_but_never_unfinished_ones(store: SqliteStore) -> None:
    old_done = make_record(status=Status.COMPLETED, completed_at=1_000)
    old_failed = make_record(status=Status.FAILED, completed_at=2_000)
    recent_done = make_record(status=Status.COMPLETED, completed_at=now_ms())
    old_pending = make_record(status=Status.PENDING, created_at=500)
    old_running = make_record(status=Status.RUNNING, created_at=600, started_at=700)
    for record in (old_done, old_failed, recent_done, old_pending, old_running):
        assert await store.create_execution(record) is None
    removed = await store.expire(before_ms=now_ms() - 60_000, keep=100)
    assert removed == 2
    left = {r.execution_id for r in (await store.list_executions("", Status.UNKNOWN, 100, "")).executions}
    assert left == {recent_done.execution_id, old_pending.execution_id, old_running.execution_id}


async def test_expire_keeps_only_the_newest_terminal_records_beyond_the_count(store: SqliteStore) -> None:
    done = [make_record(status=Status.COMPLETED, completed_at=now_ms()) for _ in range(5)]
    running = make_record(status=Status.RUNNING)
    for record in [*done, running]:
        assert await store.create_execution(record) is None
    removed = await store.expire(before_ms=0, keep=2)
    assert removed == 3
    left = {r.execution_id for r in (await store.list_executions("", Status.UNKNOWN, 100, "")).executions}
    assert left == {done[-1].execution_id, done[-2].execution_id, running.execution_id}


async def test_queued_writes_are_seen_by_the_next_operation_in_order(store: SqliteStore) -> None:
    record = make_record(status=Status.PENDING)
    store.queue_insert(record)
    running = dataclasses.replace(record, status=Status.RUNNING, attempts=1, started_at=now_ms())
    store.queue_transition(running)
    got = await store.get_execution(record.execution_id)
    assert got is not None and got.status is Status.RUNNING and got.attempts == 1


async def test_an_idle_writer_runs_an_awaited_operation_at_once_on_the_callers_thread(store: SqliteStore) -> None:
    threads: list[str] = []
    await store._run(lambda conn: threads.append(threading.current_thread().name))
    release, held = await hold_writer(store)
    queued = store._run(lambda conn: threads.append(threading.current_thread().name))
    release.set()
    await held
    await queued
    assert threads == [threading.current_thread().name, "spearlet-sqlite"]  # busy: it waits its turn


# Staged records: a sync call with a node-chosen id


def on_disk(path: Path, execution_id: str) -> Status | None:
    """The record's status as another reader of the file sees it."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT status FROM executions WHERE execution_id = ?", (execution_id,)).fetchone()
        return Status(row[0]) if row else None
    finally:
        conn.close()


async def test_a_queued_insert_is_read_at_once_and_written_once_the_staging_delay_passes(store: SqliteStore) -> None:
    record = make_record(mode=Mode.SYNC)
    store.queue_insert(record)
    assert on_disk(store.path, record.execution_id) is None
    got = await store.get_execution(record.execution_id)
    assert got == record and got is not record  # a copy: the live record goes on changing
    await asyncio.sleep(STAGE_S + 0.05)
    await store.count_tasks()  # after the staged write in the writer's order
    assert on_disk(store.path, record.execution_id) is Status.PENDING


async def test_a_call_that_ends_while_staged_costs_one_insert_with_its_final_state(store: SqliteStore) -> None:
    async with traced(store) as statements:
        record = make_record(mode=Mode.SYNC)
        store.queue_insert(record)
        record.status, record.attempts, record.started_at = Status.RUNNING, 1, now_ms()
        store.queue_transition(record)
        record.status, record.output, record.completed_at = Status.COMPLETED, b"done", now_ms()
        assert await store.transition(record)
    # One statement, which SQLite commits by itself: no BEGIN and COMMIT around it.
    assert [s.split("(")[0].strip().upper() for s in statements] == ["INSERT INTO EXECUTIONS"]
    assert on_disk(store.path, record.execution_id) is Status.COMPLETED  # written before transition returned
    await asyncio.sleep(STAGE_S + 0.05)  # the staging timer was cancelled: nothing more is written
    assert await store.get_execution(record.execution_id) == record


async def test_listings_and_stats_include_staged_records(store: SqliteStore) -> None:
    record = make_record(task_id="staged", mode=Mode.SYNC)
    store.queue_insert(record)
    assert await all_executions(store, "staged") == [record.execution_id]
    assert (await store.stats(0)).by_task == {"staged": 1}


async def test_counting_records_includes_staged_ones_without_writing_them(store: SqliteStore) -> None:
    await add(store, Status.COMPLETED)
    await add(store, Status.PENDING)
    store.queue_insert(make_record(mode=Mode.SYNC))
    async with traced(store) as statements:
        assert await store.count_executions() == 3
    assert not [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert (await store.stats(0)).total == 3  # the same figure, the slow way (it writes staged records)


async def test_closing_the_store_writes_staged_records_for_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "spearlet.db"
    first = SqliteStore(path)
    await first.open()
    record = make_record(mode=Mode.SYNC)
    first.queue_insert(record)
    record.status, record.attempts = Status.RUNNING, 1
    first.queue_transition(record)
    await first.close()
    again = SqliteStore(path)
    await again.open()
    try:
        assert [r.execution_id for r in await again.unfinished()] == [record.execution_id]
        assert (await again.get_execution(record.execution_id)) == record
    finally:
        await again.close()


async def test_an_id_that_is_staged_is_taken(store: SqliteStore) -> None:
    staged = make_record(mode=Mode.STREAM)
    store.queue_insert(staged)  # a stream's id reaches its client at once
    again = dataclasses.replace(staged, mode=Mode.SYNC)  # the client sends it back as its own id
    existing = await store.create_execution(again)
    assert existing is not None and existing.mode is Mode.STREAM


# Finished records kept for readers


async def selects_while(store: SqliteStore, reads: Callable[[], Any]) -> int:
    """How many SELECT statements reach the file while `reads()` runs."""
    async with traced(store) as statements:
        await reads()
    return sum(s.lstrip().upper().startswith("SELECT") for s in statements)


async def test_a_finished_record_read_again_costs_no_statement(store: SqliteStore) -> None:
    record = await add(store, Status.COMPLETED, output=b"result")

    async def read_three_times() -> None:
        for _ in range(3):
            assert await store.get_execution(record.execution_id) == record

    assert await selects_while(store, read_three_times) == 1


async def test_unfinished_and_large_records_are_read_from_the_file_each_time(store: SqliteStore) -> None:
    running = await add(store, Status.RUNNING)
    large = await add(store, Status.COMPLETED, output=b"x" * (FINISHED_KEPT_MAX_BYTES + 1))

    async def read_each_twice() -> None:
        for record in (running, running, large, large):
            assert await store.get_execution(record.execution_id) == record

    assert await selects_while(store, read_each_twice) == 4


async def test_a_reader_changing_its_copy_does_not_change_the_kept_record(store: SqliteStore) -> None:
    record = await add(store, Status.COMPLETED, metrics={"attempts": "1"})
    first = await store.get_execution(record.execution_id)
    assert first is not None
    first.metrics["cache_hit"] = "true"
    first.error_message = "changed by a reader"
    assert await store.get_execution(record.execution_id) == record


async def test_expired_records_are_not_found_even_after_being_kept(store: SqliteStore) -> None:
    record = await add(store, Status.COMPLETED, completed_at=1_000)
    assert await store.get_execution(record.execution_id) is not None  # now kept in memory
    assert await store.expire(before_ms=now_ms(), keep=100) == 1
    assert await store.get_execution(record.execution_id) is None


async def test_records_cleaned_up_with_their_task_are_not_found_even_after_being_kept(store: SqliteStore) -> None:
    await store.put_task(make_task("gone"))
    record = await add(store, Status.FAILED, task_id="gone")
    assert await store.get_execution(record.execution_id) is not None
    assert await store.delete_task("gone", cleanup_executions=True) == (True, 1)
    assert await store.get_execution(record.execution_id) is None


async def test_a_read_that_overlaps_a_deletion_is_not_kept(store: SqliteStore) -> None:
    record = await add(store, Status.COMPLETED, completed_at=1_000)
    release, held = await hold_writer(store)
    read = asyncio.ensure_future(store.get_execution(record.execution_id))  # queued before the deletion
    expired = asyncio.ensure_future(store.expire(before_ms=now_ms(), keep=100))
    await settle_submissions()
    release.set()
    await held
    assert await read is not None and await expired == 1  # the read ran first and saw the record
    assert await store.get_execution(record.execution_id) is None


async def test_only_the_most_recently_read_finished_records_are_kept(store: SqliteStore) -> None:
    records = [await add(store, Status.COMPLETED) for _ in range(FINISHED_KEPT + 1)]
    for record in records:
        await store.get_execution(record.execution_id)

    async def read_oldest_and_newest() -> None:
        await store.get_execution(records[0].execution_id)
        await store.get_execution(records[-1].execution_id)

    assert await selects_while(store, read_oldest_and_newest) == 1  # the oldest was let go


async def test_finished_records_are_kept_within_a_budget_of_bytes(store: SqliteStore) -> None:
    size = FINISHED_KEPT_MAX_BYTES // 2
    records = [await add(store, Status.COMPLETED, output=b"x" * size) for _ in range(FINISHED_KEPT_BYTES // size + 1)]
    for record in records:
        await store.get_execution(record.execution_id)
    assert store._finished_bytes <= FINISHED_KEPT_BYTES

    async def read_oldest_and_newest() -> None:
        await store.get_execution(records[0].execution_id)
        await store.get_execution(records[-1].execution_id)

    assert await selects_while(store, read_oldest_and_newest) == 1  # the oldest made room


# Every operation settles: its future cannot be cancelled, so nobody may be left waiting


async def test_a_create_made_while_the_store_closes_fails_instead_of_waiting(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    release, held = await hold_writer(store)
    closing = asyncio.ensure_future(store.close())
    await settle_submissions()  # close() has queued the stop and waits for the thread
    late = store.create_execution(make_record())
    await settle_submissions()  # queued behind the stop
    release.set()
    await held
    await closing
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(late, 5)


async def test_a_record_that_cannot_be_stored_fails_alone_among_creates_made_together(store: SqliteStore) -> None:
    bad, good = make_record(params={"x": object()}), make_record()  # object(): not JSON
    pending_bad, pending_good = store.create_execution(bad), store.create_execution(good)
    assert await asyncio.wait_for(pending_good, 5) is None
    with pytest.raises(TypeError):
        await asyncio.wait_for(pending_bad, 5)
    assert await store.get_execution(good.execution_id) is not None


@pytest.mark.timeout(30)
async def test_a_create_while_another_process_holds_the_file_fails_and_the_writer_goes_on(
    store: SqliteStore,
) -> None:
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 shell, a backup tool...
    try:
        refused = store.create_execution(make_record())
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await asyncio.wait_for(refused, 15)  # after SQLite's busy timeout (5 s)
    finally:
        other.execute("COMMIT")
        other.close()
    assert await store.create_execution(make_record()) is None


async def test_a_deletion_whose_caller_went_away_still_forgets_kept_records(store: SqliteStore) -> None:
    await store.put_task(make_task("gone"))
    record = await add(store, Status.COMPLETED, task_id="gone")
    release, held = await hold_writer(store)
    read = asyncio.ensure_future(store.get_execution(record.execution_id))  # queued before the deletion
    deleting = asyncio.ensure_future(store.delete_task("gone", cleanup_executions=True))
    await settle_submissions()
    deleting.cancel()  # the DeleteTask client went away; the deletion runs all the same
    await settle_submissions()
    release.set()
    await held
    assert await read is not None
    with pytest.raises(asyncio.CancelledError):
        await deleting
    assert await store.get_task("gone") is None
    assert await store.get_execution(record.execution_id) is None


async def test_the_budget_of_kept_records_counts_their_parameters(store: SqliteStore) -> None:
    big = "p" * (FINISHED_KEPT_MAX_BYTES // 2)
    records = [
        await add(store, Status.COMPLETED, params={"blob": big}) for _ in range(FINISHED_KEPT_BYTES // len(big) + 4)
    ]
    for record in records:
        await store.get_execution(record.execution_id)
    assert store._finished_bytes <= FINISHED_KEPT_BYTES

    async def read_oldest() -> None:
        await store.get_execution(records[0].execution_id)

    assert await selects_while(store, read_oldest) == 1


async def test_a_record_first_read_by_several_at_once_is_counted_once(store: SqliteStore) -> None:
    record = await add(store, Status.COMPLETED, output=b"x" * 1000)
    release, held = await hold_writer(store)  # a busy writer: the reads queue (pollers of one result)
    reads = asyncio.gather(*(store.get_execution(record.execution_id) for _ in range(4)))
    await settle_submissions()
    release.set()
    await held
    await reads
    assert len(store._finished) == 1
    size = store._finished[record.execution_id][1]
    assert store._finished_bytes == size and 1000 < size < 2000


async def test_a_page_ends_after_the_record_that_brings_its_stored_size_past_max_bytes(store: SqliteStore) -> None:
    ids = [(await add(store, params={"blob": "x" * 10_000})).execution_id for _ in range(7)]
    seen = await pages_of(store, max_bytes=25_000)
    assert [len(p) for p in seen] == [3, 3, 1] and [i for p in seen for i in p] == ids[::-1]
