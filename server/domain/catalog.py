"""The gift catalog: shipped as package data, overridable by a file named in the settings.

The catalog a server serves and charges is the one in Redis (``server/ledger/catalogs.py``),
numbered there; a file (or this built-in default) only seeds an empty Redis, or becomes a
new version by ``giftwire catalog push``. The ``version`` field of a file is informative.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson

from server.domain.accounts import is_valid_id
from server.domain.limits import (
    CATALOG_GIFTS_MAX,
    GIFT_COUNT_MAX,
    GIFT_NAME_LENGTH_MAX,
    SEND_COINS_MAX,
)

PRICE_COINS_MAX = SEND_COINS_MAX // GIFT_COUNT_MAX
"""The largest gift times the largest count must still fit in one amount."""

TIER_MIN = 1
TIER_MAX = 4
"""Tiers 1–2 play in the strip with combo counters; 3–4 take the full screen."""


class CatalogError(ValueError):
    """The catalog file is invalid; the message says which entry and why."""


@dataclass(frozen=True, slots=True)
class Gift:
    gift_id: str
    name: str
    price_coins: int
    animation: str
    tier: int

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.gift_id,
            "name": self.name,
            "price_coins": self.price_coins,
            "animation": self.animation,
            "tier": self.tier,
        }


@dataclass(frozen=True, slots=True)
class Catalog:
    version: int
    gifts: Mapping[str, Gift]

    def __iter__(self) -> Iterator[Gift]:
        return iter(self.gifts.values())

    def get(self, gift_id: str) -> Gift | None:
        return self.gifts.get(gift_id)

    def prices(self) -> dict[str, int]:
        return {gift.gift_id: gift.price_coins for gift in self}

    def document(self) -> bytes:
        """The gifts as stored in Redis: canonical JSON without the version, so that two
        files with the same gifts in the same order are the same catalog."""
        return orjson.dumps({"gifts": [gift.to_json() for gift in self]})

    def same_gifts(self, other: Catalog) -> bool:
        return self.document() == other.document()


def _parse_gift(index: int, raw: object) -> Gift:
    if not isinstance(raw, dict):
        raise CatalogError(f"gift #{index}: expected an object")
    gift_id = raw.get("id")
    if not is_valid_id(gift_id):
        raise CatalogError(f"gift #{index}: invalid id {gift_id!r}")
    unknown = set(raw) - {"id", "name", "price_coins", "animation", "tier"}
    if unknown:
        raise CatalogError(f"gift {gift_id}: unknown field {sorted(unknown)[0]!r}"[:200])
    price = raw.get("price_coins")
    if type(price) is not int or not 1 <= price <= PRICE_COINS_MAX:
        raise CatalogError(
            f"gift {gift_id}: price_coins must be a positive integer (at most {PRICE_COINS_MAX})"
        )
    tier = raw.get("tier", 1)
    if type(tier) is not int or not TIER_MIN <= tier <= TIER_MAX:
        raise CatalogError(f"gift {gift_id}: tier must be {TIER_MIN}..{TIER_MAX}")
    name = raw.get("name", gift_id)
    animation = raw.get("animation", gift_id)
    if not isinstance(name, str) or not isinstance(animation, str):
        raise CatalogError(f"gift {gift_id}: name and animation must be strings")
    if not (0 < len(name) <= GIFT_NAME_LENGTH_MAX and name.isprintable() and name.strip()):
        raise CatalogError(f"gift {gift_id}: name must be 1-{GIFT_NAME_LENGTH_MAX} printable")
    if not is_valid_id(animation):
        raise CatalogError(f"gift {gift_id}: animation must be an id (1-64 of A-Za-z0-9_.:-)")
    return Gift(gift_id, name, price, animation, tier)


def parse_catalog(data: bytes) -> Catalog:
    """Parse and validate a catalog document (JSON)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("gifts"), list):
        raise CatalogError('expected {"version": N, "gifts": [...]}')
    version = doc.get("version", 1)
    if type(version) is not int:
        raise CatalogError("version must be an integer")
    if len(doc["gifts"]) > CATALOG_GIFTS_MAX:
        raise CatalogError(f"more than {CATALOG_GIFTS_MAX} gifts")
    gifts: dict[str, Gift] = {}
    for index, raw in enumerate(doc["gifts"]):
        gift = _parse_gift(index, raw)
        if gift.gift_id in gifts:
            raise CatalogError(f"gift {gift.gift_id}: duplicate id")
        gifts[gift.gift_id] = gift
    if not gifts:
        raise CatalogError("the catalog has no gifts")
    return Catalog(version=version, gifts=gifts)


def load_catalog(path: Path | None = None) -> Catalog:
    """Load the catalog from ``path``, or the default one shipped with giftwire."""
    if path is None:
        data = resources.files("server.domain").joinpath("data/catalog.json").read_bytes()
    else:
        data = path.read_bytes()
    return parse_catalog(data)
