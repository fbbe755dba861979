"""Warm instances per task: reuse, min/max, idle reaping, recycling and the choice among idle ones.

An instance serves one call at a time. `acquire` hands out an idle instance chosen by the task's
strategy, starts a new one while under `max_instances`, or waits for one to be released.
Listeners hear each instance's life (started, busy with an execution, idle, stopped): the SMS
link reports instances from them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

from spearlet.core.background import Background
from spearlet.core.errors import InvalidArgument
from spearlet.core.models import Task

log = logging.getLogger(__name__)


class Instance(abc.ABC):
    """One warm worker. The pool keeps its bookkeeping; the runtime does the work."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.task_id = ""  # set by the pool that started it
        self.calls = 0
        self.busy = False
        self.last_used = time.monotonic()
        self.total_ms = 0.0

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0

    @property
    @abc.abstractmethod
    def alive(self) -> bool: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """End the instance and wait until it is gone."""


@dataclass(frozen=True, slots=True)
class PoolSettings:
    min_instances: int = 0
    max_instances: int = 4
    idle_timeout_s: float = 300.0
    max_calls_per_instance: int = 0  # 0: never recycle
    strategy: str = "least_connections"

    @classmethod
    def of(cls, task: Task, default_max: int) -> PoolSettings:
        """The task's instance settings (`default_max`: max_instances when it has none)."""
        own = task.settings
        settings = cls(
            min_instances=own.min_instances,
            max_instances=default_max if own.max_instances is None else own.max_instances,
            idle_timeout_s=300.0 if own.idle_timeout_s is None else float(own.idle_timeout_s),
            max_calls_per_instance=own.max_calls_per_instance,
            strategy=own.strategy,
        )
        if settings.max_instances < 1 or settings.min_instances > settings.max_instances:
            raise InvalidArgument(
                f"instances: need 1 <= max_instances and min_instances <= max_instances, got "
                f"min {settings.min_instances}, max {settings.max_instances}"
            )
        return settings


@dataclass(slots=True)
class _TaskInstances:
    task: Task
    settings: PoolSettings
    instances: list[Instance] = field(default_factory=list)
    starting: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    turn: itertools.count[int] = field(default_factory=itertools.count)
    warm_hits: int = 0
    started: int = 0


@dataclass(frozen=True, slots=True)
class PoolState:
    """One task's instances as the dashboard shows them (GET /api/v1/pools)."""

    task_id: str
    instances: int
    idle: int
    starting: int
    waiting: int
    warm_hits: int
    started: int
    min_instances: int
    max_instances: int


Starter = Callable[[Task, str], Awaitable[Instance]]


class InstanceEvent(Enum):
    STARTED = "started"
    BUSY = "busy"  # serving an execution (its id is given)
    IDLE = "idle"
    STOPPED = "stopped"


# (event, task id, instance id, execution id or ""); called in the loop, must not block.
InstanceListener = Callable[[InstanceEvent, str, str, str], None]


class Pool:
    def __init__(self, start: Starter, default_max: int) -> None:
        self._start = start
        self._default_max = default_max
        self._tasks: dict[str, _TaskInstances] = {}
        self._ids = itertools.count(1)
        self.started = 0
        self.warm_hits = 0
        self._background = Background()
        self.listeners: list[InstanceListener] = []

    def _tell(self, event: InstanceEvent, instance: Instance, execution_id: str = "") -> None:
        for listener in self.listeners:
            try:
                listener(event, instance.task_id, instance.instance_id, execution_id)
            except Exception:  # an observer must not break a call
                log.exception("instance listener failed on %s of %s", event.value, instance.instance_id)

    async def _stop(self, instance: Instance) -> None:
        """Stop an instance the pool no longer holds, telling the listeners."""
        self._tell(InstanceEvent.STOPPED, instance)
        await instance.stop()

    def live(self) -> list[Instance]:
        """Every instance held now, for periodic reports."""
        return [i for group in self._tasks.values() for i in group.instances]

    def sizes(self) -> dict[str, int]:
        """Instances per task, for metrics."""
        return {task_id: len(group.instances) for task_id, group in self._tasks.items()}

    def instances(self, task_id: str) -> list[Instance]:
        group = self._tasks.get(task_id)
        return list(group.instances) if group else []

    def find(self, instance_id: str) -> Instance | None:
        """The live instance of that id, of whichever task."""
        for group in self._tasks.values():
            for instance in group.instances:
                if instance.instance_id == instance_id and instance.alive:
                    return instance
        return None

    def retire_if_idle(self, instance: Instance) -> None:
        """Drop a dead instance now if no call holds it (a busy one goes when its call releases it)."""
        for group in self._tasks.values():
            if instance in group.instances and not instance.busy:
                self._retire(group.task, group, instance)
                self._wake(group)

    def states(self) -> list[PoolState]:
        """Each task's instances now, and its calls served warm since its group was made (a
        replaced task starts over)."""
        return [
            PoolState(
                task_id=task_id,
                instances=len(group.instances),
                idle=sum(1 for i in group.instances if not i.busy),
                starting=group.starting,
                waiting=len(group.waiters),
                warm_hits=group.warm_hits,
                started=group.started,
                min_instances=group.settings.min_instances,
                max_instances=group.settings.max_instances,
            )
            for task_id, group in self._tasks.items()
        ]

    def _group(self, task: Task) -> _TaskInstances:
        group = self._tasks.get(task.task_id)
        if group is None:
            group = self._tasks[task.task_id] = _TaskInstances(task, PoolSettings.of(task, self._default_max))
        return group

    async def acquire(self, task: Task, force_new: bool = False, execution_id: str = "") -> Instance:
        """An instance for one call of `task` (the execution `execution_id`, told to the listeners)."""
        instance = await self._acquire(task, force_new)
        self._tell(InstanceEvent.BUSY, instance, execution_id)
        return instance

    async def _acquire(self, task: Task, force_new: bool) -> Instance:
        while True:
            group = self._group(task)
            self._drop_dead(group)  # a dead instance must not hold a slot
            idle = [i for i in group.instances if not i.busy]
            if idle and not force_new:
                chosen = self._choose(group, idle)
                chosen.busy = True
                self.warm_hits += 1
                group.warm_hits += 1
                return chosen
            if len(group.instances) + group.starting < group.settings.max_instances:
                instance = await self._spawn(task, group)
                instance.busy = True
                return instance
            if force_new and idle:
                # At the limit: make room by retiring an idle instance, then start a fresh one.
                victim = idle[0]
                group.instances.remove(victim)
                await self._stop(victim)
                continue
            waiter = asyncio.get_running_loop().create_future()
            group.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake(group)  # we were woken but will not take the instance: pass it on
                raise
            finally:
                if waiter in group.waiters:
                    group.waiters.remove(waiter)

    def _drop_dead(self, group: _TaskInstances) -> None:
        for instance in [i for i in group.instances if not i.busy and not i.alive]:
            group.instances.remove(instance)
            self._background.spawn(self._stop(instance))

    async def _spawn(self, task: Task, group: _TaskInstances) -> Instance:
        group.starting += 1
        try:
            instance = await self._start(task, f"{task.task_id}/{next(self._ids)}")
        finally:
            group.starting -= 1
        self.started += 1
        group.started += 1
        group.instances.append(instance)
        instance.task_id = task.task_id
        self._tell(InstanceEvent.STARTED, instance)
        return instance

    def _choose(self, group: _TaskInstances, idle: list[Instance]) -> Instance:
        strategy = group.settings.strategy
        if strategy == "round_robin":
            return idle[next(group.turn) % len(idle)]
        if strategy == "random":
            return random.choice(idle)
        if strategy == "least_response_time":
            return min(idle, key=lambda i: (i.mean_ms, i.calls))
        # least_connections: every idle instance has none; the most recently used is the warmest.
        return max(idle, key=lambda i: i.last_used)

    def release(self, task: Task, instance: Instance, elapsed_ms: float, healthy: bool) -> None:
        """Give an instance back after a call; unhealthy or worn-out ones are replaced."""
        instance.busy = False
        instance.calls += 1
        instance.total_ms += elapsed_ms
        instance.last_used = time.monotonic()
        group = self._tasks.get(task.task_id)
        if group is None or instance not in group.instances:  # its task was replaced or deleted meanwhile
            self._background.spawn(self._stop(instance))
            return
        worn = 0 < group.settings.max_calls_per_instance <= instance.calls
        if not healthy or worn or not instance.alive:
            self._retire(task, group, instance)
        else:
            self._tell(InstanceEvent.IDLE, instance)
        self._wake(group)

    def _retire(self, task: Task, group: _TaskInstances, instance: Instance) -> None:
        if instance in group.instances:
            group.instances.remove(instance)
        self._background.spawn(self._stop(instance))
        if len(group.instances) + group.starting < group.settings.min_instances:
            self._background.spawn(self._top_up(task))

    def _wake(self, group: _TaskInstances) -> None:
        while group.waiters:
            waiter = group.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _top_up(self, task: Task) -> None:
        group = self._group(task)
        try:
            while len(group.instances) + group.starting < group.settings.min_instances:
                await self._spawn(task, group)
                self._wake(group)
        except Exception:
            log.exception("could not keep %s warm", task.task_id)

    async def prewarm(self, task: Task, at_least: int = 0) -> None:
        """Start the task's `min_instances` (or `at_least`) now: at registration, at node start."""
        group = self._group(task)
        want = min(max(group.settings.min_instances, at_least), group.settings.max_instances)
        while len(group.instances) + group.starting < want:
            await self._spawn(task, group)

    async def reap(self) -> int:
        """Drop dead instances, stop live ones idle past their timeout (keeping min_instances
        live ones), start replacements below the minimum, and wake whoever waits for room."""
        now = time.monotonic()
        stopped = 0
        for group in list(self._tasks.values()):
            dead = [i for i in group.instances if not i.busy and not i.alive]
            live = [i for i in group.instances if i.alive]
            expired = [i for i in live if not i.busy and now - i.last_used > group.settings.idle_timeout_s][
                : max(0, len(live) - group.settings.min_instances)
            ]
            for instance in dead + expired:
                group.instances.remove(instance)
                await self._stop(instance)
                stopped += 1
            if dead or expired:
                self._wake(group)
            if len(group.instances) + group.starting < group.settings.min_instances:
                self._background.spawn(self._top_up(group.task))
        return stopped

    async def forget(self, task_id: str) -> None:
        """The task changed or went: stop its idle instances; busy ones stop when released."""
        group = self._tasks.pop(task_id, None)
        if group is None:
            return
        for waiter in group.waiters:
            if not waiter.done():
                waiter.set_result(None)  # they retry against the new group
        # Busy instances are stopped by release(), as they belong to no group any more.
        await asyncio.gather(*(self._stop(i) for i in group.instances if not i.busy), return_exceptions=True)

    async def close(self) -> None:
        groups = list(self._tasks.values())
        self._tasks.clear()
        for group in groups:
            for waiter in group.waiters:
                if not waiter.done():
                    waiter.cancel()
            await asyncio.gather(*(self._stop(i) for i in group.instances), return_exceptions=True)
        await self._background.wait()

    async def run_reaper(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(Exception):
                await self.reap()
