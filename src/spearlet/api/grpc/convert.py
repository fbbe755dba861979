"""Messages <-> core objects. The only place that knows both the wire and the core."""

from __future__ import annotations

from typing import Any, cast

from google.protobuf import any_pb2, json_format, struct_pb2, timestamp_pb2, wrappers_pb2
from google.protobuf.message import DecodeError, Message

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.core.errors import InvalidArgument
from spearlet.core.models import ArtifactSpec, ExecutionRecord, Mode, OutputKind, Status, Task
from spearlet.core.queries import TaskSummary
from spearlet.core.values import check_number, classify_output, output_value
from spearlet.engine.invoker import InvokeRequest

_WRAPPERS: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        wrappers_pb2.StringValue, wrappers_pb2.BytesValue, wrappers_pb2.BoolValue, wrappers_pb2.Int32Value,
        wrappers_pb2.Int64Value, wrappers_pb2.UInt32Value, wrappers_pb2.UInt64Value, wrappers_pb2.FloatValue,
        wrappers_pb2.DoubleValue,
    )
}  # fmt: skip
_JSON_TYPES: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls for cls in (struct_pb2.Value, struct_pb2.Struct, struct_pb2.ListValue)
}
_MAX_SAFE_INT = 2**53


def message_json(message: Message) -> dict[str, Any]:
    """A message in the proto3 JSON mapping as the HTTP gateway and the CLI print it: field names as
    in the .proto, and every field, those that hold their default value (0, "", false) included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def tidy_numbers(value: Any) -> Any:
    """JSON numbers arrive as doubles; give whole ones back as ints, as a user wrote them."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: tidy_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tidy_numbers(v) for v in value]
    return value


def unpack_value(name: str, value: any_pb2.Any, present: bool) -> Any:
    """A parameter's Any as a plain value (README, "Task settings": the types a parameter may hold)."""
    if not present:
        return None
    full_name = value.type_url.rpartition("/")[2]
    cls = _WRAPPERS.get(full_name) or _JSON_TYPES.get(full_name)
    if cls is None:
        raise InvalidArgument(
            f"parameter {name!r}: value type {value.type_url[:200]!r} is not supported; use a "
            "google.protobuf wrapper (StringValue, BytesValue, Int64Value, ...), Value, Struct or ListValue"
        )
    message = cls()
    try:
        message.ParseFromString(value.value)
    except (DecodeError, RecursionError) as exc:
        raise InvalidArgument(f"parameter {name!r}: value is not a valid {full_name}: {exc}") from exc
    if isinstance(message, struct_pb2.Value):
        return _plain(name, message)
    if isinstance(message, struct_pb2.Struct):
        return {k: _plain(name, v) for k, v in message.fields.items()}
    if isinstance(message, struct_pb2.ListValue):
        return [_plain(name, v) for v in message.values]
    plain = message.value  # type: ignore[attr-defined]
    if isinstance(plain, float):
        check_number(name, plain)
    return plain


def _plain(name: str, value: struct_pb2.Value) -> Any:
    """A Value as the plain JSON value it stands for; whole numbers as ints, as tidy_numbers does,
    and NaN or infinity (not JSON) refused naming the parameter."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = check_number(name, value.number_value)
        return int(number) if number.is_integer() and abs(number) <= _MAX_SAFE_INT else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _plain(name, v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(name, v) for v in value.list_value.values]
    return None  # null_value, or nothing set


def params_from(parameters: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for p in parameters:
        if not p.name:
            raise InvalidArgument("every parameter needs a name")
        if p.name in params:
            raise InvalidArgument(f"parameter {p.name!r} is given more than once")
        params[p.name] = unpack_value(p.name, p.value, p.HasField("value"))
    return params


def pack_output(raw: bytes, kind: OutputKind) -> any_pb2.Any | None:
    if kind is OutputKind.NONE:
        return None
    packed = any_pb2.Any()
    if kind is OutputKind.JSON:
        packed.Pack(json_format.ParseDict(output_value(raw, kind), struct_pb2.Value()))
    elif kind is OutputKind.TEXT:
        packed.Pack(wrappers_pb2.StringValue(value=raw.decode("utf-8")))
    else:
        packed.Pack(wrappers_pb2.BytesValue(value=raw))
    return packed


def pack_chunk(chunk: bytes) -> any_pb2.Any | None:
    """A piece of output, packed by the same rule as a whole output."""
    return pack_output(chunk, classify_output(chunk))


def artifact_from(spec: pb.ArtifactSpec) -> ArtifactSpec:
    return ArtifactSpec(
        artifact_type=spec.artifact_type,
        location=spec.location,
        artifact_id=spec.artifact_id,
        version=spec.version,
        checksum=spec.checksum,
        metadata=dict(spec.metadata),
    )


def invoke_request_from(req: pb.InvokeFunctionRequest, mode: int | None = None) -> InvokeRequest:
    """The core's request; `mode` overrides the message's (StreamFunction always streams)."""
    if req.execution_mode not in Mode._value2member_map_:
        raise InvalidArgument(
            f"execution_mode {req.execution_mode} is not valid: use SYNC (1), ASYNC (2) or STREAM (3)"
        )
    ctx = req.context
    return InvokeRequest(
        invocation_type=req.invocation_type,
        mode=Mode(req.execution_mode if mode is None else mode),
        task_id=req.task_id,
        task_name=req.task_name,
        task_description=req.task_description,
        artifact=artifact_from(req.artifact_spec) if req.HasField("artifact_spec") else None,
        function_name=req.function_name,
        params=params_from(req.parameters),
        params_bytes=sum(p.ByteSize() for p in req.parameters),
        execution_id=ctx.execution_id,
        timeout_ms=ctx.timeout_ms,
        max_retries=ctx.max_retries,
        environment=dict(ctx.environment),
        metadata=dict(req.invocation_metadata),
        create_if_not_exists=req.create_if_not_exists,
        force_new_instance=req.force_new_instance,
    )


def pb_status(status: Status) -> pb.ExecutionStatus:
    return cast(pb.ExecutionStatus, int(status))


def pb_mode(mode: Mode) -> pb.ExecutionMode:
    return cast(pb.ExecutionMode, int(mode))


def _timestamp(ms: int) -> timestamp_pb2.Timestamp | None:
    # The constructor, not FromMilliseconds: that one is Python, and a status query builds two.
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=ms % 1000 * 1_000_000) if ms else None


def record_metrics(record: ExecutionRecord) -> dict[str, str]:
    metrics = dict(record.metrics)
    metrics["attempts"] = str(record.attempts)
    metrics["queue_wait_ms"] = str(record.queue_wait_ms)
    if record.node:
        metrics["node"] = record.node
    if record.instance_id:
        metrics["instance_id"] = record.instance_id
    return metrics


def execution_result(record: ExecutionRecord, include_result: bool = True) -> pb.ExecutionResult:
    result = pb.ExecutionResult(
        status=pb_status(record.status),
        error_message=record.error_message,
        error_code=record.error_code,
        execution_time_ms=record.execution_time_ms,
        memory_used_bytes=record.memory_used_bytes,
        metrics=record_metrics(record),
        started_at=_timestamp(record.started_at),
        completed_at=_timestamp(record.completed_at),
    )
    if include_result:
        packed = pack_output(record.output, record.output_kind)
        if packed is not None:
            result.result.CopyFrom(packed)
    return result


def execution_info(record: ExecutionRecord) -> pb.ExecutionInfo:
    metadata = {**record.metadata, "attempts": str(record.attempts)}
    if record.node:
        metadata["node"] = record.node
    if record.error_code:
        metadata["error_code"] = record.error_code
    if record.instance_id:
        metadata["instance_id"] = record.instance_id
    return pb.ExecutionInfo(
        execution_id=record.execution_id,
        task_id=record.task_id,
        function_name=record.function_name,
        execution_mode=pb_mode(record.mode),
        status=pb_status(record.status),
        started_at=_timestamp(record.started_at),
        completed_at=_timestamp(record.completed_at),
        execution_time_ms=record.execution_time_ms,
        memory_used_bytes=record.memory_used_bytes,
        error_message=record.error_message,
        metadata=metadata,
    )


def task_info(task: Task, summary: TaskSummary | None = None) -> pb.TaskInfo:
    summary = summary or TaskSummary()
    return pb.TaskInfo(
        task_id=task.task_id,
        task_name=task.name,
        artifact_spec=pb.ArtifactSpec(
            artifact_id=task.artifact_id,
            artifact_type=task.artifact_type,
            location=task.location,
            version=task.version,
            checksum=task.checksum,
            metadata=task.metadata,
        ),
        created_at=task.created_at,
        updated_at=task.updated_at,
        execution_count=summary.execution_count,
        last_status=pb_status(summary.last_status),
        metadata={"description": task.description} if task.description else {},
    )


def status_from(value: int) -> Status:
    if value not in Status._value2member_map_:
        raise InvalidArgument(f"status {value} is not a valid ExecutionStatus")
    return Status(value)
