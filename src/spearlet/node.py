"""A node: the store, runtimes, scheduler and invoker wired together behind gRPC and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import hashlib
import logging
import os
import signal
import socket
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from grpc_health.v1 import health_pb2

from spearlet.api.grpc.server import build_server
from spearlet.api.http.app import create_app
from spearlet.api.http.dashboard import Dashboard
from spearlet.api.service import FunctionApi
from spearlet.artifacts import ArtifactFetcher
from spearlet.callbacks import Callbacks
from spearlet.cluster import Cluster
from spearlet.config import Settings
from spearlet.core.invoker import Invoker
from spearlet.core.lifecycle import Lifecycle
from spearlet.core.models import ArtifactSpec
from spearlet.core.tasks import TaskRegistry
from spearlet.observability.metrics import Metrics
from spearlet.runtimes.base import Runtime
from spearlet.runtimes.bubblewrap import SandboxUnavailable, hidden_paths, start_sandbox
from spearlet.runtimes.process import ProcessRuntime
from spearlet.runtimes.python import PythonRuntime
from spearlet.runtimes.sandbox import FunctionUser, kill_leftovers, resolve_user, set_node_mark, world_traversable
from spearlet.runtimes.wasm import WasmRuntime
from spearlet.scheduler import Scheduler
from spearlet.store.base import Store
from spearlet.store.memory import MemoryStore
from spearlet.store.redis import RedisStore
from spearlet.store.sqlite import SqliteStore

log = logging.getLogger(__name__)


def bundled_tasks_file() -> Path:
    return Path(str(resources.files("spearlet") / "examples" / "tasks.toml"))


def read_tasks_file(path: Path) -> list[tuple[str, str, ArtifactSpec]]:
    """(name, description, spec) of each [[task]] in a tasks file; locations are relative to it."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    tasks = []
    for entry in data.get("task", []):
        location = str(entry["location"])
        if "://" not in location and not Path(location).is_absolute():
            location = str((path.parent / location).resolve())
        spec = ArtifactSpec(
            artifact_type=str(entry.get("type", "process")),
            location=location,
            version=str(entry.get("version", "")),
            checksum=str(entry.get("checksum", "")),
            metadata={k: str(v) for k, v in entry.get("metadata", {}).items()},
        )
        tasks.append((str(entry["name"]), str(entry.get("description", "")), spec))
    return tasks


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: the node, not uvicorn, owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: Store
        if settings.store == "sqlite":
            self.store = SqliteStore(settings.db_path)
        elif settings.store == "memory":
            self.store = MemoryStore()
        else:
            self.store = RedisStore(settings.store, retention_ms=int(settings.retention_hours * 3_600_000))
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.user = resolve_user(settings.run_as)
        if settings.shared_dir is not None:
            settings.shared_dir.mkdir(parents=True, exist_ok=True)  # hidden from functions: it must exist
        hidden_dirs, hidden_files = hidden_paths(
            settings.data_dir, settings.shared_dir or settings.data_dir, (settings.token_file, settings.config_file)
        )
        self.sandbox, self.sandbox_mode = start_sandbox(
            settings.sandbox, other_user=self.user is not None, hidden_dirs=hidden_dirs, hidden_files=hidden_files
        )
        if self.sandbox is None and settings.network == "none":
            raise SandboxUnavailable(f'network = "none" needs the sandbox, which is {self.sandbox_mode}')
        # In a sandbox, bwrap shows functions what they need wherever it is: no directory is opened.
        self.shared_dir = shared_dir(settings, self.user if self.sandbox is None else None)
        self.runtimes: dict[str, Runtime] = {
            "process": ProcessRuntime(self.user, self.sandbox, settings.network),
            "python": PythonRuntime(settings, self.user, self.shared_dir, self.sandbox),
            "wasm": WasmRuntime(settings),
        }
        self.lifecycle = Lifecycle()
        if self.sandbox is None and self.user is not None:
            # Without the sandbox to bind them in, the function user must pass through the artifact
            # cache to the files it runs (not list it).
            (self.shared_dir / "artifacts").mkdir(parents=True, exist_ok=True)
            (self.shared_dir / "artifacts").chmod(0o711)
        fetcher = ArtifactFetcher(
            self.shared_dir / "artifacts",
            schemes=settings.artifact_schemes,
            local_dirs=settings.artifact_dirs,
            require_checksum=settings.require_checksum,
        )
        # In a cluster another node may replace a task: read tasks from the store every time.
        self.tasks = TaskRegistry(self.store, fetcher, self.runtimes, cache=not isinstance(self.store, RedisStore))
        self.scheduler = Scheduler(settings, self.store, self.runtimes, self.lifecycle)
        self.invoker = Invoker(settings, self.store, self.tasks, self.scheduler, self.lifecycle)
        self.cluster: Cluster | None = None
        if isinstance(self.store, RedisStore):
            self.cluster = Cluster(settings, self.store, self.scheduler, self.tasks, self.lifecycle, settings.lease_s)
            self.invoker.dispatch = self.cluster
        self.api = FunctionApi(self.invoker, {"sandbox": self.sandbox_mode})
        python = self.runtimes["python"]
        assert isinstance(python, PythonRuntime)
        self.metrics = Metrics(self.scheduler, {"python": python.pool})
        self.callbacks = Callbacks(settings.callback_allow)
        self.lifecycle.subscribe(self.metrics.on_event)
        self.lifecycle.subscribe(self.callbacks.on_event)
        self.dashboard = Dashboard.attach(self.lifecycle, self.scheduler, {"python": python.pool}, self.cluster)
        self.invoker.checks.append(self.callbacks.check)
        self.grpc_port = 0
        self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        s.check_exposure()
        token = s.access_token()
        s.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        mark = hashlib.sha256(str(s.data_dir.resolve()).encode()).hexdigest()[:16]
        left = kill_leftovers(mark)  # before this run starts anything with the same mark
        if left:
            log.warning("killed %d processes left by a previous run of this node", left)
        set_node_mark(mark)
        await self._register_start_tasks()
        await self.tasks.warm_all()
        await self.invoker.expire_records()
        if self.cluster is not None:
            await self.cluster.start()  # lost work is reclaimed through the cluster's leases
        else:
            resubmitted, failed = await self.invoker.recover()
            if resubmitted or failed:
                log.warning("recovered unfinished executions: %d resubmitted, %d failed", resubmitted, failed)
        self._grpc, self.grpc_port, health_servicer = build_server(
            self.api,
            f"{s.host}:{s.grpc_port}",
            observe=self.metrics.observe_grpc,
            token=token,
            min_ping_interval_ms=s.grpc_min_ping_interval_ms,
        )
        await self._grpc.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        sock = socket.create_server((s.host, s.http_port), family=_family(s.host), reuse_port=False)
        self.http_port = sock.getsockname()[1]
        app = create_app(self.api, self.metrics, token=token, dashboard=self.dashboard)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._http = _EmbeddedUvicorn(config)
        self._http_task = asyncio.get_running_loop().create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)
        self._housekeeping = asyncio.get_running_loop().create_task(self._expire_periodically())

    async def _expire_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.retention_interval_s)
            try:
                removed = await self.invoker.expire_records()
            except Exception:
                log.exception("applying the retention failed")
            else:
                if removed:
                    log.info("retention: %d finished execution records expired", removed)

    async def _register_start_tasks(self) -> None:
        choice = self.settings.tasks
        if choice.lower() == "none":
            return
        path = Path(choice) if choice else bundled_tasks_file()
        for name, description, spec in read_tasks_file(path):
            await self.tasks.register(name, spec, description)

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
        if self.cluster is not None:
            await self.cluster.close()
        await self.invoker.close()
        await self.scheduler.close()
        await self.callbacks.close()
        for runtime in self.runtimes.values():
            await runtime.close()
        await self.store.close()


def shared_dir(settings: Settings, user: FunctionUser | None) -> Path:
    """Where the files functions use (artifact copies, the Python worker program) live.

    The data dir itself when functions run as the node's user, or when the function user can pass
    through it (it is then closed to listing: 0711, the store 0600). Otherwise a directory of this
    node under /var/lib/spearlet, which any user can reach (only root switches users)."""
    data = settings.data_dir
    if settings.shared_dir is not None:
        chosen = settings.shared_dir
    elif user is None:
        return data
    elif world_traversable(data):
        data.chmod(0o711)
        return data
    else:
        chosen = Path("/var/lib/spearlet") / hashlib.sha256(str(data).encode()).hexdigest()[:16]
    chosen.mkdir(parents=True, exist_ok=True)
    for directory in (chosen, chosen.parent):
        directory.chmod(0o755)
    return chosen


def not_dumpable() -> None:
    """Make this process non-dumpable: its /proc files (environment, memory) then belong to root, so
    that even a process of the same user outside any sandbox cannot read the token or the heap."""
    pr_set_dumpable = 4
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        log.warning("could not make the node non-dumpable: %s", os.strerror(ctypes.get_errno()))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def serve(settings: Settings, announce: Any = print) -> None:
    """Run a node until SIGINT or SIGTERM, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before anyone can learn that we listen
        loop.add_signal_handler(sig, stop.set)
    not_dumpable()
    node = Node(settings)
    await node.start()
    # What the node built to serve (modules, app, servers) lives as long as it does: a full
    # collection that scanned it all would stall every call for tens of milliseconds.
    gc.collect()
    gc.freeze()
    host = settings.host
    announce(f"spearlet node {settings.node_id!r} serving")
    announce(f"  gRPC  {host}:{node.grpc_port}")
    announce(f"  HTTP  http://{host}:{node.http_port}")
    announce(f"  data  {settings.data_dir.resolve()}")
    announce(f"  sandbox  {node.sandbox_mode}")
    try:
        await stop.wait()
    finally:
        announce("spearlet shutting down")
        await node.stop()
