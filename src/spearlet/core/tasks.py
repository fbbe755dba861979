"""Task registration: validate, fetch and verify the artifact, check the runtime can run it, store."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from spearlet.artifacts import ArtifactFetcher
from spearlet.core.errors import InvalidArgument, NotFound
from spearlet.core.ids import check_task_name
from spearlet.core.models import ArtifactSpec, Task, now_ms
from spearlet.runtimes.base import Runtime
from spearlet.store.base import Store, TaskPage

ALIASES = {"binary": "process"}
# Settings a task may carry in its metadata (README, "Task settings"); `env.NAME` keys set variables.
INT_SETTINGS = frozenset(
    {
        "timeout_ms", "max_retries", "min_instances", "max_instances", "max_concurrency", "idle_timeout_s",
        "max_calls_per_instance", "memory_limit_mb", "cpu_limit_s", "cache_ttl_s", "file_limit_mb", "max_processes",
    }
)  # fmt: skip
MAX_PAGE = 1000
log = logging.getLogger(__name__)


def page_limit(limit: int, default: int = 100) -> int:
    if limit < 0:
        raise InvalidArgument(f"limit must not be negative, got {limit}")
    return min(limit or default, MAX_PAGE)


class TaskRegistry:
    """Tasks by id, read through an in-memory copy: every invocation resolves one."""

    def __init__(
        self, store: Store, fetcher: ArtifactFetcher, runtimes: dict[str, Runtime], cache: bool = True
    ) -> None:
        self.store = store
        self.fetcher = fetcher
        self.runtimes = runtimes
        self._cache: dict[str, Task] = {}
        self._use_cache = cache
        # Where this node keeps each task's artifact, when another node registered it.
        self._local_paths: dict[tuple[str, str], str] = {}
        # Told the id of each task deleted here, to drop what they keep per task (metrics, history).
        self.on_delete: list[Callable[[str], None]] = []

    def runtime_name(self, artifact_type: str) -> str:
        name = ALIASES.get(artifact_type.lower(), artifact_type.lower())
        if name not in self.runtimes:
            known = ", ".join(sorted({*self.runtimes, *ALIASES}))
            raise InvalidArgument(f"artifact_type {artifact_type!r} is not supported: use one of {known}")
        return name

    async def register(self, name: str, spec: ArtifactSpec, description: str = "") -> Task:
        """Create or replace the task called `name` (its id is its name)."""
        check_task_name(name)
        runtime = self.runtime_name(spec.artifact_type or "process")
        for key, value in spec.metadata.items():
            if key in INT_SETTINGS:
                try:
                    if int(value) < 0:
                        raise ValueError
                except ValueError:
                    raise InvalidArgument(f"metadata {key!r} must be a non-negative integer, got {value!r}") from None
        artifact = await self.fetcher.fetch(spec.location, spec.checksum)
        now = now_ms()
        task = Task(
            task_id=name,
            name=name,
            artifact_type=runtime,
            location=spec.location,
            description=description,
            artifact_id=spec.artifact_id,
            version=spec.version,
            checksum=f"sha256:{artifact.digest}" if artifact.digest else "",
            metadata=dict(spec.metadata),
            local_path=str(artifact.path),
            digest=artifact.digest,
            created_at=now,
            updated_at=now,
        )
        await self.runtimes[runtime].prepare(task)
        await self.store.put_task(task)
        self._cache[task.task_id] = task
        return task

    async def find(self, task_id: str) -> Task | None:
        task = self._cache.get(task_id) if self._use_cache else None
        if task is None:
            task = await self.store.get_task(task_id)
            if task is not None:
                await self._localize(task)
                if self._use_cache:
                    self._cache[task_id] = task
        return task

    async def _localize(self, task: Task) -> None:
        """A task registered on another node names that node's copy of the artifact: fetch our own
        (verified against the digest it was registered with) when that path is not here."""
        if os.path.exists(task.local_path):
            return
        key = (task.location, task.digest)
        if key not in self._local_paths:
            artifact = await self.fetcher.fetch(task.location, task.checksum)
            self._local_paths[key] = str(artifact.path)
        task.local_path = self._local_paths[key]

    async def get(self, task_id: str) -> Task:
        if not task_id:
            raise InvalidArgument("task_id is required")
        task = await self.find(task_id)
        if task is None:
            raise NotFound(f"task {task_id!r} not found")
        return task

    async def list(self, prefix: str, limit: int, start_after: str) -> TaskPage:
        return await self.store.list_tasks(prefix, page_limit(limit), start_after)

    async def delete(self, task_id: str, cleanup_executions: bool) -> tuple[bool, int]:
        if not task_id:
            raise InvalidArgument("task_id is required")
        task = await self.find(task_id)
        self._cache.pop(task_id, None)
        if task is not None:
            await self.runtimes[task.artifact_type].forget(task_id)
        deleted, cleaned = await self.store.delete_task(task_id, cleanup_executions)
        if deleted:
            for forget in self.on_delete:
                forget(task_id)
        return deleted, cleaned

    async def warm_all(self) -> None:
        """At node start: let each runtime get its stored tasks ready (e.g. pre-warmed instances)."""
        start_after = ""
        while True:
            page = await self.store.list_tasks("", MAX_PAGE, start_after)
            for task in page.tasks:
                try:
                    await self._localize(task)
                    if self._use_cache:
                        self._cache[task.task_id] = task
                    await self.runtimes[task.artifact_type].warm(task)
                except Exception as exc:
                    log.warning("task %s could not be warmed: %s", task.task_id, exc)
            if not page.has_more:
                return
            start_after = page.next_start_after
