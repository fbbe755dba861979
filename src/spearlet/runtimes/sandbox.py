"""Starting, limiting, watching and stopping child processes, the same way for every runtime.

No `preexec_fn`: beside a running grpcio server it crashes children. Limits are applied by exec'ing
through the `prlimit` command, each child leads its own session (so the whole group can be killed),
and exit is awaited on a pidfd (no watcher thread per child).

Peak memory is the kernel's high-water mark of the child's own address space (VmHWM), read while it
runs: `wait4`'s ru_maxrss cannot be used, since a child forked from the node inherits the node's mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil
import uvloop

from spearlet.runtimes.base import Limits

P = TypeVar("P", bound=asyncio.BaseProtocol)

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
PRLIMIT = shutil.which("prlimit", path=SYSTEM_PATH)
SETPRIV = shutil.which("setpriv", path=SYSTEM_PATH)
# How long a graceful stop (SIGTERM) may take before SIGKILL, and how long the output of a killed
# function (or what a stopped worker left) may take to drain.
STOP_GRACE_S = 0.5


@dataclass(frozen=True, slots=True)
class FunctionUser:
    """The unprivileged account functions run as when the node runs as root."""

    name: str
    uid: int
    gid: int


def resolve_user(run_as: str) -> FunctionUser | None:
    """`auto`: `nobody` when the node is root, else the node's own user (None); `none`: the node's
    user; a name: that account (the node must be root to switch to it)."""
    if run_as in ("", "none"):
        return None
    if run_as == "auto":
        if os.geteuid() != 0:
            return None
        run_as = "nobody"
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        raise ValueError(f"run_as user {run_as!r} does not exist") from None
    if entry.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise ValueError(f"run_as {run_as!r} needs the node to run as root")
    return FunctionUser(run_as, entry.pw_uid, entry.pw_gid)


def make_workdir(prefix: str, user: FunctionUser | None) -> str:
    """A fresh private working directory, owned by whoever the function runs as."""
    workdir = tempfile.mkdtemp(prefix=prefix)
    if user is not None:
        os.chown(workdir, user.uid, user.gid)
    return workdir


def world_traversable(directory: Path) -> bool:
    """Whether any user may pass through every directory down to `directory` (and into it)."""
    real = Path(os.path.realpath(directory))
    try:
        return all(p.stat().st_mode & stat.S_IXOTH for p in (real, *real.parents))
    except OSError:
        return False


def world_runnable(path: str) -> bool:
    """Whether any user may execute `path`: every directory on its way searchable, the file executable."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in real.parents)
    except OSError:
        return False


def limited_argv(
    argv: list[str], limits: Limits, user: FunctionUser | None = None, own_user_namespace: bool = False
) -> list[str]:
    """Prefix `argv` so that it execs as the function user, under the resource limits, unable to
    gain privileges (no setuid programs), and dies with its parent.

    `setpriv --pdeathsig KILL` makes the kernel kill the child if its parent dies (even by SIGKILL):
    outside a sandbox the parent is the node, so a crashed node leaves no function running
    unsupervised; inside one it is the sandbox's init. `own_user_namespace`: the function runs in a
    user namespace of its own, where the process limit counts only its processes.
    """
    if PRLIMIT is None or SETPRIV is None:
        raise RuntimeError("the prlimit and setpriv commands (util-linux) are required to sandbox functions")
    prefix = [SETPRIV]
    if user is not None:
        prefix += [f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
        prefix += ["--inh-caps=-all", "--bounding-set=-all"]
    prefix += ["--no-new-privs", "--pdeathsig", "KILL", "--", PRLIMIT]
    if (user is not None or own_user_namespace) and limits.processes > 0:
        # Counted per user (per user namespace), and only binding for an unprivileged one: a fork
        # bomb stops here.
        prefix.append(f"--nproc={limits.processes}")
    if limits.memory_bytes > 0:
        prefix.append(f"--as={limits.memory_bytes}")
    if limits.cpu_seconds > 0:
        # SIGXCPU at the soft limit tells the breach apart from other kills; SIGKILL one second later.
        prefix.append(f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}")
    if limits.file_bytes > 0:
        prefix.append(f"--fsize={limits.file_bytes}")
    if limits.open_files > 0:
        prefix.append(f"--nofile={limits.open_files}")
    return [*prefix, "--", *argv]


# Set by the node at start: marks every process it starts, so that a restarted node can find what a
# crashed one left behind (grandchildren survive the parent-death signal of their parent).
NODE_MARK = "SPEAR_NODE"
_node_mark = ""


def set_node_mark(mark: str) -> None:
    global _node_mark
    _node_mark = mark


def function_environment(workdir: str, extra: Mapping[str, str]) -> dict[str, str]:
    """A clean environment: never the node's own, only a system PATH and what the task asks for."""
    env = {"PATH": SYSTEM_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env.update(extra)
    if _node_mark:
        env[NODE_MARK] = _node_mark
    return env


def kill_leftovers(mark: str) -> int:
    """Kill processes a previous run of this node left (they carry its mark); returns how many."""
    killed = 0
    me = os.getpid()
    for process in psutil.process_iter():
        try:
            if process.pid != me and process.environ().get(NODE_MARK) == mark:
                process.kill()
                killed += 1
        except psutil.Error:
            continue
    return killed


@dataclass(slots=True)
class Exit:
    returncode: int  # negative: killed by that signal


def spawn(argv: list[str], *, cwd: str, env: dict[str, str], stdin: int | IO[Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
    )


async def wait_exit(pid: int, before_reap: Callable[[], object] | None = None) -> Exit:
    """Wait for `pid` without a watcher thread, call `before_reap`, then reap it."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = -1
    if fd >= 0:
        readable: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
            os.close(fd)
    if before_reap is not None:
        before_reap()
    _, status = os.waitpid(pid, 0)
    return Exit(os.waitstatus_to_exitcode(status))


def _first_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def payload_pid(pid: int, sandboxed: bool) -> int | None:
    """The function's own process: the child started as `pid`, or in a sandbox the child of the
    sandbox's init (itself the child of `pid`); None until it is started, or once it is gone."""
    if not sandboxed:
        return pid
    init = _first_child(pid)
    return _first_child(init) if init is not None else None


def _high_water_mark(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PeakMemory:
    """Samples a running function's memory high-water mark, densely at first (most calls are short).
    In a sandbox, the function's process is found once it is started (the exec chain through setpriv
    and prlimit keeps its pid)."""

    def __init__(self, pid: int, sandboxed: bool = False) -> None:
        self.pid = pid
        self.sandboxed = sandboxed
        self.peak = 0
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        delay = 0.002
        payload = None
        while True:
            if payload is None:
                payload = payload_pid(self.pid, self.sandboxed)
            if payload is not None:
                self.peak = max(self.peak, _high_water_mark(payload))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def stop(self) -> int:
        """Stop sampling (before the pid is reaped and can be reused) and give the peak seen."""
        self._task.cancel()
        return self.peak


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the child's whole process group; it is gone already when that fails. For a sandbox,
    SIGKILL of its group ends the sandbox and with it every process inside."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def terminate(pid: int, sandboxed: bool) -> None:
    """Ask the function to stop (SIGTERM to its process group), leaving it time to clean up. In a
    sandbox that is the group of the sandbox's init (bwrap --new-session makes it the leader of
    a session of its own), which ignores the signal as a namespace's init does; the outer bwrap
    process would die of it at once, and the sandbox with it."""
    group = _first_child(pid) if sandboxed else pid
    if group is not None:
        kill_group(group, signal.SIGTERM)


async def settle(pending: asyncio.Future[Any], timeout: float | None) -> bool:
    """Wait at most `timeout` seconds for `pending`; cancel it when it does not finish in time.
    Whether it finished."""
    if not pending.done():
        await asyncio.wait({pending}, timeout=timeout)
    if pending.done():
        return True
    pending.cancel()
    await asyncio.wait({pending})
    if not pending.cancelled():
        pending.exception()  # a cancelled gather ends holding a CancelledError: taken, not logged
    return False


class PipeCollector(asyncio.Protocol):
    """Reads a child's pipe: keeps the first `cap` bytes (or, with `tail`, the last ones)."""

    def __init__(
        self,
        cap: int,
        tail: bool = False,
        on_overflow: Callable[[], None] | None = None,
        on_data: Callable[[bytes], None] | None = None,
    ) -> None:
        self.cap = cap
        self.tail = tail
        self.on_overflow = on_overflow
        self.on_data = on_data
        self.overflowed = False
        self.total = 0
        self._chunks = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        if self.tail:
            self._chunks += data
            if len(self._chunks) > 2 * self.cap:
                del self._chunks[: len(self._chunks) - self.cap]
            return
        if self.overflowed:
            return
        room = self.cap - len(self._chunks)
        self._chunks += data[:room]
        if self.on_data is not None:
            self.on_data(data[:room])
        if len(data) > room:
            self.overflowed = True
            if self.on_overflow is not None:
                self.on_overflow()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def data(self) -> bytes:
        return bytes(self._chunks[-self.cap :] if self.tail else self._chunks)


async def connect_pipe(protocol: P, pipe: IO[bytes], write: bool = False) -> tuple[asyncio.BaseTransport, P]:
    """`loop.connect_read_pipe` (or `connect_write_pipe`), with the pipe's descriptor closed once.

    asyncio's transport closes the file object it is given. uvloop's closes the descriptor itself,
    and the file object later closes the same number again, by then perhaps another descriptor of
    this process (MagicStack/uvloop#763; here it closed the input memfd of a concurrent call). So
    under uvloop the transport gets a duplicate, wrapped in a file object that leaves it alone, and
    the original is closed at once by its owner."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, uvloop.Loop):
        duplicate = os.dup(pipe.fileno())
        pipe.close()
        pipe = open(duplicate, "wb" if write else "rb", buffering=0, closefd=False)  # noqa: SIM115
    connect = loop.connect_write_pipe if write else loop.connect_read_pipe
    transport, _ = await connect(lambda: protocol, pipe)
    return transport, protocol


async def collect(pipe: IO[bytes], collector: PipeCollector) -> PipeCollector:
    transport, _ = await connect_pipe(collector, pipe)
    try:
        await collector.closed
    finally:
        transport.close()
    return collector
