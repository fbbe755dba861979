"""Errors about the request itself. Function failures are not errors: they are FAILED records.

Each transport maps these classes to its own codes (gRPC status, HTTP status) in one place.
"""

from __future__ import annotations

from spearlet.core.codes import ErrorCode


class SpearletError(Exception):
    """Base of every request error; `code` is the stable machine-readable name."""

    code = ErrorCode.INTERNAL


class InvalidArgument(SpearletError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(SpearletError):
    code = ErrorCode.NOT_FOUND


class AlreadyExists(SpearletError):
    code = ErrorCode.ALREADY_EXISTS


class FailedPrecondition(SpearletError):
    code = ErrorCode.FAILED_PRECONDITION


class ResourceExhausted(SpearletError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class Unavailable(SpearletError):
    """Something the call needs is out of reach for now (say, the SMS a task comes from): callers
    (and SPEAR's SMS) may retry, here or elsewhere."""

    code = ErrorCode.UNAVAILABLE


class StoreFault(SpearletError):
    """The store cannot take writes now (unreachable, or its disk is full). The node keeps serving
    what it can, refuses new work at once, and recovers by itself when the store does."""


class StoreUnavailable(StoreFault):
    """The store cannot be reached; clients (and SPEAR's SMS) may retry elsewhere."""

    code = ErrorCode.UNAVAILABLE


class StoreFull(StoreFault, ResourceExhausted):
    code = ErrorCode.RESOURCE_EXHAUSTED


class StartError(Exception):
    """The node cannot start, for a reason the operator can fix: one line saying what and how."""
