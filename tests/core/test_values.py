"""Parameter and output values: lossless storage, the stdin payload, output classification."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest

from spearlet.core.errors import InvalidArgument
from spearlet.core.models import OutputKind
from spearlet.core.values import check_number, classify_output, dump_params, load_params, output_value, stdin_payload

pytestmark = pytest.mark.timeout(60)

PARAMS: dict[str, Any] = {
    "text": "héllo ✓",
    "int": 42,
    "float": 1.5,
    "bool": True,
    "none": None,
    "raw": b"\x00\xff\x80",
    "empty_bytes": b"",
    "nested": {"list": [b"a", 1, "b", {"deep": bytes(range(256))}], "empty": {}, "items": []},
}


def test_dump_then_load_params_round_trips_nested_bytes() -> None:
    loaded = load_params(dump_params(PARAMS))
    assert loaded == PARAMS
    assert isinstance(loaded["raw"], bytes)
    assert loaded["nested"]["list"][3]["deep"] == bytes(range(256))


def test_dump_params_is_json_text_with_bytes_tagged_as_base64() -> None:
    stored = json.loads(dump_params({"raw": b"\x00\xff", "s": "x"}))
    assert stored == {"raw": {"$bytes": base64.b64encode(b"\x00\xff").decode()}, "s": "x"}


def test_dump_params_does_not_modify_its_argument() -> None:
    params = {"raw": b"\x01", "nested": {"raw": b"\x02"}}
    dump_params(params)
    assert params == {"raw": b"\x01", "nested": {"raw": b"\x02"}}


def test_load_params_refuses_a_stored_value_that_is_not_an_object() -> None:
    with pytest.raises(ValueError, match="not an object"):
        load_params("[1, 2]")


def test_params_round_trip_a_client_object_that_looks_like_tagged_bytes() -> None:
    params = {"x": {"$bytes": "aGk="}}
    assert load_params(dump_params(params)) == params


def test_stdin_payload_is_compact_json_with_bytes_as_base64_strings() -> None:
    payload = stdin_payload({"name": "Ada", "raw": b"\x00\xff", "nested": [{"b": b"hi"}]})
    assert json.loads(payload) == {
        "name": "Ada",
        "raw": base64.b64encode(b"\x00\xff").decode(),
        "nested": [{"b": base64.b64encode(b"hi").decode()}],
    }
    assert b" " not in payload


def test_stdin_payload_of_no_params_is_an_empty_object() -> None:
    assert stdin_payload({}) == b"{}"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_stdin_payload_refuses_non_finite_numbers(bad: float) -> None:
    with pytest.raises(InvalidArgument, match="JSON"):
        stdin_payload({"x": 1, "nested": {"list": [bad]}})


def test_check_number_passes_finite_numbers_and_refuses_nan_naming_the_parameter() -> None:
    assert check_number("x", 2.5) == 2.5
    with pytest.raises(InvalidArgument, match="'ratio'"):
        check_number("ratio", math.nan)
    with pytest.raises(InvalidArgument):
        check_number("ratio", -math.inf)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"", OutputKind.NONE),
        (b'{"greeting": "hi"}', OutputKind.JSON),
        (b"[1, 2, 3]\n", OutputKind.JSON),
        (b"42", OutputKind.JSON),
        (b'"quoted"', OutputKind.JSON),
        (b"null", OutputKind.JSON),
        (b"  true \n", OutputKind.JSON),
        (b"hello world\n", OutputKind.TEXT),
        ("héllo ✓".encode(), OutputKind.TEXT),
        (b'{"broken": ', OutputKind.TEXT),
        (b"\n", OutputKind.TEXT),
        (b"\xff\xfe\x00\x01", OutputKind.BYTES),
        (b"caf\xe9", OutputKind.BYTES),  # latin-1, not UTF-8
    ],
)
def test_classify_output(raw: bytes, kind: OutputKind) -> None:
    assert classify_output(raw) is kind


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"[NaN]"])
def test_classify_output_treats_non_json_number_words_as_text(raw: bytes) -> None:
    assert classify_output(raw) is OutputKind.TEXT


@pytest.mark.parametrize(
    ("raw", "kind", "value"),
    [
        (b'{"a": [1, 2.5, null]}', OutputKind.JSON, {"a": [1, 2.5, None]}),
        (b"7", OutputKind.JSON, 7),
        (b"hello\n", OutputKind.TEXT, "hello\n"),
        ("✓".encode(), OutputKind.TEXT, "✓"),
        (b"\xff\x00", OutputKind.BYTES, b"\xff\x00"),
        (b"", OutputKind.NONE, None),
        (b"ignored", OutputKind.NONE, None),
    ],
)
def test_output_value_gives_the_python_value_of_its_kind(raw: bytes, kind: OutputKind, value: Any) -> None:
    assert output_value(raw, kind) == value
    assert type(output_value(raw, kind)) is type(value)


def test_output_value_agrees_with_classify_output() -> None:
    for raw in [b'{"x": 1}', b"plain", b"\xff"]:
        kind = classify_output(raw)
        assert output_value(raw, kind) is not None


def test_params_round_trip_nested_escape_objects() -> None:
    params = {"a": {"$object": {"$bytes": "x"}}, "b": [{"$bytes": b"raw"}], "c": b"\x00"}
    assert load_params(dump_params(params)) == params
