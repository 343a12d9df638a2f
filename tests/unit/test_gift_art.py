"""The gift artwork shipped with the demo pages: one small, self-contained SVG per gift."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from server.domain.catalog import load_catalog

STATIC = Path(__file__).resolve().parents[2] / "client_demo" / "static"
ART_BYTES_MAX = 3_000  # each file; all of them together stay a few tens of KiB
SVG = "{http://www.w3.org/2000/svg}"
ICONS = ["coin", "diamond", "eye", "gift"]  # gift: the picture of a gift with no art yet


def _art(path: Path) -> ET.Element:
    assert path.is_file(), f"{path.relative_to(STATIC)} is missing"
    assert path.stat().st_size <= ART_BYTES_MAX, f"{path.name} is over {ART_BYTES_MAX} bytes"
    return ET.fromstring(path.read_bytes())


@pytest.mark.parametrize("gift_id", sorted(load_catalog().gifts))
def test_every_catalog_gift_has_its_own_artwork(gift_id: str) -> None:
    root = _art(STATIC / "gifts" / f"{gift_id}.svg")
    assert root.tag == f"{SVG}svg" and root.get("viewBox") == "0 0 64 64"


@pytest.mark.parametrize("path", sorted(STATIC.glob("*/*.svg")), ids=lambda p: p.name)
def test_artwork_is_self_contained(path: Path) -> None:
    # Pictures only: no script, no text (it would need a font), nothing fetched from elsewhere.
    for element in _art(path).iter():
        assert element.tag.removeprefix(SVG) not in {"script", "text", "image", "foreignObject"}
        for name, value in element.attrib.items():
            assert not name.startswith("on"), (path.name, name)
            assert "http" not in value.replace("http://www.w3.org/2000/svg", ""), (path.name, name)


def test_every_gift_svg_is_a_catalog_gift_and_the_icons_exist() -> None:
    gift_ids = set(load_catalog().gifts)
    assert {p.stem for p in (STATIC / "gifts").glob("*.svg")} == gift_ids
    for icon in ICONS:
        _art(STATIC / "icons" / f"{icon}.svg")
