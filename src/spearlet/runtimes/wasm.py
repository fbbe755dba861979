"""The `wasm` runtime: WASI (preview 1) modules on wasmtime, compiled once, a fresh store per call.

Input is the parameters' JSON on stdin, stdout is the output, stderr the log, as for `process`.
`function_name` empty (or `__spear_default_entry__`) runs `_start`, falling back to `main`;
otherwise the named export, called without arguments.

Stopping guest code: every store has an epoch deadline one tick ahead; a ticker thread advances the
engine's epoch every TICK_S, and at each tick wasmtime calls our deadline callback, which lets the
guest go on, or traps it once its call is past its deadline, cancelled, or over its output limit.
So even a tight loop that never calls the host stops within a tick or two.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime
from wasmtime import _bindings as ffi
from wasmtime._instance import InstanceExports

from spearlet.core.codes import ErrorCode
from spearlet.core.errors import InvalidArgument
from spearlet.core.models import Status, Task
from spearlet.core.net import is_remote
from spearlet.core.values import stdin_payload
from spearlet.runtimes.base import (
    Invocation,
    Limits,
    LineSplitter,
    Outcome,
    Runtime,
    StopRequest,
    log_tail,
)
from spearlet.runtimes.sandbox import SYSTEM_PATH, PipeCollector, collect, kill_group, limited_argv, spawn, wait_exit
from spearlet.runtimes.wasm_memory import MemoryBudget, allocate_memories_here, instantiating

TICK_S = 0.01
# Modules up to this size compile in the node: a child process costs ~100 ms to start, and these
# take a few milliseconds and megabytes (compiling needs roughly 15-100 bytes per byte of code).
IN_PROCESS_COMPILE_BYTES = 64 << 10
COMPILER = Path(__file__).with_name("wasm_compile.py")
INVALID = 3  # wasm_compile.py's exit code for a module that does not compile
DEFAULT_ENTRY = "__spear_default_entry__"
DEFAULT_MEMORY_MB = 256
log = logging.getLogger(__name__)

_DeadlineCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ctypes.c_uint8),
)
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_NO_FINALIZER = _Finalizer(lambda _: None)
_UPDATE_DEADLINE_CONTINUE = 0


@dataclass
class _Call:
    """What the deadline callback consults: written by the loop, read on the call's thread."""

    deadline: float  # time.monotonic(); 0 means none
    output_cap: int
    memory: MemoryBudget
    stop_reason: str = ""  # "cancelled", "timeout", "output"
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    log_cap: int = 65536
    lines: LineSplitter | None = None  # fed on the call's thread

    def write_stdout(self, data: bytes) -> None:
        room = self.output_cap - len(self.stdout)
        self.stdout += data[: max(0, room)]
        if self.lines is not None:
            self.lines.feed(data[: max(0, room)])
        if len(data) > room and not self.stop_reason:
            self.stop_reason = "output"

    def write_stderr(self, data: bytes) -> None:
        self.stderr += data
        if len(self.stderr) > 2 * self.log_cap:
            del self.stderr[: len(self.stderr) - self.log_cap]


def engine_config() -> wasmtime.Config:
    """The engine's configuration (with the memories of runtimes.wasm_memory, which turn off
    copy-on-write memory images); wasm_compile.py sets the same, or its output would not load."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    return config


def describe_error(text: str, remote: bool) -> str:
    """wasmtime's message about a module, without the source lines it quotes (WAT errors show the
    offending line): only where it failed for an artifact fetched from elsewhere, whose content the
    caller may not be entitled to read back."""
    lines = [line.strip() for line in text.strip().splitlines()]
    position = next((m.group(1) for line in lines if (m := _POSITION.match(line))), "")
    where = f" (line {position.replace(':', ', column ', 1)})" if position else ""
    if remote:
        return f"is not a valid module (WebAssembly binary or WAT text){where}"
    kept = [ln for ln in lines if ln and ln != "Caused by:" and not _SNIPPET.match(ln) and not _POSITION.match(ln)]
    return f"is not a valid module: {': '.join(kept) or 'invalid'}{where}"


_POSITION = re.compile(r"^-->\s*\S*?:(\d+:\d+)$")
_SNIPPET = re.compile(r"^(\d+\s*)?\|")


def _compile_here(engine: wasmtime.Engine, source: str, target: Path, remote: bool) -> None:
    with open(source, "rb") as f:
        code = f.read()
    try:
        module = wasmtime.Module(engine, code)  # from bytes: no path of the node in its errors
    except wasmtime.WasmtimeError as exc:
        raise InvalidArgument(describe_error(str(exc), remote)) from None
    with target.open("xb") as out:
        out.write(module.serialize())


async def compile_in_child(source: str, target: Path, memory_mb: int, timeout_s: float, remote: bool) -> None:
    """Run wasm_compile.py on `source` under the limits; InvalidArgument saying why it failed."""
    limits = Limits(
        timeout_ms=0, memory_bytes=memory_mb << 20, cpu_seconds=math.ceil(timeout_s), output_bytes=0,
        log_bytes=0, file_bytes=0, open_files=64,
    )  # fmt: skip
    argv = limited_argv([sys.executable, "-I", str(COMPILER), source, str(target)], limits)
    proc = spawn(argv, cwd="/", env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = PipeCollector(8192), PipeCollector(8192, tail=True)
    readers = asyncio.gather(collect(proc.stdout, out), collect(proc.stderr, err))
    exited = asyncio.ensure_future(wait_exit(proc.pid))
    try:
        done, _ = await asyncio.wait({exited}, timeout=timeout_s)
        if not done:
            kill_group(proc.pid)
    finally:
        if not exited.done():
            kill_group(proc.pid)
        code = (await asyncio.shield(exited)).returncode
        kill_group(proc.pid)
        await readers
    if code == 0:
        return
    if code == INVALID:
        raise InvalidArgument(describe_error(out.data.decode("utf-8", errors="replace"), remote))
    log.warning("compiling a wasm module failed (exit %d): %s", code, err.data.decode("utf-8", errors="replace"))
    if not done or code in (-signal.SIGKILL, -signal.SIGXCPU):
        raise InvalidArgument(f"did not compile within {timeout_s:g} s (wasm_compile_timeout_s)")
    raise InvalidArgument(f"needs more than {memory_mb} MB to compile (wasm_compile_memory_mb), or its compiler failed")


@dataclass(frozen=True, slots=True)
class WasmOptions:
    """What the wasm runtime takes of the node's settings."""

    # Compiled modules kept across restarts (data_dir/wasm-cache).
    cache_dir: Path
    # Calls at once (the node's max_concurrency): the threads they run on.
    threads: int = 16
    compile_memory_mb: int = 1024
    compile_timeout_s: float = 60.0


class WasmRuntime(Runtime):
    name = "wasm"
    owned_settings = frozenset({"entry", "memory_limit_mb", "env"})

    def __init__(self, options: WasmOptions) -> None:
        self.options = options
        config = engine_config()
        allocate_memories_here(config)  # to tell a refused memory.grow from other traps
        self.engine = wasmtime.Engine(config)
        self.cache_dir = options.cache_dir
        self._modules: dict[str, wasmtime.Module] = {}
        # Compiling takes memory in proportion to the code (hundreds of MB for a few MB of it):
        # one at a time, each bounded (compile()).
        self._compiling = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="spearlet-wasm")
        self._ticker_stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # Modules

    def _cache_path(self, digest: str) -> Path:
        return self.cache_dir / f"{digest}.cwasm"

    async def _load(self, task: Task) -> wasmtime.Module:
        """The task's compiled module: from memory, from the on-disk cache, or compiled now."""
        digest = task.digest
        module = self._modules.get(digest)
        if module is not None:
            return module
        loop = asyncio.get_running_loop()
        async with self._compiling:
            module = self._modules.get(digest)  # compiled while we waited
            if module is not None:
                return module
            cached = self._cache_path(digest)
            if cached.is_file():
                module = await loop.run_in_executor(self._executor, self._deserialize, cached)
            if module is None:
                self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                await self._compile(task, cached)
                module = await loop.run_in_executor(self._executor, self._deserialize, cached)
                if module is None:
                    raise InvalidArgument("could not be loaded once compiled (the node's log says why)")
        self._modules[digest] = module
        return module

    def _deserialize(self, path: Path) -> wasmtime.Module | None:
        try:
            return wasmtime.Module.deserialize_file(self.engine, str(path))
        except wasmtime.WasmtimeError:
            log.warning("compiled module %s does not load (another wasmtime?): compiling afresh", path.name)
            path.unlink(missing_ok=True)
            return None

    async def _compile(self, task: Task, target: Path) -> None:
        """Compile the task's module into `target`: small ones here (a few milliseconds and
        megabytes), others in a child process under `wasm_compile_memory_mb` and
        `wasm_compile_timeout_s`, whose failure costs the node nothing."""
        o = self.options
        remote = is_remote(task.location)
        tmp = target.with_suffix(f".{os.getpid()}.{id(task)}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            if os.path.getsize(task.local_path) <= IN_PROCESS_COMPILE_BYTES:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._executor, _compile_here, self.engine, task.local_path, tmp, remote)
            else:
                await compile_in_child(task.local_path, tmp, o.compile_memory_mb, o.compile_timeout_s, remote)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)

    async def prepare(self, task: Task) -> None:
        if not task.digest:
            raise InvalidArgument(f"wasm artifact {task.location!r} must be a file")
        try:
            module = await self._load(task)
        except InvalidArgument as exc:
            raise InvalidArgument(f"wasm artifact {task.location[:200]!r} {exc}") from None
        exports = {e.name for e in module.exports}
        entry = task.settings.entry
        if entry and entry not in exports:
            raise InvalidArgument(f"wasm module has no export {entry!r}: it exports {sorted(exports)}")

    async def warm(self, task: Task) -> None:
        await self.prepare(task)

    async def keep_only(self, digests: set[str]) -> None:
        """Drop compiled modules, in memory and on disk, of code no task uses any more."""
        for digest in [d for d in self._modules if d not in digests]:
            del self._modules[digest]
        if self.cache_dir.is_dir():
            for path in self.cache_dir.glob("*.cwasm"):
                if path.stem not in digests:
                    path.unlink(missing_ok=True)

    async def close(self) -> None:
        self._ticker_stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _ensure_ticker(self) -> None:
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="spearlet-wasm-epoch", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._ticker_stop.wait(TICK_S):
            self.engine.increment_epoch()

    # Calls

    async def invoke(self, task: Task, invocation: Invocation, stop: StopRequest) -> Outcome:
        limits = invocation.limits
        loop = asyncio.get_running_loop()
        try:
            module = await self._load(task)
        except InvalidArgument as exc:
            return Outcome(Status.FAILED, error_code=ErrorCode.ARTIFACT_UNAVAILABLE, error_message=f"the module {exc}")
        self._ensure_ticker()
        timeout_s = limits.timeout_ms / 1000 if limits.timeout_ms > 0 else 0.0
        memory_mb = task.settings.memory_limit_mb
        call = _Call(
            deadline=time.monotonic() + timeout_s if timeout_s else 0.0,
            output_cap=limits.output_bytes,
            memory=MemoryBudget((DEFAULT_MEMORY_MB if memory_mb is None else memory_mb) << 20),
            log_cap=limits.log_bytes,
        )
        if invocation.on_output is not None:
            emit = invocation.on_output

            def emit_on_loop(line: bytes) -> None:
                loop.call_soon_threadsafe(emit, line)

            call.lines = LineSplitter(emit_on_loop)
        env = {**task.settings.env, **invocation.environment, "SPEAR_EXECUTION_ID": invocation.execution_id}
        entry = invocation.function_name or task.settings.entry or DEFAULT_ENTRY
        payload = stdin_payload(invocation.params)
        run: asyncio.Future[Outcome] = loop.run_in_executor(
            self._executor, _run_module, self.engine, module, entry, payload, env, call
        )
        stopped: asyncio.Future[None] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([run, stopped], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
            if not run.done():
                call.stop_reason = call.stop_reason or "cancelled"  # trapped at the next tick
            outcome = await run
            if call.lines is not None:
                # Here on the loop, after the lines the call's thread handed over: publish the
                # rest now, before the execution can be reported finished.
                call.lines.flush(invocation.on_output)
        except asyncio.CancelledError:
            call.stop_reason = "cancelled"
            raise
        finally:
            stopped.cancel()
        if outcome.status is Status.CANCELLED:
            outcome.error_message = f"cancelled{': ' + stop.reason if stop.reason else ''}"
        outcome.logs = call.stderr[-limits.log_bytes :].decode("utf-8", errors="replace")
        if outcome.status is Status.FAILED and outcome.error_code in (ErrorCode.NONZERO_EXIT, ErrorCode.TRAP):
            tail = log_tail(outcome.logs)
            if tail:
                outcome.error_message = f"{outcome.error_message}: {tail}"
        return outcome


def _run_module(
    engine: wasmtime.Engine,
    module: wasmtime.Module,
    entry: str,
    payload: bytes,
    env: dict[str, str],
    call: _Call,
) -> Outcome:
    """One call on a worker thread: a fresh store, WASI wired to our buffers, the entry run."""
    started = time.monotonic()
    store = wasmtime.Store(engine)
    stdin_fd = os.memfd_create("spearlet-wasm-stdin")
    try:
        os.write(stdin_fd, payload)
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["main"]
        wasi.env = list(env.items())
        wasi.stdin_file = f"/proc/self/fd/{stdin_fd}"
        wasi.stdout_custom = call.write_stdout
        wasi.stderr_custom = call.write_stderr
        store.set_wasi(wasi)
        callback = _DeadlineCallback(_deadline_check(call))
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), callback, None, _NO_FINALIZER)
        store.set_epoch_deadline(1)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        instantiating(call.memory)  # its memories are allocated within the call's budget
        try:
            outcome = _execute(store, linker, module, entry, call)
        finally:
            instantiating(None)
    finally:
        os.close(stdin_fd)
        store.close()  # a store with custom stdout holds references until closed
    outcome.execution_time_ms = round((time.monotonic() - started) * 1000)
    return outcome


def _deadline_check(call: _Call) -> Callable[..., int]:
    def check(context: object, data: object, delta: ctypes.Array[ctypes.c_uint64], kind: object) -> int:
        if not call.stop_reason and call.deadline and time.monotonic() >= call.deadline:
            call.stop_reason = "timeout"
        if call.stop_reason:
            error = ffi.wasmtime_error_new(ctypes.create_string_buffer(f"spearlet: {call.stop_reason}".encode()))
            return ctypes.cast(error, ctypes.c_void_p).value or 0
        delta[0] = 1
        kind[0] = _UPDATE_DEADLINE_CONTINUE  # type: ignore[index]
        return 0

    return check


def _execute(
    store: wasmtime.Store, linker: wasmtime.Linker, module: wasmtime.Module, entry: str, call: _Call
) -> Outcome:
    try:
        instance = linker.instantiate(store, module)
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        return Outcome(Status.FAILED, error_code=ErrorCode.INSTANTIATION_FAILED, error_message=str(exc).splitlines()[0])
    exports = instance.exports(store)
    if entry == DEFAULT_ENTRY:
        names = [n for n in ("_start", "main") if n in exports]
        if not names:
            return Outcome(
                Status.FAILED, error_code=ErrorCode.NO_ENTRY, error_message="the module exports neither _start nor main"
            )
        entry = names[0]
    function = exports.get(entry) if entry in exports else None
    if not isinstance(function, wasmtime.Func):
        return Outcome(
            Status.FAILED, error_code=ErrorCode.NO_ENTRY, error_message=f"the module has no exported function {entry!r}"
        )
    arity = len(function.type(store).params)
    if arity:
        return Outcome(
            Status.FAILED,
            error_code=ErrorCode.NO_ENTRY,
            error_message=f"export {entry!r} takes {arity} parameters; spearlet calls exports without arguments "
            "(the input is on stdin)",
        )
    returned: object = None
    outcome: Outcome | None = None
    try:
        returned = function(store)
    except wasmtime.ExitTrap as exc:
        if exc.code != 0:
            outcome = Outcome(
                Status.FAILED,
                error_code=ErrorCode.NONZERO_EXIT,
                error_message=f"the module exited with code {exc.code}",
            )
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        lines = str(exc).strip().splitlines()
        outcome = _stopped(call) if call.stop_reason else _trapped(call, lines[-1].strip() if lines else "trap")
    if outcome is None and call.stop_reason == "output":
        outcome = _stopped(call)
    if outcome is None:
        output = bytes(call.stdout)
        if not output and returned is not None:
            output = json.dumps(returned).encode()
        outcome = Outcome(Status.COMPLETED, output=output)
    outcome.memory_used_bytes = _linear_memory(store, exports)
    return outcome


def _linear_memory(store: wasmtime.Store, exports: InstanceExports) -> int:
    """Bytes of the module's exported linear memories: they only grow, so this is their peak."""
    return sum(m.data_len(store) for m in exports.values() if isinstance(m, wasmtime.Memory))


def _trapped(call: _Call, cause: str) -> Outcome:
    # A refused grow makes the guest fail its own way (a Rust or C program aborts: `unreachable`).
    if call.memory.refused:
        limit = f"{call.memory.cap / (1 << 20):g} MiB"
        return Outcome(
            Status.FAILED,
            error_code=ErrorCode.OUT_OF_MEMORY,
            error_message=f"the module trapped after its memory limit ({limit}) refused a memory.grow: {cause}",
        )
    return Outcome(Status.FAILED, error_code=ErrorCode.TRAP, error_message=f"the module trapped: {cause}")


def _stopped(call: _Call) -> Outcome:
    if call.stop_reason == "timeout":
        return Outcome(
            Status.TIMEOUT, error_code=ErrorCode.TIMEOUT, error_message="the module did not finish within its timeout"
        )
    if call.stop_reason == "output":
        return Outcome(
            Status.FAILED,
            error_code=ErrorCode.OUTPUT_TOO_LARGE,
            error_message=f"the module wrote more than {call.output_cap} bytes to stdout",
        )
    return Outcome(Status.CANCELLED, error_code=ErrorCode.CANCELLED, error_message="cancelled")
