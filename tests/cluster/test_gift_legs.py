"""The two legs of a gift on the loopback cluster: debit_gift.lua, then credit_gifts.lua."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest

from server.domain.errors import ErrorCode, LedgerRefusal, UnavailableError
from server.domain.limits import Limits
from server.ledger.cluster_credits import CreditResult, Transfer
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import ClusterReport, reconcile_cluster
from server.ledger.keys import Keys
from server.ledger.receipts import GiftReceipt
from tests.cluster.legs import GENEROUS, funded, gift, live_stream, open_ledger, uid
from tests.support.cluster import RedisCluster


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    yield ledger
    await ledger.aclose()


async def test_a_gift_debits_the_sender_and_credits_the_creator(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    sender = await funded(ledger, 100)
    receipt = await gift(ledger, sender, stream, creator, gift_id="cap")
    assert (receipt.coins, receipt.diamonds, receipt.platform_coins) == (99, 49, 50)
    assert receipt.balance == 1 and receipt.seq == 1 and not receipt.replayed
    assert (await ledger.balance(sender)).coins == 1
    assert (await ledger.balance(creator)).diamonds == 49
    info = await ledger.stream(stream)
    assert info is not None and info.last_sequence == 1
    slot = slot_of(ledger.keys.account(creator))
    assert int(await ledger.command(ledger.keys.platform_shard(slot), "HGET", "coins")) == 50


async def reconciled(ledger: ClusterLedger) -> ClusterReport:
    report = await reconcile_cluster(ledger)
    assert report.problems == []
    return report


async def test_a_retry_replays_the_receipt_and_moves_nothing(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    sender = await funded(ledger, 100)
    first = await gift(ledger, sender, stream, creator, client_id="g1", gift_id="cap")
    again = await gift(ledger, sender, stream, creator, client_id="g1", gift_id="cap")
    assert again.replayed and not first.replayed
    assert (again.transfer_id, again.seq, again.balance, again.diamonds, again.combo) == (
        first.transfer_id,
        first.seq,
        first.balance,
        first.diamonds,
        first.combo,
    )
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, sender, stream, creator, client_id="g1", gift_id="rose")
    assert refused.value.code is ErrorCode.DUPLICATE_MISMATCH
    # After the stream ended, the committed gift still replays; a new one is refused.
    await ledger.end_stream(stream_id=stream, actor_id=creator, is_admin=False)
    ledger._states.clear()
    assert (await gift(ledger, sender, stream, creator, client_id="g1", gift_id="cap")).replayed
    with pytest.raises(LedgerRefusal) as ended:
        await gift(ledger, sender, stream, creator, gift_id="rose")
    assert ended.value.code is ErrorCode.STREAM_NOT_LIVE
    assert (await ledger.balance(sender)).coins == 1
    report = await reconciled(ledger)
    assert report.totals["transfers"] == 1 and report.pending == []


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("poor", ErrorCode.INSUFFICIENT_FUNDS),
        ("unknown_gift", ErrorCode.UNKNOWN_GIFT),
        ("old_catalog", ErrorCode.CATALOG_CHANGED),
        ("self", ErrorCode.SELF_GIFT),
        ("no_stream", ErrorCode.UNKNOWN_STREAM),
        ("wrong_creator", ErrorCode.INVALID_REQUEST),
    ],
)
async def test_every_refusal_moves_nothing(
    ledger: ClusterLedger, case: str, code: ErrorCode
) -> None:
    stream, creator = await live_stream(ledger)
    sender = await funded(ledger, 10)
    kwargs: dict[str, object] = {"gift_id": "rose"}
    target_stream, target_creator, who = stream, creator, sender
    if case == "poor":
        kwargs["gift_id"] = "cap"
    elif case == "unknown_gift":
        kwargs["gift_id"] = "unicorn"
    elif case == "old_catalog":
        kwargs["catalog_version"] = 99
    elif case == "self":
        await ledger.top_up(payment_id=uid("pay"), user_id=creator, coins=10)
        who = creator
    elif case == "no_stream":
        target_stream = uid("nostream")
    elif case == "wrong_creator":
        target_creator = uid("other")
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, who, target_stream, target_creator, **kwargs)  # type: ignore[arg-type]
    assert refused.value.code is code
    assert (await ledger.balance(sender)).coins == 10
    assert (await ledger.balance(creator)).diamonds == 0
    report = await reconciled(ledger)
    assert report.totals["transfers"] == 0


async def test_the_rate_limit_refuses_in_the_senders_slot(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    ledger = await open_ledger(
        redis_cluster, keys.prefix, Limits(gifts_per_s_max=1, gift_burst_max=2)
    )
    try:
        stream, creator = await live_stream(ledger)
        sender = await funded(ledger, 10)
        await gift(ledger, sender, stream, creator)
        await gift(ledger, sender, stream, creator)
        with pytest.raises(LedgerRefusal) as refused:
            await gift(ledger, sender, stream, creator)
        assert refused.value.code is ErrorCode.RATE_LIMITED
        assert (await ledger.balance(sender)).coins == 8
        await reconciled(ledger)
    finally:
        await ledger.aclose()


async def test_a_crash_between_the_legs_leaves_a_pending_transfer_that_a_retry_settles(
    ledger: ClusterLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, creator = await live_stream(ledger)
    sender = await funded(ledger, 100)

    async def crashed(transfer: Transfer) -> CreditResult:
        raise UnavailableError("the process died after the debit")

    with monkeypatch.context() as patch:
        patch.setattr(ledger.credits, "credit", crashed)
        with pytest.raises(UnavailableError):
            await gift(ledger, sender, stream, creator, client_id="g1", gift_id="cap")
    report = await reconciled(ledger)
    assert [p.coins for p in report.pending] == [99]
    assert (await ledger.balance(sender)).coins == 1
    assert (await ledger.balance(creator)).diamonds == 0
    # The client's retry: the debit replays, the credit is made now, with the same id.
    retry = await gift(ledger, sender, stream, creator, client_id="g1", gift_id="cap")
    assert retry.replayed and retry.seq == 1 and retry.diamonds == 49 and retry.balance == 1
    await asyncio.sleep(0.05)  # the settled entry is deleted in the background
    report = await reconciled(ledger)
    assert report.pending == [] and report.totals["outbox_entries"] == 0
    assert (await ledger.balance(creator)).diamonds == 49


async def test_fifty_concurrent_retries_across_three_processes_debit_once(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    processes = [await open_ledger(redis_cluster, keys.prefix) for _ in range(3)]
    try:
        stream, creator = await live_stream(processes[0])
        sender = await funded(processes[0], 1000)
        receipts = await asyncio.gather(
            *(
                gift(processes[n % 3], sender, stream, creator, client_id="same", gift_id="cap")
                for n in range(50)
            ),
            return_exceptions=True,
        )
        done = [r for r in receipts if isinstance(r, GiftReceipt)]
        assert len(done) == 50, [r for r in receipts if not isinstance(r, GiftReceipt)]
        assert sum(not r.replayed for r in done) == 1
        assert {(r.transfer_id, r.seq, r.balance) for r in done} == {(done[0].transfer_id, 1, 901)}
        assert (await processes[1].balance(sender)).coins == 901
        await asyncio.sleep(0.05)
        report = await reconciled(processes[2])
        assert report.totals["transfers"] == 1 and report.pending == []
    finally:
        for process in processes:
            await process.aclose()


async def test_a_hot_creator_takes_many_credits_per_call(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    senders = [await funded(ledger, 10) for _ in range(40)]
    receipts = await asyncio.gather(
        *(gift(ledger, s, stream, creator) for s in senders for _ in range(5))
    )
    assert sorted(r.seq for r in receipts) == list(range(1, 201))
    assert ledger.credits.calls < 100  # 200 credits; one call per gift would be 200
    # 200 one-coin gifts at 50 %: the carried halves add up to 100 diamonds, not 0.
    assert (await ledger.balance(creator)).diamonds == 100
    feed = await ledger.feed(stream, 0, 500)
    assert [orjson.loads(e)["seq"] for e in feed] == list(range(1, 201))
    await asyncio.sleep(0.05)
    report = await reconciled(ledger)
    assert report.totals["transfers"] == 200 and report.totals["platform_coins"] == 100


async def test_payments_refunds_and_cash_outs_stay_in_one_slot(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    # No payout hold here (test_cluster_hold.py has it): the refund takes coins, not gifts.
    ledger = await open_ledger(redis_cluster, keys.prefix, replace(GENEROUS, payout_hold_days=0))
    try:
        await _payments_refunds_and_cash_outs(ledger)
    finally:
        await ledger.aclose()


async def _payments_refunds_and_cash_outs(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    buyer = uid("buyer")
    paid = await ledger.top_up(payment_id="p1" + buyer, user_id=buyer, coins=5000)
    assert paid.credited == 5000
    again = await ledger.top_up(payment_id="p1" + buyer, user_id=buyer, coins=5000)
    assert again.replayed
    with pytest.raises(LedgerRefusal) as stolen:  # one payment id, one buyer
        await ledger.top_up(payment_id="p1" + buyer, user_id=uid("thief"), coins=5000)
    assert stolen.value.code is ErrorCode.DUPLICATE_MISMATCH
    for _ in range(30):
        await gift(ledger, buyer, stream, creator, gift_id="cap", count=1)
    refund = await ledger.refund(payment_id="p1" + buyer, user_id=buyer, refund_id="r1", coins=3000)
    assert refund.refunded == 3000 and refund.clawed == 5000 - 30 * 99
    assert refund.debt_added == 3000 - refund.clawed
    out = await ledger.cash_out(client_id="c1", creator_id=creator, diamonds=1000)
    assert out.balance == 30 * 99 // 2 - 1000
    await asyncio.sleep(0.05)
    report = await reconciled(ledger)
    assert report.totals["transfers"] == 30


async def test_a_stream_id_is_claimed_once_and_the_bound_bounds_claims(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    ledger = await open_ledger(redis_cluster, keys.prefix, Limits(streams_per_creator_max=1))
    try:
        stream, creator = await live_stream(ledger)
        assert (await ledger.start_stream(stream_id=stream, creator_id=creator, title="t")).replayed
        with pytest.raises(LedgerRefusal) as taken:
            await ledger.start_stream(stream_id=stream, creator_id=uid("other"), title="t")
        assert taken.value.code is ErrorCode.STREAM_EXISTS
        second = uid("stream")
        with pytest.raises(LedgerRefusal) as bound:
            await ledger.start_stream(stream_id=second, creator_id=creator, title="t")
        assert bound.value.code is ErrorCode.STREAM_LIMIT
        assert await ledger.owner(second) is None  # the claim was taken back
        ended = await ledger.end_stream(stream_id=stream, actor_id=creator, is_admin=False)
        assert ended.state.value == "ended"
    finally:
        await ledger.aclose()


async def test_concurrent_gifts_from_three_processes_never_overspend(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    processes = [await open_ledger(redis_cluster, keys.prefix) for _ in range(3)]
    try:
        stream, creator = await live_stream(processes[0])
        sender = await funded(processes[0], 500)
        outcomes = await asyncio.gather(
            *(gift(processes[n % 3], sender, stream, creator, gift_id="cap") for n in range(20)),
            return_exceptions=True,
        )
        sent = [o for o in outcomes if isinstance(o, GiftReceipt)]
        refused = [o for o in outcomes if isinstance(o, LedgerRefusal)]
        assert len(sent) == 5 and len(refused) == 15
        assert all(r.code is ErrorCode.INSUFFICIENT_FUNDS for r in refused)
        assert sorted(r.seq for r in sent) == [1, 2, 3, 4, 5]
        assert (await processes[1].balance(sender)).coins == 500 - 5 * 99
        await asyncio.sleep(0.05)
        report = await reconciled(processes[2])
        assert report.totals["transfers"] == 5
    finally:
        for process in processes:
            await process.aclose()
