from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import psutil
import pytest

from bench.common import start_redis
from tests.helpers import NodeProcess, start_node

REDIS = shutil.which("redis-server")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, for the cluster and the Redis store (per module,
    so that no other test sees it among its children)."""
    if REDIS is None:
        pytest.skip("redis-server is not installed (Debian package redis-server); these tests need a real one")
    server, url = start_redis()
    yield url
    server.terminate()
    server.wait(10)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A real `spearlet serve` process with the bundled example tasks, shared by a test module."""
    proc = start_node(tmp_path_factory.mktemp("node"))
    yield proc
    assert proc.stop() == 0, "\n".join(proc.output)


@pytest.fixture(autouse=True, scope="session")
def no_orphans() -> Iterator[None]:
    """No test may leave function processes behind."""
    yield
    leftovers = [p for p in psutil.Process(os.getpid()).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    assert not leftovers, f"processes left behind: {[p.cmdline() for p in leftovers]}"


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("SPEARLET_LOG_LEVEL", "WARNING")
