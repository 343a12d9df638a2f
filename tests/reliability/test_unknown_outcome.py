"""Lost replies and duplicates: the outcome a client cannot see (issue item 3).

A TCP proxy between giftwire and Redis forwards a gift's script call in full and then
loses Redis' reply, so the transfer committed but the server cannot know. The timeout
variant (Redis paused past ``redis_timeout_s``) is
``tests/integration/test_runner.py::test_a_timeout_is_unknown_and_the_retry_settles_it``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest

from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.runner import StreamRows
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import (
    Peer,
    applied_gifts,
    assert_books_hold,
    open_stream,
    settle,
    wait_ready,
)
from tests.support.proxy import CuttableProxy
from tests.support.servers import token


@pytest.fixture
async def proxy(redis_server: RedisProcess) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(redis_server.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_a_lost_reply_is_unavailable_and_the_retry_returns_the_original_receipt(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn, proxy: CuttableProxy
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 1_000))
    server = spawn(proxy.url, ready=False, GIFTWIRE_REDIS_TIMEOUT_S="1")
    await asyncio.to_thread(server.start)  # the proxy runs on this loop: do not block it
    alice = await Peer.open(server, token("alice"))
    try:
        proxy.drop_reply_to(b"lost-reply-1", then_refuse=True)
        await alice.send_gift("lost-reply-1", "perfume")  # 20 coins
        await alice.wait_replies(["lost-reply-1"])
        assert proxy.replies_dropped == 1
        # The server cannot know whether the script ran: it says so, and acknowledges nothing.
        assert alice.errors["lost-reply-1"][-1]["code"] == "unavailable"
        assert "lost-reply-1" not in alice.acks
        # It did run: the money moved exactly once.
        applied = await applied_gifts(ledger.redis, keys)
        assert applied[("alice", "lost-reply-1")] == 1
        assert (await ledger.balance("alice")).coins == 980

        proxy.refuse(False)
        await wait_ready(server)
        await settle(alice, ["lost-reply-1"], gift="perfume")
        ack = alice.acks["lost-reply-1"]
        assert ack["replayed"] and ack["balance"] == 980 and ack["coins"] == 20
        entries = cast(StreamRows, await ledger.redis.xrange(keys.ledger()))
        entry_id = next(e for e, fields in entries if fields.get(b"client_id") == b"lost-reply-1")
        assert ack["transfer_id"] == entry_id.decode()
        assert (await ledger.balance("alice")).coins == 980
    finally:
        await alice.close()
    await assert_books_hold(ledger.redis, keys)


async def test_fifty_concurrent_duplicates_move_money_once_across_two_processes(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 1_000))
    a, b = spawn(redis_server.url), spawn(redis_server.url)
    peers = [await Peer.open(server, token("alice")) for server in (a, b) * 5]
    try:
        # Ten connections of one user on two processes, five sends each, all at once.
        await asyncio.gather(
            *(peer.send_gift("dup-1", "perfume") for peer in peers for _ in range(5))
        )
        await asyncio.gather(
            *(peer.wait_for(lambda p=peer: len(p.acks) == 1 and _acks(p) == 5) for peer in peers)
        )
        acks = [ack for peer in peers for ack in peer.ack_log]
        assert len(acks) == 50
        assert sum(not ack["replayed"] for ack in acks) == 1
        assert len({ack["transfer_id"] for ack in acks}) == 1
        assert {ack["balance"] for ack in acks} == {980}
        assert (await ledger.balance("alice")).coins == 980

        # The same id with different content is refused and moves nothing.
        for gift, count in (("rose", 1), ("perfume", 2)):
            await peers[0].send({"type": "send_gift", "id": "dup-1", "gift": gift, "count": count})
            await peers[0].wait_for(lambda: bool(peers[0].errors.get("dup-1")))
            assert peers[0].errors.pop("dup-1")[-1]["code"] == "duplicate_mismatch"
        assert (await ledger.balance("alice")).coins == 980
        assert (await applied_gifts(ledger.redis, keys))[("alice", "dup-1")] == 1
    finally:
        for peer in peers:
            await peer.close()
    await assert_books_hold(ledger.redis, keys)


def _acks(peer: Peer) -> int:
    return len(peer.ack_log)
