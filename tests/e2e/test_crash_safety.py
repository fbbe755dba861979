"""SIGKILL at random moments with async work of every runtime in flight, several times over."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.crash_safety import run

pytestmark = pytest.mark.timeout(300)


def test_every_accepted_execution_ends_in_exactly_one_terminal_state(tmp_path: Path) -> None:
    figures = run(executions=240, kills=3, seed=7, data_dir=tmp_path / "data", deadline_s=180)
    assert figures["accepted"] == 240
    assert figures["lost"] == 0 and figures["stuck"] == 0
    assert figures["changed_after_terminal"] == 0
    assert sum(figures["final_statuses"].values()) == 240
    assert figures["orphans_left"] == 0
    assert figures["integrity_check"] == "ok"
    assert figures["answered_after"]
