"""The HTTP gateway, served by uvicorn in the node's own event loop."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from spearlet import __version__
from spearlet.core.invoker import Invoker
from spearlet.core.models import ExecutionRecord, OutputKind
from spearlet.core.values import output_value


def record_json(record: ExecutionRecord, include_result: bool = True, include_logs: bool = False) -> dict[str, Any]:
    """An execution record as JSON, named as the gRPC ExecutionResult and ExecutionInfo fields."""
    body: dict[str, Any] = {
        "execution_id": record.execution_id,
        "task_id": record.task_id,
        "function_name": record.function_name,
        "execution_mode": record.mode.name,
        "status": record.status.name,
        "completed": record.done,
        "attempts": record.attempts,
        "node": record.node,
        "created_at_ms": record.created_at,
        "started_at_ms": record.started_at or None,
        "completed_at_ms": record.completed_at or None,
        "execution_time_ms": record.execution_time_ms,
        "memory_used_bytes": record.memory_used_bytes,
        "error_code": record.error_code,
        "error_message": record.error_message,
        "metrics": record.metrics,
    }
    if include_result and record.output_kind is not OutputKind.NONE:
        value = output_value(record.output, record.output_kind)
        if isinstance(value, bytes):
            body["result"] = {"bytes_base64": base64.b64encode(value).decode("ascii")}
        else:
            body["result"] = value
    if include_logs:
        body["logs"] = record.logs.splitlines()
    return body


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(invoker: Invoker) -> FastAPI:
    app = FastAPI(title="spearlet", version=__version__)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        h = await invoker.health()
        return {"status": h.status, "message": h.message, "uptime_seconds": h.uptime_seconds}

    @app.get("/api/v1/executions/{execution_id}", response_model=None)
    async def get_execution(execution_id: str, include_logs: bool = False) -> dict[str, Any] | JSONResponse:
        record = await invoker.get(execution_id)
        if record is None:
            return _error(404, "NOT_FOUND", f"execution {execution_id!r} not found")
        return record_json(record, include_logs=include_logs)

    @app.get("/api/v1/executions/{execution_id}/status", response_model=None)
    async def execution_status(execution_id: str) -> dict[str, Any] | JSONResponse:
        record = await invoker.get(execution_id)
        if record is None:
            return _error(404, "NOT_FOUND", f"execution {execution_id!r} not found")
        return record_json(record)

    return app
