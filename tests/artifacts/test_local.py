"""Local artifacts read the way a local attacker cannot subvert: while another thread swaps the file
for other code, a FIFO, or a link, every fetch ends quickly with the bytes it hashed or a refusal;
a file larger than it says is cut at the limit; the function user's access decides what a root node
reads for a caller."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spearlet.artifacts.cache import ArtifactCache
from spearlet.artifacts.fetch import ArtifactFetcher
from spearlet.artifacts.local import Reader
from spearlet.core.errors import InvalidArgument
from tests.artifacts.conftest import source
from tests.helpers import open_path

pytestmark = pytest.mark.timeout(120)
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs a node running as root")

GOOD = b"#!/bin/sh\necho good\n" + b"#" * 200_000  # long enough for a swap to land mid-read
EVIL = b"#!/bin/sh\necho evil\n" + b"#" * 200_000
GOOD_DIGEST = hashlib.sha256(GOOD).hexdigest()
NOBODY = Reader("nobody", 65534, 65534)


def fetcher(tmp_path: Path, **policy: object) -> ArtifactFetcher:
    return ArtifactFetcher(ArtifactCache(tmp_path / "cache"), **policy)  # type: ignore[arg-type]


def entries(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "cache").rglob("*"))


# Another process (as a local attacker would be: no lock of ours slows it) keeps renaming over
# `path`, alternately the good file and something else: other code, a FIFO, or a link.
SWAPPER = """
import os, sys
path, kind, other = sys.argv[1], sys.argv[2], sys.argv[3]
good = open(other + ".good", "rb").read()
flip = 0
while True:
    tmp = path + ".swap%d" % (flip % 2)
    if flip % 2 == 0:
        with open(tmp, "wb") as f:
            f.write(good)
        os.chmod(tmp, 0o755)
    elif kind == "code":
        with open(tmp, "wb") as f:
            f.write(open(other, "rb").read())
    elif kind == "fifo":
        os.mkfifo(tmp)
    else:
        os.symlink(other, tmp)
    os.rename(tmp, path)
    flip += 1
"""


@pytest.fixture
def swapping(tmp_path: Path) -> Iterator[Callable[[Path, str, Path], None]]:
    """`swapping(path, kind, other)`: start the swapper on `path` (`kind` code, fifo or link)."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(path: Path, kind: str, other: Path) -> None:
        other.with_name(other.name + ".good").write_bytes(GOOD)
        processes.append(subprocess.Popen([sys.executable, "-c", SWAPPER, str(path), kind, str(other)]))
        time.sleep(0.2)  # under way

    yield start
    for process in processes:
        process.kill()
        process.wait()


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    return source(tmp_path, GOOD)


async def test_a_file_swapped_while_it_is_read_is_never_cached_under_the_good_digest(
    tmp_path: Path, tool: Path, swapping: Callable[[Path, str, Path], None]
) -> None:
    path = tool
    (tmp_path / "evil.sh").write_bytes(EVIL)
    swapping(path, "code", tmp_path / "evil.sh")
    local = fetcher(tmp_path)
    accepted = 0
    for _ in range(150):
        try:
            got = await local.fetch(str(path), f"sha256:{GOOD_DIGEST}")
        except InvalidArgument as exc:
            assert "checksum mismatch" in str(exc) or "changed while" in str(exc)
            continue
        accepted += 1
        assert got.path.read_bytes() == GOOD, "code other than the verified one was cached under its digest"
    assert accepted  # the race was run, not only refused


async def test_a_fifo_swapped_in_never_blocks_a_fetch(
    tmp_path: Path, tool: Path, swapping: Callable[[Path, str, Path], None]
) -> None:
    path = tool
    swapping(path, "fifo", tmp_path / "unused")
    local = fetcher(tmp_path)
    try:
        for _ in range(100):
            started = time.monotonic()
            try:
                got = await local.fetch(str(path))
                assert got.path.read_bytes() == GOOD
            except InvalidArgument as exc:
                assert "not a regular file" in str(exc) or "changed while" in str(exc) or "exist" in str(exc)
            except TimeoutError:
                pytest.fail("a fetch blocked")
            assert time.monotonic() - started < 5, "a fetch blocked on a FIFO"
    finally:
        _release_fifo_readers(path.parent)


def _release_fifo_readers(directory: Path) -> None:
    """Whatever blocked opening a FIFO here (it must not) is let go, so the test run can end."""
    for candidate in directory.iterdir():
        # The swapping thread may still be renaming files in and out of this directory.
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(candidate.lstat().st_mode):
                os.close(os.open(candidate, os.O_WRONLY | os.O_NONBLOCK))


async def test_a_link_swapped_into_a_package_never_brings_in_what_it_points_to(
    tmp_path: Path, swapping: Callable[[Path, str, Path], None]
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP-SECRET")
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    swapping(package / "mod.py", "link", secret)
    local = fetcher(tmp_path)
    copied = 0
    for _ in range(100):
        try:
            got = await local.fetch(str(package))
        except InvalidArgument as exc:
            assert "link or special file" in str(exc) or "changed while" in str(exc) or "exist" in str(exc)
            continue
        copied += 1
        assert (got.path / "mod.py").read_bytes() == GOOD
    assert copied


async def test_a_file_longer_than_its_size_says_is_cut_at_the_limit_and_leaves_nothing(tmp_path: Path) -> None:
    # /proc files are regular files that report size 0 however much they hold: the size a stat
    # gives is no bound; the bytes read are.
    maps = Path(f"/proc/{os.getpid()}/maps")
    assert maps.stat().st_size == 0 and len(maps.read_bytes()) > 4096
    with pytest.raises(InvalidArgument, match="larger than 4096 bytes"):
        await fetcher(tmp_path, max_bytes=4096).fetch(str(maps))
    assert entries(tmp_path) == []


@as_root
async def test_a_root_node_reads_for_a_caller_only_what_the_function_user_could(tmp_path: Path) -> None:
    opened = tmp_path / "open"
    opened.mkdir()
    open_path(tmp_path)
    readable = opened / "ok.sh"
    readable.write_bytes(GOOD)
    readable.chmod(0o755)
    secret = opened / "shadow"
    secret.write_bytes(b"root:$6$hash")
    secret.chmod(0o640)
    hidden = tmp_path / "closed"
    hidden.mkdir(mode=0o700)
    (hidden / "ok.sh").write_bytes(GOOD)
    (hidden / "ok.sh").chmod(0o755)
    package = opened / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "private.py").write_text("TOKEN = 'x'\n")
    (package / "private.py").chmod(0o600)
    local = fetcher(tmp_path, reader=NOBODY)
    for location in (secret, hidden / "ok.sh", package, opened / "link"):
        if location.name == "link":
            location.symlink_to(secret)
        with pytest.raises(InvalidArgument, match="cannot be read by the function user 'nobody'"):
            await local.fetch(str(location))
    assert entries(tmp_path) == []  # nothing was copied for the refused ones
    got = await local.fetch(str(readable))
    assert got.path.read_bytes() == GOOD
    # The operator's own tasks file is not a caller: the node reads it as itself.
    assert (await local.fetch(str(secret), for_caller=False)).path.read_bytes() == b"root:$6$hash"


async def test_a_copy_is_never_more_readable_than_its_source_nor_writable(tmp_path: Path) -> None:
    source = tmp_path / "tool.sh"
    source.write_bytes(GOOD)
    cache = tmp_path / "cache"
    local = fetcher(tmp_path)
    for mode in (0o755, 0o750, 0o700, 0o644, 0o600):
        source.chmod(mode)
        got = await local.fetch(str(source))
        copy_mode = got.path.stat().st_mode & 0o777
        assert copy_mode & ~mode == 0 and copy_mode & 0o222 == 0, (oct(mode), oct(copy_mode))
        assert got.path.stat().st_uid == os.geteuid()
        for entry in entries(tmp_path):
            entry.chmod(0o700) if entry.is_dir() else entry.unlink()  # the next mode makes a new copy
    assert cache.stat().st_mode & 0o077 == 0  # the cache is closed to other users
