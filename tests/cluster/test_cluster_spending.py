"""Spending limits on the loopback cluster: spending_limits.lua in the user's slot, and the
debit leg (debit_gift.lua) enforcing the same _spend.lua rules as single-node send_gift."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.domain.errors import ErrorCode, LedgerRefusal
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.keys import Keys
from tests.cluster.legs import funded, gift, live_stream, open_ledger
from tests.support.cluster import RedisCluster


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    yield ledger
    await ledger.aclose()


async def _refusal(ledger: ClusterLedger, *args: str, gift_id: str) -> dict[str, object]:
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, *args, gift_id=gift_id)
    assert refused.value.code is ErrorCode.SPENDING_LIMIT and refused.value.detail is not None
    return refused.value.detail


async def test_own_limits_and_a_minors_cap_bind_the_debit_leg(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    sender = await funded(ledger, 10_000)
    status = await ledger.spending.set(sender, day=250, month=10_000)
    assert status.applied == {"day": "now", "month": "now"}
    await gift(ledger, sender, stream, creator, gift_id="hand_hearts")
    await gift(ledger, sender, stream, creator, gift_id="hand_hearts")
    assert await _refusal(ledger, sender, stream, creator, gift_id="hand_hearts") == {
        "period": "day", "limit": 250, "spent": 200, "spent_24h": 200, "set_by": "own",
    }  # fmt: skip
    raised = await ledger.spending.set(sender, day=5_000)
    assert raised.day.pending is not None and raised.day.limit_coins == 250
    await ledger.spending.protect(sender, minor=True, day_cap=5_000, month_cap=202)
    assert await _refusal(ledger, sender, stream, creator, gift_id="finger_heart") == {
        "period": "month", "limit": 202, "spent": 200, "set_by": "platform",
    }  # fmt: skip
    shown = await ledger.spending.show(sender)
    assert (shown.month.limit_coins, shown.month.set_by, shown.day.spent_coins) == (
        202, "platform", 200,
    )  # fmt: skip
    assert (await ledger.balance(sender)).coins == 10_000 - 200


async def test_concurrent_debits_never_pass_a_lowered_limit(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    sender = await funded(ledger, 10_000)
    await ledger.spending.set(sender, month=100)
    results = await asyncio.gather(
        *(gift(ledger, sender, stream, creator, gift_id="finger_heart") for _ in range(40)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 20
    assert (await ledger.spending.show(sender)).month.spent_coins == 100
