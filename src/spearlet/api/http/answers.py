"""The HTTP door's busiest answers as JSON objects, built field by field.

They print exactly what `message_json` (json_format, proto3 JSON mapping, every field) prints for
the same message, at several times less cost: an invoke's answer and a status query's are most of
what the door serves, and json_format's generic printer cost more than the rest of the route.
"""

from __future__ import annotations

from typing import Any

from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc.values import message_json

_STATUS_NAMES = {v.number: v.name for v in pb.ExecutionStatus.DESCRIPTOR.values}


def result_json(result: pb.ExecutionResult) -> dict[str, Any]:
    """An ExecutionResult as `message_json` prints it, built field by field: the HTTP door's two
    busiest answers (an invoke, a status) cost several times less than with json_format's generic
    printer. tests/api/http/test_answers.py holds it equal to message_json."""
    out: dict[str, Any] = {"status": _STATUS_NAMES.get(result.status, result.status)}
    if result.HasField("result"):
        out["result"] = message_json(result.result)
    out["error_message"] = result.error_message
    out["error_code"] = result.error_code
    out["execution_time_ms"] = str(result.execution_time_ms)
    out["memory_used_bytes"] = str(result.memory_used_bytes)
    out["metrics"] = dict(result.metrics)
    if result.HasField("started_at"):
        out["started_at"] = result.started_at.ToJsonString()
    if result.HasField("completed_at"):
        out["completed_at"] = result.completed_at.ToJsonString()
    return out


def invoke_response_json(response: pb.InvokeFunctionResponse) -> dict[str, Any]:
    """An InvokeFunctionResponse as `message_json` prints it (see result_json)."""
    out: dict[str, Any] = {
        "success": response.success,
        "message": response.message,
        "execution_id": response.execution_id,
        "task_id": response.task_id,
        "instance_id": response.instance_id,
    }
    if response.HasField("result"):
        out["result"] = result_json(response.result)
    out["status_endpoint"] = response.status_endpoint
    out["estimated_completion_ms"] = str(response.estimated_completion_ms)
    return out


def status_response_json(response: pb.GetExecutionStatusResponse) -> dict[str, Any]:
    """A GetExecutionStatusResponse as `message_json` prints it (see result_json)."""
    out: dict[str, Any] = {"found": response.found}
    if response.HasField("result"):
        out["result"] = result_json(response.result)
    out["logs"] = list(response.logs)
    out["message"] = response.message
    return out
