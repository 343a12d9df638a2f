"""refund.lua against a real Redis: whole, partial and early refunds, debt, every refusal,
replay, races, corruption, books."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.limits import AMOUNT_MAX
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.receipts import RefundReceipt, TopUpReceipt
from server.ledger.reconcile import reconcile
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, gift, snapshot


async def _spend(ledger: Ledger, user: str, coins: int) -> None:
    """Spend ``coins`` on roses (1 coin each) in the helpers' stream."""
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await gift(ledger, f"spend-{user}-{coins}", sender=user, count=coins)


async def test_refund_claws_back_the_whole_payment(ledger: Ledger, redis: Redis) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=40)
    receipt = await ledger.refund(payment_id="pay1", user_id="alice", refund_id="r1", coins=100)
    assert (receipt.payment_id, receipt.refund_id, receipt.user_id) == ("pay1", "r1", "alice")
    assert (receipt.coins, receipt.refunded, receipt.before_payment) == (100, 100, False)
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
    refund = await ledger.refund(payment_id="pay1", user_id="alice", refund_id="r1", coins=100)
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
    await ledger.refund(payment_id="pay1", user_id="alice", refund_id="r1", coins=10)
    receipt = await ledger.refund(payment_id="pay2", user_id="alice", refund_id="r1", coins=20)
    assert (receipt.clawed, receipt.debt_added, receipt.debt) == (0, 20, 30)
    await assert_books_reconcile(ledger)


async def _refund(
    ledger: Ledger, refund_id: str, coins: int, payment_id: str = "pay1", user_id: str = "alice"
) -> RefundReceipt:
    return await ledger.refund(
        payment_id=payment_id, user_id=user_id, refund_id=refund_id, coins=coins
    )


async def test_partial_refunds_add_up_to_the_payment_and_no_further(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=1_000)
    first = await _refund(ledger, "r1", 30)
    assert (first.refunded, first.clawed, first.balance) == (30, 30, 1_070)
    second = await _refund(ledger, "r2", 50)
    assert (second.refunded, second.balance) == (50, 1_020)
    # Only 20 of the payment are left: the third refund is capped there.
    third = await _refund(ledger, "r3", 50)
    assert (third.coins, third.refunded, third.clawed, third.balance) == (50, 20, 20, 1_000)
    fourth = await _refund(ledger, "r4", 10)
    assert (fourth.refunded, fourth.clawed, fourth.debt_added, fourth.balance) == (0, 0, 0, 1_000)
    payment = await redis.hgetall(keys.payment("pay1"))
    assert (payment[b"refunded"], payment[b"state"]) == (b"100", b"refunded")
    assert (await ledger.balance("alice")).coins == 1_000
    report = await reconcile(redis, keys)
    assert report.ok, report.problems
    assert report.totals.coins_clawed == 100


async def test_a_partial_refund_keeps_the_payment_credited(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await _refund(ledger, "r1", 30)
    payment = await redis.hgetall(keys.payment("pay1"))
    assert (payment[b"refunded"], payment[b"state"]) == (b"30", b"credited")
    assert (await ledger.balance("alice")).coins == 70
    await assert_books_reconcile(ledger)


async def test_a_refund_before_its_payment_is_withheld_from_the_credit(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    early = await _refund(ledger, "r1", 30)
    assert early.before_payment and (early.refunded, early.clawed, early.debt_added) == (0, 0, 0)
    balance = await ledger.balance("alice")
    assert (balance.coins, balance.debt_coins) == (0, 0)
    await assert_books_reconcile(ledger)

    top_up = await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    assert (top_up.credited, top_up.withheld, top_up.balance) == (70, 30, 70)
    # The rest of the payment can still be refunded, and no more.
    late = await _refund(ledger, "r2", 100)
    assert (late.before_payment, late.refunded, late.balance) == (False, 70, 0)
    # A retry of the payment replays its receipt; a retry of the early refund replays too.
    assert await ledger.top_up(payment_id="pay1", user_id="alice", coins=100) == (
        dataclasses.replace(top_up, replayed=True)
    )
    assert await _refund(ledger, "r1", 30) == dataclasses.replace(early, replayed=True)
    payment = await redis.hgetall(keys.payment("pay1"))
    assert (payment[b"refunded"], payment[b"state"]) == (b"100", b"refunded")
    report = await reconcile(redis, keys)
    assert report.ok, report.problems
    assert (report.totals.coins_bought, report.totals.coins_withheld) == (100, 30)


async def test_refunds_before_the_payment_beyond_its_coins_withhold_it_all(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _refund(ledger, "r1", 80)
    await _refund(ledger, "r2", 70)
    top_up = await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    assert (top_up.credited, top_up.debt_repaid, top_up.withheld) == (0, 0, 100)
    assert (await redis.hget(keys.payment("pay1"), "state")) == b"refunded"
    assert (await _refund(ledger, "r3", 5)).refunded == 0
    assert (await ledger.balance("alice")).coins == 0
    await assert_books_reconcile(ledger)


async def test_a_payment_for_someone_else_than_its_early_refund_is_refused(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _refund(ledger, "r1", 30, user_id="bob")
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    assert refused.value.code is ErrorCode.DUPLICATE_MISMATCH
    assert await snapshot(redis, keys) == before


async def test_early_refunds_withhold_only_the_unpaid_debt_stays(ledger: Ledger) -> None:
    # Debt from an older chargeback is repaid from what the payment leaves after withholding.
    await ledger.top_up(payment_id="pay0", user_id="alice", coins=50)
    await _spend(ledger, "alice", 50)
    await _refund(ledger, "r0", 50, payment_id="pay0")  # 50 owed
    await _refund(ledger, "r1", 30)
    top_up = await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    assert (top_up.withheld, top_up.debt_repaid, top_up.credited) == (30, 50, 20)
    await assert_books_reconcile(ledger)


@pytest.mark.parametrize(
    ("payment_id", "user_id", "refund_id", "coins", "code"),
    [
        ("pay1", "bob", "r9", 10, ErrorCode.INVALID_REQUEST),  # not the buyer
        ("bad id", "alice", "r9", 10, ErrorCode.INVALID_REQUEST),
        ("pay1", "", "r9", 10, ErrorCode.INVALID_REQUEST),
        ("pay1", "alice", "", 10, ErrorCode.INVALID_REQUEST),
        ("pay1", "alice", "r 9", 10, ErrorCode.INVALID_REQUEST),
        ("pay1", "alice", "r9", 0, ErrorCode.INVALID_REQUEST),
        ("pay1", "alice", "r9", -5, ErrorCode.INVALID_REQUEST),
        ("pay1", "alice", "r9", AMOUNT_MAX + 1, ErrorCode.INVALID_REQUEST),
        ("pay1", "alice", "r1", 11, ErrorCode.DUPLICATE_MISMATCH),  # r1 refunded 10
        ("pay1", "bob", "r1", 10, ErrorCode.DUPLICATE_MISMATCH),
    ],
)
async def test_refusals_write_nothing(
    ledger: Ledger,
    redis: Redis,
    keys: Keys,
    payment_id: str,
    user_id: str,
    refund_id: str,
    coins: int,
    code: ErrorCode,
) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await _refund(ledger, "r1", 10)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await _refund(ledger, refund_id, coins, payment_id=payment_id, user_id=user_id)
    assert refused.value.code is code
    assert await snapshot(redis, keys) == before


async def test_early_refunds_past_the_largest_amount_are_refused(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _refund(ledger, "r1", AMOUNT_MAX)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await _refund(ledger, "r2", 1)
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await snapshot(redis, keys) == before


async def test_replay_returns_the_original_receipt_and_moves_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    first = await _refund(ledger, "r1", 40)
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=5)
    before = await snapshot(redis, keys)
    again = await _refund(ledger, "r1", 40)
    assert again == dataclasses.replace(first, replayed=True)
    assert await snapshot(redis, keys) == before
    await assert_books_reconcile(ledger)


async def test_refund_ids_belong_to_one_payment(ledger: Ledger) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=100)
    one = await _refund(ledger, "r1", 10)
    two = await _refund(ledger, "r1", 10, payment_id="pay2")
    assert not one.replayed and not two.replayed and one.transfer_id != two.transfer_id
    assert (await ledger.balance("alice")).coins == 180
    await assert_books_reconcile(ledger)


async def test_concurrent_duplicates_claw_back_once(ledger: Ledger) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=100)
    results = await asyncio.gather(*(_refund(ledger, "r1", 100) for _ in range(50)))
    assert sum(not r.replayed for r in results) == 1
    assert len({r.transfer_id for r in results}) == 1
    assert (await ledger.balance("alice")).coins == 100
    await assert_books_reconcile(ledger)


async def test_concurrent_partial_refunds_never_pass_the_payment(ledger: Ledger) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    await ledger.top_up(payment_id="pay2", user_id="alice", coins=1_000)
    results = await asyncio.gather(*(_refund(ledger, f"r{i}", 7) for i in range(50)))
    assert sum(r.refunded for r in results) == 100
    assert sorted(r.refunded for r in results) == [0] * 35 + [2] + [7] * 14
    assert (await ledger.balance("alice")).coins == 1_000
    await assert_books_reconcile(ledger)


async def test_refunds_racing_their_payment_take_back_exactly_once(ledger: Ledger) -> None:
    calls: list[Awaitable[object]] = [_refund(ledger, f"r{i}", 15) for i in range(10)]
    calls.insert(4, ledger.top_up(payment_id="pay1", user_id="alice", coins=100))
    results = await asyncio.gather(*calls)
    top_up = next(r for r in results if isinstance(r, TopUpReceipt))
    refunds = [r for r in results if isinstance(r, RefundReceipt)]
    # However the race went, 100 of the 150 asked for are taken back: withheld or clawed.
    assert top_up.withheld + sum(r.refunded for r in refunds) == 100
    assert (await ledger.balance("alice")).coins == 0
    await assert_books_reconcile(ledger)


async def test_refunds_racing_gifts_never_make_a_balance_negative(ledger: Ledger) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    for i in range(10):
        await ledger.top_up(payment_id=f"pay{i}", user_id="alice", coins=10)
    calls: list[Awaitable[object]] = []
    for i in range(10):
        calls.append(_refund(ledger, "r1", 10, payment_id=f"pay{i}"))
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


async def _refund_record_is_a_string(redis: Redis, keys: Keys) -> None:
    await redis.set(keys.refund("pay1", "r2"), "x")


CORRUPTIONS: dict[str, Callable[[Redis, Keys], Awaitable[object]]] = {
    "payment key is a set": _payment_is_a_set,
    "refund record is a string": _refund_record_is_a_string,
    "payment coins not a number": lambda r, k: r.hset(k.payment("pay1"), "coins", "lots"),
    "payment refunded not a number": lambda r, k: r.hset(k.payment("pay1"), "refunded", "1e1"),
    "payment refunded past its coins": lambda r, k: r.hset(k.payment("pay1"), "refunded", 101),
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
    await _refund(ledger, "r1", 10)
    await CORRUPTIONS[corruption](redis, keys)
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await _refund(ledger, "r2", 10)
    assert await snapshot(redis, keys) == before


async def test_an_early_refund_with_corrupt_coins_fails_the_payment_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _refund(ledger, "r1", 10)
    await redis.hset(keys.payment("pay1"), "early", "ten")
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    assert await snapshot(redis, keys) == before
