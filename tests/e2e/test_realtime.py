"""Two real server processes on one Redis, real WebSocket clients: the realtime edge."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from client_demo.wire import subprotocols
from server.domain.accounts import Role
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.e2e.conftest import FAST
from tests.support.servers import (
    Client,
    ServerProcess,
    client,
    http_json,
    signed_webhook,
    token,
)

STREAM = "show1"
CREATOR = "star"


async def _live(ledger: Ledger, *viewers: tuple[str, int]) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Live!")
    for user, coins in viewers:
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=coins)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_gift_reaches_viewers_on_both_processes_once_in_order(
    two_servers: tuple[ServerProcess, ServerProcess], ledger: Ledger, fmt: str
) -> None:
    a, b = two_servers
    await _live(ledger, ("alice", 1000))
    async with (
        client(a, STREAM, token("alice"), fmt=fmt) as sender,
        client(a, STREAM, token("v1"), fmt=fmt) as viewer_a,
        client(b, STREAM, token("v2"), fmt="msgpack" if fmt == "json" else "json") as viewer_b,
    ):
        assert sender.welcome["balance"]["coins"] == 1000
        assert sender.welcome["last_seq"] == 0
        for i in range(5):
            await sender.send({"type": "send_gift", "id": f"g{i}", "gift": "rose", "count": i + 1})
        acks = [await sender.recv_type("gift_ack") for _ in range(5)]
        # One connection's gifts are applied in the order sent.
        assert [ack["balance"] for ack in acks] == [999, 997, 994, 990, 985]
        for viewer in (viewer_a, viewer_b, sender):
            events = await viewer.gifts(5)
            assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
            assert {e["sender_name"] for e in events} == {"Alice"}
            assert events[0]["animation"] == "rose" and events[0]["gift_name"] == "Rose"
            with pytest.raises(TimeoutError):
                await viewer.gifts(1, timeout_s=0.5)  # exactly once: nothing more comes
    assert (await ledger.balance("alice")).coins == 985
    # The creator's half of 15 coins, the remainder carried from gift to gift: 0+1+2+2+2.
    assert (await ledger.balance(CREATOR)).diamonds == 7


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"type": "send_gift", "id": "x1", "gift": "universe"}, "insufficient_funds"),
        ({"type": "send_gift", "id": "x2", "gift": "no_such"}, "unknown_gift"),
        ({"type": "send_gift", "id": "x3", "gift": "rose", "sender": "bob"}, "invalid_request"),
        ({"type": "send_gift", "id": "x4", "gift": "rose", "price": 0}, "invalid_request"),
        ({"type": "send_gift", "id": "x5", "gift": "rose", "count": True}, "invalid_request"),
        (
            '{"type": "send_gift", "id": "x6", "gift": "rose", "count": 1000000000000000000000000}',
            "invalid_request",
        ),
        ({"type": "send_gift", "id": "bad id!", "gift": "rose"}, "invalid_request"),
        ({"type": "transfer_all"}, "invalid_request"),
    ],
)
async def test_refused_messages_get_their_code_and_move_nothing(
    server: ServerProcess, ledger: Ledger, message: dict[str, object] | str, code: str
) -> None:
    await _live(ledger, ("alice", 100), ("bob", 100))
    async with client(server, STREAM, token("alice")) as alice:
        if isinstance(message, str):
            await alice.ws.send(message)  # raw text: no client library would encode it
        else:
            await alice.send(message)
        error = await alice.recv_type("error")
        assert error["code"] == code
        if isinstance(message, dict) and message.get("id") in {"x1", "x2", "x3", "x4", "x5"}:
            assert error["id"] == message["id"]
    assert (await ledger.balance("alice")).coins == 100
    assert (await ledger.balance("bob")).coins == 100
    assert (await ledger.stream(STREAM)).last_sequence == 0  # type: ignore[union-attr]


async def test_malformed_frames_are_refused_and_connection_survives(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live(ledger, ("alice", 100))
    async with client(server, STREAM, token("alice")) as alice:
        for raw in [
            "{not json",
            "[1,2]",
            '{"type": "send_gift", "id": NaN}',
            '"just a string"',
            '{"a":{"b":{"c":{"d":{"e":1}}}}}',
        ]:
            await alice.ws.send(raw)
            assert (await alice.recv_type("error"))["code"] == "invalid_request"
        await alice.ws.send(b"\x81\x82binary on a json connection")
        assert (await alice.recv_type("error"))["code"] == "invalid_request"
        await alice.send({"type": "ping", "id": "p1"})
        assert (await alice.recv_type("pong"))["id"] == "p1"


async def test_oversized_frame_closes_with_1009(server: ServerProcess, ledger: Ledger) -> None:
    await _live(ledger, ("alice", 100))
    async with client(server, STREAM, token("alice")) as alice:
        await alice.ws.send("x" * 100_000)
        await alice.ws.wait_closed()
        assert alice.ws.close_code == 1009
    assert (await ledger.balance("alice")).coins == 100


async def test_ended_stream_refuses_gifts_and_tells_viewers(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live(ledger, ("alice", 100))
    async with client(server, STREAM, token("alice")) as alice:
        status, body = http_json(
            "POST", f"{server.http}/api/streams/{STREAM}/end", bearer=token(CREATOR, Role.CREATOR)
        )
        assert status == 200 and body["state"] == "ended"
        assert (await alice.recv_type("stream"))["state"] == "ended"
        await alice.send({"type": "send_gift", "id": "late", "gift": "rose"})
        assert (await alice.recv_type("error"))["code"] == "stream_not_live"
    assert (await ledger.balance("alice")).coins == 100


@pytest.mark.parametrize(
    ("bearer", "status", "code"),
    [
        (token("alice", ttl_s=-10), 401, "token_expired"),
        ("not-a-jwt", 401, "unauthorized"),
        (token("alice")[:-4] + "AAAA", 401, "unauthorized"),
    ],
)
async def test_bad_tokens_are_refused_at_the_handshake(
    server: ServerProcess, ledger: Ledger, bearer: str, status: int, code: str
) -> None:
    await _live(ledger)
    with pytest.raises(InvalidStatus) as refused:
        async with client(server, STREAM, bearer):
            pass
    assert refused.value.response.status_code == status
    assert code.encode() in refused.value.response.body


async def test_unknown_stream_and_foreign_origin_are_refused(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live(ledger)
    with pytest.raises(InvalidStatus) as refused:
        async with client(server, "nope", token("alice")):
            pass
    assert refused.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as foreign:
        async with connect(
            server.ws_url(STREAM),
            subprotocols=[f"bearer.{token('alice')}"],  # type: ignore[list-item]
            origin="https://evil.example",  # type: ignore[arg-type]
        ):
            pass
    assert foreign.value.response.status_code == 403


async def test_webhook_tops_up_once_and_refuses_bad_signatures(
    server: ServerProcess, ledger: Ledger
) -> None:
    event = {"type": "payment.succeeded", "payment_id": "p-1", "user_id": "dave", "coins": 700}
    status, body = signed_webhook(server, event)
    assert status == 200 and body["balance"] == 700 and not body["replayed"]
    status, body = signed_webhook(server, event)
    assert status == 200 and body["replayed"]
    status, body = signed_webhook(server, {**event, "payment_id": "p-2"}, secret="wrong")
    assert status == 401 and body["error"]["code"] == "bad_signature"
    assert (await ledger.balance("dave")).coins == 700
    status, body = http_json("GET", server.http + "/api/me/wallet", bearer=token("dave"))
    assert status == 200 and body["coins"] == 700


async def test_creator_resumes_from_sequence_without_gap_or_duplicate(
    two_servers: tuple[ServerProcess, ServerProcess], ledger: Ledger
) -> None:
    a, b = two_servers
    await _live(ledger, ("alice", 1000))
    creator = token(CREATOR, Role.CREATOR)
    async with client(a, STREAM, token("alice")) as alice:
        async with client(b, STREAM, creator) as feed:
            for i in range(3):
                await alice.send({"type": "send_gift", "id": f"a{i}", "gift": "rose"})
            seen = await feed.gifts(3)
            last = seen[-1]["seq"]
        # The creator is away while more gifts arrive.
        for i in range(3, 10):
            await alice.send({"type": "send_gift", "id": f"a{i}", "gift": "heart"})
        for _ in range(7):
            await alice.recv_type("gift_ack")
        async with client(b, STREAM, creator) as feed:
            await feed.send({"type": "resume", "since": last})
            # More gifts arrive while resuming: they must come after, once.
            for i in range(10, 13):
                await alice.send({"type": "send_gift", "id": f"a{i}", "gift": "rose"})
            events = await feed.gifts(10)
            assert [e["seq"] for e in events] == list(range(4, 14))
            with pytest.raises(TimeoutError):
                await feed.gifts(1, timeout_s=0.5)


async def test_history_and_leaderboard_over_http(server: ServerProcess, ledger: Ledger) -> None:
    await _live(ledger, ("alice", 1000), ("bob", 1000))
    async with (
        client(server, STREAM, token("alice")) as alice,
        client(server, STREAM, token("bob")) as bob,
    ):
        await alice.send({"type": "send_gift", "id": "a", "gift": "cap"})
        await bob.send({"type": "send_gift", "id": "b", "gift": "perfume"})
        await alice.recv_type("gift_ack")
        await bob.recv_type("gift_ack")
    status, body = http_json("GET", f"{server.http}/api/streams/{STREAM}/gifts?after=0&limit=1")
    assert status == 200 and len(body["events"]) == 1 and body["next_after"] == 1
    status, body = http_json("GET", f"{server.http}/api/streams/{STREAM}/gifts?after=1")
    assert [e["seq"] for e in body["events"]] == [2]
    status, body = http_json("GET", f"{server.http}/api/streams/{STREAM}/leaderboard")
    # Display names (from the gifts) and gifter levels, not bare user ids.
    assert body["top"] == [
        {"user_id": "alice", "name": "Alice", "coins": 99, "level": 2},
        {"user_id": "bob", "name": "Bob", "coins": 20, "level": 1},
    ]


async def test_slow_viewer_is_dropped_without_delaying_others(
    redis_server: RedisProcess, keys: Keys, tmp_path: Path, ledger: Ledger
) -> None:
    server = ServerProcess(
        redis_server.url,
        keys.prefix,
        tmp_path,
        **FAST,
        GIFTWIRE_SEND_QUEUE_FRAMES_MAX="32",
        GIFTWIRE_LAGGING_S_MAX="0.5",
        GIFTWIRE_HOT_ROOM_EVENTS_PER_S="1000000",  # one frame per gift: fill queues fast
        GIFTWIRE_BATCH_EVENTS_MAX="1",  # (not even gifts of one loop turn share a frame)
        GIFTWIRE_SOCKET_SEND_BUFFER_BYTES="8192",
    )
    server.start()
    total = 2000
    try:
        await _live(ledger, ("alice", 100_000))
        # A tiny receive buffer, and a client that never reads: the server must give up on it.
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow = await connect(
            server.ws_url(STREAM),
            sock=sock,
            subprotocols=[f"bearer.{token('slow')}"],  # type: ignore[list-item]
            max_queue=1,
            compression=None,
        )
        slow.transport.pause_reading()
        async with (
            client(server, STREAM, token("alice")) as alice,
            client(server, STREAM, token("fast")) as fast,
        ):

            async def send_all() -> None:
                for i in range(total):
                    await alice.send({"type": "send_gift", "id": f"s{i}", "gift": "rose"})

            async def drain_acks() -> int:
                acks = 0
                while acks < total:
                    message = await alice.recv(timeout_s=30)
                    acks += message["type"] == "gift_ack"
                return acks

            _, acks, events = await asyncio.gather(send_all(), drain_acks(), fast.gifts(total, 60))
            assert acks == total
            assert [e["seq"] for e in events] == list(range(1, total + 1))
        slow.transport.resume_reading()
        async with asyncio.timeout(30):
            with contextlib.suppress(ConnectionClosed):
                async for _ in slow:  # read what was queued before the server gave up
                    pass
        # The server stopped writing to it: the close frame itself may not fit (1006).
        assert slow.close_code in (4008, 1006), slow.close_code
    finally:
        server.stop()


async def test_lagging_viewer_gets_every_gift_late_in_order_not_a_hole(
    redis_server: RedisProcess, keys: Keys, tmp_path: Path, ledger: Ledger
) -> None:
    server = ServerProcess(
        redis_server.url, keys.prefix, tmp_path, **FAST,
        GIFTWIRE_SEND_QUEUE_FRAMES_MAX="8", GIFTWIRE_LAGGING_S_MAX="60",
        GIFTWIRE_HOT_ROOM_EVENTS_PER_S="1000000", GIFTWIRE_SOCKET_SEND_BUFFER_BYTES="4096",
        GIFTWIRE_RESUME_EVENTS_MAX="10000", GIFTWIRE_BATCH_EVENTS_MAX="1",
    )  # fmt: skip
    server.start()
    total = 1500
    try:
        await _live(ledger, ("alice", 100_000))
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ws = await connect(
            server.ws_url(STREAM), sock=sock, compression=None, max_queue=4,
            subprotocols=[Subprotocol(p) for p in subprotocols(token("lagger"))],
        )  # fmt: skip
        lagger = Client(ws, "json")
        lagger.welcome = await lagger.recv_type("welcome")
        ws.transport.pause_reading()  # fall behind: the server must drop frames for us
        async with client(server, STREAM, token("alice")) as alice:
            for i in range(total):
                await alice.send({"type": "send_gift", "id": f"l{i}", "gift": "rose"})
            acks = 0
            while acks < total:
                acks += (await alice.recv(timeout_s=30))["type"] == "gift_ack"
        ws.transport.resume_reading()
        events = await lagger.gifts(total, timeout_s=60)
        assert [e["seq"] for e in events] == list(range(1, total + 1))
        assert any(m["type"] == "lag" for m in lagger.backlog), "frames were never dropped"
        await ws.close()
    finally:
        server.stop()
