"""Resume flood (issue 11 item 1): non-reading sockets that ask for the feed again and again.

Each ``{"type": "resume", "since": 0}`` asks for up to ``resume_events_max`` gifts. Before
the fix they were queued without a bound (RSS 121 -> 1,285 MiB in 35 s from one viewer with
five sockets, never closed). Now resumed gifts count toward the connection's send budget:
a resume pages the feed only while the outbox has room, the socket is not read while it is
full, and a connection that stays behind is closed with 4008. The server's RSS is sampled
during the flood and must stay within a few send budgets.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import Peer, open_stream, read_metrics, rss_kib, stalled_viewer
from tests.support.servers import token

SOCKETS = 5
RESUMES_PER_S = 18
FLOOD_S = 12.0
FEED_GIFTS = 1_000
FLOOD_ENV = {
    "GIFTWIRE_LAGGING_S_MAX": "3",
    "GIFTWIRE_SOCKET_SEND_BUFFER_BYTES": "8192",
}


async def _flood(ws: ClientConnection, until: float) -> int:
    """Send resumes at RESUMES_PER_S until ``until`` or until the server closes; return how
    many went out."""
    loop = asyncio.get_running_loop()
    sent = 0
    resume = orjson.dumps({"type": "resume", "since": 0}).decode()
    with contextlib.suppress(ConnectionClosed, OSError):
        while loop.time() < until:
            await asyncio.wait_for(ws.send(resume), 2)
            sent += 1
            await asyncio.sleep(1 / RESUMES_PER_S)
    return sent


@pytest.mark.slow
async def test_a_resume_flood_from_non_reading_sockets_is_bounded_and_closed(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 1_000_000))
    server = spawn(redis_server.url, **FLOOD_ENV)
    pid = server.process.pid  # type: ignore[union-attr]
    alice = await Peer.open(server, token("alice"))
    watcher = await Peer.open(server, token("watcher"))
    sockets: list[ClientConnection] = []
    try:
        # A full feed to resume from.
        ids = [f"g{i}" for i in range(FEED_GIFTS)]
        for client_id in ids:
            await alice.send_gift(client_id)
        await alice.wait_replies(ids, timeout_s=60)
        await watcher.wait_for(lambda: len(watcher.seqs) == FEED_GIFTS, timeout_s=30)
        await asyncio.sleep(1.0)
        before = rss_kib(pid)

        sockets = [
            await stalled_viewer(server, "flooder", close_timeout_s=1) for _ in range(SOCKETS)
        ]
        loop = asyncio.get_running_loop()
        flood = asyncio.gather(*(_flood(ws, loop.time() + FLOOD_S) for ws in sockets))
        peak = before
        while not flood.done():
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.25)
        sent = sum(await flood)
        peak = max(peak, rss_kib(pid))
        closes = (await asyncio.to_thread(read_metrics, server)).get(
            "giftwire_slow_consumer_closes_total", 0.0
        )
        growth_mib = (peak - before) / 1024
        print(
            f"\nresume flood: {SOCKETS} non-reading sockets sent {sent} resumes of up to "
            f"{FEED_GIFTS} gifts in {FLOOD_S:.0f} s; RSS {before / 1024:.0f} -> "
            f"{peak / 1024:.0f} MiB (+{growth_mib:.1f} MiB); slow-consumer closes {closes:.0f}"
        )
        # Closed with 4008 (the server says so; the close frame itself may not get through
        # to a socket that never reads).
        assert closes == SOCKETS
        for ws in sockets:
            ws.transport.resume_reading()
            async with asyncio.timeout(20):
                with contextlib.suppress(ConnectionClosed):
                    async for _ in ws:
                        pass
            assert ws.close_code in (4008, 1006), ws.close_code
        # Bounded: a few send budgets (1 MiB each) and socket buffers, not the gigabyte the
        # unbounded resumes reached.
        assert growth_mib < 48
        # Meanwhile the room went on for everyone else.
        await alice.send_gift("after")
        await alice.wait_replies(["after"])
        await watcher.wait_for(lambda: FEED_GIFTS + 1 in watcher.seqs)
        assert watcher.seqs == list(range(1, FEED_GIFTS + 2))
    finally:
        for ws in sockets:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        await alice.close()
        await watcher.close()
