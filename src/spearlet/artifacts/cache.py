"""The node's artifact cache: `root/<digest>/<name>`, a verified file or package directory.

What makes an entry trustworthy is how it was made and who can change it, since a cache hit is not
hashed again: entries are written by the node into a private staging directory, hashed as they
are written, and renamed into place whole; they belong to the node and carry no write permission
for anyone. A hit that is not so (left by another user, a previous version, a hand) is removed and
fetched afresh.

The root is closed to other users (0700). When functions run as another user without a sandbox
that shows them their artifact, the node opens it to 0711: traversable but not listable, so a
function reaches an entry only by its digest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from spearlet.core.errors import InvalidArgument

STAGING_PREFIX = ".staging-"
# Listable: Python's import system lists the directory a module is found in.
ENTRY_DIR_MODE = 0o755


@dataclass(frozen=True, slots=True)
class Permissions:
    """Who may read entries besides the node: the function user's group gets, on each copy, what
    the function user was granted on its source, and others what others were granted, so a copy is
    never more readable than what it was copied from. `gid` None: functions run as the node's user."""

    gid: int | None = None

    def mode(self, source_mode: int, function_bits: int) -> int:
        """The copy's mode: read (and execute, where the source had it) for the node, `function_bits`
        (rwx of the class the function user falls in on the source) for the group, and the
        source's own bits for others; never write."""
        runnable = bool(source_mode & 0o111)
        owner = 0o500 if runnable else 0o400
        if self.gid is None:
            return source_mode & 0o555 | owner
        return owner | (function_bits & (0o5 if runnable else 0o4)) << 3 | source_mode & 0o005


def check_name(name: str, location: str) -> str:
    """`name` as one safe path component (the last component of a location, kept for the runtimes:
    a module's name, a `.zip` or `.wat` suffix)."""
    if name in ("", ".", "..") or "/" in name or "\0" in name or len(name.encode()) > 255:
        raise InvalidArgument(f"artifact location {location[:200]!r} does not end in a usable file name")
    return name


class ArtifactCache:
    def __init__(self, root: Path, open_to_functions: bool = False, permissions: Permissions | None = None) -> None:
        self.root = root
        self.permissions = permissions or Permissions()
        self.uid = os.geteuid()
        root.mkdir(parents=True, exist_ok=True)
        if root.lstat().st_uid != self.uid or not root.is_dir() or root.is_symlink():
            raise ValueError(f"the artifact cache {root} must be a directory owned by the node's user")
        root.chmod(0o711 if open_to_functions else 0o700)
        for left in root.glob(f"{STAGING_PREFIX}*"):  # by a run that stopped half-way
            remove_tree(left)

    def entry(self, digest: str, name: str) -> Path:
        return self.root / digest / name

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private directory on the cache's filesystem to build an entry in; removed after."""
        path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        try:
            yield path
        finally:
            remove_tree(path)

    def commit(self, built: Path, digest: str) -> Path:
        """Move `built` (a file or directory in a staging directory, modes set) into place as the
        entry `<digest>/<its name>`; a trusted entry already there is kept."""
        target = self.entry(digest, built.name)
        parent = target.parent
        with contextlib.suppress(FileExistsError):
            parent.mkdir(mode=ENTRY_DIR_MODE)
        info = parent.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != self.uid or info.st_mode & 0o022:
            remove_tree(parent)
            parent.mkdir(mode=ENTRY_DIR_MODE)
        parent.chmod(ENTRY_DIR_MODE)
        if self.trusted(target):
            return target
        remove_tree(target)
        os.rename(built, target)
        return target

    def trusted(self, path: Path) -> bool:
        """Whether `path` is an entry the node made and nobody can have changed: it, and all it
        holds, regular files and directories owned by the node without write permission, in a
        directory only the node may write to."""
        try:
            parent = path.parent.lstat()
            if parent.st_uid != self.uid or parent.st_mode & 0o022 or not stat.S_ISDIR(parent.st_mode):
                return False
            return all(self._sealed(p) for p in _walk(path))
        except OSError:
            return False

    def _sealed(self, info: os.stat_result) -> bool:
        kind = stat.S_IFMT(info.st_mode)
        return kind in (stat.S_IFREG, stat.S_IFDIR) and info.st_uid == self.uid and not info.st_mode & 0o222

    def seal(self, path: Path, source_mode: int, function_bits: int) -> None:
        """Give a built file or directory its final group and mode (Permissions.mode)."""
        if self.permissions.gid is not None:
            os.chown(path, -1, self.permissions.gid, follow_symlinks=False)
        path.chmod(self.permissions.mode(source_mode, function_bits))

    def entries(self) -> list[Path]:
        """Every entry, `root/<digest>/<name>`."""
        return [
            entry
            for digest_dir in self.root.iterdir()
            if not digest_dir.name.startswith(STAGING_PREFIX) and digest_dir.is_dir() and not digest_dir.is_symlink()
            for entry in digest_dir.iterdir()
        ]

    def collect(self, keep: Iterable[Path]) -> int:
        """Remove every entry not in `keep`; returns how many went."""
        kept = {str(p) for p in keep}
        removed = 0
        for digest_dir in self.root.iterdir():
            if digest_dir.name.startswith(STAGING_PREFIX):
                continue
            names = list(digest_dir.iterdir()) if digest_dir.is_dir() and not digest_dir.is_symlink() else []
            for entry in names:
                if str(entry) not in kept:
                    remove_tree(entry)
                    removed += 1
            if not names or all(str(e) not in kept for e in names):
                remove_tree(digest_dir)
        return removed


def _walk(path: Path) -> Iterator[os.stat_result]:
    """lstat of `path` and, for a directory, of everything under it (no link followed)."""
    info = path.lstat()
    yield info
    if stat.S_ISDIR(info.st_mode):
        for child in path.iterdir():
            yield from _walk(child)


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree that may lack write permission (entries have none)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink(missing_ok=True)
        return
    for directory, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
    shutil.rmtree(path, ignore_errors=True)
