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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from redis.exceptions import ResponseError

from spearlet.config import Settings
from spearlet.core.background import Background
from spearlet.core.lifecycle import Event, Lifecycle
from spearlet.core.models import ExecutionRecord, Mode, Status
from spearlet.core.tasks import TaskRegistry
from spearlet.scheduler import Scheduler
from spearlet.store.redis import P, RedisStore

log = logging.getLogger(__name__)

STREAM = P + "dispatch"
GROUP = "spearlet"
CANCELS = P + "cancel"
NODES = P + "nodes"


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
        self._entries: dict[str, str] = {}  # execution id -> stream entry id, for work read here
        self._loops: list[asyncio.Task[None]] = []
        self._background = Background()

    @property
    def _heartbeat(self) -> str:
        return f"{P}node:{self.node}"

    @property
    def _local(self) -> str:
        return f"{P}node-running:{self.node}"

    async def start(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: another node made it
            await self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        # What a previous run of this node ran locally cannot be resumed: its callers are gone.
        for raw in await self.redis.smembers(self._local):
            await self._end(raw, "NODE_RESTARTED", "the node restarted while it ran")
        await self.redis.delete(self._local)
        await self.redis.sadd(NODES, self.node)
        await self._beat()
        self.lifecycle.subscribe(self.on_event)
        for loop in (self._consume, self._renew, self._reclaim, self._listen):
            self._loops.append(asyncio.get_running_loop().create_task(loop()))

    async def close(self) -> None:
        for loop in self._loops:
            loop.cancel()
        # Bounded: a node must stop even if Redis stopped answering.
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

    async def enqueue(self, record: ExecutionRecord) -> None:
        """Hand an accepted async execution to the cluster (after its record is stored)."""
        await self.redis.xadd(STREAM, {"id": record.execution_id})

    def run_here(self, record: ExecutionRecord) -> None:
        """A sync or streaming call runs on the node it reached; note it under our heartbeat."""
        self._background.spawn(self._note_here(record.execution_id))

    def on_event(self, event: Event, record: ExecutionRecord) -> None:
        if event is not Event.FINISHED:
            return
        entry = self._entries.pop(record.execution_id, None)
        if entry is not None:
            self._background.spawn(self._ack(entry))
        elif record.mode is not Mode.ASYNC:
            self._background.spawn(self._forget_here(record.execution_id))

    async def _note_here(self, execution_id: str) -> None:
        await self.redis.sadd(self._local, execution_id)

    async def _forget_here(self, execution_id: str) -> None:
        await self.redis.srem(self._local, execution_id)

    async def _ack(self, entry: str) -> None:
        await self.redis.xack(STREAM, GROUP, entry)
        await self.redis.xdel(STREAM, entry)

    async def _take(self, entry: str, execution_id: str, reclaimed: bool) -> None:
        record = await self.store.get_execution(execution_id)
        if record is None or record.done:
            await self._ack(entry)
            return
        task = await self.tasks.find(record.task_id)
        if task is None:
            await self._end(execution_id, "TASK_DELETED", "the task was deleted before it ran")
            await self._ack(entry)
            return
        if reclaimed and record.status is Status.RUNNING and record.attempts > record.max_retries:
            await self._end(execution_id, "NODE_LOST", f"the node running attempt {record.attempts} was lost")
            await self._ack(entry)
            return
        self._entries[execution_id] = entry
        self.scheduler.submit(record, task)

    async def _end(self, execution_id: str, code: str, message: str) -> None:
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
            record.end(Status.CANCELLED, "CANCELLED", f"cancelled before it started{': ' + reason if reason else ''}")
            if await self.scheduler.settle(record):
                return
        message = json.dumps({"id": execution_id, "force": force, "reason": reason})
        await self.redis.publish(CANCELS, message)

    async def _listen(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(CANCELS)
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                order: dict[str, Any] = json.loads(message["data"])
                self.scheduler.request_stop(order["id"], bool(order.get("force")), str(order.get("reason", "")))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1.0)

    # Loops

    async def _consume(self) -> None:
        while True:
            room = self.settings.max_concurrency - self.scheduler.running_count - self.scheduler.pending_count
            if room <= 0:
                await asyncio.sleep(0.02)
                continue
            try:
                batches = await self.redis.xreadgroup(GROUP, self.node, {STREAM: ">"}, count=room, block=500)
            except Exception:
                log.exception("reading the dispatch stream failed")
                await asyncio.sleep(0.5)
                continue
            for _, entries in batches or []:
                for entry, fields in entries:
                    await self._take(entry, fields["id"], reclaimed=False)

    async def _beat(self) -> None:
        await self.redis.set(self._heartbeat, "1", px=int(self.lease_s * 1000))

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self._beat()
                entries = list(self._entries.values())
                if entries:
                    await self.redis.xclaim(STREAM, GROUP, self.node, 0, entries, justid=True)
            except Exception:
                log.exception("renewing the lease failed")

    async def _reclaim(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 2)
            try:
                await self._reclaim_once()
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
                if execution_id in self._entries:
                    continue
                await self._take(entry, execution_id, reclaimed=True)
            if start == "0-0" or not entries:
                break
        for raw in await self.redis.smembers(NODES):
            node = raw
            if node == self.node or await self.redis.exists(f"{P}node:{node}"):
                continue
            for execution in await self.redis.smembers(f"{P}node-running:{node}"):
                await self._end(execution, "NODE_LOST", f"node {node!r} was lost while it ran")
            await self.redis.delete(f"{P}node-running:{node}")
            await self.redis.srem(NODES, node)
