"""The embedded store: one SQLite file in WAL mode behind one thread with group commit.

All statements run on a single thread that owns the connection. It takes every operation waiting
in its queue, runs them in one transaction (each inside a savepoint, so one failure does not undo
the others) and commits once: under load many writes share one fsync instead of paying one each.

A record queued with `queue_insert` (a sync call with a node-chosen id) is staged in memory for
STAGE_S before it is written: a call that ends sooner costs one write, with its final state, instead
of three, and the writer thread stays out of the call's way. Reads see staged records; listings
write them first. Its final `transition` is written behind: the records that end in one turn of the
event loop go to the writer thread together, after the call's answer; until their commit (and while
a failed write waits to be tried again) they are read from memory, and reads that query the file
queue behind them. A node that dies in between loses those records, whose callers had their answer.

Finished records never change (no transition leaves a terminal status), so the last FINISHED_KEPT
first read from the file (within FINISHED_KEPT_BYTES of stored size) are kept in memory: a result
read again (a poller, a dashboard, a watch after a poll) costs no statement. Deleting records
forgets them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from spearlet.core.errors import StoreFull, StoreUnavailable
from spearlet.core.models import ALLOWED_FROM, ExecutionRecord, Mode, OutputKind, Status, Task
from spearlet.core.queries import ExecutionPage, Stats, TaskPage, TaskSummary
from spearlet.core.values import dump_params, load_params
from spearlet.store.base import PendingWrite, Store

T = TypeVar("T")
log = logging.getLogger(__name__)

STAGE_S = 0.02
BEHIND_RETRY_S = 0.5  # how often final records whose write failed (a full disk) are tried again
# Under load the WAL is checkpointed once it passes this, and SQLite cuts the file back to it when
# the WAL starts over; a second without queued work empties it. Without a bound it kept its largest
# size (52 MB in a 12-minute soak).
WAL_LIMIT_BYTES = 4 << 20
# Free space that lets a store marked full try writes again.
ROOM_BYTES = 1 << 20
BUSY_TIMEOUT_MS = 5000  # sqlite3.connect's default timeout, restored after an idle checkpoint
FINISHED_KEPT = 1024
FINISHED_KEPT_BYTES = 4 << 20  # stored size (parameters, metadata, output, logs) of all kept records
FINISHED_KEPT_MAX_BYTES = 64 << 10  # a larger record is read from the file each time

# Completed records, by far the most, stay out of the status index, so a commit that completes a
# call touches one index less. SQLite uses a partial index only for a query whose WHERE has the
# index's own term: the queries by status repeat it.
_NOT_COMPLETED = f"status != {Status.COMPLETED:d}"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    artifact_type TEXT NOT NULL,
    location TEXT NOT NULL,
    version TEXT NOT NULL,
    checksum TEXT NOT NULL,
    metadata TEXT NOT NULL,
    local_path TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
-- seq is the rowid, without AUTOINCREMENT (which writes a sequence table on every insert): paging
-- compares only rows that exist. Most records have no idempotency key: a partial index skips them.
CREATE TABLE IF NOT EXISTS executions (
    seq INTEGER PRIMARY KEY,
    execution_id TEXT NOT NULL UNIQUE,
    task_id TEXT NOT NULL,
    function_name TEXT NOT NULL,
    mode INTEGER NOT NULL,
    status INTEGER NOT NULL,
    params TEXT NOT NULL,
    timeout_ms INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    environment TEXT NOT NULL,
    metadata TEXT NOT NULL,
    idempotency_key TEXT,
    cache_key TEXT NOT NULL,
    node TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    completed_at INTEGER NOT NULL,
    execution_time_ms INTEGER NOT NULL,
    memory_used_bytes INTEGER NOT NULL,
    output BLOB NOT NULL,
    output_kind INTEGER NOT NULL,
    error_code TEXT NOT NULL,
    error_message TEXT NOT NULL,
    logs TEXT NOT NULL,
    metrics TEXT NOT NULL,
    invocation_id TEXT NOT NULL DEFAULT ''
);
-- Every index is a page more in each commit, and commits are the price of every call: only what a
-- frequent query needs. A listing of completed records walks them newest first (most records are
-- completed); stats count everything anyway.
CREATE INDEX IF NOT EXISTS executions_task ON executions (task_id, seq);
CREATE INDEX IF NOT EXISTS executions_not_completed ON executions (status, seq) WHERE {_NOT_COMPLETED};
CREATE INDEX IF NOT EXISTS executions_cache ON executions (cache_key, completed_at) WHERE cache_key != '';
-- Most records have no invocation id (the seed-era API has none): a partial index skips them.
CREATE INDEX IF NOT EXISTS executions_invocation ON executions (invocation_id, seq) WHERE invocation_id != '';
CREATE UNIQUE INDEX IF NOT EXISTS executions_idempotency ON executions (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""

_EXEC_COLUMNS = (
    "execution_id, task_id, function_name, mode, status, params, timeout_ms, max_retries, environment, "
    "metadata, idempotency_key, cache_key, node, instance_id, attempts, created_at, started_at, completed_at, "
    "execution_time_ms, memory_used_bytes, output, output_kind, error_code, error_message, logs, metrics, "
    "invocation_id"
)
# What changes after an execution is created; the rest is written once, at insert.
# What a record costs to read: its variable-size columns.
_STORED_SIZE = (
    "length(params) + length(environment) + length(metadata) + ifnull(length(output), 0) + length(error_message) "
    "+ length(logs) + length(metrics)"
)
_PROGRESS_COLUMNS = (
    "status, node, instance_id, attempts, started_at, completed_at, execution_time_ms, memory_used_bytes, output, "
    "output_kind, error_code, error_message, logs, metrics"
)
_TASK_COLUMNS = (
    "task_id, name, description, artifact_id, artifact_type, location, version, checksum, metadata, "
    "local_path, digest, created_at, updated_at"
)


def _exec_row(r: ExecutionRecord) -> tuple[Any, ...]:
    return (
        r.execution_id, r.task_id, r.function_name, int(r.mode), int(r.status), dump_params(r.params),
        r.timeout_ms, r.max_retries, _dump_object(r.environment), _dump_object(r.metadata), r.idempotency_key,
        r.cache_key, r.node, r.instance_id, r.attempts, r.created_at, r.started_at, r.completed_at,
        r.execution_time_ms, r.memory_used_bytes, r.output, int(r.output_kind), r.error_code,
        r.error_message, r.logs, _dump_object(r.metrics), r.invocation_id,
    )  # fmt: skip


def _progress_row(r: ExecutionRecord) -> tuple[Any, ...]:
    return (
        int(r.status), r.node, r.instance_id, r.attempts, r.started_at, r.completed_at, r.execution_time_ms,
        r.memory_used_bytes, r.output, int(r.output_kind), r.error_code, r.error_message, r.logs,
        _dump_object(r.metrics),
    )  # fmt: skip


def _exec_from_row(row: sqlite3.Row) -> ExecutionRecord:
    # By position, in _EXEC_COLUMNS order: a Row looks names up one by one, which made this the
    # dearest part of a status query.
    (
        execution_id, task_id, function_name, mode, status, params, timeout_ms, max_retries, environment,
        metadata, idempotency_key, cache_key, node, instance_id, attempts, created_at, started_at, completed_at,
        execution_time_ms, memory_used_bytes, output, output_kind, error_code, error_message, logs, metrics,
        invocation_id,
    ) = row  # fmt: skip
    return ExecutionRecord(
        execution_id=execution_id,
        task_id=task_id,
        function_name=function_name,
        mode=Mode(mode),
        status=Status(status),
        params=load_params(params),
        timeout_ms=timeout_ms,
        max_retries=max_retries,
        environment=_load_object(environment),
        metadata=_load_object(metadata),
        idempotency_key=idempotency_key,
        cache_key=cache_key,
        node=node,
        instance_id=instance_id,
        attempts=attempts,
        created_at=created_at,
        started_at=started_at,
        completed_at=completed_at,
        execution_time_ms=execution_time_ms,
        memory_used_bytes=memory_used_bytes,
        output=bytes(output),
        output_kind=OutputKind(output_kind),
        error_code=error_code,
        error_message=error_message,
        logs=logs,
        metrics=_load_object(metrics),
        invocation_id=invocation_id,
    )


def _unended(record: ExecutionRecord) -> ExecutionRecord:
    """A staged record as anyone but its final `transition` may see it. Between attempts the
    scheduler holds the failed attempt's status while it waits to retry: that is not an end."""
    return dataclasses.replace(record, status=Status.RUNNING) if record.done else record


def _copy(record: ExecutionRecord) -> ExecutionRecord:
    """A copy a reader may change (metrics is the one mapping the core adds to) without touching
    the record kept here."""
    return dataclasses.replace(record, metrics=dict(record.metrics))


def _dump_object(value: dict[str, str]) -> str:
    return "{}" if not value else json.dumps(value)


def _load_object(text: str) -> Any:
    return {} if text == "{}" else json.loads(text)


def _task_row(t: Task) -> tuple[Any, ...]:
    return (
        t.task_id, t.name, t.description, t.artifact_id, t.artifact_type, t.location, t.version,
        t.checksum, json.dumps(t.metadata), t.local_path, t.digest, t.created_at, t.updated_at,
    )  # fmt: skip


def _task_from_row(row: sqlite3.Row) -> Task:
    return Task(
        task_id=row["task_id"],
        name=row["name"],
        description=row["description"],
        artifact_id=row["artifact_id"],
        artifact_type=row["artifact_type"],
        location=row["location"],
        version=row["version"],
        checksum=row["checksum"],
        metadata=json.loads(row["metadata"]),
        local_path=row["local_path"],
        digest=row["digest"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class _Each:
    """Futures settled as one: the i-th gets item i of the list that an operation done for all of
    them returns (creates written together, settled in the writer's one wake-up of the loop)."""

    def __init__(self, futures: list[asyncio.Future[Any]]) -> None:
        self.futures = futures

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.futures[0].get_loop()

    def done(self) -> bool:
        return all(future.done() for future in self.futures)

    def set_result(self, values: list[Any]) -> None:
        for future, value in zip(self.futures, values, strict=True):
            if not future.done():
                future.set_result(value)

    def set_exception(self, exc: BaseException) -> None:
        for future in self.futures:
            if not future.done():
                future.set_exception(exc)


# An operation and whom to tell its result; None for a queued write nobody waits for.
_Op = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any] | _Each | None"]


class _DatabaseThread(threading.Thread):
    """Owns the connection; runs queued operations in batches, one commit per batch.

    When nothing is queued or running, an awaited operation runs at once on the caller's thread
    instead (under the same lock): a thread hop each way costs more here than a WAL commit, and an
    idle writer has nothing to batch it with. Busy, everything goes through the queue in order.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(name="spearlet-sqlite", daemon=True)
        self._path = path
        self._wal = path.with_name(path.name + "-wal")
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # whoever holds it uses the connection
        self._conn: sqlite3.Connection | None = None
        # Operations handed to the thread, and those it finished: each counter has one writer.
        self._submitted = 0
        self._finished = 0
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None
        # Set while the disk holding the store is full (a write failed for it, and no write has
        # succeeded since); read by the loop to refuse new work at once.
        self.full: StoreFull | None = None
        # Opened on a full disk, where the shared-memory index could not be made: the connection
        # then keeps it in its own memory, and nobody else may open the file (the node holds its
        # data dir alone anyway).
        self.exclusive = False

    def submit(
        self, op: Callable[[sqlite3.Connection], T], inline: bool = True, atomic: bool = False
    ) -> asyncio.Future[T]:
        """`atomic`: `op` only reads, or runs a single statement, so inline it needs no transaction
        of its own (nobody else writes while we hold the connection, and SQLite commits a lone
        statement by itself: two statements fewer than BEGIN and COMMIT)."""
        future: PendingWrite[T] = PendingWrite(loop=asyncio.get_running_loop())
        self._submit(op, future, inline, atomic)
        return future

    def submit_each(self, op: Callable[[sqlite3.Connection], list[Any]], futures: list[asyncio.Future[Any]]) -> None:
        """`op` returns one result for each of `futures`."""
        self._submit(op, _Each(futures), inline=True, atomic=False)

    def _submit(
        self, op: Callable[[sqlite3.Connection], Any], to: asyncio.Future[Any] | _Each, inline: bool, atomic: bool
    ) -> None:
        conn = self._conn
        idle = self._submitted == self._finished and conn is not None
        if inline and idle and conn is not None and self._lock.acquire(blocking=False):
            try:
                before = conn.total_changes
                ok, value = _run_atomic(conn, op) if atomic else _run_alone(conn, op)
                [(ok, value)] = self._observe(conn, before, [(op, to)], [(ok, value)])
                wrote = conn.total_changes != before
            finally:
                self._lock.release()
            _settle([(to, ok, value)])
            if wrote and _size(self._wal) > WAL_LIMIT_BYTES:
                self.enqueue(_nothing)  # wakes the writer, which checkpoints after it
            return
        self._submitted += 1
        self._queue.put((op, to))

    def enqueue(self, op: Callable[[sqlite3.Connection], object]) -> None:
        """Queue a write without waiting for it; later operations run after it."""
        self._submitted += 1
        self._queue.put((op, None))

    def stop(self) -> None:
        self._queue.put(None)

    def fail_leftovers(self) -> None:
        """Once the thread has ended: fail what was queued behind the stop, so that nobody waits
        for ever (an operation's future cannot be cancelled)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and item[1] is not None:
                _settle([(item[1], False, RuntimeError("the store closed before this operation ran"))])

    def run(self) -> None:
        try:
            # Only the node reads its records (SQLite gives the -wal and -shm files the same mode).
            os.close(os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self._path, 0o600)
            try:
                conn = self._connect(exclusive=False)
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc):
                    raise
                # Start degraded: records are read (and status queries answered) until space returns.
                conn = self._connect(exclusive=True)
                self.exclusive = True
                self.full = self._full_disk(exc)
                log.error("%s", self.full)
        except BaseException as exc:  # reported to open(), which raises it in the loop
            self.startup_error = exc
            self.ready.set()
            return
        self._conn = conn
        self.ready.set()
        try:
            self._serve(conn)
        finally:
            with self._lock:
                self._conn = None
                conn.close()

    def _connect(self, exclusive: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            if exclusive:
                conn.execute("PRAGMA locking_mode=EXCLUSIVE")  # before WAL: no -shm file needed
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            # Checkpoints (which fsync) are this thread's job when idle, never a caller's commit's.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            _migrate(conn)
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _full_disk(self, exc: BaseException) -> StoreFull:
        return StoreFull(
            f"the disk holding the store {self._path} is full ({exc}): new work is refused until space is "
            "freed; stored executions are still answered"
        )

    def _observe(
        self, conn: sqlite3.Connection, changes_before: int, ops: list[_Op], results: list[tuple[bool, Any]]
    ) -> list[tuple[bool, Any]]:
        """What a unit of work tells about the disk: a failure for want of space marks the store
        full (and becomes StoreFull); a committed change unmarks it. Logs queued writes that fail
        (nobody else hears of them), a full disk once."""
        out: list[tuple[bool, Any]] = []
        for (_, future), (ok, value) in zip(ops, results, strict=True):
            if not ok and _disk_full(value):
                if self.full is None:
                    log.error("%s", self._full_disk(value))
                self.full = value = self._full_disk(value)
            elif not ok and future is None:
                log.error("a queued store write failed: %s", value)
            out.append((ok, value))
        if self.full is not None and conn.total_changes > changes_before and any(ok for ok, _ in out):
            log.warning("the store takes writes again: %s has room", self._path)
            self.full = None
        return out

    def _check_room(self) -> None:
        """While marked full, and idle: free space on the disk lets writes be tried again (the next
        one that fails marks it full again)."""
        if self.full is None:
            return
        try:
            disk = os.statvfs(self._path.parent)
        except OSError:
            return
        if disk.f_bavail * disk.f_frsize >= ROOM_BYTES:
            log.warning("%s has room again: new work is accepted", self._path.parent)
            self.full = None

    def _serve(self, conn: sqlite3.Connection) -> None:
        wal = self._wal
        while True:
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                # A second without queued work (writes made inline by idle callers count too: they
                # leave frames behind): empty the WAL.
                if _size(wal):
                    with self._lock:
                        _checkpoint(conn, "TRUNCATE", quiet=self.full is not None)
                self._check_room()
                continue
            if first is None:
                return
            batch = [first]
            stop = False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            with self._lock:
                before = conn.total_changes
                results = self._observe(conn, before, batch, _run_batch(conn, batch))
            self._finished += len(batch)
            # Only after the commit, so a caller told "stored" can rely on it; one wake-up of the
            # event loop for the whole batch.
            settled = [(future, ok, value) for (_, future), (ok, value) in zip(batch, results, strict=True) if future]
            if settled:
                settled[0][0].get_loop().call_soon_threadsafe(_settle, settled)
            if stop:
                return
            # Under load, by size, after the answers (inline commits that pass the limit wake us):
            # the next commit then starts the WAL over, and SQLite cuts the file back to the limit.
            if _size(wal) > WAL_LIMIT_BYTES:
                with self._lock:
                    _checkpoint(conn, quiet=self.full is not None)


def _run_batch(conn: sqlite3.Connection, batch: list[_Op]) -> list[tuple[bool, Any]]:
    """Run operations in one transaction, each in a savepoint so one failure does not undo the
    others; (ok, result or exception) for each."""
    if len(batch) == 1:  # alone in its transaction: no savepoint needed to undo it alone
        return [_run_alone(conn, batch[0][0])]
    results: list[tuple[bool, Any]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
    except Exception as exc:  # the file locked by another process past the busy timeout, I/O
        log.error("a store batch of %d operations could not begin: %s", len(batch), exc)
        return [(False, exc)] * len(batch)
    for op, _ in batch:
        conn.execute("SAVEPOINT op")
        try:
            results.append((True, op(conn)))
        except Exception as exc:
            conn.execute("ROLLBACK TO op")
            results.append((False, exc))
        conn.execute("RELEASE op")
    try:
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        log.error("a store batch of %d operations failed to commit: %s", len(batch), exc)
        results = [(False, exc)] * len(batch)
    return results


def _nothing(conn: sqlite3.Connection) -> None:
    pass


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _disk_full(exc: object) -> bool:
    """SQLite's ways of saying that the disk is full (the shared-memory index that cannot grow is one)."""
    return isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorname in ("SQLITE_FULL", "SQLITE_IOERR_SHMSIZE")


def _checkpoint(conn: sqlite3.Connection, mode: str = "PASSIVE", quiet: bool = False) -> None:
    """PASSIVE under load; TRUNCATE when idle, which empties the file unless a reader (a stats
    query beside the writer) still needs it: then it does what it can at once, without waiting."""
    try:
        if mode == "PASSIVE":
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            return
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute(f"PRAGMA wal_checkpoint({mode})")
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except Exception as exc:  # a later one will do; the writer must go on
        if not quiet:  # on a full disk it fails every time, and the disk is reported already
            log.error("a WAL checkpoint failed: %s", exc)


def _run_atomic(conn: sqlite3.Connection, op: Callable[[sqlite3.Connection], Any]) -> tuple[bool, Any]:
    try:
        return True, op(conn)
    except Exception as exc:
        return False, exc


def _run_alone(conn: sqlite3.Connection, op: Callable[[sqlite3.Connection], Any]) -> tuple[bool, Any]:
    try:
        conn.execute("BEGIN IMMEDIATE")
        value = op(conn)
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            conn.execute("ROLLBACK")
        return False, exc
    return True, value


def _settle(results: list[tuple[asyncio.Future[Any] | _Each, bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class SqliteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: _DatabaseThread | None = None
        self._staged: dict[str, tuple[ExecutionRecord, float]] = {}  # id -> (record, when to write it)
        self._stage_timer: asyncio.TimerHandle | None = None
        self._finished: dict[str, tuple[ExecutionRecord, int]] = {}  # id -> (record, stored bytes), oldest first
        self._finished_bytes = 0
        self._creating: list[tuple[ExecutionRecord, PendingWrite[ExecutionRecord | None]]] = []
        # Final records of staged calls, written behind their answer (see the module's doc): read
        # from here until their write is committed; `_ending` are those of this turn of the loop.
        self._behind: dict[str, ExecutionRecord] = {}
        self._ending: list[tuple[str, tuple[Any, ...]]] = []

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _DatabaseThread(self.path)
        self._db.start()
        await asyncio.get_running_loop().run_in_executor(None, self._db.ready.wait)
        if self._db.startup_error is not None:
            raise StoreUnavailable(f"cannot open the store {self.path}: {self._db.startup_error}")

    async def close(self) -> None:
        if self._db is None:
            return
        if self._creating:
            self._create_together()
        # Calls still running are RUNNING in the store, for the next start; the final records of
        # this turn, and those waiting to be tried again, are written too.
        self._write_staged()
        if self._stage_timer is not None:
            self._stage_timer.cancel()
            self._stage_timer = None
        self._db.stop()
        await asyncio.get_running_loop().run_in_executor(None, self._db.join)
        self._db.fail_leftovers()
        self._db = None

    @property
    def fault(self) -> StoreFull | None:
        return None if self._db is None else self._db.full

    def _run(
        self, op: Callable[[sqlite3.Connection], T], inline: bool = True, atomic: bool = False
    ) -> asyncio.Future[T]:
        """Run `op` with the connection: at once if the writer is idle (and `inline`), else queued.
        `atomic`: `op` only reads, or runs one statement."""
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db.submit(op, inline, atomic)

    def _enqueue(self, op: Callable[[sqlite3.Connection], object]) -> None:
        if self._db is None:
            raise RuntimeError("store is not open")
        self._db.enqueue(op)

    # Tasks

    async def put_task(self, task: Task) -> None:
        def op(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT created_at FROM tasks WHERE task_id = ?", (task.task_id,)).fetchone()
            if row is not None:
                task.created_at = row["created_at"]
            conn.execute(f"INSERT OR REPLACE INTO tasks ({_TASK_COLUMNS}) VALUES ({_marks(13)})", _task_row(task))

        await self._run(op)

    async def get_task(self, task_id: str) -> Task | None:
        def op(conn: sqlite3.Connection) -> Task | None:
            row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            return _task_from_row(row) if row else None

        return await self._run(op, atomic=True)

    async def list_tasks(self, prefix: str, limit: int, start_after: str) -> TaskPage:
        def op(conn: sqlite3.Connection) -> TaskPage:
            rows = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id > ? AND substr(task_id, 1, ?) = ? "
                "ORDER BY task_id LIMIT ?",
                (start_after, len(prefix), prefix, limit + 1),
            ).fetchall()
            tasks = [_task_from_row(r) for r in rows[:limit]]
            has_more = len(rows) > limit
            return TaskPage(tasks, has_more, tasks[-1].task_id if has_more else "")

        return await self._run(op, atomic=True)

    async def delete_task(self, task_id: str, cleanup_executions: bool) -> tuple[bool, int]:
        def op(conn: sqlite3.Connection) -> tuple[bool, int]:
            deleted = conn.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,)).rowcount > 0
            cleaned = 0
            if deleted and cleanup_executions:
                terminal = tuple(int(s) for s in Status if s.terminal)
                cleaned = conn.execute(
                    f"DELETE FROM executions WHERE task_id = ? AND status IN ({_marks(len(terminal))})",
                    (task_id, *terminal),
                ).rowcount
            return deleted, cleaned

        return await self._deleting(self._run(op))

    async def task_summaries(self, task_ids: list[str]) -> dict[str, TaskSummary]:
        self._write_staged()

        def op(conn: sqlite3.Connection) -> dict[str, TaskSummary]:
            out: dict[str, TaskSummary] = {}
            for task_id in task_ids:
                count = conn.execute("SELECT count(*) FROM executions WHERE task_id = ?", (task_id,)).fetchone()
                last = conn.execute(
                    "SELECT status FROM executions WHERE task_id = ? ORDER BY seq DESC LIMIT 1", (task_id,)
                ).fetchone()
                out[task_id] = TaskSummary(count[0], Status(last[0]) if last else Status.UNKNOWN)
            return out

        return await self._run(op, atomic=True)

    async def count_executions(self) -> int:
        # Staged records are not in the file yet; counting them beats writing them for a count.
        # Counted first: one written while the count waits in the queue is written after it.
        staged = len(self._staged)
        self._flush_behind()  # counted in the file
        rows = await self._run(
            lambda conn: int(conn.execute("SELECT count(*) FROM executions").fetchone()[0]), atomic=True
        )
        return rows + staged

    async def count_tasks(self) -> int:
        return await self._run(lambda conn: int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0]), atomic=True)

    # Executions

    def create_execution(self, record: ExecutionRecord) -> PendingWrite[ExecutionRecord | None]:
        loop = asyncio.get_running_loop()
        future: PendingWrite[ExecutionRecord | None] = PendingWrite(loop=loop)
        staged = self._staged_copy(record.execution_id)  # a stream's id reaches its client at once
        if staged is not None:
            future.set_result(staged)
            return future
        self._creating.append((record, future))
        if len(self._creating) == 1:
            # Creates that arrive in the same turn of the loop (concurrent accepts) are written
            # together: one transaction and one executemany instead of three statements each.
            loop.call_soon(self._create_together)
        return future

    def _create_together(self) -> None:
        waiting: list[tuple[ExecutionRecord, PendingWrite[ExecutionRecord | None]]] = []
        rows: list[tuple[Any, ...]] = []
        for record, future in self._creating:
            try:
                rows.append(_exec_row(record))
            except Exception as exc:  # a record that cannot be stored fails alone
                future.set_exception(exc)
                continue
            waiting.append((record, future))
        self._creating = []
        if not waiting:
            return

        def op(conn: sqlite3.Connection) -> list[ExecutionRecord | None]:
            if len(rows) > 1:
                conn.execute("SAVEPOINT creates")
                try:
                    conn.executemany(_INSERT, rows)
                    return [None] * len(rows)
                except sqlite3.IntegrityError:  # a taken id or key: the slow way, one by one
                    conn.execute("ROLLBACK TO creates")
                finally:
                    conn.execute("RELEASE creates")
            return [_create_one(conn, record, row) for (record, _), row in zip(waiting, rows, strict=True)]

        futures: list[asyncio.Future[Any]] = [future for _, future in waiting]
        try:
            if self._db is None:
                raise RuntimeError("store is not open")
            self._db.submit_each(op, futures)
        except Exception as exc:  # called by the loop: each waiter must learn it, or wait for ever
            _Each(futures).set_exception(exc)

    def queue_insert(self, record: ExecutionRecord) -> None:
        self._staged[record.execution_id] = (record, time.monotonic() + STAGE_S)
        if self._stage_timer is None:
            self._stage_timer = asyncio.get_running_loop().call_later(STAGE_S, self._write_due)

    def _write_due(self) -> None:
        """Write the records staged for STAGE_S (the oldest are first in the dict), as they are now."""
        self._stage_timer = None
        now = time.monotonic()
        while self._staged:
            execution_id, (record, due) = next(iter(self._staged.items()))
            if due > now:
                self._stage_timer = asyncio.get_running_loop().call_later(due - now, self._write_due)
                return
            del self._staged[execution_id]
            self._write(record)

    def _write_staged(self) -> None:
        """Write every staged record now, as it is now, after the final records of this turn: a
        read of the file queued after this sees them all."""
        self._flush_behind()
        for record, _ in self._staged.values():
            self._write(record)
        self._staged.clear()

    def _write(self, staged: ExecutionRecord) -> None:
        self._enqueue(_insert_op(_exec_row(_unended(staged))))

    def _staged_copy(self, execution_id: str) -> ExecutionRecord | None:
        """A staged record as it is now, for a reader: the record goes on changing as it runs."""
        staged = self._staged.get(execution_id)
        return None if staged is None else _copy(_unended(staged[0]))

    def _keep_finished(self, record: ExecutionRecord, size: int) -> None:
        """`size`: what the record takes in the file (parameters, metadata and output alike)."""
        if size > FINISHED_KEPT_MAX_BYTES:
            return
        kept = self._finished
        again = kept.pop(record.execution_id, None)  # read by several at once
        if again is not None:
            self._finished_bytes -= again[1]
        while kept and (len(kept) >= FINISHED_KEPT or self._finished_bytes + size > FINISHED_KEPT_BYTES):
            self._finished_bytes -= kept.pop(next(iter(kept)))[1]
        kept[record.execution_id] = (record, size)
        self._finished_bytes += size

    async def _deleting(self, deletion: asyncio.Future[T]) -> T:
        try:
            return await deletion
        finally:
            # Only now: a read queued before the deletion resumes first, and may have kept a
            # record the deletion then removed.
            self._finished.clear()
            self._finished_bytes = 0

    def _transition_op(self, record: ExecutionRecord) -> Callable[[sqlite3.Connection], bool]:
        sql, allowed = _TRANSITIONS[record.status]
        row = (*_progress_row(record), record.execution_id, *allowed)  # now: the record may change

        def op(conn: sqlite3.Connection) -> bool:
            if not allowed:
                return False
            if conn.execute(sql, row).rowcount > 0:
                return True
            # A final write for a record that is not there: its first write was lost (a full disk
            # refused the staged insert of a sync call). Written whole now; a final record no
            # longer changes, so reading it on this thread is safe.
            if record.done and conn.execute(_EXISTS, (record.execution_id,)).fetchone() is None:
                conn.execute(_INSERT, _exec_row(record))
                return True
            return False

        return op

    async def transition(self, record: ExecutionRecord) -> bool:
        if record.execution_id in self._behind:
            return False  # ended already: no transition leaves a final status
        if self._staged.pop(record.execution_id, None) is not None:
            # Never written, so nothing stored can have moved on. A sync call with a fresh id: its
            # caller gets the record in the answer, which need not wait for the write.
            if record.done:
                self._end_behind(record)
                return True
            await self._run(_insert_op(_exec_row(record)), atomic=True)
            return True
        return await self._run(self._transition_op(record), atomic=True)

    def _end_behind(self, record: ExecutionRecord) -> None:
        if self._db is None:
            raise RuntimeError("store is not open")
        self._behind[record.execution_id] = record
        self._ending.append((record.execution_id, _exec_row(record)))  # as it is now
        if len(self._ending) == 1:
            # After this turn's answers: the records that end in it share one hand-off to the
            # writer thread and one statement.
            asyncio.get_running_loop().call_soon(self._flush_behind)

    def _flush_behind(self) -> None:
        ending, self._ending = self._ending, []
        if not ending or self._db is None:
            return
        rows = [row for _, row in ending]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT, rows)

        def done(future: asyncio.Future[None]) -> None:
            exc = future.exception()
            if exc is None or isinstance(exc, sqlite3.IntegrityError):  # stored, or never storable
                if exc is not None:
                    log.error("%d final records were not stored: %s", len(ending), exc)
                for execution_id, _ in ending:
                    self._behind.pop(execution_id, None)
                return
            # A full disk (or the file locked): kept, and read from memory, until a write succeeds.
            log.error("%d final records could not be written yet (tried again): %s", len(ending), exc)
            if not self._ending:
                asyncio.get_running_loop().call_later(BEHIND_RETRY_S, self._flush_behind)
            self._ending.extend(ending)

        self._db.submit(op, inline=False).add_done_callback(done)

    def queue_transition(self, record: ExecutionRecord) -> None:
        staged = self._staged.get(record.execution_id)
        if staged is not None:
            self._staged[record.execution_id] = (record, staged[1])
            return
        self._enqueue(self._transition_op(record))

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        staged = self._staged_copy(execution_id)
        if staged is not None:
            return staged
        behind = self._behind.get(execution_id)
        if behind is not None:
            return _copy(behind)
        finished = self._finished.get(execution_id)
        if finished is not None:
            return _copy(finished[0])

        def op(conn: sqlite3.Connection) -> tuple[ExecutionRecord, int] | None:
            row = conn.execute(
                f"SELECT {_EXEC_COLUMNS} FROM executions WHERE execution_id = ?", (execution_id,)
            ).fetchone()
            if row is None:
                return None
            return _exec_from_row(row), sum(len(value) for value in row if isinstance(value, str | bytes))

        found = await self._run(op, atomic=True)
        if found is None:
            return None
        record, size = found
        if record.done:
            self._keep_finished(_copy(record), size)
        return record

    async def list_executions(
        self, task_id: str, status: Status, limit: int, start_after: str, max_bytes: int = 0, invocation_id: str = ""
    ) -> ExecutionPage:
        self._write_staged()

        def op(conn: sqlite3.Connection) -> ExecutionPage:
            where: list[str] = []
            args: list[Any] = []
            if invocation_id:
                where.append("invocation_id = ?")
                args.append(invocation_id)
            if task_id:
                where.append("task_id = ?")
                args.append(task_id)
            if status is not Status.UNKNOWN:
                where.append("status = ?")
                args.append(int(status))
                if status is not Status.COMPLETED:
                    where.append(_NOT_COMPLETED)
            if start_after:
                where.append("seq < (SELECT seq FROM executions WHERE execution_id = ?)")
                args.append(start_after)
            clause = f"WHERE {' AND '.join(where)}" if where else ""
            rows = conn.execute(
                f"SELECT {_EXEC_COLUMNS}, {_STORED_SIZE} FROM executions {clause} ORDER BY seq DESC LIMIT ?",
                (*args, limit + 1),
            )
            records: list[ExecutionRecord] = []
            read = 0
            for row in rows:  # one at a time: a page stops before it has read them all
                if len(records) == limit or (max_bytes and read >= max_bytes):
                    return ExecutionPage(records, True, records[-1].execution_id)
                records.append(_exec_from_row(row[:-1]))
                read += row[-1]
            return ExecutionPage(records, False, "")

        return await self._run(op, atomic=True)

    async def cached_result(self, cache_key: str, since_ms: int) -> ExecutionRecord | None:
        def op(conn: sqlite3.Connection) -> ExecutionRecord | None:
            row = conn.execute(
                f"SELECT {_EXEC_COLUMNS} FROM executions WHERE cache_key = ? AND completed_at >= ? AND status = ? "
                "ORDER BY completed_at DESC LIMIT 1",
                (cache_key, since_ms, int(Status.COMPLETED)),
            ).fetchone()
            return _exec_from_row(row) if row else None

        return await self._run(op, atomic=True)

    async def expire(self, before_ms: int, keep: int) -> int:
        terminal = tuple(int(s) for s in Status if s.terminal)
        marks = _marks(len(terminal))

        def op(conn: sqlite3.Connection) -> int:
            removed = conn.execute(
                f"DELETE FROM executions WHERE status IN ({marks}) AND completed_at < ?", (*terminal, before_ms)
            ).rowcount
            removed += conn.execute(
                f"DELETE FROM executions WHERE status IN ({marks}) AND seq <= ("
                f"SELECT seq FROM executions WHERE status IN ({marks}) ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (*terminal, *terminal, keep),
            ).rowcount
            return removed

        return await self._deleting(self._run(op))

    async def unfinished(self) -> list[ExecutionRecord]:
        self._write_staged()

        def op(conn: sqlite3.Connection) -> list[ExecutionRecord]:
            rows = conn.execute(_SELECT_UNFINISHED).fetchall()
            return [_exec_from_row(r) for r in rows]

        return await self._run(op, atomic=True)

    async def stats(self, since_ms: int) -> Stats:
        self._write_staged()

        def op(conn: sqlite3.Connection) -> Stats:
            # One pass over the records (a scan: stats count everything), summed up here.
            stats = Stats()
            completed_ms = completed = 0
            for task_id, function_name, code, count, time_ms in conn.execute(
                "SELECT task_id, function_name, status, count(*), sum(execution_time_ms) FROM executions "
                "WHERE created_at >= ? GROUP BY task_id, function_name, status",
                (since_ms,),
            ):
                status = Status(code)
                stats.by_status[status] = stats.by_status.get(status, 0) + count
                stats.total += count
                key = f"{task_id}/{function_name}" if function_name else task_id
                stats.by_function[key] = stats.by_function.get(key, 0) + count
                stats.by_task[task_id] = stats.by_task.get(task_id, 0) + count
                if status is Status.COMPLETED:
                    completed, completed_ms = completed + count, completed_ms + time_ms
            stats.average_execution_time_ms = completed_ms / completed if completed else 0.0
            return stats

        return await self._read_aside(op)

    async def _read_aside(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """`op` on a read-only connection of its own, in a worker thread, once every write queued
        before is committed: a long read (stats scan every record: about 0.1 s for 100k) then holds
        neither the event loop nor the writer. WAL lets it read beside the writer."""
        await self._run(lambda conn: None, inline=False)
        if self._db is not None and self._db.exclusive:  # nobody else may open the file
            return await self._run(op, atomic=True)

        def read() -> T:
            with contextlib.closing(sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
                return op(conn)

        return await asyncio.to_thread(read)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version up to the current schema."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(executions)")}
    if columns and "cache_key" not in columns:
        conn.execute("ALTER TABLE executions ADD COLUMN cache_key TEXT NOT NULL DEFAULT ''")
    if columns and "invocation_id" not in columns:  # before issue 16: records without one
        conn.execute("ALTER TABLE executions ADD COLUMN invocation_id TEXT NOT NULL DEFAULT ''")
    for replaced in ("executions_status", "executions_created"):  # see _SCHEMA
        conn.execute(f"DROP INDEX IF EXISTS {replaced}")


def _create_one(conn: sqlite3.Connection, record: ExecutionRecord, row: tuple[Any, ...]) -> ExecutionRecord | None:
    """Insert a new record, or return the one that already has its id or idempotency key."""
    try:  # a fresh id and key, almost always: one statement
        conn.execute(_INSERT, row)
        return None
    except sqlite3.IntegrityError:
        found = conn.execute(
            f"SELECT {_EXEC_COLUMNS} FROM executions WHERE execution_id = ? "
            "OR (idempotency_key IS NOT NULL AND idempotency_key = ?)",
            (record.execution_id, record.idempotency_key),
        ).fetchone()
        if found is None:
            raise
        return _exec_from_row(found)


def _insert_op(row: tuple[Any, ...]) -> Callable[[sqlite3.Connection], None]:
    def op(conn: sqlite3.Connection) -> None:
        conn.execute(_INSERT, row)

    return op


def _marks(n: int) -> str:
    return ", ".join("?" * n)


# For each new status: the compare-and-set UPDATE, and the stored statuses it may follow.
_TRANSITIONS = {
    status: (
        f"UPDATE executions SET ({_PROGRESS_COLUMNS}) = ({_marks(14)}) "
        f"WHERE execution_id = ? AND status IN ({_marks(len(ALLOWED_FROM[status]))})",
        tuple(int(s) for s in ALLOWED_FROM[status]),
    )
    for status in ALLOWED_FROM
}
_SELECT_UNFINISHED = (
    f"SELECT {_EXEC_COLUMNS} FROM executions WHERE status IN ({Status.PENDING:d}, {Status.RUNNING:d}) "
    f"AND {_NOT_COMPLETED} ORDER BY seq"
)
_INSERT = f"INSERT INTO executions ({_EXEC_COLUMNS}) VALUES ({_marks(27)})"
_EXISTS = "SELECT 1 FROM executions WHERE execution_id = ?"
