"""What SqliteStore does beyond the Store contract (tests/store/test_contract.py), against a real SQLite
file: WAL, the writer thread and group commit, staged sync records, finished records kept, migrations."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from spearlet.core.errors import StoreUnavailable
from spearlet.core.ids import new_execution_id
from spearlet.core.models import ExecutionRecord, Mode, Status, now_ms
from spearlet.store.sqlite import (
    _SELECT_UNFINISHED,
    FINISHED_KEPT,
    FINISHED_KEPT_BYTES,
    FINISHED_KEPT_MAX_BYTES,
    STAGE_S,
    WAL_LIMIT_BYTES,
    SqliteStore,
    _exec_row,
    _insert_op,
)
from tests.store.factories import add, all_executions, make_record, make_task

pytestmark = pytest.mark.timeout(60)


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


# Creating executions: the file's own checks


async def test_the_file_itself_refuses_a_second_record_with_the_same_idempotency_key(store: SqliteStore) -> None:
    first = make_record(idempotency_key="t:k")
    assert await store.create_execution(first) is None
    second = make_record(idempotency_key="t:k")
    with pytest.raises(sqlite3.IntegrityError):  # written past create_execution's own check
        await store._run(_insert_op(_exec_row(second)))


# Durability and the writer thread


async def test_database_is_in_wal_mode(store: SqliteStore) -> None:
    await store.count_tasks()
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_the_wal_is_emptied_when_the_writer_is_idle_and_cut_back_after_checkpoints(store: SqliteStore) -> None:
    wal = store.path.with_name(store.path.name + "-wal")
    limit = await store._run(lambda conn: conn.execute("PRAGMA journal_size_limit").fetchone()[0], atomic=True)
    assert limit == WAL_LIMIT_BYTES
    for _ in range(2):  # the second burst reuses the emptied file, and is emptied again
        records = [make_record(output=os.urandom(48 << 10)) for _ in range(200)]  # ~10 MB in one commit
        assert await asyncio.gather(*(store.create_execution(r) for r in records)) == [None] * 200
        assert wal.stat().st_size > 2 * WAL_LIMIT_BYTES
        for _ in range(60):  # the writer checkpoints after a second without work
            if wal.stat().st_size == 0:
                break
            await asyncio.sleep(0.05)
        assert wal.stat().st_size == 0
    assert await store._run(lambda conn: conn.execute("PRAGMA integrity_check").fetchone()[0]) == "ok"


async def test_the_wal_stays_bounded_under_writes_without_a_pause(store: SqliteStore) -> None:
    wal = store.path.with_name(store.path.name + "-wal")
    record_bytes = 256 << 10
    peak = 0
    for _ in range(80):  # 20 MB, one commit after another (each made inline by an idle writer)
        assert await store.create_execution(make_record(output=os.urandom(record_bytes))) is None
        peak = max(peak, wal.stat().st_size)
    # The commit that passes the limit wakes the writer to checkpoint; a few more commits may land
    # before it has the connection (inline ones, from an idle loop), each ~5% over its record's size.
    assert peak <= WAL_LIMIT_BYTES + 4 * record_bytes


async def test_open_on_an_unusable_path_raises(tmp_path: Path) -> None:
    directory = tmp_path / "not-a-file"
    directory.mkdir()
    with pytest.raises(StoreUnavailable, match="cannot open the store"):
        await SqliteStore(directory).open()


async def test_operations_on_a_closed_store_raise(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "spearlet.db")
    with pytest.raises(RuntimeError, match="not open"):
        await s.get_task("t")
    await s.open()
    await s.close()
    with pytest.raises(RuntimeError, match="not open"):
        await s.get_task("t")


async def test_creates_made_in_the_same_turn_of_the_loop_share_one_commit(store: SqliteStore) -> None:
    async with traced(store) as statements:
        records = [make_record(task_id="together") for _ in range(16)]
        assert await asyncio.gather(*(store.create_execution(r) for r in records)) == [None] * 16
    assert sum(s.strip().upper() == "COMMIT" for s in statements) == 1
    assert set(await all_executions(store, "together")) == {r.execution_id for r in records}


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


async def test_a_store_from_before_invocation_ids_keeps_its_records_readable_and_gains_the_column(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    first = SqliteStore(path)
    await first.open()
    old = await add(first, Status.COMPLETED, task_id="t")
    await first.close()
    with sqlite3.connect(path) as conn:  # as stores were written before issue 16
        conn.execute("DROP INDEX executions_invocation")
        conn.execute("ALTER TABLE executions DROP COLUMN invocation_id")
    again = SqliteStore(path)
    await again.open()
    try:
        got = await again.get_execution(old.execution_id)
        assert got is not None and got.status is Status.COMPLETED and got.invocation_id == ""
        new = make_record(invocation_id="inv")
        assert await again.create_execution(new) is None
        page = await again.list_executions("", Status.UNKNOWN, 10, "", invocation_id="inv")
        assert [r.execution_id for r in page.executions] == [new.execution_id]
        plan = await query_plan(
            again, "SELECT seq FROM executions WHERE invocation_id = ? AND invocation_id != '' ORDER BY seq DESC", "inv"
        )
        assert "executions_invocation" in plan
    finally:
        await again.close()


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
        await asyncio.sleep(0)  # the loop's turn ends: the final record goes to the writer
        await store.count_tasks()  # queued behind its write
    assert [s.split("(")[0].strip().upper() for s in statements if "EXECUTIONS" in s.upper()] == [
        "INSERT INTO EXECUTIONS"
    ]
    assert on_disk(store.path, record.execution_id) is Status.COMPLETED
    await asyncio.sleep(STAGE_S + 0.05)  # the staging timer was cancelled: nothing more is written
    assert await store.get_execution(record.execution_id) == record


async def test_a_staged_call_s_final_record_is_written_behind_and_read_at_once(store: SqliteStore) -> None:
    record = make_record(mode=Mode.SYNC)
    store.queue_insert(record)
    record.status, record.output, record.completed_at = Status.COMPLETED, b"done", now_ms()
    assert await store.transition(record)
    # The transition returned before the write (the caller answers first) ...
    assert on_disk(store.path, record.execution_id) is None
    # ... and every reader sees the final record at once: a status query, a listing, the stats.
    assert (await store.get_execution(record.execution_id)) == record
    listed = await store.list_executions("", Status.UNKNOWN, 10, "")
    assert [(r.execution_id, r.status) for r in listed.executions] == [(record.execution_id, Status.COMPLETED)]
    assert (await store.stats(0)).by_status == {Status.COMPLETED: 1}
    assert on_disk(store.path, record.execution_id) is Status.COMPLETED


async def test_a_final_record_written_behind_cannot_be_ended_again(store: SqliteStore) -> None:
    record = make_record(mode=Mode.SYNC)
    store.queue_insert(record)
    record.status, record.completed_at = Status.COMPLETED, now_ms()
    assert await store.transition(record)
    cancel = dataclasses.replace(record, status=Status.CANCELLED)
    assert not await store.transition(cancel)  # before its write ...
    await asyncio.sleep(0)
    await store.count_tasks()
    assert not await store.transition(cancel)  # ... and after
    assert on_disk(store.path, record.execution_id) is Status.COMPLETED


async def test_final_records_written_behind_are_in_the_file_after_close(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "spearlet.db")
    await store.open()
    records = [make_record(mode=Mode.SYNC) for _ in range(3)]
    for record in records:
        store.queue_insert(record)
        record.status, record.completed_at = Status.COMPLETED, now_ms()
        assert await store.transition(record)
    await store.close()
    assert [on_disk(store.path, r.execution_id) for r in records] == [Status.COMPLETED] * 3


async def test_counting_records_includes_staged_ones_without_writing_them(store: SqliteStore) -> None:
    await add(store, Status.COMPLETED)
    await add(store, Status.PENDING)
    store.queue_insert(make_record(mode=Mode.SYNC))
    async with traced(store) as statements:
        assert await store.count_executions() == 3
    assert not [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert (await store.stats(0)).total == 3  # the same figure, the slow way (it writes staged records)


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
