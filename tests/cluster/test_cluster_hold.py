"""The payout hold on the loopback cluster: held diamonds in the credit leg, the sender's record
in the debit leg, cash_out's withdrawable balance (docs/ledger.md, "The payout hold in cluster
mode"). Time: as ``tests/integration/test_hold.py``, the tests move stored days back (``age``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.limits import AMOUNT_MAX
from server.ledger.cluster_clawbacks import Clawback, apply_clawback, receipt_clawbacks
from server.ledger.cluster_credits import CreditBatcher, Transfer
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.cluster_relay import Relay
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.receipts import RefundReceipt, unpack
from server.ledger.runner import ScriptRunner
from server.ledger.scripts import ScriptName
from tests.cluster.legs import GENEROUS, funded, gift, live_stream, open_ledger, uid
from tests.support.cluster import RedisCluster

HOLD_DAYS = 7
HELD = replace(GENEROUS, cashout_diamonds_min=1, payout_hold_days=HOLD_DAYS)


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix, HELD)
    yield ledger
    await ledger.aclose()


async def age(ledger: ClusterLedger, users: list[str], days: int) -> None:
    """Move the stored hold days of ``users`` (accounts and hold records) back by ``days``:
    as if the clock had moved on by them. The stage notes of gifts to guests
    (``stage_held``/``guest_held``, named by the real day, which reconcile checks) stay: a
    chargeback of a stage gift after ``age`` within the hold would not find them."""
    k = ledger.keys
    for user in users:
        day = await ledger.command(k.account(user), "HGET", "hold_day")
        if day is not None:
            await ledger.command(k.account(user), "HSET", "hold_day", int(day) - days)
        raw = await ledger.command(k.hold_record(user), "HGETALL")
        fields = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else raw
        if not fields:
            continue
        await ledger.command(k.hold_record(user), "DEL")
        moved: list[str | int] = []
        for name, value in fields.items():
            if name == b"@day":
                moved += ["@day", int(value) - days]
            else:
                creator, d, *rest = name.decode().split("|")  # share[, stage]
                moved += ["|".join([creator, str(int(d) - days), *rest]), value.decode()]
        await ledger.command(k.hold_record(user), "HSET", *moved)


async def reconciled(ledger: ClusterLedger) -> None:
    await asyncio.sleep(0.05)  # the fast path's outbox deletes run in the background
    report = await reconcile_cluster(ledger)
    assert report.ok, report.problems


async def interstellar(ledger: ClusterLedger, sender: str, stream: str, creator: str) -> None:
    """10,000 coins: 5,000 diamonds held for the creator."""
    await gift(ledger, sender, stream, creator, gift_id="interstellar")


async def test_credited_diamonds_are_held_and_cash_out_takes_only_withdrawable(
    ledger: ClusterLedger,
) -> None:
    stream, creator = await live_stream(ledger)
    fan = await funded(ledger, 10_000, "fan")
    await interstellar(ledger, fan, stream, creator)
    balance = await ledger.balance(creator)
    assert (balance.diamonds, balance.held_diamonds, balance.withdrawable_diamonds) == (
        5_000, 5_000, 0,
    )  # fmt: skip
    assert balance.next_release_ms > time.time() * 1000
    # The sender's record, in the sender's slot, names the bucket's day.
    k = ledger.keys
    day = int(await ledger.command(k.account(creator), "HGET", "hold_day"))
    record = await ledger.command(k.hold_record(fan), "HGET", f"{creator}|{day}|5000")
    assert int(record) == 10_000
    with pytest.raises(LedgerRefusal) as held:
        await ledger.cash_out(client_id="c1", creator_id=creator, diamonds=1)
    assert held.value.code is ErrorCode.FUNDS_HELD
    assert held.value.detail is not None
    assert (held.value.detail["withdrawable"], held.value.detail["held"]) == (0, 5_000)
    await age(ledger, [creator, fan], HOLD_DAYS)  # the last day of the hold: still held
    assert (await ledger.balance(creator)).held_diamonds == 5_000
    await age(ledger, [creator, fan], 1)
    assert (await ledger.balance(creator)).withdrawable_diamonds == 5_000
    out = await ledger.cash_out(client_id="c1", creator_id=creator, diamonds=5_000)
    assert out.balance == 0
    await reconciled(ledger)


async def test_held_and_withdrawable_side_by_side(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    old, new = await funded(ledger, 10_000, "old"), await funded(ledger, 10_000, "new")
    await interstellar(ledger, old, stream, creator)
    await age(ledger, [creator, old], HOLD_DAYS + 1)
    await interstellar(ledger, new, stream, creator)
    balance = await ledger.balance(creator)
    assert (balance.held_diamonds, balance.withdrawable_diamonds) == (5_000, 5_000)
    with pytest.raises(LedgerRefusal) as held:
        await ledger.cash_out(client_id="c1", creator_id=creator, diamonds=5_001)
    assert held.value.code is ErrorCode.FUNDS_HELD
    with pytest.raises(LedgerRefusal) as over:
        await ledger.cash_out(client_id="c2", creator_id=creator, diamonds=10_001)
    assert over.value.code is ErrorCode.INSUFFICIENT_FUNDS
    await ledger.cash_out(client_id="c3", creator_id=creator, diamonds=5_000)
    assert (await ledger.balance(creator)).held_diamonds == 5_000
    await reconciled(ledger)


async def test_a_credit_the_relay_settles_after_the_hold_holds_nothing(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    """The credit holds by the debit's day: settled after the hold is over (a long outage),
    it is withdrawable at once, as the sender's record (same day) no longer reverses it."""
    ledger = await open_ledger(
        redis_cluster, keys.prefix, replace(HELD, payout_hold_days=1, payout_hold_day_s=1)
    )
    try:
        stream, creator = await live_stream(ledger)
        now_ms = int(time.time() * 1000)
        late = Transfer(
            transfer_id=f"s1|g1|{now_ms - 5_000}-0", client_id="g1", sender_id="s1",
            sender_name="s1", creator_id=creator, stream_id=stream, gift_id="cap", count=1,
            coins=99, price=99, catalog_version=1, share_bps=5000, debit_ms=now_ms - 5_000,
        )  # fmt: skip
        fresh = replace(late, transfer_id=f"s1|g2|{now_ms}-0", client_id="g2", debit_ms=now_ms)
        results = await ledger.credits.call(creator, stream, [late, fresh])
        assert [r.status for r in results] == ["ok", "ok"]
        balance = await ledger.balance(creator)
        assert (balance.diamonds, balance.held_diamonds) == (99, 50)  # 49 + 50, carried
    finally:
        await ledger.aclose()


async def test_the_senders_record_is_bounded_in_the_debit_leg(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    ledger = await open_ledger(redis_cluster, keys.prefix, replace(HELD, payout_hold_entries_max=2))
    try:
        fan = await funded(ledger, 1_000, "fan")
        streams = [await live_stream(ledger) for _ in range(3)]
        for stream, creator in streams[:2]:
            await gift(ledger, fan, stream, creator, gift_id="cap")
        with pytest.raises(LedgerRefusal) as full:
            await gift(ledger, fan, *streams[2], gift_id="cap")
        assert full.value.code is ErrorCode.HOLD_LIMIT
        assert (await ledger.balance(fan)).coins == 1_000 - 2 * 99  # nothing charged
        await gift(ledger, fan, *streams[0], gift_id="cap")  # a known entry grows, no bound
        await reconciled(ledger)
    finally:
        await ledger.aclose()


async def test_concurrent_gifts_and_cash_outs_never_take_held_diamonds(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    """Three processes: gifts credited (held) while the creator cashes out one diamond at a
    time; exactly the withdrawable diamonds are cashed out, none of the held."""
    ledgers = [await open_ledger(redis_cluster, keys.prefix, HELD) for _ in range(3)]
    try:
        stream, creator = await live_stream(ledgers[0])
        first = await funded(ledgers[0], 198, "first")
        for _ in range(2):
            await gift(ledgers[0], first, stream, creator, gift_id="cap")
        await age(ledgers[0], [creator, first], HOLD_DAYS + 1)  # 99 withdrawable
        fans = [await funded(ledgers[0], 990, "fan") for _ in range(6)]

        async def gifts(i: int) -> None:
            for _ in range(10):
                await gift(ledgers[i % 3], fans[i], stream, creator, gift_id="cap")

        async def cash_outs(i: int) -> int:
            done = 0
            for n in range(60):
                try:
                    await ledgers[i].cash_out(client_id=f"c{i}-{n}", creator_id=creator, diamonds=1)
                    done += 1
                except LedgerRefusal as refusal:
                    assert refusal.code is ErrorCode.FUNDS_HELD
            return done

        results = await asyncio.gather(
            *(gifts(i) for i in range(6)), *(cash_outs(i) for i in range(3))
        )
        assert sum(r for r in results if r is not None) == 99
        balance = await ledgers[0].balance(creator)
        assert balance.withdrawable_diamonds == 0
        assert balance.held_diamonds == balance.diamonds == 60 * 99 // 2
        await reconciled(ledgers[0])
    finally:
        for ledger in ledgers:
            await ledger.aclose()


# Chargebacks: the refund in the buyer's slot, a clawback per creator in the creator's.


async def test_a_chargeback_inside_the_hold_claws_back_across_slots(
    ledger: ClusterLedger,
) -> None:
    (s1, c1), (s2, c2) = await live_stream(ledger), await live_stream(ledger)
    fan = uid("fan")
    await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=20_000)
    await interstellar(ledger, fan, s1, c1)
    await interstellar(ledger, fan, s2, c2)
    refund = await ledger.refund(payment_id="p" + fan, user_id=fan, refund_id="r1", coins=20_000)
    assert (refund.refunded, refund.clawed, refund.reversed, refund.debt_added) == (
        20_000, 0, 20_000, 0,
    )  # fmt: skip
    for creator in (c1, c2):
        balance = await ledger.balance(creator)
        assert (balance.diamonds, balance.held_diamonds) == (0, 0)
    fan_balance = await ledger.balance(fan)
    assert (fan_balance.coins, fan_balance.debt_coins) == (0, 0)
    again = await ledger.refund(payment_id="p" + fan, user_id=fan, refund_id="r1", coins=20_000)
    assert again.replayed and again.transfer_id == refund.transfer_id
    assert (await ledger.balance(c1)).diamonds == 0  # the replay's clawbacks replay
    await reconciled(ledger)


async def test_a_partial_chargeback_reverses_the_newest_gifts_first(
    ledger: ClusterLedger,
) -> None:
    stream, creator = await live_stream(ledger)
    fan = uid("fan")
    await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=10_000)
    for _ in range(3):  # 297 coins: 49 + 50 + 49 diamonds, half a diamond carried
        await gift(ledger, fan, stream, creator, gift_id="cap")
    refund = await ledger.refund(payment_id="p" + fan, user_id=fan, refund_id="r1", coins=9_800)
    assert (refund.clawed, refund.reversed, refund.debt_added) == (9_703, 97, 0)
    balance = await ledger.balance(creator)
    # 97 coins x 50 % = 48.5 diamonds: 48 and the carried half, share_rem back to 0.
    assert balance.diamonds == balance.held_diamonds == 148 - 48
    await reconciled(ledger)


async def test_a_chargeback_after_the_hold_becomes_debt(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    fan = uid("fan")
    await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=10_000)
    await interstellar(ledger, fan, stream, creator)
    await age(ledger, [creator, fan], HOLD_DAYS + 1)
    refund = await ledger.refund(payment_id="p" + fan, user_id=fan, refund_id="r1", coins=10_000)
    assert (refund.reversed, refund.debt_added) == (0, 10_000)
    assert (await ledger.balance(creator)).withdrawable_diamonds == 5_000
    await reconciled(ledger)


async def test_a_crash_between_the_legs_is_settled_by_the_relay_or_a_retry(
    ledger: ClusterLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    (s1, c1), (s2, c2) = await live_stream(ledger), await live_stream(ledger)
    fans = [uid("fan"), uid("fan")]
    for fan, (stream, creator) in zip(fans, [(s1, c1), (s2, c2)], strict=True):
        await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=10_000)
        await interstellar(ledger, fan, stream, creator)
    real = ledger.apply_clawbacks

    async def lost(clawbacks: list[Clawback]) -> list[bool]:
        return [False for _ in clawbacks]  # as if the process died after the buyer's leg

    monkeypatch.setattr(ledger, "apply_clawbacks", lost)
    for fan in fans:
        await ledger.refund(payment_id="p" + fan, user_id=fan, refund_id="r1", coins=10_000)
    assert (await ledger.balance(c1)).diamonds == 5_000  # not yet clawed back
    report = await reconcile_cluster(ledger)
    assert report.ok, report.problems
    assert sorted(p.coins for p in report.pending) == [10_000, 10_000]
    monkeypatch.setattr(ledger, "apply_clawbacks", real)
    # The first buyer's refund is retried (the provider's webhook again): its replay settles.
    again = await ledger.refund(payment_id="p" + fans[0], user_id=fans[0], refund_id="r1",
                                coins=10_000)  # fmt: skip
    assert again.replayed and (await ledger.balance(c1)).diamonds == 0
    # The second is the relay's.
    relay = Relay(ledger, grace_ms=0, full_sweep_s=0)
    for _ in range(3):
        await relay.round()
    assert (await ledger.balance(c2)).diamonds == 0
    await asyncio.sleep(0.05)
    report = await reconcile_cluster(ledger)
    assert report.ok and not report.pending, (report.problems, report.pending)


async def test_a_chargeback_while_gifts_are_credited(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    """Three processes: the buyer and others gift one creator while the buyer's payment is
    charged back; every gift and the clawback settle once and the books reconcile."""
    ledgers = [await open_ledger(redis_cluster, keys.prefix, HELD) for _ in range(3)]
    try:
        stream, creator = await live_stream(ledgers[0])
        buyer = uid("buyer")
        await ledgers[0].top_up(payment_id="p1" + buyer, user_id=buyer, coins=5_000)
        others = [await funded(ledgers[0], 2_970, "fan") for _ in range(3)]

        async def gifts(i: int, sender: str, n: int) -> None:
            for _ in range(n):
                try:
                    await gift(ledgers[i % 3], sender, stream, creator, gift_id="cap")
                except LedgerRefusal as refusal:
                    assert refusal.code is ErrorCode.INSUFFICIENT_FUNDS  # charged back

        async def chargeback() -> RefundReceipt:
            await asyncio.sleep(0.05)
            return await ledgers[1].refund(payment_id="p1" + buyer, user_id=buyer,
                                           refund_id="r1", coins=5_000)  # fmt: skip

        *_, refund = await asyncio.gather(
            gifts(0, buyer, 50), *(gifts(i, f, 30) for i, f in enumerate(others)), chargeback()
        )
        assert isinstance(refund, RefundReceipt) and refund.refunded == 5_000
        assert refund.clawed + refund.reversed + refund.debt_added == 5_000
        assert refund.debt_added == 0  # every coin spent was on a gift still held
        balance = await ledgers[0].balance(buyer)
        assert balance.coins >= 0
        await reconciled(ledgers[0])
        report = await reconcile_cluster(ledgers[0])
        assert not report.pending
    finally:
        for ledger in ledgers:
            await ledger.aclose()


async def test_the_clawback_leg_refuses_bad_items_and_writes_nothing(
    ledger: ClusterLedger,
) -> None:
    stream, creator = await live_stream(ledger)
    fan = uid("fan")
    await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=10_000)
    await interstellar(ledger, fan, stream, creator)
    good = Clawback("p|r|" + creator, "p", "r", creator, fan, 10, "1:5000:10",
                    int(time.time() * 1000))  # fmt: skip
    for bad in (
        replace(good, items="1:5000:010"),
        replace(good, items="1:10001:10"),
        replace(good, items=""),
        replace(good, clawback_id="p|r|someone"),
    ):
        result = await apply_clawback(ledger.runner, ledger.keys, ledger.limits, bad)
        assert (result.status, result.code) == ("refused", "invalid_request")
    old = replace(good, claimed_ms=int(time.time() * 1000) - ledger.limits.receipt_ttl_s * 1000)
    result = await apply_clawback(ledger.runner, ledger.keys, ledger.limits, old)
    assert (result.status, result.code) == ("refused", "transfer_expired")
    assert (await ledger.balance(creator)).diamonds == 5_000


async def test_the_chargeback_legs_run_on_a_single_redis_too(
    redis_server: RedisProcess, keys: Keys
) -> None:
    """refund_claim.lua and clawback.lua need one slot per call, not a cluster: on one Redis,
    five refunds of one payment at once, each clawback applied twice at once, once each."""
    redis = Redis.from_url(redis_server.url)
    runner = ScriptRunner(redis, timeout_s=5.0)
    await runner.prepare()
    k = ClusterKeys(keys.prefix)
    try:
        creator, buyer, stream = uid("c"), uid("b"), uid("st")
        slot = slot_of(k.account(buyer))
        await runner.run(ScriptName.TOP_UP, [k.payment(buyer, "p1"), k.account(buyer),
                         k.ledger_shard(slot)], ["p1", buyer, 10_000, AMOUNT_MAX])  # fmt: skip
        prices = {**load_catalog().prices(), "@version": 1}
        await redis.hset(k.catalog_shard(slot), mapping=prices)  # type: ignore[arg-type]
        await runner.run(
            ScriptName.START_STREAM,
            [k.stream(creator, stream), k.room_channel(creator, stream), k.feed(creator, stream),
             k.leaderboard(creator, stream), k.creator_streams(creator)],
            [stream, creator, "t", 100, creator, "e1"],
        )  # fmt: skip
        body, _ = unpack(await runner.run(ScriptName.DEBIT_GIFT, k.debit_keys(buyer, "g1"), [
            "g1", buyer, creator, stream, "interstellar", 1, buyer, 5000, 100, 100, 0, 3600,
            AMOUNT_MAX, 10**11, 0, 1000, "live", 0, HOLD_DAYS, 86400, 1024, "", ""]))  # fmt: skip
        batcher = CreditBatcher(runner, k, HELD)
        [credit] = await batcher.call(creator, stream, [Transfer.from_receipt(orjson.loads(body),
                                                                              buyer)])  # fmt: skip
        assert (credit.status, credit.diamonds) == ("ok", 5_000)

        async def refund(n: int) -> list[Clawback]:
            reply = await runner.run(
                ScriptName.REFUND_CLAIM,
                [k.payment(buyer, "p1"), k.account(buyer), k.ledger_shard(slot),
                 k.refund(buyer, "p1", f"r{n}"), k.hold_record(buyer), k.outbox_shard(slot)],
                ["p1", buyer, f"r{n}", 2_000, AMOUNT_MAX, HOLD_DAYS, 86400, 1000],
                order_key=buyer,
            )  # fmt: skip
            return receipt_clawbacks(orjson.loads(unpack(reply)[0]))

        claims = [c for batch in await asyncio.gather(*(refund(n) for n in range(5)))
                  for c in batch]  # fmt: skip
        assert sorted(c.coins for c in claims) == [2_000] * 5
        results = await asyncio.gather(*(apply_clawback(runner, k, HELD, c) for c in claims * 2))
        assert sorted(r.status for r in results) == ["ok"] * 5 + ["replay"] * 5
        acct = await redis.hmget(k.account(creator), ["diamonds", "held", "share_rem"])
        assert acct == [b"0", b"0", b"0"]
        assert await redis.hget(k.platform_shard(slot_of(k.account(creator))), "coins") == b"0"
        assert await redis.hget(k.account(buyer), "debt") == b"0"
    finally:
        await redis.aclose()


async def test_reconcile_finds_a_lost_and_a_doubled_clawback(
    ledger: ClusterLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    (s1, c1), (s2, c2) = await live_stream(ledger), await live_stream(ledger)
    fans = [uid("fan"), uid("fan")]
    for fan, (stream, creator) in zip(fans, [(s1, c1), (s2, c2)], strict=True):
        await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=10_000)
        await interstellar(ledger, fan, stream, creator)
    await ledger.refund(payment_id="p" + fans[0], user_id=fans[0], refund_id="r1", coins=10_000)

    async def lost(clawbacks: list[Clawback]) -> list[bool]:
        return [False for _ in clawbacks]

    monkeypatch.setattr(ledger, "apply_clawbacks", lost)
    await ledger.refund(payment_id="p" + fans[1], user_id=fans[1], refund_id="r1", coins=10_000)
    k = ledger.keys
    # Tamper: the second clawback's outbox entry vanishes; the first one's entry is doubled.
    outbox = k.outbox_shard(slot_of(k.account(fans[1])))
    entries = await ledger.command(outbox, "XRANGE", "-", "+")
    await ledger.command(outbox, "XDEL", *[entry_id for entry_id, _ in entries])
    creator_log = k.ledger_shard(slot_of(k.account(c1)))
    rows = await ledger.command(creator_log, "XRANGE", "-", "+")
    fields = next(f for _, f in rows if f.get(b"type") == b"clawback")
    await ledger.command(creator_log, "XADD", "*", *[x for kv in fields.items() for x in kv])
    report = await reconcile_cluster(ledger)
    assert any("neither applied nor pending" in p for p in report.problems), report.problems
    assert any(f"p{fans[0]}|r1|{c1}: applied" in p for p in report.problems), report.problems


async def test_a_clawback_after_a_cash_out_at_the_end_of_the_hold_waits_for_an_operator(
    ledger: ClusterLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold ends in the creator's slot between the legs and the creator cashes out: the
    clawback cannot take the diamonds, is refused, and stays pending (never in part)."""
    stream, creator = await live_stream(ledger)
    fan = uid("fan")
    await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=10_000)
    await interstellar(ledger, fan, stream, creator)
    real = ledger.apply_clawbacks

    async def lost(clawbacks: list[Clawback]) -> list[bool]:
        return [False for _ in clawbacks]

    monkeypatch.setattr(ledger, "apply_clawbacks", lost)
    refund = await ledger.refund(payment_id="p" + fan, user_id=fan, refund_id="r1", coins=10_000)
    assert refund.reversed == 10_000
    monkeypatch.setattr(ledger, "apply_clawbacks", real)
    await age(ledger, [creator], HOLD_DAYS + 1)
    await ledger.cash_out(client_id="c1", creator_id=creator, diamonds=5_000)
    relay = Relay(ledger, grace_ms=0, full_sweep_s=0)
    await relay.round()
    await relay.round()
    assert relay.settled == 0 and relay.stats.pending == 1
    assert (await ledger.balance(creator)).diamonds == 0
    report = await reconcile_cluster(ledger)
    assert report.ok, report.problems
    assert [p.coins for p in report.pending] == [10_000]


async def test_a_debit_day_ahead_of_the_creators_clock_moves_the_ring_on(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    ledger = await open_ledger(
        redis_cluster, keys.prefix, replace(HELD, payout_hold_days=2, payout_hold_day_s=1)
    )
    try:
        stream, creator = await live_stream(ledger)
        now_ms = int(time.time() * 1000)
        first = Transfer(
            transfer_id=f"s1|g1|{now_ms}-0", client_id="g1", sender_id="s1", sender_name="s1",
            creator_id=creator, stream_id=stream, gift_id="cap", count=1, coins=99, price=99,
            catalog_version=1, share_bps=5000, debit_ms=now_ms,
        )  # fmt: skip
        ahead = replace(first, transfer_id=f"s1|g2|{now_ms}-1", client_id="g2",
                        debit_ms=now_ms + 5_000)  # fmt: skip
        results = await ledger.credits.call(creator, stream, [first, ahead])
        assert [r.status for r in results] == ["ok", "ok"]
        k = ledger.keys
        day, ring = await ledger.command(k.account(creator), "HMGET", "hold_day", "hold_ring")
        # Five one-second days on: the first gift's bucket left the ring of 3; the second's
        # is the newest.
        assert int(day) == (now_ms + 5_000) // 1000 and ring == b"0,0,50"
    finally:
        await ledger.aclose()


async def test_corrupt_data_fails_each_chargeback_leg_before_its_first_write(
    ledger: ClusterLedger,
) -> None:
    stream, creator = await live_stream(ledger)
    fan = uid("fan")
    await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=10_000)
    await interstellar(ledger, fan, stream, creator)
    k = ledger.keys
    # The buyer's leg: a record entry that is not an integer.
    [field] = [f for f in await ledger.command(k.hold_record(fan), "HKEYS") if b"|" in f]
    await ledger.command(k.hold_record(fan), "HSET", field.decode(), "abc")
    before = await ledger.command(k.account(fan), "HGETALL")
    with pytest.raises(InvariantError):
        await ledger.refund(payment_id="p" + fan, user_id=fan, refund_id="r1", coins=10_000)
    assert await ledger.command(k.account(fan), "HGETALL") == before
    assert await ledger.command(k.refund(fan, "p" + fan, "r1"), "EXISTS") == 0
    await ledger.command(k.hold_record(fan), "HSET", field.decode(), 10_000)
    # The creator's leg: a hold ring that is not a list of integers.
    ring = await ledger.command(k.account(creator), "HGET", "hold_ring")
    await ledger.command(k.account(creator), "HSET", "hold_ring", "1,x")
    refund = await ledger.refund(payment_id="p" + fan, user_id=fan, refund_id="r1", coins=10_000)
    assert refund.reversed == 10_000  # the buyer's leg committed; the clawback did not
    diamonds = await ledger.command(k.account(creator), "HGET", "diamonds")
    assert diamonds == b"5000"
    marker = k.clawback_marker(creator, "p" + fan, "r1")
    assert await ledger.command(marker, "EXISTS") == 0
    await ledger.command(k.account(creator), "HSET", "hold_ring", ring)  # repaired
    relay = Relay(ledger, grace_ms=0, full_sweep_s=0)
    await relay.round()
    assert (await ledger.balance(creator)).diamonds == 0
    await reconciled(ledger)
