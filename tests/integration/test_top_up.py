"""top_up.lua against a real Redis: success, every refusal, replay, races, corruption, books."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import cast

import pytest
from redis.asyncio import Redis

from server.domain.accounts import Balance
from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.limits import AMOUNT_MAX
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.runner import StreamRows
from tests.integration.helpers import assert_books_reconcile, snapshot


async def test_top_up_credits_coins_and_records_the_payment(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    receipt = await ledger.top_up(payment_id="pay1", user_id="alice", coins=500)
    assert (receipt.payment_id, receipt.user_id, receipt.coins) == ("pay1", "alice", 500)
    assert (receipt.credited, receipt.debt_repaid, receipt.balance) == (500, 0, 500)
    assert not receipt.replayed
    assert await ledger.balance("alice") == Balance("alice", coins=500, diamonds=0, debt_coins=0)
    payment = await redis.hgetall(keys.payment("pay1"))
    assert payment[b"state"] == b"credited" and payment[b"user"] == b"alice"
    [(entry_id, entry)] = cast(StreamRows, await redis.xrange(keys.ledger()))
    assert entry_id.decode() == receipt.transfer_id
    assert (entry[b"type"], entry[b"to"], entry[b"coins"]) == (b"top_up", b"alice", b"500")
    second = await ledger.top_up(payment_id="pay2", user_id="alice", coins=250)
    assert second.balance == 750
    await assert_books_reconcile(ledger)


async def test_balance_may_reach_the_largest_amount_exactly(ledger: Ledger) -> None:
    receipt = await ledger.top_up(payment_id="big", user_id="alice", coins=AMOUNT_MAX)
    assert receipt.balance == AMOUNT_MAX and isinstance(receipt.balance, int)
    await assert_books_reconcile(ledger)


@pytest.mark.parametrize(
    ("payment_id", "user_id", "coins", "code"),
    [
        ("pay1", "alice", 0, ErrorCode.INVALID_REQUEST),
        ("pay1", "alice", -5, ErrorCode.INVALID_REQUEST),
        ("pay1", "alice", AMOUNT_MAX + 1, ErrorCode.INVALID_REQUEST),
        ("bad id", "alice", 10, ErrorCode.INVALID_REQUEST),
        ("pay1", "al{ice}", 10, ErrorCode.INVALID_REQUEST),
        ("p" * 65, "alice", 10, ErrorCode.INVALID_REQUEST),
        # "paid" already credited 100 coins to alice: the same id for something else.
        ("paid", "alice", 101, ErrorCode.DUPLICATE_MISMATCH),
        ("paid", "bob", 100, ErrorCode.DUPLICATE_MISMATCH),
        # alice holds 100: one more than the largest balance would be too much.
        ("pay1", "alice", AMOUNT_MAX - 99, ErrorCode.BALANCE_LIMIT),
    ],
)
async def test_refusals_write_nothing(
    ledger: Ledger,
    redis: Redis,
    keys: Keys,
    payment_id: str,
    user_id: str,
    coins: int,
    code: ErrorCode,
) -> None:
    await ledger.top_up(payment_id="paid", user_id="alice", coins=100)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.top_up(payment_id=payment_id, user_id=user_id, coins=coins)
    assert refused.value.code is code
    assert await snapshot(redis, keys) == before


async def test_balance_limit_counts_only_what_is_credited(ledger: Ledger, redis: Redis) -> None:
    # Coins that repay debt are not credited, so they do not count against the limit.
    await ledger.top_up(payment_id="full", user_id="alice", coins=AMOUNT_MAX)
    await redis.hset(ledger.keys.account("alice"), "debt", 10)  # as if charged back before
    receipt = await ledger.top_up(payment_id="repay", user_id="alice", coins=10)
    assert (receipt.credited, receipt.debt_repaid, receipt.balance) == (0, 10, AMOUNT_MAX)


async def test_replay_returns_the_original_receipt_and_moves_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    first = await ledger.top_up(payment_id="pay1", user_id="alice", coins=300)
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=1)
    before = await snapshot(redis, keys)
    again = await ledger.top_up(payment_id="pay1", user_id="alice", coins=300)
    assert again.replayed
    # The very receipt of the first call: its balance is the balance back then.
    assert again == dataclasses.replace(first, replayed=True)
    assert await snapshot(redis, keys) == before
    await assert_books_reconcile(ledger)


async def test_replay_after_a_refund_still_returns_the_top_up_receipt(ledger: Ledger) -> None:
    first = await ledger.top_up(payment_id="pay1", user_id="alice", coins=300)
    await ledger.refund(payment_id="pay1", user_id="alice", refund_id="r1", coins=300)
    again = await ledger.top_up(payment_id="pay1", user_id="alice", coins=300)
    assert again.replayed and again.transfer_id == first.transfer_id
    assert (await ledger.balance("alice")).coins == 0
    await assert_books_reconcile(ledger)


async def test_concurrent_duplicates_credit_once(ledger: Ledger) -> None:
    results = await asyncio.gather(
        *(ledger.top_up(payment_id="dup", user_id="alice", coins=70) for _ in range(50))
    )
    assert sum(not r.replayed for r in results) == 1
    assert len({r.transfer_id for r in results}) == 1
    assert {r.balance for r in results} == {70}
    assert (await ledger.balance("alice")).coins == 70
    await assert_books_reconcile(ledger)


async def test_concurrent_top_ups_of_one_account_all_count(ledger: Ledger) -> None:
    results = await asyncio.gather(
        *(ledger.top_up(payment_id=f"p{i}", user_id="alice", coins=i + 1) for i in range(100))
    )
    # Each saw the balance left by the one before it: a running total, in some order.
    assert sorted(r.balance for r in results) == [(n + 1) * (n + 2) // 2 for n in range(100)]
    assert (await ledger.balance("alice")).coins == 5050
    await assert_books_reconcile(ledger)


async def test_concurrent_top_ups_near_the_limit_never_pass_it(ledger: Ledger) -> None:
    await ledger.top_up(payment_id="base", user_id="alice", coins=AMOUNT_MAX - 10)
    results = await asyncio.gather(
        *(ledger.top_up(payment_id=f"p{i}", user_id="alice", coins=3) for i in range(10)),
        return_exceptions=True,
    )
    credited = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, LedgerRefusal)]
    assert len(credited) == 3 and len(refused) == 7
    assert all(r.code is ErrorCode.BALANCE_LIMIT for r in refused)
    assert (await ledger.balance("alice")).coins == AMOUNT_MAX - 1
    await assert_books_reconcile(ledger)


async def _account_is_a_list(redis: Redis, keys: Keys) -> None:
    await redis.delete(keys.account("alice"))
    await redis.rpush(keys.account("alice"), "x")


CORRUPTIONS: dict[str, Callable[[Redis, Keys], Awaitable[object]]] = {
    "payment key is a string": lambda r, k: r.set(k.payment("pay2"), "x"),
    "account is a list": _account_is_a_list,
    "coins not a number": lambda r, k: r.hset(k.account("alice"), "coins", "abc"),
    "coins in exponent form": lambda r, k: r.hset(k.account("alice"), "coins", "1e3"),
    # Debt is written after the coins: a debt HINCRBY refuses must fail before them.
    "debt in exponent form": lambda r, k: r.hset(k.account("alice"), "debt", "1e1"),
    "debt with a leading zero": lambda r, k: r.hset(k.account("alice"), "debt", "010"),
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
        await ledger.top_up(payment_id="pay2", user_id="alice", coins=50)
    assert await snapshot(redis, keys) == before
