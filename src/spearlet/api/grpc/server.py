"""The gRPC transport: FunctionService, the TaskService extension, SPEAR's current services
(head.py), health and reflection.

Thin by design: convert the message, call the engine, convert back. Request errors become status
codes in one place (`_errors`); a function's own failure is a successful RPC with success=false.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from spearlet.api.auth import GrpcTokenInterceptor, TokenCheck
from spearlet.api.grpc import spear_head_pb2 as hpb
from spearlet.api.grpc import spearlet_pb2 as pb
from spearlet.api.grpc import spearlet_pb2_grpc as pb_grpc
from spearlet.api.grpc.head import HeadApi
from spearlet.api.service import FunctionApi
from spearlet.core.codes import ErrorCode
from spearlet.core.errors import InvalidArgument, SpearletError

log = logging.getLogger(__name__)

_CODES = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}
# The services of spear_head.proto (head.py).
HEAD_SERVICES = frozenset(hpb.DESCRIPTOR.services_by_name)
R = TypeVar("R")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]
# Told of every call: method name, status code name, seconds (metrics).
Observer = Callable[[str, str, float], None]


def _ignore(method: str, code: str, seconds: float) -> None:
    pass


class _Servicer:
    def __init__(self, api: FunctionApi, observe: Observer = _ignore) -> None:
        self.api = api
        self.observe = observe


def _errors(handler: Handler[R]) -> Handler[R]:
    """Request errors to status codes, and each call's latency and code to the observer. (Cheaper
    than a grpc.aio interceptor, which builds a new method handler per call.) SPEAR's current
    services are observed as `<Service>.<Method>`: their ListExecutions is not the seed era's."""
    service = handler.__qualname__.split(".")[0]
    method = handler.__qualname__ if service in HEAD_SERVICES else handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: _Servicer, request: Any, context: grpc.aio.ServicerContext) -> R:
        started = time.perf_counter()
        code = grpc.StatusCode.OK.name
        try:
            if isinstance(request, Malformed):
                raise InvalidArgument(request.message)
            return await handler(self, request, context)
        except SpearletError as exc:
            status = _CODES.get(exc.code, grpc.StatusCode.INTERNAL)
            code = status.name
            await context.abort(status, str(exc))
            raise  # unreachable: abort raises
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED.name
            raise
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL.name
            await context.abort(grpc.StatusCode.INTERNAL, _internal(method, exc))
            raise  # unreachable: abort raises
        finally:
            self.observe(method, code, time.perf_counter() - started)

    return wrapper


class FunctionService(_Servicer, pb_grpc.FunctionServiceServicer):
    @_errors
    async def InvokeFunction(
        self, request: pb.InvokeFunctionRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvokeFunctionResponse:
        return await self.api.invoke(request)

    @_errors
    async def GetExecutionStatus(
        self, request: pb.GetExecutionStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetExecutionStatusResponse:
        return await self.api.status(request)

    @_errors
    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelExecutionResponse:
        return await self.api.cancel(request)

    async def StreamFunction(
        self, request: pb.InvokeFunctionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.StreamExecutionResult, None]:
        async for message in _stream_errors(self, "StreamFunction", self.api.stream, request, context):
            yield message

    @_errors
    async def ListTasks(self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext) -> pb.ListTasksResponse:
        return await self.api.list_tasks(request)

    @_errors
    async def GetTask(self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext) -> pb.GetTaskResponse:
        return await self.api.get_task(request)

    @_errors
    async def DeleteTask(
        self, request: pb.DeleteTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteTaskResponse:
        return await self.api.delete_task(request)

    @_errors
    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExecutionsResponse:
        return await self.api.list_executions(request)

    @_errors
    async def GetHealth(self, request: pb.GetHealthRequest, context: grpc.aio.ServicerContext) -> pb.GetHealthResponse:
        return await self.api.health(request)

    @_errors
    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.GetStatsResponse:
        return await self.api.stats(request)


class TaskService(_Servicer, pb_grpc.TaskServiceServicer):
    @_errors
    async def RegisterTask(
        self, request: pb.RegisterTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterTaskResponse:
        return await self.api.register_task(request)


class WatchService(_Servicer, pb_grpc.WatchServiceServicer):
    async def WatchExecution(
        self, request: pb.WatchExecutionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.StreamExecutionResult, None]:
        async for message in _stream_errors(self, "WatchExecution", self.api.watch, request, context):
            yield message


class _HeadServicer(_Servicer):
    def __init__(self, api: FunctionApi, observe: Observer = _ignore) -> None:
        super().__init__(api, observe)
        self.head = HeadApi(api)


class InvocationService(_HeadServicer):
    """spearlet.InvocationService of SPEAR today (spear_head.proto)."""

    @_errors
    async def Invoke(self, request: hpb.InvokeRequest, context: grpc.aio.ServicerContext) -> hpb.InvokeResponse:
        return await self.head.invoke(request)


class ExecutionService(_HeadServicer):
    """spearlet.ExecutionService of SPEAR today (spear_head.proto)."""

    @_errors
    async def GetExecution(self, request: hpb.GetExecutionRequest, context: grpc.aio.ServicerContext) -> hpb.Execution:
        return await self.head.get_execution(request)

    @_errors
    async def TerminateExecution(
        self, request: hpb.TerminateExecutionRequest, context: grpc.aio.ServicerContext
    ) -> hpb.TerminateExecutionResponse:
        return await self.head.terminate(request)

    @_errors
    async def ListExecutions(
        self, request: hpb.ListExecutionsRequest, context: grpc.aio.ServicerContext
    ) -> hpb.ListExecutionsResponse:
        return await self.head.list_executions(request)


class InstanceService(_HeadServicer):
    """spearlet.InstanceService of SPEAR today (spear_head.proto)."""

    @_errors
    async def DestroyInstance(
        self, request: hpb.DestroyInstanceRequest, context: grpc.aio.ServicerContext
    ) -> hpb.DestroyInstanceResponse:
        return await self.head.destroy_instance(request)


async def _stream_errors(
    servicer: _Servicer,
    method: str,
    stream: Callable[[Any], AsyncGenerator[pb.StreamExecutionResult, None]],
    request: Any,
    context: grpc.aio.ServicerContext,
) -> AsyncGenerator[pb.StreamExecutionResult, None]:
    """`_errors` for server-streaming methods. A client that goes away cancels this generator,
    and closing the stream lets the engine react (a stream cancels its execution)."""
    started = time.perf_counter()
    code = grpc.StatusCode.OK.name
    try:
        if isinstance(request, Malformed):
            raise InvalidArgument(request.message)
        async with contextlib.aclosing(stream(request)) as messages:
            async for message in messages:
                yield message
    except SpearletError as exc:
        status = _CODES.get(exc.code, grpc.StatusCode.INTERNAL)
        code = status.name
        await context.abort(status, str(exc))
    except (asyncio.CancelledError, GeneratorExit):
        code = grpc.StatusCode.CANCELLED.name
        raise
    except Exception as exc:
        code = grpc.StatusCode.INTERNAL.name
        await context.abort(grpc.StatusCode.INTERNAL, _internal(method, exc))
    finally:
        servicer.observe(method, code, time.perf_counter() - started)


def _internal(method: str, exc: Exception) -> str:
    """What a caller hears of a failure of the node itself: its kind, not its paths or traceback,
    which go to the node's log."""
    log.error("%s failed", method, exc_info=exc)
    return f"internal error of the node ({type(exc).__name__}): its log has the details"


class Malformed:
    """What a request that does not parse becomes; the servicer answers INVALID_ARGUMENT."""

    def __init__(self, message: str) -> None:
        self.message = message


def _parser(cls: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return Malformed(f"the request is not a valid {cls.DESCRIPTOR.full_name}: {exc}")

    return parse


def _add_service(server: grpc.aio.Server, name: str, servicer: _Servicer, stubs: ModuleType = pb) -> None:
    """As the generated add_*_to_server, but a request that does not parse reaches the servicer
    (as Malformed) instead of failing inside grpc with UNKNOWN. `stubs`: the generated module
    that defines the service."""
    handlers = {}
    for method in stubs.DESCRIPTOR.services_by_name[name].methods:
        request_cls = getattr(stubs, method.input_type.name)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_parser(request_cls),
            response_serializer=getattr(stubs, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(f"spearlet.{name}", handlers),))


def build_server(
    api: FunctionApi,
    address: str,
    observe: Observer = _ignore,
    token: str = "",
    trusted_networks: Sequence[str] = (),
    max_message_bytes: int = 8 << 20,
    min_ping_interval_ms: int = 1000,
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A grpc.aio server with every service added, bound to `address` (TLS only, with `tls`: the
    PEM certificate chain and private key); returns it and its port. OSError if it cannot bind."""
    server = grpc.aio.server(
        interceptors=[GrpcTokenInterceptor(TokenCheck(token, trusted_networks))] if token else None,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            # grpc's default accepts a ping every 5 minutes when no data flows, so a client with a
            # keepalive of seconds was cut off in the middle of a long call (GOAWAY too_many_pings).
            ("grpc.http2.min_ping_interval_without_data_ms", min_ping_interval_ms),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    _add_service(server, "FunctionService", FunctionService(api, observe))
    _add_service(server, "TaskService", TaskService(api, observe))
    _add_service(server, "WatchService", WatchService(api, observe))
    _add_service(server, "InvocationService", InvocationService(api, observe), hpb)
    _add_service(server, "ExecutionService", ExecutionService(api, observe), hpb)
    _add_service(server, "InstanceService", InstanceService(api, observe), hpb)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        *(
            pb.DESCRIPTOR.services_by_name[name].full_name
            for name in ("FunctionService", "TaskService", "WatchService")
        ),
        *(s.full_name for s in hpb.DESCRIPTOR.services_by_name.values()),
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        TwoPoolReflection(names, (descriptor_pool.Default(), hpb.POOL)), server
    )
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            certificate, key = tls
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, certificate)]))
    except RuntimeError as exc:  # grpc says only that it failed
        raise OSError(f"cannot bind gRPC on {address}") from exc
    return server, port, health_servicer


class TwoPoolReflection(reflection_aio.ReflectionServicer):
    """Reflection over several descriptor pools, asked in order: the seed-era contract lives in the
    default pool and SPEAR's current services in their own (spear_head_pb2.POOL), because both
    define some of the same names in package `spearlet`. A name both define (`spearlet.ExecutionStatus`,
    `spearlet.ListExecutionsRequest`, ...) is answered from the first pool; every service, method and
    file is found in the pool that has it, with its whole file, so a client that reflects on
    `spearlet.InvocationService` gets spear_head.proto and builds exactly its types."""

    def __init__(self, service_names: tuple[str, ...], pools: tuple[descriptor_pool.DescriptorPool, ...]) -> None:
        super().__init__(service_names, pool=pools[0])
        self._pools = pools

    def _first(self, lookup: Callable[..., reflection_pb2.ServerReflectionResponse], *args: Any) -> Any:
        response = None
        for pool in self._pools:
            self._pool = pool  # the base class looks up in self._pool; nothing awaits in between
            response = lookup(*args)
            if not response.HasField("error_response"):
                break
        self._pool = self._pools[0]
        return response

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return self._first(super()._file_by_filename, request, filename)

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        return self._first(super()._file_containing_symbol, request, fully_qualified_name)

    def _file_containing_extension(self, request: Any, containing_type: str, extension_number: int) -> Any:
        return self._first(super()._file_containing_extension, request, containing_type, extension_number)

    def _all_extension_numbers_of_type(self, request: Any, containing_type: str) -> Any:
        return self._first(super()._all_extension_numbers_of_type, request, containing_type)
