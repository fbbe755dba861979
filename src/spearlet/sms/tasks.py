"""Tasks placed by the SMS: a task this node does not have is asked of the SMS (TaskService/GetTask),
its artifact fetched (`smsfile://<id>` from the SMS's HTTP API, http(s) as any artifact), its
checksum checked, and it is registered here under the SMS's task id (TaskRegistry.source).

Runtimes by the task's executable type: WASM -> wasm; BINARY, SCRIPT, PROCESS -> process; CONTAINER
is refused. A task's `config` or `metadata` entries named `spearlet.<setting>` are its spearlet
task settings (README "Task settings"), and `spearlet.runtime` chooses the runtime: `python` runs
a `.py` file, package or zip on the warm Python runtime (with `spearlet.entry` = `module:function`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

import grpc
import httpx

from spearlet.artifacts.download import download
from spearlet.artifacts.local import Budget
from spearlet.config import split_host_port
from spearlet.core.errors import InvalidArgument, Unavailable
from spearlet.core.models import ArtifactSpec, Task
from spearlet.core.net import HostRules
from spearlet.engine.registry import TaskRegistry
from spearlet.sms import sms_pb2 as sms
from spearlet.sms import sms_pb2_grpc as sms_grpc

SMSFILE = "smsfile://"
SETTING_PREFIX = "spearlet."
GET_TASK_TIMEOUT_S = 10.0
RUNTIME_OF_TYPE = {
    sms.EXECUTABLE_TYPE_WASM: "wasm",
    sms.EXECUTABLE_TYPE_BINARY: "process",
    sms.EXECUTABLE_TYPE_SCRIPT: "process",
    sms.EXECUTABLE_TYPE_PROCESS: "process",
}
log = logging.getLogger(__name__)


def task_spec(task: sms.Task) -> tuple[str, str, ArtifactSpec]:
    """(runtime, location, spec) of an SMS task; InvalidArgument when this node cannot run it."""
    executable = task.executable
    settings = {
        key.removeprefix(SETTING_PREFIX): value
        for source in (task.metadata, task.config)
        for key, value in source.items()
        if key.startswith(SETTING_PREFIX)
    }
    runtime = settings.pop("runtime", "")
    if not runtime:
        if executable.type == sms.EXECUTABLE_TYPE_CONTAINER:
            raise InvalidArgument(
                f"task {task.task_id!r} is a CONTAINER task: this node runs no containers "
                "(WASM, BINARY, SCRIPT, PROCESS, or a Python entry: spearlet.runtime = python)"
            )
        if executable.type not in RUNTIME_OF_TYPE:
            kind = sms.ExecutableType.Name(executable.type) if executable.type in sms.ExecutableType.values() else "?"
            raise InvalidArgument(f"task {task.task_id!r} has an executable of type {kind} this node cannot run")
        runtime = RUNTIME_OF_TYPE[executable.type]
    if not executable.uri:
        raise InvalidArgument(f"task {task.task_id!r} names no executable uri")
    checksum = f"sha256:{executable.checksum_sha256.lower()}" if executable.checksum_sha256 else ""
    spec = ArtifactSpec(
        artifact_type=runtime, location=executable.uri, version=task.version, checksum=checksum, metadata=settings
    )
    return runtime, executable.uri, spec


class SmsTasks:
    """The TaskRegistry's source of tasks a SPEAR cluster's SMS places on this node."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        http_addr: str,
        registry: TaskRegistry,
        scratch: Path,
        max_bytes: int,
        timeout_s: float,
    ) -> None:
        self._stub = sms_grpc.TaskServiceStub(channel)
        self._http_addr = http_addr
        self._registry = registry
        self._scratch = scratch
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self.fetched = 0

    async def __call__(self, task_id: str) -> Task | None:
        try:
            response = await self._stub.GetTask(sms.GetTaskRequest(task_id=task_id), timeout=GET_TASK_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable(
                f"task {task_id!r} is not on this node and the SMS could not be asked: {exc.details()}"
            ) from None
        if not response.found:
            return None
        task = await self._register(response.task)
        self.fetched += 1
        log.info("task %s fetched from the SMS (%s)", task.task_id, task.artifact_type)
        return task

    async def _register(self, placed: sms.Task) -> Task:
        runtime, uri, spec = task_spec(placed)
        description = placed.description or placed.name
        if not uri.startswith(SMSFILE):
            # http(s) and others: fetched like any caller's artifact, within the node's rules.
            return await self._registry.register(placed.task_id, spec, description, for_caller=True)
        scratch = Path(tempfile.mkdtemp(prefix="sms-", dir=self._scratch))
        try:
            name = Path(placed.executable.name).name or Path(uri.removeprefix(SMSFILE)).name or "artifact"
            if runtime == "python" and not name.endswith((".py", ".zip")):
                name += ".py"
            local = scratch / name
            digest = await self._fetch_file(uri, local)
            if spec.checksum and spec.checksum != f"sha256:{digest}":
                raise InvalidArgument(
                    f"checksum mismatch for {uri!r} of task {placed.task_id!r}: the SMS says {spec.checksum}, "
                    f"the file it served is sha256:{digest}"
                )
            local.chmod(0o755 if runtime == "process" else 0o644)
            # The node's own copy: registered like a file of the tasks file (for_caller=False).
            own = ArtifactSpec(runtime, str(local), spec.artifact_id, spec.version, f"sha256:{digest}", spec.metadata)
            task = await self._registry.register(placed.task_id, own, description, for_caller=False)
            # Its location is the SMS's, not the download's (gone now): what GetTask and the
            # messages of its failures show callers. Its artifact stays in the cache by digest.
            task.location = uri
            await self._registry.store.put_task(task)
            return task
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _fetch_file(self, uri: str, target: Path) -> str:
        """Download an `smsfile://<id>` from the SMS's HTTP API into `target`; its sha256."""
        file_id = uri.removeprefix(SMSFILE).strip("/")
        if not file_id or "/" in file_id:
            raise InvalidArgument(f"{uri!r} is not an smsfile://<id> location")
        if not self._http_addr:
            raise InvalidArgument(f"{uri!r} needs the SMS's HTTP address: set sms_http_addr (--sms-http-addr)")
        host, port = split_host_port(self._http_addr)  # validated with the settings
        url = httpx.URL(scheme="http", host=host, port=port, path=f"/api/v1/files/{file_id}")
        budget = Budget(self._max_bytes, self._timeout_s, f"{uri!r} is larger than artifact_limit_mb")
        # The SMS is the node's own choice of server: any host (it is where the setting says).
        return await download(url, target, HostRules(["*"]), budget, ("http",))
