"""A task's settings (README, "Task settings"): its metadata's strings, parsed once into typed values.

Metadata travels and is stored as strings; a Task parses its settings when it is made (at
registration, and when a store hands a stored task back), and everything else reads the typed
fields. A setting left out is None where the node's default then applies (or 0 where 0 and "not
set" mean the same).

What is checked: an integer setting must be a non-negative integer whatever the task's runtime (a
mistake worth refusing even where this runtime ignores it). A setting with a closed set of values
(`strategy`, `network`) is checked at registration when the task's runtime reads it
(Runtime.owned_settings); another runtime ignores it, as it ignores any other metadata key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from spearlet.core.errors import InvalidArgument

STRATEGIES = ("least_connections", "round_robin", "least_response_time", "random")
NETWORKS = ("host", "none")
ENV_PREFIX = "env."
# The settings the engine reads for a task of any runtime (the runtimes declare theirs).
ENGINE_SETTINGS = frozenset({"timeout_ms", "max_retries", "cache_ttl_s", "max_concurrency", "max_instances"})


@dataclass(frozen=True, slots=True)
class TaskSettings:
    # How a call runs and is kept (the engine's)
    timeout_ms: int = 0  # 0: the call's own, else the node's default_timeout_ms
    max_retries: int = 0
    cache_ttl_s: int = 0  # 0: no result cache
    max_concurrency: int | None = None  # the node's max_concurrency
    # A call's limits (runtimes.base.Limits); None: the node's
    memory_limit_mb: int | None = None
    cpu_limit_s: int | None = None
    file_limit_mb: int | None = None
    max_processes: int | None = None
    # Warm instances (runtimes.pool); max_instances also bounds calls at once for any task
    min_instances: int = 0
    max_instances: int | None = None
    idle_timeout_s: int | None = None  # 300
    max_calls_per_instance: int = 0  # 0: never recycle
    strategy: str = "least_connections"
    # What the function is and sees
    entry: str = ""
    network: str | None = None  # the node's network
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, metadata: Mapping[str, str], owned: frozenset[str] = frozenset()) -> TaskSettings:
        """The settings of `metadata`; InvalidArgument naming the first that is wrong. `owned`: the
        settings the task's runtime reads, whose values are checked too."""
        ints = {key: _non_negative(key, value) for key, value in metadata.items() if key in _INTS}
        settings = cls(
            **ints,
            strategy=metadata.get("strategy", "least_connections"),
            entry=metadata.get("entry", ""),
            network=metadata.get("network"),
            env={
                k.removeprefix(ENV_PREFIX): v
                for k, v in metadata.items()
                if k.startswith(ENV_PREFIX) and k != ENV_PREFIX
            },
        )
        if "strategy" in owned and settings.strategy not in STRATEGIES:
            raise InvalidArgument(f"strategy {settings.strategy!r} is not known: use one of {', '.join(STRATEGIES)}")
        if "network" in owned and settings.network is not None and settings.network not in NETWORKS:
            raise InvalidArgument(f"metadata 'network' must be 'host' or 'none', got {settings.network!r}")
        return settings


_INTS = frozenset({
    "timeout_ms", "max_retries", "cache_ttl_s", "max_concurrency", "memory_limit_mb", "cpu_limit_s", "file_limit_mb",
    "max_processes", "min_instances", "max_instances", "idle_timeout_s", "max_calls_per_instance",
})  # fmt: skip


def _environment(metadata: Mapping[str, str]) -> dict[str, str]:
    """`env.NAME` keys: the function's environment variables."""
    return {k.removeprefix(ENV_PREFIX): v for k, v in metadata.items() if k.startswith(ENV_PREFIX) and k != ENV_PREFIX}


def _non_negative(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise InvalidArgument(f"metadata {key!r} must be a non-negative integer, got {value!r}")
    return number
