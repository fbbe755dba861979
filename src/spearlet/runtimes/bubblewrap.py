"""The bubblewrap sandbox every process function and Python worker starts in.

Namespaces, the way Flatpak sandboxes untrusted code without root: a PID namespace (the function sees
only its own processes, and when its first process ends the kernel kills every other one, `setsid`
or not), mount (the system read-only, the working directory the only writable place, a private /tmp
and /dev/shm, the node's data, shared dir, home, token and settings files replaced by empty ones),
IPC, UTS and, for `network = "none"`, network.

Two shapes, chosen by who runs the node:
- an ordinary user: bwrap makes a user namespace too; the function keeps the node's uid, without
  capabilities, and process limits count only the sandbox's processes;
- root: bwrap runs as root WITHOUT a user namespace (with one, the sandbox's uid maps to root outside
  and the function reads every root-owned file its owner bits allow), binds what the function needs
  even from directories closed to others, and the function drops to the function user inside
  (`setpriv`, in `limited_argv`).

The outer bwrap process is the node's child; its child is the namespace's init, whose child is the
function. Killing the outer process kills the init (`--die-with-parent`), which ends the namespace.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spearlet.core.errors import InvalidArgument, StartError
from spearlet.core.models import Task
from spearlet.runtimes.base import Limits
from spearlet.runtimes.sandbox import SYSTEM_PATH, FunctionUser, limited_argv

log = logging.getLogger(__name__)

BWRAP = shutil.which("bwrap", path=SYSTEM_PATH)
PROBE_TIMEOUT_S = 10.0


class SandboxUnavailable(StartError):
    """`sandbox = "required"` and bubblewrap cannot run here."""


@dataclass(frozen=True, slots=True)
class Sandbox:
    bwrap: str
    # The node is not root: bwrap makes a user namespace (as root it must not).
    user_namespace: bool
    # Functions run as another user than the node: directories closed to others on the way to what
    # they need are replaced by empty ones through which bwrap binds it.
    other_user: bool
    # Directories replaced by an empty tmpfs, files by /dev/null.
    hidden_dirs: tuple[str, ...] = ()
    hidden_files: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        shape = "user namespace" if self.user_namespace else "as root, functions drop to their user inside"
        return f"bubblewrap ({shape})"

    def wrap(
        self,
        argv: Sequence[str],
        *,
        workdir: str,
        expose: Iterable[str] = (),
        network: str = "host",
        tmpfs_bytes: int = 0,
    ) -> list[str]:
        """`argv` run inside a fresh sandbox whose only writable place is `workdir` (bound at its own
        path, as every path in `expose` is, read-only). `tmpfs_bytes` bounds /tmp and /dev/shm."""
        command = [self.bwrap, *self._namespaces(network), "--die-with-parent", "--new-session"]
        # Writable by the function user as the host's are (bwrap, as root, would make them root's).
        private = ["--perms", "1777", *(["--size", str(tmpfs_bytes)] if tmpfs_bytes > 0 else []), "--tmpfs"]
        command += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        command += [*private, "/tmp", *private, "/dev/shm"]
        exposed = [(os.path.realpath(p), False) for p in expose] + [(os.path.realpath(workdir), True)]
        # Hidden directories under /tmp get an empty read-only tmpfs of their own too, in the private
        # /tmp: the directories bwrap makes there on the way to a bind would be the function's.
        covered = _outermost([*self.hidden_dirs, *(self._closed_ancestors(p for p, _ in exposed))])
        for directory in covered:
            command += ["--tmpfs", directory]
        for file in self.hidden_files:
            if not _under_any(file, covered):
                command += ["--ro-bind", "/dev/null", file]
        made: set[str] = set()
        empty = [*covered, "/tmp", "/dev/shm"]  # where the way to a bind does not exist yet
        for path, writable in exposed:
            if not writable and not _under_any(path, empty):
                continue  # in sight, read-only, through the root's bind already: one mount less
            # bwrap would make the directories leading to a bind inside a tmpfs closed to others.
            for parent in reversed(Path(path).parents):
                directory = str(parent)
                if directory not in made and _under_any(directory, empty) and directory not in empty:
                    command += ["--perms", "0755", "--dir", directory]
                    made.add(directory)
            command += ["--bind" if writable else "--ro-bind", path, path]
        for directory in covered:  # the binds inside are mounts of their own, left as they are
            command += ["--remount-ro", directory]
        return [*command, "--chdir", workdir, "--", *argv]

    def _namespaces(self, network: str) -> list[str]:
        flags = ["--unshare-user"] if self.user_namespace else []
        flags += ["--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        if network == "none":
            flags.append("--unshare-net")
        return flags

    def _closed_ancestors(self, paths: Iterable[str]) -> list[str]:
        if not self.other_user:
            return []
        closed = []
        for path in paths:
            for parent in reversed(Path(path).parents):
                try:
                    mode = parent.stat().st_mode
                except OSError:
                    break
                if not mode & 0o001:
                    closed.append(str(parent))
                    break
        return closed


def function_command(
    argv: list[str],
    limits: Limits,
    user: FunctionUser | None,
    sandbox: Sandbox | None,
    *,
    workdir: str,
    expose: Iterable[str],
    network: str,
) -> list[str]:
    """A function's (or worker's) command line: limited, as its user, and in a sandbox when there is
    one, whose /tmp and /dev/shm hold no more than its memory limit."""
    own_user_namespace = sandbox is not None and sandbox.user_namespace
    limited = limited_argv(argv, limits, user, own_user_namespace)
    if sandbox is None:
        return limited
    return sandbox.wrap(limited, workdir=workdir, expose=expose, network=network, tmpfs_bytes=limits.memory_bytes)


def task_network(task: Task, default: str, sandbox: Sandbox | None) -> str:
    """The task's `network` (its settings', checked at registration, else the node's); "none"
    needs the sandbox."""
    network = default if task.settings.network is None else task.settings.network
    if network == "none" and sandbox is None:
        raise InvalidArgument('network "none" needs the sandbox, which is off on this node (see its health)')
    return network


def _under_any(path: str, directories: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in directories)


def _outermost(directories: Iterable[str]) -> list[str]:
    """The directories without those inside another one, shallowest first (mount order)."""
    unique = sorted({os.path.realpath(d) for d in directories if d}, key=lambda d: (d.count("/"), d))
    kept: list[str] = []
    for directory in unique:
        if directory != "/" and not _under_any(directory, kept):
            kept.append(directory)
    return kept


def node_home() -> str:
    """The node user's home directory, when it is one of its own (not `/`)."""
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        return ""
    return home if home not in ("", "/") and os.path.isdir(home) else ""


def hidden_paths(
    data_dir: Path, shared_dir: Path, secrets: Iterable[Path | None]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What functions must not see: (directories, files). The node's data and shared dirs, home
    and runtime directories (a user's D-Bus or systemd socket would let a function start processes
    outside the sandbox), the node's temporary directory (other calls' working directories), and
    the token and settings files."""
    directories = [str(data_dir), str(shared_dir), node_home(), tempfile.gettempdir(), "/run/user"]
    files = [str(Path(s).resolve()) for s in secrets if s is not None and Path(s).is_file()]
    # /tmp is private in every sandbox already.
    return tuple(d for d in directories if d and d != "/tmp" and os.path.isdir(d)), tuple(files)


def probe(sandbox: Sandbox) -> str:
    """Why bubblewrap cannot run here (empty: it can). Tries the most demanding shape, with a
    network namespace, on a throwaway working directory."""
    workdir = tempfile.mkdtemp(prefix="spearlet-probe-")
    try:
        argv = sandbox.wrap(["/bin/true"], workdir=workdir, network="none")
        result = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap did not run: {exc}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip() or f"exit code {result.returncode}"
        return f"bwrap failed: {detail}"
    return ""


def start_sandbox(
    mode: str,
    *,
    other_user: bool,
    hidden_dirs: tuple[str, ...] = (),
    hidden_files: tuple[str, ...] = (),
    bwrap: str | None = BWRAP,
) -> tuple[Sandbox | None, str]:
    """The sandbox the node's functions run in (None: none) and how the banner and health say so.
    `required` raises SandboxUnavailable rather than run without it."""
    if mode == "off":
        return None, 'off (sandbox = "off")'
    if bwrap is None:
        reason = "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    else:
        sandbox = Sandbox(bwrap, os.geteuid() != 0, other_user, hidden_dirs, hidden_files)
        reason = probe(sandbox)
        if not reason:
            return sandbox, sandbox.description
    if mode == "required":
        raise SandboxUnavailable(f'sandbox = "required" but {reason}')
    log.warning("functions run without a sandbox: %s", reason)
    return None, f"off (unavailable: {reason})"
