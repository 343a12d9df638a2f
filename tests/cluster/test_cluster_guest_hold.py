"""The payout hold of gifts to guests on the loopback cluster (docs/ledger.md, "Guests on stage
in cluster mode"): a guest's diamonds held in the guest's own day buckets by the debit's day,
cash_out refusing them, and a chargeback inside the hold clawing them back from whoever
received them. Time: as ``test_cluster_hold.py``, the tests move stored days back (``age``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from server.domain.errors import ErrorCode, LedgerRefusal, UnavailableError
from server.ledger.cluster_clawbacks import Clawback, apply_clawback, receipt_clawbacks
from server.ledger.cluster_credits import CreditResult, Transfer
from server.ledger.cluster_guests import GuestCredit, GuestResult
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.cluster_relay import Relay
from server.ledger.guests import ALL_GUESTS
from server.ledger.keys import Keys
from server.ledger.receipts import RefundReceipt
from tests.cluster.legs import funded, gift, live_stream, open_ledger, uid
from tests.cluster.test_cluster_guests import guests_in_three_thirds, on_stage
from tests.cluster.test_cluster_hold import HELD, HOLD_DAYS, age, reconciled
from tests.support.cluster import RedisCluster


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix, HELD)
    yield ledger
    await ledger.aclose()


async def test_a_guests_diamonds_are_held_and_cash_out_takes_only_withdrawable(
    ledger: ClusterLedger,
) -> None:
    stream, creator, guest = await one_guest_on_stage(ledger)
    fan = await bought(ledger, 10_000)
    await interstellar(ledger, fan, stream, creator, guest)
    balance = await ledger.balance(guest)
    assert (balance.diamonds, balance.held_diamonds, balance.withdrawable_diamonds) == (
        5_000, 5_000, 0,
    )  # fmt: skip
    assert balance.next_release_ms > time.time() * 1000
    with pytest.raises(LedgerRefusal) as held:
        await ledger.cash_out(client_id="c1", creator_id=guest, diamonds=1)
    assert held.value.code is ErrorCode.FUNDS_HELD
    assert held.value.detail is not None
    assert (held.value.detail["withdrawable"], held.value.detail["held"]) == (0, 5_000)
    await age(ledger, [guest], HOLD_DAYS)  # the last day of the hold: still held
    assert (await ledger.balance(guest)).held_diamonds == 5_000
    await age(ledger, [guest], 1)
    assert (await ledger.balance(guest)).withdrawable_diamonds == 5_000
    out = await ledger.cash_out(client_id="c1", creator_id=guest, diamonds=5_000)
    assert out.balance == 0
    await reconciled(ledger)


async def one_guest_on_stage(ledger: ClusterLedger) -> tuple[str, str, str]:
    """A live stream (stream, creator) with one guest on its stage."""
    stream, creator = await live_stream(ledger)
    guest = uid("guest")
    await on_stage(ledger, stream, creator, guest)
    return stream, creator, guest


async def interstellar(
    ledger: ClusterLedger, sender: str, stream: str, creator: str, guest: str
) -> None:
    """10,000 coins from ``sender`` to ``guest``: 5,000 diamonds, held."""
    await gift(ledger, sender, stream, creator, gift_id="interstellar", to=guest)


async def bought(ledger: ClusterLedger, coins: int) -> str:
    """A buyer with one payment ``p<buyer>`` of ``coins``."""
    buyer = uid("fan")
    await ledger.top_up(payment_id="p" + buyer, user_id=buyer, coins=coins)
    return buyer


async def charge_back(ledger: ClusterLedger, buyer: str, coins: int) -> RefundReceipt:
    return await ledger.refund(payment_id="p" + buyer, user_id=buyer, refund_id="r1", coins=coins)


async def diamonds(ledger: ClusterLedger, *users: str) -> list[tuple[int, int]]:
    """(diamonds, held) of each user."""
    out = []
    for user in users:
        b = await ledger.balance(user)
        out.append((b.diamonds, b.held_diamonds))
    return out


async def settled_by_relay(ledger: ClusterLedger, rounds: int = 10) -> None:
    """Relay rounds until reconcile finds nothing pending (and no problem)."""
    relay = Relay(ledger, grace_ms=0, full_sweep_s=0)
    for _ in range(rounds):
        await relay.round()
        await asyncio.sleep(0.05)
        report = await reconcile_cluster(ledger)
        if report.ok and not report.pending:
            return
    assert report.ok and not report.pending, (report.problems, report.pending)


async def test_a_chargeback_claws_back_a_split_over_guests_in_three_slots(
    ledger: ClusterLedger,
) -> None:
    stream, creator = await live_stream(ledger)
    guests = guests_in_three_thirds()
    await on_stage(ledger, stream, creator, *guests)
    buyer = await bought(ledger, 10_000)
    await gift(ledger, buyer, stream, creator, gift_id="interstellar", to=ALL_GUESTS)
    before = await diamonds(ledger, *guests)
    assert sum(d for d, _ in before) == 4_999 and all(d == h for d, h in before)
    # A part first: 1,000 coins, taken from the guests in id order (3,334 coins the first's).
    part = await ledger.refund(payment_id="p" + buyer, user_id=buyer, refund_id="r0",
                               coins=1_000)  # fmt: skip
    assert (part.reversed, part.debt_added) == (1_000, 0)
    after = await diamonds(ledger, *guests)
    assert [d for d, _ in after] == [before[0][0] - 500, before[1][0], before[2][0]]
    await reconciled(ledger)
    refund = await charge_back(ledger, buyer, 9_000)
    assert (refund.reversed, refund.debt_added) == (9_000, 0)
    assert await diamonds(ledger, *guests, creator) == [(0, 0)] * 4
    for guest in guests:
        assert await ledger.command(ledger.keys.account(guest), "HGET", "share_rem") == b"0"
    await reconciled(ledger)


async def test_a_redirected_gift_is_clawed_back_from_the_creator(ledger: ClusterLedger) -> None:
    """The guest left between the debit and the credit: the creator received the gift, so
    the creator pays it back, and the guest (who got nothing) is untouched."""
    stream, creator = await live_stream(ledger)
    guest, other = uid("guest"), uid("other")
    await on_stage(ledger, stream, creator, guest, other)
    buyer = await bought(ledger, 20_000)
    await gift(ledger, buyer, stream, creator, gift_id="interstellar", to=other)  # other's
    credit = ledger.credits.credit

    async def leaves_first(transfer: Transfer) -> CreditResult:
        await ledger.guests.leave(stream_id=stream, actor_id=guest, guest_id=guest)
        return await credit(transfer)

    ledger.credits.credit = leaves_first  # type: ignore[method-assign]
    await interstellar(ledger, buyer, stream, creator, guest)
    ledger.credits.credit = credit  # type: ignore[method-assign]
    assert await diamonds(ledger, creator, guest, other) == [(5_000, 5_000), (0, 0), (5_000,) * 2]
    refund = await charge_back(ledger, buyer, 20_000)
    assert (refund.reversed, refund.debt_added) == (20_000, 0)
    assert await diamonds(ledger, creator, guest, other) == [(0, 0)] * 3
    await reconciled(ledger)


async def test_a_chargeback_after_the_hold_is_debt_and_claws_nothing(
    ledger: ClusterLedger,
) -> None:
    stream, creator, guest = await one_guest_on_stage(ledger)
    buyer = await bought(ledger, 10_000)
    await interstellar(ledger, buyer, stream, creator, guest)
    await age(ledger, [buyer, creator, guest], HOLD_DAYS + 1)
    refund = await charge_back(ledger, buyer, 10_000)
    assert (refund.reversed, refund.debt_added) == (0, 10_000)
    balance = await ledger.balance(guest)
    assert (balance.diamonds, balance.withdrawable_diamonds) == (5_000, 5_000)
    await reconciled(ledger)


async def test_replays_of_the_refund_and_of_each_clawback_move_nothing(
    ledger: ClusterLedger,
) -> None:
    stream, creator = await live_stream(ledger)
    guests = guests_in_three_thirds()[:2]
    await on_stage(ledger, stream, creator, *guests)
    buyer = await bought(ledger, 10_000)
    await gift(ledger, buyer, stream, creator, gift_id="interstellar", to=ALL_GUESTS)
    refund = await charge_back(ledger, buyer, 10_000)
    assert await diamonds(ledger, *guests) == [(0, 0)] * 2
    again = await charge_back(ledger, buyer, 10_000)
    assert again.replayed and again.transfer_id == refund.transfer_id
    # Each leg again, by hand: the creator's clawback replays with its forwards, and each
    # guest clawback replays.
    [claim] = await _claims(ledger, buyer)
    parent = await apply_clawback(ledger.runner, ledger.keys, ledger.limits, claim)
    assert parent.status == "replay" and sorted(c.creator_id for c, _ in parent.forwarded) == guests
    for child, _ in parent.forwarded:
        result = await apply_clawback(ledger.runner, ledger.keys, ledger.limits, child)
        assert result.status == "replay"
    assert await diamonds(ledger, *guests) == [(0, 0)] * 2
    await reconciled(ledger)


async def _claims(ledger: ClusterLedger, buyer: str) -> list[Clawback]:
    """The clawbacks refund r1 of the buyer's payment claimed (from the refund record)."""

    raw = await ledger.command(ledger.keys.refund(buyer, "p" + buyer, "r1"), "HGET", "receipt")
    return receipt_clawbacks(orjson.loads(raw))


async def test_a_crash_after_the_refund_or_after_the_creators_hop_is_the_relays(
    ledger: ClusterLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, creator = await live_stream(ledger)
    guests = guests_in_three_thirds()
    await on_stage(ledger, stream, creator, *guests)
    first, second = await bought(ledger, 10_000), await bought(ledger, 10_000)
    for buyer in (first, second):
        await gift(ledger, buyer, stream, creator, gift_id="interstellar", to=ALL_GUESTS)
    held = sum(d for d, _ in await diamonds(ledger, *guests))

    async def lost(clawbacks: list[Clawback]) -> list[bool]:
        return [False for _ in clawbacks]  # as if the process died after the buyer's leg

    monkeypatch.setattr(ledger, "apply_clawbacks", lost)
    await charge_back(ledger, first, 10_000)
    await charge_back(ledger, second, 10_000)
    monkeypatch.undo()
    # The second buyer's clawback: the creator's hop runs, the process dies before the
    # guests' hops (their guest clawbacks wait in the creator's slot's outbox).
    [claim] = await _claims(ledger, second)
    parent = await apply_clawback(ledger.runner, ledger.keys, ledger.limits, claim)
    assert parent.status == "ok" and len(parent.forwarded) == 3
    assert sum(d for d, _ in await diamonds(ledger, *guests)) == held  # nothing clawed yet
    report = await reconcile_cluster(ledger)
    assert report.ok, report.problems
    assert sorted(p.coins for p in report.pending) == [3_333, 3_333, 3_334, 10_000]
    await settled_by_relay(ledger)
    assert await diamonds(ledger, *guests) == [(0, 0)] * 3


async def test_a_clawback_before_the_credit_waits_and_takes_nobody_elses_diamonds(
    ledger: ClusterLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, creator, guest = await one_guest_on_stage(ledger)
    other, buyer = await bought(ledger, 10_000), await bought(ledger, 10_000)
    await interstellar(ledger, other, stream, creator, guest)
    assert await diamonds(ledger, guest) == [(5_000, 5_000)]

    async def down(transfer: Transfer) -> CreditResult:
        raise UnavailableError("the creator's primary is away")

    monkeypatch.setattr(ledger.credits, "credit", down)
    with pytest.raises(UnavailableError):
        await interstellar(ledger, buyer, stream, creator, guest)
    monkeypatch.undo()
    refund = await charge_back(ledger, buyer, 10_000)
    assert (refund.reversed, refund.debt_added) == (10_000, 0)  # claimed: its gift is held
    # The clawback finds no credit of the buyer's gift: it waits, and the guest keeps the
    # other buyer's diamonds.
    assert await diamonds(ledger, guest) == [(5_000, 5_000)]
    report = await reconcile_cluster(ledger)
    assert report.ok and sorted(p.coins for p in report.pending) == [10_000, 10_000]
    await settled_by_relay(ledger)  # the credit, its guest-credit, then the clawback
    assert await diamonds(ledger, guest, creator) == [(5_000, 5_000), (0, 0)]


async def test_a_guest_clawback_before_the_guest_credit_waits(
    ledger: ClusterLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, creator, guest = await one_guest_on_stage(ledger)
    other, buyer = await bought(ledger, 10_000), await bought(ledger, 10_000)
    await interstellar(ledger, other, stream, creator, guest)

    async def died(credit: GuestCredit) -> GuestResult:
        raise UnavailableError("died between the credit and the guest-credit")

    monkeypatch.setattr(ledger.guest_credits, "credit", died)
    with pytest.raises(UnavailableError):
        await gift(ledger, buyer, stream, creator, gift_id="interstellar", to=ALL_GUESTS)
    monkeypatch.undo()
    refund = await charge_back(ledger, buyer, 10_000)
    assert refund.reversed == 10_000
    # The creator's hop forwarded the guest's part; the guest's hop waits for the
    # guest-credit rather than take the other buyer's diamonds.
    assert await diamonds(ledger, guest) == [(5_000, 5_000)]
    report = await reconcile_cluster(ledger)
    assert report.ok, report.problems
    assert sorted(p.coins for p in report.pending) == [10_000, 10_000]  # guest-credit, clawback
    await settled_by_relay(ledger)
    assert await diamonds(ledger, guest) == [(5_000, 5_000)]


async def test_a_chargeback_while_gifts_to_guests_are_credited_from_three_processes(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    ledgers = [await open_ledger(redis_cluster, keys.prefix, HELD) for _ in range(3)]
    try:
        stream, creator = await live_stream(ledgers[0])
        guests = guests_in_three_thirds()
        await on_stage(ledgers[0], stream, creator, *guests)
        buyer = await bought(ledgers[0], 5_000)
        others = [await funded(ledgers[0], 2_970, "fan") for _ in range(3)]

        async def gifts(i: int, sender: str, n: int) -> None:
            for k in range(n):
                to = ALL_GUESTS if k % 2 else guests[k % 3]
                try:
                    await gift(ledgers[i % 3], sender, stream, creator, gift_id="cap", to=to)
                except LedgerRefusal as refusal:
                    assert refusal.code is ErrorCode.INSUFFICIENT_FUNDS  # charged back

        async def chargeback() -> RefundReceipt:
            await asyncio.sleep(0.05)
            return await charge_back(ledgers[1], buyer, 5_000)

        *_, refund = await asyncio.gather(
            gifts(0, buyer, 50), *(gifts(i, f, 30) for i, f in enumerate(others)), chargeback()
        )
        assert isinstance(refund, RefundReceipt) and refund.refunded == 5_000
        assert refund.clawed + refund.reversed == 5_000 and refund.debt_added == 0
        await settled_by_relay(ledgers[0])
        # What the others gave stays with the guests: 90 caps of 99 coins, 50 % each.
        given = sum(d for d, _ in await diamonds(ledgers[0], *guests))
        assert 90 * 99 // 2 - 3 <= given <= 90 * 99 // 2
        assert (await ledgers[0].balance(creator)).diamonds == 0
    finally:
        for ledger in ledgers:
            await ledger.aclose()


async def test_reconcile_finds_a_lost_guest_clawback_and_a_changed_note(
    ledger: ClusterLedger,
) -> None:
    stream, creator, guest = await one_guest_on_stage(ledger)
    buyer = await bought(ledger, 20_000)
    await interstellar(ledger, buyer, stream, creator, guest)
    await interstellar(ledger, buyer, stream, creator, guest)
    refund = await ledger.refund(payment_id="p" + buyer, user_id=buyer, refund_id="r1",
                                 coins=10_000)  # fmt: skip
    assert refund.reversed == 10_000
    await reconciled(ledger)
    k = ledger.keys
    day = int(time.time()) // ledger.limits.payout_hold_day_s
    note = k.stage_held(creator, day, buyer)
    [(name, coins)] = (await ledger.command(note, "HGETALL")).items()
    await ledger.command(note, "HSET", name, int(coins) + 1)
    report = await reconcile_cluster(ledger)
    assert any(p.startswith(f"{note}: holds") for p in report.problems), report.problems
    await ledger.command(note, "HSET", name, coins)
    # A guest clawback forwarded and then lost (to a guest "ghost"): its outbox entry gone,
    # never applied, and its coins past what the claim named.
    outbox = k.outbox_shard(slot_of(k.account(creator)))
    log = k.ledger_shard(slot_of(k.account(creator)))
    await ledger.command(log, "XADD", "*", "type", "clawback_forward",
                         "clawback_id", f"p{buyer}|r1|{creator}|ghost", "parent",
                         f"p{buyer}|r1|{creator}", "payment", "p" + buyer, "refund_id", "r1",
                         "from", "ghost", "via", creator, "to", buyer, "coins", 1,
                         "items", f"{day}:5000:1")  # fmt: skip
    assert await ledger.command(outbox, "XLEN") == 0
    report = await reconcile_cluster(ledger)
    assert any("neither applied nor pending" in p for p in report.problems), report.problems
    assert any("applied" in p and "claimed" in p for p in report.problems), report.problems
