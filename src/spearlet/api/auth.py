"""Bearer-token access control for both transports. Compared in constant time, never logged."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

HEADER = "authorization"
DENIED = "a valid 'authorization: Bearer <token>' is required"


class TokenCheck:
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def allows(self, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(header.encode(), self._expected)


class GrpcTokenInterceptor(grpc.aio.ServerInterceptor):
    """Every gRPC method, health and reflection included. An accepted call keeps its own handler
    untouched; a refused one gets a handler of the same shape that aborts UNAUTHENTICATED."""

    def __init__(self, check: TokenCheck) -> None:
        self.check = check

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        header = next((v for k, v in details.invocation_metadata or () if k == HEADER), None)
        handler = await continuation(details)
        if handler is None or self.check.allows(header):
            return handler
        return _denying(handler)


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
        yield  # unreachable: makes this an async generator

    shapes = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
    }
    make = shapes.get((handler.request_streaming, handler.response_streaming))
    if make is not None:
        return make(deny, handler.request_deserializer, handler.response_serializer)
    make = (
        grpc.unary_stream_rpc_method_handler if not handler.request_streaming else grpc.stream_stream_rpc_method_handler
    )
    return make(deny_stream, handler.request_deserializer, handler.response_serializer)
