"""Messages <-> core objects. The only place that knows both the wire and the core."""

from __future__ import annotations

from typing import Any, cast

from google.protobuf import any_pb2, json_format, struct_pb2, timestamp_pb2, wrappers_pb2

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc.values import unpack_value
from spearlet.core.errors import InvalidArgument
from spearlet.core.models import ArtifactSpec, ExecutionRecord, Mode, OutputKind, Status, Task
from spearlet.core.queries import TaskSummary
from spearlet.core.values import RAW_INPUT, classify_output, output_value
from spearlet.engine.invoker import InvokeRequest


def params_from(parameters: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for p in parameters:
        if not p.name:
            raise InvalidArgument("every parameter needs a name")
        if p.name in params:
            raise InvalidArgument(f"parameter {p.name!r} is given more than once")
        if p.name == RAW_INPUT:
            raise InvalidArgument(f"parameter name {RAW_INPUT!r} is reserved (the raw input of SPEAR's Invoke)")
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
    if record.invocation_id:  # SPEAR's Invoke groups executions under it
        metadata["invocation_id"] = record.invocation_id
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
