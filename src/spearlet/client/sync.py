"""The blocking client: `Client`, and the handles it gives (`Execution`, `Stream`).

from spearlet.client import Client

with Client("127.0.0.1:50052") as client:
    client.invoke("hello", name="Ada")                 # {'greeting': 'Hello, Ada!'}
    execution = client.submit("sleep", seconds=2)      # at once, with its id
    execution.result()                                 # waits on the watch stream
    for chunk in client.stream("greet", "count", n=3):
        print(chunk)                                   # 0, 1, 2 as they are yielded
    list(client.map("hello", [{"name": "a"}, {"name": "b"}], max_in_flight=4))
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.client.errors import (
    ClientError,
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


class Client:
    """A connection to one node (a channel, reused by every call until `close`).

    `target`, `token` and `tls_ca` default to SPEARLET_TARGET (else 127.0.0.1:50052),
    SPEARLET_TOKEN and SPEARLET_TLS_CA, as for the CLI. `timeout`: the default time limit of the
    functions this client calls, in seconds (`Options.timeout` overrides it per call).
    """

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
        self._channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        self._metadata = self.connection.metadata
        self._functions = pb_grpc.FunctionServiceStub(self._channel)
        self._registry = pb_grpc.TaskServiceStub(self._channel)
        self._watch = pb_grpc.WatchServiceStub(self._channel)
        self.tasks = Tasks(self)
        self.executions = Executions(self)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: Any, request: Any, not_found: type[NotFound] = NotFound) -> Any:
        try:
            return method(request, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise_request_error(exc, not_found)

    # --- invoking ------------------------------------------------------------------------------

    def call(
        self,
        task: str,
        function: str | None = None,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        options: Options = NO_OPTIONS,
        mode: Mode = Mode.SYNC,
    ) -> pb.InvokeFunctionResponse:
        """The node's whole answer to one InvokeFunction, for who wants every field (the CLI prints it).
        A function that fails is not an error here: see `response.success` and `response.result`."""
        request = invoke_request(task, function, params or {}, options, mode, self.timeout)
        response: pb.InvokeFunctionResponse = self._unary(self._functions.InvokeFunction, request, TaskNotFound)
        return response

    def invoke(
        self,
        task: str,
        function: str | None = None,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        options: Options = NO_OPTIONS,
        **kwparams: Any,
    ) -> Any:
        """Call a function and return its output as a plain value; raise `FunctionFailed` if it did
        not complete, a `RequestError` if the node refused the call.

        Parameters are keywords, or a mapping (for names such as `options`) passed third:

            client.invoke("hello", name="Ada")                  # {'greeting': 'Hello, Ada!'}
            client.invoke("hello", "shout", {"name": "Ada"})    # {'greeting': 'HELLO, ADA!'}
        """
        return self._value_of(self.call(task, function, merge_params(params, kwparams), options=options))

    def submit(
        self,
        task: str,
        function: str | None = None,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        options: Options = NO_OPTIONS,
        **kwparams: Any,
    ) -> Execution:
        """Start a function asynchronously: the node stores the execution and answers at once.

        execution = client.submit("sleep", seconds=5)
        execution.status()     # Status.PENDING or RUNNING
        execution.result()     # {'slept': 5.0}, when it ends
        """
        accepted = self.call(task, function, merge_params(params, kwparams), options=options, mode=Mode.ASYNC)
        return Execution(self, accepted.execution_id, accepted)

    def execution(self, execution_id: str) -> Execution:
        """A handle on any execution by id: started by this client or another, on this node or, in a
        cluster, on another node. No call is made until one of its methods is used."""
        return Execution(self, execution_id)

    def stream(
        self,
        task: str,
        function: str | None = None,
        params: Mapping[str, Any] | None = None,
        /,
        *,
        options: Options = NO_OPTIONS,
        **kwparams: Any,
    ) -> Stream:
        """Run a function and iterate over its output chunks as it produces them. Leaving the loop
        early cancels the execution.

            for chunk in client.stream("greet", "count", n=3):
                print(chunk)     # 0, 1, 2
        """
        request = invoke_request(task, function, merge_params(params, kwparams), options, Mode.STREAM, self.timeout)
        return Stream(self, self._functions.StreamFunction(request, metadata=self._metadata))

    def map(
        self,
        task: str,
        inputs: Iterable[Mapping[str, Any]],
        /,
        *,
        function: str | None = None,
        max_in_flight: int = 8,
        options: Options = NO_OPTIONS,
    ) -> Iterator[Any]:
        """Call the function once per parameter mapping, at most `max_in_flight` calls at once, and
        yield the outputs in input order (as `Executor.map`). A failure raises when its turn comes;
        leaving early cancels the calls still in flight.

            client.map("hello", ({"name": n} for n in names), max_in_flight=4)
        """
        check_bound(max_in_flight)
        window: collections.deque[grpc.Future | Future[pb.InvokeFunctionResponse]] = collections.deque()
        try:
            for params in inputs:
                if len(window) >= max_in_flight:
                    yield self._value_of(self._answer(window.popleft()))
                try:
                    request = invoke_request(task, function, params, options, Mode.SYNC, self.timeout)
                except (ClientError, TypeError) as exc:  # raised in its turn, as Executor.map does
                    refused: Future[pb.InvokeFunctionResponse] = Future()
                    refused.set_exception(exc)
                    window.append(refused)
                    continue
                window.append(self._functions.InvokeFunction.future(request, metadata=self._metadata))
            while window:
                yield self._value_of(self._answer(window.popleft()))
        finally:
            for pending in window:
                pending.cancel()

    @staticmethod
    def _answer(future: grpc.Future | Future[pb.InvokeFunctionResponse]) -> pb.InvokeFunctionResponse:
        try:
            response: pb.InvokeFunctionResponse = future.result()
        except grpc.RpcError as exc:
            raise_request_error(exc, TaskNotFound)
        return response

    def _value_of(self, response: pb.InvokeFunctionResponse) -> Any:
        result = response.result
        status = status_of(result.status)
        if status is Status.COMPLETED:
            return result_value(result)
        if not status.terminal:  # handed off (a sync call past max_sync_wait_s), or an id that runs
            return self.execution(response.execution_id).result()
        raise self._failure(response.execution_id, status, result.error_code, result.error_message)

    def _failure(self, execution_id: str, status: Status, error_code: str, message: str) -> FunctionFailed:
        try:
            logs = list(self.execution(execution_id).query(logs=True).logs)
        except RequestError:
            logs = []  # the failure is the news; its log, best effort (the record may have expired)
        return FunctionFailed(execution_id, status, error_code, message, logs)

    # --- the node ------------------------------------------------------------------------------

    def health(self) -> pb.GetHealthResponse:
        """GetHealth with details: `status` ("healthy"), uptime, running and pending counts."""
        response: pb.GetHealthResponse = self._unary(
            self._functions.GetHealth, pb.GetHealthRequest(include_details=True)
        )
        return response

    def stats(self, hours: int = 0) -> pb.GetStatsResponse:
        """GetStats over the last `hours` (0: every record kept), task and execution figures included."""
        request = pb.GetStatsRequest(include_task_stats=True, include_execution_stats=True, time_range_hours=hours)
        response: pb.GetStatsResponse = self._unary(self._functions.GetStats, request)
        return response


class Execution:
    """One execution, by id. `accepted` is the node's answer to `submit` (status endpoint,
    estimated completion), None for a handle from `Client.execution`.

    Waiting (`result`, iteration) follows the node's watch stream (WatchService/WatchExecution):
    the node says when something changes; nothing polls.
    """

    def __init__(self, client: Client, execution_id: str, accepted: pb.InvokeFunctionResponse | None = None) -> None:
        self.id = execution_id
        self.accepted = accepted
        self._client = client
        self._final: Event | None = None
        self._chunked = False

    def __repr__(self) -> str:
        return f"Execution({self.id!r})"

    def query(self, logs: bool = False) -> pb.GetExecutionStatusResponse:
        """GetExecutionStatus with the result (and the log's tail with `logs`)."""
        request = pb.GetExecutionStatusRequest(execution_id=self.id, include_result=True, include_logs=logs)
        response: pb.GetExecutionStatusResponse = self._client._unary(
            self._client._functions.GetExecutionStatus, request
        )
        if not response.found:
            raise ExecutionNotFound(grpc.StatusCode.NOT_FOUND, response.message)
        return response

    def status(self) -> Status:
        if self._final is not None:
            return self._final.status
        return status_of(self.query().result.status)

    def done(self) -> bool:
        return self.status().terminal

    def logs(self) -> list[str]:
        """The tail of the function's log (stderr, or a Python function's logging and print)."""
        return list(self.query(logs=True).logs)

    def cancel(self, reason: str = "", force: bool = False) -> pb.CancelExecutionResponse:
        """Stop it: `success` is False when it had ended already (`final_status` says how)."""
        request = pb.CancelExecutionRequest(execution_id=self.id, reason=reason, force=force)
        response: pb.CancelExecutionResponse = self._client._unary(self._client._functions.CancelExecution, request)
        if response.final_status == pb.EXECUTION_STATUS_UNKNOWN:
            raise ExecutionNotFound(grpc.StatusCode.NOT_FOUND, response.message)
        return response

    def events(self, timeout: float | None = None) -> Generator[Event, None, None]:
        """Its current state, then each status change and chunk, then the final event. Leaving the
        loop stops watching (the execution goes on). `timeout`: raise TimeoutError after so many seconds."""
        call = self._client._watch.WatchExecution(
            pb.WatchExecutionRequest(execution_id=self.id), metadata=self._client._metadata, timeout=timeout
        )
        try:
            for message in call:
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

    def __iter__(self) -> Iterator[Event]:
        return self.events()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the end and return the output as `Client.invoke` does (raising as it does);
        TimeoutError after `timeout` seconds, the execution going on."""
        if self._final is None:
            with contextlib.closing(self.events(timeout)) as events:
                for _ in events:
                    pass
        final = self._final
        if final is None:
            raise RequestError(grpc.StatusCode.UNKNOWN, f"the watch of {self.id} ended before the execution did")
        if final.status is Status.COMPLETED:
            if final.message.HasField("chunk_data") or not self._chunked:
                return final.value
            return result_value(self.query().result)  # chunks carried it piece by piece: the whole, once
        raise self._client._failure(self.id, final.status, final.error_code, final.error_message)

    def future(self) -> Future[Any]:
        """A concurrent.futures.Future of `result()`, waited for in a thread of its own."""
        future: Future[Any] = Future()

        def wait() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self.result())
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=wait, name=f"spearlet-{self.id}", daemon=True).start()
        return future


class Stream:
    """A streaming call: iterate for the output chunks (plain values) as they come. Once the
    iteration ends, `status` and `result` say how it ended (`result`: the output when no chunk
    carried it); a function that did not complete raises `FunctionFailed` at the end. Leaving the
    loop early, `close()` or the end of a `with` block cancels the execution."""

    def __init__(self, client: Client, call: Any) -> None:
        self._client = client
        self._call = call
        self.execution_id = ""
        self.status = Status.UNKNOWN
        self.result: Any = None
        self.final: Event | None = None

    def events(self) -> Generator[Event, None, None]:
        """Every message read (acceptance, chunks, final), without raising for a failed function."""
        try:
            for message in self._call:
                event = Event.read(message)
                self.execution_id, self.status = event.execution_id, event.status
                if event.kind is EventKind.FINAL:
                    self.final, self.result = event, event.value
                yield event
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.CANCELLED and self.final is None and self._call.cancelled():
                return  # we left
            raise_request_error(exc, TaskNotFound)
        finally:
            if self.final is None:
                self.close()

    def __iter__(self) -> Iterator[Any]:
        with contextlib.closing(self.events()) as events:
            for event in events:
                if event.kind is EventKind.CHUNK:
                    yield event.value
        final = self.final
        if final is not None and final.status is not Status.COMPLETED:
            raise self._client._failure(self.execution_id, final.status, final.error_code, final.error_message)

    def close(self) -> None:
        """Cancel the call (and so the execution) if it has not ended."""
        self._call.cancel()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _pages(fetch: Callable[[str], Any], items: Callable[[Any], Iterable[T]]) -> Iterator[T]:
    """Every item of a paged listing, one page at a time, as the caller iterates."""
    start_after = ""
    while True:
        page = fetch(start_after)
        yield from items(page)
        if not page.has_more or not page.next_start_after:
            return
        start_after = page.next_start_after


class Tasks:
    """`client.tasks`: register, list, show and delete tasks."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def register(
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
        """Register a task: `location` a path (sent absolute), file:// or http(s):// URL; `kind`
        "process", "python" or "wasm"; `settings` its metadata (README, "Task settings").

            client.tasks.register("shout", "./shout.sh", timeout_ms=2000)
            client.tasks.register("greet2", "greet.py", "python", entry="greet:handler", replace=True)
        """
        request = task_request(name, location, kind, settings, description, checksum, replace)
        response: pb.RegisterTaskResponse = self._client._unary(self._client._registry.RegisterTask, request)
        return response

    def get(self, name: str, executions: int = 0) -> pb.GetTaskResponse:
        """The task (`.task`) and, with `executions`, that many of its latest executions."""
        request = pb.GetTaskRequest(task_id=name, include_executions=executions > 0, execution_limit=executions)
        response: pb.GetTaskResponse = self._client._unary(self._client._functions.GetTask, request)
        if not response.found:
            raise TaskNotFound(grpc.StatusCode.NOT_FOUND, response.message)
        return response

    def page(self, prefix: str = "", limit: int = DEFAULT_PAGE, start_after: str = "") -> pb.ListTasksResponse:
        """One page of ListTasks (`has_more`, `next_start_after`)."""
        request = pb.ListTasksRequest(prefix=prefix, limit=limit, start_after=start_after)
        response: pb.ListTasksResponse = self._client._unary(self._client._functions.ListTasks, request)
        return response

    def list(self, prefix: str = "", *, page_size: int = DEFAULT_PAGE) -> Iterator[pb.TaskInfo]:
        """Every task (whose id starts with `prefix`), fetching pages as the iteration goes."""
        return _pages(lambda after: self.page(prefix, page_size, after), lambda page: page.tasks)

    def delete(self, name: str, force: bool = False, cleanup: bool = False) -> pb.DeleteTaskResponse:
        """Remove a task; `force` stops its active executions, `cleanup` deletes its finished records."""
        request = pb.DeleteTaskRequest(task_id=name, force=force, cleanup_executions=cleanup)
        response: pb.DeleteTaskResponse = self._client._unary(self._client._functions.DeleteTask, request, TaskNotFound)
        return response


class Executions:
    """`client.executions`: list executions, newest first."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def page(
        self, task: str = "", status: Status | str | None = None, limit: int = DEFAULT_PAGE, start_after: str = ""
    ) -> pb.ListExecutionsResponse:
        """One page of ListExecutions (`has_more`, `next_start_after`)."""
        request = pb.ListExecutionsRequest(
            task_id=task, limit=limit, start_after=start_after, status_filter=status_filter(status)
        )
        response: pb.ListExecutionsResponse = self._client._unary(self._client._functions.ListExecutions, request)
        return response

    def list(
        self, task: str = "", status: Status | str | None = None, *, page_size: int = DEFAULT_PAGE
    ) -> Iterator[pb.ExecutionInfo]:
        """Every execution kept (of `task`, in `status`), fetching pages as the iteration goes.

        for info in client.executions.list(task="sleep", status="CANCELLED"):
            print(info.execution_id, info.error_message)
        """
        return _pages(lambda after: self.page(task, status, page_size, after), lambda page: page.executions)
