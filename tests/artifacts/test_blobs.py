"""Artifacts shared through a real Redis: a file or package comes back as it went in, checked
against its digest; a damaged blob is refused; the last task to let go of a blob removes it."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spearlet.artifacts.blobs import PREFIX, RedisBlobs
from spearlet.artifacts.cache import ArtifactCache
from spearlet.artifacts.fetch import ArtifactFetcher
from spearlet.core.errors import FailedPrecondition
from spearlet.core.models import Task

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def blobs(redis_url: str) -> AsyncIterator[RedisBlobs]:
    shared = RedisBlobs(redis_url, 1 << 20)
    await shared.redis.flushall()
    yield shared
    await shared.close()


def package(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("from pkg.sub.m import x\n")
    (root / "pkg" / "sub" / "m.py").write_text("x = 1\n")
    (root / "pkg" / "run.sh").write_text("#!/bin/sh\n")
    (root / "pkg" / "run.sh").chmod(0o755)
    return root / "pkg"


def task_of(name: str, digest: str, location: str) -> Task:
    return Task(name, name, "python", location, local_path=f"/elsewhere/{digest}/{Path(location).name}", digest=digest)


async def test_an_artifact_comes_back_from_the_store_as_it_went_in(blobs: RedisBlobs, tmp_path: Path) -> None:
    here = ArtifactFetcher(ArtifactCache(tmp_path / "here"), blobs=blobs)
    there = ArtifactFetcher(ArtifactCache(tmp_path / "there"), blobs=blobs)  # another node's cache
    tool = tmp_path / "tool.sh"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    copies = []
    for location in (tool, package(tmp_path)):
        artifact = await here.fetch(str(location))
        await here.share(artifact, "t")
        copy = await there.materialize(task_of("t", artifact.digest, str(location)))
        assert copy.parent == tmp_path / "there" / artifact.digest and copy.name == location.name
        assert (await there.fetch(str(copy))).digest == artifact.digest  # the same content
        copies.append(copy)
    tree = copies[1]
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == ["__init__.py", "run.sh", "sub", "sub/m.py"]
    assert (tree / "run.sh").stat().st_mode & 0o100 and not (tree / "sub" / "m.py").stat().st_mode & 0o100


async def test_a_damaged_blob_is_refused(blobs: RedisBlobs, tmp_path: Path) -> None:
    fetcher = ArtifactFetcher(ArtifactCache(tmp_path / "cache"), blobs=blobs)
    digest = hashlib.sha256(b"good").hexdigest()
    await blobs.redis.set(PREFIX + digest, b"Fevil")
    with pytest.raises(FailedPrecondition, match="damaged"):
        await fetcher.materialize(task_of("t", digest, "/x/tool.sh"))
    assert list((tmp_path / "cache").rglob("*")) == []


async def test_the_last_task_to_let_go_of_a_blob_removes_it(blobs: RedisBlobs, tmp_path: Path) -> None:
    fetcher = ArtifactFetcher(ArtifactCache(tmp_path / "cache"), blobs=blobs)
    tool = tmp_path / "tool.sh"
    tool.write_bytes(b"#!/bin/sh\n")
    artifact = await fetcher.fetch(str(tool))
    for task in ("a", "b"):
        await fetcher.share(artifact, task)
    await fetcher.unshare(artifact.digest, "a")
    assert await blobs.redis.exists(PREFIX + artifact.digest)
    await fetcher.unshare(artifact.digest, "b")
    assert not await blobs.redis.exists(PREFIX + artifact.digest)
    with pytest.raises(FailedPrecondition, match="register the task again"):
        await blobs.get(artifact.digest)
