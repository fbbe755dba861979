"""The sandbox setting, and what holds without a sandbox: in-process, with real processes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import psutil
import pytest

from spearlet.core.errors import InvalidArgument
from spearlet.core.models import Status, Task
from spearlet.runtimes.base import Invocation, Limits, NodeLimits, StopRequest
from spearlet.runtimes.bubblewrap import BWRAP, SandboxUnavailable, start_sandbox
from spearlet.runtimes.process import ProcessRuntime
from tests.helpers import environ_of, open_path, script

pytestmark = pytest.mark.timeout(30)


def task_of(path: Path, **metadata: str) -> Task:
    return Task(task_id=path.stem, name=path.stem, artifact_type="process", location=str(path),
                local_path=str(path), metadata=metadata)  # fmt: skip


def invocation(execution_id: str, timeout_ms: int) -> Invocation:
    limits = Limits.for_task(NodeLimits(), Task("t", "t", "process", ""), timeout_ms)
    return Invocation(execution_id, "", {}, {}, limits)


def test_auto_says_once_why_there_is_no_sandbox_and_runs_without(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        sandbox, mode = start_sandbox("auto", other_user=False, bwrap="/bin/false")
    assert sandbox is None and mode.startswith("off (unavailable: bwrap failed")
    assert [r.getMessage() for r in caplog.records] == [f"functions run without a sandbox: {mode[18:-1]}"]
    sandbox, mode = start_sandbox("auto", other_user=False, bwrap=None)
    assert sandbox is None and "apt-get install bubblewrap" in mode


def test_required_refuses_to_run_without_the_sandbox_and_off_does_not_look() -> None:
    with pytest.raises(SandboxUnavailable, match='sandbox = "required" but bwrap failed'):
        start_sandbox("required", other_user=False, bwrap="/bin/false")
    assert start_sandbox("off", other_user=False) == (None, 'off (sandbox = "off")')


@pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed")
def test_auto_finds_the_sandbox_where_bubblewrap_runs() -> None:
    sandbox, mode = start_sandbox("auto", other_user=False)
    assert sandbox is not None and mode.startswith("bubblewrap")


async def test_network_none_without_the_sandbox_is_refused_at_registration(tmp_path: Path) -> None:
    path = script(tmp_path / "offline.sh", "#!/bin/sh\necho hi\n")
    with pytest.raises(InvalidArgument, match='network "none" needs the sandbox'):
        await ProcessRuntime(sandbox=None).prepare(task_of(path, network="none"))


async def test_without_the_sandbox_a_grandchild_holding_stdout_does_not_hold_the_call_past_its_deadline(
    tmp_path: Path,
) -> None:
    # The function itself ends at once; the grandchild it left outside its group keeps stdout open.
    path = script(tmp_path / "daemon.sh", "#!/bin/sh\nsetsid sleep 30 &\nsleep 0.2\necho started\n")
    started = time.monotonic()
    try:
        outcome = await ProcessRuntime(sandbox=None).invoke(task_of(path), invocation("held", 1000), StopRequest())
        assert time.monotonic() - started < 3
        assert outcome.status is Status.TIMEOUT and "still open" in outcome.error_message
    finally:
        for process in psutil.process_iter():
            if environ_of(process).get("SPEAR_EXECUTION_ID") == "held":
                process.kill()  # without a sandbox nothing else can end it


@pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed")
async def test_a_cancel_without_force_lets_a_sandboxed_function_clean_up(tmp_path: Path) -> None:
    sandbox, _ = start_sandbox("required", other_user=False)
    trap = "#!/bin/sh\ntrap 'echo cleaned up >&2; exit 3' TERM\necho ready\nsleep 30 &\nwait\n"
    path = script(open_path(tmp_path) / "trap.sh", trap)
    stop = StopRequest()
    outputs: list[bytes] = []
    call = invocation("graceful", 20_000)
    call.on_output = lambda line: (outputs.append(line), stop.request(force=False, reason="test"))  # type: ignore[func-returns-value]
    outcome = await ProcessRuntime(sandbox=sandbox).invoke(task_of(path), call, stop)
    assert outputs == [b"ready\n"]
    assert outcome.status is Status.CANCELLED and "cleaned up" in outcome.logs
