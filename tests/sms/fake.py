"""A fake SPEAR SMS: a real grpc.aio server of the services a node calls, built from the tests' own
proto (fake_sms.proto, compiled at import into a descriptor pool of its own, so that nothing of the
node's generated code is shared), and a tiny HTTP server of `GET /api/v1/files/<id>`."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from tests.helpers import private_pool

PROTO = Path(__file__).with_name("fake_sms.proto")


POOL = private_pool(PROTO)


def message(name: str) -> type[Message]:
    """The tests' class of `sms.<name>`."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"sms.{name}"))


def enum(name: str, value: str) -> int:
    return int(POOL.FindEnumTypeByName(f"sms.{name}").values_by_name[value].number)


def enum_name(name: str, number: int) -> str:
    return str(POOL.FindEnumTypeByName(f"sms.{name}").values_by_number[number].name)


class _Files(http.server.BaseHTTPRequestHandler):
    # Each FakeSms makes a subclass with its own (the server builds a handler per request).
    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        prefix = "/api/v1/files/"
        body = self.files.get(self.path.removeprefix(prefix)) if self.path.startswith(prefix) else None
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


class FakeSms:
    def __init__(self) -> None:
        self.nodes: dict[str, Message] = {}
        self.registrations: list[Message] = []
        self.heartbeats: list[Message] = []
        self.resources: list[Message] = []
        self.executions: list[Message] = []
        self.instances: list[Message] = []
        self.get_task_calls: list[str] = []
        self.tasks: dict[str, Message] = {}
        self.port = 0
        self._server: grpc.aio.Server | None = None
        handler = type("Files", (_Files,), {"files": {}, "requests": []})
        self.files: dict[str, bytes] = handler.files
        self.file_requests: list[str] = handler.requests
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http_thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._http_thread.start()

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self._http.server_address[1]}"

    async def start(self) -> None:
        """Serve (again: on the same port after a stop)."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(self._handlers())
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    async def close(self) -> None:
        await self.stop()
        self._http.shutdown()
        self._http.server_close()

    def add_task(
        self,
        task_id: str,
        kind: str,
        uri: str,
        name: str = "",
        checksum: str = "",
        config: dict[str, str] | None = None,
    ) -> None:
        task = message("Task")(
            task_id=task_id,
            name=task_id,
            status=enum("TaskStatus", "TASK_STATUS_ACTIVE"),
            config=config or {},
            executable=message("TaskExecutable")(
                type=enum("ExecutableType", f"EXECUTABLE_TYPE_{kind}"), uri=uri, name=name, checksum_sha256=checksum
            ),
        )
        self.tasks[task_id] = task

    async def wait_for(self, what: Callable[[], Any], timeout: float = 10.0) -> Any:
        """The first true value of `what()`, polled until `timeout`."""
        deadline = time.monotonic() + timeout
        while not (value := what()):
            assert time.monotonic() < deadline, "the fake SMS never saw what the test waits for"
            await asyncio.sleep(0.02)
        return value

    def executions_of(self, execution_id: str) -> list[tuple[str, Message]]:
        return [(enum_name("ExecutionStatus", e.status), e) for e in self.executions if e.execution_id == execution_id]

    def instance_statuses(self, instance_id: str) -> list[str]:
        return [enum_name("InstanceStatus", i.status) for i in self.instances if i.instance_id == instance_id]

    # --- the services ----------------------------------------------------------------------------

    async def _register(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        self.nodes[request.node.uuid] = request.node
        self.registrations.append(request.node)
        return message("RegisterNodeResponse")(success=True, message="registered", node_uuid=request.node.uuid)

    async def _heartbeat(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        if request.uuid not in self.nodes:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.uuid} not found")
        self.heartbeats.append(request)
        return message("HeartbeatResponse")(success=True, server_timestamp=int(time.time()))

    async def _resource(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        self.resources.append(request.resource)
        return message("UpdateNodeResourceResponse")(success=True)

    async def _get_task(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        self.get_task_calls.append(request.task_id)
        task = self.tasks.get(request.task_id)
        if task is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id} not found")
        return message("GetTaskResponse")(found=True, task=task)

    async def _report_execution(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        self.executions.append(request)
        return message("ReportExecutionResponse")(accepted=True, stored_updated_at_ms=request.updated_at_ms)

    async def _report_instance(self, request: Any, context: grpc.aio.ServicerContext) -> Message:
        self.instances.append(request)
        return message("ReportInstanceResponse")(accepted=True, stored_updated_at_ms=request.updated_at_ms)

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        behaviours = {
            "NodeService": {
                "RegisterNode": self._register,
                "Heartbeat": self._heartbeat,
                "UpdateNodeResource": self._resource,
            },
            "TaskService": {"GetTask": self._get_task},
            "ExecutionRegistryService": {"ReportExecution": self._report_execution},
            "InstanceRegistryService": {"ReportInstance": self._report_instance},
        }
        handlers = []
        for service, methods in behaviours.items():
            descriptor = POOL.FindServiceByName(f"sms.{service}")
            table = {}
            for name, behaviour in methods.items():
                method = descriptor.methods_by_name[name]
                request = message_factory.GetMessageClass(method.input_type)
                table[name] = grpc.unary_unary_rpc_method_handler(
                    behaviour,
                    request_deserializer=request.FromString,
                    response_serializer=lambda m: m.SerializeToString(),
                )
            handlers.append(grpc.method_handlers_generic_handler(f"sms.{service}", table))
        return handlers
