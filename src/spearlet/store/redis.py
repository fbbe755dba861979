"""The cluster store: tasks and execution records in Redis, shared by every node.

An execution is a hash (`j` the record as JSON, `s` its status, `q` its sequence number) with
sorted-set indexes by sequence (all, per task) and by creation time. Creation and every status
change run as Lua scripts, so the forward-only rule and idempotency keys hold across nodes.
Terminal records expire after the retention; indexes drop expired ids lazily.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from spearlet.core.errors import StoreUnavailable
from spearlet.core.models import ALLOWED_FROM, ExecutionRecord, Mode, OutputKind, Status, Task, now_ms
from spearlet.core.queries import ExecutionPage, Stats, TaskPage, TaskSummary
from spearlet.core.values import dump_params, load_params
from spearlet.store.base import PendingWrite, Store, pending_write, stats_of

P = "spearlet:"
P_ = ParamSpec("P_")
T = TypeVar("T")
log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 2.0
CALL_TIMEOUT_S = 5.0  # above the cluster's 0.5 s blocking stream reads
TASKS = P + "tasks"
EXECS = P + "execs"
BY_TIME = P + "execs-by-time"
UNFINISHED = P + "unfinished"
TASK_CHANGES = P + "task-changed"  # channel: the id of each task put or deleted
WORK = P + "work"  # channel: an async execution was queued that its accepting node did not start
# How long a cached task serves without a word of its change: a bound, should a change be missed.
TASK_CACHE_S = 2.0
# redis-py's default; its default pool refuses an operation beyond them (200 concurrent accepts).
MAX_CONNECTIONS = 100

# Both scripts take ARGV 1-6: json, status, id, retention ms, cache key ('' for none), completed_at.
# A record that has ended expires after the retention; a success is found by its cache key.
_ENDED = """
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  if ARGV[5] ~= '' and ARGV[2] == '3' then
    redis.call('ZADD', 'spearlet:cache:' .. ARGV[5], ARGV[6], ARGV[3])
    redis.call('PEXPIRE', 'spearlet:cache:' .. ARGV[5], ARGV[4])
  end
"""

# Starting the execution of a stream entry this node read: start(stream, group, node, now ms,
# entry id, execution id, out). The entry of a record gone or ended is acknowledged and deleted
# ({entry} in out); a pending record becomes RUNNING here (one more attempt, this node, its start
# time) and is returned as it was stored, with its task ({entry, record, task}); a running one is
# returned unchanged.
_START_ENTRY = """
local function start(stream, group, node, now, entry, id, out)
  local key = 'spearlet:exec:' .. id
  local row = redis.call('HMGET', key, 'j', 's')
  local status = tonumber(row[2])
  if not row[1] or not status or status >= 3 then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    out[#out + 1] = {entry}
    return
  end
  local record = cjson.decode(row[1])
  local task = redis.call('HGET', 'spearlet:tasks', record['task_id']) or ''
  if status == 1 then
    record['status'] = 2
    record['attempts'] = record['attempts'] + 1
    record['node'] = node
    if record['started_at'] == 0 then record['started_at'] = tonumber(now) end
    redis.call('HSET', key, 'j', cjson.encode(record), 's', 2)
  end
  out[#out + 1] = {entry, row[1], task}
end
"""

_CREATE = (
    _START_ENTRY
    + """
-- KEYS: exec key, idempotency key ('' for none), dispatch stream ('' for none: the new record is
-- queued there in the same step); ARGV 7-8: task_id, created_at; ARGV 9-12 (with a stream): group,
-- node id, now (ms), how many entries the accepting node may start now (read and started here,
-- the oldest first). Returns {the existing record's JSON, or '' once stored; started entries}.
local started = {}
if redis.call('EXISTS', KEYS[1]) == 1 then return {redis.call('HGET', KEYS[1], 'j'), started} end
if KEYS[2] ~= '' then
  local other = redis.call('GET', KEYS[2])
  if other then
    local found = redis.call('HGET', 'spearlet:exec:' .. other, 'j')
    if found then return {found, started} end
  end
  redis.call('SET', KEYS[2], ARGV[3])
end
local seq = redis.call('INCR', 'spearlet:seq')
redis.call('HSET', KEYS[1], 'j', ARGV[1], 's', ARGV[2], 'q', seq)
redis.call('ZADD', 'spearlet:execs', seq, ARGV[3])
redis.call('ZADD', 'spearlet:task-execs:' .. ARGV[7], seq, ARGV[3])
redis.call('ZADD', 'spearlet:execs-by-time', ARGV[8], ARGV[3])
if tonumber(ARGV[2]) <= 2 then
  redis.call('SADD', 'spearlet:unfinished', ARGV[3])
  if KEYS[3] ~= '' then
    local queued, taken = redis.call('XADD', KEYS[3], '*', 'id', ARGV[3]), false
    if tonumber(ARGV[12]) > 0 then
      -- pcall: a script stops at an error with its writes kept (a Redis that came back empty has
      -- no group until a node's reader makes it again): the record is stored and queued all the same.
      local got = redis.pcall('XREADGROUP', 'GROUP', ARGV[9], ARGV[10], 'COUNT', ARGV[12], 'STREAMS', KEYS[3], '>')
      if got and not got['err'] then
        for _, e in ipairs(got[1][2]) do
          start(KEYS[3], ARGV[9], ARGV[10], ARGV[11], e[1], e[2][2], started)
          taken = taken or e[1] == queued
        end
      end
    end
    if not taken then redis.call('PUBLISH', 'spearlet:work', '') end  -- left for a node with room
  end
else  -- stored ended (an answer from the result cache)
"""
    + _ENDED
    + """
end
return {'', started}
"""
)

_TRANSITION = (
    _START_ENTRY
    + """
-- KEYS: exec key, dispatch stream ('' for none). ARGV 7: the stream entry of an execution that
-- ended here ('' for none), acknowledged and deleted whether or not the change applies (its work is
-- over); ARGV 8-11: consumer group, node id, now (ms), how many more entries this node may start
-- as this one ends (read and started here: the end of one execution takes the next);
-- ARGV 12...: the statuses it may follow. Returns {changed (0 or 1), started entries}.
local started = {}
if ARGV[7] ~= '' then
  redis.pcall('XACK', KEYS[2], ARGV[8], ARGV[7])
  redis.call('XDEL', KEYS[2], ARGV[7])
  if tonumber(ARGV[11]) > 0 then
    local got = redis.pcall('XREADGROUP', 'GROUP', ARGV[8], ARGV[9], 'COUNT', ARGV[11], 'STREAMS', KEYS[2], '>')
    if got and not got['err'] then  -- pcall: as in the create script, the end is written regardless
      for _, e in ipairs(got[1][2]) do start(KEYS[2], ARGV[8], ARGV[9], ARGV[10], e[1], e[2][2], started) end
    end
  end
end
local current = redis.call('HGET', KEYS[1], 's')
if not current then return {0, started} end
local ok = false
for i = 12, #ARGV do if ARGV[i] == current then ok = true end end
if not ok then return {0, started} end
redis.call('HSET', KEYS[1], 'j', ARGV[1], 's', ARGV[2])
if tonumber(ARGV[2]) >= 3 then
  redis.call('SREM', 'spearlet:unfinished', ARGV[3])
"""
    + _ENDED
    + """
end
return {1, started}
"""
)

_TAKE = (
    _START_ENTRY
    + """
-- Read and start up to ARGV[4] entries for this node, in one step (the oldest first).
-- KEYS: dispatch stream; ARGV: group, node id, now (ms), count. Returns the entries as start
-- returns them.
local out = {}
local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[4], 'STREAMS', KEYS[1], '>')
if got then
  for _, e in ipairs(got[1][2]) do start(KEYS[1], ARGV[1], ARGV[2], ARGV[3], e[1], e[2][2], out) end
end
return out
"""
)


def _without_password(url: str) -> str:
    """The URL to name in messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))


def _exec_key(execution_id: str) -> str:
    return f"{P}exec:{execution_id}"


def record_json(record: ExecutionRecord) -> str:
    body = dataclasses.asdict(record)
    body["params"] = dump_params(record.params)
    body["output"] = base64.b64encode(record.output).decode("ascii")
    body["mode"], body["status"], body["output_kind"] = int(record.mode), int(record.status), int(record.output_kind)
    return json.dumps(body, separators=(",", ":"))


def record_from_json(text: str) -> ExecutionRecord:
    body = json.loads(text)
    body["params"] = load_params(body["params"])
    body["output"] = base64.b64decode(body["output"])
    body["mode"], body["status"] = Mode(body["mode"]), Status(body["status"])
    body["output_kind"] = OutputKind(body["output_kind"])
    return ExecutionRecord(**body)


def _reaches(method: Callable[P_, Coroutine[Any, Any, T]]) -> Callable[P_, Coroutine[Any, Any, T]]:
    """`method` inside `RedisStore.reaching` (its first argument is the store)."""

    @functools.wraps(method)
    async def wrapper(*args: P_.args, **kwargs: P_.kwargs) -> T:
        store = args[0]
        assert isinstance(store, RedisStore)
        with store.reaching():
            return await method(*args, **kwargs)

    return wrapper


class RedisStore(Store):
    def __init__(self, url: str, retention_ms: int = 24 * 3_600_000) -> None:
        self.url = url
        self.where = _without_password(url)
        self.retention_ms = retention_ms
        # Replies as str; typed Any, as redis-py types each reply as the union of every shape. A
        # blocking pool: past its connections an operation waits for one instead of failing.
        # Bounded: a call must never hang on a store that went away (redis-py would retry ten
        # times, backing off up to a second each); two quick retries cover a connection that a
        # restarted Redis closed.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            max_connections=MAX_CONNECTIONS,
            timeout=CALL_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=CALL_TIMEOUT_S,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.1, base=0.01), 2),
        )
        self.redis: Any = aioredis.Redis.from_pool(pool)
        self._create = self.redis.register_script(_CREATE)
        self._transition = self.redis.register_script(_TRANSITION)
        self._take = self.redis.register_script(_TAKE)
        # Cluster mode (set by the cluster): the stream and consumer group of async work. A new
        # async record is queued by the script that stores it; the final write of one started here
        # acknowledges its entry (`entries`: execution id -> stream entry) in the same step.
        self.dispatch = ""
        self.group = ""
        self.node = ""
        self.entries: dict[str, str] = {}
        # The script that stores an async record (take_room(False)), and the final write of an
        # execution started here (take_room(True): its own slot frees), read and start up to that
        # many entries (reserved by take_room until the reply), handed to on_taken with the id of
        # the record stored in the same step ('') and the count reserved, whatever the outcome.
        self.take_room: Callable[[bool], int] | None = None
        self.on_taken: Callable[[list[tuple[str, ExecutionRecord]], str, int], None] | None = None
        # Executions the start script marked RUNNING (id -> attempt): the scheduler's own RUNNING
        # write of that attempt would repeat it.
        self._started: dict[str, int] = {}
        # Tasks read together with the executions that need them, for the lookups that follow.
        self._task_hints: dict[str, str] = {}
        # Tasks as read (id -> (raw, when)), while someone listens to TASK_CHANGES for this store
        # (`watch_tasks`): a change drops its task at once, so a read costs no round trip.
        self._tasks: dict[str, tuple[str, float]] = {}
        self._tasks_watched = False
        self._task_changes = 0  # a read that a change overtook does not cache what it read
        # Queued writes run one after another, and every other operation waits for them, so that
        # a read after a queued write sees it (Redis orders per connection, a pool does not).
        self._chain: asyncio.Task[Any] | None = None
        self._fault: StoreUnavailable | None = None
        # time.monotonic() when the store was last reached again after an outage (the cluster
        # waits a lease after it before taking over anyone's work).
        self.back_at = 0.0

    @property
    def fault(self) -> StoreUnavailable | None:
        return self._fault

    @contextlib.contextmanager
    def reaching(self) -> Iterator[None]:
        """Redis calls inside: a lost connection becomes StoreUnavailable naming the store, and is
        remembered (health, new work refused at once) until a call gets through again."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            fault = StoreUnavailable(f"the store {self.where} is unreachable ({exc}): try again later or elsewhere")
            if self._fault is None:
                log.error("%s", fault)
            self._fault = fault
            raise fault from None
        if self._fault is not None:
            log.warning("the store %s is reachable again", self.where)
            self._fault = None
            self.back_at = time.monotonic()

    @_reaches
    async def open(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self._drain()
        await self.redis.aclose()

    async def _drain(self) -> None:
        while self._chain is not None and not self._chain.done():
            await asyncio.shield(self._chain)

    def _enqueue(self, write: Any) -> None:
        previous = self._chain

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                with self.reaching():
                    await write()
            except StoreUnavailable:
                pass  # reported once, as the store went away; the final write is awaited and held
            except Exception as exc:  # nobody waits for this write: say what went wrong here
                log.error("a queued store write failed: %s", exc)

        self._chain = asyncio.get_running_loop().create_task(run())

    # Tasks

    @_reaches
    async def put_task(self, task: Task) -> None:
        await self._drain()
        old = await self.redis.hget(TASKS, task.task_id)
        if old is not None:
            task.created_at = json.loads(old)["created_at"]
        await self.redis.hset(TASKS, task.task_id, json.dumps(dataclasses.asdict(task)))
        self.task_changed(task.task_id)
        await self.redis.publish(TASK_CHANGES, task.task_id)

    def watch_tasks(self, watched: bool) -> None:
        """Whether task changes are heard now (`task_changed` is called for each): tasks read are
        cached only while they are."""
        self._tasks_watched = watched
        self.task_changed(None)

    def task_changed(self, task_id: str | None) -> None:
        """A task was put or deleted (None: any may have been): its cached copy is stale."""
        self._task_changes += 1
        if task_id is None:
            self._tasks.clear()
            self._task_hints.clear()
        else:
            self._tasks.pop(task_id, None)
            self._task_hints.pop(task_id, None)

    def drop_task_hints(self) -> None:
        self._task_hints.clear()

    @_reaches
    async def get_task(self, task_id: str) -> Task | None:
        raw = self._task_hints.get(task_id)
        cached = self._tasks.get(task_id) if self._tasks_watched else None
        if raw is None and cached is not None and time.monotonic() - cached[1] < TASK_CACHE_S:
            raw = cached[0]
        if raw is None:
            changes = self._task_changes
            raw = await self.redis.hget(TASKS, task_id)
            if raw is not None and self._tasks_watched and changes == self._task_changes:
                self._tasks[task_id] = (raw, time.monotonic())
        return Task(**json.loads(raw)) if raw is not None else None

    @_reaches
    async def list_tasks(self, prefix: str, limit: int, start_after: str) -> TaskPage:
        keys = sorted(k for k in await self.redis.hkeys(TASKS))
        chosen = [k for k in keys if k.startswith(prefix) and k > start_after]
        page = chosen[:limit]
        tasks = [t for t in [await self.get_task(k) for k in page] if t is not None]
        has_more = len(chosen) > limit
        return TaskPage(tasks, has_more, page[-1] if has_more else "")

    @_reaches
    async def delete_task(self, task_id: str, cleanup_executions: bool) -> tuple[bool, int]:
        await self._drain()
        deleted = bool(await self.redis.hdel(TASKS, task_id))
        self.task_changed(task_id)
        await self.redis.publish(TASK_CHANGES, task_id)
        cleaned = 0
        if deleted and cleanup_executions:
            ids = await self.redis.zrange(f"{P}task-execs:{task_id}", 0, -1)
            for execution_id, record in zip(ids, await self._records(ids), strict=True):
                if record is not None and record.done:
                    await self._forget(execution_id, record)
                    cleaned += 1
        return deleted, cleaned

    @_reaches
    async def task_summaries(self, task_ids: list[str]) -> dict[str, TaskSummary]:
        out = {}
        for task_id in task_ids:
            index = f"{P}task-execs:{task_id}"
            last = await self.redis.zrevrange(index, 0, 0)
            status = await self.redis.hget(_exec_key(last[0]), "s") if last else None
            out[task_id] = TaskSummary(await self.redis.zcard(index), Status(int(status)) if status else Status.UNKNOWN)
        return out

    @_reaches
    async def count_tasks(self) -> int:
        return int(await self.redis.hlen(TASKS))

    # Executions

    def create_execution(self, record: ExecutionRecord) -> PendingWrite[ExecutionRecord | None]:
        return pending_write(self._create_execution(record))

    @_reaches
    async def _create_execution(self, record: ExecutionRecord) -> ExecutionRecord | None:
        await self._drain()
        return await self._insert(record)

    async def _insert(self, record: ExecutionRecord) -> ExecutionRecord | None:
        idem = f"{P}idem:{record.idempotency_key}" if record.idempotency_key else ""
        queue = self.dispatch if record.mode is Mode.ASYNC else ""
        take = self.take_room(False) if queue and self.take_room is not None else 0
        taken: list[tuple[str, ExecutionRecord]] = []
        try:
            found, started = await self._create(
                keys=[_exec_key(record.execution_id), idem, queue],
                args=[record_json(record), int(record.status), record.execution_id, self.retention_ms,
                      record.cache_key, record.completed_at, record.task_id, record.created_at, self.group, self.node,
                      now_ms(), take],
            )  # fmt: skip
            taken = self._started_rows(started)
        finally:
            if take and self.on_taken is not None:
                self.on_taken(taken, record.execution_id, take)
        return record_from_json(found) if found else None

    def queue_insert(self, record: ExecutionRecord) -> None:
        snapshot = dataclasses.replace(record, params=dict(record.params), metadata=dict(record.metadata))

        async def write() -> None:
            await self._insert(snapshot)

        self._enqueue(write)

    async def _apply(self, record: ExecutionRecord, text: str) -> bool:
        allowed = [str(int(s)) for s in ALLOWED_FROM[record.status]]
        if not allowed:
            return False
        entry = self.entries.get(record.execution_id, "") if record.done else ""
        take = self.take_room(True) if entry and self.take_room is not None else 0
        taken: list[tuple[str, ExecutionRecord]] = []
        try:
            changed, started = await self._transition(
                keys=[_exec_key(record.execution_id), self.dispatch],
                args=[text, int(record.status), record.execution_id, self.retention_ms, record.cache_key,
                      record.completed_at, entry, self.group, self.node, now_ms(), take, *allowed],
            )  # fmt: skip
            taken = self._started_rows(started)
        finally:
            if take and self.on_taken is not None:
                self.on_taken(taken, "", take)
        if entry:
            self.entries.pop(record.execution_id, None)
        if record.done:
            self._started.pop(record.execution_id, None)
        return bool(changed)

    @_reaches
    async def transition(self, record: ExecutionRecord) -> bool:
        await self._drain()
        return await self._apply(record, record_json(record))

    def queue_transition(self, record: ExecutionRecord) -> None:
        if record.status is Status.RUNNING and self._started.pop(record.execution_id, None) == record.attempts:
            return  # the start script wrote this start already
        snapshot = dataclasses.replace(record, metrics=dict(record.metrics))
        text = record_json(snapshot)

        async def write() -> None:
            await self._apply(snapshot, text)

        self._enqueue(write)

    @_reaches
    async def take_entries(self, node: str, count: int) -> tuple[list[tuple[str, ExecutionRecord]], int]:
        """Read and start up to `count` entries of the stream for `node`, in one step: each
        pending record becomes RUNNING there (its attempt, its start time) with its task read for
        the lookup that follows; entries of records gone or ended are acknowledged. Returns (entry
        id, record as stored before its start) to run, and how many entries were read."""
        await self._drain()
        rows = await self._take(keys=[self.dispatch], args=[self.group, node, now_ms(), count])
        self._task_hints.clear()
        return self._started_rows(rows), len(rows)

    def _started_rows(self, rows: list[list[str]]) -> list[tuple[str, ExecutionRecord]]:
        out = []
        for row in rows:
            if len(row) < 3:
                continue  # an entry of a record gone or ended: acknowledged by the script
            entry, raw, task = row
            record = record_from_json(raw)
            if record.status is Status.PENDING:
                self._started[record.execution_id] = record.attempts + 1
            if task:
                self._task_hints[record.task_id] = task
            out.append((entry, record))
        return out

    @_reaches
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        await self._drain()
        raw = await self.redis.hget(_exec_key(execution_id), "j")
        return record_from_json(raw) if raw is not None else None

    async def _raw_records(self, ids: list[str]) -> list[str | None]:
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for execution_id in ids:
                pipe.hget(_exec_key(execution_id), "j")
            raws: list[str | None] = await pipe.execute()
        return raws

    async def _records(self, ids: list[str]) -> list[ExecutionRecord | None]:
        return [record_from_json(raw) if raw is not None else None for raw in await self._raw_records(ids)]

    @_reaches
    async def list_executions(
        self, task_id: str, status: Status, limit: int, start_after: str, max_bytes: int = 0, invocation_id: str = ""
    ) -> ExecutionPage:
        await self._drain()
        index = f"{P}task-execs:{task_id}" if task_id else EXECS
        top: str = "+inf"
        if start_after:
            score = await self.redis.zscore(index, start_after)
            if score is not None:
                top = f"({int(score)}"
        found: list[ExecutionRecord] = []
        size = limit  # of the page: smaller once its records reach max_bytes
        read = 0
        # Small batches under a byte budget: each record may be large.
        batch = 16 if max_bytes else max(limit * 2, 50)
        while len(found) <= size:
            rows = await self.redis.zrevrangebyscore(index, top, "-inf", start=0, num=batch, withscores=True)
            if not rows:
                break
            ids = [raw for raw, _ in rows]
            for execution_id, raw in zip(ids, await self._raw_records(ids), strict=True):
                if raw is None:
                    await self.redis.zrem(index, execution_id)  # expired: drop from the index
                    continue
                record = record_from_json(raw)
                if status is not Status.UNKNOWN and record.status is not status:
                    continue
                if invocation_id and record.invocation_id != invocation_id:
                    continue
                found.append(record)  # one past the page says there is more
                if len(found) > size:
                    break
                read += len(raw)
                if max_bytes and read >= max_bytes:
                    size = len(found)
            top = f"({int(rows[-1][1])}"
        records = found[:size]
        has_more = len(found) > size
        return ExecutionPage(records, has_more, records[-1].execution_id if has_more else "")

    @_reaches
    async def unfinished(self) -> list[ExecutionRecord]:
        await self._drain()
        ids = list(await self.redis.smembers(UNFINISHED))
        async with self.redis.pipeline(transaction=False) as pipe:
            for execution_id in ids:
                pipe.hmget(_exec_key(execution_id), "j", "q")
            rows = await pipe.execute()
        # In the order they were stored: calls accepted in the same millisecond keep theirs.
        stored = sorted((int(seq), record_from_json(text)) for text, seq in rows if text is not None)
        return [record for _, record in stored if not record.done]

    @_reaches
    async def cached_result(self, cache_key: str, since_ms: int) -> ExecutionRecord | None:
        await self._drain()
        ids = await self.redis.zrevrangebyscore(f"{P}cache:{cache_key}", "+inf", since_ms, start=0, num=1)
        if not ids:
            return None
        record = await self.get_execution(ids[0])
        return record if record is not None and record.status is Status.COMPLETED else None

    @_reaches
    async def expire(self, before_ms: int, keep: int) -> int:
        # Redis expires terminal records after the retention by itself; this applies a cutoff of
        # the caller's and the count, and drops the ids of records Redis expired from the indexes.
        await self._drain()
        removed = 0
        old = await self.redis.zrangebyscore(BY_TIME, "-inf", f"({before_ms}")  # completed after created
        for execution_id, record in zip(old, await self._records(old), strict=True):
            if record is None or (record.done and record.completed_at < before_ms):
                await self._forget(execution_id, record)
                removed += record is not None
        # All but the newest `keep` terminal records (an id without a record was one), oldest first.
        excess = int(await self.redis.zcard(EXECS)) - int(await self.redis.scard(UNFINISHED)) - keep
        after = "-inf"
        while excess > 0:
            rows = await self.redis.zrangebyscore(EXECS, after, "+inf", start=0, num=max(excess, 100), withscores=True)
            if not rows:
                break
            after = f"({int(rows[-1][1])}"
            ids = [execution_id for execution_id, _ in rows]
            for execution_id, record in zip(ids, await self._records(ids), strict=True):
                if excess > 0 and (record is None or record.done):
                    await self._forget(execution_id, record)
                    removed += record is not None
                    excess -= 1
        return removed

    async def _forget(self, execution_id: str, record: ExecutionRecord | None) -> None:
        """Delete a record and its index entries (of a record Redis expired, what is left)."""
        await self.redis.delete(_exec_key(execution_id))
        await self.redis.zrem(EXECS, execution_id)
        await self.redis.zrem(BY_TIME, execution_id)
        if record is not None:
            await self.redis.zrem(f"{P}task-execs:{record.task_id}", execution_id)

    @_reaches
    async def stats(self, since_ms: int) -> Stats:
        await self._drain()
        ids = [raw for raw in await self.redis.zrangebyscore(BY_TIME, since_ms, "+inf")]
        return stats_of(record for record in await self._records(ids) if record is not None)
