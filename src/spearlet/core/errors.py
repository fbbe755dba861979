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
