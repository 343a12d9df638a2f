"""Edits of the managed catalog: add, reprice and retire gifts. Pure: no I/O.

An edit is a list of changes applied in order to one catalog version; the result is the
next version (``server/ledger/catalogs.py`` writes it, compare-and-set on the version it
was made from). ``apply`` in ``strict`` mode (an edit made now, or a schedule accepted
now) refuses a change that does not fit the catalog; a scheduled edit applied later, to
whatever version is current then, skips such changes instead and says which
(``Applied.skipped``), because nobody is there to be told.

Changes (JSON, ``docs/protocol.md``):

- ``{"op": "add", "gift": {id, name?, price_coins, animation?, tier?}}``: a new gift
  (strict: its id must be new).
- ``{"op": "reprice", "id": ID, "price_coins": N}``: a new price for a gift.
- ``{"op": "update", "id": ID, "name"?, "animation"?, "tier"?, "price_coins"?}``: any of
  its fields.
- ``{"op": "retire", "id": ID}``: the gift is gone from the next version (clients are sent
  the new catalog; a gift already sent keeps its name in its events' display fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.domain.accounts import is_valid_id
from server.domain.catalog import Catalog, CatalogError, Gift, _parse_gift
from server.domain.limits import CATALOG_CHANGES_MAX, CATALOG_GIFTS_MAX

OPS = ("add", "reprice", "update", "retire")
_FIELDS = {
    "add": {"op", "gift"},
    "reprice": {"op", "id", "price_coins"},
    "update": {"op", "id", "name", "animation", "tier", "price_coins"},
    "retire": {"op", "id"},
}


class UnknownGiftError(CatalogError):
    """A change names a gift the catalog does not hold."""


class CatalogFullError(CatalogError):
    """The edit would pass ``CATALOG_GIFTS_MAX``."""


@dataclass(frozen=True, slots=True)
class Change:
    op: str
    gift_id: str
    fields: dict[str, Any]
    """``add``: the whole gift; ``reprice`` / ``update``: the fields to change."""

    def to_json(self) -> dict[str, Any]:
        if self.op == "add":
            return {"op": "add", "gift": {"id": self.gift_id, **self.fields}}
        return {"op": self.op, "id": self.gift_id, **self.fields}


@dataclass(frozen=True, slots=True)
class Applied:
    catalog: Catalog
    skipped: list[str]
    """Changes that did not fit (lenient mode only), one line each."""


def parse_changes(raw: object) -> list[Change]:
    """Validate an edit's ``changes``; raise ``CatalogError`` naming the first bad one."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= CATALOG_CHANGES_MAX:
        raise CatalogError(f"changes must be a list of 1..{CATALOG_CHANGES_MAX} changes")
    return [_parse_change(i, item) for i, item in enumerate(raw)]


def _parse_change(index: int, item: object) -> Change:
    if not isinstance(item, dict) or item.get("op") not in OPS:
        raise CatalogError(f"change #{index}: op must be one of {', '.join(OPS)}")
    op = str(item["op"])
    unknown = set(item) - _FIELDS[op]
    if unknown:
        raise CatalogError(f"change #{index}: unknown field {sorted(unknown)[0]!r}"[:200])
    if op == "add":
        gift = _parse_gift(index, item.get("gift"))
        fields = gift.to_json()
        del fields["id"]
        return Change(op, gift.gift_id, fields)
    gift_id = item.get("id")
    if not is_valid_id(gift_id):
        raise CatalogError(f"change #{index}: id must be a gift id")
    fields = {k: v for k, v in item.items() if k not in ("op", "id")}
    if op == "reprice" and "price_coins" not in fields:
        raise CatalogError(f"change #{index}: reprice needs price_coins")
    if op == "update" and not fields:
        raise CatalogError(f"change #{index}: update needs a field to change")
    # Validate the fields as a gift would be: the same bounds as a catalog file.
    probe = {"id": gift_id, "price_coins": 1, **fields}
    _parse_gift(index, probe)
    return Change(op, gift_id, fields)


def apply(catalog: Catalog, changes: list[Change], *, strict: bool) -> Applied:
    """The catalog after ``changes`` (its ``version`` is the one it was made from)."""
    gifts: dict[str, Gift] = dict(catalog.gifts)
    skipped: list[str] = []

    def refuse(error: CatalogError) -> None:
        if strict:
            raise error
        skipped.append(str(error))

    for change in changes:
        held = gifts.get(change.gift_id)
        if change.op == "add":
            if held is not None:
                refuse(CatalogError(f"gift {change.gift_id} exists: reprice or update it"))
                continue
            gifts[change.gift_id] = _parse_gift(0, {"id": change.gift_id, **change.fields})
        elif held is None:
            refuse(UnknownGiftError(f"no gift {change.gift_id} to {change.op}"))
        elif change.op == "retire":
            del gifts[change.gift_id]
        else:
            merged = {**held.to_json(), **change.fields}
            gifts[change.gift_id] = _parse_gift(0, merged)
    if len(gifts) > CATALOG_GIFTS_MAX:
        raise CatalogFullError(f"more than {CATALOG_GIFTS_MAX} gifts")
    if not gifts:
        raise CatalogError("the catalog would have no gifts")
    return Applied(Catalog(version=catalog.version, gifts=gifts), skipped)
