"""The gRPC transport: FunctionService, the TaskService extension, health and reflection.

Thin by design: convert the message, call the core, convert back. Request errors become status
codes in one place (`_errors`); a function's own failure is a successful RPC with success=false.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import psutil
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from spearlet.api.grpc import convert
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.core.errors import SpearletError
from spearlet.core.invoker import Invoker
from spearlet.core.models import Status

log = logging.getLogger(__name__)

_CODES = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
}
R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def _errors(handler: Handler[R]) -> Handler[R]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await handler(self, request, context)
        except SpearletError as exc:
            await context.abort(_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
            raise  # unreachable: abort raises

    return wrapper


class FunctionService(pb_grpc.FunctionServiceServicer):
    def __init__(self, invoker: Invoker) -> None:
        self.invoker = invoker

    @_errors
    async def InvokeFunction(
        self, request: pb.InvokeFunctionRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvokeFunctionResponse:
        outcome = await self.invoker.invoke(convert.invoke_request_from(request))
        record = outcome.record
        success = record.status is Status.COMPLETED or (not record.done and record.status is not Status.UNKNOWN)
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

    @_errors
    async def GetExecutionStatus(
        self, request: pb.GetExecutionStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetExecutionStatusResponse:
        record = await self.invoker.get(request.execution_id)
        if record is None:
            return pb.GetExecutionStatusResponse(found=False, message=f"execution {request.execution_id!r} not found")
        return pb.GetExecutionStatusResponse(
            found=True,
            result=convert.execution_result(record, include_result=request.include_result),
            logs=record.logs.splitlines() if request.include_logs else [],
            message=record.status.name,
        )

    @_errors
    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelExecutionResponse:
        result = await self.invoker.cancel(request.execution_id, request.reason, request.force)
        return pb.CancelExecutionResponse(
            success=result.success, message=result.message, final_status=convert.pb_status(result.status)
        )

    async def StreamFunction(
        self, request: pb.InvokeFunctionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamExecutionResult]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "StreamFunction is not available on this node yet")
        yield pb.StreamExecutionResult()  # unreachable: makes this an async generator

    @_errors
    async def ListTasks(self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext) -> pb.ListTasksResponse:
        page = await self.invoker.tasks.list(request.prefix, request.limit, request.start_after)
        summaries = await self.invoker.store.task_summaries([t.task_id for t in page.tasks])
        return pb.ListTasksResponse(
            tasks=[convert.task_info(t, summaries.get(t.task_id)) for t in page.tasks],
            has_more=page.has_more,
            next_start_after=page.next_start_after,
        )

    @_errors
    async def GetTask(self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext) -> pb.GetTaskResponse:
        task = await self.invoker.tasks.find(request.task_id) if request.task_id else None
        if task is None:
            return pb.GetTaskResponse(found=False, message=f"task {request.task_id!r} not found")
        summaries = await self.invoker.store.task_summaries([task.task_id])
        response = pb.GetTaskResponse(found=True, task=convert.task_info(task, summaries.get(task.task_id)))
        if request.include_executions:
            page = await self.invoker.list_executions(task.task_id, Status.UNKNOWN, request.execution_limit or 10, "")
            response.executions.extend(convert.execution_info(r) for r in page.executions)
        return response

    @_errors
    async def DeleteTask(
        self, request: pb.DeleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteTaskResponse:
        deleted, cleaned, message = await self.invoker.delete_task(
            request.task_id, request.force, request.cleanup_executions
        )
        return pb.DeleteTaskResponse(success=True, message=message, deleted=deleted, cleaned_executions=cleaned)

    @_errors
    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExecutionsResponse:
        page = await self.invoker.list_executions(
            request.task_id, convert.status_from(request.status_filter), request.limit, request.start_after
        )
        return pb.ListExecutionsResponse(
            executions=[convert.execution_info(r) for r in page.executions],
            has_more=page.has_more,
            next_start_after=page.next_start_after,
        )

    @_errors
    async def GetHealth(self, request: pb.GetHealthRequest, context: grpc.aio.ServicerContext) -> pb.GetHealthResponse:
        h = await self.invoker.health()
        response = pb.GetHealthResponse(status=h.status, message=h.message, uptime_seconds=h.uptime_seconds)
        if request.include_details:
            response.details.CopyFrom(
                pb.HealthDetails(
                    active_tasks=h.active_tasks,
                    running_executions=h.running,
                    pending_executions=h.pending,
                    total_memory_used=_node_memory(),
                    total_executions=h.total_executions,
                    system_info={
                        "node": self.invoker.settings.node_id,
                        "cpu_count": str(psutil.cpu_count() or 0),
                        "memory_total": str(psutil.virtual_memory().total),
                    },
                )
            )
        return response

    @_errors
    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.GetStatsResponse:
        stats = await self.invoker.stats(request.time_range_hours)
        total_tasks = await self.invoker.store.count_tasks()
        response = pb.GetStatsResponse(
            service_stats=pb.ServiceStats(
                uptime_seconds=self.invoker.uptime_seconds(),
                total_tasks=total_tasks,
                total_executions=stats.total,
                total_memory_used=_node_memory(),
                cpu_usage_percent=psutil.cpu_percent(interval=None),
                memory_usage_percent=psutil.virtual_memory().percent,
            )
        )
        if request.include_task_stats:
            page = await self.invoker.tasks.list("", 1000, "")
            types: dict[str, int] = {}
            for task in page.tasks:
                types[task.artifact_type] = types.get(task.artifact_type, 0) + 1
            active = sum(1 for t in page.tasks if stats.by_task.get(t.task_id))
            busiest = sorted(stats.by_task.items(), key=lambda kv: -kv[1])[:5]
            by_id = {t.task_id: t for t in page.tasks}
            response.task_stats.CopyFrom(
                pb.TaskStats(
                    active_tasks=active,
                    idle_tasks=total_tasks - active,
                    tasks_by_type=types,
                    most_active_tasks=[convert.task_info(by_id[t]) for t, _ in busiest if t in by_id],
                )
            )
        if request.include_execution_stats:
            done = stats.by_status.get(Status.COMPLETED, 0)
            ended = sum(n for s, n in stats.by_status.items() if s.terminal)
            response.execution_stats.CopyFrom(
                pb.ExecutionStats(
                    running=stats.by_status.get(Status.RUNNING, 0),
                    pending=stats.by_status.get(Status.PENDING, 0),
                    completed=done,
                    failed=ended - done,
                    average_execution_time_ms=stats.average_execution_time_ms,
                    success_rate_percent=100.0 * done / ended if ended else 0.0,
                    executions_by_function=stats.by_function,
                )
            )
        return response


class TaskService(pb_grpc.TaskServiceServicer):
    def __init__(self, invoker: Invoker) -> None:
        self.invoker = invoker

    @_errors
    async def RegisterTask(
        self, request: pb.RegisterTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterTaskResponse:
        tasks = self.invoker.tasks
        exists = await tasks.find(request.task_name) is not None if request.task_name else False
        if exists and not request.replace:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"task {request.task_name!r} exists: set replace to update it"
            )
        task = await tasks.register(
            request.task_name, convert.artifact_from(request.artifact_spec), request.task_description
        )
        return pb.RegisterTaskResponse(task=convert.task_info(task), created=not exists)


def _node_memory() -> int:
    """RSS of the node and its children (running functions, workers)."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


def build_server(invoker: Invoker, address: str, max_message_bytes: int = 8 << 20) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with every service added, bound to `address`; returns it and its port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_FunctionServiceServicer_to_server(FunctionService(invoker), server)
    pb_grpc.add_TaskServiceServicer_to_server(TaskService(invoker), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        pb.DESCRIPTOR.services_by_name["FunctionService"].full_name,
        pb.DESCRIPTOR.services_by_name["TaskService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC on {address}")
    server.health_servicer = health_servicer
    return server, port
