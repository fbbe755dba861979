"""Reading a local artifact so that the bytes hashed are the bytes that run.

A path is resolved one component at a time from `/`, each directory opened relative to the last
without following links (a link's target is read and walked the same way), so that nothing can be
swapped in between a check and the use: the artifact is opened once, with O_NOFOLLOW and O_NONBLOCK
(a FIFO or device never blocks us), its descriptor must be a regular file (or a directory, for a
package), and its bytes are copied, hashed and counted in the same pass, within a byte and time
budget. A package directory is walked the same way, through descriptors.

When a reader is given (the node runs as root on behalf of a caller, functions as another user),
each directory on the way must let that user pass and the artifact let it read: the node reads
nothing for a caller that the caller's functions could not read themselves.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from spearlet.core.errors import InvalidArgument

CHUNK = 1 << 16
MAX_LINKS = 40  # as the kernel's own resolution
MAX_TREE_ENTRIES = 10_000
MAX_TREE_DEPTH = 64
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
R, X = 4, 1


@dataclass(frozen=True, slots=True)
class Reader:
    """The identity whose access to a local artifact decides whether the node reads it."""

    name: str
    uid: int
    gid: int

    def bits(self, info: os.stat_result) -> int:
        """rwx the kernel would grant this user (no supplementary groups: functions run without)."""
        if info.st_uid == self.uid:
            return info.st_mode >> 6 & 7
        if info.st_gid == self.gid:
            return info.st_mode >> 3 & 7
        return info.st_mode & 7

    def can_read(self, info: os.stat_result) -> bool:
        """Read a file, or list and enter a directory."""
        bits = self.bits(info)
        return bool(bits & R) and bool(bits & X or not stat.S_ISDIR(info.st_mode))


class Budget:
    """Bytes and time one artifact may take to read."""

    def __init__(self, max_bytes: int, timeout_s: float, too_large: str) -> None:
        self.max_bytes = max_bytes
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.too_large = too_large
        self.used = 0

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.max_bytes:
            raise InvalidArgument(self.too_large)
        if time.monotonic() > self.deadline:
            raise InvalidArgument(f"reading the artifact took longer than {self.timeout_s:g} s")


@dataclass(slots=True)
class Opened:
    """A local artifact, open: a regular file's descriptor or a directory's (listable)."""

    fd: int
    info: os.stat_result
    path: Path  # as resolved, for the allowed-directories check
    function_bits: int  # what the reader may do with it (7 without a reader)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.info.st_mode)


def open_local(path: Path, location: str, reader: Reader | None, enforce: bool, allowed: Sequence[Path] = ()) -> Opened:
    """Open the artifact at absolute `path`, walking it as described above. The caller closes `fd`."""
    shown = location[:200]
    unreadable = InvalidArgument(
        f"artifact location {shown!r} cannot be read by the function user {reader.name if reader else ''!r}: "
        "the file and every directory above it must let that user in"
    )
    stack = [os.open("/", _DIR)]
    resolved: list[str] = []
    parts = deque(p for p in path.parts[1:])
    links = 0
    try:
        while True:
            current = stack[-1]
            if enforce and reader is not None and not reader.bits(os.fstat(current)) & X:
                raise unreadable
            if not parts:
                raise InvalidArgument(f"artifact location {shown!r} is not a file or a directory")
            name = parts.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    resolved.pop()
                continue
            try:
                info = os.stat(name, dir_fd=current, follow_symlinks=False)
            except FileNotFoundError:
                raise InvalidArgument(f"artifact location {shown!r} does not exist") from None
            except NotADirectoryError:
                raise InvalidArgument(f"artifact location {shown!r} does not exist") from None
            if stat.S_ISLNK(info.st_mode):
                links += 1
                if links > MAX_LINKS:
                    raise InvalidArgument(f"artifact location {shown!r} cannot be resolved: too many links")
                target = Path(os.readlink(name, dir_fd=current))
                if target.is_absolute():
                    while len(stack) > 1:
                        os.close(stack.pop())
                    resolved.clear()
                parts.extendleft(reversed(target.parts[1:] if target.is_absolute() else target.parts))
                continue
            if parts:
                if not stat.S_ISDIR(info.st_mode):
                    raise InvalidArgument(f"artifact location {shown!r} does not exist")
                stack.append(_open_dir(name, current, shown))
                resolved.append(name)
                continue
            resolved.append(name)
            final = Path("/", *resolved)
            if allowed and not any(final.is_relative_to(d) for d in allowed):
                raise InvalidArgument(
                    f"artifact location {shown!r} is outside the directories this node serves artifacts from"
                )
            opened = open_entry(name, current, info, shown)
            if enforce and reader is not None and not reader.can_read(opened.info):
                os.close(opened.fd)
                raise unreadable
            opened.path = final
            opened.function_bits = reader.bits(opened.info) if reader is not None else 7
            return opened
    except OSError as exc:  # a component that went away or changed kind while we walked
        raise InvalidArgument(f"artifact location {shown!r} cannot be read: {exc.strerror}") from None
    finally:
        for fd in stack:
            os.close(fd)


def _open_dir(name: str, parent: int, shown: str) -> int:
    fd = os.open(name, _DIR, dir_fd=parent)
    if not stat.S_ISDIR(os.fstat(fd).st_mode):  # swapped for a link since we looked
        os.close(fd)
        raise InvalidArgument(f"artifact location {shown!r} changed while it was read")
    return fd


def open_entry(name: str, parent: int, seen: os.stat_result, shown: str) -> Opened:
    """Open `name` in the directory `parent` as a regular file or a listable directory, refusing
    anything else before opening it (a device's open may act) and after (it may have been swapped)."""
    kind = stat.S_IFMT(seen.st_mode)
    if kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise InvalidArgument(f"artifact location {shown!r} is not a regular file or a directory")
    try:
        fd = os.open(name, _LIST if kind == stat.S_IFDIR else _FILE, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            raise InvalidArgument(f"artifact location {shown!r} changed while it was read") from None
        raise InvalidArgument(f"artifact location {shown!r} cannot be opened: {exc.strerror}") from None
    info = os.fstat(fd)
    if stat.S_IFMT(info.st_mode) != kind or (info.st_dev, info.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)
        raise InvalidArgument(f"artifact location {shown!r} changed while it was read")
    return Opened(fd, info, Path(name), 7)


def copy_fd(fd: int, out: BinaryIO, budget: Budget) -> str:
    """Copy the open regular file `fd` to `out`, hashing and counting the same bytes; its sha256."""
    digest = hashlib.sha256()
    while chunk := os.read(fd, CHUNK):
        budget.take(len(chunk))
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def copy_file(opened: Opened, target: Path, budget: Budget) -> str:
    with target.open("xb") as out:
        return copy_fd(opened.fd, out, budget)


def tree_digest(files: Sequence[tuple[str, str]]) -> str:
    """A package directory's digest: of each file's relative path and sha256, in order."""
    return hashlib.sha256("\n".join(f"{r}\0{d}" for r, d in files).encode()).hexdigest()


def copy_tree(
    opened: Opened,
    target: Path,
    budget: Budget,
    reader: Reader | None,
    enforce: bool,
    seal: Callable[[Path, int, int], None],
    shown: str,
) -> str:
    """Copy the open directory into `target` (created), file by file through descriptors, links and
    special files refused, `__pycache__` left out; `seal(path, source_mode, function_bits)` gives
    each copy its mode. Returns the tree's digest."""
    files: list[tuple[str, str]] = []
    entries = 0

    def walk(fd: int, into: Path, relative: str, depth: int) -> None:
        nonlocal entries
        if depth > MAX_TREE_DEPTH:
            raise InvalidArgument(f"artifact directory {shown!r} is nested deeper than {MAX_TREE_DEPTH}")
        into.mkdir(mode=0o700)
        with os.scandir(fd) as listing:  # lists through its own duplicate of `fd`
            children = sorted(listing, key=lambda e: e.name)
        for child in children:
            if child.name == "__pycache__":
                continue
            entries += 1
            if entries > MAX_TREE_ENTRIES:
                raise InvalidArgument(f"artifact directory {shown!r} holds more than {MAX_TREE_ENTRIES} entries")
            rel = f"{relative}{child.name}"
            try:
                info = child.stat(follow_symlinks=False)
            except FileNotFoundError:
                raise InvalidArgument(f"artifact directory {shown!r} changed while it was read") from None
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                raise InvalidArgument(f"artifact directory {shown!r} holds a link or special file: {rel}")
            opened_child = open_entry(child.name, fd, info, f"{shown}/{rel}")
            try:
                bits = reader.bits(opened_child.info) if reader is not None else 7
                if enforce and reader is not None and not reader.can_read(opened_child.info):
                    raise InvalidArgument(
                        f"artifact directory {shown!r}: {rel} cannot be read by the function user {reader.name!r}"
                    )
                if opened_child.is_dir:
                    walk(opened_child.fd, into / child.name, f"{rel}/", depth + 1)
                else:
                    files.append((rel, copy_file(opened_child, into / child.name, budget)))
                seal(into / child.name, opened_child.info.st_mode, bits)
            finally:
                os.close(opened_child.fd)

    walk(opened.fd, target, "", 0)
    seal(target, opened.info.st_mode, opened.function_bits)
    return tree_digest(files)
