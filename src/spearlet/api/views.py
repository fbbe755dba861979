"""JSON views of core objects for people and scripts (the HTTP record view, callback payloads)."""

from __future__ import annotations

import base64
from typing import Any

from spearlet.core.models import ExecutionRecord, OutputKind
from spearlet.core.values import output_value


def record_json(
    record: ExecutionRecord, include_result: bool = True, include_logs: bool = False, include_params: bool = False
) -> dict[str, Any]:
    """An execution record with plain values: the result as JSON (bytes as base64), times in ms."""
    body: dict[str, Any] = {
        "execution_id": record.execution_id,
        "task_id": record.task_id,
        "function_name": record.function_name,
        "execution_mode": record.mode.name,
        "status": record.status.name,
        "completed": record.done,
        "attempts": record.attempts,
        "node": record.node,
        "instance_id": record.instance_id,
        "invocation_id": record.invocation_id,
        "created_at_ms": record.created_at,
        "started_at_ms": record.started_at or None,
        "completed_at_ms": record.completed_at or None,
        "execution_time_ms": record.execution_time_ms,
        "memory_used_bytes": record.memory_used_bytes,
        "error_code": record.error_code,
        "error_message": record.error_message,
        "metrics": record.metrics,
    }
    if include_params:
        body["parameters"] = {name: _plain(value) for name, value in record.params.items()}
    if include_result and record.output_kind is not OutputKind.NONE:
        body["result"] = _plain(output_value(record.output, record.output_kind))
    if include_logs:
        body["logs"] = record.logs.splitlines()
    return body


def _plain(value: Any) -> Any:
    """A value as JSON, bytes as `{"bytes_base64": ...}`."""
    return {"bytes_base64": base64.b64encode(value).decode("ascii")} if isinstance(value, bytes) else value
