"""The creator's remainder and the cash-out's fraction of a cent, carried in the Lua.

send_gift and cash_out keep what rounding down leaves over in the creator's account
(``share_rem`` in basis-point units, ``cents_rem`` in hundredths of a cent), so that a
creator's diamonds are ⌊Σ coins x share⌋ and its cents ⌊Σ diamonds x rate / 100⌋, however
the coins and the cash-outs were split. All of it against a real Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.errors import InvariantError
from server.domain.limits import Limits
from server.domain.money import BASIS_POINTS, Economics
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.reconcile import reconcile
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, gift, snapshot

PRICES = {"rose": 1, "finger_heart": 5, "perfume": 20, "cap": 99, "corgi": 299}
FAST = Limits(
    gifts_per_s_max=100_000, gift_burst_max=100_000, cashout_diamonds_min=1, payout_hold_days=0
)


async def _ledger(redis: Redis, keys: Keys, economics: Economics) -> Ledger:
    ledger = Ledger(redis, keys=keys, limits=FAST, economics=economics)
    await ledger.prepare(load_catalog())
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    return ledger


async def _carried(redis: Redis, keys: Keys, user: str) -> tuple[int, int]:
    share_rem, cents_rem = await redis.hmget(keys.account(user), ["share_rem", "cents_rem"])
    return int(share_rem or 0), int(cents_rem or 0)


async def test_two_thousand_single_roses_pay_a_thousand_diamonds(ledger: Ledger) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=2_000)
    receipts = [await gift(ledger, f"r{i}") for i in range(2_000)]
    # Every other rose completes a diamond: 0, 1, 0, 1, ...
    assert [r.diamonds for r in receipts[:4]] == [0, 1, 0, 1]
    assert all(r.diamonds + r.platform_coins == 1 for r in receipts)
    assert (await ledger.balance(CREATOR)).diamonds == 1_000
    report = await reconcile(ledger.redis, ledger.keys)
    assert report.ok, report.problems
    assert (report.totals.diamonds_credited, report.totals.platform_coins) == (1_000, 1_000)


async def test_the_remainder_is_the_creators_across_streams_and_senders(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.start_stream(stream_id="live2", creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay-a", user_id="alice", coins=10)
    await ledger.top_up(payment_id="pay-b", user_id="bob", coins=10)
    first = await gift(ledger, "a1", gift_id="finger_heart")  # 2.5 diamonds
    second = await gift(ledger, "b1", sender="bob", gift_id="finger_heart", stream="live2")
    assert (first.diamonds, first.platform_coins) == (2, 3)
    assert (second.diamonds, second.platform_coins) == (3, 2)  # 2.5 + the 0.5 carried
    assert await _carried(redis, keys, CREATOR) == (0, 0)
    await assert_books_reconcile(ledger)


async def test_a_replay_carries_nothing(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    first = await gift(ledger, "r1")
    before = await snapshot(redis, keys)
    again = await gift(ledger, "r1")
    assert again == dataclasses.replace(first, replayed=True)
    assert await snapshot(redis, keys) == before
    assert await _carried(redis, keys, CREATOR) == (5_000, 0)


async def test_concurrent_sends_carry_the_remainder_exactly(redis: Redis, keys: Keys) -> None:
    ledger = await _ledger(redis, keys, Economics(creator_share_bps=3_333))
    senders = [f"fan{i}" for i in range(5)]
    for sender in senders:
        await ledger.top_up(payment_id=f"pay-{sender}", user_id=sender, coins=1_000)
    await asyncio.gather(
        *(
            gift(ledger, f"{sender}-{i}", sender=sender, gift_id=gift_id)
            for sender in senders
            for i, gift_id in enumerate(["rose", "finger_heart", "perfume", "cap"] * 5)
        )
    )
    coins = 5 * 5 * (1 + 5 + 20 + 99)
    diamonds, rem = divmod(coins * 3_333, BASIS_POINTS)
    assert (await ledger.balance(CREATOR)).diamonds == diamonds
    assert await _carried(redis, keys, CREATOR) == (rem, 0)
    report = await reconcile(redis, keys)
    assert report.ok, report.problems
    assert report.totals.platform_coins == coins - diamonds


async def test_cash_out_carries_the_fraction_of_a_cent(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay1", user_id="fan", coins=10_000)
    await gift(ledger, "earn", sender="fan", gift_id="interstellar")  # 5000 diamonds
    first = await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1_001)
    assert (first.diamonds, first.cents, first.balance) == (1_001, 500, 3_999)  # 500.5
    assert await _carried(redis, keys, CREATOR) == (0, 50)
    second = await ledger.cash_out(client_id="c2", creator_id=CREATOR, diamonds=1_001)
    assert second.cents == 501  # 500.5 + the half cent carried
    assert await _carried(redis, keys, CREATOR) == (0, 0)
    await assert_books_reconcile(ledger)


async def test_concurrent_cash_outs_carry_the_cents_exactly(redis: Redis, keys: Keys) -> None:
    ledger = await _ledger(redis, keys, Economics(cents_per_100_diamonds=7))
    await ledger.top_up(payment_id="pay1", user_id="fan", coins=10_000)
    await gift(ledger, "earn", sender="fan", gift_id="interstellar")  # 5000 diamonds
    receipts = await asyncio.gather(
        *(ledger.cash_out(client_id=f"c{i}", creator_id=CREATOR, diamonds=13) for i in range(40))
    )
    # 0.91 cents each: apart, every one would pay 0; together they pay 36 of the 36.4.
    assert sum(r.cents for r in receipts) == 40 * 13 * 7 // 100 == 36
    assert await _carried(redis, keys, CREATOR) == (0, 40 * 13 * 7 % 100)
    await assert_books_reconcile(ledger)


@pytest.mark.parametrize(
    ("field", "value"),
    [("share_rem", "10000"), ("share_rem", "-1"), ("share_rem", "half"), ("share_rem", "5e3")],
)
async def test_a_corrupt_share_remainder_fails_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, field: str, value: str
) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    await redis.hset(keys.account(CREATOR), field, value)
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await gift(ledger, "r1")
    assert await snapshot(redis, keys) == before


@pytest.mark.parametrize("value", ["100", "-1", "1.5"])
async def test_a_corrupt_cents_remainder_fails_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, value: str
) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay1", user_id="fan", coins=10_000)
    await gift(ledger, "earn", sender="fan", gift_id="interstellar")
    await redis.hset(keys.account(CREATOR), "cents_rem", value)
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1_000)
    assert await snapshot(redis, keys) == before


@pytest.mark.parametrize(
    ("field", "problem"),
    [("share_rem", "carries share_rem=1"), ("cents_rem", "carries share_rem=0 cents_rem=1")],
)
async def test_reconcile_catches_a_tampered_remainder(
    ledger: Ledger, redis: Redis, keys: Keys, field: str, problem: str
) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    await gift(ledger, "r1", count=2)
    await redis.hset(keys.account(CREATOR), field, 1)
    report = await reconcile(redis, keys)
    assert any(problem in line for line in report.problems), report.problems


_sends = st.lists(
    st.tuples(st.sampled_from(sorted(PRICES)), st.integers(1, 30)), min_size=1, max_size=25
)


async def _check_sends(
    redis_url: str, share_bps: int, rate: int, sends: list[tuple[str, int]], cash_outs: list[int]
) -> None:
    redis = Redis.from_url(redis_url, decode_responses=False)
    try:
        keys = Keys(prefix=f"p{uuid.uuid4().hex[:10]}:")
        economics = Economics(creator_share_bps=share_bps, cents_per_100_diamonds=rate)
        ledger = await _ledger(redis, keys, economics)
        coins = sum(PRICES[gift_id] * count for gift_id, count in sends)
        await ledger.top_up(payment_id="pay1", user_id="alice", coins=coins)
        for i, (gift_id, count) in enumerate(sends):
            await gift(ledger, f"g{i}", gift_id=gift_id, count=count)
        diamonds, share_rem = divmod(coins * share_bps, BASIS_POINTS)
        assert (await ledger.balance(CREATOR)).diamonds == diamonds
        assert (await ledger.balance("alice")).coins == 0

        paid_diamonds = paid_cents = 0
        for i, amount in enumerate(cash_outs):
            if paid_diamonds + amount > diamonds:
                break
            receipt = await ledger.cash_out(client_id=f"c{i}", creator_id=CREATOR, diamonds=amount)
            paid_diamonds += amount
            paid_cents += receipt.cents
        cents, cents_rem = divmod(paid_diamonds * rate, 100)
        assert paid_cents == cents
        assert await _carried(redis, keys, CREATOR) == (share_rem, cents_rem)
        report = await reconcile(redis, keys)
        assert report.ok, report.problems
        assert report.totals.platform_coins == coins - diamonds
    finally:
        await redis.aclose()


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    share_bps=st.integers(0, BASIS_POINTS),
    rate=st.integers(1, 10_000),
    sends=_sends,
    cash_outs=st.lists(st.integers(1, 300), max_size=8),
)
def test_however_the_coins_arrive_the_creator_gets_the_floor_of_the_total(
    redis_server: RedisProcess,
    share_bps: int,
    rate: int,
    sends: list[tuple[str, int]],
    cash_outs: list[int],
) -> None:
    asyncio.run(_check_sends(redis_server.url, share_bps, rate, sends, cash_outs))
