"""The `process` runtime: a new process per call.

Parameters arrive as one JSON object on stdin, stdout is the output, stderr the log, exit 0 success.
The function name is in `SPEAR_FUNCTION_NAME`, the execution id in `SPEAR_EXECUTION_ID`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import time
from typing import IO

from spearlet.core.codes import ErrorCode
from spearlet.core.errors import InvalidArgument
from spearlet.core.models import Status, Task
from spearlet.core.values import stdin_payload
from spearlet.runtimes.base import (
    Invocation,
    LineSplitter,
    Outcome,
    Runtime,
    StopRequest,
    in_callers_terms,
    log_tail,
)
from spearlet.runtimes.bubblewrap import Sandbox, function_command, task_network
from spearlet.runtimes.sandbox import (
    STOP_GRACE_S,
    FunctionUser,
    PeakMemory,
    PipeCollector,
    collect,
    function_environment,
    kill_group,
    make_workdir,
    settle,
    spawn,
    terminate,
    wait_exit,
)

# How prlimit (which execs the artifact) reports that it could not.
_EXEC_FAILED = re.compile(r"^prlimit: failed to execute .*: ([^:\n]+)$", re.MULTILINE)
_OOM_MARKERS = ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc")
_FORK_MARKERS = ("Resource temporarily unavailable", "fork: retry", "Cannot fork")


def failure_code(returncode: int, logs: str) -> tuple[str, str]:
    """The documented error code and a message for a process that did not exit 0."""
    if returncode in (126, 127) and (cause := _EXEC_FAILED.search(logs)):
        return ErrorCode.SPAWN_FAILED, f"the artifact could not be executed: {cause.group(1)}"
    if returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU:
            return ErrorCode.CPU_LIMIT_EXCEEDED, "the function used up its CPU time limit"
        if sig == signal.SIGXFSZ:
            return ErrorCode.FILE_SIZE_LIMIT_EXCEEDED, "the function wrote a file larger than its limit"
        return ErrorCode.KILLED_BY_SIGNAL, f"the function was killed by {name}"
    # A shell reports a child killed by a signal as 128 + the signal.
    if returncode == 128 + signal.SIGXFSZ or "File size limit exceeded" in logs:
        return ErrorCode.FILE_SIZE_LIMIT_EXCEEDED, "the function wrote a file larger than its limit"
    if returncode == 128 + signal.SIGXCPU or "CPU time limit exceeded" in logs:
        return ErrorCode.CPU_LIMIT_EXCEEDED, "the function used up its CPU time limit"
    if any(marker in logs for marker in _OOM_MARKERS):
        return ErrorCode.OUT_OF_MEMORY, f"the function ran out of memory (exit code {returncode})"
    if any(marker in logs for marker in _FORK_MARKERS):
        return ErrorCode.PROCESS_LIMIT_EXCEEDED, f"the function hit its process limit (exit code {returncode})"
    return ErrorCode.NONZERO_EXIT, f"the function exited with code {returncode}"


def signal_exit(returncode: int) -> int:
    """A sandbox's exit code as the function's: the sandbox's init exits with 128 + N when the
    function died of signal N, reported as -N like a direct child's."""
    return -(returncode - 128) if 128 < returncode <= 128 + signal.SIGRTMAX else returncode


class ProcessRuntime(Runtime):
    name = "process"
    owned_settings = frozenset({"memory_limit_mb", "cpu_limit_s", "file_limit_mb", "max_processes", "network", "env"})

    def __init__(self, user: FunctionUser | None = None, sandbox: Sandbox | None = None, network: str = "host") -> None:
        self.user = user
        self.sandbox = sandbox
        self.network = network

    async def prepare(self, task: Task) -> None:
        path = task.local_path
        if not os.path.isfile(path):
            raise InvalidArgument(f"process artifact {task.location!r} is not a file")
        if not os.access(path, os.X_OK):
            raise InvalidArgument(f"process artifact {task.location!r} is not executable (chmod +x it)")
        task_network(task, self.network, self.sandbox)

    def command(self, task: Task, workdir: str, invocation: Invocation) -> list[str]:
        """The function's command line: limited, and inside the sandbox when there is one."""
        return function_command(
            [task.local_path],
            invocation.limits,
            self.user,
            self.sandbox,
            workdir=workdir,
            expose=[task.local_path],
            network=task_network(task, self.network, self.sandbox),
        )

    async def invoke(self, task: Task, invocation: Invocation, stop: StopRequest) -> Outcome:
        workdir = make_workdir("spearlet-", self.user)
        stdin_fd = os.memfd_create("spearlet-stdin")
        try:
            os.write(stdin_fd, stdin_payload(invocation.params))
            os.lseek(stdin_fd, 0, os.SEEK_SET)
            env = function_environment(
                workdir,
                {
                    **task.settings.env,
                    **invocation.environment,
                    "SPEAR_EXECUTION_ID": invocation.execution_id,
                    "SPEAR_FUNCTION_NAME": invocation.function_name,
                    "SPEAR_TASK_ID": task.task_id,
                },
            )
            started = time.monotonic()
            try:
                proc = spawn(self.command(task, workdir, invocation), cwd=workdir, env=env, stdin=stdin_fd)
            except OSError as exc:
                return Outcome(
                    Status.FAILED, error_code=ErrorCode.SPAWN_FAILED, error_message=f"cannot start: {exc.strerror}"
                )
            finally:
                os.close(stdin_fd)
                stdin_fd = -1
            assert proc.stdout is not None and proc.stderr is not None
            outcome = await self._supervise(proc.pid, proc.stdout, proc.stderr, invocation, stop, started)
            outcome.error_message = in_callers_terms(outcome.error_message, task)
            outcome.logs = in_callers_terms(outcome.logs, task)
            return outcome
        finally:
            if stdin_fd >= 0:
                os.close(stdin_fd)
            shutil.rmtree(workdir, ignore_errors=True)

    async def _supervise(
        self, pid: int, stdout: IO[bytes], stderr: IO[bytes], invocation: Invocation, stop: StopRequest,
        started: float,
    ) -> Outcome:  # fmt: skip
        limits = invocation.limits
        sandboxed = self.sandbox is not None
        lines = LineSplitter(invocation.on_output) if invocation.on_output else None
        out = PipeCollector(
            limits.output_bytes, on_overflow=lambda: kill_group(pid), on_data=lines.feed if lines else None
        )
        err = PipeCollector(limits.log_bytes, tail=True)
        readers = asyncio.gather(collect(stdout, out), collect(stderr, err))
        memory = PeakMemory(pid, sandboxed)
        exited = asyncio.ensure_future(wait_exit(pid, before_reap=memory.stop))
        stopped = asyncio.ensure_future(stop.wait())
        timeout = limits.timeout_ms / 1000 if limits.timeout_ms > 0 else None
        status, code, message = Status.COMPLETED, "", ""
        try:
            done, _ = await asyncio.wait({exited, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if exited not in done:
                if stopped in done:
                    status, code = Status.CANCELLED, ErrorCode.CANCELLED
                    message = f"cancelled{': ' + stop.reason if stop.reason else ''}"
                    if not stop.force:
                        terminate(pid, sandboxed)
                        await asyncio.wait({exited}, timeout=STOP_GRACE_S)
                else:
                    status, code = Status.TIMEOUT, ErrorCode.TIMEOUT
                    message = f"the function did not finish within {limits.timeout_ms} ms"
                kill_group(pid)
            result = await exited
            # Descendants left in the group would keep the pipes open and outlive the call (in a
            # sandbox they died with it). One that left the group, outside a sandbox, may hold them
            # still: the output is waited for until the deadline, no longer.
            kill_group(pid)
            if status is Status.COMPLETED:
                left = None if timeout is None else max(0.0, started + timeout - time.monotonic())
            else:
                left = STOP_GRACE_S
            if not await settle(readers, left) and status is Status.COMPLETED:
                status, code = Status.TIMEOUT, ErrorCode.TIMEOUT
                message = f"the function's output was still open after {limits.timeout_ms} ms"
        finally:
            stopped.cancel()
            if not exited.done():  # we are being cancelled ourselves: leave nothing behind
                kill_group(pid)
                await asyncio.shield(exited)
            kill_group(pid)
            await settle(readers, 0)
            if lines is not None:
                lines.flush()
        elapsed_ms = int((time.monotonic() - started) * 1000)
        logs = err.data.decode("utf-8", errors="replace")
        if status is Status.COMPLETED and out.overflowed:
            status, code = Status.FAILED, ErrorCode.OUTPUT_TOO_LARGE
            message = f"the function wrote more than {limits.output_bytes} bytes to stdout"
        elif status is Status.COMPLETED and result.returncode != 0:
            status = Status.FAILED
            code, message = failure_code(signal_exit(result.returncode) if sandboxed else result.returncode, logs)
            tail = log_tail(logs)
            if tail:
                message = f"{message}: {tail}"
        metrics = {"log_truncated_bytes": str(err.total - limits.log_bytes)} if err.total > limits.log_bytes else {}
        return Outcome(
            status,
            metrics=metrics,
            output=out.data if status is Status.COMPLETED else b"",
            error_code=code,
            error_message=message,
            logs=logs,
            execution_time_ms=elapsed_ms,
            memory_used_bytes=memory.peak,
        )
