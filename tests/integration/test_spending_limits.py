"""Responsible spending against a real Redis: ``spending_limits.lua`` (show, set, protect)
and the checks ``_spend.lua`` adds to send_gift.lua (the day and the calendar month).

The scripts read the clock from Redis (``TIME``), which a test cannot move: the tests
move the stored times instead (a pending raise's ``*_pending_at``, the ``spend_month``),
to where they would be after the clock moved, and the same scripts then decide.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime

import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal, RequestError
from server.domain.limits import Limits
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.scripts import ScriptName, _read
from tests.integration.helpers import (
    CREATOR,
    STREAM,
    assert_books_reconcile,
    gift,
    make_ledger,
    snapshot,
)

DAY_S = 86_400


async def _open(ledger: Ledger, coins: int = 100_000) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=coins)


async def _refused(ledger: Ledger, client_id: str, gift_id: str = "rose", count: int = 1) -> dict:
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, client_id, gift_id=gift_id, count=count)
    assert refused.value.code is ErrorCode.SPENDING_LIMIT
    assert refused.value.detail is not None
    return refused.value.detail


async def _mature(redis: Redis, keys: Keys, field: str) -> None:
    """As if the cooling-off of the pending raise ``field`` (daily/monthly) had passed."""
    await redis.hset(keys.account("alice"), f"{field}_pending_at", 1)


async def test_nothing_set_shows_no_limits_and_the_spend(ledger: Ledger, redis: Redis) -> None:
    await _open(ledger)
    await gift(ledger, "g1", gift_id="hand_hearts")  # 100
    status = await ledger.spending.show("alice")
    assert (status.day.limit_coins, status.day.spent_coins, status.day.pending) == (0, 100, None)
    assert (status.month.limit_coins, status.month.spent_coins) == (0, 100)
    seconds, _ = await redis.time()
    month = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m")
    assert status.month.month == month
    assert not status.minor
    assert status.to_json()["day"]["remaining"] is None


async def test_lowering_is_at_once_and_binds_the_next_gift(ledger: Ledger) -> None:
    await _open(ledger)
    await gift(ledger, "g1", gift_id="hand_hearts")  # 100
    status = await ledger.spending.set("alice", day=120)
    assert status.applied == {"day": "now", "month": "unchanged"}
    assert (status.day.limit_coins, status.day.set_by) == (120, "own")
    assert (await _refused(ledger, "g2", "perfume", 2)) == {
        "period": "day", "limit": 120, "spent": 100, "spent_24h": 100, "set_by": "own",
    }  # fmt: skip
    await gift(ledger, "g3", gift_id="perfume")  # 20: exactly up to the limit
    assert (await ledger.spending.show("alice")).to_json()["day"]["remaining"] == 0
    await assert_books_reconcile(ledger)


async def test_a_raise_waits_out_the_cooling_off_then_holds_by_itself(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _open(ledger)
    await ledger.spending.set("alice", day=50)
    before = await ledger.spending.show("alice")
    raised = await ledger.spending.set("alice", day=500)
    assert raised.applied == {"day": "pending", "month": "unchanged"}
    assert raised.day.limit_coins == 50  # still the old one
    assert raised.day.pending is not None and raised.day.pending.limit_coins == 500
    wait_ms = raised.day.pending.from_ms - raised.now_ms
    assert wait_ms == Limits().spend_raise_cooling_off_s * 1000
    assert before.now_ms <= raised.now_ms
    # During the cooling-off the old limit binds every gift.
    assert (await _refused(ledger, "g1", "hand_hearts"))["limit"] == 50
    # Asking again for the same raise (a retry) keeps its time; another raise restarts it.
    again = await ledger.spending.set("alice", day=500)
    assert again.applied == {"day": "kept", "month": "unchanged"}
    assert again.day.pending == raised.day.pending
    await _mature(redis, keys, "daily")
    status = await ledger.spending.show("alice")
    assert (status.day.limit_coins, status.day.pending) == (500, None)
    await gift(ledger, "g2", gift_id="hand_hearts")  # 100 > 50: the raise is in force
    await assert_books_reconcile(ledger)


async def test_removing_a_limit_is_a_raise(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    await _open(ledger)
    await ledger.spending.set("alice", day=10, month=1_000)
    status = await ledger.spending.set("alice", day=0)
    assert status.day.pending is not None and status.day.pending.limit_coins == 0
    assert status.day.limit_coins == 10
    await _mature(redis, keys, "daily")
    assert (await ledger.spending.show("alice")).day.limit_coins == 0
    await gift(ledger, "g1", gift_id="hand_hearts")


async def test_lowering_during_the_cooling_off_cancels_the_raise(ledger: Ledger) -> None:
    await _open(ledger)
    await ledger.spending.set("alice", day=100)
    await ledger.spending.set("alice", day=1_000)
    lowered = await ledger.spending.set("alice", day=60)
    assert lowered.applied == {"day": "now", "month": "unchanged"}
    assert (lowered.day.limit_coins, lowered.day.pending) == (60, None)


async def test_a_matured_raise_replaced_by_another_raise_stays_in_force(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _open(ledger)
    await ledger.spending.set("alice", day=100)
    await ledger.spending.set("alice", day=200)
    await _mature(redis, keys, "daily")
    status = await ledger.spending.set("alice", day=900)
    assert status.day.limit_coins == 200  # the matured raise, not the 100 before it
    assert status.day.pending is not None and status.day.pending.limit_coins == 900


async def test_the_month_counts_and_refuses(ledger: Ledger) -> None:
    await _open(ledger)
    await ledger.spending.set("alice", month=150)
    await gift(ledger, "g1", gift_id="hand_hearts")
    detail = await _refused(ledger, "g2", "hand_hearts")
    assert detail == {"period": "month", "limit": 150, "spent": 100, "set_by": "own"}
    status = await ledger.spending.show("alice")
    assert (status.month.spent_coins, status.day.spent_coins) == (100, 100)


async def test_a_new_month_starts_from_zero_and_a_clock_stepping_back_reopens_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _open(ledger)
    await ledger.spending.set("alice", month=150)
    await gift(ledger, "g1", gift_id="hand_hearts")
    month = int(await redis.hget(keys.account("alice"), "spend_month") or 0)
    # Spent last month: this month starts at zero.
    await redis.hset(keys.account("alice"), mapping={"spend_month": month - 1})
    assert (await ledger.spending.show("alice")).month.spent_coins == 0
    await gift(ledger, "g2", gift_id="hand_hearts")
    # Spent "next month" (the clock stepped back since): still counted, still that month.
    await redis.hset(keys.account("alice"), mapping={"spend_month": month + 1})
    assert (await _refused(ledger, "g3", "hand_hearts"))["spent"] == 100
    assert int(await redis.hget(keys.account("alice"), "spend_month") or 0) == month + 1


@pytest.mark.parametrize(
    "when",
    [
        "1970-01-01T00:00:00", "1999-12-31T23:59:59", "2000-02-29T12:00:00",
        "2000-03-01T00:00:00", "2026-12-31T23:59:59", "2027-01-01T00:00:00",
        "2100-02-28T23:59:59", "2100-03-01T00:00:00", "2400-02-29T00:00:00",
    ],
)  # fmt: skip
async def test_the_calendar_month_in_lua_is_the_utc_month(redis: Redis, when: str) -> None:
    moment = datetime.datetime.fromisoformat(when).replace(tzinfo=datetime.UTC)
    seconds = calendar.timegm(moment.timetuple())
    source = _read("_lib.lua") + b"\n" + _read("_spend.lua") + b"\n"
    source += b"return spend_month_of(tonumber(ARGV[1]))"
    assert await redis.eval(source, 0, seconds) == moment.year * 12 + moment.month - 1  # type: ignore[misc]


async def test_a_minor_is_capped_and_cannot_set_more(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _open(ledger)
    await ledger.spending.set("alice", day=10_000)
    status = await ledger.spending.protect("alice", minor=True, day_cap=150, month_cap=300)
    assert status.minor
    assert (status.day.limit_coins, status.day.set_by, status.day.own_coins) == (
        150,
        "platform",
        10_000,
    )
    await gift(ledger, "g1", gift_id="hand_hearts")
    assert (await _refused(ledger, "g2", "hand_hearts"))["set_by"] == "platform"
    before = await snapshot(redis, keys)
    for wanted in ({"day": 151}, {"day": 0}, {"month": 301}, {"day": 100, "month": 0}):
        with pytest.raises(LedgerRefusal) as refused:
            await ledger.spending.set("alice", **wanted)
        assert refused.value.code is ErrorCode.SPENDING_CAP
    assert refused.value.detail == {"period": "month", "cap": 300}
    assert await snapshot(redis, keys) == before
    # Below the cap: the user's own, at once.
    lowered = await ledger.spending.set("alice", day=120)
    assert (lowered.day.limit_coins, lowered.day.set_by) == (120, "own")
    # Unmarked: the own limits again, at once.
    freed = await ledger.spending.protect("alice", minor=False)
    assert not freed.minor and freed.day.limit_coins == 120 and freed.month.limit_coins == 0


async def test_the_minor_caps_default_to_the_settings(redis: Redis, keys: Keys) -> None:
    ledger = await make_ledger(
        redis, keys, Limits(minor_daily_spend_coins_max=7, minor_monthly_spend_coins_max=70)
    )
    status = await ledger.spending.protect("bob", minor=True)
    assert (status.day.limit_coins, status.month.limit_coins) == (7, 70)


async def test_defaults_apply_until_the_user_sets_a_limit(redis: Redis, keys: Keys) -> None:
    limits = Limits(
        gifts_per_s_max=1000, daily_spend_coins_max=30, monthly_spend_coins_max=39,
        spend_raise_cooling_off_s=0,
    )  # fmt: skip
    ledger = await make_ledger(redis, keys, limits)
    await _open(ledger)
    await gift(ledger, "g1", gift_id="perfume")  # 20
    assert (await _refused(ledger, "g2", "perfume"))["limit"] == 30
    raised = await ledger.spending.set("alice", day=1_000)  # no cooling-off configured
    assert raised.day.limit_coins == 1_000
    assert (await _refused(ledger, "g3", "perfume"))["period"] == "month"


async def test_a_replay_after_the_limit_was_lowered_is_still_a_replay(ledger: Ledger) -> None:
    await _open(ledger)
    first = await gift(ledger, "g1", gift_id="hand_hearts")
    await ledger.spending.set("alice", day=10, month=10)
    again = await gift(ledger, "g1", gift_id="hand_hearts")
    assert again.replayed and again.transfer_id == first.transfer_id
    await _refused(ledger, "g2")


async def test_a_lowered_limit_binds_every_gift_after_it_in_a_race(ledger: Ledger) -> None:
    # 100 gifts of 5 coins under a day limit of 10,000, and, in the middle of them, the
    # limit lowered to 50. The lowering is atomic against the gifts: those before it
    # counted under the old limit, and after it the spend never passes the new one.
    await _open(ledger)
    await ledger.spending.set("alice", day=10_000)

    async def lower() -> int:
        await asyncio.sleep(0)
        status = await ledger.spending.set("alice", day=50)
        return status.day.spent_coins

    sends = [gift(ledger, f"race-{i}", gift_id="perfume", count=1) for i in range(50)]
    sends += [lower()]
    sends += [gift(ledger, f"race-{i}", gift_id="perfume", count=1) for i in range(50, 100)]
    results = await asyncio.gather(*sends, return_exceptions=True)
    spent_at_lowering = results[50]
    assert isinstance(spent_at_lowering, int)
    gifts = results[:50] + results[51:]
    refused = [r for r in gifts if isinstance(r, BaseException)]
    assert all(isinstance(r, LedgerRefusal) and r.code is ErrorCode.SPENDING_LIMIT for r in refused)
    spent = (await ledger.spending.show("alice")).day.spent_coins
    assert spent == 20 * (100 - len(refused))
    assert spent_at_lowering <= spent <= max(spent_at_lowering, 50)
    await assert_books_reconcile(ledger)


async def test_concurrent_gifts_never_pass_a_minor_cap(ledger: Ledger) -> None:
    await _open(ledger)
    await ledger.spending.protect("alice", minor=True, day_cap=100, month_cap=0)
    results = await asyncio.gather(
        *(gift(ledger, f"c{i}", gift_id="finger_heart") for i in range(40)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 20
    assert (await ledger.balance("alice")).coins == 100_000 - 100


async def test_bad_arguments_are_refused_and_change_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _open(ledger)
    before = await snapshot(redis, keys)
    for bad in (-1, 10**13 + 1, True):
        with pytest.raises(RequestError):
            await ledger.spending.set("alice", day=bad)  # type: ignore[arg-type]
    account = keys.account("alice")
    for args in (
        ["set", "0", "0", "0", "1e3", "-"],
        ["set", "0", "0", "-5", "1", "-"],
        ["drop", "0", "0", "0"],
        ["protect", "0", "0", "0", "yes", "1", "1"],
        ["protect", "0", "0", "0", "1", "x", "1"],
    ):
        reply = await ledger.runner.run(ScriptName.SPENDING_LIMITS, [account], args)
        assert reply[:2] == [b"refused", b"invalid_request"], args
    assert await snapshot(redis, keys) == before


async def test_a_corrupt_limit_fails_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _open(ledger)
    await ledger.spending.set("alice", month=5_000)
    await redis.hset(keys.account("alice"), "monthly_limit", "1e3")
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await gift(ledger, "g1")
    with pytest.raises(InvariantError):
        await ledger.spending.set("alice", day=5)
    assert await snapshot(redis, keys) == before
