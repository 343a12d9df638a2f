"""settle_payout.lua against a real Redis: a pending cash-out becomes paid, or failed with
its diamonds returned; every refusal, replays, a race of both outcomes, corruption, books."""

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
from server.ledger.reconcile import reconcile
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, gift, snapshot


async def _pending(ledger: Ledger, diamonds: int = 2_000) -> None:
    """The creator earns 5,000 diamonds through a gift and cashes ``diamonds`` out as c1."""
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay-fan", user_id="fan", coins=10_000)
    await gift(ledger, "earn", sender="fan", gift_id="interstellar")
    await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=diamonds)


async def test_a_paid_payout_keeps_the_diamonds_out(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _pending(ledger)
    receipt = await ledger.settle_payout(client_id="c1", creator_id=CREATOR, outcome="paid")
    assert (receipt.state, receipt.diamonds, receipt.cents, receipt.balance) == (
        "paid", 2_000, 1_000, 3_000,
    )  # fmt: skip
    assert not receipt.replayed
    assert (await ledger.balance(CREATOR)).diamonds == 3_000
    assert (await redis.hget(keys.cashout(CREATOR, "c1"), "state")) == b"paid"
    report = await reconcile(redis, keys)
    assert report.ok, report.problems
    assert (report.totals.diamonds_cashed_out, report.totals.payout_cents) == (2_000, 1_000)


async def test_a_failed_payout_returns_the_diamonds(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _pending(ledger)
    receipt = await ledger.settle_payout(client_id="c1", creator_id=CREATOR, outcome="failed")
    assert (receipt.state, receipt.balance) == ("failed", 5_000)
    assert (await ledger.balance(CREATOR)).diamonds == 5_000
    report = await reconcile(redis, keys)
    assert report.ok, report.problems
    assert (report.totals.diamonds_cashed_out, report.totals.payout_cents) == (0, 0)
    # The returned diamonds can be cashed out again.
    await ledger.cash_out(client_id="c2", creator_id=CREATOR, diamonds=5_000)
    await assert_books_reconcile(ledger)


@pytest.mark.parametrize("outcome", ["paid", "failed"])
async def test_the_same_outcome_again_is_a_replay(
    ledger: Ledger, redis: Redis, keys: Keys, outcome: str
) -> None:
    await _pending(ledger)
    first = await ledger.settle_payout(client_id="c1", creator_id=CREATOR, outcome=outcome)
    before = await snapshot(redis, keys)
    again = await ledger.settle_payout(client_id="c1", creator_id=CREATOR, outcome=outcome)
    assert again == dataclasses.replace(first, replayed=True)
    assert await snapshot(redis, keys) == before


@pytest.mark.parametrize(("first", "second"), [("paid", "failed"), ("failed", "paid")])
async def test_the_other_outcome_after_one_is_refused(
    ledger: Ledger, redis: Redis, keys: Keys, first: str, second: str
) -> None:
    await _pending(ledger)
    await ledger.settle_payout(client_id="c1", creator_id=CREATOR, outcome=first)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.settle_payout(client_id="c1", creator_id=CREATOR, outcome=second)
    assert (refused.value.code, refused.value.detail) == (
        ErrorCode.PAYOUT_SETTLED,
        {"state": first},
    )
    assert await snapshot(redis, keys) == before


@pytest.mark.parametrize(
    ("client_id", "creator", "outcome", "code"),
    [
        ("nope", CREATOR, "paid", ErrorCode.UNKNOWN_PAYOUT),
        ("c1", "someone_else", "paid", ErrorCode.UNKNOWN_PAYOUT),
        ("c1", CREATOR, "pending", ErrorCode.INVALID_REQUEST),
        ("c1", CREATOR, "lost", ErrorCode.INVALID_REQUEST),
        ("bad id", CREATOR, "paid", ErrorCode.INVALID_REQUEST),
        ("c1", "", "paid", ErrorCode.INVALID_REQUEST),
    ],
)
async def test_refusals_change_nothing(
    ledger: Ledger, redis: Redis, keys: Keys, client_id: str, creator: str, outcome: str,
    code: ErrorCode,
) -> None:  # fmt: skip
    await _pending(ledger)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.settle_payout(client_id=client_id, creator_id=creator, outcome=outcome)
    assert refused.value.code is code
    assert await snapshot(redis, keys) == before


async def test_returning_diamonds_past_the_largest_balance_is_refused(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _pending(ledger)
    await redis.hset(keys.account(CREATOR), "diamonds", AMOUNT_MAX - 1_000)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.settle_payout(client_id="c1", creator_id=CREATOR, outcome="failed")
    assert refused.value.code is ErrorCode.BALANCE_LIMIT
    assert await snapshot(redis, keys) == before


async def test_racing_outcomes_settle_once(ledger: Ledger) -> None:
    await _pending(ledger)
    results = await asyncio.gather(
        *(
            ledger.settle_payout(client_id="c1", creator_id=CREATOR, outcome=o)
            for o in ["paid", "failed"] * 20
        ),
        return_exceptions=True,
    )
    settled = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert sum(not r.replayed for r in settled) == 1
    assert len({r.state for r in settled}) == 1 and len(settled) == 20
    assert all(isinstance(r, LedgerRefusal) and r.code is ErrorCode.PAYOUT_SETTLED for r in refused)
    expected = 3_000 if settled[0].state == "paid" else 5_000
    assert (await ledger.balance(CREATOR)).diamonds == expected
    await assert_books_reconcile(ledger)


CORRUPTIONS: dict[str, Callable[[Redis, Keys], Awaitable[object]]] = {
    "diamonds not a number": lambda r, k: r.hset(k.account(CREATOR), "diamonds", "abc"),
    "payout diamonds in exponent form": lambda r, k: r.hset(
        k.cashout(CREATOR, "c1"), "diamonds", "2e3"
    ),
    "account is a string": lambda r, k: r.set(k.account(CREATOR), "x"),
    "ledger log is a string": lambda r, k: r.set(k.ledger(), "x"),
}  # fmt: skip


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_corrupt_key_fails_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, corruption: str
) -> None:
    await _pending(ledger)
    await CORRUPTIONS[corruption](redis, keys)
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await ledger.settle_payout(client_id="c1", creator_id=CREATOR, outcome="failed")
    assert await snapshot(redis, keys) == before
