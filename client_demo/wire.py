"""The terminal client's connection: codecs, URLs, and a session that reconnects by itself.

A ``Session`` outlives its WebSocket connections: when one drops, it waits (with backoff)
and opens another, and its subclass decides what to send again (gifts still waiting for an
answer, a ``resume`` from the last sequence seen). A refused handshake (bad token, unknown
stream, forbidden origin) is final and is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from client_demo.output import Printer

Message = dict[str, Any]
WireFormat = Literal["json", "msgpack"]

EXIT_OK = 0
EXIT_REFUSED_GIFTS = 1
EXIT_CANNOT_CONNECT = 2
RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
OPEN_TIMEOUT_S = 10.0
FATAL_STATUSES = frozenset({400, 401, 403, 404})
FORMAT_SUBPROTOCOL_PREFIX = "giftwire."
BEARER_SUBPROTOCOL_PREFIX = "bearer."


def subprotocols(token: str, fmt: str = "json") -> list[str]:
    """What a client offers in the handshake: the wire format, then the token (a browser
    cannot set an Authorization header on a WebSocket). The one spelling of the list in
    Python: the terminal client, the load tools and the tests all call this."""
    return [f"{FORMAT_SUBPROTOCOL_PREFIX}{fmt}", f"{BEARER_SUBPROTOCOL_PREFIX}{token}"]


def encode(message: Message, fmt: WireFormat) -> str | bytes:
    if fmt == "msgpack":
        packed: bytes = msgpack.packb(message)
        return packed
    return orjson.dumps(message).decode()


def decode(frame: str | bytes, fmt: WireFormat) -> Message:
    value = msgpack.unpackb(frame) if fmt == "msgpack" else orjson.loads(frame)
    if not isinstance(value, dict):
        raise ValueError("the server sent a frame that is not an object")
    return value


def stream_url(base: str, stream_id: str) -> str:
    """``ws://host:port`` (or ``http://…``) plus the stream's endpoint path."""
    base = base.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[len("http") :]
    if "/ws/streams/" in base:
        return base
    return f"{base}/ws/streams/{stream_id}"


def http_url(base: str) -> str:
    """The HTTP API's base for a WebSocket base URL (``ws`` → ``http``, ``wss`` → ``https``)."""
    base = base.rstrip("/").split("/ws/streams/")[0]
    if base.startswith("ws"):
        return "http" + base[len("ws") :]
    return base


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    url: str
    stream_id: str
    token: str
    fmt: WireFormat = "json"
    retries: int = 10
    """Consecutive failed connection attempts before giving up."""
    duration_s: float | None = None


class Refused(Exception):
    """The server refused the handshake for a reason that retrying cannot fix."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _refusal(error: InvalidStatus) -> Refused:
    response = error.response
    code, message = "http_error", response.reason_phrase
    with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
        body = orjson.loads(response.body or b"")
        code, message = body["error"]["code"], body["error"]["message"]
    return Refused(response.status_code, code, message)


class Session:
    """One logical session over as many connections as it takes.

    Subclasses implement ``on_welcome`` (called on every connection, first and later) and
    ``on_message``, call ``send`` to write, and ``finish`` when they are done.
    """

    def __init__(self, options: ConnectOptions, out: Printer) -> None:
        self.options = options
        self.out = out
        self.ws: ClientConnection | None = None
        self.welcomes = 0
        self._finished = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        out.on_closed = self.finish  # the reader of our output went away (`| head`)

    # For subclasses.

    async def on_welcome(self, welcome: Message) -> None:
        raise NotImplementedError

    async def on_message(self, message: Message) -> None:
        raise NotImplementedError

    def exit_code(self) -> int:
        return EXIT_OK

    async def send(self, message: Message) -> bool:
        """Write one message; False when not connected (the caller keeps it to send later)."""
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send(encode(message, self.options.fmt))
        except ConnectionClosed:
            return False
        return True

    def finish(self) -> None:
        self._finished.set()

    def is_finished(self) -> bool:
        return self._finished.is_set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # The loop.

    async def run(self) -> int:
        if self.options.duration_s is not None:
            self.spawn(self._stop_after(self.options.duration_s))
        try:
            return await self._run()
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _stop_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.finish()

    async def _run(self) -> int:
        failures = 0
        while not self.is_finished():
            reason = ""
            try:
                welcomed = await self._connection()
                if welcomed:
                    failures = 0
            except InvalidStatus as e:
                refusal = _refusal(e)
                if refusal.status in FATAL_STATUSES:
                    self.out.local(
                        "refused",
                        status=refusal.status,
                        code=refusal.code,
                        message=refusal.message,
                    )
                    return EXIT_CANNOT_CONNECT
                reason = f"{refusal.status} {refusal.code}"
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError) as e:
                reason = str(e) or type(e).__name__
            if self.is_finished():
                break
            failures += 1
            if failures > self.options.retries:
                self.out.local("gave_up", attempts=failures, reason=reason)
                return EXIT_CANNOT_CONNECT
            delay_s = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1]
            delay_s *= 0.75 + random.random() / 2
            self.out.local("disconnected", reason=reason, retry_in_s=round(delay_s, 2))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._finished.wait()
        return self.exit_code()

    async def _connection(self) -> bool:
        """One connection, from handshake to close. True if it got as far as the welcome."""
        protocols = [Subprotocol(p) for p in subprotocols(self.options.token, self.options.fmt)]
        async with connect(
            stream_url(self.options.url, self.options.stream_id),
            subprotocols=protocols,
            compression=None,
            open_timeout=OPEN_TIMEOUT_S,
            close_timeout=2,
            max_size=1 << 20,
        ) as ws:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                welcome = decode(await ws.recv(), self.options.fmt)
            if welcome.get("type") != "welcome":
                raise ConnectionError(f"expected a welcome, got {welcome.get('type')!r}")
            self.ws = ws
            try:
                self.welcomes += 1
                await self.on_welcome(welcome)
                await self._pump(ws)
            finally:
                self.ws = None
        return True

    async def _pump(self, ws: ClientConnection) -> None:
        """Read until the connection closes or the session finishes."""
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read(ws))
        done_waiter = loop.create_task(self._finished.wait())
        try:
            await asyncio.wait({reader, done_waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done_waiter.cancel()
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        if not reader.cancelled():
            reader.result()  # re-raise what ended the connection

    async def _read(self, ws: ClientConnection) -> None:
        async for frame in ws:
            await self.on_message(decode(frame, self.options.fmt))
        # A clean close by the server (a restart, say) still means: reconnect.
        raise ConnectionError(f"closed by the server ({ws.close_code} {ws.close_reason})")
