"""The payout hold (``_hold.lua`` in send_gift, cash_out and refund) against a real Redis.

Time: the scripts read Redis' clock (``TIME``) and nothing else. Most tests move the stored
days back (``_age``), exactly where the clock would have taken them, as the daily-cap tests
do; one lets the real clock run with a one-second hold day (``payout_hold_day_s``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import cast

import pytest
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.limits import Limits
from server.ledger.guests import ALL_GUESTS
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.reconcile import reconcile
from server.record.archiver import Archiver, ArchiverConfig
from server.record.connection import RecordPool
from server.record.history import wallet_history
from server.record.reconcile import reconcile_across
from server.record.statements import creator_statement, parse_period
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, gift, snapshot

HOLD_DAYS = 7
HELD = Limits(
    gifts_per_s_max=100_000, gift_burst_max=100_000, cashout_diamonds_min=1,
    payout_hold_days=HOLD_DAYS,
)  # fmt: skip


@pytest.fixture
async def held(redis: Redis, keys: Keys) -> Ledger:
    ledger = Ledger(redis, keys=keys, limits=HELD)
    await ledger.prepare(load_catalog())
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    return ledger


async def _age(redis: Redis, keys: Keys, days: int) -> None:
    """Move every stored hold day back by ``days``: as if the clock had moved on by them."""
    async for key in redis.scan_iter(match=keys.account_pattern()):
        day = await redis.hget(key, "hold_day")
        if day is not None:
            await redis.hset(key, "hold_day", int(day) - days)
    async for key in redis.scan_iter(match=f"{keys.prefix}{{u:*}}:held"):
        fields = cast(dict[bytes, bytes], await redis.hgetall(key))
        await redis.delete(key)
        moved: dict[str, str] = {}
        for name, value in fields.items():
            if name == b"@day":
                moved["@day"] = str(int(value) - days)
            else:
                creator, day, share = name.decode().split("|")
                moved[f"{creator}|{int(day) - days}|{share}"] = value.decode()
        await redis.hset(key, mapping=moved)  # type: ignore[arg-type]


async def _earn(ledger: Ledger, buyer: str = "fan", coins: int = 10_000, tag: str = "") -> None:
    """``buyer`` buys ``coins`` and gifts interstellars (10,000 coins: 5,000 diamonds each)."""
    await ledger.top_up(payment_id=f"pay-{buyer}{tag}", user_id=buyer, coins=coins)
    await gift(ledger, f"g-{buyer}{tag}", sender=buyer, gift_id="interstellar",
               count=coins // 10_000)  # fmt: skip


async def test_gift_diamonds_are_held_not_withdrawable(
    held: Ledger, redis: Redis, keys: Keys
) -> None:
    await _earn(held)
    balance = await held.balance(CREATOR)
    assert (balance.diamonds, balance.held_diamonds, balance.withdrawable_diamonds) == (
        5_000, 5_000, 0,
    )  # fmt: skip
    assert balance.next_release_ms > 0
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await held.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1)
    assert refused.value.code is ErrorCode.FUNDS_HELD
    assert refused.value.detail is not None
    assert refused.value.detail["withdrawable"] == 0
    assert refused.value.detail["held"] == 5_000
    assert refused.value.detail["next_release_ms"] == balance.next_release_ms
    assert await snapshot(redis, keys) == before
    # More than the whole balance is still insufficient_funds.
    with pytest.raises(LedgerRefusal) as refused:
        await held.cash_out(client_id="c2", creator_id=CREATOR, diamonds=5_001)
    assert refused.value.code is ErrorCode.INSUFFICIENT_FUNDS
    await assert_books_reconcile(held)


async def test_diamonds_mature_after_the_hold_and_not_a_day_before(
    held: Ledger, redis: Redis, keys: Keys
) -> None:
    await _earn(held)
    await _age(redis, keys, HOLD_DAYS)  # the last day of the hold
    assert (await held.balance(CREATOR)).withdrawable_diamonds == 0
    with pytest.raises(LedgerRefusal, match="funds_held"):
        await held.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1)
    await _age(redis, keys, 1)
    await _earn(held, tag="2")  # a newer gift stays held
    balance = await held.balance(CREATOR)
    assert (balance.diamonds, balance.held_diamonds, balance.withdrawable_diamonds) == (
        10_000, 5_000, 5_000,
    )  # fmt: skip
    with pytest.raises(LedgerRefusal, match="funds_held"):
        await held.cash_out(client_id="c1", creator_id=CREATOR, diamonds=5_001)
    receipt = await held.cash_out(client_id="c2", creator_id=CREATOR, diamonds=5_000)
    assert receipt.balance == 5_000
    assert (await held.balance(CREATOR)).held_diamonds == 5_000
    await assert_books_reconcile(held)


async def test_the_real_clock_releases_the_hold(redis: Redis, keys: Keys) -> None:
    # Hold days of one second: the gift is held for 3 whole "days" after the one it was
    # made in, so a cash-out right after it is refused unless the machine stalls 3 s.
    limits = Limits(cashout_diamonds_min=1, payout_hold_days=3, payout_hold_day_s=1)
    ledger = Ledger(redis, keys=keys, limits=limits)
    await ledger.prepare(load_catalog())
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await _earn(ledger)
    with pytest.raises(LedgerRefusal, match="funds_held"):
        await ledger.cash_out(client_id="early", creator_id=CREATOR, diamonds=5_000)
    for _ in range(100):  # bounded by the test's timeout too; a hold day is 1 s
        if (await ledger.balance(CREATOR)).withdrawable_diamonds == 5_000:
            break
        await asyncio.sleep(0.2)
    receipt = await ledger.cash_out(client_id="late", creator_id=CREATOR, diamonds=5_000)
    assert receipt.balance == 0
    await assert_books_reconcile(ledger)


async def test_a_chargeback_inside_the_hold_claws_the_diamonds_back(
    held: Ledger, redis: Redis, keys: Keys
) -> None:
    await _earn(held)
    refund = await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=10_000)
    assert (refund.refunded, refund.clawed, refund.reversed, refund.debt_added) == (
        10_000, 0, 10_000, 0,
    )  # fmt: skip
    creator, fan = await held.balance(CREATOR), await held.balance("fan")
    assert (creator.diamonds, creator.held_diamonds) == (0, 0)
    assert (fan.coins, fan.debt_coins) == (0, 0)
    assert int(await redis.hget(keys.platform(), "coins") or 0) == 0
    entries = await redis.xrange(keys.ledger())
    clawbacks = [fields for _, fields in entries if fields[b"type"] == b"clawback"]
    assert len(clawbacks) == 1
    assert (clawbacks[0][b"coins"], clawbacks[0][b"diamonds"], clawbacks[0][b"platform"]) == (
        b"10000", b"5000", b"5000",
    )  # fmt: skip
    # The buyer and the creator together cannot cash any of it out, now or later.
    await _age(redis, keys, HOLD_DAYS + 1)
    with pytest.raises(LedgerRefusal, match="insufficient_funds"):
        await held.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1)
    report = await reconcile(redis, keys)
    assert report.ok, report.problems
    assert report.totals.diamonds_clawed_back == 5_000


async def test_a_chargeback_takes_the_balance_first_then_reverses_held_gifts(
    held: Ledger, redis: Redis, keys: Keys
) -> None:
    await held.top_up(payment_id="pay-fan", user_id="fan", coins=13_000)
    await gift(held, "g1", sender="fan", gift_id="interstellar")
    first = await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=8_000)
    assert (first.clawed, first.reversed, first.debt_added) == (3_000, 5_000, 0)
    creator = await held.balance(CREATOR)
    assert (creator.diamonds, creator.held_diamonds) == (2_500, 2_500)
    second = await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r2", coins=5_000)
    assert (second.clawed, second.reversed, second.debt_added) == (0, 5_000, 0)
    assert (await held.balance(CREATOR)).diamonds == 0
    await assert_books_reconcile(held)


async def test_a_chargeback_after_the_hold_leaves_debt_and_the_diamonds(
    held: Ledger, redis: Redis, keys: Keys
) -> None:
    await _earn(held)
    await _age(redis, keys, HOLD_DAYS + 1)
    refund = await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=10_000)
    assert (refund.clawed, refund.reversed, refund.debt_added, refund.debt) == (
        0, 0, 10_000, 10_000,
    )  # fmt: skip
    creator = await held.balance(CREATOR)
    assert (creator.diamonds, creator.withdrawable_diamonds) == (5_000, 5_000)
    await assert_books_reconcile(held)


async def test_only_the_held_part_is_reversed_newest_first(
    held: Ledger, redis: Redis, keys: Keys
) -> None:
    await held.top_up(payment_id="pay-fan", user_id="fan", coins=30_000)
    await gift(held, "old", sender="fan", gift_id="interstellar")
    await _age(redis, keys, HOLD_DAYS + 1)  # the old gift's hold is over
    await gift(held, "mid", sender="fan", gift_id="interstellar")
    await _age(redis, keys, 1)
    await gift(held, "new", sender="fan", gift_id="interstellar")
    refund = await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=30_000)
    assert (refund.reversed, refund.debt_added) == (20_000, 10_000)
    creator = await held.balance(CREATOR)
    assert (creator.diamonds, creator.held_diamonds) == (5_000, 0)
    await assert_books_reconcile(held)


async def test_a_replayed_chargeback_reverses_nothing_again(
    held: Ledger, redis: Redis, keys: Keys
) -> None:
    await _earn(held, coins=20_000)
    first = await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=10_000)
    before = await snapshot(redis, keys)
    again = await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=10_000)
    assert again.replayed and again.transfer_id == first.transfer_id
    assert again.reversed == first.reversed == 10_000
    assert await snapshot(redis, keys) == before
    await assert_books_reconcile(held)


async def test_fractions_of_a_diamond_are_reversed_exactly(
    held: Ledger, redis: Redis, keys: Keys
) -> None:
    # 1-coin roses at 50 %: every other one completes a diamond (share_rem carries the half).
    await held.top_up(payment_id="pay-fan", user_id="fan", coins=7)
    for n in range(7):
        await gift(held, f"r{n}", sender="fan")
    assert (await held.balance(CREATOR)).diamonds == 3
    await held.refund(payment_id="pay-fan", user_id="fan", refund_id="a", coins=3)
    await held.refund(payment_id="pay-fan", user_id="fan", refund_id="b", coins=4)
    acct = await redis.hmget(keys.account(CREATOR), ["diamonds", "share_rem", "held"])
    assert acct == [b"0", b"0", b"0"]
    assert int(await redis.hget(keys.platform(), "coins") or 0) == 0
    await assert_books_reconcile(held)


async def test_cash_out_and_chargeback_race(held: Ledger, redis: Redis, keys: Keys) -> None:
    """Whichever runs first, the cash-out takes only matured diamonds and the chargeback
    takes back every held one: nobody cashes out charged-back money."""
    await _earn(held, buyer="old-fan")
    await _age(redis, keys, HOLD_DAYS + 1)  # 5,000 withdrawable
    await _earn(held)  # 5,000 held, from the fan who charges back
    results = await asyncio.gather(
        held.cash_out(client_id="c1", creator_id=CREATOR, diamonds=10_000),
        held.cash_out(client_id="c2", creator_id=CREATOR, diamonds=5_000),
        held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=10_000),
        return_exceptions=True,
    )
    assert isinstance(results[0], LedgerRefusal)
    assert results[0].code in (ErrorCode.FUNDS_HELD, ErrorCode.INSUFFICIENT_FUNDS)
    assert not isinstance(results[1], BaseException) and results[1].diamonds == 5_000
    assert not isinstance(results[2], BaseException) and results[2].reversed == 10_000
    assert (await held.balance(CREATOR)).diamonds == 0
    await assert_books_reconcile(held)


async def test_a_stale_list_of_creators_is_refused_and_writes_nothing(
    held: Ledger, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _earn(held)

    async def none(user_id: str) -> list[str]:
        return []

    monkeypatch.setattr(held, "_held_creators", none)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=10_000)
    assert refused.value.code is ErrorCode.HOLD_CHANGED
    assert await snapshot(redis, keys) == before


async def test_the_hold_record_is_bounded(redis: Redis, keys: Keys) -> None:
    limits = Limits(gifts_per_s_max=100_000, gift_burst_max=100_000, payout_hold_entries_max=2)
    ledger = Ledger(redis, keys=keys, limits=limits)
    await ledger.prepare(load_catalog())
    await ledger.top_up(payment_id="p", user_id="fan", coins=100)
    for n in range(3):
        await ledger.start_stream(stream_id=f"s{n}", creator_id=f"c{n}", title="t")
    await gift(ledger, "a", sender="fan", stream="s0", creator="c0")
    await gift(ledger, "b", sender="fan", stream="s1", creator="c1")
    await gift(ledger, "b2", sender="fan", stream="s1", creator="c1")  # same entry
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, "c", sender="fan", stream="s2", creator="c2")
    assert refused.value.code is ErrorCode.HOLD_LIMIT
    assert await snapshot(redis, keys) == before
    # Once those entries leave the hold, the sender may gift to a new creator again.
    await _age(redis, keys, HELD.payout_hold_days + 1)
    await gift(ledger, "c", sender="fan", stream="s2", creator="c2")
    assert await redis.hlen(keys.hold_record("fan")) == 2  # the new entry and @day
    await assert_books_reconcile(ledger)


async def test_reconcile_finds_a_broken_hold(held: Ledger, redis: Redis, keys: Keys) -> None:
    await _earn(held)
    await redis.hset(keys.account(CREATOR), "held", 6_000)
    report = await reconcile(redis, keys)
    assert any("buckets" in p for p in report.problems), report.problems
    assert any("in the hold of" in p for p in report.problems), report.problems


async def test_clawbacks_are_recorded_and_both_stores_reconcile(
    held: Ledger, redis: Redis, keys: Keys, record_pool: RecordPool
) -> None:
    await _earn(held, buyer="old-fan")
    await _age(redis, keys, HOLD_DAYS + 1)
    await _earn(held)
    refund = await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=10_000)
    assert refund.reversed == 10_000
    await held.cash_out(client_id="c1", creator_id=CREATOR, diamonds=5_000)
    archiver = Archiver(redis, record_pool, keys, config=ArchiverConfig(block_ms=20))
    await archiver.drain()
    report = await reconcile_across(redis, keys, record_pool)
    assert report.ok, report.problems
    creator = (await wallet_history(record_pool, CREATOR, before=None, limit=10)).items
    assert [i["kind"] for i in creator] == ["cash_out", "clawback", "gift_received",
                                            "gift_received"]  # fmt: skip
    assert (creator[1]["diamonds"], creator[1]["counterparty"]) == (-5_000, "fan")
    fan = (await wallet_history(record_pool, "fan", before=None, limit=10)).items
    assert [(i["kind"], i["coins"]) for i in fan] == [
        ("refund", -10_000), ("gift_reversed", 10_000), ("gift_sent", -10_000),
        ("top_up", 10_000),
    ]  # fmt: skip
    month = datetime.fromtimestamp(refund.ts / 1000, UTC).strftime("%Y-%m")
    statement = await creator_statement(record_pool, CREATOR, parse_period(month, None), 50)
    assert statement.to_json()["clawbacks"] == {"count": 1, "diamonds": 5_000, "cents": 2_500}
    assert statement.to_csv().splitlines()[-1] == "clawed_back,,1,,5000,2500"


async def test_a_hold_turned_off_and_on_again_keeps_working(redis: Redis, keys: Keys) -> None:
    off = Limits(gifts_per_s_max=100_000, gift_burst_max=100_000, cashout_diamonds_min=1,
                 payout_hold_days=0)  # fmt: skip
    ledger = Ledger(redis, keys=keys, limits=HELD)
    await ledger.prepare(load_catalog())
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await _earn(ledger)
    # With the hold off, everything is withdrawable, and the cash-out clears the buckets.
    unheld = Ledger(redis, keys=keys, limits=off)
    await unheld.prepare(load_catalog())
    await unheld.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1_000)
    assert (await redis.hget(keys.account(CREATOR), "hold_ring")) == b""
    # On again the same day: gifts are held again, from an empty ring.
    await _earn(ledger, tag="2")
    balance = await ledger.balance(CREATOR)
    assert (balance.diamonds, balance.held_diamonds) == (9_000, 5_000)
    await assert_books_reconcile(ledger)


@pytest.mark.parametrize(
    ("field", "value"), [("hold_ring", "0,0,0,0,0,0,x,5000"), ("hold_day", "1e3"), ("held", "-")]
)
async def test_a_corrupt_hold_fails_before_any_write(
    held: Ledger, redis: Redis, keys: Keys, field: str, value: str
) -> None:
    await _earn(held, coins=20_000)
    await held.top_up(payment_id="more", user_id="fan", coins=10_000)
    await _age(redis, keys, 1)  # the next gift shifts the ring: the full path reads it all
    await redis.hset(keys.account(CREATOR), field, value)
    before = await snapshot(redis, keys)
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: gift(held, "again", sender="fan", gift_id="interstellar"),
        lambda: held.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1),
        lambda: held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=30_000),
    ]
    for attempt in attempts:
        with pytest.raises(InvariantError):
            await attempt()
        assert await snapshot(redis, keys) == before


async def test_a_corrupt_hold_record_fails_the_chargeback_before_any_write(
    held: Ledger, redis: Redis, keys: Keys
) -> None:
    await _earn(held)
    [name] = [f for f in await redis.hkeys(keys.hold_record("fan")) if f != b"@day"]
    await redis.hset(keys.hold_record("fan"), name, "abc")
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=10_000)
    assert await snapshot(redis, keys) == before


async def test_guests_diamonds_are_held_and_a_chargeback_claws_them_back(
    held: Ledger, redis: Redis, keys: Keys
) -> None:
    """A gift split between the guests on stage holds each guest's diamonds as a creator's:
    a buyer working with a guest cannot cash out charged-back coins either."""
    for guest in ("gina", "gus"):
        await held.guests.invite(stream_id=STREAM, creator_id=CREATOR, guest_id=guest)
        await held.guests.join(stream_id=STREAM, guest_id=guest, name=guest.upper())
    await held.top_up(payment_id="pay-fan", user_id="fan", coins=10_001)
    receipt = await held.send_gift(
        client_id="g-split", sender_id="fan", sender_name="Fan", stream_id=STREAM,
        creator_id=CREATOR, gift_id="interstellar", count=1, to=ALL_GUESTS,
    )  # fmt: skip
    assert receipt.diamonds == 5_000
    guests = [await held.balance(g) for g in ("gina", "gus")]
    assert [(b.diamonds, b.held_diamonds, b.withdrawable_diamonds) for b in guests] == [
        (2_500, 2_500, 0), (2_500, 2_500, 0),
    ]  # fmt: skip
    with pytest.raises(LedgerRefusal, match="funds_held"):
        await held.cash_out(client_id="c1", creator_id="gina", diamonds=1)
    refund = await held.refund(payment_id="pay-fan", user_id="fan", refund_id="r1", coins=10_001)
    assert (refund.refunded, refund.reversed) == (10_001, 10_000)
    for g in ("gina", "gus"):
        balance = await held.balance(g)
        assert (balance.diamonds, balance.held_diamonds) == (0, 0), g
    report = await reconcile(redis, keys)
    assert report.ok, report.problems
    assert report.totals.diamonds_clawed_back == 5_000
