"""Slowloris (issue #11 item 7): incomplete requests cannot starve a real server.

The attack of the review: 1,100 connections from one address, each sending the start of a
request head and then nothing, against a ``giftwire serve`` whose ``ulimit -n`` is 1024.
Before the fix the process ran out of descriptors (``EMFILE``) and ``/readyz`` timed out.
Now at most ``pending_requests_per_ip_max`` of them are held, each for at most
``request_timeout_s``; the rest are closed unread, and a normal client on another address
keeps getting answers over HTTP and WebSocket. The numbers it prints go to
``docs/reliability.md`` (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
import urllib.request

from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import STREAM, open_stream
from tests.support.servers import ServerProcess, client, token

ATTACK_CONNECTIONS = 1_100
ATTACKER = "127.0.0.2"
FILES_MAX = 1024
TIMEOUT_S = 3.0
PARTIAL_HEAD = b"GET /readyz HTTP/1.1\r\nHost: giftwire\r\nX-Slow: "


def _readyz_s(server: ServerProcess) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(server.http + "/readyz", timeout=5) as response:
        assert response.status == 200
    return time.perf_counter() - started


def _attack(server: ServerProcess, count: int) -> list[socket.socket]:
    """Open ``count`` connections from ATTACKER, each with half a request head."""
    held: list[socket.socket] = []
    for _ in range(count):
        try:
            sock = socket.create_connection(
                ("127.0.0.1", server.port), timeout=2, source_address=(ATTACKER, 0)
            )
            sock.sendall(PARTIAL_HEAD)
        except OSError:
            continue  # refused or reset at once: that is the server defending itself
        held.append(sock)
    return held


def _closed_by_server(sock: socket.socket) -> bytes | None:
    """What the server sent before closing (b"" for nothing), or None: still open."""
    sock.setblocking(False)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
        return data
    except BlockingIOError:
        return data or None  # nothing more yet: still open (unless it said something)
    except OSError:
        return data  # reset


async def test_slowloris_from_one_address_leaves_others_answered(
    books: Books, redis_server: RedisProcess, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 100))
    server = spawn(redis_server.url, ready=False, GIFTWIRE_REQUEST_TIMEOUT_S=str(TIMEOUT_S))
    server.start(files_max=FILES_MAX)
    before = [await asyncio.to_thread(_readyz_s, server) for _ in range(10)]

    started = time.monotonic()
    held = await asyncio.to_thread(_attack, server, ATTACK_CONNECTIONS)
    try:
        # During the attack: another address gets HTTP and WebSocket answers.
        during = [await asyncio.to_thread(_readyz_s, server) for _ in range(10)]
        async with client(server, STREAM, token("alice")) as alice:
            await alice.send({"type": "ping", "id": "during"})
            assert (await alice.recv_type("pong"))["id"] == "during"
            assert alice.welcome["balance"]["coins"] == 100
        await asyncio.sleep(0.5)  # let the server accept everything the kernel queued
        open_now = [s for s in held if _closed_by_server(s) is None]
        # Only the address's bound is held open; every other connection was closed.
        assert len(open_now) <= Limits().pending_requests_per_ip_max, len(open_now)
        # Each held one is closed by the timeout, with a 408 since nothing was answered.
        deadline = started + TIMEOUT_S + 10
        answers: list[bytes] = []
        for sock in open_now:
            while (answer := _closed_by_server(sock)) is None:
                assert time.monotonic() < deadline, "a slow request outlived its timeout"
                await asyncio.sleep(0.05)
            answers.append(answer)
        assert answers and all(a.startswith(b"HTTP/1.1 408 ") for a in answers)
        after = [await asyncio.to_thread(_readyz_s, server) for _ in range(10)]
    finally:
        for sock in held:
            sock.close()
    print(
        f"\nslowloris: {ATTACK_CONNECTIONS} half-sent heads from one address, ulimit -n "
        f"{FILES_MAX}: {len(held)} connected, {len(open_now)} held, "
        f"{len(answers)} closed with 408 after {TIMEOUT_S} s; /readyz median "
        f"{statistics.median(before) * 1e3:.1f} ms before, "
        f"{statistics.median(during) * 1e3:.1f} ms during (max {max(during) * 1e3:.1f}), "
        f"{statistics.median(after) * 1e3:.1f} ms after"
    )
