"""The payout lifecycle on the loopback cluster: settle_payout.lua in the creator's slot,
pending -> paid or failed (a failure returns the diamonds, withdrawable), each step once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from server.domain.errors import ErrorCode, LedgerRefusal
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.keys import Keys
from tests.cluster.legs import GENEROUS, funded, gift, live_stream, open_ledger
from tests.support.cluster import RedisCluster


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(
        redis_cluster, keys.prefix, replace(GENEROUS, cashout_diamonds_min=1, payout_hold_days=0)
    )
    yield ledger
    await ledger.aclose()


async def _earned(ledger: ClusterLedger) -> str:
    stream, creator = await live_stream(ledger)
    fan = await funded(ledger, 20_000, "fan")
    await gift(ledger, fan, stream, creator, gift_id="interstellar", count=2)  # 10,000 diamonds
    return creator


async def test_each_step_of_a_payout_once(ledger: ClusterLedger) -> None:
    creator = await _earned(ledger)
    for cash_out in ("c1", "c2"):
        out = await ledger.cash_out(client_id=cash_out, creator_id=creator, diamonds=4_000)
        assert out.state == "pending"
    assert (await ledger.balance(creator)).diamonds == 2_000
    paid = await ledger.settle_payout(client_id="c1", creator_id=creator, outcome="paid")
    assert (paid.state, paid.balance, paid.replayed) == ("paid", 2_000, False)
    again = await ledger.settle_payout(client_id="c1", creator_id=creator, outcome="paid")
    assert again.replayed and again.transfer_id == paid.transfer_id
    with pytest.raises(LedgerRefusal) as settled:
        await ledger.settle_payout(client_id="c1", creator_id=creator, outcome="failed")
    assert settled.value.code is ErrorCode.PAYOUT_SETTLED
    failed = await ledger.settle_payout(client_id="c2", creator_id=creator, outcome="failed")
    assert (failed.state, failed.balance) == ("failed", 6_000)  # the diamonds came back
    assert (await ledger.balance(creator)).withdrawable_diamonds == 6_000
    replayed = await ledger.settle_payout(client_id="c2", creator_id=creator, outcome="failed")
    assert replayed.replayed and (await ledger.balance(creator)).diamonds == 6_000
    with pytest.raises(LedgerRefusal) as unknown:
        await ledger.settle_payout(client_id="c9", creator_id=creator, outcome="paid")
    assert unknown.value.code is ErrorCode.UNKNOWN_PAYOUT
    report = await reconcile_cluster(ledger)
    assert report.ok, report.problems


async def test_concurrent_outcomes_of_one_payout_settle_it_once(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    """The provider's webhook and an admin on three processes at once: one outcome wins,
    every other call replays it or is refused, and a failure returns the diamonds once."""
    limits = replace(GENEROUS, cashout_diamonds_min=1, payout_hold_days=0)
    ledgers = [await open_ledger(redis_cluster, keys.prefix, limits) for _ in range(3)]
    try:
        creator = await _earned(ledgers[0])
        await ledgers[0].cash_out(client_id="c1", creator_id=creator, diamonds=10_000)

        async def settle(i: int) -> str:
            outcome = "failed" if i % 2 else "paid"
            try:
                receipt = await ledgers[i % 3].settle_payout(
                    client_id="c1", creator_id=creator, outcome=outcome
                )
            except LedgerRefusal as refusal:
                assert refusal.code is ErrorCode.PAYOUT_SETTLED
                return "refused"
            return receipt.state

        outcomes = await asyncio.gather(*(settle(i) for i in range(30)))
        won = {o for o in outcomes if o != "refused"}
        assert len(won) == 1
        diamonds = (await ledgers[0].balance(creator)).diamonds
        assert diamonds == (10_000 if won == {"failed"} else 0)
        report = await reconcile_cluster(ledgers[0])
        assert report.ok, report.problems
    finally:
        for ledger in ledgers:
            await ledger.aclose()
