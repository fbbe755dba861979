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
from spearlet.core.models import ALLOWED_FROM, ExecutionRecord, Mode, OutputKind, Status, Task
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

_CREATE = (
    """
-- KEYS: exec key, idempotency key ('' for none); ARGV 7-8: task_id, created_at
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGET', KEYS[1], 'j') end
if KEYS[2] ~= '' then
  local other = redis.call('GET', KEYS[2])
  if other then
    local found = redis.call('HGET', 'spearlet:exec:' .. other, 'j')
    if found then return found end
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
else  -- stored ended (an answer from the result cache)
"""
    + _ENDED
    + """
end
return false
"""
)

_TRANSITION = (
    """
-- KEYS: exec key; ARGV 7...: the statuses it may follow
local current = redis.call('HGET', KEYS[1], 's')
if not current then return 0 end
local ok = false
for i = 7, #ARGV do if ARGV[i] == current then ok = true end end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'j', ARGV[1], 's', ARGV[2])
if tonumber(ARGV[2]) >= 3 then
  redis.call('SREM', 'spearlet:unfinished', ARGV[3])
"""
    + _ENDED
    + """
end
return 1
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

    @_reaches
    async def get_task(self, task_id: str) -> Task | None:
        raw = await self.redis.hget(TASKS, task_id)
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
        found = await self._create(
            keys=[_exec_key(record.execution_id), idem],
            args=[record_json(record), int(record.status), record.execution_id, self.retention_ms, record.cache_key,
                  record.completed_at, record.task_id, record.created_at],
        )  # fmt: skip
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
        changed = await self._transition(
            keys=[_exec_key(record.execution_id)],
            args=[text, int(record.status), record.execution_id, self.retention_ms, record.cache_key,
                  record.completed_at, *allowed],
        )  # fmt: skip
        return bool(changed)

    @_reaches
    async def transition(self, record: ExecutionRecord) -> bool:
        await self._drain()
        return await self._apply(record, record_json(record))

    def queue_transition(self, record: ExecutionRecord) -> None:
        snapshot = dataclasses.replace(record, metrics=dict(record.metrics))
        text = record_json(snapshot)

        async def write() -> None:
            await self._apply(snapshot, text)

        self._enqueue(write)

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
