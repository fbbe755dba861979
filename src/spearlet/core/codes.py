"""Every error code the node gives, in one place (README, "Error codes").

An execution that does not complete says why in its record's `error_code`: one of the first group,
produced by a runtime (the function's own failure) or by the engine (the node's). A refused request
says why in its error's `code` (errors.SpearletError), one of the second group, which each transport
maps to its own status (gRPC status code, HTTP status). INTERNAL is both: a bug in the node.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # An execution's failure (ExecutionRecord.error_code, runtimes.base.Outcome.error_code)
    NONZERO_EXIT = "NONZERO_EXIT"
    KILLED_BY_SIGNAL = "KILLED_BY_SIGNAL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CPU_LIMIT_EXCEEDED = "CPU_LIMIT_EXCEEDED"
    FILE_SIZE_LIMIT_EXCEEDED = "FILE_SIZE_LIMIT_EXCEEDED"
    PROCESS_LIMIT_EXCEEDED = "PROCESS_LIMIT_EXCEEDED"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    SPAWN_FAILED = "SPAWN_FAILED"
    FUNCTION_ERROR = "FUNCTION_ERROR"
    INSTANCE_CRASHED = "INSTANCE_CRASHED"
    INSTANCE_START_FAILED = "INSTANCE_START_FAILED"
    TRAP = "TRAP"
    NO_ENTRY = "NO_ENTRY"
    INSTANTIATION_FAILED = "INSTANTIATION_FAILED"
    ARTIFACT_UNAVAILABLE = "ARTIFACT_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    NODE_RESTARTED = "NODE_RESTARTED"
    NODE_LOST = "NODE_LOST"
    TASK_DELETED = "TASK_DELETED"
    INTERNAL = "INTERNAL"

    # A refused request (SpearletError.code; the HTTP gateway's own refusals too)
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
