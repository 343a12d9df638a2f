"""cash_out.lua against a real Redis: payouts, every refusal, replay, races, corruption, books."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.limits import AMOUNT_MAX, Limits
from server.domain.money import Economics
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.reconcile import reconcile
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, gift, snapshot


async def _earn(ledger: Ledger, diamonds: int = 5_000) -> None:
    """Give the creator ``diamonds`` (a multiple of 5000) the only way there is: gifts."""
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    gifts = diamonds // 5_000
    await ledger.top_up(payment_id="pay-fan", user_id="fan", coins=10_000 * gifts)
    await gift(ledger, "earn", sender="fan", gift_id="interstellar", count=gifts)


async def test_cash_out_turns_diamonds_into_a_pending_payout(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _earn(ledger)
    receipt = await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=2_000)
    assert (receipt.client_id, receipt.user_id, receipt.diamonds) == ("c1", CREATOR, 2_000)
    assert (receipt.cents, receipt.balance, receipt.state) == (1_000, 3_000, "pending")
    assert not receipt.replayed
    assert (await ledger.balance(CREATOR)).diamonds == 3_000
    payout = await redis.hgetall(keys.cashout(CREATOR, "c1"))
    assert (payout[b"diamonds"], payout[b"cents"], payout[b"state"]) == (
        b"2000",
        b"1000",
        b"pending",
    )
    report = await reconcile(ledger.redis, ledger.keys)
    assert report.ok, report.problems
    assert (report.totals.diamonds_cashed_out, report.totals.payout_cents) == (2_000, 1_000)


async def test_payout_rounds_down_to_a_whole_cent(ledger: Ledger) -> None:
    await _earn(ledger)
    receipt = await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1_001)
    assert receipt.cents == 500  # 500.5 cents
    await assert_books_reconcile(ledger)


async def test_all_diamonds_may_be_cashed_out(ledger: Ledger) -> None:
    await _earn(ledger)
    receipt = await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=5_000)
    assert receipt.balance == 0
    await assert_books_reconcile(ledger)


@pytest.mark.parametrize(
    ("client_id", "creator", "diamonds", "code"),
    [
        ("c2", CREATOR, 0, ErrorCode.INVALID_REQUEST),
        ("c2", CREATOR, -1_000, ErrorCode.INVALID_REQUEST),
        ("c2", CREATOR, AMOUNT_MAX + 1, ErrorCode.INVALID_REQUEST),
        ("c 2", CREATOR, 1_000, ErrorCode.INVALID_REQUEST),
        ("c2", "", 1_000, ErrorCode.INVALID_REQUEST),
        ("c1", CREATOR, 1_001, ErrorCode.DUPLICATE_MISMATCH),  # c1 cashed out 1000
        ("c2", CREATOR, 999, ErrorCode.BELOW_MINIMUM),
        ("c2", CREATOR, 4_001, ErrorCode.INSUFFICIENT_FUNDS),  # 4000 left
        ("c2", "fan", 1_000, ErrorCode.INSUFFICIENT_FUNDS),  # viewers hold no diamonds
    ],
)
async def test_refusals_write_nothing(
    ledger: Ledger,
    redis: Redis,
    keys: Keys,
    client_id: str,
    creator: str,
    diamonds: int,
    code: ErrorCode,
) -> None:
    await _earn(ledger)
    await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1_000)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.cash_out(client_id=client_id, creator_id=creator, diamonds=diamonds)
    assert refused.value.code is code
    assert await snapshot(redis, keys) == before


async def test_refusals_say_why(ledger: Ledger) -> None:
    await _earn(ledger)
    with pytest.raises(LedgerRefusal) as below:
        await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=10)
    assert below.value.detail == {"minimum": 1_000}
    with pytest.raises(LedgerRefusal) as short:
        await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=6_000)
    assert short.value.detail == {"balance": 5_000}
    assert short.value.message == "not enough diamonds for this cash-out"


async def test_a_payout_beyond_the_largest_amount_is_refused(
    redis: Redis, keys: Keys, limits: Limits
) -> None:
    # At a dollar a diamond, 2 * 10^11 diamonds would pay 2 * 10^13 cents: more than one
    # amount may hold, and past what the receipt's 14-digit JSON numbers print exactly.
    ledger = Ledger(
        redis, keys=keys, limits=limits, economics=Economics(cents_per_100_diamonds=10_000)
    )
    await ledger.runner.prepare()
    # Earning that many diamonds through gifts takes hundreds of sends; set them directly.
    await redis.hset(keys.account(CREATOR), "diamonds", 2 * 10**11)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=2 * 10**11)
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await snapshot(redis, keys) == before
    receipt = await ledger.cash_out(client_id="c2", creator_id=CREATOR, diamonds=10**11)
    assert receipt.cents == 10**13


async def test_replay_returns_the_original_receipt_and_moves_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _earn(ledger)
    first = await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1_500)
    await ledger.cash_out(client_id="c2", creator_id=CREATOR, diamonds=1_000)
    before = await snapshot(redis, keys)
    again = await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=1_500)
    assert again == dataclasses.replace(first, replayed=True)
    assert await snapshot(redis, keys) == before
    await assert_books_reconcile(ledger)


async def test_client_ids_belong_to_one_creator(ledger: Ledger) -> None:
    await _earn(ledger)
    await ledger.top_up(payment_id="pay-2", user_id="fan2", coins=10_000)
    await ledger.start_stream(stream_id="live2", creator_id="creator2", title="t")
    await gift(
        ledger, "g2", sender="fan2", gift_id="interstellar", stream="live2", creator="creator2"
    )
    one = await ledger.cash_out(client_id="same", creator_id=CREATOR, diamonds=1_000)
    two = await ledger.cash_out(client_id="same", creator_id="creator2", diamonds=2_000)
    assert not one.replayed and not two.replayed and one.transfer_id != two.transfer_id
    await assert_books_reconcile(ledger)


async def test_concurrent_duplicates_pay_out_once(ledger: Ledger) -> None:
    await _earn(ledger)
    results = await asyncio.gather(
        *(ledger.cash_out(client_id="dup", creator_id=CREATOR, diamonds=1_200) for _ in range(50))
    )
    assert sum(not r.replayed for r in results) == 1
    assert len({r.transfer_id for r in results}) == 1
    assert (await ledger.balance(CREATOR)).diamonds == 3_800
    await assert_books_reconcile(ledger)


async def test_concurrent_cash_outs_never_overdraw(ledger: Ledger) -> None:
    await _earn(ledger, 10_000)
    results = await asyncio.gather(
        *(
            ledger.cash_out(client_id=f"c{i}", creator_id=CREATOR, diamonds=1_500)
            for i in range(30)
        ),
        return_exceptions=True,
    )
    paid = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, LedgerRefusal)]
    assert len(paid) == 6 and len(refused) == 24
    assert all(r.code is ErrorCode.INSUFFICIENT_FUNDS for r in refused)
    assert sorted(r.balance for r in paid) == [1_000, 2_500, 4_000, 5_500, 7_000, 8_500]
    assert (await ledger.balance(CREATOR)).diamonds == 1_000
    await assert_books_reconcile(ledger)


async def test_cash_outs_racing_gifts_pay_only_what_arrived(ledger: Ledger) -> None:
    await _earn(ledger)
    await ledger.top_up(payment_id="pay-more", user_id="fan", coins=20_000)
    results = await asyncio.gather(
        *(
            call
            for i in range(10)
            for call in (
                ledger.cash_out(client_id=f"c{i}", creator_id=CREATOR, diamonds=2_000),
                gift(ledger, f"g{i}", sender="fan", gift_id="galaxy", count=2),  # +1000
            )
        ),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    # Every gift fits the fan's coins; only cash-outs that came before enough gifts fail.
    assert all(
        isinstance(r, LedgerRefusal) and r.code is ErrorCode.INSUFFICIENT_FUNDS for r in refused
    )
    report = await reconcile(ledger.redis, ledger.keys)
    assert report.ok, report.problems
    t = report.totals
    assert t.gifts == 11 and t.diamonds_credited == 5_000 + 10 * 1_000
    assert t.diamonds_cashed_out == 2_000 * (10 - len(refused))
    assert t.diamonds_held == (await ledger.balance(CREATOR)).diamonds >= 0


async def _cashout_is_a_string(redis: Redis, keys: Keys) -> None:
    await redis.set(keys.cashout(CREATOR, "c2"), "x")


CORRUPTIONS: dict[str, Callable[[Redis, Keys], Awaitable[object]]] = {
    "cash-out key is a string": _cashout_is_a_string,
    "account is a string": lambda r, k: r.set(k.account(CREATOR), "x"),
    "diamonds not a number": lambda r, k: r.hset(k.account(CREATOR), "diamonds", "abc"),
    "diamonds in exponent form": lambda r, k: r.hset(k.account(CREATOR), "diamonds", "5e3"),
    "ledger log is a string": lambda r, k: r.set(k.ledger(), "x"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_corrupt_key_fails_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, corruption: str
) -> None:
    await _earn(ledger)
    await CORRUPTIONS[corruption](redis, keys)
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await ledger.cash_out(client_id="c2", creator_id=CREATOR, diamonds=1_000)
    assert await snapshot(redis, keys) == before
