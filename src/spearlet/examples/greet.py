"""An example `python` task: the worker imports this module once and calls its functions warm."""

import time
from collections.abc import Iterator
from typing import Any


def handler(name: str = "world", context: Any = None) -> dict[str, str]:
    """Parameters arrive as keyword arguments; `context` carries the execution id and a logger."""
    if context is not None:
        context.logger.info("greeting %s in %s", name, context.execution_id)
    return {"greeting": f"Hello, {name}!"}


def noop() -> None:
    """Does nothing: the benchmark's measure of the node's own overhead."""


def count(n: int = 3) -> Iterator[int]:
    """A generator: each yield is a chunk (streamed by StreamFunction, collected into a list here)."""
    yield from range(int(n))


async def wait(seconds: float = 0.1) -> dict[str, float]:
    """`async def` functions work too."""
    import asyncio

    started = time.monotonic()
    await asyncio.sleep(float(seconds))
    return {"waited": round(time.monotonic() - started, 3)}
