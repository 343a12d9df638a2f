"""The two legs of a gift on the loopback cluster: debit_gift.lua, then credit_gifts.lua."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.keys import Keys
from tests.cluster.legs import funded, gift, live_stream, open_ledger
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
