"""What RedisStore does beyond the Store contract (tests/store/test_contract.py), against a real
redis-server: retention by Redis's own expiry, and the indexes it keeps tidy."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spearlet.core.models import Status, now_ms
from spearlet.store.redis import BY_TIME, EXECS, RedisStore
from tests.helpers import redis_server
from tests.store.factories import add, make_record

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, retention_ms=60_000)
    await s.open()
    await s.redis.flushall()
    try:
        yield s
    finally:
        await s.close()


async def ttl_ms(store: RedisStore, execution_id: str) -> int:
    return int(await store.redis.pttl(f"spearlet:exec:{execution_id}"))


async def test_terminal_records_expire_after_the_retention_and_unfinished_ones_never(store: RedisStore) -> None:
    done = await add(store, Status.COMPLETED, completed_at=now_ms())
    waiting = await add(store, Status.PENDING)
    running = await add(store, Status.RUNNING)
    assert 0 < await ttl_ms(store, done.execution_id) <= 60_000
    assert await ttl_ms(store, waiting.execution_id) == -1
    assert await ttl_ms(store, running.execution_id) == -1


async def test_a_record_stored_ended_expires_after_the_retention_too(store: RedisStore) -> None:
    # An answer from the result cache is stored COMPLETED at once, without a transition.
    hit = make_record(status=Status.COMPLETED, completed_at=now_ms(), metrics={"cache_hit": "true"})
    assert await store.create_execution(hit) is None
    assert 0 < await ttl_ms(store, hit.execution_id) <= 60_000


async def test_expire_drops_the_ids_of_records_redis_expired_from_the_indexes(store: RedisStore) -> None:
    gone = await add(store, Status.COMPLETED, created_at=1_000, completed_at=2_000)
    kept = await add(store, Status.RUNNING, created_at=1_000)
    await store.redis.delete(f"spearlet:exec:{gone.execution_id}")  # as Redis does once its TTL runs out
    assert await store.expire(before_ms=now_ms(), keep=100) == 0  # nothing left to remove: Redis did
    for index in (EXECS, BY_TIME):  # a task's own index is tidied as it is listed
        assert await store.redis.zrange(index, 0, -1) == [kept.execution_id]


def test_the_redis_server_comes_with_the_dev_dependencies_not_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # a fresh machine: nothing installed by hand
    found = redis_server()
    assert found is not None and Path(found).parent == Path(sys.executable).parent
    version = re.search(r"v=(\d+)\.(\d+)", subprocess.run([found, "--version"], capture_output=True, text=True).stdout)
    assert version and (int(version[1]), int(version[2])) >= (6, 2)  # cluster mode needs XAUTOCLAIM
