"""What a call through the client can raise.

Two families, as on the wire (README, "Error codes"): `FunctionFailed`, the function ran and did
not complete (the node answered, with an error code of its own), and `RequestError`, the node
refused the request or could not be reached; each keeps the gRPC status code it came with.

    try:
        client.invoke("fail")
    except FunctionFailed as failure:
        print(failure.status.name, failure.error_code, failure.logs[-1:])
    except TaskNotFound:
        ...
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from spearlet.core.models import Status


class ClientError(Exception):
    """Base of everything the client raises about a call."""


class FunctionFailed(ClientError):
    """The execution ended other than COMPLETED: FAILED, TIMEOUT or CANCELLED.

    `error_code` is the node's (README, "Error codes": NONZERO_EXIT, TIMEOUT, ...), `message` its
    error message, `logs` the tail of the function's log as the node kept it (empty when it could
    not be read)."""

    def __init__(self, execution_id: str, status: Status, error_code: str, message: str, logs: list[str]) -> None:
        super().__init__(f"execution {execution_id} ended {status.name}: {error_code or '?'}: {message}".rstrip(": "))
        self.execution_id = execution_id
        self.status = status
        self.error_code = error_code
        self.message = message
        self.logs = logs


class RequestError(ClientError):
    """The node refused the request, or no node answered. `code` is the gRPC status code and
    `details` the node's explanation."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class NotFound(RequestError):
    """An unknown task or execution."""


class TaskNotFound(NotFound):
    """No task of that id on the node."""


class ExecutionNotFound(NotFound):
    """No execution of that id (never started, expired, or another cluster's)."""


class InvalidArgument(RequestError):
    """A malformed request: a parameter that cannot be sent (NaN, an unsupported type), a bad
    artifact, a callback URL not allowed, ..."""


class AlreadyExists(RequestError):
    """A task of that name exists and `replace` was not set."""


class FailedPrecondition(RequestError):
    """A task with active executions deleted without `force`."""


class Overloaded(RequestError):
    """RESOURCE_EXHAUSTED: the node's queue is full (retry later) or a message is too large."""


class Unauthenticated(RequestError):
    """The node requires a token and the call had none, or the wrong one."""


class Unavailable(RequestError):
    """No node answers at the target (or TLS was not agreed)."""


_BY_CODE: dict[grpc.StatusCode, type[RequestError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


def request_error(exc: grpc.RpcError, not_found: type[NotFound] = NotFound) -> RequestError:
    """The typed error of a failed RPC; `not_found` says which thing a NOT_FOUND is about."""
    code: grpc.StatusCode = exc.code()
    details: str = exc.details() or ""
    cls = not_found if code is grpc.StatusCode.NOT_FOUND else _BY_CODE.get(code, RequestError)
    return cls(code, details)


def raise_request_error(exc: grpc.RpcError, not_found: type[NotFound] = NotFound) -> NoReturn:
    raise request_error(exc, not_found) from exc
