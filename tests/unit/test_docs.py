"""The docs match the code: every setting, error code and close code is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.domain.errors import ErrorCode
from server.protocol.close_codes import CloseCode
from server.settings import settings_table
from server.web.errors import HTTP_STATUS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("row", settings_table(), ids=lambda row: row[0])
def test_readme_lists_every_setting_with_its_default(row: tuple[str, str, str]) -> None:
    name, default, _ = row
    line = next(
        (ln for ln in (ROOT / "README.md").read_text().splitlines() if f"`{name}`" in ln), ""
    )
    assert line, f"{name} is missing from the README's settings table"
    assert not default or f"`{default}`" in line


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_protocol_doc_lists_every_error_code(code: ErrorCode) -> None:
    assert f"`{code.value}`" in (ROOT / "docs" / "protocol.md").read_text()


@pytest.mark.parametrize("code", list(CloseCode), ids=lambda c: c.name)
def test_protocol_doc_lists_every_close_code(code: CloseCode) -> None:
    assert str(code.value) in (ROOT / "docs" / "protocol.md").read_text()


@pytest.mark.parametrize("code", list(HTTP_STATUS), ids=str)
def test_protocol_doc_gives_each_code_its_http_status(code: ErrorCode) -> None:
    rows = [
        line
        for line in (ROOT / "docs" / "protocol.md").read_text().splitlines()
        if line.startswith(f"| {HTTP_STATUS[code]} |")
    ]
    assert any(f"`{code.value}`" in row for row in rows), f"{code} is not under {HTTP_STATUS[code]}"
