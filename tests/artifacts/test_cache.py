"""The cache trusts a hit only when it is the node's own sealed entry; anything else is fetched
afresh. Entries are removed when no task keeps them, and runs left half-way are swept at start."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from spearlet.artifacts.cache import ArtifactCache, Permissions
from spearlet.artifacts.fetch import ArtifactFetcher
from tests.artifacts.conftest import FileServer

pytestmark = pytest.mark.timeout(60)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving an entry to another user needs root")

CONTENT = b"#!/bin/sh\necho hello\n"
EVIL = b"#!/bin/sh\necho evil\n"
DIGEST = hashlib.sha256(CONTENT).hexdigest()


async def test_entries_are_sealed_the_node_s_and_without_write(tmp_path: Path, server: FileServer) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    got = await ArtifactFetcher(cache).fetch(server.publish("tool.sh", CONTENT), DIGEST)
    for path in (got.path, got.path.parent):
        info = path.stat()
        assert info.st_uid == os.geteuid() and info.st_mode & 0o022 == 0
    assert got.path.stat().st_mode & 0o222 == 0
    assert cache.trusted(got.path)


@pytest.mark.parametrize("tamper", ["made writable", "given to another user", "replaced by a link"])
async def test_a_hit_that_is_not_the_node_s_sealed_entry_is_fetched_afresh(
    tmp_path: Path, server: FileServer, tamper: str
) -> None:
    if tamper == "given to another user" and os.geteuid() != 0:
        pytest.skip("needs root")
    fetcher = ArtifactFetcher(ArtifactCache(tmp_path / "cache"))
    url = server.publish("tool.sh", CONTENT)
    entry = (await fetcher.fetch(url, DIGEST)).path
    entry.chmod(0o755)
    entry.write_bytes(EVIL)  # what a hand, another user or a bug leaves under the good digest
    if tamper == "given to another user":
        entry.chmod(0o555)
        os.chown(entry, 65534, 65534)
    elif tamper == "replaced by a link":
        evil = tmp_path / "evil.sh"
        evil.write_bytes(EVIL)
        entry.unlink()
        entry.symlink_to(evil)
    got = await fetcher.fetch(url, DIGEST)
    assert got.path.read_bytes() == CONTENT
    assert server.requests == ["/tool.sh", "/tool.sh"]  # fetched again, not served from the cache


def test_staging_left_by_a_run_that_stopped_half_way_is_swept(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / ".staging-abc123" / "tool.sh").parent.mkdir(parents=True)
    (root / ".staging-abc123" / "tool.sh").write_bytes(CONTENT)
    ArtifactCache(root)
    assert list(root.iterdir()) == []


async def test_collect_keeps_what_is_named_and_removes_the_rest(tmp_path: Path, server: FileServer) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    fetcher = ArtifactFetcher(cache)
    kept = (await fetcher.fetch(server.publish("a.sh", CONTENT))).path
    gone = (await fetcher.fetch(server.publish("b.sh", EVIL))).path
    assert cache.collect([kept]) == 1
    assert kept.read_bytes() == CONTENT and not gone.exists() and not gone.parent.exists()


@pytest.mark.parametrize(
    ("source", "function_bits", "copy"),
    [
        (0o755, 0o5, 0o555),  # anyone could run it: so can the function user's group
        (0o644, 0o4, 0o444),
        (0o600, 0o6, 0o440),  # the function user owned it: its group may read the copy, no one else
        (0o750, 0o5, 0o550),  # the function user's group could run it
        (0o700, 0o0, 0o500),  # the function user could not: neither can it read the copy
    ],
)
def test_a_copy_grants_the_function_user_what_its_source_did_and_others_no_more(
    source: int, function_bits: int, copy: int
) -> None:
    assert Permissions(gid=65534).mode(source, function_bits) == copy
