"""refund.lua against a real Redis: clawback, debt, every refusal, replay, races, books."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.reconcile import reconcile
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, gift, snapshot


async def _spend(ledger: Ledger, user: str, coins: int) -> None:
    """Spend ``coins`` on roses (1 coin each) in the helpers' stream."""
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await gift(ledger, f"spend-{user}-{coins}", sender=user, count=coins)


async def test_refund_claws_back_the_whole_payment(ledger: Ledger, redis: Redis) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=40)
    receipt = await ledger.refund(payment_id="pay1", user_id="alice")
    assert (receipt.payment_id, receipt.user_id, receipt.coins) == ("pay1", "alice", 100)
    assert (receipt.clawed, receipt.debt_added, receipt.balance, receipt.debt) == (100, 0, 40, 0)
    assert not receipt.replayed
    payment = await redis.hgetall(ledger.keys.payment("pay1"))
    assert payment[b"state"] == b"refunded"
    balance = await ledger.balance("alice")
    assert (balance.coins, balance.debt_coins) == (40, 0)
    await assert_books_reconcile(ledger)


async def test_refund_beyond_the_balance_becomes_debt_that_top_ups_repay_first(
    ledger: Ledger,
) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await _spend(ledger, "alice", 70)
    refund = await ledger.refund(payment_id="pay1", user_id="alice")
    assert (refund.clawed, refund.debt_added, refund.balance, refund.debt) == (30, 70, 0, 70)
    await assert_books_reconcile(ledger)

    # The creator keeps the diamonds; the debt is the buyer's.
    assert (await ledger.balance(CREATOR)).diamonds == 35
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, "while-in-debt")
    assert refused.value.code is ErrorCode.INSUFFICIENT_FUNDS

    first = await ledger.top_up(payment_id="pay2", user_id="alice", coins=50)
    assert (first.credited, first.debt_repaid, first.balance) == (0, 50, 0)
    assert (await ledger.balance("alice")).debt_coins == 20
    await assert_books_reconcile(ledger)

    second = await ledger.top_up(payment_id="pay3", user_id="alice", coins=100)
    assert (second.credited, second.debt_repaid, second.balance) == (80, 20, 80)
    balance = await ledger.balance("alice")
    assert (balance.coins, balance.debt_coins) == (80, 0)
    report = await reconcile(ledger.redis, ledger.keys)
    assert report.ok, report.problems
    t = report.totals
    assert (t.coins_clawed, t.debt_added, t.debt_repaid, t.debt_held) == (30, 70, 70, 0)


async def test_debt_from_several_refunds_adds_up(ledger: Ledger) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=20)
    await _spend(ledger, "alice", 30)
    await ledger.refund(payment_id="pay1", user_id="alice")
    receipt = await ledger.refund(payment_id="pay2", user_id="alice")
    assert (receipt.clawed, receipt.debt_added, receipt.debt) == (0, 20, 30)
    await assert_books_reconcile(ledger)


@pytest.mark.parametrize(
    ("payment_id", "user_id", "code"),
    [
        ("never-paid", "alice", ErrorCode.UNKNOWN_PAYMENT),
        ("pay1", "bob", ErrorCode.INVALID_REQUEST),  # not the buyer
        ("bad id", "alice", ErrorCode.INVALID_REQUEST),
        ("pay1", "", ErrorCode.INVALID_REQUEST),
    ],
)
async def test_refusals_write_nothing(
    ledger: Ledger, redis: Redis, keys: Keys, payment_id: str, user_id: str, code: ErrorCode
) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.refund(payment_id=payment_id, user_id=user_id)
    assert refused.value.code is code
    assert await snapshot(redis, keys) == before


async def test_replay_returns_the_original_receipt_and_moves_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    first = await ledger.refund(payment_id="pay1", user_id="alice")
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=5)
    before = await snapshot(redis, keys)
    again = await ledger.refund(payment_id="pay1", user_id="alice")
    assert again == dataclasses.replace(first, replayed=True)
    assert await snapshot(redis, keys) == before
    await assert_books_reconcile(ledger)


async def test_a_refund_is_keyed_by_payment_and_names_its_buyer(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    # A refund carries no content besides the buyer, so "same id, different content" is
    # a refund naming someone else: refused as invalid_request, before and after the refund.
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await ledger.refund(payment_id="pay1", user_id="alice")
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.refund(payment_id="pay1", user_id="bob")
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await snapshot(redis, keys) == before


async def test_concurrent_duplicates_claw_back_once(ledger: Ledger) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=100)
    results = await asyncio.gather(
        *(ledger.refund(payment_id="pay1", user_id="alice") for _ in range(50))
    )
    assert sum(not r.replayed for r in results) == 1
    assert len({r.transfer_id for r in results}) == 1
    assert (await ledger.balance("alice")).coins == 100
    await assert_books_reconcile(ledger)


async def test_refunds_racing_gifts_never_make_a_balance_negative(ledger: Ledger) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    for i in range(10):
        await ledger.top_up(payment_id=f"pay{i}", user_id="alice", coins=10)
    calls: list[Awaitable[object]] = []
    for i in range(10):
        calls.append(ledger.refund(payment_id=f"pay{i}", user_id="alice"))
        calls += [gift(ledger, f"g{i}-{j}", gift_id="finger_heart") for j in range(2)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(
        isinstance(r, LedgerRefusal) and r.code is ErrorCode.INSUFFICIENT_FUNDS for r in refused
    )
    report = await reconcile(ledger.redis, ledger.keys)
    assert report.ok, report.problems
    t, balance = report.totals, await ledger.balance("alice")
    assert balance.coins >= 0 and balance.debt_coins >= 0
    assert t.coins_spent == 5 * (20 - len(refused))
    # Every coin bought was clawed back, spent or is still held; what was spent and then
    # charged back is owed.
    assert t.coins_clawed + t.debt_added == 100
    assert balance.coins + t.coins_spent + t.coins_clawed == 100
    assert balance.debt_coins == t.debt_added


async def _payment_is_a_set(redis: Redis, keys: Keys) -> None:
    await redis.delete(keys.payment("pay1"))
    await redis.sadd(keys.payment("pay1"), "x")


CORRUPTIONS: dict[str, Callable[[Redis, Keys], Awaitable[object]]] = {
    "payment key is a set": _payment_is_a_set,
    "payment coins not a number": lambda r, k: r.hset(k.payment("pay1"), "coins", "lots"),
    "account is a string": lambda r, k: r.set(k.account("alice"), "x"),
    "coins not a number": lambda r, k: r.hset(k.account("alice"), "coins", "abc"),
    # Coins are written before the debt: a debt HINCRBY refuses must fail before them.
    "debt in exponent form": lambda r, k: r.hset(k.account("alice"), "debt", "1e3"),
    "debt a fraction": lambda r, k: r.hset(k.account("alice"), "debt", "2.0"),
    "ledger log is a string": lambda r, k: r.set(k.ledger(), "x"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_corrupt_key_fails_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, corruption: str
) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await CORRUPTIONS[corruption](redis, keys)
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await ledger.refund(payment_id="pay1", user_id="alice")
    assert await snapshot(redis, keys) == before
