"""A node's identity: a default id made once per data dir and kept; an explicit one wins."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest

from spearlet.config import Settings
from spearlet.core.errors import StartError
from spearlet.node import Node
from spearlet.node.identity import NodeIdentity


def test_the_default_id_is_made_once_per_data_dir_and_kept(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = NodeIdentity(tmp_path / "a").node_id
    assert first.startswith(f"{socket.gethostname()}-") and len(first) > len(socket.gethostname()) + 1
    assert NodeIdentity(tmp_path / "a").node_id == first  # a restart reads it back
    (tmp_path / "b").mkdir()
    assert NodeIdentity(tmp_path / "b").node_id != first  # another data dir, another node


def test_other_keys_live_beside_the_node_id(tmp_path: Path) -> None:
    identity = NodeIdentity(tmp_path)
    node_id = identity.node_id
    identity.set("sms_uuid", "6a1f0c3e-0000-4000-8000-000000000001")
    again = NodeIdentity(tmp_path)
    assert again.node_id == node_id and again.get("sms_uuid") == "6a1f0c3e-0000-4000-8000-000000000001"


def test_a_damaged_identity_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "identity.json").write_text("{not json")
    with pytest.raises(StartError, match=r"identity\.json is not a valid identity file"):
        NodeIdentity(tmp_path)


async def test_an_explicit_node_id_wins_and_leaves_the_kept_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    default = Node(Settings(data_dir=data))
    kept = default.settings.node_id
    await default.stop()
    explicit = Node(Settings(data_dir=data, node_id="edge-7"))
    try:
        assert explicit.settings.node_id == "edge-7"
    finally:
        await explicit.stop()
    assert json.loads((data / "identity.json").read_text())["node_id"] == kept


def test_the_sms_uuid_is_a_uuid_made_once_and_kept_beside_the_node_id(tmp_path: Path) -> None:
    identity = NodeIdentity(tmp_path)
    node_id = identity.node_id
    made = identity.sms_uuid
    assert str(uuid.UUID(made)) == made
    again = NodeIdentity(tmp_path)
    assert again.sms_uuid == made and again.node_id == node_id
    (tmp_path / "other").mkdir()
    assert NodeIdentity(tmp_path / "other").sms_uuid != made
