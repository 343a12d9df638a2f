"""Property: any interleaving of ledger operations, some of them concurrent, keeps the books.

Hypothesis draws a list of steps; a step is one operation or a group run concurrently with
``asyncio.gather`` (so the group shares pipelines and races for the same balances). Ids are
drawn from small pools, so payments, gifts and cash-outs are often retried, sometimes with
different content. After every example, against the real Redis:

* the books reconcile and no balance is negative;
* every id moved money at most once, and every replay returned that first receipt;
* every refusal is one its operation may give.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import defaultdict
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, LedgerRefusal
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.receipts import CashOutReceipt, GiftReceipt, RefundReceipt, TopUpReceipt
from server.ledger.reconcile import reconcile
from tests.integration.helpers import make_ledger

VIEWERS = ("ann", "ben", "cy")
CREATORS = ("cre1", "cre2")
PEOPLE = VIEWERS + CREATORS
GIFTS = ("rose", "finger_heart", "perfume", "doughnut")  # 1, 5, 20 and 30 coins
LIMITS = Limits(
    gifts_per_s_max=100_000, gift_burst_max=100_000, cashout_diamonds_min=10, payout_hold_days=0
)
SEED_COINS = 300
"""Everyone starts with this much (payment ``pay{8 + i}``), so that gifts and cash-outs
mostly go through and refunds have something to claw back."""


def _stream_of(creator: str) -> str:
    return f"live-{creator}"


@dataclass(frozen=True, slots=True)
class TopUp:
    payment: int
    user: str
    coins: int


@dataclass(frozen=True, slots=True)
class Gift:
    client: int
    sender: str
    creator: str
    gift_id: str
    count: int


@dataclass(frozen=True, slots=True)
class SpendAll:
    """Spend the whole balance (as last read) on roses: balances of exactly 0 are an edge."""

    client: int
    sender: str
    creator: str


@dataclass(frozen=True, slots=True)
class Refund:
    payment: int
    user: str | None
    """None: the payment's buyer, as far as the example knows it (else someone at random)."""
    refund: int
    coins: int


@dataclass(frozen=True, slots=True)
class CashOut:
    client: int
    creator: str
    diamonds: int


@dataclass(frozen=True, slots=True)
class EndStream:
    creator: str


Operation = TopUp | Gift | SpendAll | Refund | CashOut | EndStream
Receipt = TopUpReceipt | GiftReceipt | RefundReceipt | CashOutReceipt

ALLOWED_REFUSALS: dict[type, set[ErrorCode]] = {
    TopUp: {ErrorCode.DUPLICATE_MISMATCH},
    Gift: {
        ErrorCode.DUPLICATE_MISMATCH,
        ErrorCode.INSUFFICIENT_FUNDS,
        ErrorCode.SELF_GIFT,
        ErrorCode.STREAM_NOT_LIVE,
    },
    SpendAll: {
        ErrorCode.DUPLICATE_MISMATCH,
        ErrorCode.INSUFFICIENT_FUNDS,  # the balance moved since it was read
        ErrorCode.SELF_GIFT,
        ErrorCode.STREAM_NOT_LIVE,
    },
    # Not the buyer, or a refund id reused for another amount. A refund of a payment not yet
    # made is remembered, not refused.
    Refund: {ErrorCode.INVALID_REQUEST, ErrorCode.DUPLICATE_MISMATCH},
    CashOut: {
        ErrorCode.DUPLICATE_MISMATCH,
        ErrorCode.BELOW_MINIMUM,
        ErrorCode.INSUFFICIENT_FUNDS,
    },
    EndStream: set(),
}

# Small top-ups and big gifts, so that balances often run dry and refunds turn into debt.
_top_ups = st.builds(TopUp, st.integers(0, 7), st.sampled_from(PEOPLE), st.integers(1, 500))
_gifts = st.builds(
    Gift,
    st.integers(0, 9),
    st.sampled_from(PEOPLE),
    st.sampled_from(CREATORS),
    st.sampled_from(GIFTS),
    st.integers(1, 5),
)
# Payments 0-7 are the drawn top-ups; 8 and up are the opening balances (see SEED_COINS).
_spend_alls = st.builds(
    SpendAll, st.integers(0, 9), st.sampled_from(PEOPLE), st.sampled_from(CREATORS)
)
_refunds = st.builds(
    Refund,
    st.integers(0, 7 + len(PEOPLE)),
    st.sampled_from([None] * len(PEOPLE) + [*PEOPLE]),
    st.integers(0, 2),
    st.sampled_from([1, 50, 150, 300, 600]),
)
_cash_outs = st.builds(CashOut, st.integers(0, 3), st.sampled_from(CREATORS), st.integers(1, 200))
_ends = st.builds(EndStream, st.sampled_from(CREATORS))
# Drawn by weight: mostly money, rarely a stream end.
_WEIGHTED: list[st.SearchStrategy[Operation]] = [
    *[_top_ups] * 5,
    *[_gifts] * 6,
    *[_spend_alls] * 2,
    *[_refunds] * 5,
    *[_cash_outs] * 2,
    _ends,
]
_operations = st.integers(0, len(_WEIGHTED) - 1).flatmap(_WEIGHTED.__getitem__)
_steps = st.lists(
    st.one_of(_operations, st.lists(_operations, min_size=2, max_size=8).map(tuple)),
    min_size=5,
    max_size=30,
)


async def _apply(
    ledger: Ledger, op: Operation, buyers: dict[int, str]
) -> Receipt | LedgerRefusal | None:
    try:
        match op:
            case TopUp(payment, user, coins):
                return await ledger.top_up(payment_id=f"pay{payment}", user_id=user, coins=coins)
            case Gift(client, sender, creator, gift_id, count):
                return await ledger.send_gift(
                    client_id=f"g{client}",
                    sender_id=sender,
                    sender_name=sender,
                    stream_id=_stream_of(creator),
                    creator_id=creator,
                    gift_id=gift_id,
                    count=count,
                )
            case SpendAll(client, sender, creator):
                coins = (await ledger.balance(sender)).coins
                return await ledger.send_gift(
                    client_id=f"g{client}",
                    sender_id=sender,
                    sender_name=sender,
                    stream_id=_stream_of(creator),
                    creator_id=creator,
                    gift_id="rose",
                    count=min(max(coins, 1), 9_999),
                )
            case Refund(payment, user, refund, coins):
                buyer = user or buyers.get(payment, PEOPLE[payment % len(PEOPLE)])
                return await ledger.refund(
                    payment_id=f"pay{payment}",
                    user_id=buyer,
                    refund_id=f"r{refund}",
                    coins=coins,
                )
            case CashOut(client, creator, diamonds):
                return await ledger.cash_out(
                    client_id=f"c{client}", creator_id=creator, diamonds=diamonds
                )
            case EndStream(creator):
                await ledger.end_stream(
                    stream_id=_stream_of(creator), actor_id=creator, is_admin=False
                )
                return None
    except LedgerRefusal as refusal:
        return refusal
    raise AssertionError(f"unknown operation {op!r}")


def _id_of(op: Operation) -> tuple[str, ...]:
    """The idempotency key of an operation: what the script stores its receipt under."""
    match op:
        case TopUp(payment, _, _):
            return ("top_up", str(payment))
        case Refund(payment, _, refund, _):
            return ("refund", str(payment), str(refund))
        case Gift(client, sender, _, _, _) | SpendAll(client, sender, _):
            return ("gift", sender, str(client))
        case CashOut(client, creator, _):
            return ("cash_out", creator, str(client))
    raise AssertionError(f"{op!r} has no id")


async def _check_example(redis_url: str, steps: list[Operation | tuple[Operation, ...]]) -> None:
    redis = Redis.from_url(redis_url, decode_responses=False)
    try:
        keys = Keys(prefix=f"p{uuid.uuid4().hex[:10]}:")
        ledger = await make_ledger(redis, keys, LIMITS)
        for creator in CREATORS:
            await ledger.start_stream(stream_id=_stream_of(creator), creator_id=creator, title="")
        buyers: dict[int, str] = {}
        for index, person in enumerate(PEOPLE, start=8):
            await ledger.top_up(payment_id=f"pay{index}", user_id=person, coins=SEED_COINS)
            buyers[index] = person
        receipts: defaultdict[tuple[str, ...], list[Receipt]] = defaultdict(list)
        for step in steps:
            group = step if isinstance(step, tuple) else (step,)
            results = await asyncio.gather(*(_apply(ledger, op, buyers) for op in group))
            for op, result in zip(group, results, strict=True):
                if isinstance(result, LedgerRefusal):
                    assert result.code in ALLOWED_REFUSALS[type(op)], (op, result.code)
                elif result is not None:
                    receipts[_id_of(op)].append(result)
                if isinstance(result, TopUpReceipt) and isinstance(op, TopUp):
                    buyers[op.payment] = result.user_id

        for key, seen in receipts.items():
            first = [r for r in seen if not r.replayed]
            assert len(first) == 1, (key, seen)
            assert all(dataclasses.replace(r, replayed=False) == first[0] for r in seen), key

        report = await reconcile(redis, keys)
        assert report.ok, report.problems
        for person in PEOPLE:
            balance = await ledger.balance(person)
            assert min(balance.coins, balance.diamonds, balance.debt_coins) >= 0, balance
    finally:
        await redis.aclose()


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
)
@given(steps=_steps)
def test_any_interleaving_keeps_the_books(
    redis_server: RedisProcess, steps: list[Operation | tuple[Operation, ...]]
) -> None:
    # Each example runs in an event loop of its own, with a fresh key prefix, against the
    # session's real redis-server.
    asyncio.run(_check_example(redis_server.url, steps))
