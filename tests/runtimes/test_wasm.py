"""The `wasm` runtime on real wasmtime: I/O, entries, exits, interruption, memory, output, caching."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from pathlib import Path

import psutil
import pytest

from spearlet.core.errors import InvalidArgument
from spearlet.core.models import Status, Task
from spearlet.runtimes.base import Invocation, Limits, StopRequest
from spearlet.runtimes.wasm import WasmOptions, WasmRuntime

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "spearlet" / "examples" / "wasm"

WASI = '(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))'
EXIT = '(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'
MODULES = {
    "loop": f'(module {EXIT} (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))',
    "exit3": f'(module {EXIT} (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 3))))',
    "exit0": f'(module {EXIT} (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 0))))',
    "main_only": f"""(module {WASI} (memory (export "memory") 1) (data (i32.const 64) "from main")
        (func (export "main") (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 9))
          (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))""",
    # Grows its memory a page at a time; a refused grow (-1) ends in `unreachable`.
    "grow": """(module (memory (export "memory") 1)
        (func (export "_start") (loop $more
          (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
          (br $more))))""",
    # Grows 100 pages (6.25 MiB) at a time, as an allocator asks for a large block; a refused grow
    # ends in `unreachable` (how Rust and C programs abort on an allocation failure).
    "grow_big": """(module (memory (export "memory") 1)
        (func (export "_start") (loop $more
          (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))
          (br $more))))""",
    # A refused grow handled by the program itself: it exits with code 12 (ENOMEM).
    "grow_handled": f"""(module {EXIT} (memory (export "memory") 1)
        (func (export "_start") (loop $more
          (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1)) (then (call $exit (i32.const 12))))
          (br $more))))""",
    # Writes 64 KiB to stdout forever.
    "flood": f"""(module {WASI} (memory (export "memory") 2)
        (func (export "_start") (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 65536))
          (loop $more (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $more))))""",
    "trap": '(module (memory (export "memory") 1) (func (export "_start") unreachable))',
    "takes_args": '(module (memory (export "memory") 1) (func (export "_start")) (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))',
}


def make_task(tmp_path: Path, name: str, text: str | None = None, **metadata: str) -> Task:
    path = EXAMPLES / f"{name}.wat" if text is None else tmp_path / f"{name}.wat"
    if text is not None:
        path.write_text(text)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Task(
        task_id=name,
        name=name,
        artifact_type="wasm",
        location=str(path),
        local_path=str(path),
        digest=digest,
        metadata=metadata,
    )


def limits(timeout_ms: int = 10_000, output_bytes: int = 1 << 20) -> Limits:
    return Limits(
        timeout_ms=timeout_ms,
        memory_bytes=0,
        cpu_seconds=0,
        output_bytes=output_bytes,
        log_bytes=65536,
        file_bytes=0,
        open_files=0,
    )


def invocation(function: str = "", params: dict[str, object] | None = None, **kw: int) -> Invocation:
    return Invocation("exec-1", function, params or {}, {}, limits(**kw))


@pytest.fixture
async def runtime(tmp_path: Path):  # type: ignore[no-untyped-def]
    rt = WasmRuntime(WasmOptions(cache_dir=tmp_path / "data" / "wasm-cache"))
    yield rt
    await rt.close()


async def test_stdin_json_in_stdout_out_and_stderr_as_log(runtime: WasmRuntime, tmp_path: Path) -> None:
    task = make_task(tmp_path, "echo")
    await runtime.prepare(task)
    outcome = await runtime.invoke(task, invocation(params={"a": 1, "b": b"\x01"}), StopRequest())
    assert outcome.status is Status.COMPLETED
    assert outcome.output == b'{"a":1,"b":"AQ=="}'
    assert outcome.logs == "echo: copied stdin to stdout\n"
    assert outcome.memory_used_bytes == 65536


async def test_default_entry_is_start_then_main_and_named_exports_run(runtime: WasmRuntime, tmp_path: Path) -> None:
    hello = make_task(tmp_path, "hello")
    assert (await runtime.invoke(hello, invocation(), StopRequest())).output == b'{"hello": "wasm"}'
    assert (
        await runtime.invoke(hello, invocation("__spear_default_entry__"), StopRequest())
    ).output == b'{"hello": "wasm"}'
    assert (await runtime.invoke(hello, invocation("answer"), StopRequest())).output == b"42"
    main_only = make_task(tmp_path, "main_only", MODULES["main_only"])
    assert (await runtime.invoke(main_only, invocation(), StopRequest())).output == b"from main"
    missing = await runtime.invoke(hello, invocation("nope"), StopRequest())
    assert missing.status is Status.FAILED and missing.error_code == "NO_ENTRY"
    args = await runtime.invoke(
        make_task(tmp_path, "takes_args", MODULES["takes_args"]), invocation("add"), StopRequest()
    )
    assert args.error_code == "NO_ENTRY" and "2 parameters" in args.error_message


async def test_exit_codes(runtime: WasmRuntime, tmp_path: Path) -> None:
    failed = await runtime.invoke(make_task(tmp_path, "exit3", MODULES["exit3"]), invocation(), StopRequest())
    assert failed.status is Status.FAILED and failed.error_code == "NONZERO_EXIT" and "code 3" in failed.error_message
    ok = await runtime.invoke(make_task(tmp_path, "exit0", MODULES["exit0"]), invocation(), StopRequest())
    assert ok.status is Status.COMPLETED
    trap = await runtime.invoke(make_task(tmp_path, "trap", MODULES["trap"]), invocation(), StopRequest())
    assert trap.status is Status.FAILED and trap.error_code == "TRAP"


async def test_timeout_interrupts_a_tight_loop_within_100_ms(runtime: WasmRuntime, tmp_path: Path) -> None:
    task = make_task(tmp_path, "loop", MODULES["loop"])
    await runtime.prepare(task)
    started = time.monotonic()
    outcome = await runtime.invoke(task, invocation(timeout_ms=300), StopRequest())
    elapsed = time.monotonic() - started
    assert outcome.status is Status.TIMEOUT and outcome.error_code == "TIMEOUT"
    assert 0.3 <= elapsed < 0.4
    # The worker thread is free again: a next call runs normally.
    echo = make_task(tmp_path, "echo")
    assert (await runtime.invoke(echo, invocation(), StopRequest())).status is Status.COMPLETED


async def test_cancel_interrupts_a_tight_loop(runtime: WasmRuntime, tmp_path: Path) -> None:
    task = make_task(tmp_path, "loop", MODULES["loop"])
    stop = StopRequest()
    call = asyncio.ensure_future(runtime.invoke(task, invocation(timeout_ms=60_000), stop))
    await asyncio.sleep(0.2)
    assert not call.done()
    stop.request(force=False, reason="user")
    started = time.monotonic()
    outcome = await call
    assert time.monotonic() - started < 0.1
    assert outcome.status is Status.CANCELLED and "user" in outcome.error_message


async def test_calls_run_off_the_event_loop_and_at_once(runtime: WasmRuntime, tmp_path: Path) -> None:
    spinning = asyncio.ensure_future(
        runtime.invoke(make_task(tmp_path, "loop", MODULES["loop"]), invocation(timeout_ms=2000), StopRequest())
    )
    await asyncio.sleep(0.05)
    started = time.monotonic()
    echo = await runtime.invoke(make_task(tmp_path, "echo"), invocation(), StopRequest())
    assert echo.status is Status.COMPLETED and time.monotonic() - started < 0.5
    assert not spinning.done()
    assert (await spinning).status is Status.TIMEOUT


async def test_memory_cap_gives_out_of_memory(runtime: WasmRuntime, tmp_path: Path) -> None:
    task = make_task(tmp_path, "grow", MODULES["grow"], memory_limit_mb="16")
    outcome = await runtime.invoke(task, invocation(), StopRequest())
    assert outcome.status is Status.FAILED and outcome.error_code == "OUT_OF_MEMORY"
    assert 15 << 20 <= outcome.memory_used_bytes <= 16 << 20


async def test_a_trap_after_a_refused_large_grow_is_out_of_memory_with_the_trap_in_the_message(
    runtime: WasmRuntime, tmp_path: Path
) -> None:
    task = make_task(tmp_path, "grow_big", MODULES["grow_big"], memory_limit_mb="16")
    outcome = await runtime.invoke(task, invocation(), StopRequest())
    assert outcome.status is Status.FAILED and outcome.error_code == "OUT_OF_MEMORY", outcome.error_message
    assert "16 MiB" in outcome.error_message and "unreachable" in outcome.error_message
    assert outcome.memory_used_bytes == 201 * 65536  # far from the cap: the refused grow is what tells
    # Without a refusal, a trap is a trap; a refusal the program handles is its own exit.
    trap = await runtime.invoke(make_task(tmp_path, "trap", MODULES["trap"]), invocation(), StopRequest())
    assert trap.error_code == "TRAP"
    handled = make_task(tmp_path, "grow_handled", MODULES["grow_handled"], memory_limit_mb="16")
    exited = await runtime.invoke(handled, invocation(), StopRequest())
    assert exited.error_code == "NONZERO_EXIT" and "code 12" in exited.error_message


async def test_output_beyond_the_cap_fails_and_the_runtime_stays_healthy(runtime: WasmRuntime, tmp_path: Path) -> None:
    outcome = await runtime.invoke(
        make_task(tmp_path, "flood", MODULES["flood"]), invocation(output_bytes=1 << 20), StopRequest()
    )
    assert outcome.status is Status.FAILED and outcome.error_code == "OUTPUT_TOO_LARGE"
    assert (await runtime.invoke(make_task(tmp_path, "echo"), invocation(), StopRequest())).status is Status.COMPLETED


async def test_compiled_modules_are_cached_on_disk_and_reused_after_a_restart(tmp_path: Path) -> None:
    options = WasmOptions(cache_dir=tmp_path / "data" / "wasm-cache")
    task = make_task(tmp_path, "echo")
    first = WasmRuntime(options)
    await first.prepare(task)
    await first.close()
    cached = options.cache_dir / f"{task.digest}.cwasm"
    assert cached.is_file()
    # A new runtime (a restarted node) loads the module from the cache, not from the artifact.
    moved = dataclasses.replace(task, local_path=str(tmp_path / "gone.wat"))
    second = WasmRuntime(options)
    try:
        outcome = await second.invoke(moved, invocation(params={"x": 1}), StopRequest())
        assert outcome.status is Status.COMPLETED and outcome.output == b'{"x":1}'
    finally:
        await second.close()


async def test_an_invalid_module_is_refused_at_registration(runtime: WasmRuntime, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a valid module"):
        await runtime.prepare(make_task(tmp_path, "bad", '(module (func (export "_start") (i32.add)))'))


def sized_module(functions: int) -> str:
    """A valid module of `functions` functions, about 2.7 KB of WAT each: compiling it takes memory
    and time in proportion."""
    body = " ".join(f"(local.set 0 (i32.add (local.get 0) (i32.const {j})))" for j in range(50))
    funcs = "\n".join(f"(func $f{i} (result i32) (local i32) {body} (local.get 0))" for i in range(functions))
    return f'(module {funcs} (memory (export "memory") 1) (func (export "_start")))'


async def test_a_module_that_needs_more_memory_to_compile_than_allowed_is_refused(tmp_path: Path) -> None:
    options = WasmOptions(cache_dir=tmp_path / "data" / "wasm-cache", compile_memory_mb=64)
    runtime = WasmRuntime(options)
    try:
        with pytest.raises(InvalidArgument, match=r"needs more than 64 MB to compile \(wasm_compile_memory_mb\)"):
            await runtime.prepare(make_task(tmp_path, "big", sized_module(1500)))  # 4 MB of WAT
        assert runtime._modules == {} and not list(options.cache_dir.glob("*"))
        # A module over the in-process size compiles in a child within the limit, and runs.
        medium = make_task(tmp_path, "medium", sized_module(40))
        assert Path(medium.local_path).stat().st_size > 64 << 10
        await runtime.prepare(medium)
        assert (await runtime.invoke(medium, invocation(), StopRequest())).status is Status.COMPLETED
    finally:
        await runtime.close()


async def test_a_module_that_takes_longer_to_compile_than_allowed_is_refused_and_its_compiler_killed(
    tmp_path: Path,
) -> None:
    options = WasmOptions(cache_dir=tmp_path / "data" / "wasm-cache", compile_timeout_s=0.1)
    runtime = WasmRuntime(options)
    try:
        task = make_task(tmp_path, "slow", sized_module(400))  # about 1 MB of WAT: well over 0.1 s
        with pytest.raises(InvalidArgument, match=r"did not compile within 0.1 s \(wasm_compile_timeout_s\)"):
            await runtime.prepare(task)
        assert runtime._modules == {} and not list(options.cache_dir.glob("*"))
        compilers = [p for p in psutil.Process().children(recursive=True) if "wasm_compile" in " ".join(p.cmdline())]
        assert compilers == []
    finally:
        await runtime.close()
    # The same module compiles within the default time.
    patient = WasmRuntime(dataclasses.replace(options, compile_timeout_s=60))
    try:
        await patient.prepare(task)
        assert (await patient.invoke(task, invocation(), StopRequest())).status is Status.COMPLETED
    finally:
        await patient.close()
