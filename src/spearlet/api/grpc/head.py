"""SPEAR's current spearlet services (spear_head.proto): InvocationService, ExecutionService and
InstanceService, served beside FunctionService on the same port and through the same engine.

One execution whatever the door: `Invoke` makes an execution as `InvokeFunction` does (the same
Invoker, store, scheduler and runtimes), so status, listings, watch, SSE, callbacks and metrics see
it, and `GetExecution`/`ListExecutions`/`TerminateExecution` see and act on executions made by
either. The README's "SPEAR today" says how each field is honoured.

A function's failure is an OK answer with status FAILED or TIMEOUT and `error` (SPEAR's control plane
would run a call that failed with a gRPC error again on another node); request errors are gRPC
status codes, mapped in server.py's `_errors` as for every service.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any, cast

from spearlet.api.grpc import spear_head_pb2 as hpb
from spearlet.api.service import FunctionApi
from spearlet.core.errors import InvalidArgument, NotFound
from spearlet.core.ids import own_instance_id
from spearlet.core.models import ExecutionRecord, Mode, OutputKind, Status
from spearlet.core.values import RAW_INPUT, raw_params, strict_json
from spearlet.engine.invoker import InvocationType, InvokeRequest

# SPEAR's name for "let the runtime choose its entry point".
DEFAULT_ENTRY = "__spear_default_entry__"
DEFAULT_PAGE = 50
# The input's content type, in the function's environment.
CONTENT_TYPE_ENV = "SPEAR_INPUT_CONTENT_TYPE"
# Where the request's fields without a field of the record go, in its metadata.
SESSION_KEY = "spear.session_id"
HEADER_PREFIX = "spear.header."
_PAGE_TOKEN_PREFIX = "v1:"

CONTENT_TYPES = {
    OutputKind.JSON: "application/json",
    OutputKind.TEXT: "text/plain; charset=utf-8",
    OutputKind.BYTES: "application/octet-stream",
}
_MODES = {
    hpb.EXECUTION_MODE_UNSPECIFIED: Mode.SYNC,
    hpb.EXECUTION_MODE_SYNC: Mode.SYNC,
    hpb.EXECUTION_MODE_ASYNC: Mode.ASYNC,
}


def is_json(content_type: str) -> bool:
    """`application/json` (parameters such as `; charset=utf-8` allowed), or none at all."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "application/json")


def params_of(payload: hpb.Payload) -> dict[str, Any]:
    """The call's parameters: a JSON object as the runtimes receive one, or the raw bytes."""
    if not is_json(payload.content_type):
        return raw_params(payload.data)
    if not payload.data:
        return {}
    try:
        value = strict_json(payload.data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"input: content type {payload.content_type or '(none)'!r} but not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"input: JSON input must be an object (its members are the parameters), got {type(value).__name__}; "
            "send another content type to pass the bytes as they are"
        )
    if RAW_INPUT in value:
        raise InvalidArgument(f"input: the member name {RAW_INPUT!r} is reserved")
    return value


def invoke_request_from(req: hpb.InvokeRequest) -> InvokeRequest:
    if not req.task_id:
        raise InvalidArgument("task_id is required")
    if req.mode not in _MODES:
        raise InvalidArgument(f"mode {req.mode} is not valid: use EXECUTION_MODE_SYNC (1) or EXECUTION_MODE_ASYNC (2)")
    params = params_of(req.input)
    environment = dict(req.environment)
    if req.HasField("input") or req.input.content_type:
        environment[CONTENT_TYPE_ENV] = req.input.content_type or "application/json"
    metadata = dict(req.metadata)
    metadata.update({HEADER_PREFIX + name: value for name, value in req.headers.items()})
    if req.session_id:
        metadata[SESSION_KEY] = req.session_id
    return InvokeRequest(
        invocation_type=InvocationType.EXISTING_TASK,
        mode=_MODES[req.mode],
        task_id=req.task_id,
        function_name="" if req.function_name == DEFAULT_ENTRY else req.function_name,
        params=params,
        params_bytes=len(req.input.data),
        execution_id=req.execution_id,
        # uint64 on the wire: past the engine's bound, refused there with the bound in the message.
        timeout_ms=req.timeout_ms,
        environment=environment,
        metadata=metadata,
        force_new_instance=req.force_new_instance,
        invocation_id=req.invocation_id or str(uuid.uuid4()),
    )


def _status(status: Status) -> hpb.ExecutionStatus:
    # Equal numbers: the seed era's CANCELLED (5) is TERMINATED here.
    return cast(hpb.ExecutionStatus, int(status))


def _fill(message: Any, record: ExecutionRecord, include_output: bool) -> None:
    """The fields InvokeResponse and Execution share (same names, other numbers)."""
    message.invocation_id = record.invocation_id
    message.execution_id = record.execution_id
    # Before its start, the execution's own instance: a Python call's worker is named when it starts.
    message.instance_id = record.instance_id or own_instance_id(record.execution_id)
    message.status = _status(record.status)
    if include_output and record.output_kind is not OutputKind.NONE:
        message.output.content_type = CONTENT_TYPES[record.output_kind]
        message.output.data = record.output
    if record.error_code or record.error_message:
        message.error.code = record.error_code
        message.error.message = record.error_message
    # Field by field: the head's Timestamp is a class of its own pool.
    for name, ms in (("started_at", record.started_at), ("completed_at", record.completed_at)):
        if ms:
            stamp = getattr(message, name)
            stamp.seconds, stamp.nanos = ms // 1000, ms % 1000 * 1_000_000


def execution(record: ExecutionRecord, include_output: bool) -> hpb.Execution:
    message = hpb.Execution(task_id=record.task_id, function_name=record.function_name)
    _fill(message, record, include_output)
    return message


def page_token(start_after: str) -> str:
    return base64.urlsafe_b64encode((_PAGE_TOKEN_PREFIX + start_after).encode()).decode("ascii") if start_after else ""


def start_after_of(token: str) -> str:
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidArgument(f"page_token {token[:80]!r} is not one this node gave") from exc
    if not text.startswith(_PAGE_TOKEN_PREFIX):
        raise InvalidArgument(f"page_token {token[:80]!r} is not one this node gave")
    return text.removeprefix(_PAGE_TOKEN_PREFIX)


class HeadApi:
    """The three services' calls, at the level of their messages, over the node's engine."""

    def __init__(self, api: FunctionApi) -> None:
        self.invoker = api.invoker
        self.management = api.management

    async def invoke(self, request: hpb.InvokeRequest) -> hpb.InvokeResponse:
        outcome = await self.invoker.invoke(invoke_request_from(request))
        response = hpb.InvokeResponse()
        _fill(response, outcome.record, include_output=True)
        return response

    async def get_execution(self, request: hpb.GetExecutionRequest) -> hpb.Execution:
        record = await self.invoker.get(request.execution_id)
        if record is None:
            raise NotFound(f"execution {request.execution_id!r} not found")
        return execution(record, request.include_output)

    async def terminate(self, request: hpb.TerminateExecutionRequest) -> hpb.TerminateExecutionResponse:
        if await self.invoker.get(request.execution_id) is None:
            raise NotFound(f"execution {request.execution_id!r} not found")
        # Forced: the process group is killed, the worker replaced, the WASM store interrupted.
        result = await self.invoker.cancel(request.execution_id, request.reason or "terminated", force=True)
        message = "terminated" if result.status is Status.CANCELLED and result.success else result.message
        return hpb.TerminateExecutionResponse(
            success=result.success, final_status=_status(result.status), message=message
        )

    async def list_executions(self, request: hpb.ListExecutionsRequest) -> hpb.ListExecutionsResponse:
        page = await self.management.list_executions(
            request.task_id,
            Status.UNKNOWN,
            request.limit or DEFAULT_PAGE,
            start_after_of(request.page_token),
            invocation_id=request.invocation_id,
        )
        return hpb.ListExecutionsResponse(
            executions=[execution(r, include_output=False) for r in page.executions],
            next_page_token=page_token(page.next_start_after) if page.has_more else "",
        )

    async def destroy_instance(self, request: hpb.DestroyInstanceRequest) -> hpb.DestroyInstanceResponse:
        result = await self.invoker.destroy_instance(request.instance_id, request.reason)
        return hpb.DestroyInstanceResponse(success=result.success, message=result.message)
