"""Redis stops for a few seconds under a live room, then comes back (issue item 6), on both
stores: the test's own redis-server, or on a cluster of the test's own the primary that
serves the creator's slot (the stream, its feed and its room channel) and the sender's,
stopped for less than the node timeout, so that no replica takes over: the outage is the
same one, and the room's sharded subscription must come back on the same node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.reliability.conftest import Spawn
from tests.reliability.helpers import (
    CREATOR,
    STREAM,
    Peer,
    readyz_status,
    send_direct,
    settle,
    wait_ready,
)
from tests.support.cluster import RedisCluster
from tests.support.ledgers import (
    AnyLedger,
    applied_gifts,
    close,
    gifts_in,
    open_cluster,
    open_single,
    quiet,
    reconciled,
)
from tests.support.servers import token

OUTAGE_S = 3.0
NODE_TIMEOUT_MS = 20_000
"""Far longer than the outage: the stopped primary is not failed over, it comes back."""


@dataclass
class Store:
    url: str
    ledger: AnyLedger
    stop: Callable[[], None]
    start: Callable[[], None]
    sender: str = "alice"
    env: dict[str, str] = field(default_factory=dict)


def _sender_beside(cluster: RedisCluster, keys: ClusterKeys, user: str) -> str:
    """A user id whose account is on the same primary as ``user``'s."""
    port = cluster.primary_for_slot(slot_of(keys.account(user))).port
    for n in range(10_000):
        name = f"alice{n}"
        if cluster.primary_for_slot(slot_of(keys.account(name))).port == port:
            return name
    raise AssertionError("no sender id on that primary")


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.slow)])
async def store(request: pytest.FixtureRequest, tmp_path: Path, keys: Keys) -> AsyncIterator[Store]:
    if request.param == "single":
        redis: RedisProcess = request.getfixturevalue("own_redis")
        ledger: AnyLedger = await open_single(redis.url, keys)
        yield Store(redis.url, ledger, redis.stop, redis.start)
        await close(ledger)
        return
    cluster = RedisCluster(tmp_path / "cluster", node_timeout_ms=NODE_TIMEOUT_MS)
    await asyncio.to_thread(cluster.start)
    try:
        ledger = await open_cluster(cluster, keys)
        cluster_keys = ClusterKeys(keys.prefix)
        port = cluster.primary_for_slot(slot_of(cluster_keys.account(CREATOR))).port
        yield Store(
            cluster.startup_urls[0],
            ledger,
            stop=cluster.node(port).stop,
            start=lambda: cluster.restart(port),
            sender=_sender_beside(cluster, cluster_keys, CREATOR),
            env={"GIFTWIRE_REDIS_CLUSTER": "true"},
        )
        await close(ledger)
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_outage_refuses_gifts_turns_readyz_red_and_feeds_resume_without_gap(
    store: Store, spawn: Spawn
) -> None:
    ledger, alice_id = store.ledger, store.sender
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="reliability")
    for user in (alice_id, "bob"):
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=1_000)
    server = spawn(store.url, **store.env)
    viewer = await Peer.open(server, token("viewer1"))
    alice = await Peer.open(server, token(alice_id))
    try:
        for i in range(5):
            await alice.send_gift(f"before-{i}")
        await viewer.wait_for(lambda: len(viewer.seqs) == 5)

        store.stop()
        loop = asyncio.get_running_loop()
        down_at = loop.time()
        down_ids = [f"down-{i}" for i in range(5)]
        for client_id in down_ids:
            await alice.send_gift(client_id)
        await alice.wait_for(lambda: all(alice.reply(i) for i in down_ids))
        # Refused with a clear code, never acknowledged: the ledger could not be reached.
        assert {alice.reply(i)["code"] for i in down_ids} == {"unavailable"}  # type: ignore[index]
        assert not any(i in alice.acks for i in down_ids)
        assert await asyncio.to_thread(readyz_status, server) == 503
        await asyncio.sleep(max(0.0, OUTAGE_S - (loop.time() - down_at)))
        assert not viewer.closed.is_set() and not alice.closed.is_set()

        await asyncio.to_thread(store.start)  # same port, same data folder
        # Gifts committed before this server's pub/sub is back are never published to it:
        # it must read them back from the feed. Send some at once from outside the server.
        for i in range(5):
            assert not await send_direct(ledger, "bob", f"direct-{i}")  # type: ignore[arg-type]
        recovered_s = await wait_ready(server)
        applied = await applied_gifts(ledger)
        assert not any((alice_id, i) in applied for i in down_ids)

        # The refused gifts were never applied: their retries apply them now, once.
        await settle(alice, down_ids)
        assert not any(alice.acks[i]["replayed"] for i in down_ids)
        await settle(alice, [f"after-{i}" for i in range(5)])
        await viewer.wait_for(lambda: len(viewer.seqs) >= 20)
        await asyncio.sleep(0.3)  # nothing more should come
        assert viewer.seqs == list(range(1, 21)), viewer.seqs
        assert not viewer.closed.is_set()
        assert recovered_s < 15
    finally:
        await viewer.close()
        await alice.close()
    await quiet(ledger)
    assert gifts_in(await reconciled(ledger)) == 20
    assert set((await applied_gifts(ledger)).values()) == {1}
    assert (await ledger.balance(alice_id)).coins == 1_000 - 15
