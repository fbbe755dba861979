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


def _tag_bytes(value: Any) -> Any:
    if isinstance(value, bytes):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {k: _tag_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tag_bytes(v) for v in value]
    return value


def _untag_bytes(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _BYTES_TAG in value:
            return base64.b64decode(value[_BYTES_TAG])
        return {k: _untag_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untag_bytes(v) for v in value]
    return value


def dump_params(params: dict[str, Any]) -> str:
    """Serialize parameters for storage, losslessly (bytes stay bytes)."""
    return json.dumps(_tag_bytes(params), separators=(",", ":"))


def load_params(text: str) -> dict[str, Any]:
    loaded = _untag_bytes(json.loads(text))
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


def stdin_payload(params: dict[str, Any]) -> bytes:
    """The JSON object a `process` function reads on stdin; bytes become base64 strings."""
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
        json.loads(text)
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
