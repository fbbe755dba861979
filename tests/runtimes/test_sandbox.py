"""Pipes handed to the event loop: each descriptor closed exactly once, on both loops the node runs on."""

from __future__ import annotations

import asyncio
import gc
import io
import os
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import pytest
import uvloop

from spearlet.runtimes.sandbox import PipeCollector, collect, connect_pipe, settle

pytestmark = pytest.mark.timeout(30)

LOOPS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


class ProbedPipe(io.FileIO):
    """A pipe end that notes when its descriptor was closed by someone else before it closes it
    itself: that second close would hit whatever took the number in between."""

    closed_under_it: ClassVar[list[int]] = []

    def close(self) -> None:
        if not self.closed:
            try:
                os.fstat(self.fileno())
            except OSError:
                ProbedPipe.closed_under_it.append(self.fileno())
        super().close()


def run_and_check_closes(run: Callable[[Coroutine[Any, Any, None]], None], scenario: Coroutine[Any, Any, None]) -> None:
    ProbedPipe.closed_under_it.clear()
    run(scenario)
    gc.collect()  # finalizers close what nobody closed
    assert ProbedPipe.closed_under_it == []


@pytest.mark.parametrize("run", LOOPS.values(), ids=LOOPS.keys())
def test_a_collected_pipe_is_closed_once(run: Callable[..., None]) -> None:
    async def scenario() -> None:
        read_end, write_end = os.pipe()
        os.write(write_end, b"output")
        os.close(write_end)
        collector = await collect(ProbedPipe(read_end, "rb"), PipeCollector(1024))
        assert bytes(collector.data) == b"output"

    run_and_check_closes(run, scenario())


@pytest.mark.parametrize("run", LOOPS.values(), ids=LOOPS.keys())
def test_a_write_pipe_is_closed_once(run: Callable[..., None]) -> None:
    async def scenario() -> None:
        read_end, write_end = os.pipe()
        transport, _ = await connect_pipe(asyncio.Protocol(), ProbedPipe(write_end, "wb"), write=True)
        transport.write(b"request")  # type: ignore[attr-defined]
        transport.close()
        await asyncio.sleep(0.05)
        assert os.read(read_end, 100) == b"request"
        assert os.read(read_end, 100) == b""  # the write end is closed
        os.close(read_end)

    run_and_check_closes(run, scenario())


async def test_settle_gives_up_on_time_and_leaves_no_unretrieved_error(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    held = asyncio.gather(loop.create_future(), loop.create_future())  # pipes a grandchild keeps open
    assert await settle(held, 0.01) is False
    del held
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
