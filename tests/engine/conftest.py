"""The engine in process over the fakes of tests/fakes.py, with one task of the fake runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes import Engine, engine


@pytest.fixture
async def eng(tmp_path: Path) -> AsyncIterator[Engine]:
    async with engine(tmp_path) as e:
        await e.task()
        yield e
