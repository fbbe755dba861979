"""Plain Python values <-> the protobuf messages that carry them (parameters, results, chunks).

Shared by the node (api/grpc/convert.py) and the client (spearlet.client), so both read and write a
value by the same rules; it imports nothing of the node's engine, which a client does not need.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import any_pb2, json_format, struct_pb2, wrappers_pb2
from google.protobuf.message import DecodeError, Message

from spearlet.core.errors import InvalidArgument
from spearlet.core.values import check_number

_WRAPPERS: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        wrappers_pb2.StringValue, wrappers_pb2.BytesValue, wrappers_pb2.BoolValue, wrappers_pb2.Int32Value,
        wrappers_pb2.Int64Value, wrappers_pb2.UInt32Value, wrappers_pb2.UInt64Value, wrappers_pb2.FloatValue,
        wrappers_pb2.DoubleValue,
    )
}  # fmt: skip
_JSON_TYPES: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls for cls in (struct_pb2.Value, struct_pb2.Struct, struct_pb2.ListValue)
}
_MAX_SAFE_INT = 2**53


def message_json(message: Message) -> dict[str, Any]:
    """A message in the proto3 JSON mapping as the HTTP gateway and the CLI print it: field names as
    in the .proto, and every field, those that hold their default value (0, "", false) included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def tidy_numbers(value: Any) -> Any:
    """JSON numbers arrive as doubles; give whole ones back as ints, as a user wrote them."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: tidy_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tidy_numbers(v) for v in value]
    return value


def pack_value(name: str, value: Any, packed: any_pb2.Any | None = None) -> any_pb2.Any:
    """A parameter's plain value as the node reads it back (`unpack_value`), into `packed` (or a new
    Any): bytes as BytesValue, anything else as a Value. NaN, infinity and what JSON cannot hold are
    refused naming the parameter.

    >>> unpack_value("n", pack_value("n", {"a": [1, 2.5]}), True)
    {'a': [1, 2.5]}
    """
    packed = any_pb2.Any() if packed is None else packed
    if isinstance(value, bytes):
        packed.Pack(wrappers_pb2.BytesValue(value=value))
        return packed
    if isinstance(value, str):  # the common case, without json_format's walk (a third of the cost)
        packed.Pack(struct_pb2.Value(string_value=value))
        return packed
    _check_finite(name, value)
    try:
        packed.Pack(json_format.ParseDict(value, struct_pb2.Value()))
    except (json_format.ParseError, OverflowError) as exc:
        raise InvalidArgument(
            f"parameter {name!r}: {type(value).__name__} value cannot be sent: a parameter is bytes or a JSON "
            f"value (None, bool, int, float, str, list, dict with str keys; no bytes inside) ({exc})"
        ) from None
    return packed


def _check_finite(name: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        check_number(name, value)
    elif isinstance(value, dict):
        for v in value.values():
            _check_finite(name, v)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_finite(name, v)


def unpack_value(name: str, value: any_pb2.Any, present: bool) -> Any:
    """A parameter's Any as a plain value (README, "Task settings": the types a parameter may hold)."""
    if not present:
        return None
    full_name = value.type_url.rpartition("/")[2]
    cls = _WRAPPERS.get(full_name) or _JSON_TYPES.get(full_name)
    if cls is None:
        raise InvalidArgument(
            f"parameter {name!r}: value type {value.type_url[:200]!r} is not supported; use a "
            "google.protobuf wrapper (StringValue, BytesValue, Int64Value, ...), Value, Struct or ListValue"
        )
    message = cls()
    try:
        message.ParseFromString(value.value)
    except (DecodeError, RecursionError) as exc:
        raise InvalidArgument(f"parameter {name!r}: value is not a valid {full_name}: {exc}") from exc
    if isinstance(message, struct_pb2.Value):
        return _plain(name, message)
    if isinstance(message, struct_pb2.Struct):
        return {k: _plain(name, v) for k, v in message.fields.items()}
    if isinstance(message, struct_pb2.ListValue):
        return [_plain(name, v) for v in message.values]
    plain = message.value  # type: ignore[attr-defined]
    if isinstance(plain, float):
        check_number(name, plain)
    return plain


def _plain(name: str, value: struct_pb2.Value) -> Any:
    """A Value as the plain JSON value it stands for; whole numbers as ints, as tidy_numbers does,
    and NaN or infinity (not JSON) refused naming the parameter."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = check_number(name, value.number_value)
        return int(number) if number.is_integer() and abs(number) <= _MAX_SAFE_INT else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _plain(name, v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(name, v) for v in value.list_value.values]
    return None  # null_value, or nothing set
