"""The payout hold of gifts to guests on the loopback cluster (docs/ledger.md, "Guests on stage
in cluster mode"): a guest's diamonds held in the guest's own day buckets by the debit's day,
cash_out refusing them, and a chargeback inside the hold clawing them back from whoever
received them. Time: as ``test_cluster_hold.py``, the tests move stored days back (``age``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from server.domain.errors import ErrorCode, LedgerRefusal
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.keys import Keys
from tests.cluster.legs import gift, live_stream, open_ledger, uid
from tests.cluster.test_cluster_guests import on_stage
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
    stream, creator = await live_stream(ledger)
    guest = uid("guest")
    await on_stage(ledger, stream, creator, guest)
    fan = uid("fan")
    await ledger.top_up(payment_id="p" + fan, user_id=fan, coins=10_000)
    await gift(ledger, fan, stream, creator, gift_id="interstellar", to=guest)
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
