"""The Invoker: one path for every invocation, whatever the transport.

validate -> resolve the task -> store the record durably -> hand it to the scheduler ->
wait for it (SYNC, up to max_sync_wait) or answer at once (ASYNC) with the status endpoint and an
estimate measured on this node. A stream follows it chunk by chunk; watch, status and cancel act on
one execution. Everything else done with what the node holds is Management's (management.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from spearlet.config import Settings
from spearlet.core.background import Background
from spearlet.core.codes import ErrorCode
from spearlet.core.errors import InvalidArgument, NotFound
from spearlet.core.ids import (
    check_client_execution_id,
    check_client_id,
    execution_of_own_instance,
    new_execution_id,
)
from spearlet.core.lifecycle import Event, Lifecycle, Update
from spearlet.core.models import ArtifactSpec, ExecutionRecord, Mode, Status, Task, now_ms
from spearlet.core.values import check_string_map, dump_params
from spearlet.engine.registry import TaskRegistry
from spearlet.engine.scheduler import Scheduler
from spearlet.store.base import Store

MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
WATCH_POLL_S = 0.25
# How long a cancel waits for the execution to end before it answers that it is stopping.
CANCEL_WAIT_S = 5.0
IDEMPOTENCY_KEY = "idempotency_key"


def cache_key(task: Task, function_name: str, params: dict[str, Any]) -> str:
    """Identical calls (same task code, function and parameters) share a key."""
    text = dump_params({"t": task.task_id, "d": task.digest, "f": function_name, "p": params})
    return hashlib.sha256(text.encode()).hexdigest()


class Dispatch(Protocol):
    """How a cluster shares work (cluster.Cluster); without one, everything runs on this node.
    An async execution needs no hand-over: the cluster's store queues it with its record, in the
    same step, so that no record is ever stored but not queued."""

    def run_here(self, record: ExecutionRecord) -> None: ...

    async def cancel_elsewhere(self, execution_id: str, force: bool, reason: str) -> None: ...


class InvocationType:
    NEW_TASK = 1
    EXISTING_TASK = 2


@dataclass(slots=True)
class InvokeRequest:
    """An invocation as the transports hand it over (the fields of InvokeFunctionRequest)."""

    invocation_type: int
    mode: Mode = Mode.SYNC
    task_id: str = ""
    task_name: str = ""
    task_description: str = ""
    artifact: ArtifactSpec | None = None
    function_name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    params_bytes: int = 0  # their size on the wire, as the transport measured it
    execution_id: str = ""
    timeout_ms: int = 0
    max_retries: int = 0
    environment: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    create_if_not_exists: bool = False
    force_new_instance: bool = False
    invocation_id: str = ""  # SPEAR's InvokeRequest groups executions under it


@dataclass(slots=True)
class InvokeResult:
    record: ExecutionRecord
    status_endpoint: str = ""
    estimated_completion_ms: int = 0
    message: str = ""


@dataclass(slots=True)
class CancelResult:
    success: bool
    message: str
    status: Status


class Invoker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        tasks: TaskRegistry,
        scheduler: Scheduler,
        lifecycle: Lifecycle,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tasks = tasks
        self.scheduler = scheduler
        self.lifecycle = lifecycle
        # Admission checks (middleware): each may refuse a new execution with InvalidArgument.
        self.checks: list[Callable[[ExecutionRecord], None]] = []
        self.dispatch: Dispatch | None = None
        self._background = Background()

    async def close(self) -> None:
        """Let the work started for callers that went away reach the store."""
        await self._background.wait()

    # Invocation

    async def invoke(self, req: InvokeRequest) -> InvokeResult:
        if req.mode is Mode.STREAM:
            raise InvalidArgument("execution_mode STREAM is served by the StreamFunction RPC, not InvokeFunction")
        self._check_size(req)
        task = await self._resolve_task(req)
        record = self._new_record(req, task)
        cached = await self._from_cache(record, task)
        if cached is not None:
            return cached
        existing = await self._store_new(record, task, durable=req.mode is Mode.ASYNC or bool(req.execution_id))
        if existing is not None:
            return await self._answer(existing, req.mode, "an execution with this id or idempotency key exists")
        if req.mode is Mode.ASYNC:
            estimate, record.metrics["estimate"] = self._estimate(task, record.function_name)
            if self.dispatch is not None:  # a cluster: queued with its record; whichever node has room runs it
                self.lifecycle.publish(Event.ACCEPTED, record)
            else:
                self._start(record, task)
            return InvokeResult(record, self.status_endpoint(record.execution_id), estimate, "accepted")
        waiter = self.lifecycle.waiter(record.execution_id)
        self._start(record, task)
        return await self._wait(record, waiter)

    async def stream(self, req: InvokeRequest) -> AsyncGenerator[Update, None]:
        """Run an execution and follow it: its acceptance, each chunk of output, then the end.
        A consumer that stops listening before the end cancels the execution."""
        req.mode = Mode.STREAM
        self._check_size(req)
        task = await self._resolve_task(req)
        record = self._new_record(req, task)
        existing = await self._store_new(record, task, durable=bool(req.execution_id))
        if existing is not None:
            async for update in self.watch(existing.execution_id):
                yield update
            return
        updates = self.lifecycle.watch(record.execution_id)
        finished = False
        try:
            self._start(record, task)  # its ACCEPTED reaches `updates` first
            while not finished:
                update = await updates.get()
                finished = update.event is Event.FINISHED
                yield update
        finally:
            self.lifecycle.unwatch(record.execution_id, updates)
            if not finished:
                self.scheduler.request_stop(record.execution_id, True, "the streaming client went away")

    async def watch(self, execution_id: str) -> AsyncGenerator[Update, None]:
        """The execution's current state, then each change and chunk until it ends."""
        updates = self.lifecycle.watch(execution_id)  # before reading: nothing slips between
        try:
            record = await self.get(execution_id)
            if record is None:
                raise NotFound(f"execution {execution_id!r} not found")
            if record.done:
                yield Update(Event.FINISHED, execution_id, record.status, record=record)
                return
            current = Event.STARTED if record.status is Status.RUNNING else Event.ACCEPTED
            yield Update(current, execution_id, record.status, record=record)
            status = record.status
            while True:
                try:
                    update = await asyncio.wait_for(updates.get(), WATCH_POLL_S)
                except TimeoutError:
                    # Nothing heard here: the execution may run on another node; ask the store.
                    stored = await self.store.get_execution(execution_id)
                    if stored is None or stored.status is status:
                        continue
                    status = stored.status
                    kind = Event.FINISHED if stored.done else Event.STARTED
                    update = Update(kind, execution_id, status, record=stored if stored.done else None)
                yield update
                if update.event is Event.FINISHED:
                    return
        finally:
            self.lifecycle.unwatch(execution_id, updates)

    async def _store_new(self, record: ExecutionRecord, task: Task, durable: bool) -> ExecutionRecord | None:
        """Admit and store a new record; the existing one if its id or idempotency key is taken.
        `durable`: wait for the write (an async accept, or a client's own id that may exist)."""
        self.store.check_writable()
        if durable or record.idempotency_key:
            # Durable before the answer, and the only way to learn that the id exists already.
            with self.scheduler.admitting():
                return await self._create(record, task)
        self.scheduler.ensure_room()
        # A fresh id that cannot exist yet: the record is written while the call runs; the final
        # write, which follows it, is awaited before the answer.
        self.store.queue_insert(record)
        return None

    async def _create(self, record: ExecutionRecord, task: Task) -> ExecutionRecord | None:
        writing = self.store.create_execution(record)
        try:
            return await writing
        except asyncio.CancelledError:
            # The caller went away; the write cannot be called back, and the cancel reaches us
            # once it is done. A record it stored is accepted work all the same (an idempotent
            # retry will find it): it must not wait for the next start to run.
            if writing.done():
                self._orphaned(writing, record, task)
            raise

    def _orphaned(self, writing: asyncio.Future[ExecutionRecord | None], record: ExecutionRecord, task: Task) -> None:
        """Do for a stored record what its caller, gone, would have done next."""
        if writing.cancelled() or writing.exception() is not None or writing.result() is not None:
            return  # not stored, or an existing record that has a life of its own
        if record.done:  # answered from the result cache: listeners (callbacks, metrics) hear of it
            self.lifecycle.publish(Event.ACCEPTED, record)
            self.lifecycle.publish(Event.FINISHED, record)
        elif record.mode is Mode.STREAM:  # a stream's client leaving cancels it
            record.end(Status.CANCELLED, ErrorCode.CANCELLED, "the streaming client went away before it started")
            self._background.spawn(self.scheduler.settle(record))
        elif record.mode is Mode.ASYNC and self.dispatch is not None:
            self.lifecycle.publish(Event.ACCEPTED, record)  # queued with its record
        else:
            self._start(record, task)

    def _start(self, record: ExecutionRecord, task: Task) -> None:
        self.lifecycle.publish(Event.ACCEPTED, record)
        self.scheduler.submit(record, task)
        if self.dispatch is not None:
            self.dispatch.run_here(record)

    async def _from_cache(self, record: ExecutionRecord, task: Task) -> InvokeResult | None:
        """With the task's `cache_ttl_s`, answer an identical call from a recent success, recorded
        as its own COMPLETED execution so that its id serves status queries like any other."""
        ttl_s = task.settings.cache_ttl_s
        if not ttl_s:
            return None
        key = cache_key(task, record.function_name, record.params)
        hit = await self.store.cached_result(key, record.created_at - ttl_s * 1000)
        if hit is None:
            # Only an execution that runs is a source: an answer from the cache (stored without
            # the key) is not, else the TTL would never run out for calls that keep coming.
            record.cache_key = key
            return None
        record.status = Status.COMPLETED
        record.output, record.output_kind = hit.output, hit.output_kind
        record.execution_time_ms, record.memory_used_bytes = hit.execution_time_ms, hit.memory_used_bytes
        record.started_at = record.completed_at = now_ms()
        record.node = self.settings.node_id
        record.metrics.update({"cache_hit": "true", "cached_from": hit.execution_id})
        existing = await self._create(record, task)
        if existing is not None:
            return await self._answer(existing, record.mode, "an execution with this id or idempotency key exists")
        self.lifecycle.publish(Event.ACCEPTED, record)
        self.lifecycle.publish(Event.FINISHED, record)
        return InvokeResult(record, "", 0, "answered from the result cache")

    async def _answer(self, record: ExecutionRecord, mode: Mode, message: str) -> InvokeResult:
        if mode is Mode.ASYNC or record.done:
            endpoint = self.status_endpoint(record.execution_id) if mode is Mode.ASYNC else ""
            return InvokeResult(record, endpoint, 0, message)
        waiter = self.lifecycle.waiter(record.execution_id)
        if not self.scheduler.is_active(record.execution_id):
            # It may have finished between our read and the waiter: read again.
            self.lifecycle.drop_waiter(record.execution_id, waiter)
            fresh = await self.store.get_execution(record.execution_id)
            return InvokeResult(fresh or record, "", 0, message)
        return await self._wait(record, waiter)

    async def _wait(self, record: ExecutionRecord, waiter: asyncio.Future[ExecutionRecord]) -> InvokeResult:
        # The waiter is this caller's alone: the timeout may cancel it (cheaper than wait_for).
        try:
            async with asyncio.timeout(self.settings.max_sync_wait_s):
                final = await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # it ended in the same turn as the deadline
                return InvokeResult(waiter.result(), "", 0, "")
            self.lifecycle.drop_waiter(record.execution_id, waiter)
            current = await self.store.get_execution(record.execution_id) or record
            return InvokeResult(
                current,
                self.status_endpoint(record.execution_id),
                0,
                f"still running after max_sync_wait ({self.settings.max_sync_wait_s:g} s): follow the status endpoint",
            )
        except asyncio.CancelledError:
            self.lifecycle.drop_waiter(record.execution_id, waiter)
            raise
        return InvokeResult(final, "", 0, "")

    async def _resolve_task(self, req: InvokeRequest) -> Task:
        if req.invocation_type == InvocationType.NEW_TASK:
            name = req.task_name or req.task_id
            if not name:
                raise InvalidArgument("NEW_TASK needs task_name")
            if req.artifact is None:
                raise InvalidArgument("NEW_TASK needs artifact_spec")
            return await self.tasks.register(name, req.artifact, req.task_description)
        if req.invocation_type == InvocationType.EXISTING_TASK:
            if not req.task_id:
                raise InvalidArgument("EXISTING_TASK needs task_id")
            task = await self.tasks.resolve(req.task_id)
            if task is not None:
                return task
            if req.create_if_not_exists and req.artifact is not None:
                return await self.tasks.register(req.task_id, req.artifact, req.task_description)
            hint = (
                "" if req.create_if_not_exists else " (set create_if_not_exists with an artifact_spec to register it)"
            )
            raise NotFound(f"task {req.task_id!r} not found{hint}")
        raise InvalidArgument(
            f"invocation_type {req.invocation_type} is not valid: use NEW_TASK (1) or EXISTING_TASK (2)"
        )

    def _check_size(self, req: InvokeRequest) -> None:
        """What one call may carry, checked before anything is done for it (a NEW_TASK registers)."""
        s = self.settings
        if len(req.params) > s.max_parameters:
            raise InvalidArgument(f"{len(req.params)} parameters given, at most {s.max_parameters} allowed")
        if req.params_bytes > s.max_parameters_bytes:
            raise InvalidArgument(
                f"the parameters are {req.params_bytes} bytes, more than this node accepts "
                f"(max_parameters_bytes = {s.max_parameters_bytes})"
            )
        check_string_map(req.metadata, "invocation_metadata", s.max_metadata_bytes, "max_metadata_bytes")
        check_string_map(req.environment, "context.environment", s.max_environment_bytes, "max_environment_bytes")

    def _new_record(self, req: InvokeRequest, task: Task) -> ExecutionRecord:
        timeout_ms = req.timeout_ms or task.settings.timeout_ms or self.settings.default_timeout_ms
        if req.timeout_ms < 0 or timeout_ms > MAX_TIMEOUT_MS:
            raise InvalidArgument(f"context.timeout_ms must be between 0 and {MAX_TIMEOUT_MS}, got {req.timeout_ms}")
        max_retries = req.max_retries or task.settings.max_retries
        if not 0 <= max_retries <= self.settings.max_retries_cap:
            raise InvalidArgument(
                f"context.max_retries must be between 0 and {self.settings.max_retries_cap}, got {max_retries}"
            )
        execution_id = check_client_execution_id(req.execution_id) if req.execution_id else new_execution_id()
        invocation_id = check_client_id(req.invocation_id, "invocation_id") if req.invocation_id else ""
        key = req.metadata.get(IDEMPOTENCY_KEY) or None
        record = ExecutionRecord(
            execution_id=execution_id,
            task_id=task.task_id,
            function_name=req.function_name,
            mode=Mode.SYNC if req.mode is Mode.UNKNOWN else req.mode,
            params=req.params,
            timeout_ms=timeout_ms,
            max_retries=max_retries,
            environment=dict(req.environment),
            metadata=dict(req.metadata),
            idempotency_key=f"{task.task_id}:{key}" if key else None,
            force_new_instance=req.force_new_instance,
            created_at=now_ms(),
            invocation_id=invocation_id,
        )
        for check in self.checks:
            check(record)
        return record

    def _estimate(self, task: Task, function_name: str) -> tuple[int, str]:
        """Milliseconds until this new execution should complete, from this node's measurements."""
        mean = self.scheduler.recent_duration_ms(task.task_id, function_name)
        if mean is None:
            return 0, "no history for this function yet"
        queued, running = self.scheduler.queued_ahead(task.task_id)
        slots = min(self.scheduler.task_limit(task), self.settings.max_concurrency)
        waves = math.ceil(max(0, queued + running - slots + 1) / slots)
        return round(mean * (1 + waves)), f"mean of recent runs {mean:.0f} ms, {queued} queued ahead"

    def status_endpoint(self, execution_id: str) -> str:
        return f"{self.settings.public_url.rstrip('/')}/api/v1/executions/{execution_id}/status"

    # Queries and control

    async def get(self, execution_id: str) -> ExecutionRecord | None:
        if not execution_id:
            raise InvalidArgument("execution_id is required")
        held = self.scheduler.held(execution_id)  # ended while the store took no writes
        return held if held is not None else await self.store.get_execution(execution_id)

    async def cancel(self, execution_id: str, reason: str = "", force: bool = False) -> CancelResult:
        record = await self.get(execution_id)
        if record is None:
            # An answer, not an error, as GetExecutionStatus's found=false (and SPEAR's own tests).
            return CancelResult(False, f"execution {execution_id!r} not found", Status.UNKNOWN)
        if record.done:
            return CancelResult(False, f"execution already finished: {record.status.name}", record.status)
        waiter = self.lifecycle.waiter(execution_id)
        if not self.scheduler.request_stop(execution_id, force, reason):
            self.lifecycle.drop_waiter(execution_id, waiter)
            if self.dispatch is not None:
                return await self._cancel_elsewhere(execution_id, force, reason)
            fresh = await self.store.get_execution(execution_id)
            status = fresh.status if fresh else record.status
            return CancelResult(False, f"execution is not active on this node: {status.name}", status)
        try:
            final = await asyncio.wait_for(asyncio.shield(waiter), CANCEL_WAIT_S)
        except TimeoutError:
            self.lifecycle.drop_waiter(execution_id, waiter)
            return CancelResult(True, "cancel requested; the execution is stopping", Status.RUNNING)
        if final.status is Status.CANCELLED:
            return CancelResult(True, "cancelled", final.status)
        return CancelResult(False, f"execution finished first: {final.status.name}", final.status)

    async def destroy_instance(self, instance_id: str, reason: str) -> CancelResult:
        """Stop an instance: a Python worker of this node (its call in progress ends CANCELLED and
        the pool starts a fresh one when a call needs it), or the own instance of a process or wasm
        execution (that execution is cancelled, wherever in the cluster it runs). `status` is that
        of the execution for an own instance, else UNKNOWN."""
        if not instance_id:
            raise InvalidArgument("instance_id is required")
        execution_id = execution_of_own_instance(instance_id)
        if execution_id:
            record = await self.get(execution_id)
            if record is None:
                return CancelResult(False, f"instance {instance_id!r} not found", Status.UNKNOWN)
            if record.done:
                return CancelResult(False, f"instance {instance_id!r} has ended ({record.status.name})", record.status)
            return await self.cancel(execution_id, reason or "its instance was destroyed", force=True)
        if await self.scheduler.destroy_instance(instance_id, reason or "destroyed"):
            return CancelResult(True, f"instance {instance_id!r} destroyed", Status.UNKNOWN)
        return CancelResult(False, f"instance {instance_id!r} not found on this node", Status.UNKNOWN)

    async def _cancel_elsewhere(self, execution_id: str, force: bool, reason: str) -> CancelResult:
        assert self.dispatch is not None
        await self.dispatch.cancel_elsewhere(execution_id, force, reason)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while True:
            record = await self.store.get_execution(execution_id)
            if record is None or record.done or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if record is not None and record.status is Status.CANCELLED:
            return CancelResult(True, "cancelled", record.status)
        status = record.status if record else Status.UNKNOWN
        if record is not None and not record.done:
            return CancelResult(True, "cancel requested; the execution is stopping", status)
        return CancelResult(False, f"execution finished first: {status.name}", status)
