"""The implementations a node's settings choose, each from a table (as kombu chooses its transports).

STORES: the scheme of the `store` setting -> what that store brings the node: the store itself, and
for a store that several nodes share, what they share through it (artifact blobs, the cluster's
dispatch). RUNTIMES: an artifact type -> its runtime, given the node's settings and how functions are
isolated on it. Adding an implementation is adding a row (ARCHITECTURE.md, "Extension points").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spearlet.artifacts.blobs import RedisBlobs
from spearlet.cluster import Cluster
from spearlet.config import Settings
from spearlet.core.lifecycle import Lifecycle
from spearlet.engine.registry import TaskRegistry
from spearlet.engine.scheduler import Scheduler, node_limits
from spearlet.runtimes.base import Runtime
from spearlet.runtimes.bubblewrap import Sandbox
from spearlet.runtimes.process import ProcessRuntime
from spearlet.runtimes.python import PythonOptions, PythonRuntime
from spearlet.runtimes.sandbox import FunctionUser
from spearlet.runtimes.wasm import WasmOptions, WasmRuntime
from spearlet.store.base import Store
from spearlet.store.memory import MemoryStore
from spearlet.store.redis import RedisStore
from spearlet.store.sqlite import SqliteStore

ClusterFactory = Callable[[Scheduler, TaskRegistry, Lifecycle], Cluster]


@dataclass(frozen=True, slots=True)
class StoreParts:
    """What the `store` setting gives a node."""

    store: Store
    # Artifacts read from one node's disk, for the others (a shared store only).
    blobs: RedisBlobs | None = None
    # The dispatch through which nodes sharing the store share work (a shared store only).
    cluster: ClusterFactory | None = None

    @property
    def shared(self) -> bool:
        """Whether other nodes use the store too: then a task may change under this node, which
        reads tasks from the store at every call instead of keeping them."""
        return self.cluster is not None


def _sqlite(settings: Settings) -> StoreParts:
    return StoreParts(SqliteStore(settings.db_path))


def _memory(settings: Settings) -> StoreParts:
    return StoreParts(MemoryStore())


def _redis(settings: Settings) -> StoreParts:
    store = RedisStore(settings.store, retention_ms=int(settings.retention_hours * 3_600_000))

    def cluster(scheduler: Scheduler, tasks: TaskRegistry, lifecycle: Lifecycle) -> Cluster:
        return Cluster(settings, store, scheduler, tasks, lifecycle, settings.lease_s)

    return StoreParts(store, RedisBlobs(settings.store, settings.artifact_blob_limit_mb << 20), cluster)


STORES: dict[str, Callable[[Settings], StoreParts]] = {
    "sqlite": _sqlite,
    "memory": _memory,
    "redis": _redis,
    "rediss": _redis,
    "unix": _redis,
}


def store_parts(settings: Settings) -> StoreParts:
    """The row of STORES that the `store` setting names ("sqlite", "memory", or a URL's scheme)."""
    return STORES[settings.store.split("://", 1)[0]](settings)


@dataclass(frozen=True, slots=True)
class Isolation:
    """How the node isolates functions, chosen at its start."""

    user: FunctionUser | None  # whom they run as (None: the node's user)
    sandbox: Sandbox | None  # None: off or unavailable
    shared_dir: Path  # where files functions use live


def _process(settings: Settings, isolation: Isolation) -> Runtime:
    return ProcessRuntime(isolation.user, isolation.sandbox, settings.network)


def _python(settings: Settings, isolation: Isolation) -> Runtime:
    options = PythonOptions(
        shared_dir=isolation.shared_dir,
        limits=node_limits(settings),
        max_instances=settings.max_concurrency,
        python_executable=settings.python_executable,
        network=settings.network,
    )
    return PythonRuntime(options, isolation.user, isolation.sandbox)


def _wasm(settings: Settings, isolation: Isolation) -> Runtime:
    options = WasmOptions(
        cache_dir=settings.data_dir / "wasm-cache",
        threads=settings.max_concurrency,
        compile_memory_mb=settings.wasm_compile_memory_mb,
        compile_timeout_s=settings.wasm_compile_timeout_s,
    )
    return WasmRuntime(options)


RUNTIMES: dict[str, Callable[[Settings, Isolation], Runtime]] = {
    "process": _process,
    "python": _python,
    "wasm": _wasm,
}


def runtimes(settings: Settings, isolation: Isolation) -> dict[str, Runtime]:
    """One runtime of each kind in RUNTIMES, by kind (the artifact types tasks name)."""
    return {kind: make(settings, isolation) for kind, make in RUNTIMES.items()}
