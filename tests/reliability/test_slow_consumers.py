"""One viewer stops reading while a thousand others read (issue item 5).

The same gift load runs twice against one server with a thousand reading viewers: first
alone, then with one more viewer that never reads. The readers' delivery latency is
compared between the two runs as a ratio (never against a time limit), the stalled viewer
must be closed with 4008 at its queue limit, and the server's resident memory must stay
flat while it is. The basic case (one fast, one stalled viewer) is
``tests/e2e/test_realtime.py::test_slow_viewer_is_dropped_without_delaying_others``.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections import defaultdict

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import (
    STREAM,
    Peer,
    open_stream,
    read_metrics,
    rss_kib,
    stalled_viewer,
)
from tests.support.servers import ServerProcess, token

READERS = 1_000
GIFTS_PER_S = 100
PHASE_S = 3.0
ROUNDS = 2
RETRIES_MAX = 3
SLOW_ENV = {
    "GIFTWIRE_SEND_QUEUE_FRAMES_MAX": "32",
    "GIFTWIRE_LAGGING_S_MAX": "1",
    "GIFTWIRE_SOCKET_SEND_BUFFER_BYTES": "8192",
    "GIFTWIRE_STATS_INTERVAL_S": "1",
    "GIFTWIRE_BATCH_MS": "200",  # five frames a second per reader: this process keeps up
}


class Readers:
    """A thousand connections in this process; each records when each gift seq arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[int, list[float]] = defaultdict(list)
        self.sockets: list[ClientConnection] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.lagged = 0

    async def open(self, server: ServerProcess, count: int) -> None:
        async def one(n: int) -> None:
            ws = await connect(
                server.ws_url(STREAM),
                subprotocols=[f"bearer.{token(f'reader{n}')}"],  # type: ignore[list-item]
                compression=None,
                open_timeout=30,
                max_queue=None,
            )
            self.sockets.append(ws)
            self.tasks.append(asyncio.get_running_loop().create_task(self._read(ws)))

        for start in range(0, count, 50):
            await asyncio.gather(*(one(n) for n in range(start, min(count, start + 50))))

    async def _read(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                now = loop.time()
                message = orjson.loads(raw)
                kind = message["type"]
                if kind == "gift":
                    self.arrivals[message["seq"]].append(now)
                elif kind == "gifts":
                    for event in message["events"]:
                        self.arrivals[event["seq"]].append(now)
                elif kind == "lag":
                    self.lagged += 1

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(
            *(asyncio.wait_for(ws.close(), 5) for ws in self.sockets), return_exceptions=True
        )


async def _load(
    sender: Peer,
    prefix: str,
    sent_at: dict[int, float],
    until: asyncio.Task[None] | None = None,
) -> list[str]:
    """GIFTS_PER_S gifts for PHASE_S seconds, and on until ``until`` is done if given;
    ``sent_at`` maps each seq to its send time."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    ids: list[str] = []
    times: dict[str, float] = {}
    while (elapsed := loop.time() - started) < PHASE_S or (until and not until.done()):
        due = int(elapsed * GIFTS_PER_S) + 1
        while len(ids) < due:
            client_id = f"{prefix}-{len(ids)}"
            ids.append(client_id)
            times[client_id] = loop.time()
            await sender.send_gift(client_id)
        await asyncio.sleep(0.005)
    await sender.wait_replies(ids, timeout_s=30)
    for _ in range(RETRIES_MAX):
        # On a loaded machine a gift may time out in Redis (``unavailable``: outcome
        # unknown): the client's contract is to send it again with the same id.
        retry = [i for i in ids if i not in sender.acks and _retryable(sender.reply(i))]
        if not retry:
            break
        for client_id in retry:
            sender.errors.pop(client_id, None)
            await sender.send_gift(client_id)
        await sender.wait_replies(retry, timeout_s=30)
    for client_id in ids:
        sent_at[sender.acks[client_id]["seq"]] = times[client_id]
    return ids


def _retryable(reply: dict[str, object] | None) -> bool:
    return reply is not None and reply.get("code") in ("unavailable", "rate_limited")


def _latencies(readers: Readers, sent_at: dict[int, float]) -> list[float]:
    return [t - sent_at[seq] for seq in sent_at for t in readers.arrivals[seq]]


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1]


async def _slow_closes_reach(server: ServerProcess, count: int, timeout_s: float = 30) -> None:
    """Wait until the server has closed ``count`` viewers for being too slow."""
    async with asyncio.timeout(timeout_s):
        while True:
            metrics = await asyncio.to_thread(read_metrics, server)
            if metrics.get("giftwire_slow_consumer_closes_total", 0) >= count:
                return
            await asyncio.sleep(0.25)


async def _closed_by_server(slow: ClientConnection) -> int | None:
    """Read again until the server's close; return the close code the client saw."""
    slow.transport.resume_reading()
    async with asyncio.timeout(20):
        with contextlib.suppress(ConnectionClosed):
            async for _ in slow:  # what was queued before the server gave up
                pass
    return slow.close_code


@pytest.mark.slow
async def test_a_stalled_viewer_neither_slows_a_thousand_readers_nor_grows_memory(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 1_000_000))
    server = spawn(redis_server.url, **SLOW_ENV)
    pid = server.process.pid  # type: ignore[union-attr]
    readers = Readers()
    sender = await Peer.open(server, token("alice"))
    stalled_viewers: list[ClientConnection] = []
    alone: dict[int, float] = {}
    stalled: dict[int, float] = {}
    rss: list[int] = []
    try:
        await readers.open(server, READERS)
        await asyncio.sleep(1.0)  # handshakes settle
        # Alternate the two conditions so that drifting background load hits both alike.
        for round_ in range(ROUNDS):
            await _load(sender, f"alone{round_}", alone)
            await asyncio.sleep(0.3)
            rss.append(rss_kib(pid))
            slow = await stalled_viewer(server, f"stalled{round_}")
            stalled_viewers.append(slow)
            closed = asyncio.create_task(_slow_closes_reach(server, round_ + 1))
            await _load(sender, f"stalled{round_}", stalled, until=closed)
            await closed
            rss.append(rss_kib(pid))
            # The server stopped writing to it: its close frame may not fit either (1006),
            # so the server's own count below says why it closed.
            assert await _closed_by_server(slow) in (4008, 1006), slow.close_code
        metrics = await asyncio.to_thread(read_metrics, server)
        assert metrics["giftwire_slow_consumer_closes_total"] == ROUNDS
        dropped = int(metrics["giftwire_fanout_dropped_total"])

        for sent_at in (alone, stalled):
            for seq in sent_at:
                assert len(readers.arrivals[seq]) == READERS, f"seq {seq} did not reach all"
        base, with_slow = _latencies(readers, alone), _latencies(readers, stalled)
        ratio_p50 = _quantile(with_slow, 0.5) / _quantile(base, 0.5)
        ratio_p90 = _quantile(with_slow, 0.9) / _quantile(base, 0.9)
        growth_kib = max(rss) - rss[0]
        print(
            f"\nslow consumer: {READERS} readers x {len(alone) + len(stalled)} gifts; "
            f"p50 {_quantile(base, 0.5) * 1000:.1f} -> {_quantile(with_slow, 0.5) * 1000:.1f} ms "
            f"(x{ratio_p50:.2f}), p90 {_quantile(base, 0.9) * 1000:.1f} -> "
            f"{_quantile(with_slow, 0.9) * 1000:.1f} ms (x{ratio_p90:.2f}); "
            f"RSS {rss} KiB; lag notices to readers {readers.lagged}; "
            f"frames dropped for the stalled ones {dropped}"
        )
        assert readers.lagged == 0
        # Unaffected: the same as without the stalled viewer, give or take this box's noise
        # (other work on two shared cores moves p90 by 4x either way; it is printed, not
        # checked). A room that waited for the stalled viewer would add seconds to p50.
        assert ratio_p50 < 3.0
        # Bounded: a stalled viewer holds at most its queue and socket buffers.
        assert growth_kib < 16 * 1024
    finally:
        for slow in stalled_viewers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slow.close(), 2)
        await readers.close()
        await sender.close()
