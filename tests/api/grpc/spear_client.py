"""A client of SPEAR's current spearlet services generated in the tests: spear_head_client.proto
(the tests' own copy, written from the wire facts of SPEAR's current API at upstream b583009) compiled with protoc at test time into a
descriptor pool of its own, and called over real gRPC by the methods' paths. Nothing of the node's
stubs is used, so the wire is what is tested."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from tests.helpers import private_pool

PROTO = Path(__file__).with_name("spear_head_client.proto")
METHODS = {
    "Invoke": ("InvocationService", "InvokeRequest", "InvokeResponse"),
    "GetExecution": ("ExecutionService", "GetExecutionRequest", "Execution"),
    "TerminateExecution": ("ExecutionService", "TerminateExecutionRequest", "TerminateExecutionResponse"),
    "ListExecutions": ("ExecutionService", "ListExecutionsRequest", "ListExecutionsResponse"),
    "DestroyInstance": ("InstanceService", "DestroyInstanceRequest", "DestroyInstanceResponse"),
}
# ExecutionStatus and ExecutionMode by number.
PENDING, RUNNING, COMPLETED, FAILED, TERMINATED, TIMEOUT = 1, 2, 3, 4, 5, 6
SYNC, ASYNC = 1, 2


@functools.cache
def pool() -> descriptor_pool.DescriptorPool:
    """The client's descriptors, compiled from the tests' proto now."""
    return private_pool(PROTO)


def message(name: str, **fields: Any) -> Message:
    cls = message_factory.GetMessageClass(pool().FindMessageTypeByName(f"spearlet.{name}"))
    return cls(**fields)


class SpearClient:
    """The five methods, each taking the request's fields as keywords (an `input` as
    (content_type, data)); `metadata` and `timeout` go to gRPC."""

    def __init__(self, target: str, token: str = "") -> None:
        self.channel = grpc.insecure_channel(target)
        self.token = token

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, timeout: float = 60, **fields: Any) -> Any:
        service, request_name, response_name = METHODS[method]
        response_cls = message_factory.GetMessageClass(pool().FindMessageTypeByName(f"spearlet.{response_name}"))
        if "input" in fields and isinstance(fields["input"], tuple):
            content_type, data = fields["input"]
            fields["input"] = message("Payload", content_type=content_type, data=data)
        request = message(request_name, **fields)
        stub = self.channel.unary_unary(
            f"/spearlet.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else None
        return stub(request, timeout=timeout, metadata=metadata)

    def invoke(self, task_id: str, **fields: Any) -> Any:
        return self.call("Invoke", task_id=task_id, **fields)

    def get(self, execution_id: str, include_output: bool = False) -> Any:
        return self.call("GetExecution", execution_id=execution_id, include_output=include_output)

    def terminate(self, execution_id: str, reason: str = "") -> Any:
        return self.call("TerminateExecution", execution_id=execution_id, reason=reason)

    def list(self, **fields: Any) -> Any:
        return self.call("ListExecutions", **fields)

    def destroy(self, instance_id: str, reason: str = "") -> Any:
        return self.call("DestroyInstance", instance_id=instance_id, reason=reason)
