"""The API at the level of the wire messages, shared by both transports.

gRPC serves these methods as they are; the HTTP gateway parses JSON into the same request messages
(proto3 JSON mapping) and renders the same responses, so both speak one contract. Errors are
SpearletError subclasses; each transport maps them to its own codes.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from typing import TypeVar

import psutil
from google.protobuf.message import Message

from spearlet.api.grpc import convert
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.core.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from spearlet.core.lifecycle import Event, Update
from spearlet.core.models import ExecutionRecord, Status
from spearlet.core.queries import ExecutionPage
from spearlet.engine.invoker import Invoker
from spearlet.engine.management import Management
from spearlet.engine.registry import TaskRegistry

M = TypeVar("M", bound=Message)


class FunctionApi:
    """Each call of the API handed to the part of the engine that serves it: invocations to the
    invoker, tasks to the registry, the rest to management."""

    def __init__(
        self,
        invoker: Invoker,
        management: Management,
        tasks: TaskRegistry,
        *,
        node_id: str,
        max_streams: int,
        max_page_bytes: int,
        node_info: dict[str, str] | None = None,
    ) -> None:
        self.invoker = invoker
        self.management = management
        self.tasks = tasks
        self.node_id = node_id
        self.max_streams = max_streams
        self.max_page_bytes = max_page_bytes
        # What the node says of itself in health details beside its figures (its sandbox, say).
        self.node_info = node_info or {}
        # Figures that change, read at each health call (the SMS link's state, say).
        self.live_info: list[Callable[[], dict[str, str]]] = []
        self.open_streams = 0

    @contextlib.contextmanager
    def _stream_slot(self) -> Iterator[None]:
        """One of `max_streams` (StreamFunction, WatchExecution and their SSE forms together), held
        until the stream ends or its client leaves: an open stream holds a descriptor, a queue and
        a store poll, and thousands of them starve everything else."""
        limit = self.max_streams
        if self.open_streams >= limit:
            raise ResourceExhausted(f"{limit} streams and watches are open on this node (max_streams): retry later")
        self.open_streams += 1
        try:
            yield
        finally:
            self.open_streams -= 1

    async def invoke(self, request: pb.InvokeFunctionRequest) -> pb.InvokeFunctionResponse:
        outcome = await self.invoker.invoke(convert.invoke_request_from(request))
        record = outcome.record
        success = record.status is Status.COMPLETED or not record.done
        return pb.InvokeFunctionResponse(
            success=success,
            message=outcome.message or (record.error_message if not success else ""),
            execution_id=record.execution_id,
            task_id=record.task_id,
            instance_id=record.instance_id,
            result=convert.execution_result(record),
            status_endpoint=outcome.status_endpoint,
            estimated_completion_ms=outcome.estimated_completion_ms,
        )

    async def stream(self, request: pb.InvokeFunctionRequest) -> AsyncGenerator[pb.StreamExecutionResult, None]:
        """StreamFunction: the acceptance, each chunk as produced, then the final result. Leaving
        the iteration early (a client that disconnects) cancels the execution."""
        with self._stream_slot():
            updates = self.invoker.stream(convert.invoke_request_from(request, mode=pb.EXECUTION_MODE_STREAM))
            async for message in _stream_messages(updates):
                yield message

    async def watch(self, request: pb.WatchExecutionRequest) -> AsyncGenerator[pb.StreamExecutionResult, None]:
        with self._stream_slot():
            async for message in _stream_messages(self.invoker.watch(request.execution_id)):
                yield message

    async def record(self, execution_id: str) -> ExecutionRecord | None:
        """The execution's record as it stands (the HTTP gateway's plain JSON view of it)."""
        return await self.invoker.get(execution_id)

    async def status(self, request: pb.GetExecutionStatusRequest) -> pb.GetExecutionStatusResponse:
        record = await self.invoker.get(request.execution_id)
        if record is None:
            return pb.GetExecutionStatusResponse(found=False, message=f"execution {request.execution_id!r} not found")
        return pb.GetExecutionStatusResponse(
            found=True,
            result=convert.execution_result(record, include_result=request.include_result),
            logs=record.logs.splitlines() if request.include_logs else [],
            message=record.status.name,
        )

    async def cancel(self, request: pb.CancelExecutionRequest) -> pb.CancelExecutionResponse:
        result = await self.invoker.cancel(request.execution_id, request.reason, request.force)
        return pb.CancelExecutionResponse(
            success=result.success, message=result.message, final_status=convert.pb_status(result.status)
        )

    async def list_tasks(self, request: pb.ListTasksRequest) -> pb.ListTasksResponse:
        page = await self.tasks.list(request.prefix, request.limit, request.start_after)
        summaries = await self.management.task_summaries([t.task_id for t in page.tasks])
        infos, cut = self._fit(convert.task_info(t, summaries.get(t.task_id)) for t in page.tasks)
        if cut:
            return pb.ListTasksResponse(tasks=infos, has_more=True, next_start_after=infos[-1].task_id)
        return pb.ListTasksResponse(tasks=infos, has_more=page.has_more, next_start_after=page.next_start_after)

    def _fit(self, items: Iterable[M]) -> tuple[list[M], bool]:
        """The leading `items` that fit in `max_page_bytes` (at least one), built only as far as
        needed, and whether any was left out: a page of large tasks would take seconds to build and
        send, and pass a client's message limit. (Execution pages end in the store, which reads
        records one at a time.)"""
        budget = self.max_page_bytes
        kept: list[M] = []
        for item in items:
            budget -= item.ByteSize()
            if budget < 0 and kept:
                return kept, True
            kept.append(item)
        return kept, False

    async def get_task(self, request: pb.GetTaskRequest) -> pb.GetTaskResponse:
        task = await self.tasks.find(request.task_id) if request.task_id else None
        if task is None:
            return pb.GetTaskResponse(found=False, message=f"task {request.task_id!r} not found")
        summaries = await self.management.task_summaries([task.task_id])
        response = pb.GetTaskResponse(found=True, task=convert.task_info(task, summaries.get(task.task_id)))
        if request.include_executions:
            page = await self.management.list_executions(
                task.task_id, Status.UNKNOWN, request.execution_limit or 10, ""
            )
            response.executions.extend(convert.execution_info(r) for r in page.executions)
        return response

    async def delete_task(self, request: pb.DeleteTaskRequest) -> pb.DeleteTaskResponse:
        deleted, cleaned, message = await self.management.delete_task(
            request.task_id, request.force, request.cleanup_executions
        )
        return pb.DeleteTaskResponse(success=True, message=message, deleted=deleted, cleaned_executions=cleaned)

    async def register_task(self, request: pb.RegisterTaskRequest) -> pb.RegisterTaskResponse:
        tasks = self.tasks
        if not request.HasField("artifact_spec"):
            raise InvalidArgument("artifact_spec is required")
        exists = await tasks.find(request.task_name) is not None if request.task_name else False
        if exists and not request.replace:
            raise AlreadyExists(f"task {request.task_name!r} exists: set replace to update it")
        task = await tasks.register(
            request.task_name, convert.artifact_from(request.artifact_spec), request.task_description
        )
        return pb.RegisterTaskResponse(task=convert.task_info(task), created=not exists)

    async def list_executions(self, request: pb.ListExecutionsRequest, since_ms: int = 0) -> pb.ListExecutionsResponse:
        page = await self.execution_page(request, since_ms)
        return pb.ListExecutionsResponse(
            executions=[convert.execution_info(r) for r in page.executions],
            has_more=page.has_more,
            next_start_after=page.next_start_after,
        )

    async def execution_page(self, request: pb.ListExecutionsRequest, since_ms: int = 0) -> ExecutionPage:
        """A page of ListExecutions as records; with `since_ms` (HTTP only), of those created at or
        after it. Newest first, so the page ends at the first one created before it."""
        page = await self.management.list_executions(
            request.task_id, convert.status_from(request.status_filter), request.limit, request.start_after
        )
        if not since_ms:
            return page
        kept = list(itertools.takewhile(lambda r: r.created_at >= since_ms, page.executions))
        if len(kept) == len(page.executions):
            return page
        return ExecutionPage(kept, False, "")

    async def health(self, request: pb.GetHealthRequest) -> pb.GetHealthResponse:
        h = await self.management.health()
        response = pb.GetHealthResponse(status=h.status, message=h.message, uptime_seconds=h.uptime_seconds)
        if request.include_details:
            response.details.CopyFrom(
                pb.HealthDetails(
                    active_tasks=h.active_tasks,
                    running_executions=h.running,
                    pending_executions=h.pending,
                    total_memory_used=node_memory(),
                    total_executions=h.total_executions,
                    system_info={
                        "node": self.node_id,
                        "cpu_count": str(psutil.cpu_count() or 0),
                        "memory_total": str(psutil.virtual_memory().total),
                        **self.node_info,
                        **{k: v for info in self.live_info for k, v in info().items()},
                    },
                )
            )
        return response

    async def stats(self, request: pb.GetStatsRequest) -> pb.GetStatsResponse:
        stats = await self.management.stats(request.time_range_hours)
        total_tasks = await self.management.count_tasks()
        response = pb.GetStatsResponse(
            service_stats=pb.ServiceStats(
                uptime_seconds=self.management.uptime_seconds(),
                total_tasks=total_tasks,
                total_executions=stats.total,
                total_memory_used=node_memory(),
                cpu_usage_percent=psutil.cpu_percent(interval=None),
                memory_usage_percent=psutil.virtual_memory().percent,
            )
        )
        if request.include_task_stats:
            page = await self.tasks.list("", 1000, "")
            types: dict[str, int] = {}
            for task in page.tasks:
                types[task.artifact_type] = types.get(task.artifact_type, 0) + 1
            active = sum(1 for t in page.tasks if stats.by_task.get(t.task_id))
            by_id = {t.task_id: t for t in page.tasks}
            busiest = [t for t, _ in sorted(stats.by_task.items(), key=lambda kv: -kv[1]) if t in by_id][:5]
            # Each as ListTasks shows it: its count and last status over every retained record.
            summaries = await self.management.task_summaries(busiest)
            response.task_stats.CopyFrom(
                pb.TaskStats(
                    active_tasks=active,
                    idle_tasks=total_tasks - active,
                    tasks_by_type=types,
                    most_active_tasks=[convert.task_info(by_id[t], summaries.get(t)) for t in busiest],
                )
            )
        if request.include_execution_stats:
            completed = stats.by_status.get(Status.COMPLETED, 0)
            # A timeout is a failure of the call; a cancel is the caller's choice, and neither.
            failed = stats.by_status.get(Status.FAILED, 0) + stats.by_status.get(Status.TIMEOUT, 0)
            response.execution_stats.CopyFrom(
                pb.ExecutionStats(
                    running_executions=stats.by_status.get(Status.RUNNING, 0),
                    pending_executions=stats.by_status.get(Status.PENDING, 0),
                    completed_executions=completed,
                    failed_executions=failed,
                    average_execution_time_ms=stats.average_execution_time_ms,
                    success_rate_percent=100.0 * completed / (completed + failed) if completed + failed else 0.0,
                    executions_by_function=stats.by_function,
                )
            )
        return response


async def _stream_messages(updates: AsyncGenerator[Update, None]) -> AsyncGenerator[pb.StreamExecutionResult, None]:
    """Updates as StreamExecutionResults. The final one carries the result unless chunks already
    carried the output piece by piece."""
    chunked = False
    async with contextlib.aclosing(updates):
        async for update in updates:
            message = pb.StreamExecutionResult(
                execution_id=update.execution_id, status=convert.pb_status(update.status)
            )
            if update.event is Event.CHUNK:
                chunked = True
                packed = convert.pack_chunk(update.chunk)
                if packed is not None:
                    message.chunk_data.CopyFrom(packed)
            elif update.event is Event.FINISHED and update.record is not None:
                record = update.record
                message.is_final = True
                message.error_message = record.error_message
                message.metadata.update(convert.record_metrics(record))
                if record.error_code:
                    message.metadata["error_code"] = record.error_code
                packed = None if chunked else convert.pack_output(record.output, record.output_kind)
                if packed is not None:
                    message.chunk_data.CopyFrom(packed)
            yield message


def node_memory() -> int:
    """RSS of the node and its children (running functions, workers)."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total
