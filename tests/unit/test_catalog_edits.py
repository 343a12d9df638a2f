"""Parsing and applying managed-catalog edits (pure)."""

from __future__ import annotations

import pytest

from server.domain.catalog import CatalogError, load_catalog
from server.domain.catalog_edits import UnknownGiftError, apply, parse_changes
from server.domain.limits import CATALOG_CHANGES_MAX, GIFT_NAME_LENGTH_MAX


@pytest.mark.parametrize(
    "changes",
    [
        None, [], {"op": "retire"}, [{"op": "drop", "id": "rose"}], [{"op": "retire"}],
        [{"op": "retire", "id": "ro se"}], [{"op": "reprice", "id": "rose"}],
        [{"op": "reprice", "id": "rose", "price_coins": 0}],
        [{"op": "reprice", "id": "rose", "price_coins": 1.5}],
        [{"op": "reprice", "id": "rose", "price_coins": 10**9}],
        [{"op": "reprice", "id": "rose", "price_coins": 2, "tier": 1}],
        [{"op": "update", "id": "rose"}], [{"op": "update", "id": "rose", "tier": 9}],
        [{"op": "update", "id": "rose", "name": "x" * (GIFT_NAME_LENGTH_MAX + 1)}],
        [{"op": "update", "id": "rose", "name": "bad\x00name"}],
        [{"op": "update", "id": "rose", "name": "   "}],
        [{"op": "update", "id": "rose", "animation": "../x"}],
        [{"op": "add", "gift": {"id": "new"}}],
        [{"op": "add", "gift": {"id": "new", "price_coins": 5, "emoji": "x"}}],
        [{"op": "retire", "id": "rose"}] * (CATALOG_CHANGES_MAX + 1),
    ],
)  # fmt: skip
def test_bad_changes_are_refused(changes: object) -> None:
    with pytest.raises(CatalogError):
        parse_changes(changes)


def test_strict_refuses_and_lenient_skips_what_does_not_fit() -> None:
    catalog = load_catalog()
    changes = parse_changes(
        [{"op": "retire", "id": "nope"}, {"op": "reprice", "id": "rose", "price_coins": 9}]
    )
    with pytest.raises(UnknownGiftError):
        apply(catalog, changes, strict=True)
    applied = apply(catalog, changes, strict=False)
    assert applied.catalog.prices()["rose"] == 9
    assert applied.skipped == ["no gift nope to retire"]
    assert catalog.prices()["rose"] == 1  # the input is not changed


def test_retiring_every_gift_is_refused() -> None:
    catalog = load_catalog()
    changes = parse_changes([{"op": "retire", "id": g.gift_id} for g in catalog])
    with pytest.raises(CatalogError):
        apply(catalog, changes, strict=False)
