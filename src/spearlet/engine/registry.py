"""Task registration: validate, fetch and verify the artifact, check the runtime can run it, store.

The registry also owns the artifact cache's life: an artifact that neither a stored task nor work
queued or running uses is removed, with the compiled forms the runtimes keep of it: at once when
its registration was refused or its task deleted, else (a replaced task's, another cluster node's
deleted task's) once it has been unused for UNUSED_GRACE_S, since a call that found its task a
moment before may still be on its way to start it. A collection runs when no registration or fetch
is in flight (they hold entries not yet stored), or right after the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

from spearlet.artifacts import ArtifactFetcher
from spearlet.core.background import Background
from spearlet.core.errors import InvalidArgument, NotFound
from spearlet.core.ids import check_task_name
from spearlet.core.models import ArtifactSpec, Task, now_ms
from spearlet.core.queries import TaskPage
from spearlet.core.task_settings import TaskSettings
from spearlet.core.values import check_string_map
from spearlet.runtimes.base import Runtime
from spearlet.store.base import Store

ALIASES = {"binary": "process"}
MAX_PAGE = 1000
UNUSED_GRACE_S = 60.0
log = logging.getLogger(__name__)


# Where a task this node does not have may come from (a SPEAR cluster's SMS, sms/tasks.py): given a
# task id, it registers the task here (TaskRegistry.register) and returns it, or None when it has no
# such task. Its own failure (say, an unreachable SMS) is a SpearletError the caller receives.
TaskSource = Callable[[str], Awaitable[Task | None]]


def page_limit(limit: int, default: int = 100) -> int:
    if limit < 0:
        raise InvalidArgument(f"limit must not be negative, got {limit}")
    return min(limit or default, MAX_PAGE)


class TaskRegistry:
    """Tasks by id, read through an in-memory copy: every invocation resolves one."""

    def __init__(
        self,
        store: Store,
        fetcher: ArtifactFetcher,
        runtimes: dict[str, Runtime],
        cache: bool = True,
        max_metadata_bytes: int = 64 << 10,
    ) -> None:
        self.store = store
        self.fetcher = fetcher
        self.runtimes = runtimes
        self.max_metadata_bytes = max_metadata_bytes
        self._cache: dict[str, Task] = {}
        self._use_cache = cache
        # This node's verified copy of each (digest, name), once checked: a cluster reads tasks
        # from the store at every call.
        self._local_paths: dict[tuple[str, str], str] = {}
        # Told the id of each task deleted here, to drop what they keep per task (metrics, history).
        self.on_delete: list[Callable[[str], None]] = []
        # The tasks of work queued or running (the scheduler's): theirs stay while they run.
        self.in_use: Callable[[], Iterable[Task]] = tuple
        self._in_flight = 0
        self._collecting: asyncio.Event | None = None
        self._collect_wanted = False
        self._remove_now: set[Path] = set()
        self._unused_since: dict[Path, float] = {}
        self._background = Background()
        self.source: TaskSource | None = None
        # Concurrent first calls of a task the source has: one asks, the others wait for it.
        self._sourcing: dict[str, asyncio.Future[Task | None]] = {}

    def runtime_name(self, artifact_type: str) -> str:
        name = ALIASES.get(artifact_type.lower(), artifact_type.lower())
        if name not in self.runtimes:
            known = ", ".join(sorted({*self.runtimes, *ALIASES}))
            raise InvalidArgument(f"artifact_type {artifact_type!r} is not supported: use one of {known}")
        return name

    async def register(self, name: str, spec: ArtifactSpec, description: str = "", for_caller: bool = True) -> Task:
        """Create or replace the task called `name` (its id is its name). `for_caller`: on behalf
        of an API caller (ArtifactFetcher.fetch), not the node's own tasks file."""
        check_task_name(name)
        runtime = self.runtime_name(spec.artifact_type or "process")
        check_string_map(spec.metadata, "artifact_spec.metadata", self.max_metadata_bytes, "max_metadata_bytes")
        # Its settings, parsed once: a mistake is refused before anything is fetched.
        settings = TaskSettings.parse(spec.metadata, self.runtimes[runtime].owned_settings)
        artifact = None
        try:
            async with self._fetching():
                artifact = await self.fetcher.fetch(spec.location, spec.checksum, for_caller)
                now = now_ms()
                task = Task(
                    task_id=name,
                    name=name,
                    artifact_type=runtime,
                    location=spec.location,
                    description=description,
                    artifact_id=spec.artifact_id,
                    version=spec.version,
                    checksum=f"sha256:{artifact.digest}",
                    metadata=dict(spec.metadata),
                    local_path=str(artifact.path),
                    digest=artifact.digest,
                    created_at=now,
                    updated_at=now,
                    parsed=settings,
                )
                await self.runtimes[runtime].prepare(task)
                old = await self.store.get_task(name)
                await self.fetcher.share(artifact, name)
                try:
                    await self.store.put_task(task)
                except BaseException:
                    await self.fetcher.unshare(artifact.digest, name)
                    raise
        except asyncio.CancelledError:
            if artifact is not None:
                self._background.spawn(self.collect(now=[artifact.path]))
            raise
        except Exception:
            if artifact is not None:  # what the refused registration put in the cache goes
                await self._collect_quietly(now=[artifact.path])
            raise
        self._cache[task.task_id] = task
        if old is not None and old.digest != task.digest:
            await self.fetcher.unshare(old.digest, name)
            await self.collect()
        return task

    @contextlib.asynccontextmanager
    async def _fetching(self) -> AsyncIterator[None]:
        """Around work that puts entries in the cache before a stored task names them."""
        while self._collecting is not None:
            await self._collecting.wait()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._collect_wanted:
                self._background.spawn(self.collect())

    async def collect(self, now: Iterable[Path] = ()) -> int:
        """Remove the cached artifacts, and the runtimes' compiled forms of them, that nothing uses
        (`now`: at once, else after UNUSED_GRACE_S unused); returns how many entries went. With
        fetches in flight, it runs after them."""
        self._remove_now.update(now)
        if self._in_flight or self._collecting is not None:
            self._collect_wanted = True
            return 0
        self._collect_wanted = False
        self._collecting = asyncio.Event()
        try:
            cache = self.fetcher.cache
            users = [task async for task in self._all_tasks()] + list(self.in_use())
            used = {cache.entry(t.digest, Path(t.local_path).name) for t in users if t.digest}
            clock = time.monotonic()
            keep = set()
            for entry in await asyncio.to_thread(cache.entries):
                if entry in used:
                    keep.add(entry)
                elif entry not in self._remove_now:
                    since = self._unused_since.setdefault(entry, clock)
                    if clock - since < UNUSED_GRACE_S:
                        keep.add(entry)
            self._remove_now.clear()
            self._unused_since = {e: t for e, t in self._unused_since.items() if e in keep and e not in used}
            removed = await asyncio.to_thread(cache.collect, keep)
            self._local_paths.clear()
            digests = {entry.parent.name for entry in keep}
            for runtime in self.runtimes.values():
                await runtime.keep_only(digests)
            return removed
        finally:
            self._collecting.set()
            self._collecting = None
            if self._collect_wanted and not self._in_flight:
                self._background.spawn(self.collect())

    async def _collect_quietly(self, now: Iterable[Path]) -> None:
        """collect(), whose own failure must not hide the refusal it follows."""
        try:
            await self.collect(now)
        except Exception:
            log.exception("removing the artifacts of a refused registration failed")

    async def _all_tasks(self) -> AsyncIterator[Task]:
        start_after = ""
        while True:
            page = await self.store.list_tasks("", MAX_PAGE, start_after)
            for task in page.tasks:
                yield task
            if not page.has_more:
                return
            start_after = page.next_start_after

    async def find(self, task_id: str) -> Task | None:
        task = self._cache.get(task_id) if self._use_cache else None
        if task is None:
            task = await self.store.get_task(task_id)
            if task is not None:
                await self._localize(task)
                if self._use_cache:
                    self._cache[task_id] = task
        return task

    async def resolve(self, task_id: str) -> Task | None:
        """The task a call names: one this node has, else the source's (a SPEAR cluster's SMS
        places tasks on nodes that do not have them). Only a call fetches: looking a task up
        (GetTask, RegisterTask's check, recovery) never does."""
        task = await self.find(task_id)
        if task is None and self.source is not None:
            task = await self._from_source(task_id)
        return task

    async def _from_source(self, task_id: str) -> Task | None:
        """The task as the source gives it, asked once however many calls want it meanwhile."""
        pending = self._sourcing.get(task_id)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not pending.cancelled() or (current is not None and current.cancelling()):
                    raise
                return await self._from_source(task_id)  # the call that asked went away: ask again
        assert self.source is not None
        future: asyncio.Future[Task | None] = asyncio.get_running_loop().create_future()
        self._sourcing[task_id] = future
        try:
            task = await self.source(task_id)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no waiter may be left to see it
            raise
        else:
            future.set_result(task)
            return task
        finally:
            del self._sourcing[task_id]

    async def _localize(self, task: Task) -> None:
        """Point a stored task at this node's own verified copy of its artifact (fetching it when
        the node lacks one), never at the path its record names."""
        key = (task.digest, Path(task.local_path).name)
        local = self._local_paths.get(key)
        if local is None:
            async with self._fetching():
                local = self._local_paths[key] = str(await self.fetcher.materialize(task))
        task.local_path = local

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
        task = self._cache.pop(task_id, None) or await self.store.get_task(task_id)
        if task is not None:
            await self.runtimes[task.artifact_type].forget(task_id)
        deleted, cleaned = await self.store.delete_task(task_id, cleanup_executions)
        if task is not None and deleted:
            await self.fetcher.unshare(task.digest, task_id)
            await self.collect(now=[self.fetcher.cache.entry(task.digest, Path(task.local_path).name)])
        if deleted:
            for forget in self.on_delete:
                forget(task_id)
        return deleted, cleaned

    async def close(self) -> None:
        await self._background.wait()

    async def warm_all(self) -> None:
        """At node start: let each runtime get its stored tasks ready (e.g. pre-warmed instances)."""
        async for task in self._all_tasks():
            try:
                await self._localize(task)
                if self._use_cache:
                    self._cache[task.task_id] = task
                await self.runtimes[task.artifact_type].warm(task)
            except Exception as exc:
                log.warning("task %s could not be warmed: %s", task.task_id, exc)
