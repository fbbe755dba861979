"""Error codes: the one enum and the README's Error codes section say the same."""

from __future__ import annotations

import re
from pathlib import Path

from spearlet.core.codes import ErrorCode

README = Path(__file__).resolve().parents[2] / "README.md"


def error_codes_section() -> str:
    return README.read_text().split("## Error codes", 1)[1].split("\n## ", 1)[0]


def test_every_code_of_the_readme_table_is_an_error_code() -> None:
    table = re.findall(r"^\| `([A-Z_]+)` \|", error_codes_section(), re.MULTILINE)
    assert table, "the README's Error codes table was not found"
    assert [code for code in table if code not in ErrorCode.__members__] == []


def test_every_error_code_is_documented_in_the_readme() -> None:
    section = error_codes_section()
    assert [code for code in ErrorCode if not re.search(rf"\b{code}\b", section)] == []
