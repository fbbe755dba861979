"""Reports to the SMS of what this node runs: ExecutionRegistryService/ReportExecution and
InstanceRegistryService/ReportInstance.

They are made by listeners (the lifecycle's, for every execution whichever door it came through;
the pools', for kept instances), which only put a message in a bounded queue: a report never slows
or fails an invocation. One sender delivers them in order; one that cannot be delivered (the SMS is
away) is retried until it is; when the queue is full, new reports are dropped and counted. Every
live instance is reported again at least every `refresh_s` (the SMS counts one silent for 180 s
as stale).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from spearlet.core.ids import execution_of_own_instance, own_instance_id
from spearlet.core.lifecycle import Event
from spearlet.core.models import ExecutionRecord, Status, now_ms
from spearlet.runtimes.pool import InstanceEvent
from spearlet.sms import sms_pb2 as sms
from spearlet.sms import sms_pb2_grpc as sms_grpc

DEFAULT_ENTRY = "__spear_default_entry__"
# The SMS's numbering: the spearlet's CANCELLED (SPEAR's TERMINATED) is CANCELLED there too.
EXECUTION_STATUS = {
    Status.PENDING: sms.EXECUTION_STATUS_PENDING,
    Status.RUNNING: sms.EXECUTION_STATUS_RUNNING,
    Status.COMPLETED: sms.EXECUTION_STATUS_COMPLETED,
    Status.FAILED: sms.EXECUTION_STATUS_FAILED,
    Status.CANCELLED: sms.EXECUTION_STATUS_CANCELLED,
    Status.TIMEOUT: sms.EXECUTION_STATUS_TIMEOUT,
}
# Worth trying again: the SMS is away, busy or failing; anything else is its refusal of the report.
RETRIABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
SEND_TIMEOUT_S = 5.0
log = logging.getLogger(__name__)

Report = sms.Execution | sms.Instance


@dataclass(slots=True)
class _Live:
    """An instance the SMS is told of until it stops."""

    task_id: str
    created_at_ms: int
    status: int
    current_execution_id: str = ""
    runtime: str = ""


class Reporter:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_uuid: str,
        max_queued: int = 10_000,
        refresh_s: float = 30.0,
        retry_s: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self.node_uuid = node_uuid
        self._executions = sms_grpc.ExecutionRegistryServiceStub(channel)
        self._instances = sms_grpc.InstanceRegistryServiceStub(channel)
        self._queue: asyncio.Queue[Report] = asyncio.Queue(max_queued)
        self._refresh_s = refresh_s
        self._retry_s = retry_s
        self._live: dict[str, _Live] = {}
        self._last_ms = 0
        self.sent = 0
        self.dropped = 0
        self.rejected = 0
        self.delivering = True  # False while the SMS does not take reports
        self._sending = 0
        self._tasks: list[asyncio.Task[None]] = []
        # Told when a report is delivered after the SMS did not take them (the link's state).
        self.on_delivered: Callable[[], None] = lambda: None

    @property
    def queued(self) -> int:
        """Reports not delivered yet (the one being sent included)."""
        return self._queue.qsize() + self._sending

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._send_all()), loop.create_task(self._refresh())]

    async def close(self, flush_s: float = 1.0) -> None:
        """Stop sending, after a moment to deliver what is queued (the instances' last reports)."""
        if self._tasks and self.delivering:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), flush_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _stamp(self) -> int:
        """Now in ms, later than every report before it (the SMS keeps the newest)."""
        self._last_ms = max(now_ms(), self._last_ms + 1)
        return self._last_ms

    def _put(self, report: Report) -> None:
        try:
            self._queue.put_nowait(report)
        except asyncio.QueueFull:
            self.dropped += 1

    # --- listeners -------------------------------------------------------------------------------

    def on_event(self, event: Event, record: ExecutionRecord) -> None:
        """Lifecycle listener: RUNNING when an execution starts, its final status when it ends
        (with its own instance's reports for a run-once runtime)."""
        if event is Event.STARTED:
            self._put(self._execution(record, Status.RUNNING))
            instance = record.instance_id or own_instance_id(record.execution_id)
            if execution_of_own_instance(instance):
                self._live[instance] = _Live(record.task_id, now_ms(), sms.INSTANCE_STATUS_RUNNING, record.execution_id)
                self._put(self._instance(instance, self._live[instance]))
        elif event is Event.FINISHED:
            self._put(self._execution(record, record.status))
            instance = record.instance_id or own_instance_id(record.execution_id)
            # A kept instance outlives its call: the pool tells its own changes.
            live = self._live.pop(instance, None) if execution_of_own_instance(instance) else None
            if live is not None:
                live.status, live.current_execution_id = sms.INSTANCE_STATUS_TERMINATED, ""
                self._put(self._instance(instance, live))

    def on_instance(self, event: InstanceEvent, task_id: str, instance_id: str, execution_id: str) -> None:
        """Pool listener: a kept instance's start (IDLE), each call (RUNNING, then IDLE), its stop
        (TERMINATED)."""
        live = self._live.get(instance_id)
        if live is None:
            if event is InstanceEvent.STOPPED:
                return
            live = self._live[instance_id] = _Live(task_id, now_ms(), sms.INSTANCE_STATUS_IDLE)
        if event is InstanceEvent.BUSY:
            live.status, live.current_execution_id = sms.INSTANCE_STATUS_RUNNING, execution_id
        elif event is InstanceEvent.STOPPED:
            live.status, live.current_execution_id = sms.INSTANCE_STATUS_TERMINATED, ""
            del self._live[instance_id]
        else:
            live.status, live.current_execution_id = sms.INSTANCE_STATUS_IDLE, ""
        self._put(self._instance(instance_id, live))

    # --- messages --------------------------------------------------------------------------------

    def _execution(self, record: ExecutionRecord, status: Status) -> sms.Execution:
        metadata = {"mode": record.mode.name.lower()}
        if record.error_code:
            metadata["error_code"] = record.error_code
            metadata["error_message"] = record.error_message[:1000]
        return sms.Execution(
            execution_id=record.execution_id,
            # A call that came without one is an invocation of its own.
            invocation_id=record.invocation_id or record.execution_id,
            task_id=record.task_id,
            function_name=record.function_name or DEFAULT_ENTRY,
            node_uuid=self.node_uuid,
            instance_id=record.instance_id or own_instance_id(record.execution_id),
            status=EXECUTION_STATUS.get(status, sms.EXECUTION_STATUS_UNKNOWN),
            started_at_ms=record.started_at or record.created_at,
            completed_at_ms=record.completed_at if status.terminal else 0,
            metadata=metadata,
            updated_at_ms=self._stamp(),
        )

    def _instance(self, instance_id: str, live: _Live) -> sms.Instance:
        stamp = self._stamp()
        return sms.Instance(
            instance_id=instance_id,
            task_id=live.task_id,
            node_uuid=self.node_uuid,
            status=live.status,  # type: ignore[arg-type]
            created_at_ms=live.created_at_ms,
            updated_at_ms=stamp,
            last_seen_ms=stamp,
            current_execution_id=live.current_execution_id,
        )

    # --- delivery --------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            for instance_id, live in list(self._live.items()):
                self._put(self._instance(instance_id, live))

    async def _send_all(self) -> None:
        while True:
            report = await self._queue.get()
            self._sending = 1
            try:
                await self._deliver(report)
            finally:
                self._sending = 0
                self._queue.task_done()

    async def _deliver(self, report: Report) -> None:
        """Send one report, trying again (with backoff) until the SMS takes it or refuses it."""
        delay, most = self._retry_s
        while True:
            try:
                await self._send(report)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRIABLE:
                    self.rejected += 1
                    log.warning("the SMS refused a report (%s): %s", exc.code().name, exc.details())
                    return
                self.delivering = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, most)
                continue
            self.sent += 1
            if not self.delivering:
                self.delivering = True
                self.on_delivered()
            return

    async def _send(self, report: Report) -> Any:
        if isinstance(report, sms.Execution):
            return await self._executions.ReportExecution(report, timeout=SEND_TIMEOUT_S)
        return await self._instances.ReportInstance(report, timeout=SEND_TIMEOUT_S)
