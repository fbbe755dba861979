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
    if not _CLIENT_ID.fullmatch(value):
        raise InvalidArgument(
            f"context.execution_id {value[:140]!r} is invalid: use 1-128 letters, digits, '.', '_', ':' or '-'"
        )
    return value
