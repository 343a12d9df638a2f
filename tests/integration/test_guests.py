"""Guests on stage against a real Redis: invite, join, leave, gifts to one guest and to
every guest (split exactly, each guest's remainder carried), every refusal, replays, a
guest leaving while gifts to them are in flight, and the books reconciling."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, LedgerRefusal
from server.domain.limits import GUESTS_MAX, Limits
from server.ledger.guests import ALL_GUESTS
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.receipts import GiftReceipt
from server.protocol.events import GUEST_FIELDS, GUESTS_EVENT_FIELDS
from tests.integration.helpers import assert_books_reconcile, make_ledger, snapshot

STREAM, CREATOR = "stage1", "host"


@pytest.fixture
async def ledger(redis: Redis, keys: Keys) -> Ledger:
    ledger = await make_ledger(redis, keys, Limits(gifts_per_s_max=1000, gift_burst_max=1000))
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="stage")
    for user in ("ann", "bob"):
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=1_000_000)
    return ledger


async def _on_stage(ledger: Ledger, *guests: str) -> dict[str, Any]:
    event: dict[str, Any] = {}
    for guest in guests:
        await ledger.guests.invite(stream_id=STREAM, creator_id=CREATOR, guest_id=guest)
        event = await ledger.guests.join(stream_id=STREAM, guest_id=guest, name=guest.upper())
    return event


async def _send(
    ledger: Ledger, client_id: str, to: str | None, gift: str = "rose", sender: str = "ann"
) -> GiftReceipt:
    return await ledger.send_gift(
        client_id=client_id,
        sender_id=sender,
        sender_name=sender.title(),
        stream_id=STREAM,
        creator_id=CREATOR,
        gift_id=gift,
        count=1,
        to=to,
    )


async def _refused(code: ErrorCode, call: Any) -> None:
    with pytest.raises(LedgerRefusal) as info:
        await call
    assert info.value.code is code, info.value


async def _feed(ledger: Ledger) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in await ledger.feed(STREAM, 0, 1000)]


async def test_a_guest_receives_a_gift_named_to_them(ledger: Ledger) -> None:
    event = await _on_stage(ledger, "gina")
    assert set(event) == GUESTS_EVENT_FIELDS
    assert event["guests"] == [
        {"user_id": "gina", "name": "GINA", "state": "on", "coins": 0, "diamonds": 0}
    ]
    receipt = await _send(ledger, "g1", "gina", "corgi")  # 299 coins
    assert receipt.diamonds == 149
    assert (await ledger.balance("gina")).diamonds == 149
    assert (await ledger.balance(CREATOR)).diamonds == 0
    (gift,) = await _feed(ledger)
    assert gift["to"] == "gina"
    assert gift["recipients"] == [{"user_id": "gina", "coins": 299, "diamonds": 149}]
    stage = await ledger.guests.stage(STREAM)
    assert set(stage[0]) == GUEST_FIELDS and (stage[0]["coins"], stage[0]["diamonds"]) == (
        299,
        149,
    )
    # A gift without `to` still goes to the creator, and its event names no recipient.
    await _send(ledger, "g2", None, "corgi")
    assert (await ledger.balance(CREATOR)).diamonds == 149
    assert "to" not in (await _feed(ledger))[-1]
    await assert_books_reconcile(ledger)


async def test_a_gift_to_all_guests_is_split_exactly_with_each_remainder_carried(
    ledger: Ledger,
) -> None:
    await _on_stage(ledger, "g1", "g2", "g3")
    total = 0
    for i in range(10):
        receipt = await _send(ledger, f"all{i}", ALL_GUESTS, "corgi")  # 299 coins, 3 guests
        total += 299
        assert receipt.coins == 299
    diamonds = [(await ledger.balance(g)).diamonds for g in ("g1", "g2", "g3")]
    stage = {g["user_id"]: g for g in await ledger.guests.stage(STREAM)}
    # The coins: 99 or 100 each per gift, the extra coins turning from guest to guest.
    assert sum(g["coins"] for g in stage.values()) == total
    assert max(g["coins"] for g in stage.values()) - min(g["coins"] for g in stage.values()) <= 1
    # The diamonds: each guest's half of what they received, their remainder carried.
    for guest, held in zip(("g1", "g2", "g3"), diamonds, strict=True):
        assert held == stage[guest]["diamonds"] == stage[guest]["coins"] // 2
    events = await _feed(ledger)
    assert all(e["to"] == "*" and len(e["recipients"]) == 3 for e in events)
    assert all(sum(r["coins"] for r in e["recipients"]) == 299 for e in events)
    await assert_books_reconcile(ledger)


async def test_every_stage_refusal_changes_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    g = ledger.guests
    await _refused(ErrorCode.NO_GUESTS, _send(ledger, "x0", ALL_GUESTS))
    await _refused(ErrorCode.NOT_A_GUEST, _send(ledger, "x1", "nobody"))
    await g.invite(stream_id=STREAM, creator_id=CREATOR, guest_id="inv")
    before = await snapshot(redis, keys)
    await _refused(ErrorCode.NOT_A_GUEST, _send(ledger, "x2", "inv"))  # invited, not on yet
    await _refused(
        ErrorCode.NOT_STREAM_OWNER, g.invite(stream_id=STREAM, creator_id="ann", guest_id="x")
    )
    await _refused(
        ErrorCode.SELF_GIFT, g.invite(stream_id=STREAM, creator_id=CREATOR, guest_id=CREATOR)
    )
    await _refused(
        ErrorCode.UNKNOWN_STREAM, g.invite(stream_id="none", creator_id=CREATOR, guest_id="x")
    )
    await _refused(ErrorCode.NOT_A_GUEST, g.join(stream_id=STREAM, guest_id="uninvited", name="U"))
    await _refused(
        ErrorCode.NOT_STREAM_OWNER, g.leave(stream_id=STREAM, actor_id="bob", guest_id="inv")
    )
    await _refused(
        ErrorCode.NOT_A_GUEST, g.leave(stream_id=STREAM, actor_id=CREATOR, guest_id="nobody")
    )
    assert await snapshot(redis, keys) == before
    # The stage holds at most 8, invited or on.
    for i in range(GUESTS_MAX - 1):
        await g.invite(stream_id=STREAM, creator_id=CREATOR, guest_id=f"s{i}")
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as info:
        await g.invite(stream_id=STREAM, creator_id=CREATOR, guest_id="ninth")
    assert info.value.code is ErrorCode.GUEST_LIMIT and info.value.detail == {"guests_max": 8}
    assert await snapshot(redis, keys) == before
    # A guest who left can no longer receive, and frees a place.
    await g.join(stream_id=STREAM, guest_id="s0", name="S0")
    await g.leave(stream_id=STREAM, actor_id="s0", guest_id="s0")
    await _refused(ErrorCode.GUEST_LEFT, _send(ledger, "x3", "s0"))
    await _refused(ErrorCode.NOT_A_GUEST, g.join(stream_id=STREAM, guest_id="s0", name="S0"))
    await g.invite(stream_id=STREAM, creator_id=CREATOR, guest_id="ninth")
    # A guest cannot gift themselves; the stream must be live.
    await g.join(stream_id=STREAM, guest_id="s1", name="S1")
    await ledger.top_up(payment_id="pay-s1", user_id="s1", coins=10)
    await _refused(ErrorCode.SELF_GIFT, _send(ledger, "x4", "s1", sender="s1"))
    await _refused(ErrorCode.SELF_GIFT, _send(ledger, "x5", ALL_GUESTS, sender="s1"))
    await ledger.end_stream(stream_id=STREAM, actor_id=CREATOR, is_admin=False)
    await _refused(
        ErrorCode.STREAM_NOT_LIVE, g.invite(stream_id=STREAM, creator_id=CREATOR, guest_id="y")
    )
    await assert_books_reconcile(ledger)


async def test_replays(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    g = ledger.guests
    await _on_stage(ledger, "gina")
    before = await snapshot(redis, keys)
    await g.invite(stream_id=STREAM, creator_id=CREATOR, guest_id="gina")
    await g.join(stream_id=STREAM, guest_id="gina", name="GINA")
    assert await snapshot(redis, keys) == before
    first = await _send(ledger, "r1", "gina")
    again = await _send(ledger, "r1", "gina")
    assert again.replayed and again.transfer_id == first.transfer_id
    # The same id for another recipient is not the same gift.
    await _refused(ErrorCode.DUPLICATE_MISMATCH, _send(ledger, "r1", None))
    await g.leave(stream_id=STREAM, actor_id="gina", guest_id="gina")
    before = await snapshot(redis, keys)
    await g.leave(stream_id=STREAM, actor_id=CREATOR, guest_id="gina")
    assert await snapshot(redis, keys) == before
    # A retry of a gift that landed before the guest left still gets its receipt.
    assert (await _send(ledger, "r1", "gina")).replayed


async def test_the_stage_changing_under_a_gift_to_all_is_retried(ledger: Ledger) -> None:
    await _on_stage(ledger, "g1", "g2")
    # The caller's view is stale (g3 joined after it read the stage): refused, nothing moved.
    with pytest.raises(LedgerRefusal) as info:
        await ledger._send_gift(
            client_id="stale", sender_id="ann", sender_name="Ann", stream_id=STREAM,
            creator_id=CREATOR, gift_id="rose", count=1, catalog_version=None, to="*",
            recipients=["g1"],
        )  # fmt: skip
    assert info.value.code is ErrorCode.GUESTS_CHANGED
    assert (await ledger.balance("ann")).coins == 1_000_000
    # Ledger.send_gift reads the stage again itself.
    receipt = await _send(ledger, "fresh", ALL_GUESTS, "corgi")
    assert receipt.coins == 299


async def test_a_guest_leaving_while_gifts_to_them_are_in_flight(ledger: Ledger) -> None:
    await _on_stage(ledger, "gina", "gus")
    sent: list[tuple[str, str, GiftReceipt | LedgerRefusal]] = []

    async def gift(i: int, to: str) -> None:
        try:
            sent.append(
                (f"f{i}", to, await _send(ledger, f"f{i}", to, "corgi", ("ann", "bob")[i % 2]))
            )
        except LedgerRefusal as refusal:
            sent.append((f"f{i}", to, refusal))

    tasks = [gift(i, ("gina", ALL_GUESTS)[i % 2]) for i in range(100)]
    await asyncio.gather(
        *tasks[:50],
        ledger.guests.leave(stream_id=STREAM, actor_id="gina", guest_id="gina"),
        *tasks[50:],
    )
    # Whichever lane Redis ran first, gifts after the leave are refused or split without her.
    await asyncio.gather(*(gift(i, ("gina", ALL_GUESTS)[i % 2]) for i in range(100, 110)))
    refused = [r for _, _, r in sent if isinstance(r, LedgerRefusal)]
    assert len(refused) >= 5 and all(r.code is ErrorCode.GUEST_LEFT for r in refused)
    events = sorted(await _feed(ledger), key=lambda e: e["seq"])
    # Once a gift saw gina gone, no later one paid her: the leave is one point in the order.
    paid_gina = [
        e["seq"] for e in events if any(r["user_id"] == "gina" for r in e.get("recipients", []))
    ]
    without = [e["seq"] for e in events if e["to"] == "*" and len(e["recipients"]) == 1]
    assert not without or not paid_gina or max(paid_gina) < min(without)
    stage = await ledger.guests.stage(STREAM)
    assert [g["user_id"] for g in stage] == ["gus"]
    gina_coins = sum(
        r["coins"] for e in events for r in e.get("recipients", []) if r["user_id"] == "gina"
    )
    assert (await ledger.balance("gina")).diamonds == gina_coins // 2
    await assert_books_reconcile(ledger)


async def test_guests_diamonds_are_held_and_a_chargeback_claws_them_back(ledger: Ledger) -> None:
    await _on_stage(ledger, "gina", "gus")
    await ledger.top_up(payment_id="pay-cb", user_id="cb", coins=600)
    await _send(ledger, "h1", "gina", "corgi", sender="cb")  # 299: gina earns 149
    await _send(ledger, "h2", ALL_GUESTS, "corgi", sender="cb")  # 150 + 149 coins
    for guest in ("gina", "gus"):
        balance = await ledger.balance(guest)
        assert balance.held_diamonds == balance.diamonds > 0  # held like a creator's
    refund = await ledger.refund(payment_id="pay-cb", user_id="cb", refund_id="r1", coins=600)
    assert refund.refunded == 600
    for guest in ("gina", "gus"):
        assert (await ledger.balance(guest)).diamonds == 0  # taken back from each guest
    await assert_books_reconcile(ledger)


async def test_a_corrupt_stage_fails_the_stage_scripts_and_gifts_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    from server.domain.errors import InvariantError

    await _on_stage(ledger, "gina")
    await redis.hset(keys.guests(STREAM), "c|gina", "1e3")  # not an integer HINCRBY takes
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await ledger.guests.invite(stream_id=STREAM, creator_id=CREATOR, guest_id="gus")
    with pytest.raises(InvariantError):
        await _send(ledger, "c1", "gina", "corgi")
    assert await snapshot(redis, keys) == before
