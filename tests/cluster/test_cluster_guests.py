"""Guests on stage on the loopback cluster (docs/ledger.md, "Guests on stage"): the stage in
the creator's slot, the credit leg deciding the recipients, one guest-credit per recipient
in the guest's own slot, exactly once; every refusal, replays, a guest leaving while gifts
to them are in flight, a split across slots with exact remainders, a credit whose guest left
after the debit, and a crash between the credit and its guest-credits, which the relay
settles. Each ends with the books reconciling."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.errors import ErrorCode, LedgerRefusal, UnavailableError
from server.domain.limits import AMOUNT_MAX
from server.ledger.cluster_credits import CreditBatcher, CreditResult, Transfer
from server.ledger.cluster_guests import GuestCredit, GuestCredits, GuestResult
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.cluster_relay import Relay
from server.ledger.embedded import RedisProcess
from server.ledger.guests import ALL_GUESTS
from server.ledger.keys import Keys
from server.ledger.receipts import unpack
from server.ledger.runner import ScriptRunner
from server.ledger.scripts import ScriptName
from tests.cluster.legs import GENEROUS, funded, gift, live_stream, open_ledger, uid
from tests.cluster.test_cluster_battles import battle, side, two_rooms
from tests.support.cluster import RedisCluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    yield ledger
    await ledger.aclose()


async def on_stage(ledger: ClusterLedger, stream: str, creator: str, *guests: str) -> None:
    for guest in guests:
        await ledger.guests.invite(stream_id=stream, creator_id=creator, guest_id=guest)
        await ledger.guests.join(stream_id=stream, guest_id=guest, name=guest.upper())


def guests_in_three_thirds() -> list[str]:
    """Three guest ids whose accounts are in three thirds of the slots (so on the three
    primaries of the loopback cluster), in id order."""
    found: dict[int, str] = {}
    while len(found) < 3:
        guest = uid("guest")
        third = slot_of(f"{{u:{guest}}}") * 3 // 16384
        found.setdefault(third, guest)
    return sorted(found.values())


async def books_ok(ledger: ClusterLedger) -> None:
    report = await reconcile_cluster(ledger)
    assert report.problems == [] and report.pending == [], report


async def events(ledger: ClusterLedger, creator: str, stream: str) -> list[dict[str, Any]]:
    rows = await ledger.command(ledger.keys.feed(creator, stream), "XRANGE", "-", "+")
    return [orjson.loads(fields[b"e"]) for _, fields in rows]


async def stage_coins(ledger: ClusterLedger, stream: str) -> dict[str, int]:
    return {g["user_id"]: g["coins"] for g in await ledger.guests.stage(stream)}


async def test_a_gift_to_a_guest_credits_them_in_their_own_slot(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    guest = uid("guest")
    await on_stage(ledger, stream, creator, guest)
    sender = await funded(ledger, 100)
    receipt = await gift(ledger, sender, stream, creator, gift_id="finger_heart", to=guest)
    assert (receipt.coins, receipt.diamonds, receipt.platform_coins) == (5, 2, 3)
    assert receipt.balance == 95 and receipt.seq == 1
    assert (await ledger.balance(guest)).diamonds == 2
    assert (await ledger.balance(creator)).diamonds == 0
    [event] = await events(ledger, creator, stream)
    assert event["to"] == guest and event["recipients"] == [{"user_id": guest, "coins": 5}]
    assert event["diamonds"] == 0  # the creator's: the guest's are decided in their slot
    assert await stage_coins(ledger, stream) == {guest: 5}
    assert [g["diamonds"] for g in await ledger.guests.stage(stream)] == [2]
    assert [g["name"] for g in await ledger.guests.stage(stream)] == [guest.upper()]
    await books_ok(ledger)


async def test_a_gift_to_every_guest_splits_exactly_across_three_slots(
    ledger: ClusterLedger,
) -> None:
    stream, creator = await live_stream(ledger)
    guests = guests_in_three_thirds()
    await on_stage(ledger, stream, creator, *guests)
    sender = await funded(ledger, 1000)
    receipts = [
        await gift(ledger, sender, stream, creator, gift_id="finger_heart", to=ALL_GUESTS)
        for _ in range(7)
    ]
    # 5 coins to 3 guests: 1 each and 2 remainder coins from a place that turns with seq.
    want = dict.fromkeys(guests, 0)
    for r in receipts:
        for i, guest in enumerate(guests):
            want[guest] += 1 + (1 if (i - r.seq) % 3 < 2 else 0)
    assert sum(want.values()) == 35
    assert await stage_coins(ledger, stream) == want
    assert {g["user_id"]: g["diamonds"] for g in await ledger.guests.stage(stream)} == {
        guest: want[guest] * 5000 // 10000 for guest in guests
    }
    for guest in guests:  # each guest's carry: the floor of the sum of coins x share
        account = await ledger.command(ledger.keys.account(guest), "HMGET", "diamonds", "share_rem")
        assert [int(v) for v in account] == list(divmod(want[guest] * 5000, 10000))
    assert sum(r.diamonds for r in receipts) == sum(want[g] * 5000 // 10000 for g in guests)
    assert all(r.diamonds + r.platform_coins == 5 for r in receipts)
    feed = await events(ledger, creator, stream)
    assert [sorted(x["user_id"] for x in e["recipients"]) for e in feed] == [guests] * 7
    await books_ok(ledger)


async def test_every_refusal_writes_nothing(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    on, invited, gone, outsider = uid("on"), uid("invited"), uid("gone"), uid("outsider")
    await on_stage(ledger, stream, creator, on, gone)
    await ledger.guests.invite(stream_id=stream, creator_id=creator, guest_id=invited)
    await ledger.guests.leave(stream_id=stream, actor_id=gone, guest_id=gone)
    sender = await funded(ledger, 100)
    log = ledger.keys.ledger_shard(slot_of(ledger.keys.account(sender)))
    before = await ledger.command(log, "XLEN")

    async def refused(code: ErrorCode, to: str, who: str = sender, cid: str = "") -> None:
        with pytest.raises(LedgerRefusal) as info:
            await gift(ledger, who, stream, creator, to=to, client_id=cid or uid("g"))
        assert info.value.code is code, info.value

    await refused(ErrorCode.NOT_A_GUEST, outsider)
    await refused(ErrorCode.NOT_A_GUEST, invited)
    await refused(ErrorCode.NOT_A_GUEST, creator)
    await refused(ErrorCode.GUEST_LEFT, gone)
    await ledger.top_up(payment_id=uid("pay"), user_id=on, coins=10)
    await refused(ErrorCode.SELF_GIFT, on, who=on)
    await refused(ErrorCode.SELF_GIFT, ALL_GUESTS, who=on)
    await gift(ledger, sender, stream, creator, to=on, client_id="once")
    await refused(ErrorCode.DUPLICATE_MISMATCH, ALL_GUESTS, cid="once")
    await ledger.guests.leave(stream_id=stream, actor_id=creator, guest_id=on)
    await refused(ErrorCode.NO_GUESTS, ALL_GUESTS)
    with pytest.raises(LedgerRefusal) as info:
        await ledger.guests.leave(stream_id=stream, actor_id=outsider, guest_id=invited)
    assert info.value.code is ErrorCode.NOT_STREAM_OWNER
    assert (await ledger.balance(sender)).coins == 99
    assert await ledger.command(log, "XLEN") == before + 1
    await books_ok(ledger)


async def test_a_replay_returns_the_receipt_and_credits_each_guest_once(
    ledger: ClusterLedger,
) -> None:
    stream, creator = await live_stream(ledger)
    guests = guests_in_three_thirds()
    await on_stage(ledger, stream, creator, *guests)
    sender = await funded(ledger, 100)
    first = await gift(ledger, sender, stream, creator, gift_id="cap", to=ALL_GUESTS, client_id="x")
    for guest in guests:  # the guests leave: a retry still gets its receipt
        await ledger.guests.leave(stream_id=stream, actor_id=guest, guest_id=guest)
    again = await asyncio.gather(
        *(
            gift(ledger, sender, stream, creator, gift_id="cap", to=ALL_GUESTS, client_id="x")
            for _ in range(10)
        )
    )
    assert all(r.replayed for r in again)
    assert {(r.seq, r.diamonds, r.balance) for r in again} == {
        (first.seq, first.diamonds, first.balance)
    }
    assert sum([(await ledger.balance(g)).diamonds for g in guests]) == first.diamonds
    await books_ok(ledger)


async def test_a_guest_leaving_while_gifts_are_in_flight(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    guest = uid("guest")
    await on_stage(ledger, stream, creator, guest)
    senders = [await funded(ledger, 1000) for _ in range(4)]

    async def send(sender: str) -> int:
        try:
            return (await gift(ledger, sender, stream, creator, to=guest)).coins
        except LedgerRefusal as refusal:
            assert refusal.code is ErrorCode.GUEST_LEFT
            return 0

    stage = ledger.keys.guests(creator, stream)

    some_paid = asyncio.Event()

    async def leave() -> None:  # once some gifts paid the guest, with more in flight
        await some_paid.wait()
        await ledger.guests.leave(stream_id=stream, actor_id=guest, guest_id=guest)

    async def sends(sender: str) -> list[int]:
        sent = []
        for i in range(15):
            sent.append(await send(sender))
            if i == 3:
                some_paid.set()
        return sent

    done = await asyncio.gather(*(sends(s) for s in senders), leave())
    results = [coins for per_sender in done[:-1] for coins in per_sender or []]
    acked = sum(r for r in results if r)
    assert 4000 - sum([(await ledger.balance(s)).coins for s in senders]) == acked
    feed = await events(ledger, creator, stream)
    to_guest = [e["seq"] for e in feed if e.get("recipients")]
    to_creator = [e["seq"] for e in feed if not e.get("recipients")]
    # The leave is one point in the stream's order: every gift before it paid the guest,
    # every one after it went to the creator (its debit passed before the guest left).
    assert not to_creator or not to_guest or max(to_guest) < min(to_creator)
    assert to_guest and int(await ledger.command(stage, "HGET", f"c|{guest}")) == len(to_guest)
    assert (await ledger.balance(guest)).diamonds == len(to_guest) // 2
    assert (await ledger.balance(creator)).diamonds == len(to_creator) // 2
    assert len(feed) == acked
    await books_ok(ledger)


async def test_a_guest_who_left_after_the_debit_leaves_the_gift_to_the_creator(
    ledger: ClusterLedger,
) -> None:
    stream, creator = await live_stream(ledger)
    guest = uid("guest")
    await on_stage(ledger, stream, creator, guest)
    sender = await funded(ledger, 100)
    credit = ledger.credits.credit

    async def leaves_first(transfer: Any) -> Any:  # the guest leaves between the legs
        await ledger.guests.leave(stream_id=stream, actor_id=guest, guest_id=guest)
        return await credit(transfer)

    ledger.credits.credit = leaves_first  # type: ignore[method-assign]
    receipt = await gift(ledger, sender, stream, creator, gift_id="finger_heart", to=guest)
    assert (receipt.diamonds, receipt.platform_coins, receipt.balance) == (2, 3, 95)
    assert (await ledger.balance(creator)).diamonds == 2
    assert (await ledger.balance(guest)).diamonds == 0
    [event] = await events(ledger, creator, stream)
    assert "recipients" not in event and event["diamonds"] == 2
    creator_log = ledger.keys.ledger_shard(slot_of(ledger.keys.account(creator)))
    [(_, entry)] = await ledger.command(creator_log, "XRANGE", "-", "+")
    assert (entry[b"recipient"], entry[b"redirected"]) == (guest.encode(), b"guest_left")
    await books_ok(ledger)


@pytest.fixture
async def crashed(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    """A process that died after its credits and before their guest-credits."""
    ledger = await open_ledger(redis_cluster, keys.prefix)

    async def died(credit: GuestCredit) -> GuestResult:
        raise UnavailableError("died between the credit and the guest-credit")

    ledger.guest_credits.credit = died  # type: ignore[method-assign]
    yield ledger
    await ledger.aclose()


async def test_the_relay_settles_guest_credits_a_crashed_process_left(
    crashed: ClusterLedger, ledger: ClusterLedger
) -> None:
    stream, creator = await live_stream(crashed)
    guests = guests_in_three_thirds()
    await on_stage(crashed, stream, creator, *guests)
    sender = await funded(crashed, 100)
    with pytest.raises(UnavailableError):
        await gift(crashed, sender, stream, creator, gift_id="cap", to=ALL_GUESTS, client_id="c")
    report = await reconcile_cluster(ledger)
    assert report.problems == [] and sorted(p.coins for p in report.pending) == [33, 33, 33]
    assert all(p.transfer_id.endswith(tuple(guests)) for p in report.pending)
    relay = Relay(ledger, grace_ms=0, full_sweep_s=0)
    for _ in range(10):
        await relay.round()
        if relay.settled == 4:
            break
    assert relay.settled == 4  # the three guest-credits, and the debit's entry (a replay)
    await books_ok(ledger)
    # The client's retry: the original receipt, each guest-credit a replay.
    retry = await gift(ledger, sender, stream, creator, gift_id="cap", to=ALL_GUESTS, client_id="c")
    assert retry.replayed and retry.balance == 1 and retry.diamonds == 48  # 3 x floor(16.5)
    assert [(await ledger.balance(g)).diamonds for g in guests] == [16, 16, 16]
    await books_ok(ledger)


async def test_credit_guest_on_its_own(ledger: ClusterLedger) -> None:
    """credit_guest.lua: once by its credit id (also under 20 concurrent calls), and its
    refusals write nothing."""
    guest, sender, creator = uid("guest"), uid("sender"), uid("creator")
    transfer = f"{sender}|c1|1-0"
    now_ms = int(time.time() * 1000)

    def credit(credit_id: str = "", written_ms: int = 0) -> GuestCredit:
        return GuestCredit(
            credit_id or f"{transfer}|{guest}", transfer, guest, sender, creator, "s", 99,
            5000, 1, written_ms or now_ms, "",
        )  # fmt: skip

    # 20 at once: one batch, the repeats answered as the first (as credit_gifts does).
    results = await asyncio.gather(*(ledger.guest_credits.credit(credit()) for _ in range(20)))
    assert {r.status for r in results} == {"ok"} and ledger.guest_credits.calls == 1
    assert {(r.diamonds, r.platform_coins) for r in results} == {(49, 50)}
    assert (await ledger.balance(guest)).diamonds == 49
    again = await asyncio.gather(*(ledger.guest_credits.credit(credit()) for _ in range(20)))
    assert {(r.status, r.diamonds) for r in again} == {("replay", 49)}
    expired = await ledger.guest_credits.credit(credit(f"{sender}|c2|1-0|{guest}"))
    assert expired.status == "refused" and expired.code == "invalid_request"  # id mismatch
    old = await ledger.guest_credits.credit(credit(written_ms=1))
    assert old.status == "replay"  # the marker answers before the expiry check
    stale = GuestCredit(f"{sender}|c3|1-0|{guest}", f"{sender}|c3|1-0", guest, sender,
                        creator, "s", 99, 5000, 2, 1, "")  # fmt: skip
    result = await ledger.guest_credits.credit(stale)
    assert (result.status, result.code) == ("refused", "transfer_expired")
    await ledger.command(ledger.keys.account(guest), "HSET", "diamonds", AMOUNT_MAX)
    full = GuestCredit(f"{sender}|c4|1-0|{guest}", f"{sender}|c4|1-0", guest, sender,
                       creator, "s", 99, 5000, 3, now_ms, "")  # fmt: skip
    result = await ledger.guest_credits.credit(full)
    assert (result.status, result.code) == ("refused", "balance_limit")
    log = ledger.keys.ledger_shard(slot_of(ledger.keys.account(guest)))
    assert len(await ledger.command(log, "XRANGE", "-", "+")) == 1
    reply = await ledger.runner.run(
        ScriptName.CREDIT_GUEST,
        ledger.keys.guest_credit_keys(guest, [f"{transfer}|{guest}"] * 2),
        [guest, 60, AMOUNT_MAX, 2, *[transfer, sender, creator, "s", 99, 5000, 1, now_ms] * 2,
         0, 86400, now_ms, now_ms],
    )  # fmt: skip
    results = orjson.loads(unpack(reply)[0])
    assert [r["status"] for r in results] == ["replay", "replay"]  # after all that
    bad = await ledger.runner.run(
        ScriptName.CREDIT_GUEST, ledger.keys.guest_credit_keys(guest, []), [guest, 60, 1, 0]
    )
    assert bad == [b"refused", b"invalid_request"]


_DRIVER = """
import asyncio, sys
from tests.cluster.legs import open_ledger, gift

async def main() -> None:
    url, prefix, sender, stream, creator = sys.argv[1:6]
    class Nodes:
        startup_urls = [url]
    ledger = await open_ledger(Nodes, prefix)  # type: ignore[arg-type]
    await gift(ledger, sender, stream, creator, client_id="doomed", gift_id="cap", to="*")

asyncio.run(main())
"""


@pytest.mark.slow
async def test_kill_9_between_the_credit_and_its_guest_credits(
    redis_cluster: RedisCluster, ledger: ClusterLedger, keys: Keys
) -> None:
    stream, creator = await live_stream(ledger)
    guests = guests_in_three_thirds()[:2]
    await on_stage(ledger, stream, creator, *guests)
    sender = await funded(ledger, 100)
    code = await asyncio.to_thread(
        lambda: subprocess.run(
            [sys.executable, "-c", _DRIVER, redis_cluster.startup_urls[0], keys.prefix,
             sender, stream, creator],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT,
                 "GIFTWIRE_TEST_CRASH_BEFORE_GUEST_CREDITS": "1"},
            timeout=120,
            check=False,
        ).returncode
    )  # fmt: skip
    assert code == -signal.SIGKILL
    report = await reconcile_cluster(ledger)
    # The debit's own entry is pending too: the crashed process never deleted it, but its
    # transfer is credited, so only the guest-credits are pending.
    assert report.problems == [] and sorted(p.coins for p in report.pending) == [49, 50]
    relay = Relay(ledger, grace_ms=0, full_sweep_s=0)
    for _ in range(10):
        await relay.round()
        if relay.stats.pending == 0:
            break
    await books_ok(ledger)
    retry = await gift(ledger, sender, stream, creator, client_id="doomed", gift_id="cap", to="*")
    assert retry.replayed and retry.balance == 1 and retry.diamonds == 49


async def test_the_relay_settles_a_gift_to_guests_debited_by_a_process_that_died(
    redis_cluster: RedisCluster, keys: Keys, ledger: ClusterLedger
) -> None:
    """A crash between the debit and the credit: the relay credits it and applies its
    guest-credits at once."""
    dead = await open_ledger(redis_cluster, keys.prefix)

    async def died(transfer: Transfer) -> CreditResult:
        raise UnavailableError("died between the legs")

    dead.credits.credit = died  # type: ignore[method-assign]
    try:
        stream, creator = await live_stream(ledger)
        guests = guests_in_three_thirds()
        await on_stage(ledger, stream, creator, *guests)
        sender = await funded(ledger, 100)
        with pytest.raises(UnavailableError):
            await gift(dead, sender, stream, creator, gift_id="cap", to=guests[1])
    finally:
        await dead.aclose()
    relay = Relay(ledger, grace_ms=0, full_sweep_s=0)
    await relay.round()
    assert relay.settled == 1
    assert (await ledger.balance(guests[1])).diamonds == 49
    await books_ok(ledger)


async def test_reconcile_reports_a_guest_credit_neither_applied_nor_pending(
    crashed: ClusterLedger,
) -> None:
    stream, creator = await live_stream(crashed)
    guest = uid("guest")
    await on_stage(crashed, stream, creator, guest)
    sender = await funded(crashed, 100)
    with pytest.raises(UnavailableError):
        await gift(crashed, sender, stream, creator, gift_id="cap", to=guest)
    outbox = crashed.keys.outbox_shard(slot_of(crashed.keys.account(creator)))
    rows = await crashed.command(outbox, "XRANGE", "-", "+")
    [entry_id] = [i for i, f in rows if f.get(b"kind") == b"guest_credit"]
    await crashed.command(outbox, "XDEL", entry_id)  # lost, as a hand-edited outbox would
    report = await reconcile_cluster(crashed)
    assert [p for p in report.problems if "neither applied nor pending" in p] != []
    assert "coins to guests 99 != applied 0 + pending 0" in report.problems


async def test_the_three_legs_run_on_a_single_redis_too(
    redis_server: RedisProcess, keys: Keys
) -> None:
    """The stage scripts, the debit with `to`, the credit and credit_guest need one slot per
    call, not a cluster."""
    redis = Redis.from_url(redis_server.url)
    runner = ScriptRunner(redis, timeout_s=5.0)
    await runner.prepare()
    k = ClusterKeys(keys.prefix)
    try:
        creator, sender, stream, guest = uid("c"), uid("s"), uid("st"), uid("g")
        await redis.hset(k.account(sender), "coins", 100)
        prices = {**load_catalog().prices(), "@version": 1}
        await redis.hset(k.catalog_shard(slot_of(k.account(sender))), mapping=prices)
        await runner.run(
            ScriptName.START_STREAM,
            [k.stream(creator, stream), k.room_channel(creator, stream), k.feed(creator, stream),
             k.leaderboard(creator, stream), k.creator_streams(creator)],
            [stream, creator, "t", 100, creator, "e1"],
        )  # fmt: skip
        stage = [
            k.stream(creator, stream),
            k.guests(creator, stream),
            k.room_channel(creator, stream),
        ]
        await runner.run(ScriptName.INVITE_GUEST, stage, [stream, creator, guest, 8, 64, "shard"])
        await runner.run(ScriptName.JOIN_STAGE, stage, [stream, guest, "G", "shard"])
        body, _ = unpack(await runner.run(ScriptName.DEBIT_GIFT, k.debit_keys(sender, "g1"), [
            "g1", sender, creator, stream, "cap", 1, sender, 5000, 100, 100, 0, 3600,
            AMOUNT_MAX, 10**11, 0, 1000, "live", 0, 0, 86400, 1024, "*", ""]))  # fmt: skip
        transfer = Transfer.from_receipt(orjson.loads(body), sender)
        assert transfer.to == "*"
        [result] = await CreditBatcher(runner, k, GENEROUS).call(creator, stream, [transfer])
        assert (result.status, result.diamonds, len(result.guests)) == ("ok", 0, 1)
        credit = GuestCredit.from_result(
            result.guests[0], sender_id=sender, creator_id=creator, stream_id=stream,
            share_bps=5000, seq=result.seq, ts=result.ts,
        )  # fmt: skip
        applied = await GuestCredits(runner, k, GENEROUS).credit(credit)
        assert (applied.status, applied.diamonds, applied.platform_coins) == ("ok", 49, 50)
        assert int(await redis.hget(k.account(guest), "diamonds") or 0) == 49
    finally:
        await redis.aclose()


async def test_a_split_while_one_of_three_guests_leaves(ledger: ClusterLedger) -> None:
    """Gifts to every guest in flight while one of three leaves: each is split exactly
    among the guests on stage when its credit ran, three before the leave, two after."""
    stream, creator = await live_stream(ledger)
    guests = guests_in_three_thirds()
    await on_stage(ledger, stream, creator, *guests)
    senders = [await funded(ledger, 10_000) for _ in range(3)]
    leaving = guests[1]
    some_sent = asyncio.Event()

    async def sends(sender: str) -> None:
        for i in range(12):
            await gift(ledger, sender, stream, creator, gift_id="finger_heart", to=ALL_GUESTS)
            if i == 2:
                some_sent.set()

    async def leave() -> None:
        await some_sent.wait()
        await ledger.guests.leave(stream_id=stream, actor_id=leaving, guest_id=leaving)

    await asyncio.gather(*(sends(s) for s in senders), leave())
    feed = await events(ledger, creator, stream)
    assert len(feed) == 36
    sizes = [len(e["recipients"]) for e in feed]
    assert 3 in sizes and sizes == sorted(sizes, reverse=True)  # 3, 3, …, 2, 2
    coins: dict[str, int] = dict.fromkeys(guests, 0)
    for e in feed:
        assert sum(r["coins"] for r in e["recipients"]) == 5
        for r in e["recipients"]:
            coins[r["user_id"]] += r["coins"]
    stage = ledger.keys.guests(creator, stream)
    for guest in guests:
        assert int(await ledger.command(stage, "HGET", f"c|{guest}")) == coins[guest]
        assert (await ledger.balance(guest)).diamonds == coins[guest] * 5000 // 10000
    await books_ok(ledger)


async def test_a_hot_guests_credits_are_batched_and_race_across_processes_once(
    redis_cluster: RedisCluster, keys: Keys, ledger: ClusterLedger
) -> None:
    stream, creator = await live_stream(ledger)
    guest = uid("guest")
    await on_stage(ledger, stream, creator, guest)
    senders = [await funded(ledger, 100) for _ in range(40)]
    receipts = await asyncio.gather(
        *(gift(ledger, s, stream, creator, gift_id="finger_heart", to=guest) for s in senders)
    )
    assert ledger.guest_credits.calls < len(senders)  # several guest-credits per call
    assert sum(r.diamonds for r in receipts) == (await ledger.balance(guest)).diamonds == 100
    # The same guest-credits again, from two processes at once: each applied once in all.
    other = await open_ledger(redis_cluster, keys.prefix)
    try:
        outbox = ledger.keys.outbox_shard(slot_of(ledger.keys.account(creator)))
        credits = [
            GuestCredit(f"{r.transfer_id}|{guest}", r.transfer_id, guest, s, creator, stream,
                        5, 5000, r.seq, r.ts, "")
            for r, s in zip(receipts, senders, strict=True)
        ]  # fmt: skip
        both = await asyncio.gather(
            *(side.guest_credits.credit(c) for c in credits for side in (ledger, other))
        )
        assert {r.status for r in both} == {"replay"}
        assert await ledger.command(outbox, "XLEN") == 0  # the fast path deleted every entry
        # New guest-credits raced by two processes: each applied by one of them only.
        now_ms = int(time.time() * 1000)
        fresh = [
            GuestCredit(f"x|c{n}|1-0|{guest}", f"x|c{n}|1-0", guest, "x", creator, stream, 5,
                        5000, n + 1, now_ms, "")
            for n in range(10)
        ]  # fmt: skip
        raced = await asyncio.gather(
            *(side.guest_credits.credit(c) for c in fresh for side in (ledger, other))
        )
        assert sorted(r.status for r in raced) == ["ok"] * 10 + ["replay"] * 10
    finally:
        await other.aclose()
    assert (await ledger.balance(guest)).diamonds == 100 + 25
    log = ledger.keys.ledger_shard(slot_of(ledger.keys.account(guest)))
    rows = await ledger.command(log, "XRANGE", "-", "+")
    assert len([f for _, f in rows if f[b"to"] == guest.encode()]) == 50


async def test_the_stage_scripts_refuse_in_the_creators_slot(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    stage = ledger.guests

    async def refused(code: ErrorCode, call: Any) -> None:
        with pytest.raises(LedgerRefusal) as info:
            await call
        assert info.value.code is code, info.value

    await refused(
        ErrorCode.NOT_STREAM_OWNER,
        stage.invite(stream_id=stream, creator_id=uid("someone"), guest_id=uid("g")),
    )
    await refused(
        ErrorCode.SELF_GIFT, stage.invite(stream_id=stream, creator_id=creator, guest_id=creator)
    )
    guests = [uid("g") for _ in range(9)]
    for guest in guests[:8]:
        await stage.invite(stream_id=stream, creator_id=creator, guest_id=guest)
    again = await stage.invite(stream_id=stream, creator_id=creator, guest_id=guests[0])
    assert len(again["guests"]) == 8  # a replay
    await refused(
        ErrorCode.GUEST_LIMIT,
        stage.invite(stream_id=stream, creator_id=creator, guest_id=guests[8]),
    )
    await refused(ErrorCode.NOT_A_GUEST, stage.join(stream_id=stream, guest_id=guests[8], name="x"))
    await refused(
        ErrorCode.NOT_A_GUEST,
        stage.leave(stream_id=stream, actor_id=guests[8], guest_id=guests[8]),
    )
    await refused(
        ErrorCode.UNKNOWN_STREAM, stage.join(stream_id=uid("nowhere"), guest_id=guests[0], name="x")
    )
    assert await stage.stage(uid("nowhere")) == []
    await ledger.end_stream(stream_id=stream, actor_id=creator, is_admin=False)
    await refused(
        ErrorCode.STREAM_NOT_LIVE, stage.join(stream_id=stream, guest_id=guests[0], name="x")
    )
    await refused(
        ErrorCode.STREAM_NOT_LIVE,
        stage.invite(stream_id=stream, creator_id=creator, guest_id=guests[8]),
    )
    assert [g["state"] for g in await stage.stage(stream)] == ["invited"] * 8


async def test_concurrent_invites_seat_at_most_eight(
    redis_cluster: RedisCluster, keys: Keys, ledger: ClusterLedger
) -> None:
    stream, creator = await live_stream(ledger)
    other = await open_ledger(redis_cluster, keys.prefix)
    try:
        guests = [uid("g") for _ in range(20)]

        async def invite(side: ClusterLedger, guest: str) -> bool:
            try:
                await side.guests.invite(stream_id=stream, creator_id=creator, guest_id=guest)
            except LedgerRefusal as refusal:
                assert refusal.code is ErrorCode.GUEST_LIMIT
                return False
            return True

        seated = await asyncio.gather(
            *(invite((ledger, other)[n % 2], g) for n, g in enumerate(guests))
        )
        assert sum(seated) == 8
        assert len(await ledger.guests.stage(stream)) == 8
    finally:
        await other.aclose()


async def test_a_gift_to_guests_scores_in_a_battle_for_the_room(ledger: ClusterLedger) -> None:
    """As on a single node: the coins score for the room's side whoever receives them."""
    rooms = await two_rooms(ledger)
    a, creator_a, _, _ = rooms
    started = await battle(ledger, rooms, uid("bt"))
    guest = uid("guest")
    await on_stage(ledger, a, creator_a, guest)
    sender = await funded(ledger, 500)
    await gift(ledger, sender, a, creator_a, gift_id="cap", to=guest)
    await gift(ledger, sender, a, creator_a, gift_id="cap", to=ALL_GUESTS)
    feed = await events(ledger, creator_a, a)
    assert {e.get("battle_id") for e in feed} == {started["battle_id"]}
    assert int((await side(ledger, creator_a, a))["score"]) == 198
    assert (await ledger.balance(guest)).diamonds == 99
    await books_ok(ledger)


async def test_a_gift_to_guests_is_inside_the_payout_hold(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    """With the hold on, a gift to a guest is noted in the sender's record as a stage entry
    under the creator, the guest's diamonds are held, and a chargeback claws them back from
    the guest (not from the creator, who earned none of them): no debt is left."""
    held = replace(GENEROUS, cashout_diamonds_min=1, payout_hold_days=7)
    ledger = await open_ledger(redis_cluster, keys.prefix, held)
    try:
        stream, creator = await live_stream(ledger)
        guest = uid("guest")
        await on_stage(ledger, stream, creator, guest)
        fan = uid("fan")
        await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=20_000)
        await gift(ledger, fan, stream, creator, gift_id="interstellar")  # held, the creator's
        await gift(ledger, fan, stream, creator, gift_id="interstellar", to=guest)
        record = await ledger.command(ledger.keys.hold_record(fan), "HGETALL")
        noted = {k.decode(): int(v) for k, v in (record or {}).items() if b"|" in k}
        assert sorted(f.rsplit("|", 1)[-1] for f in noted) == ["5000", "stage"]
        assert set(noted.values()) == {10_000}
        assert (await ledger.balance(guest)).held_diamonds == 5_000
        refund = await ledger.refund(
            payment_id="p" + fan, user_id=fan, refund_id="r1", coins=20_000
        )
        assert (refund.reversed, refund.debt_added) == (20_000, 0)
        assert (await ledger.balance(creator)).diamonds == 0
        guest_balance = await ledger.balance(guest)
        assert (guest_balance.diamonds, guest_balance.held_diamonds) == (0, 0)
        await asyncio.sleep(0.05)  # the fast path's outbox deletes run in the background
        await books_ok(ledger)
    finally:
        await ledger.aclose()
