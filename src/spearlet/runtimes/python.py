"""The `python` runtime: warm worker subprocesses that import the task's code once.

The artifact is a `.py` file, a package directory or a `.zip`; `metadata.entry` is `module:function`
(default: the file or directory name, function `handler`). A call with an empty `function_name` runs
the entry function, otherwise the module's function of that name. The worker program is
`python_worker.py`, which documents the protocol and how parameters reach the function.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from spearlet.core.codes import ErrorCode
from spearlet.core.errors import InvalidArgument
from spearlet.core.models import Status, Task
from spearlet.core.net import is_remote
from spearlet.core.values import tag_bytes, untag_bytes
from spearlet.runtimes.base import (
    Invocation,
    Limits,
    NodeLimits,
    Outcome,
    Runtime,
    StopRequest,
    in_callers_terms,
)
from spearlet.runtimes.bubblewrap import Sandbox, function_command, task_network
from spearlet.runtimes.pool import Instance, Pool, PoolSettings
from spearlet.runtimes.sandbox import (
    STOP_GRACE_S,
    FunctionUser,
    PeakMemory,
    PipeCollector,
    collect,
    connect_pipe,
    function_environment,
    kill_group,
    make_workdir,
    settle,
    spawn,
    wait_exit,
    world_runnable,
)

WORKER = Path(__file__).with_name("python_worker.py")
SYSTEM_PYTHON = "/usr/bin/python3"
_HEADER = struct.Struct(">I")
START_TIMEOUT_S = 60.0
log = logging.getLogger(__name__)


def check_zip(path: Path, location: str) -> None:
    """A zip must be one, and name no file outside itself (absolute or `..` paths)."""
    if not zipfile.is_zipfile(path):
        raise InvalidArgument(f"python artifact {location!r} is not a valid zip file")
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or ".." in parts:
                raise InvalidArgument(f"python artifact {location!r} has an unsafe entry {name!r}")


class WorkerGone(Exception):
    """The worker died or broke the protocol."""


class WorkerStartFailed(Exception):
    pass


def code_location(task: Task) -> tuple[str, str]:
    """(sys.path entry, `module:function`) of a python task."""
    path = Path(task.local_path)
    entry = task.settings.entry
    module, _, function = entry.rpartition(":") if ":" in entry else ("", "", entry)
    if path.is_dir():
        return str(path.parent), f"{module or path.name}:{function or 'handler'}"
    if path.suffix == ".zip":
        if not module:
            raise InvalidArgument(
                f"python task {task.task_id!r}: a .zip artifact needs metadata entry 'module:function'"
            )
        return str(path), f"{module}:{function or 'handler'}"
    if path.suffix == ".py":
        return str(path.parent), f"{module or path.stem}:{function or 'handler'}"
    raise InvalidArgument(f"python artifact {task.location!r} must be a .py file, a package directory or a .zip")


def output_bytes(value: Any) -> bytes:
    """A return value as output: bytes as they are, text as UTF-8, anything else as JSON."""
    value = untag_bytes(value)
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


class _Frames(asyncio.Protocol):
    """The worker's frames, cut out of its pipe as the data arrives: a reader waiting for the next
    one is woken once, with the whole frame. A frame announced larger than `limit` ends the reading."""

    def __init__(self) -> None:
        self.limit = 1 << 20
        self._buffer = bytearray()
        self._frames: deque[bytes] = deque()
        self._ended: WorkerGone | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.ReadTransport, transport)  # a read pipe's

    def data_received(self, data: bytes) -> None:
        if self._ended is not None:
            return
        buffer = self._buffer
        buffer += data
        complete = len(self._frames)
        while len(buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buffer)
            if length > self.limit:
                self._end(WorkerGone(f"OUTPUT_TOO_LARGE:{length}"))
                buffer.clear()
                return
            end = _HEADER.size + length
            if len(buffer) < end:
                break
            self._frames.append(bytes(buffer[_HEADER.size : end]))
            del buffer[:end]
        if len(self._frames) > complete:  # not for each piece of a long frame
            self._wake()

    def eof_received(self) -> bool:
        self._end(WorkerGone("the worker closed its pipe"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(WorkerGone(str(exc) if exc else "the worker closed its pipe"))

    async def next(self, limit: int) -> bytes:
        self.limit = limit
        while not self._frames:
            if self._ended is not None:
                raise self._ended
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = self._frames.popleft()
        if len(frame) > limit:
            raise WorkerGone(f"OUTPUT_TOO_LARGE:{len(frame)}")
        return frame

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _end(self, reason: WorkerGone) -> None:
        if self._ended is None:
            self._ended = reason
        if reason.args[0].startswith(ErrorCode.OUTPUT_TOO_LARGE):
            self.close()  # read no more of it; the worker is stopped next
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class PythonWorker(Instance):
    def __init__(self, instance_id: str, proc: subprocess.Popen[bytes], workdir: str, sandboxed: bool) -> None:
        super().__init__(instance_id)
        self.proc = proc
        self.pid = proc.pid
        self.workdir = workdir
        self.exited = asyncio.ensure_future(wait_exit(self.pid))
        self.memory = PeakMemory(self.pid, sandboxed)
        self.stderr = PipeCollector(16 << 10, tail=True)
        self._stderr_task = asyncio.ensure_future(collect(proc.stderr, self.stderr))  # type: ignore[arg-type]
        self._frames = _Frames()
        self._writer: asyncio.WriteTransport | None = None
        self.broken = False
        self.destroyed = ""  # why DestroyInstance stopped it

    @property
    def alive(self) -> bool:
        return not self.broken and not self.exited.done()

    async def connect(self) -> None:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        await connect_pipe(self._frames, self.proc.stdout)
        writer, _ = await connect_pipe(asyncio.Protocol(), self.proc.stdin, write=True)
        self._writer = cast(asyncio.WriteTransport, writer)

    def send(self, message: dict[str, Any]) -> None:
        assert self._writer is not None
        data = json.dumps(message, separators=(",", ":")).encode()
        self._writer.write(_HEADER.pack(len(data)) + data)

    async def receive(self, max_bytes: int) -> dict[str, Any]:
        try:
            message: dict[str, Any] = json.loads(await self._frames.next(max_bytes))
            return message
        except (WorkerGone, ValueError) as exc:
            self.broken = True
            raise WorkerGone(str(exc)) from exc

    def crash_report(self) -> str:
        code = self.exited.result().returncode if self.exited.done() else None
        tail = self.stderr.data.decode("utf-8", errors="replace").strip()
        return f"the instance died (exit {code}){': ' + tail[-2000:] if tail else ''}"

    def kill(self) -> None:
        """Kill at once (its pipe then closes, which ends a call in progress)."""
        self.broken = True
        kill_group(self.pid)

    def destroy(self, reason: str) -> None:
        """Kill it on request (DestroyInstance): its call in progress ends CANCELLED, not crashed."""
        self.destroyed = reason or "destroyed"
        self.kill()

    async def stop(self) -> None:
        self.kill()
        await asyncio.shield(self.exited)
        kill_group(self.pid)  # whatever it left in its group
        if self._writer is not None:
            self._writer.close()
        self._frames.close()
        # Outside a sandbox, a descendant that left the group may hold stderr open: not for long.
        await settle(self._stderr_task, STOP_GRACE_S)
        self.memory.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class PythonOptions:
    """What the python runtime takes of the node's settings."""

    # Where files functions use live (a copy of the worker, for a function user outside a sandbox).
    shared_dir: Path
    limits: NodeLimits
    # A task's max_instances when it sets none (the node's max_concurrency).
    max_instances: int = 16
    python_executable: str = ""
    network: str = "host"


class PythonRuntime(Runtime):
    name = "python"
    reports_instance = True
    owned_settings = frozenset(
        {
            "entry", "min_instances", "max_instances", "idle_timeout_s", "max_calls_per_instance", "strategy",
            "memory_limit_mb", "cpu_limit_s", "file_limit_mb", "max_processes", "network", "env",
        }
    )  # fmt: skip
    pool: Pool

    def __init__(
        self, options: PythonOptions, user: FunctionUser | None = None, sandbox: Sandbox | None = None
    ) -> None:
        self.options = options
        self.user = user
        self.shared_dir = options.shared_dir
        self.sandbox = sandbox
        self.pool = Pool(self._start, default_max=options.max_instances)
        self._reaper: asyncio.Task[None] | None = None
        self.interpreter, self.worker_script, self.program_files = self._worker_program()

    def _worker_program(self) -> tuple[str, str, list[str]]:
        """The interpreter, the worker script, and what of them a sandbox must show.

        In a sandbox: the node's interpreter (its real file: the worker needs only the standard
        library, not the node's virtual environment) and installation, and the script where it is,
        bound in even from directories closed to the function user. Outside one, as another user:
        the node's interpreter where that user can reach it, else /usr/bin/python3, and a copy of
        the script in the shared dir."""
        configured = self.options.python_executable
        interpreter = configured or sys.executable
        if self.sandbox is not None:
            real = os.path.realpath(interpreter)
            # Its installation (or venv): what it finds beside itself; and the node's base, its stdlib.
            shown = {str(Path(real).parent.parent), *([] if configured else [sys.base_prefix])}
            return real, str(WORKER), [*sorted(shown), str(WORKER)]
        if self.user is None:
            return interpreter, str(WORKER), []
        if not configured and not world_runnable(interpreter):
            interpreter = SYSTEM_PYTHON
        copy = self.shared_dir / "runtime" / WORKER.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.parent.chmod(0o755)
        if not copy.is_file() or copy.read_bytes() != WORKER.read_bytes():  # a full disk has room for none
            shutil.copyfile(WORKER, copy)
        copy.chmod(0o644)
        return interpreter, str(copy), []

    async def _start(self, task: Task, instance_id: str) -> Instance:
        path, entry = code_location(task)
        sandbox = self.sandbox
        if sandbox is None and self.user is not None and not world_runnable(self.interpreter):
            raise WorkerStartFailed(
                f"the function user {self.user.name!r} cannot run {self.interpreter}: set python_executable"
            )
        workdir = make_workdir("spearlet-py-", self.user)
        env = function_environment(workdir, {**task.settings.env, "SPEAR_TASK_ID": task.task_id})
        # One sandbox per worker, for its whole life: warm calls cost nothing more.
        argv = function_command(
            [self.interpreter, "-I", "-u", self.worker_script, path, entry],
            Limits.for_task(self.options.limits, task, timeout_ms=0),
            self.user,
            sandbox,
            workdir=workdir,
            expose=[*self.program_files, task.local_path],
            network=task_network(task, self.options.network, sandbox),
        )
        try:
            proc = spawn(argv, cwd=workdir, env=env, stdin=subprocess.PIPE)
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise WorkerStartFailed(f"cannot start a worker: {exc}") from exc
        worker = PythonWorker(instance_id, proc, workdir, sandbox is not None)
        try:
            await worker.connect()
            hello = await asyncio.wait_for(worker.receive(1 << 20), START_TIMEOUT_S)
        except (WorkerGone, TimeoutError) as exc:
            await worker.stop()
            if isinstance(exc, TimeoutError):
                raise WorkerStartFailed(f"the worker did not start within {START_TIMEOUT_S:g} s") from exc
            raise WorkerStartFailed(self._in_callers_terms(worker.crash_report(), task)) from exc
        if hello.get("type") != "ready":
            await worker.stop()
            log.warning("python task %s does not load:\n%s", task.task_id, hello.get("traceback", ""))
            raise WorkerStartFailed(load_message(hello, entry, is_remote(task.location)))
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self.pool.run_reaper())
        return worker

    async def prepare(self, task: Task) -> None:
        path = Path(task.local_path)
        if path.suffix == ".zip":
            check_zip(path, task.location)
        code_location(task)
        task_network(task, self.options.network, self.sandbox)
        PoolSettings.of(task, self.options.max_instances)
        await self.pool.forget(task.task_id)
        # Import the code now: a broken module is a registration error, not a failure per call.
        try:
            await self.pool.prewarm(task, at_least=1)
        except WorkerStartFailed as exc:
            await self.pool.forget(task.task_id)
            raise InvalidArgument(f"python task {task.task_id!r} does not load: {exc}") from exc

    async def warm(self, task: Task) -> None:
        await self.pool.prewarm(task)

    async def destroy_instance(self, instance_id: str, reason: str) -> bool:
        worker = self.pool.find(instance_id)
        if not isinstance(worker, PythonWorker):
            return False
        worker.destroy(reason)
        # The pool drops the dead worker (now, if it is idle; at its call's release if busy) and
        # starts a fresh one when a call needs it.
        self.pool.retire_if_idle(worker)
        await asyncio.wait({worker.exited}, timeout=5.0)
        return True

    async def forget(self, task_id: str) -> None:
        await self.pool.forget(task_id)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await self.pool.close()

    async def invoke(self, task: Task, invocation: Invocation, stop: StopRequest) -> Outcome:
        limits = invocation.limits
        try:
            worker = await self.pool.acquire(task, invocation.force_new_instance, invocation.execution_id)
        except WorkerStartFailed as exc:
            return Outcome(Status.FAILED, error_code=ErrorCode.INSTANCE_START_FAILED, error_message=str(exc))
        assert isinstance(worker, PythonWorker)
        if invocation.on_instance is not None:
            invocation.on_instance(worker.instance_id)
        started = time.monotonic()
        logs = LogTail(limits.log_bytes)
        # A call cannot be interrupted inside the worker: a timeout or a cancel kills the worker,
        # which ends the call, and the pool replaces it.
        interrupted = ""

        def interrupt(reason: str) -> None:
            nonlocal interrupted
            if not interrupted:
                interrupted = reason
                worker.kill()

        timer = (
            asyncio.get_running_loop().call_later(limits.timeout_ms / 1000, interrupt, "timeout")
            if limits.timeout_ms > 0
            else None
        )
        unregister = stop.on_request(lambda: interrupt("cancel"))
        try:
            outcome = await self._call(worker, invocation, logs)
        except BaseException:
            worker.kill()  # the node is shutting down: leave nothing behind
            raise
        finally:
            if timer is not None:
                timer.cancel()
            unregister()
            elapsed_ms = (time.monotonic() - started) * 1000
            self.pool.release(task, worker, elapsed_ms, healthy=worker.alive)
        if worker.destroyed and not interrupted:
            message = f"its instance {worker.instance_id} was destroyed: {worker.destroyed}"
            outcome = Outcome(Status.CANCELLED, error_code=ErrorCode.CANCELLED, error_message=message)
        elif interrupted == "cancel":
            reason = f": {stop.reason}" if stop.reason else ""
            outcome = Outcome(Status.CANCELLED, error_code=ErrorCode.CANCELLED, error_message=f"cancelled{reason}")
        elif interrupted == "timeout":
            message = f"the function did not finish within {limits.timeout_ms} ms"
            outcome = Outcome(Status.TIMEOUT, error_code=ErrorCode.TIMEOUT, error_message=message)
        outcome.execution_time_ms = round(elapsed_ms)
        outcome.memory_used_bytes = worker.memory.peak
        outcome.instance_id = worker.instance_id
        outcome.logs = self._in_callers_terms(logs.text(), task)
        outcome.error_message = self._in_callers_terms(outcome.error_message, task)
        if logs.dropped:
            outcome.metrics["log_truncated_bytes"] = str(logs.dropped)
        return outcome

    async def _call(self, worker: PythonWorker, invocation: Invocation, logs: LogTail) -> Outcome:
        limits = invocation.limits
        deadline = time.time() + limits.timeout_ms / 1000 if limits.timeout_ms > 0 else 0
        worker.send(
            {
                "id": invocation.execution_id,
                "function": invocation.function_name,
                "params": tag_bytes(invocation.params),
                "environment": invocation.environment,
                "deadline": deadline,
            }
        )
        try:
            while True:
                message = await worker.receive(limits.output_bytes + 4096)
                kind = message.get("type")
                if kind == "log":
                    logs.add(str(message.get("line", "")))
                elif kind == "chunk":
                    if invocation.on_output is not None:
                        invocation.on_output(output_bytes(message.get("value")))
                elif kind == "result":
                    output = output_bytes(message.get("value"))
                    if len(output) > limits.output_bytes:
                        return _too_large(limits)
                    return Outcome(Status.COMPLETED, output=output)
                elif kind == "error":
                    for line in str(message.get("traceback", "")).rstrip("\n").splitlines():
                        logs.add(line)
                    error_type = str(message.get("error_type", "Exception"))
                    code = ErrorCode.OUT_OF_MEMORY if error_type == "MemoryError" else ErrorCode.FUNCTION_ERROR
                    return Outcome(
                        Status.FAILED, error_code=code, error_message=f"{error_type}: {message.get('message', '')}"
                    )
                else:
                    raise WorkerGone(f"unexpected frame {kind!r}")
        except WorkerGone as exc:
            if str(exc).startswith(ErrorCode.OUTPUT_TOO_LARGE):
                await worker.stop()
                return _too_large(limits)
            await asyncio.wait({worker.exited}, timeout=1.0)
            return Outcome(Status.FAILED, error_code=ErrorCode.INSTANCE_CRASHED, error_message=worker.crash_report())

    def _in_callers_terms(self, text: str, task: Task) -> str:
        return in_callers_terms(text, task).replace(self.worker_script, "the worker")


def load_message(failure: dict[str, Any], entry: str, remote: bool) -> str:
    """Why a task's code does not import, from the worker's report: the kind of error and where,
    and its message unless the code was fetched from elsewhere (a message may quote the content,
    which the caller is not entitled to read back through errors)."""
    kind = str(failure.get("error_type", "error"))
    where = f" ({failure['where']})" if failure.get("where") else ""
    message = "" if remote else f": {failure.get('message', '')}"
    return f"cannot load {entry!r}: {kind}{message}{where}"


def _too_large(limits: Limits) -> Outcome:
    return Outcome(
        Status.FAILED,
        error_code=ErrorCode.OUTPUT_TOO_LARGE,
        error_message=f"the function returned more than {limits.output_bytes} bytes",
    )


class LogTail:
    """The last `limit` characters of a call's log lines, kept as they arrive: a function that
    prints gigabytes during one call costs the node this much, not what it printed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: deque[str] = deque()
        self.size = 0
        self.dropped = 0

    def add(self, line: str) -> None:
        if len(line) > self.limit:
            self.dropped += len(line) - self.limit
            line = line[-self.limit :]
        self.lines.append(line)
        self.size += len(line) + 1
        while self.size - 1 > self.limit:
            gone = self.lines.popleft()
            self.size -= len(gone) + 1
            self.dropped += len(gone) + 1

    def text(self) -> str:
        return "\n".join(self.lines)
