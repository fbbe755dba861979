"""The tables the node chooses implementations from, held to the settings that choose."""

from __future__ import annotations

from pathlib import Path

import pytest

from spearlet.config import STORE_NAMES, STORE_URL_SCHEMES, Settings
from spearlet.node.tables import RUNTIMES, STORES, Isolation, runtimes, store_parts
from spearlet.store.memory import MemoryStore
from spearlet.store.redis import RedisStore
from spearlet.store.sqlite import SqliteStore


def test_every_store_the_settings_accept_has_a_row_and_every_row_is_accepted() -> None:
    assert set(STORES) == {*STORE_NAMES, *STORE_URL_SCHEMES}


@pytest.mark.parametrize(
    ("store", "kind", "shared"),
    [("sqlite", SqliteStore, False), ("memory", MemoryStore, False), ("redis://127.0.0.1:1/0", RedisStore, True)],
    ids=["sqlite", "memory", "redis"],
)
async def test_the_store_setting_chooses_the_store_and_what_a_shared_one_brings(
    tmp_path: Path, store: str, kind: type, shared: bool
) -> None:
    parts = store_parts(Settings(data_dir=tmp_path, store=store))
    assert isinstance(parts.store, kind) and parts.shared is shared
    assert (parts.blobs is not None, parts.cluster is not None) == (shared, shared)
    if parts.blobs is not None:
        await parts.blobs.close()


async def test_each_runtime_is_built_for_its_kind(tmp_path: Path) -> None:
    built = runtimes(Settings(data_dir=tmp_path), Isolation(user=None, sandbox=None, shared_dir=tmp_path))
    try:
        assert {kind: runtime.name for kind, runtime in built.items()} == {kind: kind for kind in RUNTIMES}
    finally:
        for runtime in built.values():
            await runtime.close()
