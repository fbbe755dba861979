"""Pool and PoolSettings with in-test instances: reuse, min/max, waiting, recycling, reaping, strategies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from spearlet.core.errors import InvalidArgument
from spearlet.core.models import Task
from spearlet.runtimes.pool import Instance, Pool, PoolSettings

pytestmark = pytest.mark.timeout(60)

# Long enough for background work (stops, replacements) of an in-memory pool to have run.
SETTLE_S = 0.02
# Long enough to be sure an acquire is blocked, short enough to keep the tests quick.
BLOCKED_S = 0.1


class FakeInstance(Instance):
    """No process: `alive` is a flag, `stop()` records that it was called."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(instance_id)
        self.is_alive = True
        self.stops = 0

    @property
    def alive(self) -> bool:
        return self.is_alive

    @property
    def stopped(self) -> bool:
        return self.stops > 0

    async def stop(self) -> None:
        self.stops += 1
        self.is_alive = False


class Starts:
    """The pool's starter: creates FakeInstances and remembers each one started."""

    def __init__(self) -> None:
        self.instances: list[FakeInstance] = []

    @property
    def count(self) -> int:
        return len(self.instances)

    async def start(self, task: Task, instance_id: str) -> Instance:
        await asyncio.sleep(0)  # a real start takes a while: let other coroutines interleave
        instance = FakeInstance(instance_id)
        self.instances.append(instance)
        return instance


def make_task(task_id: str = "t", **metadata: Any) -> Task:
    return Task(
        task_id=task_id,
        name=task_id,
        artifact_type="python",
        location="x",
        metadata={k: str(v) for k, v in metadata.items()},
    )


def make_pool(default_max: int = 4) -> tuple[Pool, Starts]:
    starts = Starts()
    return Pool(starts.start, default_max=default_max), starts


async def settle() -> None:
    await asyncio.sleep(SETTLE_S)


async def acquire_n(pool: Pool, task: Task, n: int) -> list[Instance]:
    return [await pool.acquire(task) for _ in range(n)]


async def blocked(future: asyncio.Future[Instance]) -> bool:
    """True when `future` (an acquire) is still waiting after BLOCKED_S; it is not cancelled."""
    try:
        await asyncio.wait_for(asyncio.shield(future), BLOCKED_S)
    except TimeoutError:
        return True
    return False


# Reuse, limits and waiting


async def test_released_instance_is_reused_by_the_next_acquire() -> None:
    pool, starts = make_pool()
    task = make_task()
    first = await pool.acquire(task)
    assert first.busy
    pool.release(task, first, elapsed_ms=5, healthy=True)
    assert not first.busy
    assert pool.warm_hits == 0

    second = await pool.acquire(task)

    assert second.instance_id == first.instance_id
    assert starts.count == 1 and pool.started == 1
    assert pool.warm_hits == 1
    assert second.calls == 1


async def test_acquire_starts_new_instances_while_all_are_busy_and_under_max_instances() -> None:
    pool, starts = make_pool()
    task = make_task(max_instances=3)

    instances = await asyncio.gather(*(pool.acquire(task) for _ in range(3)))

    assert len({i.instance_id for i in instances}) == 3
    assert starts.count == 3
    assert all(i.busy for i in instances)
    assert pool.warm_hits == 0
    assert len(pool.instances(task.task_id)) == 3


async def test_acquire_at_max_instances_waits_until_an_instance_is_released() -> None:
    pool, starts = make_pool()
    task = make_task(max_instances=2)
    a, b = await acquire_n(pool, task, 2)

    waiting = asyncio.ensure_future(pool.acquire(task))
    assert await blocked(waiting)
    assert starts.count == 2

    pool.release(task, b, elapsed_ms=1, healthy=True)
    got = await asyncio.wait_for(waiting, 1.0)

    assert got is b
    assert starts.count == 2
    assert got.busy and a.busy


async def test_waiters_are_served_one_release_each_in_arrival_order() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=1)
    only = await pool.acquire(task)
    first = asyncio.ensure_future(pool.acquire(task))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(pool.acquire(task))
    assert await blocked(first) and await blocked(second)

    pool.release(task, only, elapsed_ms=1, healthy=True)
    assert await asyncio.wait_for(first, 1.0) is only
    assert await blocked(second)

    pool.release(task, only, elapsed_ms=1, healthy=True)
    assert await asyncio.wait_for(second, 1.0) is only


async def test_force_new_starts_a_fresh_instance_even_when_one_is_idle() -> None:
    pool, starts = make_pool()
    task = make_task(max_instances=2)
    old = await pool.acquire(task)
    pool.release(task, old, elapsed_ms=1, healthy=True)

    fresh = await pool.acquire(task, force_new=True)

    assert fresh is not old
    assert starts.count == 2
    assert fresh.busy and not old.busy
    assert isinstance(old, FakeInstance) and not old.stopped  # under max: the idle one stays
    assert pool.warm_hits == 0


async def test_force_new_at_max_instances_retires_an_idle_instance_to_make_room() -> None:
    pool, starts = make_pool()
    task = make_task(max_instances=1)
    old = await pool.acquire(task)
    pool.release(task, old, elapsed_ms=1, healthy=True)

    fresh = await asyncio.wait_for(pool.acquire(task, force_new=True), 1.0)

    assert fresh is not old
    assert isinstance(old, FakeInstance) and old.stopped
    assert pool.instances(task.task_id) == [fresh]
    assert starts.count == 2


async def test_unhealthy_release_stops_and_drops_the_instance() -> None:
    pool, starts = make_pool()
    task = make_task()
    sick = await pool.acquire(task)

    pool.release(task, sick, elapsed_ms=1, healthy=False)
    await settle()

    assert isinstance(sick, FakeInstance) and sick.stopped
    assert sick not in pool.instances(task.task_id)
    replacement = await pool.acquire(task)
    assert replacement is not sick
    assert starts.count == 2


async def test_an_instance_is_found_by_its_id_across_tasks_while_it_lives() -> None:
    pool, _ = make_pool()
    one, other = make_task("one"), make_task("other")
    a = await pool.acquire(one)
    b = await pool.acquire(other)
    assert pool.find(a.instance_id) is a and pool.find(b.instance_id) is b
    assert pool.find("nope/1") is None
    assert isinstance(b, FakeInstance)
    b.is_alive = False
    assert pool.find(b.instance_id) is None


async def test_a_dead_idle_instance_is_retired_at_once_and_the_pool_tops_up_its_minimum() -> None:
    pool, starts = make_pool()
    task = make_task(min_instances=1)
    instance = await pool.acquire(task)
    pool.release(task, instance, elapsed_ms=1, healthy=True)
    assert isinstance(instance, FakeInstance)
    instance.is_alive = False
    pool.retire_if_idle(instance)
    await settle()
    assert instance.stopped and instance not in pool.instances(task.task_id)
    assert starts.count == 2 and len(pool.instances(task.task_id)) == 1


async def test_a_busy_instance_is_not_retired_until_its_call_releases_it() -> None:
    pool, _ = make_pool()
    task = make_task()
    instance = await pool.acquire(task)
    assert isinstance(instance, FakeInstance)
    instance.is_alive = False
    pool.retire_if_idle(instance)
    await settle()
    assert not instance.stopped and instance in pool.instances(task.task_id)
    pool.release(task, instance, elapsed_ms=1, healthy=False)
    await settle()
    assert instance.stopped and instance not in pool.instances(task.task_id)


async def test_release_of_an_instance_that_died_during_the_call_drops_it() -> None:
    pool, _ = make_pool()
    task = make_task()
    instance = await pool.acquire(task)
    assert isinstance(instance, FakeInstance)
    instance.is_alive = False

    pool.release(task, instance, elapsed_ms=1, healthy=True)
    await settle()

    assert pool.instances(task.task_id) == []
    assert instance.stopped


async def test_unhealthy_release_at_max_lets_a_waiter_start_a_replacement() -> None:
    pool, starts = make_pool()
    task = make_task(max_instances=1)
    sick = await pool.acquire(task)
    waiting = asyncio.ensure_future(pool.acquire(task))
    assert await blocked(waiting)

    pool.release(task, sick, elapsed_ms=1, healthy=False)
    got = await asyncio.wait_for(waiting, 1.0)

    assert got is not sick
    assert starts.count == 2


async def test_instance_is_recycled_after_max_calls_per_instance() -> None:
    pool, starts = make_pool()
    task = make_task(max_calls_per_instance=2)
    first = await pool.acquire(task)
    pool.release(task, first, elapsed_ms=1, healthy=True)
    assert await pool.acquire(task) is first  # one call done: still reused

    pool.release(task, first, elapsed_ms=1, healthy=True)  # two calls: worn out
    await settle()

    assert isinstance(first, FakeInstance) and first.stopped
    assert first not in pool.instances(task.task_id)
    second = await pool.acquire(task)
    assert second is not first
    assert starts.count == 2


# min_instances and prewarm


async def test_prewarm_starts_min_instances_and_is_idempotent() -> None:
    pool, starts = make_pool()
    task = make_task(min_instances=2, max_instances=4)

    await pool.prewarm(task)
    await pool.prewarm(task)

    assert starts.count == 2
    assert len(pool.instances(task.task_id)) == 2
    assert all(not i.busy for i in pool.instances(task.task_id))


async def test_prewarm_at_least_one_starts_one_instance_with_min_instances_zero() -> None:
    pool, starts = make_pool()
    task = make_task()

    await pool.prewarm(task)
    assert starts.count == 0

    await pool.prewarm(task, at_least=1)
    assert starts.count == 1
    assert len(pool.instances(task.task_id)) == 1


async def test_retiring_an_instance_below_min_instances_starts_a_replacement() -> None:
    pool, starts = make_pool()
    task = make_task(min_instances=2, max_instances=3)
    await pool.prewarm(task)
    instance = await pool.acquire(task)

    pool.release(task, instance, elapsed_ms=1, healthy=False)
    await settle()

    instances = pool.instances(task.task_id)
    assert instance not in instances
    assert len(instances) == 2
    assert starts.count == 3
    assert all(i.alive for i in instances)


async def test_retiring_an_instance_above_min_instances_starts_no_replacement() -> None:
    pool, starts = make_pool()
    task = make_task(min_instances=1, max_instances=3)
    await pool.prewarm(task)
    a, b = await acquire_n(pool, task, 2)
    pool.release(task, a, elapsed_ms=1, healthy=True)

    pool.release(task, b, elapsed_ms=1, healthy=False)
    await settle()

    assert pool.instances(task.task_id) == [a]
    assert starts.count == 2


# Reaping


async def test_reap_stops_instances_idle_past_idle_timeout_but_keeps_min_instances() -> None:
    pool, _ = make_pool()
    task = make_task(min_instances=1, max_instances=3, idle_timeout_s=1)
    instances = await acquire_n(pool, task, 3)
    for instance in instances:
        pool.release(task, instance, elapsed_ms=1, healthy=True)
    assert await pool.reap() == 0  # not idle long enough yet

    for instance in instances:
        instance.last_used -= 2  # as if 2 s had passed
    reaped = await pool.reap()

    assert reaped == 2
    left = pool.instances(task.task_id)
    assert len(left) == 1 and left[0].alive
    assert sum(1 for i in instances if isinstance(i, FakeInstance) and i.stopped) == 2


async def test_reap_keeps_recently_used_instances() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=2, idle_timeout_s=1)
    old, recent = await acquire_n(pool, task, 2)
    pool.release(task, old, elapsed_ms=1, healthy=True)
    pool.release(task, recent, elapsed_ms=1, healthy=True)
    old.last_used -= 2  # released 2 s before the other

    assert await pool.reap() == 1

    assert pool.instances(task.task_id) == [recent]


async def test_reap_never_stops_busy_instances() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=2, idle_timeout_s=1)
    busy = await pool.acquire(task)
    busy.last_used -= 10  # long since it was last released

    assert await pool.reap() == 0

    assert pool.instances(task.task_id) == [busy]
    assert isinstance(busy, FakeInstance) and not busy.stopped


async def test_reap_removes_dead_instances() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=2)  # idle timeout 300 s: only death gets them reaped
    dead, healthy = await acquire_n(pool, task, 2)
    pool.release(task, dead, elapsed_ms=1, healthy=True)
    pool.release(task, healthy, elapsed_ms=1, healthy=True)
    assert isinstance(dead, FakeInstance)
    dead.is_alive = False

    assert await pool.reap() == 1

    assert pool.instances(task.task_id) == [healthy]
    assert dead.stopped


async def test_acquire_never_hands_out_a_dead_idle_instance() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=2)
    dead = await pool.acquire(task)
    pool.release(task, dead, elapsed_ms=1, healthy=True)
    assert isinstance(dead, FakeInstance)
    dead.is_alive = False

    got = await asyncio.wait_for(pool.acquire(task), 1.0)

    assert got is not dead and got.alive


async def test_reap_keeps_min_instances_live_instances_when_dead_ones_are_reaped_too() -> None:
    pool, _ = make_pool()
    task = make_task(min_instances=1, max_instances=2, idle_timeout_s=1)
    warm, dead = await acquire_n(pool, task, 2)
    pool.release(task, warm, elapsed_ms=1, healthy=True)
    pool.release(task, dead, elapsed_ms=1, healthy=True)
    assert isinstance(dead, FakeInstance)
    dead.is_alive = False
    warm.last_used -= 2  # both idle past their timeout
    dead.last_used -= 2

    await pool.reap()

    assert pool.instances(task.task_id) == [warm]
    assert warm.alive


async def test_reaping_a_dead_instance_below_min_instances_starts_a_replacement() -> None:
    pool, starts = make_pool()
    task = make_task(min_instances=1, max_instances=2)
    await pool.prewarm(task)
    (dead,) = starts.instances
    dead.is_alive = False

    assert await pool.reap() == 1
    await settle()

    instances = pool.instances(task.task_id)
    assert len(instances) == 1 and instances[0] is not dead and instances[0].alive


async def test_acquire_at_max_instances_is_not_blocked_for_good_by_a_dead_idle_instance() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=1)
    dead = await pool.acquire(task)
    pool.release(task, dead, elapsed_ms=1, healthy=True)
    assert isinstance(dead, FakeInstance)
    dead.is_alive = False  # died while idle, e.g. killed from outside

    waiting = asyncio.ensure_future(pool.acquire(task))
    await asyncio.sleep(0)
    await pool.reap()  # what the pool's reaper does every second
    done, _ = await asyncio.wait({waiting}, timeout=1.0)
    waiting.cancel()

    assert waiting in done, "acquire still waits although the only instance is dead and reaped"
    got = waiting.result()
    assert got is not dead and got.alive


async def test_a_cancelled_waiter_does_not_swallow_the_wake_up_of_the_next_one() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=1)
    only = await pool.acquire(task)
    first = asyncio.ensure_future(pool.acquire(task))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(pool.acquire(task))
    await asyncio.sleep(0)

    pool.release(task, only, elapsed_ms=1, healthy=True)
    first.cancel()  # e.g. its execution was cancelled at the same moment
    done, _ = await asyncio.wait({second}, timeout=1.0)
    second.cancel()

    assert first.cancelled()
    assert second in done, "the second waiter still waits although the instance is idle"
    assert second.result() is only


# Choosing among idle instances


async def idle_three(pool: Pool, task: Task) -> list[Instance]:
    instances = await acquire_n(pool, task, 3)
    for instance in instances:
        pool.release(task, instance, elapsed_ms=1, healthy=True)
    return instances


async def test_round_robin_cycles_over_idle_instances_in_turn() -> None:
    pool, starts = make_pool()
    task = make_task(max_instances=3, strategy="round_robin")
    instances = await idle_three(pool, task)

    picks: list[str] = []
    for _ in range(9):
        chosen = await pool.acquire(task)
        picks.append(chosen.instance_id)
        pool.release(task, chosen, elapsed_ms=1, healthy=True)

    for i in range(len(picks) - 2):
        assert len(set(picks[i : i + 3])) == 3, picks  # every instance once in each run of three
    assert set(picks) == {i.instance_id for i in instances}
    assert starts.count == 3


async def test_least_response_time_picks_the_instance_with_the_lowest_mean_ms() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=3, strategy="least_response_time")
    a, b, c = await acquire_n(pool, task, 3)
    pool.release(task, a, elapsed_ms=30, healthy=True)
    pool.release(task, b, elapsed_ms=10, healthy=True)
    pool.release(task, c, elapsed_ms=20, healthy=True)
    assert (a.mean_ms, b.mean_ms, c.mean_ms) == (30, 10, 20)

    chosen = await pool.acquire(task)
    assert chosen is b

    pool.release(task, b, elapsed_ms=100, healthy=True)  # b's mean is now 55
    assert b.mean_ms == 55
    assert await pool.acquire(task) is c


async def test_least_connections_picks_the_most_recently_used_idle_instance() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=3)  # least_connections is the default
    a, b, c = await acquire_n(pool, task, 3)
    for instance in (a, c, b):
        await asyncio.sleep(0.005)
        pool.release(task, instance, elapsed_ms=1, healthy=True)

    assert await pool.acquire(task) is b  # released last: the warmest
    assert await pool.acquire(task) is c  # b is busy now: c was released after a


async def test_random_picks_only_idle_instances_and_more_than_one_of_them() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=3, strategy="random")
    a, busy, c = await acquire_n(pool, task, 3)
    pool.release(task, a, elapsed_ms=1, healthy=True)
    pool.release(task, c, elapsed_ms=1, healthy=True)

    picks: list[Instance] = []
    for _ in range(60):
        chosen = await pool.acquire(task)
        picks.append(chosen)
        pool.release(task, chosen, elapsed_ms=1, healthy=True)

    assert busy not in picks
    assert set(picks) == {a, c}
    assert busy.busy


# PoolSettings


def test_pool_settings_refuse_min_instances_above_max_instances() -> None:
    with pytest.raises(InvalidArgument, match="min_instances"):
        PoolSettings.of(make_task(min_instances=3, max_instances=2), default_max=4)


def test_pool_settings_refuse_zero_max_instances() -> None:
    with pytest.raises(InvalidArgument):
        PoolSettings.of(make_task(max_instances=0), default_max=4)


def test_pool_settings_default_max_instances_to_default_max_and_read_the_metadata() -> None:
    assert PoolSettings.of(make_task(), default_max=7) == PoolSettings(
        min_instances=0, max_instances=7, idle_timeout_s=300.0, max_calls_per_instance=0, strategy="least_connections"
    )
    settings = PoolSettings.of(
        make_task(min_instances=1, max_instances=5, idle_timeout_s=3, max_calls_per_instance=9, strategy="round_robin"),
        default_max=7,
    )
    assert settings == PoolSettings(1, 5, 3.0, 9, "round_robin")


async def test_acquire_refuses_a_task_with_invalid_pool_settings() -> None:
    pool, starts = make_pool()
    with pytest.raises(InvalidArgument):
        await pool.acquire(make_task(min_instances=3, max_instances=2))
    assert starts.count == 0


async def test_max_instances_defaults_to_the_pools_default_max() -> None:
    pool, starts = make_pool(default_max=2)
    task = make_task()
    await acquire_n(pool, task, 2)

    waiting = asyncio.ensure_future(pool.acquire(task))
    assert await blocked(waiting)
    waiting.cancel()
    assert starts.count == 2


# forget and close


async def test_forget_stops_idle_instances_and_leaves_busy_ones_running() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=3)
    idle1, idle2, busy = await acquire_n(pool, task, 3)
    pool.release(task, idle1, elapsed_ms=1, healthy=True)
    pool.release(task, idle2, elapsed_ms=1, healthy=True)

    await pool.forget(task.task_id)

    assert isinstance(idle1, FakeInstance) and idle1.stopped
    assert isinstance(idle2, FakeInstance) and idle2.stopped
    assert isinstance(busy, FakeInstance) and not busy.stopped
    assert pool.instances(task.task_id) == []


async def test_instance_released_after_its_task_was_forgotten_is_stopped_not_reused() -> None:
    pool, starts = make_pool()
    task = make_task()
    busy = await pool.acquire(task)
    await pool.forget(task.task_id)

    pool.release(task, busy, elapsed_ms=1, healthy=True)
    await settle()

    assert isinstance(busy, FakeInstance) and busy.stopped
    fresh = await pool.acquire(task)
    assert fresh is not busy
    assert starts.count == 2
    assert pool.instances(task.task_id) == [fresh]


async def test_instance_released_after_its_task_was_replaced_is_stopped_not_reused() -> None:
    pool, _ = make_pool()
    task = make_task(max_instances=2)
    old = await pool.acquire(task)
    await pool.forget(task.task_id)
    replaced = make_task(max_instances=2)
    new = await pool.acquire(replaced)  # the new version's group exists before the old call ends

    pool.release(task, old, elapsed_ms=1, healthy=True)
    await settle()

    assert isinstance(old, FakeInstance) and old.stopped
    assert pool.instances(task.task_id) == [new]


async def test_forget_wakes_waiters_so_they_acquire_from_the_new_group() -> None:
    pool, starts = make_pool()
    task = make_task(max_instances=1)
    busy = await pool.acquire(task)
    waiting = asyncio.ensure_future(pool.acquire(task))
    assert await blocked(waiting)

    await pool.forget(task.task_id)
    got = await asyncio.wait_for(waiting, 1.0)

    assert got is not busy
    assert starts.count == 2


async def test_close_stops_every_instance_and_cancels_waiters() -> None:
    pool, starts = make_pool()
    one, two = make_task("one", max_instances=2), make_task("two", max_instances=1)
    idle, busy = await acquire_n(pool, one, 2)
    pool.release(one, idle, elapsed_ms=1, healthy=True)
    other = await pool.acquire(two)
    waiting = asyncio.ensure_future(pool.acquire(two))
    assert await blocked(waiting)

    await pool.close()

    assert all(i.stopped for i in starts.instances)
    assert {idle, busy, other} == set(starts.instances)
    assert pool.instances("one") == [] and pool.instances("two") == []
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 1.0)


# What the dashboard shows of each task's pool


async def test_states_count_each_task_s_instances_idle_ones_warm_hits_and_waiters_apart() -> None:
    pool, _ = make_pool()
    busy_task, other = make_task("busy", max_instances=2, min_instances=1), make_task("other")
    held = await acquire_n(pool, busy_task, 2)
    waiting = asyncio.ensure_future(pool.acquire(busy_task))
    assert await blocked(waiting)
    second = await pool.acquire(other)
    pool.release(other, second, elapsed_ms=1, healthy=True)
    await pool.acquire(other)  # warm

    states = {s.task_id: s for s in pool.states()}

    assert states["busy"].instances == 2 and states["busy"].idle == 0 and states["busy"].waiting == 1
    assert states["busy"].warm_hits == 0 and states["busy"].started == 2
    assert (states["busy"].min_instances, states["busy"].max_instances) == (1, 2)
    assert states["other"].instances == 1 and states["other"].warm_hits == 1 and states["other"].started == 1
    pool.release(busy_task, held[0], elapsed_ms=1, healthy=True)
    await waiting
    assert {s.task_id: s for s in pool.states()}["busy"].warm_hits == 1
    await pool.close()


# Listeners


async def test_listeners_hear_start_busy_with_the_execution_idle_and_stop() -> None:
    pool, _ = make_pool()
    heard: list[tuple[str, str, str, str]] = []
    pool.listeners.append(lambda event, task_id, instance_id, execution_id: heard.append(
        (event.value, task_id, instance_id, execution_id)
    ))  # fmt: skip
    task = make_task("t", max_calls_per_instance=2)
    first = await pool.acquire(task, execution_id="e1")
    pool.release(task, first, 1.0, healthy=True)
    again = await pool.acquire(task, execution_id="e2")
    assert again is first
    pool.release(task, again, 1.0, healthy=True)  # worn out: stopped, not idle
    await settle()
    instance = first.instance_id
    assert heard == [
        ("started", "t", instance, ""),
        ("busy", "t", instance, "e1"),
        ("idle", "t", instance, ""),
        ("busy", "t", instance, "e2"),
        ("stopped", "t", instance, ""),
    ]
    assert pool.live() == []


async def test_a_broken_listener_does_not_break_a_call() -> None:
    pool, _ = make_pool()

    def broken(*_: object) -> None:
        raise RuntimeError("listener bug")

    pool.listeners.append(broken)
    task = make_task()
    instance = await pool.acquire(task, execution_id="e1")
    pool.release(task, instance, 1.0, healthy=True)
    assert pool.live() == [instance]
    await pool.close()
