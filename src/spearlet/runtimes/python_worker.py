"""A warm Python worker: imports the task's code once, then serves calls over a pipe.

Started by the node as `python -I -u python_worker.py PATH ENTRY`; stdlib only, so it starts fast
and never imports the node. Frames in both directions are a 4-byte big-endian length and a JSON
object; bytes travel as {"$bytes": base64} so they stay bytes.

node -> worker  {"id", "function", "params", "deadline"}       one call at a time
worker -> node  {"type": "ready"} once imported, or {"type": "fatal", "error_type", "message", "where", "traceback"}
                {"type": "log", "line"}                       print(), logging, context.logger
                {"type": "chunk", "value"}                    each value a generator yields
                {"type": "result", "value"} | {"type": "error", "error_type", "message", "traceback"}

User code cannot corrupt the protocol: the frames use private duplicates of fds 0 and 1, fd 1 is
pointed at stderr and fd 0 at /dev/null, and sys.stdout/sys.stderr forward lines as log frames.

Tracebacks are told in the caller's terms: the function's files relative to its artifact, the
interpreter's as `<python>/...`, and this program's own frames left out.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import logging
import os
import struct
import sys
import time
import traceback
import zipimport  # noqa: F401 - makes .zip artifacts importable from sys.path
from typing import Any

_HEADER = struct.Struct(">I")
_BYTES = "$bytes"
_OBJECT = "$object"


# These two mirror spearlet.core.values.tag_bytes/untag_bytes (this program imports nothing of the node).
def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        tagged = {str(k): _encode(v) for k, v in value.items()}
        return {_OBJECT: tagged} if len(value) == 1 and (_BYTES in value or _OBJECT in value) else tagged
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _BYTES in value:
            return base64.b64decode(value[_BYTES])
        if len(value) == 1 and _OBJECT in value:
            return {k: _decode(v) for k, v in value[_OBJECT].items()}
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class Channel:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._in = read_fd
        self._out = os.fdopen(write_fd, "wb", buffering=0)
        self._buffer = bytearray()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        self._out.write(_HEADER.pack(len(data)) + data)

    def receive(self) -> dict[str, Any] | None:
        header = self._read(_HEADER.size)
        if header is None:
            return None
        body = self._read(_HEADER.unpack(header)[0])
        if body is None:
            return None
        message: dict[str, Any] = json.loads(body)
        return message

    def _read(self, n: int) -> bytes | None:
        # Whatever the pipe holds in one read: a whole request usually, header and body together.
        while len(self._buffer) < n:
            chunk = os.read(self._in, max(n - len(self._buffer), 1 << 16))
            if not chunk:
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data


def _relative(filename: str, root: str) -> str:
    if filename.startswith(root + os.sep):
        return filename[len(root) + 1 :]
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        if filename.startswith(prefix + os.sep):
            return "<python>" + filename[len(prefix) :]
    return filename


def _retell(te: traceback.TracebackException, root: str, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    frames = [f for f in te.stack if f.filename != __file__ and not f.filename.startswith("<frozen ")]
    te.stack = traceback.StackSummary.from_list(
        [traceback.FrameSummary(_relative(f.filename, root), f.lineno, f.name, line=f.line) for f in frames]
    )
    if getattr(te, "filename", None):  # a SyntaxError's
        te.filename = _relative(te.filename, root)
    for other in (te.__cause__, te.__context__):
        if other is not None:
            _retell(other, root, seen)


def user_traceback(exc: BaseException, root: str) -> str:
    """The traceback of `exc` as the function's author would read it (see the module's docstring)."""
    te = traceback.TracebackException.from_exception(exc)
    _retell(te, root, set())
    return "".join(te.format())


def load_failure(exc: BaseException, root: str) -> dict[str, Any]:
    """What the node hears of code that does not import: the kind of error, its message and where
    it arose, apart, so that the node can leave out what quotes the artifact's content."""
    if isinstance(exc, SyntaxError):
        message, filename, line = exc.msg, exc.filename or "", exc.lineno or 0
    else:
        message = str(exc)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(root + os.sep)]
        filename, line = (frames[-1].filename, frames[-1].lineno or 0) if frames else ("", 0)
    where = f"{_relative(filename, root)}, line {line}" if filename else ""
    return {"type": "fatal", "error_type": type(exc).__name__, "message": message, "where": where,
            "traceback": user_traceback(exc, root)}  # fmt: skip


class LogForwarder:
    """A text stream whose complete lines become log frames."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self._channel.send({"type": "log", "line": line})
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self._channel.send({"type": "log", "line": self._partial})
            self._partial = ""

    def isatty(self) -> bool:
        return False


class Context:
    """What a function may ask of its call: who it is, how long it has, where to log."""

    def __init__(self, execution_id: str, function_name: str, deadline: float, logger: logging.Logger) -> None:
        self.execution_id = execution_id
        self.function_name = function_name
        self.deadline = deadline  # seconds since the epoch; 0 means none
        self.logger = logger

    def remaining_s(self) -> float | None:
        return max(0.0, self.deadline - time.time()) if self.deadline else None


_signatures: dict[Any, inspect.Signature | None] = {}


def _signature(function: Any) -> inspect.Signature | None:
    """The function's signature, worked out once per function (it costs more than a no-op call)."""
    try:
        return _signatures[function]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable object: no cache
        return _signature_of(function)
    signature = _signatures[function] = _signature_of(function)
    return signature


def _signature_of(function: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None


# core/values.py RAW_INPUT (the worker imports nothing of the node).
RAW_INPUT = "$input"


def _call(function: Any, params: dict[str, Any], context: Context) -> Any:
    """Keyword arguments when the signature takes them, else the parameters as one dict; a
    parameter named `context` receives the Context."""
    signature = _signature(function)
    raw = params.get(RAW_INPUT) if len(params) == 1 else None
    if isinstance(raw, bytes):  # an input that is not JSON: the bytes as the one argument
        wants_context = signature is not None and "context" in signature.parameters
        return function(raw, context=context) if wants_context else function(raw)
    if signature is None:
        return function(**params)
    kwargs = dict(params)
    if "context" in signature.parameters:
        kwargs["context"] = context
    try:
        signature.bind(**kwargs)
    except TypeError:
        positional = [
            p
            for p in signature.parameters.values()
            if p.name != "context" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(positional) == 1:
            extra = {"context": context} if "context" in signature.parameters else {}
            return function(params, **extra)
        raise
    return function(**kwargs)


def serve(path: str, entry: str) -> None:
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    channel = Channel(proto_in, proto_out)
    forwarder = LogForwarder(channel)
    sys.stdout = sys.stderr = forwarder
    logger = logging.getLogger("function")
    handler = logging.StreamHandler(forwarder)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)

    module_name, _, default_name = entry.partition(":")
    try:
        sys.path.insert(0, path)
        module = importlib.import_module(module_name)
        default = getattr(module, default_name or "handler")
    except BaseException as exc:
        forwarder.flush()
        channel.send(load_failure(exc, path))
        return
    loop = None
    channel.send({"type": "ready"})
    while True:
        request = channel.receive()
        if request is None:
            return
        name = request.get("function") or ""
        context = Context(request["id"], name, request.get("deadline", 0), logger)
        environment: dict[str, str] = request.get("environment") or {}
        saved = {key: os.environ.get(key) for key in environment}
        os.environ.update(environment)
        try:
            function = default if not name else getattr(module, name, None)
            if function is None or name.startswith("_") or not callable(function):
                raise LookupError(f"function {name!r} is not defined in module {module_name!r}")
            value = _call(function, _decode(request.get("params") or {}), context)
            if inspect.isawaitable(value):
                if loop is None:
                    import asyncio

                    loop = asyncio.new_event_loop()
                value = loop.run_until_complete(value)
            if inspect.isgenerator(value):
                chunks = []
                for chunk in value:
                    forwarder.flush()
                    channel.send({"type": "chunk", "value": _encode(chunk)})
                    chunks.append(chunk)
                value = chunks
            forwarder.flush()
            try:
                channel.send({"type": "result", "value": _encode(value)})
            except (TypeError, ValueError) as exc:
                channel.send(
                    {"type": "error", "error_type": "ResultNotSerializable", "message": str(exc), "traceback": ""}
                )
        except BaseException as exc:
            forwarder.flush()
            channel.send({"type": "error", "error_type": type(exc).__name__, "message": str(exc),
                          "traceback": user_traceback(exc, path)})  # fmt: skip
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                return
        finally:
            for key, old in saved.items():  # the call's environment does not outlive the call
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
