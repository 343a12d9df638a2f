"""giftwire's uvicorn protocols in process, over a socketpair: no network, no server.

``connect`` gives a raw client end (bytes in, bytes out, with websockets' sans-I/O client
to frame and parse) talking to ``BoundedH11Protocol`` → ``BoundedWebSocketProtocol`` as
``giftwire serve`` configures them, with an ASGI app of the test's own. The test can reach
the server side's protocol objects, which is what a contract test of internals needs.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from server.web.pending import PendingLimits
from server.web.uvicorn_http import BoundedH11Protocol
from server.web.uvicorn_ws import BoundedWebSocketProtocol, WebSocketOptions

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Peer:
    """The client end: raw writes, and a reader of what the server sends.

    Frames are parsed here, not by websockets' client, which stops reading at the server's
    close frame: these tests look at what the server does after it.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = ClientProtocol(parse_uri("ws://test/ws"), max_size=None)
        self.eof = False

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def frame(self, opcode: Opcode, data: bytes, *, fin: bool = True) -> None:
        """Write one masked frame, whatever state either side is in."""
        self.write(Frame(opcode, data, fin).serialize(mask=True, extensions=[]))

    def upgrade_request(self) -> bytes:
        self.parser.send_request(self.parser.connect())
        return b"".join(self.parser.data_to_send())

    async def handshake(self, timeout_s: float = 5.0) -> Response:
        self.write(self.upgrade_request())
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout_s)
        except asyncio.IncompleteReadError:
            self.eof = True
            raise EOFError("the server closed the connection") from None
        self.parser.receive_data(head)
        (response,) = self.parser.events_received()
        assert isinstance(response, Response), response
        return response

    async def next_frame(self, timeout_s: float = 5.0) -> Frame:
        try:
            async with asyncio.timeout(timeout_s):
                head = await self.reader.readexactly(2)
                length = head[1] & 0x7F
                if length == 126:
                    length = int.from_bytes(await self.reader.readexactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(await self.reader.readexactly(8), "big")
                data = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            self.eof = True
            raise EOFError("the server closed the connection") from None
        assert head[0] & 0x70 == 0 and head[1] & 0x80 == 0, "no RSV bits, never masked"
        return Frame(Opcode(head[0] & 0x0F), data, fin=bool(head[0] & 0x80))

    async def close_code(self, timeout_s: float = 5.0) -> int:
        """Skip data frames up to the server's close frame; its code."""
        while True:
            frame = await self.next_frame(timeout_s)
            if frame.opcode is Opcode.CLOSE:
                return Close.parse(frame.data).code

    async def barrier(self, payload: bytes = b"barrier") -> list[Frame]:
        """Ping and wait for the pong: everything written before was processed by then.
        Returns the other frames that arrived first."""
        self.frame(Opcode.PING, payload)
        seen: list[Frame] = []
        while True:
            frame = await self.next_frame()
            if frame.opcode is Opcode.PONG and frame.data == payload:
                return seen
            seen.append(frame)

    async def read_to_eof(self, timeout_s: float = 5.0) -> bytes:
        data = await asyncio.wait_for(self.reader.read(), timeout_s)
        self.eof = True
        return data


class Server:
    """The server side of one or more socketpairs, sharing uvicorn's state."""

    def __init__(
        self,
        app: App,
        *,
        options: WebSocketOptions | None = None,
        frame_bytes_max: int = 4096,
    ) -> None:
        self.options = options or WebSocketOptions(pending=PendingLimits())
        self.config = Config(
            app=app,
            lifespan="off",
            log_config=None,
            http=functools.partial(BoundedH11Protocol, pending=self.options.pending),
            ws=functools.partial(BoundedWebSocketProtocol, options=self.options),
            ws_max_size=frame_bytes_max,
            ws_per_message_deflate=False,
        )
        self.config.load()
        self.state = ServerState()

    def websockets(self) -> list[BoundedWebSocketProtocol]:
        return [c for c in self.state.connections if isinstance(c, BoundedWebSocketProtocol)]

    def http(self) -> list[BoundedH11Protocol]:
        return [c for c in self.state.connections if isinstance(c, BoundedH11Protocol)]

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Peer]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        http: BoundedH11Protocol | None = None

        def factory() -> BoundedH11Protocol:
            nonlocal http
            http = self.config.http_protocol_class(  # type: ignore[call-arg]
                config=self.config, server_state=self.state, app_state={}
            )
            return http

        transport, _ = await loop.connect_accepted_socket(factory, theirs)
        reader, writer = await asyncio.open_connection(sock=ours)
        try:
            yield Peer(reader, writer)
        finally:
            writer.close()
            transport.close()
            for task in list(self.state.tasks):
                task.cancel()
            await asyncio.sleep(0)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Let the loop run until ``condition()`` holds (a deadline, never a speed claim)."""
    async with asyncio.timeout(timeout_s):
        while True:  # polls state that offers nothing to await
            if condition():
                return
            await asyncio.sleep(0.001)
