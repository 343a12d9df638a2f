"""The gift catalog: the shipped default and every validation error of parse_catalog."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from server.domain.catalog import (
    TIER_MAX,
    TIER_MIN,
    CatalogError,
    Gift,
    load_catalog,
    parse_catalog,
)
from server.domain.limits import GIFT_COUNT_MAX, SEND_COINS_MAX
from server.protocol.messages import ProtocolError, SendGift, parse_message

PRICE_MAX = SEND_COINS_MAX // GIFT_COUNT_MAX


def _doc(*gifts: object, **top: object) -> bytes:
    return orjson.dumps({"version": 1, "gifts": list(gifts), **top})


def _gift(**fields: object) -> dict[str, object]:
    return {"id": "rose", "name": "Rose", "price_coins": 1, "animation": "rose", "tier": 1} | fields


# The default catalog


def test_default_catalog_loads() -> None:
    catalog = load_catalog()
    assert catalog.version >= 1
    assert len(catalog.gifts) >= 10
    assert all(gift_id == gift.gift_id for gift_id, gift in catalog.gifts.items())


def test_default_catalog_is_a_price_ladder_from_1_to_about_35000() -> None:
    prices = [gift.price_coins for gift in load_catalog()]
    assert prices == sorted(prices)
    assert prices[0] == 1
    assert 30_000 <= prices[-1] <= 40_000
    # A rung in every decade, so that every budget has something to send.
    for low in (1, 10, 100, 1_000, 10_000):
        assert any(low <= price < low * 10 for price in prices), low


def test_default_catalog_tiers_climb_with_price() -> None:
    tiers = [gift.tier for gift in load_catalog()]
    assert tiers == sorted(tiers)
    assert set(tiers) == set(range(TIER_MIN, TIER_MAX + 1))


def test_every_default_price_fits_the_largest_send() -> None:
    assert all(gift.price_coins * GIFT_COUNT_MAX <= SEND_COINS_MAX for gift in load_catalog())


def test_catalog_lookups() -> None:
    catalog = load_catalog()
    rose = catalog.get("rose")
    assert rose == Gift("rose", "Rose", 1, "rose", 1)
    assert catalog.get("no_such_gift") is None
    assert catalog.prices()["universe"] == 34_999
    assert rose.to_json() == {
        "id": "rose",
        "name": "Rose",
        "price_coins": 1,
        "animation": "rose",
        "tier": 1,
    }


def test_load_catalog_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_bytes(_doc(_gift(id="star", price_coins=7), version=3))
    catalog = load_catalog(path)
    assert catalog.version == 3 and catalog.prices() == {"star": 7}


# parse_catalog


def test_optional_fields_have_defaults() -> None:
    catalog = parse_catalog(orjson.dumps({"gifts": [{"id": "star", "price_coins": 7}]}))
    assert catalog.version == 1
    assert catalog.get("star") == Gift("star", "star", 7, "star", 1)


def test_the_largest_price_is_accepted() -> None:
    catalog = parse_catalog(_doc(_gift(price_coins=PRICE_MAX)))
    assert catalog.prices() == {"rose": PRICE_MAX}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[]", 'expected {"version": N, "gifts": [...]}'),
        (orjson.dumps({"version": 1}), 'expected {"version": N, "gifts": [...]}'),
        (orjson.dumps({"gifts": {"rose": 1}}), 'expected {"version": N, "gifts": [...]}'),
        (_doc(_gift(), version="1"), "version must be an integer"),
        (_doc(_gift(), version=1.0), "version must be an integer"),
        (_doc(), "the catalog has no gifts"),
        (_doc("rose"), "gift #0: expected an object"),
        (_doc(_gift(), ["star"]), "gift #1: expected an object"),
        (_doc({"price_coins": 1}), "gift #0: invalid id None"),
        (_doc(_gift(id="bad id")), "gift #0: invalid id 'bad id'"),
        (_doc(_gift(id="")), "gift #0: invalid id ''"),
        (_doc(_gift(id="x" * 65)), "gift #0: invalid id"),
        (_doc(_gift(id=7)), "gift #0: invalid id 7"),
        (_doc({"id": "rose"}), "gift rose: price_coins must be a positive integer"),
        (_doc(_gift(price_coins=0)), "gift rose: price_coins must be a positive integer"),
        (_doc(_gift(price_coins=-1)), "gift rose: price_coins must be a positive integer"),
        (_doc(_gift(price_coins=1.5)), "gift rose: price_coins must be a positive integer"),
        (_doc(_gift(price_coins=1.0)), "gift rose: price_coins must be a positive integer"),
        (_doc(_gift(price_coins="5")), "gift rose: price_coins must be a positive integer"),
        (_doc(_gift(price_coins=True)), "gift rose: price_coins must be a positive integer"),
        (
            _doc(_gift(price_coins=PRICE_MAX + 1)),
            "gift rose: price_coins must be a positive integer",
        ),
        (_doc(_gift(tier=0)), f"gift rose: tier must be {TIER_MIN}..{TIER_MAX}"),
        (_doc(_gift(tier=TIER_MAX + 1)), f"gift rose: tier must be {TIER_MIN}..{TIER_MAX}"),
        (_doc(_gift(tier="1")), f"gift rose: tier must be {TIER_MIN}..{TIER_MAX}"),
        (_doc(_gift(tier=True)), f"gift rose: tier must be {TIER_MIN}..{TIER_MAX}"),
        (_doc(_gift(name=5)), "gift rose: name and animation must be strings"),
        (_doc(_gift(animation=None)), "gift rose: name and animation must be strings"),
        (_doc(_gift(), _gift(price_coins=2)), "gift rose: duplicate id"),
    ],
)
def test_invalid_catalogs_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(CatalogError) as refused:
        parse_catalog(data)
    assert message in str(refused.value)


def test_catalog_error_is_a_value_error() -> None:
    assert issubclass(CatalogError, ValueError)


def test_send_gift_may_name_the_catalog_version_it_was_shown() -> None:
    doc = {"type": "send_gift", "id": "g1", "gift": "rose"}
    assert parse_message(doc) == SendGift("g1", "rose", 1, None)
    assert parse_message({**doc, "catalog_version": 3}) == SendGift("g1", "rose", 1, 3)
    for bad in (0, -1, True, "3", 1.0, 2**53):
        with pytest.raises(ProtocolError) as refused:
            parse_message({**doc, "catalog_version": bad})
        assert refused.value.client_id == "g1"


def test_a_catalog_document_leaves_out_the_file_version() -> None:
    one = parse_catalog(b'{"version": 1, "gifts": [{"id": "rose", "price_coins": 1}]}')
    seven = parse_catalog(b'{"version": 7, "gifts": [{"id": "rose", "price_coins": 1}]}')
    dearer = parse_catalog(b'{"version": 1, "gifts": [{"id": "rose", "price_coins": 2}]}')
    assert one.same_gifts(seven) and not one.same_gifts(dearer)
