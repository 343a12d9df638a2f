"""The daily spending cap in send_gift.lua: a rolling 24 hours, against a real Redis.

The script reads the clock from Redis (``TIME``), which a test cannot move. So these tests
move the account's spending record instead, to where it would be after the clock moved:
the same script then decides.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, gift, snapshot

CAP = 100


def _day(limit: int, spent: int) -> dict[str, object]:
    """The detail of a refusal by the user's own daily limit."""
    return {"period": "day", "limit": limit, "spent": spent, "spent_24h": spent, "set_by": "own"}


async def _hour(redis: Redis) -> int:
    """The current hour by Redis' clock, waiting out the last two seconds of an hour so that
    the script runs in the same hour as the test's arithmetic."""
    seconds, _ = await redis.time()
    if seconds % 3600 >= 3598:
        await asyncio.sleep(3600 - seconds % 3600 + 0.1)
        seconds, _ = await redis.time()
    return int(seconds) // 3600


async def _capped(ledger: Ledger) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=1_000)
    await ledger.set_daily_limit("alice", CAP)


async def _spent(redis: Redis, keys: Keys, hour: int, coins: int) -> None:
    """Record ``coins`` spent in the hour ``hour`` (the newest bucket)."""
    await redis.hset(
        keys.account("alice"),
        mapping={
            "spend_hour": hour,
            "spend_hours": ",".join(["0"] * 24 + [str(coins)]),
            "spend_sum": coins,
        },
    )


async def _refusal(ledger: Ledger, client_id: str, count: int = 1) -> LedgerRefusal:
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, client_id, gift_id="finger_heart", count=count)
    return refused.value


async def test_spending_up_to_the_cap_then_refused_with_what_was_spent(ledger: Ledger) -> None:
    await _capped(ledger)
    await gift(ledger, "g1", gift_id="hand_hearts")  # 100
    refusal = await _refusal(ledger, "g2")
    assert refusal.code is ErrorCode.SPENDING_LIMIT
    assert refusal.detail == _day(CAP, 100)
    assert (await ledger.balance("alice")).coins == 900
    await assert_books_reconcile(ledger)


@pytest.mark.parametrize("hours_ago", [1, 12, 23, 24])
async def test_the_last_24_hours_count_across_midnight(
    ledger: Ledger, redis: Redis, keys: Keys, hours_ago: int
) -> None:
    # A UTC calendar day let a user spend the cap at 23:59 and again at 00:01.
    await _capped(ledger)
    await _spent(redis, keys, await _hour(redis) - hours_ago, 96)
    refusal = await _refusal(ledger, "g1")  # 96 + 5 > 100
    assert refusal.detail == _day(CAP, 96)
    await gift(ledger, "g2", gift_id="rose", count=4)  # 96 + 4 fits


async def test_spend_leaves_the_window_after_25_hours(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _capped(ledger)
    await _spent(redis, keys, await _hour(redis) - 25, CAP)
    receipt = await gift(ledger, "g1", gift_id="hand_hearts")  # the whole cap again
    assert receipt.coins == CAP
    spend = await redis.hmget(keys.account("alice"), ["spend_hour", "spend_hours"])
    assert spend[1] == b",".join([b"0"] * 24 + [b"100"])
    await assert_books_reconcile(ledger)


async def test_moving_on_drops_only_the_hours_that_left_the_window(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _capped(ledger)
    await ledger.set_daily_limit("alice", 300)
    # 10 coins in each of the 25 hours up to two hours ago: 23 of them are still in.
    await redis.hset(
        keys.account("alice"),
        mapping={
            "spend_hour": await _hour(redis) - 2,
            "spend_hours": ",".join(["10"] * 25),
            "spend_sum": 250,
        },
    )
    refusal = await _refusal(ledger, "g1", count=15)  # 230 + 75 > 300
    assert refusal.detail == _day(300, 230)
    await gift(ledger, "g2", gift_id="finger_heart", count=14)  # 230 + 70 fits
    spend = await redis.hmget(keys.account("alice"), ["spend_hours", "spend_sum"])
    assert spend == [b",".join([b"10"] * 23 + [b"0", b"70"]), b"300"]


async def test_a_clock_stepping_back_does_not_reopen_the_window(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    # As if the cap was spent, then the clock stepped back three hours (or a day): the
    # spend stays in the newest bucket, which is still "now" for the script.
    await _capped(ledger)
    for i, hours in enumerate([3, 24, 72]):
        future = await _hour(redis) + hours
        await _spent(redis, keys, future, CAP)
        refusal = await _refusal(ledger, f"g{i}")
        assert refusal.detail == _day(CAP, CAP)
        assert await redis.hget(keys.account("alice"), "spend_hour") == str(future).encode()


async def test_spend_recorded_by_calendar_day_still_counts(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    # Accounts from before the rolling window kept spend_day / spend_coins.
    await _capped(ledger)
    seconds, _ = await redis.time()
    await redis.hset(
        keys.account("alice"), mapping={"spend_day": seconds // 86400, "spend_coins": 98}
    )
    assert (await _refusal(ledger, "g1")).detail == _day(CAP, 98)
    await redis.hset(keys.account("alice"), "spend_day", seconds // 86400 - 1)
    await gift(ledger, "g2", gift_id="hand_hearts")


async def test_concurrent_sends_never_pass_the_cap(ledger: Ledger) -> None:
    await _capped(ledger)
    results = await asyncio.gather(
        *(gift(ledger, f"race-{i}", gift_id="finger_heart") for i in range(50)),
        return_exceptions=True,
    )
    sent = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(sent) == 20
    assert all(isinstance(r, LedgerRefusal) and r.code is ErrorCode.SPENDING_LIMIT for r in refused)
    await assert_books_reconcile(ledger)


@pytest.mark.parametrize(
    ("hours_ago", "fields"),
    [
        (1, {"spend_hours": "0,0,0"}),  # read in full when the hour moves on
        (1, {"spend_hours": ",".join(["1"] * 26)}),
        (1, {"spend_hours": ",".join(["x"] * 25)}),
        (0, {"spend_hours": ",".join(["1.5"] * 25)}),  # the newest bucket, read every gift
        (0, {"spend_hours": "1,2,x"}),
        (0, {"spend_sum": "lots"}),
        (0, {"spend_hour": "1e6"}),
    ],
)
async def test_a_corrupt_spending_record_fails_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, hours_ago: int, fields: dict[str, str]
) -> None:
    await _capped(ledger)
    await _spent(redis, keys, await _hour(redis) - hours_ago, 0)
    await redis.hset(keys.account("alice"), mapping=fields)  # type: ignore[arg-type]
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await gift(ledger, "g1")
    assert await snapshot(redis, keys) == before
