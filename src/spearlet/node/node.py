"""A node: every part built from the settings and wired together behind gRPC and HTTP.

The implementations the settings choose come from node/tables.py (the store and what a shared one
brings, the runtimes); the rest is built here: the sandbox and function user, the artifact fetcher,
the engine (registry, scheduler, invoker, management), the listeners of executions (metrics,
callbacks, the cluster) and the transports. The only module that may import every layer
(ARCHITECTURE.md)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
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

from spearlet.api.callbacks import Callbacks
from spearlet.api.grpc.server import build_server
from spearlet.api.http.app import create_app
from spearlet.api.http.dashboard import Dashboard
from spearlet.api.service import FunctionApi
from spearlet.artifacts import ArtifactFetcher
from spearlet.artifacts.cache import ArtifactCache, Permissions
from spearlet.artifacts.local import Reader
from spearlet.config import Settings, split_host_port
from spearlet.core.errors import StartError, StoreFault, StoreUnavailable
from spearlet.core.lifecycle import Lifecycle
from spearlet.core.models import ArtifactSpec
from spearlet.core.net import HostRules
from spearlet.engine.invoker import Invoker
from spearlet.engine.management import Management
from spearlet.engine.registry import TaskRegistry
from spearlet.engine.scheduler import Scheduler
from spearlet.node.data_dir import DataDirLock
from spearlet.node.identity import NodeIdentity
from spearlet.node.tables import Isolation, runtimes, store_parts
from spearlet.observability.metrics import Metrics
from spearlet.runtimes.bubblewrap import SandboxUnavailable, hidden_paths, start_sandbox
from spearlet.runtimes.sandbox import FunctionUser, kill_leftovers, resolve_user, set_node_mark, world_traversable
from spearlet.sms.link import LinkFigures, NodeAddress, SmsLink, advertised_ip
from spearlet.sms.tasks import SmsTasks

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
        # First of all: a second node on this data dir must change nothing in it.
        self.data_lock = DataDirLock.acquire(settings.data_dir)
        try:
            self._build(settings)
        except BaseException:
            self.data_lock.release()
            raise

    def _build(self, settings: Settings) -> None:
        if not settings.node_id:
            settings = settings.model_copy(update={"node_id": NodeIdentity(settings.data_dir).node_id})
        self.settings = settings
        parts = store_parts(settings)
        self.store = parts.store
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
        self.runtimes = runtimes(settings, Isolation(self.user, self.sandbox, self.shared_dir))
        self.lifecycle = Lifecycle()
        self.blobs = parts.blobs
        fetcher = ArtifactFetcher(
            artifact_cache(self.shared_dir / "artifacts", self.user, sandboxed=self.sandbox is not None),
            max_bytes=settings.artifact_limit_mb << 20,
            timeout_s=settings.artifact_timeout_s,
            schemes=settings.artifact_schemes,
            local_dirs=settings.artifact_dirs,
            require_checksum=settings.require_checksum,
            hosts=HostRules(settings.artifact_hosts),
            reader=Reader(self.user.name, self.user.uid, self.user.gid) if self.user is not None else None,
            blobs=self.blobs,
        )
        # In a cluster another node may replace a task: read tasks from the store every time.
        self.tasks = TaskRegistry(
            self.store,
            fetcher,
            self.runtimes,
            cache=not parts.shared,
            max_metadata_bytes=settings.max_metadata_bytes,
        )
        self.scheduler = Scheduler(settings, self.store, self.runtimes, self.lifecycle)
        self.tasks.in_use = self.scheduler.tasks_in_use
        self.invoker = Invoker(settings, self.store, self.tasks, self.scheduler, self.lifecycle)
        self.cluster = parts.cluster(self.scheduler, self.tasks, self.lifecycle) if parts.cluster else None
        self.invoker.dispatch = self.cluster
        self.management = Management(settings, self.store, self.tasks, self.scheduler, self.lifecycle)
        self.api = FunctionApi(
            self.invoker,
            self.management,
            self.tasks,
            node_id=settings.node_id,
            max_streams=settings.max_streams,
            max_page_bytes=settings.max_page_bytes,
            node_info={"sandbox": self.sandbox_mode},
        )
        pools = {kind: runtime.pool for kind, runtime in self.runtimes.items() if runtime.pool is not None}
        self.metrics = Metrics(self.scheduler, pools, settings.metrics_max_functions)
        self.callbacks = Callbacks(settings.callback_allow, settings.callback_timeout_s)
        self.lifecycle.subscribe(self.metrics.on_event)
        self.lifecycle.subscribe(self.callbacks.on_event)
        self.dashboard = Dashboard.attach(self.lifecycle, lambda: self.scheduler.pending_count, pools, self.cluster)
        self.invoker.checks.append(self.callbacks.check)
        self.tasks.on_delete.extend([self.metrics.forget_task, self.scheduler.forget_task])
        self.sms = self._join_sms(settings, pools) if settings.sms_grpc_addr else None
        self.grpc_port = 0
        self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    def _join_sms(self, settings: Settings, pools: dict[str, Any]) -> SmsLink:
        """The link to a SPEAR cluster's SMS: its task source, its reports (lifecycle and pool
        listeners), its state in health and /metrics. It starts talking once the node serves."""
        scheduler = self.scheduler
        link = SmsLink(
            settings.sms_grpc_addr,
            NodeIdentity(settings.data_dir).sms_uuid,
            settings.sms_heartbeat_s,
            settings.data_dir,
            health=lambda: {"running": str(scheduler.running_count), "queued": str(scheduler.pending_count)},
        )
        scratch = settings.data_dir / "sms-files"
        scratch.mkdir(exist_ok=True)
        self.tasks.source = SmsTasks(
            link.channel,
            settings.sms_http_addr,
            self.tasks,
            scratch,
            max_bytes=settings.artifact_limit_mb << 20,
            timeout_s=settings.artifact_timeout_s,
        )
        self.lifecycle.subscribe(link.reporter.on_event)
        for pool in pools.values():
            pool.listeners.append(link.reporter.on_instance)
        self.metrics.registry.register(LinkFigures(link))
        self.api.live_info.append(link.state)
        return link

    @property
    def http_url(self) -> str:
        scheme = "https" if self.settings.tls_cert is not None else "http"
        host = self.settings.host
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.http_port}"

    async def start(self) -> None:
        """Bind both ports, open the store, finish what a previous run left, then serve. On an
        error the caller must still `stop()` to release what was taken."""
        s = self.settings
        s.check_exposure()
        if warning := s.exposure_warning():
            log.warning(warning)
        token = s.access_token()
        tls = s.tls_pair()
        # Both ports first: one in use stops the start before anything runs or is recovered.
        # grpc would only log why it cannot bind: a plain socket, bound the same way, says it.
        if s.grpc_port:
            _listen("gRPC", s.host, s.grpc_port, "grpc-port").close()
        try:
            self._grpc, self.grpc_port, health_servicer = build_server(
                self.api,
                f"{s.host}:{s.grpc_port}",
                observe=self.metrics.observe_grpc,
                token=token,
                trusted_networks=s.trusted_networks,
                min_ping_interval_ms=s.grpc_min_ping_interval_ms,
                tls=tls,
            )
        except OSError as exc:
            raise StartError(_cannot_listen("gRPC", s.host, s.grpc_port, "grpc-port", exc)) from None
        sock = _listen("HTTP", s.host, s.http_port, "http-port")
        self.http_port = sock.getsockname()[1]
        try:
            await self._prepare()
        except StoreUnavailable as exc:  # a full disk, though, is served degraded
            raise StartError(str(exc)) from None
        await self._grpc.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        app = create_app(
            self.api, self.metrics, token=token, dashboard=self.dashboard, trusted_networks=s.trusted_networks
        )
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            ssl_certfile=s.tls_cert,
            ssl_keyfile=s.tls_key,
        )
        self._http = _EmbeddedUvicorn(config)
        self._http_task = asyncio.get_running_loop().create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)
        self._housekeeping = asyncio.get_running_loop().create_task(self._expire_periodically())
        if self.sms is not None:
            log.info(s.sms_exposure())
            sms_host, _ = split_host_port(s.sms_grpc_addr)
            ip = advertised_ip(s.host, sms_host, s.advertise_address)
            self.sms.start(NodeAddress(s.node_id, ip, self.grpc_port, self.http_port))
        self.data_lock.announce(
            pid=os.getpid(), node_id=s.node_id, grpc=f"{s.host}:{self.grpc_port}", http=self.http_url
        )

    async def _prepare(self) -> None:
        """Open the store and finish what a previous run of this node left."""
        await self.store.open()
        mark = hashlib.sha256(str(self.settings.data_dir.resolve()).encode()).hexdigest()[:16]
        # Only ours to kill: the data-dir lock proves the run that left them is dead.
        left = kill_leftovers(mark)  # before this run starts anything with the same mark
        if left:
            log.warning("killed %d processes left by a previous run of this node", left)
        set_node_mark(mark)
        if self.cluster is not None:
            await self.cluster.claim_id()  # refused before this node has changed anything shared
        await self._register_start_tasks()
        await self.tasks.warm_all()
        await self._expire()
        if self.cluster is not None:
            await self.cluster.start()  # lost work is reclaimed through the cluster's leases
        else:
            resubmitted, failed = await self.management.recover()
            if resubmitted or failed:
                log.warning("recovered unfinished executions: %d resubmitted, %d failed", resubmitted, failed)

    async def _expire(self) -> int:
        try:
            removed = await self.management.expire_records()
        except StoreFault as exc:  # a full disk: expiring would free nothing until space returns
            log.warning("retention not applied: %s", exc)
            return 0
        if removed:
            log.info("retention: %d finished execution records expired", removed)
        return removed

    async def _expire_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.retention_interval_s)
            try:
                await self._expire()
            except Exception:
                log.exception("applying the retention failed")
            try:
                await self.tasks.collect()  # artifacts of tasks another node of a cluster deleted
            except Exception:
                log.exception("removing unused artifacts failed")

    async def _register_start_tasks(self) -> None:
        choice = self.settings.tasks
        if choice.lower() == "none":
            return
        path = Path(choice) if choice else bundled_tasks_file()
        for name, description, spec in read_tasks_file(path):
            try:
                await self.tasks.register(name, spec, description, for_caller=False)
            except StoreFault as exc:  # start degraded: the task stays as it was stored
                log.warning("task %s not registered at start: %s", name, exc)

    async def stop(self) -> None:
        """Stop serving and release everything, the data dir last; safe after a failed start."""
        try:
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
            await self.tasks.close()
            for runtime in self.runtimes.values():
                await runtime.close()
            if self.sms is not None:  # after the runtimes: their instances' last reports go too
                await self.sms.close()
            if self.blobs is not None:
                await self.blobs.close()
            await self.store.close()
        finally:
            self.data_lock.release()


def check_settings(settings: Settings) -> None:
    """Refuse, before anything starts, settings the node could not serve with: a non-loopback
    address without a token, a function user it cannot become (ValueError saying which)."""
    settings.check_exposure()
    settings.sms_exposure()
    resolve_user(settings.run_as)


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


def artifact_cache(root: Path, user: FunctionUser | None, sandboxed: bool) -> ArtifactCache:
    """The artifact cache, closed to other users. Its entries' group is the function user's, who
    reads them where bwrap binds them in; without the sandbox, the root is opened to 0711 so that
    the function user reaches its artifact by its path (not listable)."""
    return ArtifactCache(
        root,
        open_to_functions=user is not None and not sandboxed,
        permissions=Permissions(user.gid if user is not None else None),
    )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def serve(settings: Settings, announce: Any = print) -> None:
    """Run a node until SIGINT or SIGTERM, then shut down cleanly. StartError: it could not start
    (and released what it had taken)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before anyone can learn that we listen
        loop.add_signal_handler(sig, stop.set)
    not_dumpable()
    node = Node(settings)
    try:
        await node.start()
    except BaseException:
        await node.stop()
        raise
    # What the node built to serve (modules, app, servers) lives as long as it does: a full
    # collection that scanned it all would stall every call for tens of milliseconds.
    gc.collect()
    gc.freeze()
    announce(f"spearlet node {node.settings.node_id!r} serving")
    announce(f"  gRPC  {settings.host}:{node.grpc_port}{'  (TLS)' if settings.tls_cert else ''}")
    announce(f"  HTTP  {node.http_url}")
    announce(f"  data  {settings.data_dir.resolve()}")
    announce(f"  sandbox  {node.sandbox_mode}")
    if node.sms is not None:
        announce(f"  SMS  {settings.sms_grpc_addr} (HTTP {settings.sms_http_addr or 'not set'})")
        announce(f"  node UUID  {node.sms.node_uuid}")
        announce(f"  {settings.sms_exposure()}")
    try:
        await stop.wait()
    finally:
        announce("spearlet shutting down")
        await node.stop()


def _listen(what: str, host: str, port: int, flag: str) -> socket.socket:
    try:
        return socket.create_server((host, port), family=_family(host), reuse_port=False)
    except OSError as exc:
        raise StartError(_cannot_listen(what, host, port, flag, exc)) from None


def _cannot_listen(what: str, host: str, port: int, flag: str, error: OSError) -> str:
    """Why `what` cannot listen on host:port, and which setting to change."""
    setting = flag.replace("-", "_")
    if error.errno == errno.EADDRINUSE:
        return f"{what} port {port} on {host} is in use: choose another with --{flag} (setting {setting})"
    reason = error.strerror or str(error)
    return f"cannot listen for {what} on {host}:{port} ({reason}): change --host or --{flag} (setting {setting})"
