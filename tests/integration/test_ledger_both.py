"""The ledger's API on both stores (``any_ledger``: ``Ledger`` on one redis-server, or
``ClusterLedger`` on the loopback 3-primary + 3-replica cluster): the same behaviour
asserted on each, every test ending with the books reconciled the way its mode does it.

Where cluster mode documents a difference (``docs/protocol.md``, "On a Redis Cluster"), the
test asserts each mode's documented behaviour. The per-mode suites (``test_send_gift.py``
and the others in this folder, ``tests/cluster/``) keep what only one mode has: corrupt keys,
the scripts' internals, the legs and the relay.
"""

from __future__ import annotations

import asyncio
import re
import uuid

import orjson
import pytest

from server.domain.errors import ErrorCode, LedgerRefusal
from server.domain.goals import Goal, GoalKind
from server.domain.limits import STREAM_STATE_TTL_S, Limits
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.receipts import GiftReceipt
from tests.support.ledgers import (
    AnyLedger,
    OpenLedger,
    applied_gifts,
    gifts_in,
    quiet,
    reconciled,
    snapshot,
    transfer_id_pattern,
)


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def live_stream(ledger: AnyLedger) -> tuple[str, str]:
    stream, creator = uid("stream"), uid("creator")
    await ledger.start_stream(stream_id=stream, creator_id=creator, title="both")
    return stream, creator


async def funded(ledger: AnyLedger, coins: int, name: str = "viewer") -> str:
    user = uid(name)
    await ledger.top_up(payment_id=uid("pay"), user_id=user, coins=coins)
    return user


async def send(
    ledger: AnyLedger,
    sender: str,
    stream: str,
    creator: str,
    client_id: str | None = None,
    *,
    gift_id: str = "rose",
    count: int = 1,
    catalog_version: int | None = None,
) -> GiftReceipt:
    return await ledger.send_gift(
        client_id=client_id or uid("g"),
        sender_id=sender,
        sender_name=sender.title(),
        stream_id=stream,
        creator_id=creator,
        gift_id=gift_id,
        count=count,
        catalog_version=catalog_version,
    )


async def test_a_top_up_is_credited_once_per_payment_id(any_ledger: AnyLedger) -> None:
    buyer = uid("buyer")
    first = await any_ledger.top_up(payment_id="p1" + buyer, user_id=buyer, coins=500)
    assert (first.credited, first.balance, first.replayed) == (500, 500, False)
    again = await any_ledger.top_up(payment_id="p1" + buyer, user_id=buyer, coins=500)
    assert again.replayed and again.transfer_id == first.transfer_id and again.balance == 500
    for user, coins in ((buyer, 501), (uid("thief"), 500)):  # other coins, another buyer
        with pytest.raises(LedgerRefusal) as refused:
            await any_ledger.top_up(payment_id="p1" + buyer, user_id=user, coins=coins)
        assert refused.value.code is ErrorCode.DUPLICATE_MISMATCH
    assert (await any_ledger.balance(buyer)).coins == 500
    totals = await reconciled(any_ledger)
    assert gifts_in(totals) == 0


async def test_a_gift_moves_coins_to_diamonds_and_platform(any_ledger: AnyLedger) -> None:
    stream, creator = await live_stream(any_ledger)
    sender = await funded(any_ledger, 1000)
    receipt = await send(any_ledger, sender, stream, creator, "g1", gift_id="corgi", count=2)
    assert re.fullmatch(transfer_id_pattern(any_ledger, sender, "g1"), receipt.transfer_id)
    assert (receipt.client_id, receipt.stream_id, receipt.gift_id, receipt.count) == (
        "g1", stream, "corgi", 2,
    )  # fmt: skip
    assert (receipt.coins, receipt.diamonds, receipt.platform_coins) == (598, 299, 299)
    assert (receipt.balance, receipt.seq, receipt.combo, receipt.replayed) == (402, 1, 2, False)
    assert receipt.ts > 0
    assert (await any_ledger.balance(sender)).coins == 402
    assert (await any_ledger.balance(creator)).diamonds == 299
    info = await any_ledger.stream(stream)
    assert info is not None
    assert (info.last_sequence, info.coins_total, info.gifts_total) == (1, 598, 2)
    [top] = await any_ledger.leaderboard(stream)
    assert (top.user_id, top.coins) == (sender, 598)
    [event] = [orjson.loads(e) for e in await any_ledger.feed(stream, 0, 10)]
    assert (event["seq"], event["gift_id"], event["transfer_id"]) == (
        1,
        "corgi",
        receipt.transfer_id,
    )
    totals = await reconciled(any_ledger)
    assert gifts_in(totals) == 1 and totals["platform_coins"] == 299


async def test_remainders_carry_and_the_creator_cashes_out(any_ledger: AnyLedger) -> None:
    """2,000 one-coin Roses at a 50 % share: each is half a diamond, carried, so 1,000
    diamonds in all (not 0); then a cash-out of them, once per client id."""
    stream, creator = await live_stream(any_ledger)
    senders = [await funded(any_ledger, 100) for _ in range(20)]
    receipts = await asyncio.gather(
        *(send(any_ledger, s, stream, creator) for s in senders for _ in range(100))
    )
    assert sorted(r.seq for r in receipts) == list(range(1, 2001))
    assert sum(r.diamonds for r in receipts) == 1000
    assert sum(r.platform_coins for r in receipts) == 1000
    assert (await any_ledger.balance(creator)).diamonds == 1000
    out = await any_ledger.cash_out(client_id="c1", creator_id=creator, diamonds=1000)
    assert (out.diamonds, out.balance, out.replayed) == (1000, 0, False) and out.cents > 0
    again = await any_ledger.cash_out(client_id="c1", creator_id=creator, diamonds=1000)
    assert again.replayed and again.transfer_id == out.transfer_id
    with pytest.raises(LedgerRefusal) as refused:
        await any_ledger.cash_out(client_id="c2", creator_id=creator, diamonds=1000)
    assert refused.value.code is ErrorCode.INSUFFICIENT_FUNDS
    assert (await any_ledger.balance(creator)).diamonds == 0
    totals = await reconciled(any_ledger)
    assert gifts_in(totals) == 2000 and totals["platform_coins"] == 1000


async def test_a_retry_replays_and_other_content_is_refused(any_ledger: AnyLedger) -> None:
    stream, creator = await live_stream(any_ledger)
    sender = await funded(any_ledger, 100)
    first = await send(any_ledger, sender, stream, creator, "same", gift_id="perfume", count=3)
    again = await send(any_ledger, sender, stream, creator, "same", gift_id="perfume", count=3)
    assert again.replayed and not first.replayed
    fields = ("transfer_id", "seq", "balance", "coins", "diamonds", "platform_coins", "combo")
    assert [getattr(again, f) for f in fields] == [getattr(first, f) for f in fields]
    before = await snapshot(any_ledger, sender, creator, stream)
    for gift_id, count in (("perfume", 4), ("rose", 3)):
        with pytest.raises(LedgerRefusal) as refused:
            await send(any_ledger, sender, stream, creator, "same", gift_id=gift_id, count=count)
        assert refused.value.code is ErrorCode.DUPLICATE_MISMATCH
    assert await snapshot(any_ledger, sender, creator, stream) == before
    # A committed gift still replays after its stream ended; a new one is refused.
    await any_ledger.end_stream(stream_id=stream, actor_id=creator, is_admin=False)
    ended = await send(any_ledger, sender, stream, creator, "same", gift_id="perfume", count=3)
    assert ended.replayed and ended.transfer_id == first.transfer_id
    assert (await any_ledger.balance(sender)).coins == 40
    assert (await any_ledger.stream(stream)).last_sequence == 1  # type: ignore[union-attr]
    totals = await reconciled(any_ledger)
    assert gifts_in(totals) == 1


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("poor", ErrorCode.INSUFFICIENT_FUNDS),
        ("no_account", ErrorCode.INSUFFICIENT_FUNDS),
        ("unknown_gift", ErrorCode.UNKNOWN_GIFT),
        ("unknown_stream", ErrorCode.UNKNOWN_STREAM),
        ("self_gift", ErrorCode.SELF_GIFT),
        ("wrong_creator", ErrorCode.INVALID_REQUEST),
        ("count_zero", ErrorCode.INVALID_REQUEST),
        ("ended", ErrorCode.STREAM_NOT_LIVE),
        ("old_catalog", ErrorCode.CATALOG_CHANGED),
    ],
)
async def test_a_refused_gift_writes_nothing(
    any_ledger: AnyLedger, case: str, code: ErrorCode
) -> None:
    stream, creator = await live_stream(any_ledger)
    sender = await funded(any_ledger, 100)
    await send(any_ledger, sender, stream, creator)  # a feed, a combo, a leaderboard exist
    who, target, to, gift_id, count, version = sender, stream, creator, "rose", 1, None
    if case == "poor":
        gift_id = "money_gun"
    elif case == "no_account":
        who = uid("nobody")
    elif case == "unknown_gift":
        gift_id = "unicorn"
    elif case == "unknown_stream":
        target = uid("nostream")
    elif case == "self_gift":
        await any_ledger.top_up(payment_id=uid("pay"), user_id=creator, coins=10)
        who = creator
    elif case == "wrong_creator":
        to = uid("other")
    elif case == "count_zero":
        count = 0
    elif case == "old_catalog":
        version = 99
    elif case == "ended":
        # (On a cluster the process that ends a stream forgets its cached state at once.)
        await any_ledger.end_stream(stream_id=stream, actor_id=creator, is_admin=False)
    ids = (sender, creator, stream, who, target, to)
    before = await snapshot(any_ledger, *ids)
    assert any(key.endswith(b"}:acct") for key in before)  # it sees the accounts
    with pytest.raises(LedgerRefusal) as refused:
        await send(
            any_ledger, who, target, to, "refused",
            gift_id=gift_id, count=count, catalog_version=version,
        )  # fmt: skip
    assert refused.value.code is code
    if case == "poor":
        assert refused.value.detail == {"balance": 99, "price": 500}
    if case == "old_catalog":
        current = (await any_ledger.current_catalog()).version
        assert refused.value.detail == {"catalog_version": current}
    assert await snapshot(any_ledger, *ids) == before
    totals = await reconciled(any_ledger)
    assert gifts_in(totals) == 1


async def test_three_hundred_concurrent_sends_from_a_wallet_for_a_hundred(
    open_any_ledger: OpenLedger,
) -> None:
    processes = [await open_any_ledger() for _ in range(2)]
    stream, creator = await live_stream(processes[0])
    sender = await funded(processes[0], 100)
    results = await asyncio.gather(
        *(send(processes[n % 2], sender, stream, creator) for n in range(300)),
        return_exceptions=True,
    )
    sent = [r for r in results if isinstance(r, GiftReceipt)]
    refused = [r for r in results if isinstance(r, LedgerRefusal)]
    assert len(sent) == 100 and len(refused) == 200, [
        r for r in results if not isinstance(r, (GiftReceipt, LedgerRefusal))
    ]
    assert {r.code for r in refused} == {ErrorCode.INSUFFICIENT_FUNDS}
    assert sorted(r.seq for r in sent) == list(range(1, 101))
    assert (await processes[1].balance(sender)).coins == 0
    feed = await processes[1].feed(stream, 0, 500)
    assert [orjson.loads(e)["seq"] for e in feed] == list(range(1, 101))
    totals = await reconciled(processes[0])
    assert gifts_in(totals) == 100


async def test_fifty_concurrent_duplicates_move_money_once(open_any_ledger: OpenLedger) -> None:
    processes = [await open_any_ledger() for _ in range(2)]
    stream, creator = await live_stream(processes[0])
    sender = await funded(processes[0], 100)
    results = await asyncio.gather(
        *(
            send(processes[n % 2], sender, stream, creator, "dup", gift_id="finger_heart", count=7)
            for n in range(50)
        )
    )
    assert sum(not r.replayed for r in results) == 1
    assert {(r.transfer_id, r.seq, r.balance) for r in results} == {(results[0].transfer_id, 1, 65)}
    assert (await processes[1].balance(sender)).coins == 65
    assert (await applied_gifts(processes[0]))[(sender, "dup")] == 1
    totals = await reconciled(processes[1])
    assert gifts_in(totals) == 1


async def test_the_rate_limit_refuses_and_writes_nothing(open_any_ledger: OpenLedger) -> None:
    ledger = await open_any_ledger(Limits(gifts_per_s_max=1, gift_burst_max=3, payout_hold_days=0))
    stream, creator = await live_stream(ledger)
    sender = await funded(ledger, 100)
    for _ in range(3):
        await send(ledger, sender, stream, creator)
    before = await snapshot(ledger, sender, creator, stream)
    with pytest.raises(LedgerRefusal) as refused:
        await send(ledger, sender, stream, creator)
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert refused.value.detail is not None and refused.value.detail["retry_after_ms"] > 0
    assert await snapshot(ledger, sender, creator, stream) == before
    assert (await ledger.balance(sender)).coins == 97
    totals = await reconciled(ledger)
    assert gifts_in(totals) == 3


async def test_the_daily_cap_refuses_past_the_limit(any_ledger: AnyLedger) -> None:
    stream, creator = await live_stream(any_ledger)
    sender = await funded(any_ledger, 1000)
    status = await any_ledger.spending.set(sender, day=150)
    assert status.applied["day"] == "now"
    await send(any_ledger, sender, stream, creator, gift_id="hand_hearts")  # 100
    before = await snapshot(any_ledger, sender, creator, stream)
    with pytest.raises(LedgerRefusal) as refused:
        await send(any_ledger, sender, stream, creator, gift_id="hand_hearts")
    assert refused.value.code is ErrorCode.SPENDING_LIMIT
    assert refused.value.detail is not None
    assert (refused.value.detail["period"], refused.value.detail["limit"]) == ("day", 150)
    assert await snapshot(any_ledger, sender, creator, stream) == before
    await send(any_ledger, sender, stream, creator, gift_id="perfume", count=2)  # 40 fits
    assert (await any_ledger.balance(sender)).coins == 860
    assert (await any_ledger.spending.show(sender)).day.spent_coins == 140
    totals = await reconciled(any_ledger)
    assert gifts_in(totals) == 2


async def test_a_refund_claws_back_what_is_left_and_the_rest_becomes_debt(
    any_ledger: AnyLedger,
) -> None:
    stream, creator = await live_stream(any_ledger)
    buyer = uid("buyer")
    await any_ledger.top_up(payment_id="p" + buyer, user_id=buyer, coins=500)
    for _ in range(2):
        await send(any_ledger, buyer, stream, creator, gift_id="cap")  # 198 spent
    refund = await any_ledger.refund(
        payment_id="p" + buyer, user_id=buyer, refund_id="r1", coins=400
    )
    assert (refund.refunded, refund.clawed, refund.debt_added) == (400, 302, 98)
    assert (refund.balance, refund.debt, refund.replayed) == (0, 98, False)
    again = await any_ledger.refund(
        payment_id="p" + buyer, user_id=buyer, refund_id="r1", coins=400
    )
    assert again.replayed and again.transfer_id == refund.transfer_id
    with pytest.raises(LedgerRefusal) as refused:  # a refund names the payment's buyer
        await any_ledger.refund(
            payment_id="p" + buyer, user_id=uid("other"), refund_id="r2", coins=1
        )
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    # The next payment repays the debt first.
    repaid = await any_ledger.top_up(payment_id="q" + buyer, user_id=buyer, coins=100)
    assert (repaid.debt_repaid, repaid.balance) == (98, 2)
    balance = await any_ledger.balance(buyer)
    assert (balance.coins, balance.debt_coins) == (2, 0)
    assert (await any_ledger.balance(creator)).diamonds == 99  # gifts stay with the creator
    totals = await reconciled(any_ledger)
    assert gifts_in(totals) == 2


async def test_gift_diamonds_are_held_and_a_chargeback_in_the_hold_claws_them_back(
    open_any_ledger: OpenLedger,
) -> None:
    """The payout hold (``docs/ledger.md``, "The payout hold", and "in cluster mode": the
    debit leg records the held gift, the credit leg holds the diamonds, a chargeback's
    clawback is a leg in the creator's slot, applied at once by the refund)."""
    ledger = await open_any_ledger(
        Limits(gifts_per_s_max=100_000, gift_burst_max=100_000, payout_hold_days=7)
    )
    stream, creator = await live_stream(ledger)
    fan = uid("fan")
    await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=10_000)
    await send(ledger, fan, stream, creator, gift_id="interstellar")  # 5,000 diamonds
    balance = await ledger.balance(creator)
    assert (balance.diamonds, balance.held_diamonds, balance.withdrawable_diamonds) == (
        5_000, 5_000, 0,
    )  # fmt: skip
    assert balance.next_release_ms > 0
    before = await snapshot(ledger, creator, fan, stream)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.cash_out(client_id="c1", creator_id=creator, diamonds=1_000)
    assert refused.value.code is ErrorCode.FUNDS_HELD
    assert refused.value.detail is not None
    assert (refused.value.detail["withdrawable"], refused.value.detail["held"]) == (0, 5_000)
    assert await snapshot(ledger, creator, fan, stream) == before
    refund = await ledger.refund(payment_id="p" + fan, user_id=fan, refund_id="r1", coins=10_000)
    assert (refund.refunded, refund.clawed, refund.reversed, refund.debt_added) == (
        10_000, 0, 10_000, 0,
    )  # fmt: skip
    after = await ledger.balance(creator)
    assert (after.diamonds, after.held_diamonds) == (0, 0)
    buyer = await ledger.balance(fan)
    assert (buyer.coins, buyer.debt_coins) == (0, 0)
    await quiet(ledger)
    totals = await reconciled(ledger)
    assert gifts_in(totals) == 1


async def test_combos_goals_and_the_leaderboard_move_with_the_gifts(any_ledger: AnyLedger) -> None:
    stream, creator = await live_stream(any_ledger)
    alice, bob = await funded(any_ledger, 1_000, "alice"), await funded(any_ledger, 1_000, "bob")
    goal = Goal(goal_id="g", kind=GoalKind.COINS, gift_id="", target=100, title="100 coins")
    await any_ledger.set_goal(stream_id=stream, actor_id=creator, goal=goal)
    combos = [(await send(any_ledger, alice, stream, creator)).combo for _ in range(3)]
    assert combos == [1, 2, 3]
    assert (await send(any_ledger, bob, stream, creator)).combo == 1
    assert (await send(any_ledger, alice, stream, creator, gift_id="heart")).combo == 1
    # Concurrent gifts from both: the goal counts each coin once.
    await asyncio.gather(
        *(send(any_ledger, who, stream, creator) for who in (alice, bob) for _ in range(60))
    )
    [progress] = await any_ledger.stream_goals(stream)
    assert (progress.goal_id, progress.progress, progress.reached) == ("g", 125, True)
    top = await any_ledger.leaderboard(stream)
    assert [(t.user_id, t.name, t.coins) for t in top] == [
        (alice, alice.title(), 64), (bob, bob.title(), 61),
    ]  # fmt: skip
    assert await any_ledger.fan_level(creator, alice) == top[0].level
    totals = await reconciled(any_ledger)
    assert gifts_in(totals) == 125


async def test_a_gift_to_a_guest_and_the_payout_hold_per_mode(
    open_any_ledger: OpenLedger,
) -> None:
    """A guest on stage is paid the same on both, and their diamonds are held alike (a
    cluster holds them in the guest's own slot, ``docs/ledger.md``, "Guests on stage in
    cluster mode"). A gift naming someone off stage: ``not_a_guest``, nothing written."""
    ledger = await open_any_ledger(
        Limits(gifts_per_s_max=100_000, gift_burst_max=100_000, payout_hold_days=7)
    )
    stream, creator = await live_stream(ledger)
    sender = await funded(ledger, 100)
    guest, stranger = uid("guest"), uid("stranger")

    async def to(user: str, client_id: str) -> GiftReceipt:
        return await ledger.send_gift(
            client_id=client_id, sender_id=sender, sender_name="S", stream_id=stream,
            creator_id=creator, gift_id="perfume", count=1, to=user,
        )  # fmt: skip

    await ledger.guests.invite(stream_id=stream, creator_id=creator, guest_id=guest)
    await ledger.guests.join(stream_id=stream, guest_id=guest, name="G")
    before = await snapshot(ledger, sender, creator, stream, stranger)
    with pytest.raises(LedgerRefusal) as refused:
        await to(stranger, "to-stranger")
    assert refused.value.code is ErrorCode.NOT_A_GUEST
    assert await snapshot(ledger, sender, creator, stream, stranger) == before
    receipt = await to(guest, "to-guest")
    assert (receipt.coins, receipt.diamonds, receipt.balance) == (20, 10, 80)
    paid = await ledger.balance(guest)
    assert (paid.diamonds, paid.held_diamonds, paid.withdrawable_diamonds) == (10, 10, 0)
    assert (await ledger.balance(creator)).diamonds == 0
    await quiet(ledger)
    totals = await reconciled(ledger)
    assert gifts_in(totals) == 1


async def test_a_streams_life_and_who_may_change_it(any_ledger: AnyLedger) -> None:
    stream, creator = await live_stream(any_ledger)
    codes = []
    for call in (
        any_ledger.start_stream(stream_id=stream, creator_id=uid("squatter"), title="t"),
        any_ledger.end_stream(stream_id=stream, actor_id=uid("stranger"), is_admin=False),
        any_ledger.end_stream(stream_id=uid("nostream"), actor_id=creator, is_admin=False),
    ):
        with pytest.raises(LedgerRefusal) as refused:
            await call
        codes.append(refused.value.code)
    assert codes == [ErrorCode.STREAM_EXISTS, ErrorCode.NOT_STREAM_OWNER, ErrorCode.UNKNOWN_STREAM]
    ended = await any_ledger.end_stream(stream_id=stream, actor_id=creator, is_admin=False)
    again = await any_ledger.end_stream(stream_id=stream, actor_id=creator, is_admin=False)
    assert (ended.state.value, ended.replayed, again.state.value, again.replayed) == (
        "ended", False, "ended", True,
    )  # fmt: skip
    reopened = await any_ledger.start_stream(stream_id=stream, creator_id=creator, title="t2")
    assert (reopened.state.value, reopened.replayed) == ("live", False)
    sender = await funded(any_ledger, 10)
    assert (await send(any_ledger, sender, stream, creator)).seq == 1
    totals = await reconciled(any_ledger)
    assert gifts_in(totals) == 1


async def test_payment_edges_refund_first_and_more_than_paid(any_ledger: AnyLedger) -> None:
    buyer = uid("buyer")
    early = await any_ledger.refund(payment_id="p" + buyer, user_id=buyer, refund_id="r1", coins=40)
    assert (early.before_payment, early.refunded, early.balance) == (True, 0, 0)
    paid = await any_ledger.top_up(payment_id="p" + buyer, user_id=buyer, coins=100)
    assert (paid.credited, paid.withheld, paid.balance) == (60, 40, 60)
    over = await any_ledger.refund(payment_id="p" + buyer, user_id=buyer, refund_id="r2", coins=500)
    assert (over.refunded, over.clawed, over.debt_added, over.balance) == (60, 60, 0, 0)
    for call in (
        any_ledger.top_up(payment_id=uid("p"), user_id=buyer, coins=0),
        any_ledger.refund(payment_id="p" + buyer, user_id=buyer, refund_id="r3", coins=0),
        any_ledger.cash_out(client_id="c0", creator_id=buyer, diamonds=0),
    ):
        with pytest.raises(LedgerRefusal) as refused:
            await call
        assert refused.value.code is ErrorCode.INVALID_REQUEST
    with pytest.raises(LedgerRefusal) as small:
        await any_ledger.cash_out(client_id="c1", creator_id=buyer, diamonds=999)
    assert (small.value.code, small.value.detail) == (ErrorCode.BELOW_MINIMUM, {"minimum": 1000})
    assert (await any_ledger.balance(buyer)).coins == 0
    totals = await reconciled(any_ledger)
    assert gifts_in(totals) == 0


async def test_a_gift_racing_the_end_of_its_stream_per_mode(open_any_ledger: OpenLedger) -> None:
    """A documented difference (``docs/ledger.md``, "The stream's state before the debit"):
    on a cluster the debit's slot cannot see the stream, so a process trusts the state it
    read for ``STREAM_STATE_TTL_S``: a gift through another process in that second still
    goes through (paid while live as far as it could know), and is refused after it. On one
    node the script reads the stream itself: refused at once."""
    here, there = await open_any_ledger(), await open_any_ledger()
    stream, creator = await live_stream(here)
    sender = await funded(here, 10)
    await send(there, sender, stream, creator)  # ``there`` has read the stream: live
    await here.end_stream(stream_id=stream, actor_id=creator, is_admin=False)
    if isinstance(there, ClusterLedger):
        assert (await send(there, sender, stream, creator)).seq == 2
        await asyncio.sleep(STREAM_STATE_TTL_S + 0.1)
    with pytest.raises(LedgerRefusal) as refused:
        await send(there, sender, stream, creator)
    assert refused.value.code is ErrorCode.STREAM_NOT_LIVE
    totals = await reconciled(here)
    assert gifts_in(totals) == (2 if isinstance(there, ClusterLedger) else 1)
