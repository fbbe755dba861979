"""The committed stubs are exactly what the .proto generates, and the wire contract is intact."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from spearlet.api.grpc import spearlet_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]
GENERATED = ROOT / "src" / "spearlet" / "api" / "grpc"
SMS = ROOT / "src" / "spearlet" / "sms"
# The seed-era contract's tables, copied as data: every message, field by number, name and type.
CONTRACT_FILE = Path(__file__).with_name("spear_contract.md")
FIRST_EXTENSION_NUMBER = 100


def test_regenerating_the_stubs_changes_nothing(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    fresh = tmp_path / "spearlet" / "api" / "grpc"
    names = [
        *("spearlet_pb2.py", "spearlet_pb2.pyi", "spearlet_pb2_grpc.py"),
        *("spear_head_pb2.py", "spear_head_pb2.pyi", "spear_head_pb2_grpc.py"),
    ]
    for name in ("sms_pb2.py", "sms_pb2.pyi", "sms_pb2_grpc.py"):
        assert (tmp_path / "spearlet" / "sms" / name).read_bytes() == (SMS / name).read_bytes(), (
            f"{name} is stale: run `make proto` and commit"
        )
    for name in names:
        assert (fresh / name).read_bytes() == (GENERATED / name).read_bytes(), (
            f"{name} is stale: run `make proto` and commit"
        )


def _table(section: str) -> dict[str, str]:
    """The rows of one table of the contract file (below its header and separator): first cell -> second."""
    text = CONTRACT_FILE.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip().strip("|") for line in text.splitlines() if line.startswith("|")][2:]
    cells = [[cell.strip() for cell in line.split("|")] for line in lines]
    return {first: second for first, second in cells}


def _contract_messages() -> dict[str, dict[int, str]]:
    messages = {}
    for message, fields in _table("Messages").items():
        parsed = {}
        for field in fields.split(", "):
            m = re.fullmatch(r"(\d+) (\w+): (.+)", field)
            assert m, f"{message}: cannot read {field!r} in {CONTRACT_FILE.name}"
            parsed[int(m.group(1))] = f"{m.group(2)}: {m.group(3)}"
        messages[message] = parsed
    return messages


CONTRACT = _contract_messages()
_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BOOL: "bool", FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_DOUBLE: "double", FieldDescriptor.TYPE_BYTES: "bytes",
}  # fmt: skip


def _type_of(field: FieldDescriptor) -> str:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return f"map<{_type_of(key)},{_type_of(value)}>"
    if field.message_type is not None:
        base = field.message_type.full_name.removeprefix("spearlet.")
    elif field.enum_type is not None:
        base = field.enum_type.full_name.removeprefix("spearlet.")
    else:
        base = _SCALARS[field.type]
    return f"repeated {base}" if field.is_repeated else base


def test_the_contract_file_holds_every_message_of_function_service() -> None:
    assert len(CONTRACT) == 29
    service = pb.DESCRIPTOR.services_by_name["FunctionService"]
    used = {m.input_type.name for m in service.methods} | {m.output_type.name for m in service.methods}
    assert used <= set(CONTRACT)


@pytest.mark.parametrize("message", sorted(CONTRACT))
def test_field_names_numbers_and_types_match_the_spear_contract(message: str) -> None:
    assert message in pb.DESCRIPTOR.message_types_by_name, f"message {message} is missing"
    descriptor = pb.DESCRIPTOR.message_types_by_name[message]
    actual = {f.number: f"{f.name}: {_type_of(f)}" for f in descriptor.fields if f.number < FIRST_EXTENSION_NUMBER}
    assert actual == CONTRACT[message]


@pytest.mark.parametrize("enum", sorted(_table("Enums")))
def test_enum_names_and_numbers_match_the_spear_contract(enum: str) -> None:
    expected = [tuple(v.rsplit(" ", 1)) for v in _table("Enums")[enum].split(", ")]
    actual = [(v.name, str(v.number)) for v in pb.DESCRIPTOR.enum_types_by_name[enum].values]
    assert actual == expected


def test_function_service_has_the_spear_methods_with_their_types() -> None:
    service = pb.DESCRIPTOR.services_by_name["FunctionService"]
    actual = {
        m.name: f"{m.input_type.name} -> {'stream ' if m.server_streaming else ''}{m.output_type.name}"
        for m in service.methods
    }
    assert actual == _table("RPCs of FunctionService")
