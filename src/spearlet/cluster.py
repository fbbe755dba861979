"""Cluster mode: several nodes on one Redis share async work, answer for each other, and take over
what a dead node held.

- Async work goes through a Redis Stream with one consumer group; each node reads only as much as it
  has room for. An entry stays in the reader's pending list until its execution ends, and the reader
  keeps renewing it (XCLAIM resets its idle time) while it runs.
- Entries idle past the lease belonged to a node that died: any node claims them (XAUTOCLAIM), and
  reruns the execution if attempts remain, else ends it FAILED `NODE_LOST`.
- Sync and streaming calls run where they arrive; a node lists them under its heartbeat key, and
  the survivors end those of a node whose heartbeat stopped.
- A cancel for work held elsewhere is published; the node that holds it stops it.
- Redis may go away and come back. While it is away, new work is refused (UNAVAILABLE) and what ends
  is held by the scheduler; its stream entries stay this node's, renewed and acknowledged once the
  ends are written. After an outage no node reclaims anything for one lease: every live node first
  renews what it holds, so only the work of nodes that really died is taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Coroutine
from typing import Any

from redis.exceptions import ResponseError

from spearlet.config import Settings
from spearlet.core.background import Background
from spearlet.core.codes import ErrorCode
from spearlet.core.errors import StartError, StoreFault
from spearlet.core.lifecycle import Event, Lifecycle
from spearlet.core.models import ExecutionRecord, Mode, Status
from spearlet.engine.registry import TaskRegistry
from spearlet.engine.scheduler import Scheduler
from spearlet.store.redis import TASK_CHANGES, WORK, P, RedisStore

log = logging.getLogger(__name__)

STREAM = P + "dispatch"
GROUP = "spearlet"
CANCELS = P + "cancel"
NODES = P + "nodes"
WORK_POLL_S = 0.5  # an idle node reads the stream at least this often


class Cluster:
    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        scheduler: Scheduler,
        tasks: TaskRegistry,
        lifecycle: Lifecycle,
        lease_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.node = settings.node_id
        self.store = store
        self.redis = store.redis
        self.scheduler = scheduler
        self.tasks = tasks
        self.lifecycle = lifecycle
        self.lease_s = lease_s
        # Execution id -> stream entry id, for work read here: shared with the store, whose final
        # write of such an execution acknowledges its entry in the same step (and drops it here).
        store.dispatch, store.group, store.node = STREAM, GROUP, self.node  # queued as it is stored
        self._entries: dict[str, str] = store.entries
        # The final write of work that ends here starts the next entries in the same step.
        store.take_room, store.on_taken = self._take_room, self._taken
        self._incoming = 0  # entries started that way, not yet handed to the scheduler
        self._reserved = 0  # room promised to writes that may start entries, until they answer
        self._accepting: dict[str, tuple[str, ExecutionRecord]] = {}  # of those, ones not yet announced
        self._closing = False
        self._room = asyncio.Event()  # set as work ends here: the stream may be read again
        self._work = asyncio.Event()  # set on word of work queued that its accepting node left
        # Entries of work that ended here but whose end the store has not taken yet (it held no
        # writes, or the acknowledgement failed): still ours, renewed, acknowledged later.
        self._settling: dict[str, str] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._background = Background()
        # What a node refused this id is told about its holder.
        self._beat_value = f"host {socket.gethostname()}, pid {os.getpid()}"

    @property
    def _heartbeat(self) -> str:
        return f"{P}node:{self.node}"

    @property
    def _local(self) -> str:
        return f"{P}node-running:{self.node}"

    async def claim_id(self) -> None:
        """Take this node's id in the cluster (its heartbeat key), or StartError while a live node
        holds it. A holder that does not renew within its lease (a run of this node that just
        crashed) yields it: the key expires and is ours."""
        wait = self.lease_s + 1.0
        deadline = time.monotonic() + wait
        last_ttl: int | None = None
        while True:
            with self.store.reaching():
                if await self.redis.set(self._heartbeat, self._beat_value, nx=True, px=int(self.lease_s * 1000)):
                    return
                ttl = int(await self.redis.pttl(self._heartbeat))
                holder = await self.redis.get(self._heartbeat) or "unknown"
            renewed = last_ttl is not None and ttl > last_ttl
            if renewed or ttl == -1 or time.monotonic() > deadline:
                raise StartError(
                    f"node id {self.node!r} is held by a live node of the cluster ({holder}, heartbeat within "
                    f"lease_s={self.lease_s:g}): give this node another --node-id, or stop that one"
                )
            last_ttl = ttl
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        with self.store.reaching():
            await self._make_group()
            # What a previous run of this node ran locally cannot be resumed: its callers are gone.
            for raw in await self.redis.smembers(self._local):
                await self._end(raw, ErrorCode.NODE_RESTARTED, "the node restarted while it ran")
            await self.redis.delete(self._local)
            await self._beat()
        self.lifecycle.subscribe(self.on_event)
        for loop in (self._consume, self._renew, self._reclaim, self._listen):
            self._loops.append(asyncio.get_running_loop().create_task(loop()))

    async def _make_group(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: another node made it
            await self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)

    async def close(self) -> None:
        self._closing = True  # take nothing more: what this node takes now, it would not run
        for loop in self._loops:
            loop.cancel()
        # Bounded: a node must stop even if Redis stopped answering.
        if self._loops:
            await asyncio.wait(self._loops, timeout=2.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._background.wait(), 2.0)

    async def peers(self) -> list[dict[str, Any]]:
        """The nodes that joined the cluster and are not yet known lost: whether each one's
        heartbeat is live, and how many sync or streaming calls it runs (async work is in the stream)."""
        names = sorted(await self.redis.smembers(NODES))
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(f"{P}node:{name}")
                pipe.scard(f"{P}node-running:{name}")
            answers = await pipe.execute()
        return [
            {"node_id": name, "alive": bool(alive), "running_here": int(running), "self": name == self.node}
            for name, alive, running in zip(names, answers[::2], answers[1::2], strict=True)
        ]

    # Accepting and finishing work

    def run_here(self, record: ExecutionRecord) -> None:
        """A sync or streaming call runs on the node it reached; note it under our heartbeat."""
        self._background.spawn(self._quietly(self.redis.sadd(self._local, record.execution_id)))

    def on_event(self, event: Event, record: ExecutionRecord) -> None:
        if event is Event.ACCEPTED:
            taken = self._accepting.pop(record.execution_id, None)
            if taken is not None:
                self._background.spawn(self._quietly(self._run_incoming(*taken)))
            return
        if event is not Event.FINISHED:
            return
        self._room.set()
        entry = self._entries.pop(record.execution_id, None)
        if entry is not None:
            if self.scheduler.held(record.execution_id) is not None:
                self._settling[record.execution_id] = entry  # acknowledged once its end is written
            else:
                self._background.spawn(self._ack(record.execution_id, entry))
        elif record.mode is not Mode.ASYNC:
            self._background.spawn(self._quietly(self.redis.srem(self._local, record.execution_id)))

    async def _quietly(self, call: Coroutine[Any, Any, Any]) -> None:
        """A bookkeeping call that may fail while the store is away (reported by the store)."""
        with contextlib.suppress(StoreFault), self.store.reaching():
            await call

    async def _ack(self, execution_id: str, entry: str) -> None:
        try:
            with self.store.reaching():
                await self.redis.xack(STREAM, GROUP, entry)
                await self.redis.xdel(STREAM, entry)
        except StoreFault:
            self._settling[execution_id] = entry  # the renew loop tries again
        else:
            self._settling.pop(execution_id, None)

    async def _take(self, entry: str, execution_id: str, reclaimed: bool) -> None:
        record = await self.store.get_execution(execution_id)
        if record is None or record.done:
            await self._ack(execution_id, entry)
            return
        task = await self.tasks.find(record.task_id)
        if task is None:
            await self._end(execution_id, ErrorCode.TASK_DELETED, "the task was deleted before it ran")
            await self._ack(execution_id, entry)
            return
        if reclaimed and record.status is Status.RUNNING and record.attempts > record.max_retries:
            await self._end(execution_id, ErrorCode.NODE_LOST, f"the node running attempt {record.attempts} was lost")
            await self._ack(execution_id, entry)
            return
        self._entries[execution_id] = entry
        self.scheduler.submit(record, task)

    async def _take_some(self, room: int) -> bool:
        """Read and start up to `room` entries (one step in the store) and run them; False when
        the stream had none, after waiting (bounded) for a new one."""
        self._work.clear()  # before reading: work queued after the read wakes the wait below
        try:
            with self.store.reaching():
                started, read = await self.store.take_entries(self.node, room)
            await self._run_started(started)
        finally:
            self.store.drop_task_hints()
        if read:
            return True
        # Wait for word of work no node took as it was queued (no round trip; a blocked read would
        # also take its count even once this node had filled up meanwhile). Bounded: a word may be
        # missed while the listener reconnects.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), WORK_POLL_S)
        return False

    async def _run_started(self, started: list[tuple[str, ExecutionRecord]]) -> None:
        for entry, record in started:
            task = await self.tasks.find(record.task_id)  # read with it: no round trip of its own
            if task is None:
                await self._end(record.execution_id, ErrorCode.TASK_DELETED, "the task was deleted before it ran")
                await self._ack(record.execution_id, entry)
                continue
            self._entries[record.execution_id] = entry
            self.scheduler.submit(record, task)

    def _room_here(self) -> int:
        busy = self.scheduler.running_count + self.scheduler.pending_count + self._incoming + self._reserved
        return self.settings.max_concurrency - busy

    def _take_room(self, ending: bool) -> int:
        """How many entries a write may start here, reserved until its reply: an accept one (its
        own entry, or an older one), an execution's end as many as there is room (its slot included)."""
        room = 0 if self._closing else max(0, self._room_here() + ending)
        take = room if ending else min(room, 1)
        self._reserved += take
        return take

    def _taken(self, started: list[tuple[str, ExecutionRecord]], created: str, reserved: int) -> None:
        """Entries a write started here. The record it stored itself (`created`) runs once it is
        announced accepted (right after that write returns), so its STARTED follows its ACCEPTED."""
        self._reserved -= reserved
        for entry, record in started:
            self._incoming += 1
            if record.execution_id == created:
                self._accepting[created] = (entry, record)
            else:
                self._background.spawn(self._quietly(self._run_incoming(entry, record)))

    async def _run_incoming(self, entry: str, record: ExecutionRecord) -> None:
        try:
            await self._run_started([(entry, record)])
        finally:
            self._incoming -= 1

    async def _end(self, execution_id: str, code: ErrorCode, message: str) -> None:
        record = await self.store.get_execution(execution_id)
        if record is None or record.done:
            return
        record.end(Status.FAILED, code, message)
        await self.scheduler.settle(record)

    # Cancel across nodes

    async def cancel_elsewhere(self, execution_id: str, force: bool, reason: str) -> None:
        """Stop an execution this node does not hold: a queued one directly in the store (whoever
        reads it later acknowledges it), a running one by a message to every node."""
        record = await self.store.get_execution(execution_id)
        if record is None or record.done:
            return
        if record.status is Status.PENDING:
            record.end(
                Status.CANCELLED, ErrorCode.CANCELLED, f"cancelled before it started{': ' + reason if reason else ''}"
            )
            if await self.scheduler.settle(record):
                return
        message = json.dumps({"id": execution_id, "force": force, "reason": reason})
        with self.store.reaching():
            await self.redis.publish(CANCELS, message)

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                with self.store.reaching():
                    await pubsub.subscribe(CANCELS, TASK_CHANGES, WORK)
                self.store.watch_tasks(True)  # from now on every task change is heard
                while True:
                    with self.store.reaching():  # a timeout, not a block: the connection may die quietly
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    if message["channel"] == WORK:
                        self._work.set()
                        continue
                    if message["channel"] == TASK_CHANGES:
                        self.store.task_changed(message["data"])
                        continue
                    order: dict[str, Any] = json.loads(message["data"])
                    self.scheduler.request_stop(order["id"], bool(order.get("force")), str(order.get("reason", "")))
            except StoreFault:
                await asyncio.sleep(0.5)  # subscribe again once the store is back
            except Exception:
                log.exception("listening for cancels failed")
                await asyncio.sleep(0.5)
            finally:
                self.store.watch_tasks(False)  # changes may go unheard until subscribed again
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)

    # Loops

    async def _consume(self) -> None:
        while True:
            self._room.clear()  # before counting: an end after the count wakes the wait
            room = self._room_here()
            if room <= 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 0.1)
                continue
            try:
                await self._take_some(room)
            except StoreFault:
                await asyncio.sleep(0.5)  # reported by the store; try again
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._make_group()  # a Redis that came back empty
            except Exception:
                log.exception("reading the dispatch stream failed")
                await asyncio.sleep(0.5)

    async def _beat(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self._heartbeat, self._beat_value, px=int(self.lease_s * 1000))
            pipe.sadd(NODES, self.node)  # again each time: a Redis that came back empty forgot it
            await pipe.execute()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                with self.store.reaching():
                    await self._beat()
                    entries = [*self._entries.values(), *self._settling.values()]
                    if entries:
                        await self.redis.xclaim(STREAM, GROUP, self.node, 0, entries, justid=True)
                for execution_id, entry in list(self._settling.items()):
                    if self.scheduler.held(execution_id) is None:  # its end is written now
                        await self._ack(execution_id, entry)
            except StoreFault:
                pass  # reported by the store
            except Exception:
                log.exception("renewing the lease failed")

    async def _reclaim(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 2)
            if self.store.fault is not None or time.monotonic() < self.store.back_at + self.lease_s:
                continue  # away, or just back: every live node renews what it holds first
            try:
                with self.store.reaching():
                    await self._reclaim_once()
            except StoreFault:
                pass
            except Exception:
                log.exception("reclaiming lost work failed")

    async def _reclaim_once(self) -> None:
        start = "0-0"
        while True:
            result = await self.redis.xautoclaim(
                STREAM, GROUP, self.node, int(self.lease_s * 1000), start_id=start, count=100
            )
            start, entries = result[0], result[1]
            for entry, fields in entries:
                if fields is None:
                    continue
                execution_id = fields["id"]
                if execution_id in self._entries or execution_id in self._settling:
                    continue
                await self._take(entry, execution_id, reclaimed=True)
            if start == "0-0" or not entries:
                break
        for raw in await self.redis.smembers(NODES):
            node = raw
            if node == self.node or await self.redis.exists(f"{P}node:{node}"):
                continue
            for execution in await self.redis.smembers(f"{P}node-running:{node}"):
                await self._end(execution, ErrorCode.NODE_LOST, f"node {node!r} was lost while it ran")
            await self.redis.delete(f"{P}node-running:{node}")
            await self.redis.srem(NODES, node)
