"""The HTTP gateway, served by uvicorn in the node's own event loop.

Request and response bodies are the gRPC messages in the proto3 JSON mapping (field names as in the
.proto, fields that hold their default value printed too), handled by the same FunctionApi as gRPC.
A body is read as JSON whatever its Content-Type says (`curl -d` sends a form type), and a
parameter's value may be a plain JSON value. Streams (StreamFunction, watching an execution) are
Server-Sent Events. Every error is `{"error": {"code", "message"}}` with the matching HTTP status.
Swagger UI is served from files shipped in the package: a node needs no internet for its docs.
"""

from __future__ import annotations

import contextlib
import http
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message import Message
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from spearlet import __version__
from spearlet.api.auth import DENIED, HEADER, TokenCheck
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc.values import message_json
from spearlet.api.http import dashboard as ui
from spearlet.api.http.answers import invoke_response_json, status_response_json
from spearlet.api.service import FunctionApi
from spearlet.api.views import record_json
from spearlet.core.codes import ErrorCode
from spearlet.core.errors import SpearletError
from spearlet.core.values import strict_json
from spearlet.observability.metrics import CONTENT_TYPE, Metrics

M = TypeVar("M", bound=Message)

HTTP_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.FAILED_PRECONDITION: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.UNAVAILABLE: 503,
}
_STREAM = "text/event-stream"
# Swagger UI's files (swagger-ui-dist, Apache-2.0: LICENSE and NOTICE beside them).
SWAGGER_UI = Path(__file__).with_name("swagger-ui")
_VALUE_TYPE = "type.googleapis.com/google.protobuf.Value"
REGISTER_EXAMPLE = {
    "task_name": "shout",
    "artifact_spec": {"artifact_type": "process", "location": "/path/to/shout.sh"},
}
INVOKE_EXAMPLE = {
    "invocation_type": "INVOCATION_TYPE_EXISTING_TASK",
    "task_id": "hello",
    "execution_mode": "EXECUTION_MODE_SYNC",
    "parameters": {"name": "Ada"},
}
CANCEL_EXAMPLE = {"reason": "changed my mind", "force": False}


def error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class BadRequest(SpearletError):
    code = ErrorCode.INVALID_ARGUMENT


async def json_body(request: Request, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object, whatever the Content-Type header says."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise BadRequest("the request body is empty: send a JSON object")
        return {}
    try:
        body = strict_json(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        raise BadRequest(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def plain_parameters(body: dict[str, Any]) -> dict[str, Any]:
    """HTTP's easier forms of `parameters`: an object `{"name": value, ...}`, and a `value` without
    `@type` that is a plain JSON value (packed as google.protobuf.Value). The proto3 JSON form, a
    list whose values are Any objects with `@type`, passes unchanged."""
    parameters = body.get("parameters")
    if isinstance(parameters, dict):
        parameters = [{"name": name, "value": value} for name, value in parameters.items()]
    if not isinstance(parameters, list):
        return body
    packed = []
    for parameter in parameters:
        if isinstance(parameter, dict) and "value" in parameter:
            value = parameter["value"]
            if not (isinstance(value, dict) and "@type" in value):
                parameter = {**parameter, "value": {"@type": _VALUE_TYPE, "value": value}}
        packed.append(parameter)
    return {**body, "parameters": packed}


def parse(body: dict[str, Any], message: M) -> M:
    try:
        return json_format.ParseDict(body, message)
    except json_format.ParseError as exc:
        raise BadRequest(f"the request body is not a valid {message.DESCRIPTOR.name}: {_snake_case(str(exc))}") from exc


_UNKNOWN_FIELD = re.compile(
    r'Message type "(?P<type>[\w.]+)" has no field named "(?P<field>[^"]*)" at "(?P<at>[^"]*)"\.?'
    r'\s*Available Fields\(except extensions\): "\[[^\]]*\]"'
)


def _snake_case(message: str) -> str:
    """protobuf lists a message's fields by their camelCase JSON names; the README and the .proto
    name them in snake_case."""

    def fields(match: re.Match[str]) -> str:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(match["type"])
        names = ", ".join(f.name for f in descriptor.fields)
        return f"{match['at']} has no field {match['field']!r} (its fields: {names})"

    return _UNKNOWN_FIELD.sub(fields, message)


def _json_body_doc(example: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """The OpenAPI description of a JSON body that a route reads itself (json_body)."""
    content = {"application/json": {"schema": {"type": "object"}, "example": example}}
    return {"requestBody": {"required": required, "content": content}}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for problem in exc.errors():
        where, *names = problem.get("loc", ()) or ("request",)
        name = ".".join(str(n) for n in names)
        parts.append(f"{where} parameter {name!r}: {problem.get('msg', 'invalid')}" if name else problem.get("msg", ""))
    return "; ".join(parts) or "invalid request"


async def sse(messages: AsyncGenerator[pb.StreamExecutionResult, None]) -> AsyncIterator[bytes]:
    """StreamExecutionResults as Server-Sent Events: `status`, `chunk`, and a last `result`."""
    async with contextlib.aclosing(messages):
        async for message in messages:
            kind = "result" if message.is_final else "chunk" if message.HasField("chunk_data") else "status"
            yield f"event: {kind}\ndata: {json.dumps(message_json(message))}\n\n".encode()


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
        await error(413, ErrorCode.PAYLOAD_TOO_LARGE, message)(scope, _no_body, send)


class TokenGuard:
    """Refuse a request without the node's bearer token (401 with `WWW-Authenticate: Bearer`),
    except the paths `public` allows (the dashboard's static files) and callers from the node's
    `trusted_networks` (a SPEAR SMS calls without a token)."""

    def __init__(self, app: ASGIApp, check: TokenCheck, public: Callable[[str], bool] | None = None) -> None:
        self.app = app
        self.check = check
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.public is not None and self.public(scope["path"])):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == _AUTHORIZATION), None)
        client = scope.get("client")
        if self.check.allows(header) or self.check.trusts(client[0] if client else None):
            await self.app(scope, receive, send)
            return
        response = error(401, ErrorCode.UNAUTHENTICATED, DENIED, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


_AUTHORIZATION = HEADER.encode()


async def _no_body() -> AsgiMessage:
    return {"type": "http.disconnect"}


def create_app(
    api: FunctionApi,
    metrics: Metrics | None = None,
    max_request_bytes: int = 8 << 20,
    token: str = "",
    dashboard: ui.Dashboard | None = None,
    trusted_networks: Sequence[str] = (),
) -> FastAPI:
    app = FastAPI(
        title="spearlet",
        version=__version__,
        description="HTTP gateway of a spearlet node: the FunctionService messages as JSON, streams as SSE.",
        docs_url=None,  # served below from the package's own files, not a CDN
        redoc_url=None,
    )

    @app.exception_handler(SpearletError)
    async def request_error(_: Request, exc: SpearletError) -> JSONResponse:
        return error(HTTP_STATUS.get(exc.code, 500), exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, ErrorCode.INVALID_ARGUMENT, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's own answers (no such route, a method the route lacks) in the error shape."""
        status = http.HTTPStatus(exc.status_code)
        code = next((c for c, s in HTTP_STATUS.items() if s == status), status.name)
        return error(status, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        # Starlette still re-raises it, so the server logs the traceback.
        return error(500, ErrorCode.INTERNAL, "internal error of the node; its log has the details")

    app.mount("/docs/swagger-ui", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="spearlet - Swagger UI",
            swagger_js_url="/docs/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/docs/swagger-ui/favicon-32x32.png",
            # Its default sends the spec's URL to an online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )

    # Pure ASGI middleware (no BaseHTTPMiddleware: its task group and memory streams cost every
    # request more than the route itself). Added last is outermost: the token check, then the limit.
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    if token:
        public = ui.is_page if dashboard is not None else None
        app.add_middleware(TokenGuard, check=TokenCheck(token, trusted_networks), public=public)

    def count_status_query() -> None:
        if metrics is not None:
            metrics.count_status_query("http")

    @app.get("/health", tags=["node"])
    async def health() -> dict[str, Any]:
        """Liveness for load balancers: status, message and uptime."""
        return message_json(await api.health(pb.GetHealthRequest()))

    @app.get("/metrics", tags=["node"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus exposition of the node's metrics."""
        body = metrics.exposition() if metrics is not None else b""
        return Response(body, media_type=CONTENT_TYPE)

    @app.post("/api/v1/invoke", tags=["executions"], response_model=None, openapi_extra=_json_body_doc(INVOKE_EXAMPLE))
    async def invoke(raw: Request) -> Response:
        """InvokeFunction. With `execution_mode` STREAM the answer is an event stream (as StreamFunction).
        `parameters` may also be an object of plain JSON values, `{"name": "Ada", "n": 3}`."""
        request = parse(plain_parameters(await json_body(raw)), pb.InvokeFunctionRequest())
        if request.execution_mode == pb.EXECUTION_MODE_STREAM:
            return await _first_or_error(api.stream(request))
        return JSONResponse(invoke_response_json(await api.invoke(request)))

    @app.post("/api/v1/stream", tags=["executions"], response_model=None, openapi_extra=_json_body_doc(INVOKE_EXAMPLE))
    async def stream(raw: Request) -> Response:
        """StreamFunction as Server-Sent Events; closing the connection cancels the execution."""
        request = parse(plain_parameters(await json_body(raw)), pb.InvokeFunctionRequest())
        return await _first_or_error(api.stream(request))

    @app.get("/api/v1/executions", tags=["executions"])
    async def list_executions(
        task_id: str = "",
        status: str = "",
        limit: int = 100,
        start_after: str = "",
        since_ms: int = Query(0, ge=0),
        view: Literal["info", "record"] = "info",
    ) -> dict[str, Any]:
        """ListExecutions, newest first. `status`: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT.
        `since_ms`: only those created at or after it (ms since the epoch). `view=record`: each as
        the record of /api/v1/executions/{id} (plain values, times in ms), without its result."""
        request = parse(
            {"task_id": task_id, "limit": limit, "start_after": start_after, "status_filter": _status(status)},
            pb.ListExecutionsRequest(),
        )
        if view == "info":
            return message_json(await api.list_executions(request, since_ms))
        page = await api.execution_page(request, since_ms)
        records = [record_json(r, include_result=False) for r in page.executions]
        return {"executions": records, "has_more": page.has_more, "next_start_after": page.next_start_after}

    @app.get("/api/v1/executions/{execution_id}", tags=["executions"], response_model=None)
    async def get_execution(
        execution_id: str, include_logs: bool = False, include_params: bool = False
    ) -> dict[str, Any] | JSONResponse:
        """The whole record with plain values: status, times, attempts, node, result or error;
        its parameters too with `include_params` (bytes as `{"bytes_base64": ...}`, as results)."""
        count_status_query()
        record = await api.record(execution_id)
        if record is None:
            return error(404, ErrorCode.NOT_FOUND, f"execution {execution_id!r} not found")
        return record_json(record, include_logs=include_logs, include_params=include_params)

    @app.get("/api/v1/executions/{execution_id}/status", tags=["executions"], response_model=None)
    async def execution_status(
        execution_id: str, include_result: bool = True, include_logs: bool = False
    ) -> JSONResponse:
        """GetExecutionStatus: the `status_endpoint` of every async execution."""
        count_status_query()
        request = pb.GetExecutionStatusRequest(
            execution_id=execution_id, include_result=include_result, include_logs=include_logs
        )
        response = await api.status(request)
        if not response.found:
            return error(404, ErrorCode.NOT_FOUND, response.message)
        # Built field by field and returned as a Response: FastAPI's own encoding of a returned dict
        # walks it again, and json_format's generic printer costs more than this whole route.
        return JSONResponse({**status_response_json(response), "execution_id": execution_id})

    @app.post(
        "/api/v1/executions/{execution_id}/cancel",
        tags=["executions"],
        response_model=None,
        openapi_extra=_json_body_doc(CANCEL_EXAMPLE, required=False),
    )
    async def cancel(execution_id: str, raw: Request) -> dict[str, Any] | JSONResponse:
        """CancelExecution; optional body `{"reason": "...", "force": true}`."""
        body = await json_body(raw, required=False)
        request = parse({**body, "execution_id": execution_id}, pb.CancelExecutionRequest())
        response = await api.cancel(request)
        if not response.success and response.final_status == pb.EXECUTION_STATUS_UNKNOWN:
            return error(404, ErrorCode.NOT_FOUND, response.message)  # as the other routes of an execution
        return message_json(response)

    @app.get("/api/v1/executions/{execution_id}/events", tags=["executions"], response_model=None)
    async def events(execution_id: str) -> Response:
        """Watch an execution as Server-Sent Events: its current state, each change and chunk, the result."""
        return await _first_or_error(api.watch(pb.WatchExecutionRequest(execution_id=execution_id)))

    @app.post(
        "/api/v1/tasks",
        tags=["tasks"],
        status_code=201,
        response_model=None,
        openapi_extra=_json_body_doc(REGISTER_EXAMPLE),
    )
    async def register_task(raw: Request) -> JSONResponse:
        """RegisterTask (set `replace` to update an existing task)."""
        response = await api.register_task(parse(await json_body(raw), pb.RegisterTaskRequest()))
        return JSONResponse(message_json(response), status_code=201 if response.created else 200)

    @app.get("/api/v1/tasks", tags=["tasks"])
    async def list_tasks(prefix: str = "", limit: int = 100, start_after: str = "") -> dict[str, Any]:
        """ListTasks, by id."""
        request = pb.ListTasksRequest(prefix=prefix, limit=limit, start_after=start_after)
        return message_json(await api.list_tasks(request))

    @app.get("/api/v1/tasks/{task_id}", tags=["tasks"], response_model=None)
    async def get_task(task_id: str, execution_limit: int = 10) -> dict[str, Any] | JSONResponse:
        """GetTask with its recent executions."""
        request = pb.GetTaskRequest(task_id=task_id, include_executions=True, execution_limit=execution_limit)
        response = await api.get_task(request)
        if not response.found:
            return error(404, ErrorCode.NOT_FOUND, response.message)
        return message_json(response)

    @app.delete("/api/v1/tasks/{task_id}", tags=["tasks"])
    async def delete_task(task_id: str, force: bool = False, cleanup_executions: bool = False) -> dict[str, Any]:
        """DeleteTask; `force` also stops its active executions."""
        request = pb.DeleteTaskRequest(task_id=task_id, force=force, cleanup_executions=cleanup_executions)
        return message_json(await api.delete_task(request))

    @app.get("/api/v1/health", tags=["node"])
    async def health_details(include_details: bool = True) -> dict[str, Any]:
        """GetHealth."""
        return message_json(await api.health(pb.GetHealthRequest(include_details=include_details)))

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
        return message_json(await api.stats(request))

    if dashboard is not None:
        ui.mount(app, api, dashboard)
    return app


def _status(name: str) -> str:
    if not name:
        return "EXECUTION_STATUS_UNKNOWN"
    upper = name.upper()
    return upper if upper.startswith("EXECUTION_STATUS_") else f"EXECUTION_STATUS_{upper}"
