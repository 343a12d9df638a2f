"""Abuse limits (issue item 9).

Gift rate and daily spending are enforced inside send_gift.lua (in cluster mode, the debit
leg), so they hold across every process; those two tests run on both stores (``backend``).
Connection limits are counted per process, by design (``docs/reliability.md`` says why);
the last test pins that down.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.domain.accounts import Role
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import (
    CREATOR,
    STREAM,
    Peer,
    open_stream,
)
from tests.support.backends import Backend
from tests.support.ledgers import gifts_in, quiet, reconciled
from tests.support.servers import ServerProcess, http_json, token

RATE_PER_S, BURST = 5, 10


async def _burst(peers: list[Peer], prefix: str, each: int, gift: str = "rose") -> list[str]:
    """Send ``each`` gifts on every peer at once; wait for every answer."""
    ids = [[f"{prefix}-{n}-{i}" for i in range(each)] for n in range(len(peers))]
    await asyncio.gather(
        *(peer.send_gift(i, gift) for peer, mine in zip(peers, ids, strict=True) for i in mine)
    )
    for peer, mine in zip(peers, ids, strict=True):
        await peer.wait_replies(mine)
    return [i for mine in ids for i in mine]


async def _open_on(backend: Backend) -> None:
    await backend.open_stream(STREAM, CREATOR)
    await backend.fund("alice", 1_000)


async def test_gift_rate_limit_holds_across_two_processes(backend: Backend, spawn: Spawn) -> None:
    """On both stores (``backend``): on a cluster the bucket is in the sender's slot,
    checked by the debit leg."""
    await _open_on(backend)
    limits = {"GIFTWIRE_GIFTS_PER_S_MAX": str(RATE_PER_S), "GIFTWIRE_GIFT_BURST_MAX": str(BURST)}
    env = {**backend.server_env, **limits}
    a, b = spawn(backend.server_url, **env), spawn(backend.server_url, **env)
    peers = [await Peer.open(server, token("alice")) for server in (a, b)]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ids = await _burst(peers, "rate", 20)
        elapsed_s = loop.time() - started
        replies = [reply for peer in peers for reply in peer.answers(ids)]
        accepted = [r for r in replies if r["type"] == "gift_ack"]
        refused = [r for r in replies if r["type"] == "error"]
        # One bucket in Redis for the user, whichever process the gift came through. Two
        # buckets (one per process) would have let through 2 * BURST at once.
        assert BURST <= len(accepted) <= BURST + RATE_PER_S * elapsed_s + 1
        assert len(accepted) < 2 * BURST
        assert {r["code"] for r in refused} == {"rate_limited"}
        assert all(r["detail"]["retry_after_ms"] > 0 for r in refused)
    finally:
        for peer in peers:
            await peer.close()
    assert (await backend.ledger.balance("alice")).coins == 1_000 - len(accepted)
    await _books_hold(backend, len(accepted))


async def _books_hold(backend: Backend, gifts: int) -> None:
    await quiet(backend.ledger)
    assert gifts_in(await reconciled(backend.ledger)) == gifts


async def test_daily_spending_limit_holds_across_two_processes(
    backend: Backend, spawn: Spawn
) -> None:
    await _open_on(backend)
    env = {**backend.server_env, "GIFTWIRE_DAILY_SPEND_COINS_MAX": "50"}
    a, b = spawn(backend.server_url, **env), spawn(backend.server_url, **env)
    peers = [await Peer.open(server, token("alice")) for server in (a, b)]
    try:
        ids = await _burst(peers, "spend", 40)
        replies = [reply for peer in peers for reply in peer.answers(ids)]
        assert sum(r["type"] == "gift_ack" for r in replies) == 50
        assert {r["code"] for r in replies if r["type"] == "error"} == {"spending_limit"}
    finally:
        for peer in peers:
            await peer.close()
    assert (await backend.ledger.balance("alice")).coins == 950
    await _books_hold(backend, 50)


async def _open(server: ServerProcess, user: str, local_ip: str = "127.0.0.1") -> Peer | int:
    """A connected Peer, or the HTTP status of the refusal."""
    try:
        ws = await connect(
            server.ws_url(STREAM),
            subprotocols=[f"bearer.{token(user)}"],  # type: ignore[list-item]
            open_timeout=10,
            local_addr=(local_ip, 0),
        )
    except InvalidStatus as refused:
        body = orjson.loads(refused.response.body)
        assert body["error"]["code"] == "too_many_connections"
        return refused.response.status_code
    peer = Peer(ws, "json")
    await ws.recv()  # the welcome
    return peer


async def test_connection_limits_per_user_and_per_address_are_per_process(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger)
    limits = {"GIFTWIRE_CONNECTIONS_PER_USER_MAX": "3", "GIFTWIRE_CONNECTIONS_PER_IP_MAX": "5"}
    a, b = spawn(redis_server.url, **limits), spawn(redis_server.url, **limits)
    opened: list[Peer] = []

    async def must_open(server: ServerProcess, user: str, ip: str = "127.0.0.1") -> Peer:
        peer = await _open(server, user, ip)
        assert isinstance(peer, Peer), f"{user} from {ip} refused with {peer}"
        opened.append(peer)
        return peer

    try:
        first = [await must_open(a, "alice") for _ in range(3)]
        assert await _open(a, "alice") == 429  # per user
        await first[0].ws.close()
        await asyncio.sleep(0.2)
        await must_open(a, "alice")  # a closed connection frees its slot
        await must_open(a, "bob")
        await must_open(a, "carol")
        assert await _open(a, "dave") == 429  # per address: 5 from 127.0.0.1
        await must_open(a, "dave", "127.0.0.2")  # another address has its own count
        # Counted per process: the other process has its own (see docs/reliability.md).
        for _ in range(3):
            await must_open(b, "alice")
        assert await _open(b, "alice") == 429
    finally:
        for peer in opened:
            with contextlib.suppress(Exception):
                await peer.ws.close()


async def test_a_message_flood_is_refused_then_closed_with_4029(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 100))
    server = spawn(redis_server.url, GIFTWIRE_MESSAGES_PER_S_MAX="5")
    codes: list[str] = []
    async with connect(
        server.ws_url(STREAM),
        subprotocols=[f"bearer.{token('alice')}"],  # type: ignore[list-item]
    ) as ws:
        with contextlib.suppress(ConnectionClosed):
            for i in range(500):
                await ws.send(
                    orjson.dumps({"type": "send_gift", "id": f"f{i}", "gift": "rose"}).decode()
                )
            async for raw in ws:
                message = orjson.loads(raw)
                if message["type"] == "error":
                    codes.append(message["code"])
        assert ws.close_code == 4029
    assert "rate_limited" in codes and set(codes) <= {"rate_limited"}
    # The few that got through were applied; the flood moved nothing more.
    spent = 100 - (await ledger.balance("alice")).coins
    assert 0 < spent <= 10 + 5 * 2


@pytest.mark.parametrize("count", [9_999, 10_000])
async def test_a_combo_burst_is_bounded_by_the_largest_count(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn, count: int
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 20_000))
    server = spawn(redis_server.url)
    alice = await Peer.open(server, token("alice"))
    try:
        await alice.send_gift("combo", "rose", count)
        await alice.wait_replies(["combo"])
    finally:
        await alice.close()
    expected = 20_000 - count if count <= 9_999 else 20_000
    assert (await ledger.balance("alice")).coins == expected


async def test_stream_ids_are_bounded_per_creator_and_reopened_by_their_owner(
    redis_server: RedisProcess, spawn: Spawn
) -> None:
    """Issue #11 item 13: one creator made 5,000 streams in 3.5 s, and a squatter who
    claimed ``bob`` kept it from its owner for good."""
    server = spawn(redis_server.url, GIFTWIRE_STREAMS_PER_CREATOR_MAX="3")
    squatter, bob = token("squatter", Role.CREATOR), token("bob", Role.CREATOR)
    url = f"{server.http}/api/streams"
    started = [http_json("POST", url, {"title": "x"}, bearer=squatter) for _ in range(3)]
    assert [status for status, _ in started] == [201, 201, 201]
    status, body = http_json("POST", url, {"stream_id": "bob"}, bearer=squatter)
    assert (status, body["error"]["code"]) == (409, "stream_limit")
    assert body["error"]["detail"] == {"streams_max": 3}
    # bob claims his own id; ended, it stays his, and he opens it again.
    assert http_json("POST", url, {"stream_id": "bob"}, bearer=bob)[0] == 201
    assert http_json("POST", f"{url}/bob/end", bearer=bob)[0] == 200
    status, body = http_json("POST", url, {"stream_id": "bob"}, bearer=squatter)
    assert (status, body["error"]["code"]) == (409, "stream_exists")
    status, body = http_json("POST", url, {"stream_id": "bob", "title": "again"}, bearer=bob)
    assert (status, body["state"]) == (201, "live")
    status, body = http_json("GET", f"{url}/bob")
    assert (status, body["state"], body["title"], body["creator_id"]) == (
        200,
        "live",
        "again",
        "bob",
    )
