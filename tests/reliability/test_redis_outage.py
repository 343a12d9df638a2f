"""Redis stops for a few seconds under a live room, then comes back (issue item 6)."""

from __future__ import annotations

import asyncio

from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import (
    Peer,
    applied_gifts,
    assert_books_hold,
    open_stream,
    readyz_status,
    send_direct,
    settle,
    wait_ready,
)
from tests.support.servers import token

OUTAGE_S = 3.0


async def test_outage_refuses_gifts_turns_readyz_red_and_feeds_resume_without_gap(
    books: Books, own_redis: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(own_redis.url)
    await open_stream(ledger, ("alice", 1_000), ("bob", 1_000))
    server = spawn(own_redis.url)
    viewer = await Peer.open(server, token("viewer1"))
    alice = await Peer.open(server, token("alice"))
    try:
        for i in range(5):
            await alice.send_gift(f"before-{i}")
        await viewer.wait_for(lambda: len(viewer.seqs) == 5)

        own_redis.stop()
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

        own_redis.start()  # same port, same data folder
        # Gifts committed before this server's pub/sub is back are never published to it:
        # it must read them back from the feed. Send some at once from outside the server.
        for i in range(5):
            assert not await send_direct(ledger, "bob", f"direct-{i}")
        recovered_s = await wait_ready(server)
        applied = await applied_gifts(ledger.redis, keys)
        assert not any(("alice", i) in applied for i in down_ids)

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
    await assert_books_hold(ledger.redis, keys)
    assert (await ledger.balance("alice")).coins == 1_000 - 15
