"""Who this node is, kept in its data directory so that it stays the same across restarts.

`data_dir/identity.json` holds the default node id, made once: the host name and a short random
suffix, so that nodes that share a host name (several on one machine, containers) still differ. An
explicit `node_id` setting wins over it without changing it. Other parts of the node's identity (the
UUID an SMS gives it at registration) keep their own keys in the same file: writing one keeps the
others.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import uuid
from pathlib import Path

from spearlet.core.errors import StartError

IDENTITY = "identity.json"


class NodeIdentity:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / IDENTITY
        self._values = _read(self.path)

    def get(self, key: str) -> str:
        return self._values.get(key, "")

    def set(self, key: str, value: str) -> None:
        """Keep `key` = `value` (atomically: a crash leaves the old file or the new one)."""
        values = {**self._values, key: value}
        tmp = self.path.with_name(f".{IDENTITY}.{os.getpid()}")
        tmp.write_text(json.dumps(values, indent=2) + "\n")
        tmp.replace(self.path)
        self._values = values

    @property
    def node_id(self) -> str:
        """The node id kept here, made on first use."""
        node_id = self.get("node_id")
        if not node_id:
            node_id = f"{socket.gethostname()}-{secrets.token_hex(3)}"
            self.set("node_id", node_id)
        return node_id

    @property
    def sms_uuid(self) -> str:
        """The UUID this node registers with a SPEAR SMS under, made on first use (random: the
        node's address and name may change while it stays the same node)."""
        value = self.get("sms_uuid")
        if not value:
            value = str(uuid.uuid4())
            self.set("sms_uuid", value)
        return value


def _read(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        values = json.loads(text)
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise ValueError("expected an object of strings")
    except ValueError as exc:
        raise StartError(
            f"{path} is not a valid identity file ({exc}): repair it, or remove it to give the node a new id"
        ) from None
    return values
