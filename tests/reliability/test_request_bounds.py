"""Request bodies are bounded at the edge, before they are held (issue #11 item 2).

A 300 MiB POST, declared by ``Content-Length`` or chunked, goes over a raw socket at the
unauthenticated webhook and at the authenticated endpoints. The server must answer 413
``message_too_large`` without reading it through, and its RSS (``/proc``) must stay flat
(before the fix it grew by the body's size). The margin is generous: the bound is about
what is held, not how fast it is refused.
"""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass

import orjson
import pytest

from server.domain.accounts import Role
from server.ledger.embedded import RedisProcess
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import open_stream, readyz_status, rss_kib
from tests.support.servers import ServerProcess, signed_webhook, token

HUGE_BYTES = 300 * 1024 * 1024
PIECE_BYTES = 1024 * 1024
RSS_GROWTH_KIB_MAX = 64 * 1024
"""Bounded growth: far below the 300 MiB the server held before the fix."""


@dataclass
class Outcome:
    status: int | None
    """The HTTP status read back, or None when the connection was reset before it came."""
    body: dict[str, object]
    sent_bytes: int


def _read_response(sock: socket.socket) -> tuple[int | None, dict[str, object]]:
    data = b""
    try:
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return None, {}
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    return int(head.split()[1]), orjson.loads(body) if body else {}


def _post_huge(server: ServerProcess, path: str, *, chunked: bool, bearer: str = "") -> Outcome:
    """POST ``HUGE_BYTES`` of body, stopping as soon as the server answers or hangs up."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {HUGE_BYTES}"
    auth = f"authorization: Bearer {bearer}\r\n" if bearer else ""
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{auth}"
    sock.sendall(f"{head}{framing}\r\n\r\n".encode())
    piece = b"x" * PIECE_BYTES
    if chunked:
        piece = f"{PIECE_BYTES:x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with sock:
        try:
            while sent < HUGE_BYTES:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break  # the answer (or the hang-up) came: stop sending
                sock.sendall(piece)
                sent += PIECE_BYTES
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, body = _read_response(sock)
    return Outcome(status, body, sent)


def _assert_refused(outcome: Outcome) -> None:
    # The server stopped reading near the bound: the client could not push the whole body
    # (the kernel's socket buffers take a few MiB at most).
    assert outcome.sent_bytes < HUGE_BYTES // 4, outcome.sent_bytes
    if outcome.status is not None:
        assert outcome.status == 413
        error = outcome.body["error"]
        assert isinstance(error, dict) and error["code"] == "message_too_large"


def test_a_declared_huge_body_is_refused_before_it_is_read(
    spawn: Spawn, redis_server: RedisProcess
) -> None:
    server = spawn(redis_server.url)
    assert server.process is not None
    rss_before = rss_kib(server.process.pid)
    outcome = _post_huge(server, "/api/webhooks/payments", chunked=False)
    # Content-Length is read before the body: the answer is always there to read.
    assert outcome.status == 413, outcome
    _assert_refused(outcome)
    rss_after = rss_kib(server.process.pid)
    print(f"declared 300 MiB: RSS {rss_before} -> {rss_after} KiB, {outcome.sent_bytes} sent")
    assert rss_after - rss_before < RSS_GROWTH_KIB_MAX, (rss_before, rss_after)


async def test_chunked_huge_bodies_stop_at_the_bound_on_every_endpoint(
    spawn: Spawn, redis_server: RedisProcess, books: Books
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 100))
    server = spawn(redis_server.url)
    assert server.process is not None
    creator = token("rel_creator", Role.CREATOR)
    rss_before = rss_kib(server.process.pid)
    targets = [
        ("/api/webhooks/payments", ""),
        ("/api/streams", creator),
        ("/api/cashouts", creator),
    ]
    for path, bearer in targets:
        outcome = _post_huge(server, path, chunked=True, bearer=bearer)
        _assert_refused(outcome)
        print(f"chunked 300 MiB to {path}: status {outcome.status}, {outcome.sent_bytes} sent")
    rss_after = rss_kib(server.process.pid)
    print(f"chunked 3 x 300 MiB: RSS {rss_before} -> {rss_after} KiB")
    assert rss_after - rss_before < RSS_GROWTH_KIB_MAX, (rss_before, rss_after)
    # The server still serves, and a body within the bound still works.
    assert readyz_status(server) == 200
    status, body = signed_webhook(
        server,
        {"type": "payment.succeeded", "payment_id": "p-small", "user_id": "bob", "coins": 5},
    )
    assert status == 200 and body["credited"] == 5


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_body_one_byte_over_the_bound_is_refused_and_one_at_it_is_read(
    spawn: Spawn, redis_server: RedisProcess, chunked: bool
) -> None:
    server = spawn(redis_server.url, GIFTWIRE_BODY_BYTES_MAX="1024")
    creator = token("rel_creator", Role.CREATOR)
    title = "t" * 200
    doc = orjson.dumps({"stream_id": "bound1", "title": title})
    at_bound = doc + b" " * (1024 - len(doc))
    for body, expected in ((at_bound + b" ", 413), (at_bound, 201)):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        head = (
            "POST /api/streams HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {creator}\r\n"
        )
        if chunked:
            half = len(body) // 2
            payload = b"".join(
                f"{len(part):x}\r\n".encode() + part + b"\r\n"
                for part in (body[:half], body[half:])
            )
            request = f"{head}transfer-encoding: chunked\r\n\r\n".encode() + payload + b"0\r\n\r\n"
        else:
            request = f"{head}content-length: {len(body)}\r\n\r\n".encode() + body
        with sock:
            sock.sendall(request)
            data = b""
            while not data.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert data.split()[1] == str(expected).encode(), data
