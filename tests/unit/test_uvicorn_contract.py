"""Contract tests of the uvicorn internals giftwire relies on (``server/web/uvicorn_ws.py``).

Each test states one assumption the subclass and its frame sink make about uvicorn's
``WebSocketsSansIOProtocol`` and websockets' ``ServerProtocol``, and drives the real
protocols in process over a socketpair (``tests/support/uvicorn_pair.py``). An upgrade of
uvicorn or websockets that breaks an assumption fails here, before it fails in production.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.frames import Opcode

from server.domain.limits import Limits
from server.protocol.codec import OPCODE_BINARY, OPCODE_TEXT, wire_frame
from server.settings import Settings
from server.web.pending import PendingLimits
from server.web.uvicorn_setup import uvicorn_options
from server.web.uvicorn_ws import (
    FRAME_SINK_EXTENSION,
    INCOMING_MESSAGES_QUEUED_MAX,
    BoundedWebSocketProtocol,
    WebSocketOptions,
)
from tests.support.uvicorn_pair import Server, wait_for

INVALID_UTF8 = b"\xff\xfe not utf-8"


class App:
    """Accepts, then reads (once ``reading`` is set) and records every message."""

    def __init__(self, *, close_with: int | None = None) -> None:
        self.close_with = close_with
        self.received: list[dict[str, Any]] = []
        self.sink: Any = None
        self.sink_before_accept: bool | None = None
        self.send: Any = None
        self.accepted = asyncio.Event()
        self.reading = asyncio.Event()
        self.reading.set()
        self.done = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        self.send = send
        self.sink = scope["extensions"][FRAME_SINK_EXTENSION]["sink"]
        self.sink_before_accept = self.sink.writable()
        await send({"type": "websocket.accept"})
        self.accepted.set()
        if self.close_with is not None:
            await send({"type": "websocket.close", "code": self.close_with})
        while True:
            await self.reading.wait()
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                break
        self.done.set()

    def texts(self) -> list[str]:
        return [m["text"] for m in self.received if m["type"] == "websocket.receive"]


Problems = Callable[[], list[str]]


@pytest.fixture
async def problems(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Problems]:
    """Every error the loop or a logger reported so far (uvicorn's tracebacks land here)."""
    found: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: found.append(str(context.get("message"))))

    def so_far() -> list[str]:
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        return found + logged

    with caplog.at_level(logging.WARNING):
        yield so_far
    loop.set_exception_handler(None)


def only_protocol(server: Server) -> BoundedWebSocketProtocol:
    (protocol,) = server.websockets()
    return protocol


async def test_frames_after_the_app_closed_are_discarded_without_a_traceback(
    problems: Problems,
) -> None:
    """Late frames after a 4008 close, valid or not UTF-8, change nothing and log nothing
    (uvicorn 0.54 unpatched: ``Fatal error: protocol.data_received() call failed``)."""
    app = App(close_with=4008)
    server = Server(app)
    async with server.connect() as peer:
        await peer.handshake()
        assert await peer.close_code() == 4008
        peer.frame(Opcode.TEXT, b'{"type":"ping","id":"late"}')
        peer.frame(Opcode.TEXT, INVALID_UTF8)
        peer.frame(Opcode.TEXT, b"\xe2\x82", fin=False)  # a split character, then garbage
        peer.frame(Opcode.CONT, b"\xff")
        peer.frame(Opcode.BINARY, b"\x00\x01")
        await peer.barrier()  # pings are still answered while closing
        protocol = only_protocol(server)
        assert not protocol.disconnected  # still waiting for the client's close frame
        peer.frame(Opcode.CLOSE, (4008).to_bytes(2, "big"))
        await peer.read_to_eof()  # the closing handshake completes: the server closes TCP
        await wait_for(app.done.is_set)
    assert app.texts() == []  # the app saw only its own disconnect
    assert [m["type"] for m in app.received] == ["websocket.disconnect"]
    assert problems() == []


async def test_invalid_utf8_while_open_closes_1007_quietly(problems: Problems) -> None:
    app = App()
    server = Server(app)
    async with server.connect() as peer:
        await peer.handshake()
        peer.frame(Opcode.TEXT, b"fine")
        peer.frame(Opcode.TEXT, INVALID_UTF8)
        assert await peer.close_code() == 1007
        await wait_for(app.done.is_set)
    assert app.texts() == ["fine"]
    assert app.received[-1]["type"] == "websocket.disconnect"
    assert app.received[-1]["code"] == 1007
    assert problems() == []  # no traceback per bad frame


async def test_invalid_utf8_split_across_fragments_closes_1007() -> None:
    app = App()
    server = Server(app)
    async with server.connect() as peer:
        await peer.handshake()
        peer.frame(Opcode.TEXT, b"ok \xe2", fin=False)
        peer.frame(Opcode.CONT, b"\x82\xac")  # "€" split in two: valid
        peer.frame(Opcode.TEXT, b"bad \xe2", fin=False)
        peer.frame(Opcode.CONT, b"x")
        assert await peer.close_code() == 1007
        await wait_for(app.done.is_set)
    assert app.texts() == ["ok €"]


async def test_reading_pauses_once_16_messages_wait_for_the_app() -> None:
    app = App()
    app.reading.clear()
    server = Server(app)
    async with server.connect() as peer:
        await peer.handshake()
        await wait_for(app.accepted.is_set)
        protocol = only_protocol(server)
        transport: Any = protocol.transport
        for n in range(1, INCOMING_MESSAGES_QUEUED_MAX + 1):
            assert transport.is_reading(), f"paused before message {n}"
            peer.frame(Opcode.TEXT, str(n).encode())
            await wait_for(lambda n=n: protocol.queue.qsize() == n)  # type: ignore[misc]
        assert not transport.is_reading()  # paused at the bound, not before
        for n in range(INCOMING_MESSAGES_QUEUED_MAX + 1, INCOMING_MESSAGES_QUEUED_MAX + 6):
            peer.frame(Opcode.TEXT, str(n).encode())
        await asyncio.sleep(0.05)
        assert protocol.queue.qsize() == INCOMING_MESSAGES_QUEUED_MAX  # the rest waits
        app.reading.set()  # the app drains the queue: reading resumes
        await wait_for(lambda: len(app.texts()) == INCOMING_MESSAGES_QUEUED_MAX + 5)
        assert transport.is_reading()
    assert app.texts() == [str(n) for n in range(1, INCOMING_MESSAGES_QUEUED_MAX + 6)]


async def test_the_sink_writes_only_between_accept_and_close() -> None:
    app = App()
    server = Server(app)
    async with server.connect() as peer:
        await peer.handshake()
        await wait_for(app.accepted.is_set)
        assert app.sink_before_accept is False  # not before the 101 went out
        sink = app.sink
        assert sink.writable()
        assert sink.try_write(wire_frame(b"sink-1", OPCODE_TEXT))
        await app.send({"type": "websocket.send", "text": "asgi-2"})
        sink.write(wire_frame(b"sink-3", OPCODE_BINARY))
        await app.send({"type": "websocket.close", "code": 4000})
        assert not sink.writable()
        assert not sink.try_write(wire_frame(b"after close", OPCODE_TEXT))
        assert await sink.wait_writable() is False  # it can never be written again
        frames = [await peer.next_frame() for _ in range(4)]
    assert [(f.opcode, f.data, f.fin) for f in frames[:3]] == [
        (Opcode.TEXT, b"sink-1", True),
        (Opcode.TEXT, b"asgi-2", True),
        (Opcode.BINARY, b"sink-3", True),
    ]
    assert frames[3].opcode is Opcode.CLOSE


async def test_the_sink_is_closed_once_the_peer_is_gone() -> None:
    app = App()
    server = Server(app)
    async with server.connect() as peer:
        await peer.handshake()
        await wait_for(app.accepted.is_set)
        protocol = only_protocol(server)
        peer.writer.close()
        await wait_for(lambda: protocol.disconnected)
        assert not app.sink.writable()
        assert not app.sink.try_write(wire_frame(b"gone", OPCODE_TEXT))
        assert await app.sink.wait_writable() is False


async def test_uvicorn_never_fragments_an_outgoing_message() -> None:
    """The frame sink's assumption: each ASGI send is one final frame in one write, so a
    sink write can never fall between two fragments of a message."""
    app = App()
    server = Server(app)
    async with server.connect() as peer:
        await peer.handshake()
        await wait_for(app.accepted.is_set)
        protocol = only_protocol(server)
        writes: list[bytes] = []
        real_write = protocol.transport.write

        def record(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            real_write(data)

        protocol.transport.write = record  # type: ignore[method-assign]
        big = "x" * 300_000

        async def send_three() -> None:  # each waits for the buffer to drain below high water
            await app.send({"type": "websocket.send", "text": big})
            await app.send({"type": "websocket.send", "bytes": big.encode()})
            await app.send({"type": "websocket.send", "text": "small"})

        sending = asyncio.create_task(send_three())
        frames = [await peer.next_frame(timeout_s=10) for _ in range(3)]
        await sending
    assert [(f.opcode, f.fin, len(f.data)) for f in frames] == [
        (Opcode.TEXT, True, 300_000),
        (Opcode.BINARY, True, 300_000),
        (Opcode.TEXT, True, 5),
    ]
    assert len(writes) == 3  # one transport write per message


async def test_the_send_buffer_comes_from_the_factory() -> None:
    server = Server(App(), options=WebSocketOptions(send_buffer_bytes=8192))
    async with server.connect() as peer:
        await peer.handshake()
        protocol = only_protocol(server)
        sock = protocol.transport.get_extra_info("socket")
        # Linux doubles the value for its bookkeeping; autotuning would allow far more.
        assert 8192 <= sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * 8192
        assert protocol.transport.get_write_buffer_limits() == (2048, 8192)


async def test_an_oversized_message_closes_1009_then_reads_until_the_client_leaves(
    problems: Problems,
) -> None:
    """A 1009 is followed by a half-close, not a close: the client may still be writing,
    and a close would make the kernel reset the connection under the close frame."""
    app = App()
    server = Server(app, frame_bytes_max=4096)
    async with server.connect() as peer:
        await peer.handshake()
        await wait_for(app.accepted.is_set)
        protocol = only_protocol(server)
        peer.frame(Opcode.TEXT, b"a" * 1024, fin=False)
        for _ in range(7):
            peer.frame(Opcode.CONT, b"a" * 1024, fin=False)
        assert await peer.close_code() == 1009
        for _ in range(64):  # the client has not noticed yet and keeps sending
            peer.frame(Opcode.CONT, b"a" * 1024, fin=False)
        await peer.writer.drain()
        assert await peer.read_to_eof() == b""  # the server half-closed after the frame
        assert not protocol.disconnected  # ...and still reads what the client sends
        peer.writer.close()
        await wait_for(lambda: protocol.disconnected)
        await wait_for(app.done.is_set)
    assert app.received[-1]["type"] == "websocket.disconnect"
    assert app.received[-1]["code"] == 1009
    assert problems() == []


async def test_a_handshake_counts_as_pending_until_the_app_accepts() -> None:
    accept = asyncio.Event()

    async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await accept.wait()
        await send({"type": "websocket.accept"})
        await receive()

    server = Server(slow_app)
    async with server.connect() as peer:
        upgrade = peer.upgrade_request()
        peer.write(upgrade[:20])
        await wait_for(lambda: len(server.http()) == 1)
        pending = server.http()[0].pending
        await asyncio.sleep(0.01)
        assert pending.count("") == 1  # an incomplete request
        peer.write(upgrade[20:])
        await wait_for(lambda: len(server.websockets()) == 1)
        assert pending.count("") == 1  # now a pending handshake, counted once
        accept.set()
        head = await peer.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert pending.count("") == 0


async def test_a_handshake_the_app_never_answers_is_closed_at_the_timeout() -> None:
    async def stuck_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await asyncio.Event().wait()

    limits = PendingLimits(timeout_s=0.2)
    server = Server(stuck_app, options=WebSocketOptions(pending=limits))
    async with server.connect() as peer:
        with pytest.raises(EOFError):
            await peer.handshake()
        await wait_for(lambda: server.websockets() == [])


async def test_a_refused_handshake_is_answered_and_logs_no_error(problems: Problems) -> None:
    async def refusing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"no"})

    server = Server(refusing_app)
    async with server.connect() as peer:
        peer.write(peer.upgrade_request())
        answer = await peer.read_to_eof()
        await wait_for(lambda: not server.state.tasks)
    assert answer.startswith(b"HTTP/1.1 401 ") and answer.endswith(b"no")
    assert problems() == []  # uvicorn alone: "ASGI callable returned without completing…"


def test_serve_passes_the_settings_through_the_protocol_factories() -> None:
    settings = Settings(
        socket_send_buffer_bytes=12_345,
        gc_freeze_every_connections=7,
        limits=Limits(
            request_timeout_s=3.0, pending_requests_max=99, pending_requests_per_ip_max=9
        ),
    )
    options = uvicorn_options(settings)
    ws: WebSocketOptions = options["ws"].keywords["options"]
    assert (ws.send_buffer_bytes, ws.gc_freeze_every) == (12_345, 7)
    assert ws.pending == PendingLimits(total_max=99, per_address_max=9, timeout_s=3.0)
    assert options["http"].keywords["pending"] == ws.pending  # one count for both
    assert options["ws_max_size"] == settings.limits.frame_bytes_max
    assert options["ws_per_message_deflate"] is False  # the frame sink needs it off
    # --workers pickles uvicorn's config for each worker process.
    assert pickle.loads(pickle.dumps(options["ws"])).keywords == options["ws"].keywords
