"""Plain values of parameters and outputs, independent of any transport.

Parameters are JSON-like Python values plus `bytes`. They are stored and handed to a `process` function
as JSON; bytes travel as `{"$bytes": "<base64>"}` in storage and as a base64 string on a function's stdin.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from spearlet.core.errors import InvalidArgument
from spearlet.core.models import OutputKind

_BYTES_TAG = "$bytes"
# A user's own one-key object {"$bytes": ...} or {"$object": ...} is wrapped so it is not mistaken
# for a tag. (python_worker.py mirrors these two functions: the worker imports nothing of the node.)
_OBJECT_TAG = "$object"


def tag_bytes(value: Any) -> Any:
    """Bytes anywhere in a JSON-like value as {"$bytes": base64}, the form stored and sent to workers."""
    if isinstance(value, bytes):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        tagged = {k: tag_bytes(v) for k, v in value.items()}
        if len(value) == 1 and (_BYTES_TAG in value or _OBJECT_TAG in value):
            return {_OBJECT_TAG: tagged}
        return tagged
    if isinstance(value, list):
        return [tag_bytes(v) for v in value]
    return value


def untag_bytes(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _BYTES_TAG in value:
            return base64.b64decode(value[_BYTES_TAG])
        if len(value) == 1 and _OBJECT_TAG in value:
            return {k: untag_bytes(v) for k, v in value[_OBJECT_TAG].items()}
        return {k: untag_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untag_bytes(v) for v in value]
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def strict_json(data: str | bytes) -> Any:
    """`data` parsed as JSON proper: ValueError for NaN and Infinity, which Python's json takes."""
    return json.loads(data, parse_constant=_no_constants)


def dump_params(params: dict[str, Any]) -> str:
    """Serialize parameters for storage, losslessly (bytes stay bytes)."""
    return json.dumps(tag_bytes(params), separators=(",", ":"))


def load_params(text: str) -> dict[str, Any]:
    loaded = untag_bytes(json.loads(text))
    if not isinstance(loaded, dict):
        raise ValueError("stored parameters are not an object")
    return loaded


def _plain_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    return value


# The one parameter of a call whose input is not JSON (SPEAR's Payload of another content type):
# the function gets these bytes as they are (stdin; a Python function's one argument).
RAW_INPUT = "$input"


def raw_params(data: bytes) -> dict[str, Any]:
    return {RAW_INPUT: data}


def raw_input(params: dict[str, Any]) -> bytes | None:
    """The raw input of a call made with one (`raw_params`), else None."""
    value = params.get(RAW_INPUT) if len(params) == 1 else None
    return value if isinstance(value, bytes) else None


def stdin_payload(params: dict[str, Any]) -> bytes:
    """What a `process` or `wasm` function reads on stdin: the parameters as one JSON object (bytes
    become base64 strings), or a raw input as it is."""
    raw = raw_input(params)
    if raw is not None:
        return raw
    try:
        return json.dumps(_plain_json(params), separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise InvalidArgument(f"parameters cannot be sent as JSON: {exc}") from exc


def check_number(name: str, value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        raise InvalidArgument(f"parameter {name!r}: NaN and infinity are not valid JSON numbers")
    return value


def classify_output(raw: bytes) -> OutputKind:
    """JSON when the output parses as JSON, TEXT when it is other UTF-8, BYTES otherwise."""
    if not raw:
        return OutputKind.NONE
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return OutputKind.BYTES
    try:
        strict_json(text)
    except ValueError:
        return OutputKind.TEXT
    return OutputKind.JSON


def output_value(raw: bytes, kind: OutputKind) -> Any:
    """The output as a Python value of its kind (None, JSON value, str or bytes)."""
    if kind is OutputKind.JSON:
        return json.loads(raw)
    if kind is OutputKind.TEXT:
        return raw.decode("utf-8")
    if kind is OutputKind.BYTES:
        return raw
    return None


def check_string_map(values: dict[str, str], what: str, limit: int, setting: str) -> None:
    """Refuse a map of strings (metadata, environment) larger than `limit` bytes in all."""
    size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
    if size > limit:
        raise InvalidArgument(f"{what} is {size} bytes, more than this node accepts ({setting} = {limit})")
