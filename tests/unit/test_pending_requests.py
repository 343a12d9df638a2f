"""Incomplete requests are bounded and timed out (``server/web/pending.py``, slowloris).

The registry on its own, then uvicorn's h11 protocol as giftwire configures it, in process
over socketpairs (``tests/support/uvicorn_pair.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.web import pending
from server.web.pending import PendingLimits, PendingRequests, accept_backlog
from server.web.uvicorn_ws import WebSocketOptions
from tests.support.uvicorn_pair import Server, wait_for


class Closer:
    def __init__(self) -> None:
        self.closed: list[str] = []

    def __call__(self, name: str) -> Any:
        return lambda: self.closed.append(name)


async def test_an_address_at_its_bound_is_refused_and_others_are_not() -> None:
    pending = PendingRequests(PendingLimits(total_max=100, per_address_max=2, timeout_s=60))
    close = Closer()
    assert pending.admit("a1", "10.0.0.1", close("a1"))
    assert pending.admit("a2", "10.0.0.1", close("a2"))
    assert not pending.admit("a3", "10.0.0.1", close("a3"))
    assert pending.admit("b1", "10.0.0.2", close("b1"))
    assert (pending.count("10.0.0.1"), pending.count("10.0.0.2"), len(pending)) == (2, 1, 3)
    pending.release("a1")
    assert pending.admit("a3", "10.0.0.1", close("a3"))  # a finished request frees its slot
    assert close.closed == []


async def test_at_the_total_bound_the_oldest_is_closed_to_make_room() -> None:
    pending = PendingRequests(PendingLimits(total_max=3, per_address_max=10, timeout_s=60))
    close = Closer()
    for name in ("old", "mid", "new"):
        assert pending.admit(name, name, close(name))
    assert pending.admit("fresh", "fresh", close("fresh"))
    assert close.closed == ["old"]
    assert "old" not in pending and len(pending) == 3
    assert pending.count("old") == 0


async def test_a_period_that_outlasts_the_timeout_closes_once_and_released_ones_never() -> None:
    pending = PendingRequests(PendingLimits(total_max=10, per_address_max=10, timeout_s=0.05))
    close = Closer()
    pending.admit("slow", "x", close("slow"))
    pending.admit("done", "x", close("done"))
    pending.release("done")
    pending.admit("again", "x", close("again"))
    pending.admit("again", "x", close("again-2"))  # a new period replaces the old one
    await wait_for(lambda: len(pending) == 0)
    await asyncio.sleep(0.1)
    assert sorted(close.closed) == ["again-2", "slow"]
    assert pending.count("x") == 0


async def test_the_total_bound_never_exceeds_half_the_descriptors() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    pending = PendingRequests(PendingLimits(total_max=10**9))
    assert pending.total_max == soft // 2


class HttpApp:
    """Answers ``ok``, after reading the whole body; holds answers while ``hold`` is clear."""

    def __init__(self) -> None:
        self.hold = asyncio.Event()
        self.hold.set()
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if not message.get("more_body"):
                break
        self.requests += 1
        await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def http_server(app: HttpApp, **limits: Any) -> Server:
    return Server(app, options=WebSocketOptions(pending=PendingLimits(**limits)))  # type: ignore[arg-type]


async def test_a_request_head_sent_too_slowly_gets_408_and_is_closed() -> None:
    server = http_server(HttpApp(), timeout_s=0.2)
    async with server.connect() as peer:
        peer.write(b"GET /readyz HTTP/1.1\r\nHost: test\r\n")  # and never the blank line
        answer = await peer.read_to_eof()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


async def test_a_body_sent_too_slowly_is_closed() -> None:
    app = HttpApp()
    server = http_server(app, timeout_s=0.2)
    async with server.connect() as peer:
        peer.write(b"POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nabc")
        answer = await peer.read_to_eof()
    assert b"200" not in answer and app.requests == 0


async def test_keep_alive_restarts_the_clock_for_the_next_request() -> None:
    app = HttpApp()
    server = http_server(app, timeout_s=0.3)
    async with server.connect() as peer:
        peer.write(b"GET /a HTTP/1.1\r\nHost: test\r\n\r\n")
        response = await peer.reader.readuntil(b"0\r\n\r\n")  # chunked: ends with 0
        assert response.startswith(b"HTTP/1.1 200 ")
        peer.write(b"GET /b HTTP/1.1\r\n")  # uvicorn's keep-alive timer stops here
        answer = await peer.read_to_eof()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert app.requests == 1


async def test_a_complete_request_is_no_longer_pending_while_it_is_answered() -> None:
    app = HttpApp()
    app.hold.clear()
    server = http_server(app, timeout_s=0.2)
    async with server.connect() as peer:
        peer.write(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        await wait_for(lambda: app.requests == 1)
        (protocol,) = server.http()
        assert protocol not in protocol.pending
        await asyncio.sleep(0.4)  # past the timeout: a slow answer is not the client's fault
        app.hold.set()
        head = await peer.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")


async def test_connections_past_the_address_bound_are_closed_unread() -> None:
    app = HttpApp()
    server = http_server(app, per_address_max=2, timeout_s=5)
    async with server.connect() as a, server.connect() as b, server.connect() as c:
        for peer in (a, b):
            peer.write(b"GET / HTTP/1.1\r\n")  # two slowloris connections
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            c.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            await c.reader.readexactly(1)
        assert app.requests == 0
        assert len(server.http()[0].pending) == 2


@pytest.mark.parametrize(
    ("files_max", "backlog"), [(1024, 128), (20_000, 2048), (256, 64), (1 << 20, 2048)]
)
def test_the_accept_burst_fits_beside_the_pending_half_of_the_descriptors(
    monkeypatch: pytest.MonkeyPatch, files_max: int, backlog: int
) -> None:
    monkeypatch.setattr(pending, "_descriptors_soft_limit", lambda: files_max)
    assert accept_backlog() == backlog
    if files_max >= 1024:
        # Two loop turns of accepts beside a full pending table stay under the limit.
        total_max = PendingRequests(PendingLimits(total_max=1 << 20)).total_max
        assert 2 * accept_backlog() + total_max < files_max
