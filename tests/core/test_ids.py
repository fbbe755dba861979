"""Identifiers: UUIDv7 execution ids, task names, client-chosen execution ids."""

from __future__ import annotations

import time
import uuid

import pytest

from spearlet.core.errors import InvalidArgument
from spearlet.core.ids import check_client_execution_id, check_task_name, new_execution_id

pytestmark = pytest.mark.timeout(60)


def test_new_execution_id_is_a_canonical_uuid_version_7() -> None:
    value = new_execution_id()
    parsed = uuid.UUID(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == value  # canonical lowercase, hyphenated form


def test_new_execution_id_carries_the_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = new_execution_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(value).int >> 80 <= after


def test_execution_ids_sort_by_creation_time() -> None:
    ids = []
    for _ in range(20):
        ids.append(new_execution_id())
        time.sleep(0.002)
    assert sorted(ids) == ids


def test_execution_ids_are_unique() -> None:
    ids = {new_execution_id() for _ in range(20_000)}
    assert len(ids) == 20_000


def test_execution_ids_have_random_bits_within_one_millisecond() -> None:
    ids = [uuid.UUID(new_execution_id()) for _ in range(200)]
    low_bits = {u.int & ((1 << 62) - 1) for u in ids}
    assert len(low_bits) == 200


@pytest.mark.parametrize("name", ["a", "hello", "Hello-World", "a.b_c-d", "9lives", "x" * 128, "v1.2.3"])
def test_check_task_name_accepts_and_returns_valid_names(name: str) -> None:
    assert check_task_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-lead", ".hidden", "_under", "a b", "a/b", "../etc", "x" * 129, "héllo", "semi;colon", "tab\tname", "a:b"],
)
def test_check_task_name_refuses_invalid_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="task name"):
        check_task_name(name)


def test_check_task_name_refuses_a_trailing_newline() -> None:
    with pytest.raises(InvalidArgument):
        check_task_name("hello\n")


@pytest.mark.parametrize(
    "value", ["a", "job-1", "tenant:job:7", "-leading-dash", "x" * 128, "01a22732-69f0-7c02-ac97-781903a92fe6"]
)
def test_check_client_execution_id_accepts_and_returns_valid_ids(value: str) -> None:
    assert check_client_execution_id(value) == value


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", "a/b", "ü", "a\tb", "a\n\nb"])
def test_check_client_execution_id_refuses_invalid_ids(value: str) -> None:
    with pytest.raises(InvalidArgument, match="execution_id"):
        check_client_execution_id(value)


def test_check_client_execution_id_refuses_a_trailing_newline() -> None:
    with pytest.raises(InvalidArgument):
        check_client_execution_id("job-1\n")
