"""The asyncio client: `AsyncClient`, the same methods as `Client`, as coroutines.

    from spearlet.client import AsyncClient

    async with AsyncClient("127.0.0.1:50052") as client:
        await client.invoke("hello", name="Ada")           # {'greeting': 'Hello, Ada!'}
        execution = await client.submit("sleep", seconds=2)
        await execution.result()                           # waits on the watch stream
        async for chunk in client.stream("greet", "count", n=3):
            print(chunk)
        [value async for value in client.map("hello", [{"name": "a"}, {"name": "b"}])]

Iterations (`stream`, `map`, `tasks.list`, `executions.list`, an execution's events) are async
iterators, got without `await`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.client.errors import (
    ExecutionNotFound,
    FunctionFailed,
    NotFound,
    RequestError,
    TaskNotFound,
    raise_request_error,
)
from spearlet.client.messages import (
    DEFAULT_PAGE,
    NO_OPTIONS,
    Connection,
    Event,
    EventKind,
    Options,
    check_bound,
    invoke_request,
    merge_params,
    result_value,
    status_filter,
    status_of,
    task_request,
)
from spearlet.core.models import Mode, Status

T = TypeVar("T")


class AsyncClient:
    """`Client` for asyncio: one grpc.aio channel, reused until `close` (or the `async with` ends).
    Arguments and environment as for `Client`."""

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        timeout: float | None = None,
    ) -> None:
        self.connection = Connection.resolve(target, token, tls_ca)
        self.timeout = timeout
        credentials = self.connection.credentials()
        address = self.connection.target
        self._channel = (
            grpc.aio.secure_channel(address, credentials) if credentials else grpc.aio.insecure_channel(address)
        )
        self._metadata = self.connection.metadata
        self._functions = pb_grpc.FunctionServiceStub(self._channel)
        self._registry = pb_grpc.TaskServiceStub(self._channel)
        self._watch = pb_grpc.WatchServiceStub(self._channel)
        self.tasks = AsyncTasks(self)
        self.executions = AsyncExecutions(self)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: Any, request: Any, not_found: type[NotFound] = NotFound) -> Any:
        try:
            return await method(request, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise_request_error(exc, not_found)

    async def call(
        self,
        task: str,
        function: str | None = None,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        options: Options = NO_OPTIONS,
        mode: Mode = Mode.SYNC,
    ) -> pb.InvokeFunctionResponse:
        """`Client.call`: the node's whole answer to one InvokeFunction."""
        request = invoke_request(task, function, params or {}, options, mode, self.timeout)
        response: pb.InvokeFunctionResponse = await self._unary(self._functions.InvokeFunction, request, TaskNotFound)
        return response

    async def invoke(
        self,
        task: str,
        function: str | None = None,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        options: Options = NO_OPTIONS,
        **kwparams: Any,
    ) -> Any:
        """`Client.invoke`: the output as a plain value, or FunctionFailed / a RequestError.

        await client.invoke("hello", name="Ada")     # {'greeting': 'Hello, Ada!'}
        """
        return await self._value_of(await self.call(task, function, merge_params(params, kwparams), options=options))

    async def submit(
        self,
        task: str,
        function: str | None = None,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        options: Options = NO_OPTIONS,
        **kwparams: Any,
    ) -> AsyncExecution:
        """`Client.submit`: accepted at once; `await execution.result()` waits for the end."""
        params = merge_params(params, kwparams)
        accepted = await self.call(task, function, params, options=options, mode=Mode.ASYNC)
        return AsyncExecution(self, accepted.execution_id, accepted)

    def execution(self, execution_id: str) -> AsyncExecution:
        """A handle on any execution by id (this node's, another client's, another cluster node's)."""
        return AsyncExecution(self, execution_id)

    def stream(
        self,
        task: str,
        function: str | None = None,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        options: Options = NO_OPTIONS,
        **kwparams: Any,
    ) -> AsyncStream:
        """`Client.stream`: `async for chunk in client.stream(...)`; leaving early cancels."""
        request = invoke_request(task, function, merge_params(params, kwparams), options, Mode.STREAM, self.timeout)
        return AsyncStream(self, self._functions.StreamFunction(request, metadata=self._metadata))

    async def map(
        self,
        task: str,
        inputs: Iterable[Mapping[str, Any]],
        /,
        *,
        function: str | None = None,
        max_in_flight: int = 8,
        options: Options = NO_OPTIONS,
    ) -> AsyncIterator[Any]:
        """`Client.map`: outputs in input order, at most `max_in_flight` calls at once."""
        check_bound(max_in_flight)
        window: collections.deque[asyncio.Task[pb.InvokeFunctionResponse]] = collections.deque()
        try:
            for params in inputs:
                if len(window) >= max_in_flight:
                    yield await self._value_of(await window.popleft())
                window.append(asyncio.ensure_future(self.call(task, function, params, options=options)))
            while window:
                yield await self._value_of(await window.popleft())
        finally:
            for pending in window:
                pending.cancel()

    async def _value_of(self, response: pb.InvokeFunctionResponse) -> Any:
        result = response.result
        status = status_of(result.status)
        if status is Status.COMPLETED:
            return result_value(result)
        if not status.terminal:
            return await self.execution(response.execution_id).result()
        raise await self._failure(response.execution_id, status, result.error_code, result.error_message)

    async def _failure(self, execution_id: str, status: Status, error_code: str, message: str) -> FunctionFailed:
        try:
            logs = list((await self.execution(execution_id).query(logs=True)).logs)
        except RequestError:
            logs = []
        return FunctionFailed(execution_id, status, error_code, message, logs)

    async def health(self) -> pb.GetHealthResponse:
        """`Client.health`."""
        response: pb.GetHealthResponse = await self._unary(
            self._functions.GetHealth, pb.GetHealthRequest(include_details=True)
        )
        return response

    async def stats(self, hours: int = 0) -> pb.GetStatsResponse:
        """`Client.stats`."""
        request = pb.GetStatsRequest(include_task_stats=True, include_execution_stats=True, time_range_hours=hours)
        response: pb.GetStatsResponse = await self._unary(self._functions.GetStats, request)
        return response


class AsyncExecution:
    """`Execution` for asyncio: the same methods, as coroutines; `async for event in execution`."""

    def __init__(
        self, client: AsyncClient, execution_id: str, accepted: pb.InvokeFunctionResponse | None = None
    ) -> None:
        self.id = execution_id
        self.accepted = accepted
        self._client = client
        self._final: Event | None = None
        self._chunked = False

    def __repr__(self) -> str:
        return f"AsyncExecution({self.id!r})"

    async def query(self, logs: bool = False) -> pb.GetExecutionStatusResponse:
        request = pb.GetExecutionStatusRequest(execution_id=self.id, include_result=True, include_logs=logs)
        response: pb.GetExecutionStatusResponse = await self._client._unary(
            self._client._functions.GetExecutionStatus, request
        )
        if not response.found:
            raise ExecutionNotFound(grpc.StatusCode.NOT_FOUND, response.message)
        return response

    async def status(self) -> Status:
        if self._final is not None:
            return self._final.status
        return status_of((await self.query()).result.status)

    async def done(self) -> bool:
        return (await self.status()).terminal

    async def logs(self) -> list[str]:
        return list((await self.query(logs=True)).logs)

    async def cancel(self, reason: str = "", force: bool = False) -> pb.CancelExecutionResponse:
        request = pb.CancelExecutionRequest(execution_id=self.id, reason=reason, force=force)
        response: pb.CancelExecutionResponse = await self._client._unary(
            self._client._functions.CancelExecution, request
        )
        if response.final_status == pb.EXECUTION_STATUS_UNKNOWN:
            raise ExecutionNotFound(grpc.StatusCode.NOT_FOUND, response.message)
        return response

    async def events(self, timeout: float | None = None) -> AsyncGenerator[Event, None]:
        """`Execution.events`, as an async iterator."""
        call = self._client._watch.WatchExecution(
            pb.WatchExecutionRequest(execution_id=self.id), metadata=self._client._metadata, timeout=timeout
        )
        try:
            async for message in call:
                event = Event.read(message)
                self._chunked |= event.kind is EventKind.CHUNK
                if event.kind is EventKind.FINAL:
                    self._final = event
                yield event
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
                raise TimeoutError(f"execution {self.id} did not end within {timeout} s") from None
            raise_request_error(exc, ExecutionNotFound)
        finally:
            call.cancel()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def result(self, timeout: float | None = None) -> Any:
        """`Execution.result`: waits on the watch stream, never polling."""
        if self._final is None:
            async with contextlib.aclosing(self.events(timeout)) as events:
                async for _ in events:
                    pass
        final = self._final
        if final is None:
            raise RequestError(grpc.StatusCode.UNKNOWN, f"the watch of {self.id} ended before the execution did")
        if final.status is Status.COMPLETED:
            if final.message.HasField("chunk_data") or not self._chunked:
                return final.value
            return result_value((await self.query()).result)
        raise await self._client._failure(self.id, final.status, final.error_code, final.error_message)

    def future(self) -> asyncio.Task[Any]:
        """`result()` as a task of the running loop."""
        return asyncio.ensure_future(self.result())


class AsyncStream:
    """`Stream` for asyncio: `async for chunk in stream`; `async with` or `close()` cancels."""

    def __init__(self, client: AsyncClient, call: Any) -> None:
        self._client = client
        self._call = call
        self.execution_id = ""
        self.status = Status.UNKNOWN
        self.result: Any = None
        self.final: Event | None = None

    async def events(self) -> AsyncGenerator[Event, None]:
        try:
            async for message in self._call:
                event = Event.read(message)
                self.execution_id, self.status = event.execution_id, event.status
                if event.kind is EventKind.FINAL:
                    self.final, self.result = event, event.value
                yield event
        except grpc.RpcError as exc:
            raise_request_error(exc, TaskNotFound)
        finally:
            if self.final is None:
                self.close()

    async def _chunks(self) -> AsyncGenerator[Any, None]:
        async with contextlib.aclosing(self.events()) as events:
            async for event in events:
                if event.kind is EventKind.CHUNK:
                    yield event.value
        final = self.final
        if final is not None and final.status is not Status.COMPLETED:
            raise await self._client._failure(self.execution_id, final.status, final.error_code, final.error_message)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks()

    def close(self) -> None:
        self._call.cancel()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def _pages(fetch: Callable[[str], Awaitable[Any]], items: Callable[[Any], Iterable[T]]) -> AsyncIterator[T]:
    start_after = ""
    while True:
        page = await fetch(start_after)
        for item in items(page):
            yield item
        if not page.has_more or not page.next_start_after:
            return
        start_after = page.next_start_after


class AsyncTasks:
    """`Tasks` for asyncio."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def register(
        self,
        name: str,
        location: str | Path,
        kind: str = "process",
        *,
        description: str = "",
        checksum: str = "",
        replace: bool = False,
        **settings: Any,
    ) -> pb.RegisterTaskResponse:
        request = task_request(name, location, kind, settings, description, checksum, replace)
        response: pb.RegisterTaskResponse = await self._client._unary(self._client._registry.RegisterTask, request)
        return response

    async def get(self, name: str, executions: int = 0) -> pb.GetTaskResponse:
        request = pb.GetTaskRequest(task_id=name, include_executions=executions > 0, execution_limit=executions)
        response: pb.GetTaskResponse = await self._client._unary(self._client._functions.GetTask, request)
        if not response.found:
            raise TaskNotFound(grpc.StatusCode.NOT_FOUND, response.message)
        return response

    async def page(self, prefix: str = "", limit: int = DEFAULT_PAGE, start_after: str = "") -> pb.ListTasksResponse:
        request = pb.ListTasksRequest(prefix=prefix, limit=limit, start_after=start_after)
        response: pb.ListTasksResponse = await self._client._unary(self._client._functions.ListTasks, request)
        return response

    def list(self, prefix: str = "", *, page_size: int = DEFAULT_PAGE) -> AsyncIterator[pb.TaskInfo]:
        return _pages(lambda after: self.page(prefix, page_size, after), lambda page: page.tasks)

    async def delete(self, name: str, force: bool = False, cleanup: bool = False) -> pb.DeleteTaskResponse:
        request = pb.DeleteTaskRequest(task_id=name, force=force, cleanup_executions=cleanup)
        response: pb.DeleteTaskResponse = await self._client._unary(
            self._client._functions.DeleteTask, request, TaskNotFound
        )
        return response


class AsyncExecutions:
    """`Executions` for asyncio."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def page(
        self, task: str = "", status: Status | str | None = None, limit: int = DEFAULT_PAGE, start_after: str = ""
    ) -> pb.ListExecutionsResponse:
        request = pb.ListExecutionsRequest(
            task_id=task, limit=limit, start_after=start_after, status_filter=status_filter(status)
        )
        response: pb.ListExecutionsResponse = await self._client._unary(self._client._functions.ListExecutions, request)
        return response

    def list(
        self, task: str = "", status: Status | str | None = None, *, page_size: int = DEFAULT_PAGE
    ) -> AsyncIterator[pb.ExecutionInfo]:
        return _pages(lambda after: self.page(task, status, page_size, after), lambda page: page.executions)
