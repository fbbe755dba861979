"""The Python client of a spearlet node: call functions as naturally as calling a function.

    from spearlet.client import Client, FunctionFailed

    with Client() as client:                       # SPEARLET_TARGET, SPEARLET_TOKEN, SPEARLET_TLS_CA
        client.invoke("hello", name="Ada")         # {'greeting': 'Hello, Ada!'}
        try:
            client.invoke("fail")
        except FunctionFailed as failure:
            print(failure.error_code, failure.logs)

`AsyncClient` has the same methods as coroutines. README, "Python client", has the whole tour.
"""

from spearlet.client.aio import AsyncClient, AsyncExecution, AsyncStream
from spearlet.client.errors import (
    AlreadyExists,
    ClientError,
    ExecutionNotFound,
    FailedPrecondition,
    FunctionFailed,
    InvalidArgument,
    NotFound,
    Overloaded,
    RequestError,
    TaskNotFound,
    Unauthenticated,
    Unavailable,
)
from spearlet.client.messages import Event, EventKind, Options
from spearlet.client.sync import Client, Execution, Stream
from spearlet.core.models import Status

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "AsyncExecution",
    "AsyncStream",
    "Client",
    "ClientError",
    "Event",
    "EventKind",
    "Execution",
    "ExecutionNotFound",
    "FailedPrecondition",
    "FunctionFailed",
    "InvalidArgument",
    "NotFound",
    "Options",
    "Overloaded",
    "RequestError",
    "Status",
    "Stream",
    "TaskNotFound",
    "Unauthenticated",
    "Unavailable",
]
