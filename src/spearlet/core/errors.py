"""Errors about the request itself. Function failures are not errors: they are FAILED records.

Each transport maps these classes to its own codes (gRPC status, HTTP status) in one place.
"""

from __future__ import annotations


class SpearletError(Exception):
    """Base of every request error; `code` is the stable machine-readable name."""

    code = "INTERNAL"


class InvalidArgument(SpearletError):
    code = "INVALID_ARGUMENT"


class NotFound(SpearletError):
    code = "NOT_FOUND"


class AlreadyExists(SpearletError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(SpearletError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(SpearletError):
    code = "RESOURCE_EXHAUSTED"


class StoreFault(SpearletError):
    """The store cannot take writes now (unreachable, or its disk is full). The node keeps serving
    what it can, refuses new work at once, and recovers by itself when the store does."""


class StoreUnavailable(StoreFault):
    """The store cannot be reached; clients (and SPEAR's SMS) may retry elsewhere."""

    code = "UNAVAILABLE"


class StoreFull(StoreFault, ResourceExhausted):
    code = "RESOURCE_EXHAUSTED"


class StartError(Exception):
    """The node cannot start, for a reason the operator can fix: one line saying what and how."""
