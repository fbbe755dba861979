"""Identifiers: time-ordered execution ids and safe task names."""

from __future__ import annotations

import os
import re
import time
import uuid

from spearlet.core.errors import InvalidArgument

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_execution_id() -> str:
    """A UUIDv7: sortable by creation time, unique without coordination."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def check_task_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"task name {name!r} is invalid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_client_execution_id(value: str) -> str:
    return check_client_id(value, "context.execution_id")


def check_client_id(value: str, field: str) -> str:
    """An id a client chose (an execution's, an invocation's), checked under the name of its field."""
    if not _CLIENT_ID.fullmatch(value):
        raise InvalidArgument(f"{field} {value[:140]!r} is invalid: use 1-128 letters, digits, '.', '_', ':' or '-'")
    return value


OWN_INSTANCE_PREFIX = "own-"


def own_instance_id(execution_id: str) -> str:
    """The instance of an execution that a run-once runtime (process, wasm) starts for it alone:
    named after the execution, so that whoever knows one knows the other."""
    return OWN_INSTANCE_PREFIX + execution_id


def execution_of_own_instance(instance_id: str) -> str:
    """The execution whose own instance `instance_id` is; "" when it names no such instance."""
    return instance_id.removeprefix(OWN_INSTANCE_PREFIX) if instance_id.startswith(OWN_INSTANCE_PREFIX) else ""
