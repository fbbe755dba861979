"""The HTTP gateway, served by uvicorn in the node's own event loop.

Request and response bodies are the gRPC messages in the proto3 JSON mapping (field names as in the
.proto), handled by the same FunctionApi as gRPC. Streams (StreamFunction, watching an execution)
are Server-Sent Events. Errors are `{"error": {"code", "message"}}` with the matching HTTP status.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Body, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from spearlet import __version__
from spearlet.api.auth import DENIED, HEADER, TokenCheck
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.service import FunctionApi
from spearlet.api.views import record_json
from spearlet.core.errors import SpearletError
from spearlet.observability.metrics import CONTENT_TYPE, Metrics

M = TypeVar("M", bound=Message)

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "RESOURCE_EXHAUSTED": 429,
}
_STREAM = "text/event-stream"
REGISTER_EXAMPLE = {
    "task_name": "shout",
    "artifact_spec": {"artifact_type": "process", "location": "/path/to/shout.sh"},
}
INVOKE_EXAMPLE = {
    "invocation_type": "INVOCATION_TYPE_EXISTING_TASK",
    "task_id": "hello",
    "execution_mode": "EXECUTION_MODE_SYNC",
    "parameters": [
        {"name": "name", "value": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "Ada"}}
    ],
}


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def as_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def parse(body: dict[str, Any], message: M) -> M:
    try:
        return json_format.ParseDict(body, message)
    except json_format.ParseError as exc:
        raise _BadJson(f"request body is not a valid {message.DESCRIPTOR.name}: {exc}") from exc


class _BadJson(SpearletError):
    code = "INVALID_ARGUMENT"


async def sse(messages: AsyncGenerator[pb.StreamExecutionResult, None]) -> AsyncIterator[bytes]:
    """StreamExecutionResults as Server-Sent Events: `status`, `chunk`, and a last `result`."""
    async with contextlib.aclosing(messages):
        async for message in messages:
            kind = "result" if message.is_final else "chunk" if message.HasField("chunk_data") else "status"
            yield f"event: {kind}\ndata: {json.dumps(as_json(message))}\n\n".encode()


async def _first_or_error(messages: AsyncGenerator[pb.StreamExecutionResult, None]) -> Response:
    """Start a stream, so that a request error (unknown task, bad input) is a proper HTTP error
    instead of a broken event stream."""
    try:
        first = await anext(messages)
    except SpearletError as exc:
        return error(HTTP_STATUS.get(exc.code, 500), exc.code, str(exc))

    async def rest() -> AsyncGenerator[pb.StreamExecutionResult, None]:
        # Closed with the response (its client left): the stream frees its slot at once.
        async with contextlib.aclosing(messages):
            yield first
            async for message in messages:
                yield message

    return StreamingResponse(sse(rest()), media_type=_STREAM, headers={"Cache-Control": "no-store"})


class BodyLimit:
    """Refuse a request body over `max_bytes` (413) whatever its framing: a declared length is
    checked before reading, and a chunked body is counted while it is read, and buffered only up to
    the limit; the application then gets it whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, send, f"request body of {int(length)} bytes exceeds {self.max_bytes}")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, send, f"request body exceeds {self.max_bytes} bytes")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> AsgiMessage:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # what follows the body: a disconnect

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, message: str) -> None:
        await error(413, "PAYLOAD_TOO_LARGE", message)(scope, _no_body, send)


async def _no_body() -> AsgiMessage:
    return {"type": "http.disconnect"}


def create_app(
    api: FunctionApi, metrics: Metrics | None = None, max_request_bytes: int = 8 << 20, token: str = ""
) -> FastAPI:
    app = FastAPI(
        title="spearlet",
        version=__version__,
        description="HTTP gateway of a spearlet node: the FunctionService messages as JSON, streams as SSE.",
    )

    @app.exception_handler(SpearletError)
    async def request_error(_: Request, exc: SpearletError) -> JSONResponse:
        return error(HTTP_STATUS.get(exc.code, 500), exc.code, str(exc))

    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)  # inside the token check (added later: outer)
    check = TokenCheck(token) if token else None

    @app.middleware("http")
    async def require_token(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if check is not None and not check.allows(request.headers.get(HEADER)):
            response = error(401, "UNAUTHENTICATED", DENIED)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await call_next(request)

    def count_status_query() -> None:
        if metrics is not None:
            metrics.count_status_query("http")

    @app.get("/health", tags=["node"])
    async def health() -> dict[str, Any]:
        """Liveness for load balancers: status, message and uptime."""
        return as_json(await api.health(pb.GetHealthRequest()))

    @app.get("/metrics", tags=["node"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus exposition of the node's metrics."""
        body = metrics.exposition() if metrics is not None else b""
        return Response(body, media_type=CONTENT_TYPE)

    @app.post("/api/v1/invoke", tags=["executions"], response_model=None)
    async def invoke(body: dict[str, Any] = Body(..., examples=[INVOKE_EXAMPLE])) -> Response:
        """InvokeFunction. With `execution_mode` STREAM the answer is an event stream (as StreamFunction)."""
        request = parse(body, pb.InvokeFunctionRequest())
        if request.execution_mode == pb.EXECUTION_MODE_STREAM:
            return await _first_or_error(api.stream(request))
        return JSONResponse(as_json(await api.invoke(request)))

    @app.post("/api/v1/stream", tags=["executions"], response_model=None)
    async def stream(body: dict[str, Any] = Body(...)) -> Response:
        """StreamFunction as Server-Sent Events; closing the connection cancels the execution."""
        return await _first_or_error(api.stream(parse(body, pb.InvokeFunctionRequest())))

    @app.get("/api/v1/executions", tags=["executions"])
    async def list_executions(
        task_id: str = "", status: str = "", limit: int = 100, start_after: str = ""
    ) -> dict[str, Any]:
        """ListExecutions, newest first. `status`: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT."""
        request = parse(
            {"task_id": task_id, "limit": limit, "start_after": start_after, "status_filter": _status(status)},
            pb.ListExecutionsRequest(),
        )
        return as_json(await api.list_executions(request))

    @app.get("/api/v1/executions/{execution_id}", tags=["executions"], response_model=None)
    async def get_execution(execution_id: str, include_logs: bool = False) -> dict[str, Any] | JSONResponse:
        """The whole record with plain values: status, times, attempts, node, result or error."""
        count_status_query()
        record = await api.invoker.get(execution_id)
        if record is None:
            return error(404, "NOT_FOUND", f"execution {execution_id!r} not found")
        return record_json(record, include_logs=include_logs)

    @app.get("/api/v1/executions/{execution_id}/status", tags=["executions"], response_model=None)
    async def execution_status(
        execution_id: str, include_result: bool = True, include_logs: bool = False
    ) -> dict[str, Any] | JSONResponse:
        """GetExecutionStatus: the `status_endpoint` of every async execution."""
        count_status_query()
        request = pb.GetExecutionStatusRequest(
            execution_id=execution_id, include_result=include_result, include_logs=include_logs
        )
        response = await api.status(request)
        if not response.found:
            return error(404, "NOT_FOUND", response.message)
        return {**as_json(response), "execution_id": execution_id}

    @app.post("/api/v1/executions/{execution_id}/cancel", tags=["executions"])
    async def cancel(execution_id: str, body: dict[str, Any] | None = Body(None)) -> dict[str, Any]:
        """CancelExecution; optional body `{"reason": "...", "force": true}`."""
        request = parse({**(body or {}), "execution_id": execution_id}, pb.CancelExecutionRequest())
        return as_json(await api.cancel(request))

    @app.get("/api/v1/executions/{execution_id}/events", tags=["executions"], response_model=None)
    async def events(execution_id: str) -> Response:
        """Watch an execution as Server-Sent Events: its current state, each change and chunk, the result."""
        return await _first_or_error(api.watch(pb.WatchExecutionRequest(execution_id=execution_id)))

    @app.post("/api/v1/tasks", tags=["tasks"], status_code=201, response_model=None)
    async def register_task(body: dict[str, Any] = Body(..., examples=[REGISTER_EXAMPLE])) -> JSONResponse:
        """RegisterTask (set `replace` to update an existing task)."""
        response = await api.register_task(parse(body, pb.RegisterTaskRequest()))
        return JSONResponse(as_json(response), status_code=201 if response.created else 200)

    @app.get("/api/v1/tasks", tags=["tasks"])
    async def list_tasks(prefix: str = "", limit: int = 100, start_after: str = "") -> dict[str, Any]:
        """ListTasks, by id."""
        request = pb.ListTasksRequest(prefix=prefix, limit=limit, start_after=start_after)
        return as_json(await api.list_tasks(request))

    @app.get("/api/v1/tasks/{task_id}", tags=["tasks"], response_model=None)
    async def get_task(task_id: str, execution_limit: int = 10) -> dict[str, Any] | JSONResponse:
        """GetTask with its recent executions."""
        request = pb.GetTaskRequest(task_id=task_id, include_executions=True, execution_limit=execution_limit)
        response = await api.get_task(request)
        if not response.found:
            return error(404, "NOT_FOUND", response.message)
        return as_json(response)

    @app.delete("/api/v1/tasks/{task_id}", tags=["tasks"])
    async def delete_task(task_id: str, force: bool = False, cleanup_executions: bool = False) -> dict[str, Any]:
        """DeleteTask; `force` also stops its active executions."""
        request = pb.DeleteTaskRequest(task_id=task_id, force=force, cleanup_executions=cleanup_executions)
        return as_json(await api.delete_task(request))

    @app.get("/api/v1/health", tags=["node"])
    async def health_details(include_details: bool = True) -> dict[str, Any]:
        """GetHealth."""
        return as_json(await api.health(pb.GetHealthRequest(include_details=include_details)))

    @app.get("/api/v1/stats", tags=["node"])
    async def stats(
        time_range_hours: int = Query(0, ge=0), include_task_stats: bool = True, include_execution_stats: bool = True
    ) -> dict[str, Any]:
        """GetStats over the last `time_range_hours` (0: all retained records)."""
        request = pb.GetStatsRequest(
            time_range_hours=time_range_hours,
            include_task_stats=include_task_stats,
            include_execution_stats=include_execution_stats,
        )
        return as_json(await api.stats(request))

    return app


def _status(name: str) -> str:
    if not name:
        return "EXECUTION_STATUS_UNKNOWN"
    upper = name.upper()
    return upper if upper.startswith("EXECUTION_STATUS_") else f"EXECUTION_STATUS_{upper}"
