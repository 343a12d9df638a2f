"""The managed catalog against a real Redis: edits compare-and-set on their version,
schedules published by publish_catalog.lua (mode due) exactly once however many processes
try, and gifts racing a reprice never charged a price the client was not shown.

The scripts read the clock from Redis: a test makes an edit due by moving its stored time
(``{catalog}:due``) into the past, as the clock would have.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from server.domain.catalog import CatalogError, load_catalog
from server.domain.catalog_edits import CatalogFullError, UnknownGiftError, parse_changes
from server.domain.errors import ErrorCode, LedgerRefusal
from server.domain.limits import CATALOG_SCHEDULED_MAX, Limits
from server.ledger.catalog_schedule import CatalogSchedule, redis_now_ms
from server.ledger.catalogs import ScheduledEdit
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.receipts import GiftReceipt
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, snapshot

LIMITS = Limits(gifts_per_s_max=100_000, gift_burst_max=100_000)
HOUR_MS = 3_600_000


def _reprice(gift_id: str, price: int) -> list[dict[str, object]]:
    return [{"op": "reprice", "id": gift_id, "price_coins": price}]


async def _edit_later(ledger: Ledger, edit_id: str, changes: list[dict[str, object]]) -> None:
    now = await redis_now_ms(ledger.redis)
    edit = ScheduledEdit(edit_id, now + HOUR_MS, parse_changes(changes), "admin")
    assert await ledger.catalogs.schedule(edit)


async def _make_due(redis: Redis, keys: Keys, edit_id: str) -> None:
    await redis.zadd(keys.catalog_due(), {edit_id: 1})


async def _gift(ledger: Ledger, client_id: str, version: int, gift: str = "rose") -> GiftReceipt:
    return await ledger.send_gift(
        client_id=client_id, sender_id="alice", sender_name="Alice", stream_id=STREAM,
        creator_id=CREATOR, gift_id=gift, count=1, catalog_version=version,
    )  # fmt: skip


async def test_add_reprice_update_retire_make_one_new_version(ledger: Ledger) -> None:
    changes = parse_changes(
        [
            {"op": "add", "gift": {"id": "comet", "name": "Comet", "price_coins": 42, "tier": 2}},
            {"op": "reprice", "id": "rose", "price_coins": 3},
            {"op": "update", "id": "heart", "name": "Big Heart", "tier": 2},
            {"op": "retire", "id": "universe"},
        ]
    )
    published = await ledger.catalogs.edit(changes, expected_version=1)
    assert (published.version, published.written) == (2, True)
    current = await ledger.catalogs.current()
    assert current is not None and current.version == 2
    assert current.prices()["comet"] == 42 and current.prices()["rose"] == 3
    heart = current.get("heart")
    assert heart is not None and (heart.name, heart.tier, heart.price_coins) == ("Big Heart", 2, 1)
    assert current.get("universe") is None
    assert (await ledger.catalogs.read(1)).prices()["rose"] == 1  # version 1 is kept


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        (_reprice("nope", 5), UnknownGiftError),
        ([{"op": "retire", "id": "nope"}], UnknownGiftError),
        ([{"op": "add", "gift": {"id": "rose", "price_coins": 2}}], CatalogError),
    ],
)
async def test_an_edit_that_does_not_fit_changes_nothing(
    ledger: Ledger, redis: Redis, keys: Keys, changes: list[dict[str, object]], error: type
) -> None:
    before = await snapshot(redis, keys)
    with pytest.raises(error):
        await ledger.catalogs.edit(parse_changes(changes), expected_version=1)
    assert await snapshot(redis, keys) == before


async def test_an_edit_from_a_stale_version_is_refused(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await ledger.catalogs.edit(parse_changes(_reprice("rose", 2)), expected_version=1)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.catalogs.edit(parse_changes(_reprice("rose", 9)), expected_version=1)
    assert refused.value.code is ErrorCode.CATALOG_CHANGED
    assert refused.value.detail == {"catalog_version": 2}
    assert await snapshot(redis, keys) == before


async def test_the_catalog_is_bounded(ledger: Ledger) -> None:
    adds = [{"op": "add", "gift": {"id": f"g{i}", "price_coins": 1 + i}} for i in range(64)]
    for _ in range(3):  # 19 built-in + 3 x 64 = 211 gifts: fits
        version = (await ledger.catalogs.current()).version  # type: ignore[union-attr]
        await ledger.catalogs.edit(parse_changes(adds), expected_version=version)
        adds = [
            {"op": "add", "gift": {"id": f"x{version}{i}", "price_coins": 5}} for i in range(64)
        ]
    with pytest.raises(CatalogFullError):
        version = (await ledger.catalogs.current()).version  # type: ignore[union-attr]
        await ledger.catalogs.edit(parse_changes(adds), expected_version=version)


async def test_a_reprice_racing_gifts_never_charges_an_unshown_price(ledger: Ledger) -> None:
    # 200 gifts of clients shown version 1 (rose: 1 coin), and in their midst the rose
    # repriced to 7. Every gift is either charged 1 coin (it ran before the edit) or
    # refused with catalog_changed; none is charged 7.
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="p", user_id="alice", coins=10_000)

    async def reprice() -> int:
        await asyncio.sleep(0)
        edit = parse_changes(_reprice("rose", 7))
        return (await ledger.catalogs.edit(edit, expected_version=1)).version

    calls = [_gift(ledger, f"r{i}", version=1) for i in range(100)] + [reprice()]
    calls += [_gift(ledger, f"r{i}", version=1) for i in range(100, 200)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[100] == 2
    gifts = results[:100] + results[101:]
    charged = [r for r in gifts if isinstance(r, GiftReceipt)]
    refused = [r for r in gifts if not isinstance(r, GiftReceipt)]
    assert all(r.coins == 1 for r in charged)
    assert all(
        isinstance(r, LedgerRefusal) and r.code is ErrorCode.CATALOG_CHANGED for r in refused
    )
    with pytest.raises(LedgerRefusal):  # shown the old price after the edit: refused
        await _gift(ledger, "late", version=1)
    after = await _gift(ledger, "new", version=2)  # shown the new price: charged it
    assert after.coins == 7
    assert (await ledger.balance("alice")).coins == 10_000 - len(charged) - 7
    await assert_books_reconcile(ledger)


async def test_a_schedule_is_checked_bounded_and_safe_to_retry(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    now = await redis_now_ms(redis)
    edit = ScheduledEdit("e1", now + HOUR_MS, parse_changes(_reprice("rose", 2)), "admin")
    assert await ledger.catalogs.schedule(edit)
    assert not await ledger.catalogs.schedule(edit)  # the same again: a replay
    other = ScheduledEdit("e1", now + HOUR_MS, parse_changes(_reprice("rose", 3)), "admin")
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.catalogs.schedule(other)
    assert refused.value.code is ErrorCode.DUPLICATE_MISMATCH
    with pytest.raises(UnknownGiftError):
        bad = ScheduledEdit("e2", now + HOUR_MS, parse_changes(_reprice("nope", 3)), "admin")
        await ledger.catalogs.schedule(bad)
    for at in (now - 1, now + 400 * 86_400_000):  # past, or too far ahead
        with pytest.raises(LedgerRefusal) as refused:
            await ledger.catalogs.schedule(
                ScheduledEdit("e3", at, parse_changes(_reprice("rose", 3)), "admin")
            )
        assert refused.value.code is ErrorCode.INVALID_REQUEST
    for i in range(CATALOG_SCHEDULED_MAX - 1):
        await _edit_later(ledger, f"f{i}", _reprice("rose", 2))
    with pytest.raises(LedgerRefusal) as refused:
        await _edit_later(ledger, "full", _reprice("rose", 2))
    assert refused.value.code is ErrorCode.CATALOG_LIMIT
    assert refused.value.detail == {"scheduled_max": CATALOG_SCHEDULED_MAX}
    assert (await ledger.catalogs.scheduled())[0].edit_id == "e1"


async def test_an_edit_is_not_published_before_its_time(ledger: Ledger) -> None:
    await _edit_later(ledger, "later", _reprice("rose", 2))
    assert await ledger.catalogs.publish_due("later") is None
    assert (await ledger.catalogs.version()) == 1


async def test_two_processes_publishing_a_schedule_write_it_once(
    redis_server: RedisProcess, keys: Keys
) -> None:
    clients = [Redis.from_url(redis_server.url) for _ in range(6)]
    try:
        ledgers = [Ledger(client, keys=keys, limits=LIMITS) for client in clients]
        for ledger in ledgers:
            await ledger.prepare(load_catalog())
        await _edit_later(ledgers[0], "at-six", _reprice("rose", 5))
        await _make_due(clients[0], keys, "at-six")
        schedules = [CatalogSchedule(ledger.catalogs, interval_s=1.0) for ledger in ledgers]
        results = await asyncio.gather(*(s.run_once() for s in schedules))
        written = [p for p, _ in results if p is not None and p.written]
        assert len(written) == 1 and written[0].version == 2
        assert await ledgers[0].catalogs.version() == 2
        assert await ledgers[0].catalogs.scheduled() == []
        # Later turns find nothing to do.
        assert (await schedules[1].run_once())[0] is None
    finally:
        for client in clients:
            await client.aclose()


async def test_a_scheduled_edit_applies_to_the_version_current_at_its_time(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    changes = [*_reprice("rose", 5), {"op": "retire", "id": "heart"}]
    await _edit_later(ledger, "e1", changes)
    # Meanwhile another edit retires the heart and reprices the cap.
    await ledger.catalogs.edit(
        parse_changes([{"op": "retire", "id": "heart"}, *_reprice("cap", 77)]),
        expected_version=1,
    )
    await _make_due(redis, keys, "e1")
    published = await ledger.catalogs.publish_due("e1")
    assert published is not None and published.version == 3
    current = await ledger.catalogs.current()
    assert current is not None
    assert (current.prices()["rose"], current.prices()["cap"]) == (5, 77)
    assert current.get("heart") is None  # retired once, the scheduled retire skipped


async def test_a_cancelled_edit_is_never_published(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _edit_later(ledger, "e1", _reprice("rose", 5))
    await ledger.catalogs.cancel("e1")
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.catalogs.cancel("e1")
    assert refused.value.code is ErrorCode.NOT_FOUND
    await redis.zadd(keys.catalog_due(), {"e1": 1})  # a stale time left behind: harmless
    assert await ledger.catalogs.publish_due("e1") is None
    assert await ledger.catalogs.version() == 1
