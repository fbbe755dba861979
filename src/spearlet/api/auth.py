"""Bearer-token access control for both transports. Compared in constant time, never logged.

Calls from `trusted_networks` need no token: SPEAR's SMS calls nodes without one.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

HEADER = "authorization"
DENIED = "a valid 'authorization: Bearer <token>' is required"


class TokenCheck:
    def __init__(self, token: str, trusted_networks: Iterable[str] = ()) -> None:
        self._expected = f"Bearer {token}".encode()
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]

    def allows(self, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(header.encode(), self._expected)

    def trusts(self, address: str | None) -> bool:
        """Whether a call from `address` (an IP; None or anything else: no) needs no token."""
        if not self._trusted or not address:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener sees IPv4 callers as ::ffff:a.b.c.d
        return any(ip in network for network in self._trusted)


def peer_address(peer: str) -> str:
    """The IP of a gRPC peer string ("ipv4:10.0.0.5:4321", "ipv6:[::1]:4321"); "" for others (unix)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


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
        return _denying(handler, self.check)


def _denying(handler: grpc.RpcMethodHandler, check: TokenCheck) -> grpc.RpcMethodHandler:
    """A handler that runs `handler` for a caller in a trusted network (the peer is known only
    inside the call) and aborts UNAUTHENTICATED for anyone else."""
    behaviour = handler.unary_unary or handler.stream_unary
    streaming = handler.unary_stream or handler.stream_stream

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if behaviour is not None and check.trusts(peer_address(context.peer())):
            return await behaviour(request, context)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if streaming is not None and check.trusts(peer_address(context.peer())):
            async for item in streaming(request, context):
                yield item
            return
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

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
