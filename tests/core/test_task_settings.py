"""Task settings: a task's metadata parsed once into typed values, with today's checks."""

from __future__ import annotations

import re

import pytest

from spearlet.core.errors import InvalidArgument
from spearlet.core.models import Task
from spearlet.core.task_settings import ENGINE_SETTINGS, TaskSettings
from spearlet.runtimes.process import ProcessRuntime
from spearlet.runtimes.python import PythonRuntime
from spearlet.runtimes.wasm import WasmRuntime
from tests.core.test_codes import README

RUNTIMES = (ProcessRuntime, PythonRuntime, WasmRuntime)


def test_settings_left_out_take_the_node_defaults_and_zero_means_what_it_says() -> None:
    assert TaskSettings.parse({}) == TaskSettings()
    parsed = TaskSettings.parse(
        {"memory_limit_mb": "0", "timeout_ms": "0", "max_instances": "3", "idle_timeout_s": "0"}
    )
    assert (parsed.memory_limit_mb, parsed.timeout_ms, parsed.max_instances, parsed.idle_timeout_s) == (0, 0, 3, 0)
    assert TaskSettings().memory_limit_mb is None and TaskSettings().idle_timeout_s is None


def test_env_keys_become_the_environment_and_other_keys_are_ignored() -> None:
    parsed = TaskSettings.parse({"env.GREETING": "hi", "env.": "x", "colour": "blue", "entry": "m:f"})
    assert dict(parsed.env) == {"GREETING": "hi"} and parsed.entry == "m:f"


@pytest.mark.parametrize("value", ["-1", "many", "", "1.5"])
def test_an_integer_setting_must_be_a_non_negative_integer_whatever_the_runtime(value: str) -> None:
    with pytest.raises(
        InvalidArgument, match=rf"metadata 'min_instances' must be a non-negative integer, got {value!r}"
    ):
        TaskSettings.parse({"min_instances": value})


def test_a_closed_setting_is_checked_only_for_a_runtime_that_reads_it() -> None:
    with pytest.raises(InvalidArgument, match="strategy 'fastest' is not known"):
        TaskSettings.parse({"strategy": "fastest"}, PythonRuntime.owned_settings)
    with pytest.raises(InvalidArgument, match="'network' must be 'host' or 'none', got 'internet'"):
        TaskSettings.parse({"network": "internet"}, ProcessRuntime.owned_settings)
    assert (
        TaskSettings.parse({"strategy": "fastest", "network": "internet"}, WasmRuntime.owned_settings).network
        == "internet"
    )


def test_a_task_parses_its_metadata_when_made_unless_handed_what_was_parsed() -> None:
    assert Task("t", "t", "process", "x", metadata={"max_retries": "2"}).settings.max_retries == 2
    given = TaskSettings(max_retries=5)
    assert Task("t", "t", "process", "x", metadata={"max_retries": "2"}, parsed=given).settings is given


def test_the_readme_lists_exactly_the_settings_the_engine_and_the_runtimes_read() -> None:
    section = README.read_text().split("### Task settings", 1)[1].strip().split("\n\n", 1)[0]
    listed = {"env" if key == "env.NAME" else key for key in re.findall(r"`([a-z_.A-Z]+)`", section)}
    read = ENGINE_SETTINGS.union(*(runtime.owned_settings for runtime in RUNTIMES))
    assert read == listed - {"artifact_spec.metadata", "host", "none"}
    assert read <= set(TaskSettings.__dataclass_fields__)
