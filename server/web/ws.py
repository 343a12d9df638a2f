"""The WebSocket endpoint ``/ws/streams/{stream_id}`` (``docs/protocol.md``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid

from starlette.websockets import WebSocket, WebSocketDisconnect

from server.domain.accounts import Balance, Identity
from server.domain.errors import (
    ErrorCode,
    InvariantError,
    LedgerRefusal,
    OperatingError,
    RequestError,
    UnavailableError,
)
from server.domain.limits import (
    CLOSE_TIMEOUT_S,
    IN_FLIGHT_GIFTS_MAX,
    MESSAGE_BURST_S,
    MESSAGE_STRIKES_S,
    SEQUENCE_MAX,
)
from server.protocol import events
from server.protocol.close_codes import CloseCode
from server.protocol.codec import (
    SUBPROTOCOLS,
    DecodeError,
    OutFrame,
    WireFormat,
    decode,
)
from server.protocol.messages import Ping, ProtocolError, Resume, SendGift, is_epoch, parse_message
from server.realtime.connection import Connection
from server.realtime.outbox import Outbox
from server.realtime.ports import FrameSink, RoomSnapshot
from server.web.auth import bearer_from_header, bearer_from_subprotocols, verify_token_until
from server.web.errors import error_response
from server.web.inputs import ascii_int
from server.web.metrics import CONNECTIONS, ERRORS, FANOUT_DROPS, GIFT_SECONDS, GIFTS, SLOW_CLOSES
from server.web.services import SocketServices
from server.web.uvicorn_ws import FRAME_SINK_EXTENSION

log = logging.getLogger("giftwire.ws")

# Labelled children looked up once: labels() costs a lock and a dict lookup per call.
_GIFTS_SENT = GIFTS.labels("sent")
_GIFTS_REPLAYED = GIFTS.labels("replayed")


def _origin_allowed(websocket: WebSocket, allowed: tuple[str, ...]) -> bool:
    origin = websocket.headers.get("origin")
    if origin is None or "*" in allowed:
        return True  # not a browser, or any origin allowed
    if origin in allowed:
        return True
    host = websocket.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _choose_format(offered: list[str]) -> tuple[WireFormat, str | None]:
    for protocol in offered:
        if protocol in SUBPROTOCOLS:
            return SUBPROTOCOLS[protocol], protocol
    return WireFormat.JSON, None


def _resume_since(raw: str | None) -> int | None:
    """``?since=N`` on the handshake URL: send the gifts after sequence N with the welcome."""
    if raw is None:
        return None
    since = ascii_int(raw)  # ASCII only: "²".isdigit() is true and int("²") raises
    if since is None or since > SEQUENCE_MAX:
        raise RequestError(ErrorCode.INVALID_REQUEST, "since must be a gift sequence number")
    return since


def _resume_epoch(raw: str | None) -> str | None:
    """``&epoch=E``: the epoch ``since`` counts in (without it: the stream's current one)."""
    if raw is not None and not is_epoch(raw):
        raise RequestError(ErrorCode.INVALID_REQUEST, "epoch must be an epoch id")
    return raw


def _frame_sink(websocket: WebSocket) -> FrameSink | None:
    """The connection's frame sink when the server offers one (``uvicorn_ws``)."""
    extension = websocket.scope.get("extensions", {}).get(FRAME_SINK_EXTENSION)
    sink: FrameSink | None = extension.get("sink") if extension else None
    return sink


def _cancel(task: asyncio.Task[CloseCode | None]) -> None:
    task.cancel()


async def _deny(websocket: WebSocket, code: ErrorCode, message: str | None = None) -> None:
    await websocket.send_denial_response(error_response(code, message))


class _RateLimit:
    """Per-connection token bucket over incoming messages (burst = two seconds' worth)."""

    __slots__ = ("_at", "_capacity", "_rate", "_tokens")

    def __init__(self, per_s: int) -> None:
        self._rate = float(per_s)
        self._capacity = float(per_s * MESSAGE_BURST_S)
        self._tokens = self._capacity
        self._at = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


async def gift_socket(websocket: WebSocket) -> None:
    services: SocketServices = websocket.app.state.services
    settings = services.settings
    limits = settings.limits
    stream_id = websocket.path_params["stream_id"]
    offered = list(websocket.scope.get("subprotocols", []))

    if not _origin_allowed(websocket, settings.allowed_origins):
        await _deny(websocket, ErrorCode.FORBIDDEN, "origin not allowed")
        return
    token = bearer_from_header(websocket.headers.get("authorization")) or bearer_from_subprotocols(
        offered
    )
    if token is None:
        await _deny(websocket, ErrorCode.UNAUTHORIZED)
        return
    try:
        identity, expires_at_s = verify_token_until(settings.jwt_secret, token)
        since = _resume_since(websocket.query_params.get("since"))
        epoch = _resume_epoch(websocket.query_params.get("epoch"))
        stream = await services.ledger.stream(stream_id)
    except OperatingError as e:
        await _deny(websocket, e.code)
        return
    except UnavailableError:
        await _deny(websocket, ErrorCode.UNAVAILABLE)
        return
    if not identity.may_watch(stream_id):
        await _deny(
            websocket, ErrorCode.FORBIDDEN, f"this token may only watch {identity.watch_stream}"
        )
        return
    if stream is None:
        await _deny(websocket, ErrorCode.UNKNOWN_STREAM)
        return
    client_ip = websocket.client.host if websocket.client else "?"
    if (
        services.connections_by_user[identity.user_id] >= limits.connections_per_user_max
        or services.connections_by_ip[client_ip] >= limits.connections_per_ip_max
    ):
        await _deny(websocket, ErrorCode.TOO_MANY_CONNECTIONS)
        return

    fmt, subprotocol = _choose_format(offered)
    await websocket.accept(subprotocol=subprotocol)
    services.connections_by_user[identity.user_id] += 1
    services.connections_by_ip[client_ip] += 1
    CONNECTIONS.inc()
    session = _Session(
        websocket, services, identity, fmt, stream_id, stream.creator_id, since, expires_at_s
    )
    session.epoch = epoch
    try:
        await session.run()
    finally:
        CONNECTIONS.dec()
        services.connections_by_user[identity.user_id] -= 1
        services.connections_by_ip[client_ip] -= 1
        for counter, key in (
            (services.connections_by_user, identity.user_id),
            (services.connections_by_ip, client_ip),
        ):
            if counter[key] <= 0:
                del counter[key]


class _Session:
    """One accepted connection: its reader loop, its place in the room and its gifts in flight."""

    __slots__ = (
        "connection", "creator_id", "epoch", "fmt", "gift_tasks", "identity",
        "joined", "outbox", "rate", "services", "since", "stream_id", "token_expires_at_s",
        "websocket",
    )  # fmt: skip

    def __init__(
        self,
        websocket: WebSocket,
        services: SocketServices,
        identity: Identity,
        fmt: WireFormat,
        stream_id: str,
        creator_id: str,
        since: int | None = None,
        token_expires_at_s: float = math.inf,
    ) -> None:
        self.websocket = websocket
        self.since = since
        self.epoch: str | None = None
        self.services = services
        self.identity = identity
        self.fmt = fmt
        self.stream_id = stream_id
        self.creator_id = creator_id
        limits = services.settings.limits
        self.outbox = Outbox(
            self._write,
            frames_max=limits.send_queue_frames_max,
            bytes_max=limits.send_queue_bytes_max,
            lagging_s_max=limits.lagging_s_max,
            on_drop=FANOUT_DROPS.inc,
            sink=_frame_sink(websocket),
        )
        self.connection = Connection(uuid.uuid4().hex[:12], identity, fmt, self.outbox)
        self.rate = _RateLimit(limits.messages_per_s_max)
        self.gift_tasks: set[asyncio.Task[None]] = set()
        self.joined = False
        # The token's ``exp``: gifts after it are refused and the socket closed (4001).
        self.token_expires_at_s = token_expires_at_s

    async def _write(self, frame: OutFrame) -> None:
        await self.websocket.send(frame.asgi())

    async def run(self) -> None:
        hub = self.services.hub
        close_code: CloseCode | None = CloseCode.NORMAL
        reason = ""
        reader: asyncio.Task[CloseCode | None] | None = None
        try:
            balance = await self.services.ledger.balance(self.identity.user_id)
            level = await self.services.ledger.fan_level(self.creator_id, self.identity.user_id)
            self.joined = True
            # Returns once the welcome and the gifts after `since` are queued: live events
            # wait until then. (A `resume` message sent after the welcome instead races
            # the live events sent in between.)
            await hub.join(
                self.connection,
                self.stream_id,
                functools.partial(self._welcome, balance, level),
                since=self.since,
                epoch=self.epoch,
            )
            reader = asyncio.get_running_loop().create_task(self._read())
            # A slow-consumer close (or a write that found the peer gone) stops the reading.
            self.outbox.on_close = functools.partial(_cancel, reader)
            await asyncio.wait({reader})
            close_code, reason = self._outcome(reader)
            if close_code is CloseCode.UNAUTHORIZED:
                reason = "token expired: reconnect with a new token"
        except UnavailableError:
            close_code, reason = CloseCode.GOING_AWAY, "ledger unavailable; reconnect"
        except (WebSocketDisconnect, OSError, RuntimeError):
            close_code = CloseCode.NORMAL
        except InvariantError:
            log.exception("invariant broke on connection %s", self.connection.conn_id)
            close_code, reason = CloseCode.INTERNAL_ERROR, "internal error"
        finally:
            if self.joined:
                hub.leave(self.connection)
            for task in self.gift_tasks:
                task.cancel()
            self.outbox.stop()
            if reader is not None and not reader.done():
                reader.cancel()
        if close_code is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.websocket.close(close_code, reason)

    def _outcome(self, reader: asyncio.Task[CloseCode | None]) -> tuple[CloseCode | None, str]:
        if self.outbox.close_code is not None:
            if self.outbox.close_code is CloseCode.SLOW_CONSUMER:
                SLOW_CLOSES.inc()
            return self.outbox.close_code, self.outbox.close_reason
        if reader.cancelled():
            return None, ""  # the peer went away while we wrote
        error = reader.exception()
        if error is not None:
            raise error  # handled (or not) by run(), as if read in place
        return reader.result(), ""

    def _welcome(self, balance: Balance, level: int, snapshot: RoomSnapshot) -> events.Message:
        return events.welcome(
            stream={
                "id": self.stream_id,
                "creator_id": self.creator_id,
                "creator_name": snapshot.creator_name or self.creator_id,
                "title": snapshot.title,
                "state": snapshot.state,
                "diamonds": snapshot.diamonds,
            },
            you={
                "user_id": self.identity.user_id,
                "role": self.identity.role.value,
                "display_name": self.identity.display_name,
                "level": level,
            },
            balance={"coins": balance.coins, "diamonds": balance.diamonds},
            viewers=snapshot.viewers,
            top=snapshot.top,
            goals=snapshot.goals,
            last_seq=snapshot.position.seq,
            epoch=snapshot.position.epoch,
            fmt=self.fmt.value,
        )

    async def _read(self) -> CloseCode | None:
        """Read frames until the peer leaves; return a close code when we should close."""
        limits = self.services.settings.limits
        strikes = 0
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            data: str | bytes | None = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is None:
                continue
            if not self.outbox.has_room() and not await self.outbox.wait_room():
                # Every answer is queued: a client that does not read its answers is not
                # read either, and is closed with 4008 if it stays behind.
                return None
            if not self.rate.allow():
                strikes += 1
                self._error(ErrorCode.RATE_LIMITED, None, "too many messages")
                if strikes > limits.messages_per_s_max * MESSAGE_STRIKES_S:
                    return CloseCode.RATE_LIMITED
                continue
            if len(data) > limits.frame_bytes_max:
                self._error(ErrorCode.MESSAGE_TOO_LARGE, None)
                continue
            try:
                doc = decode(data, self.fmt, limits)
                parsed = parse_message(doc)
            except DecodeError as e:
                self._error(ErrorCode.INVALID_REQUEST, None, str(e))
                continue
            except ProtocolError as e:
                self._error(e.code, e.client_id, e.message)
                continue
            if isinstance(parsed, SendGift) and time.time() >= self.token_expires_at_s:
                return await self._token_expired(parsed)
            await self._handle(parsed)

    async def _token_expired(self, message: SendGift) -> CloseCode:
        """Refuse a gift sent after the token's ``exp``, then have the socket closed (4001).

        The gifts sent before it finish first, so that each of them gets its answer; the
        refusal names the gift's id, which tells the client it was not applied.
        """
        if self.gift_tasks:
            await asyncio.wait(self.gift_tasks)
        self._error(ErrorCode.TOKEN_EXPIRED, message.client_id)
        return CloseCode.UNAUTHORIZED

    async def _handle(self, message: SendGift | Resume | Ping) -> None:
        if isinstance(message, SendGift):
            if self.identity.read_only:
                self._error(ErrorCode.READ_ONLY, message.client_id)
                return
            if len(self.gift_tasks) >= IN_FLIGHT_GIFTS_MAX:
                # Backpressure: stop reading this socket until one of its gifts is done.
                await asyncio.wait(self.gift_tasks, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.get_running_loop().create_task(self._send_gift(message))
            self.gift_tasks.add(task)
            task.add_done_callback(self.gift_tasks.discard)
        elif isinstance(message, Resume):
            # Awaited: this socket is not read again until the resume is queued, so one
            # connection has at most one resume in flight.
            await self.services.hub.resume(self.connection, message.since, message.epoch)
        else:
            self.connection.send(events.pong(message.client_id))

    async def _send_gift(self, message: SendGift) -> None:
        started = time.perf_counter()
        try:
            receipt = await self.services.ledger.send_gift(
                client_id=message.client_id,
                sender_id=self.identity.user_id,
                sender_name=self.identity.display_name,
                stream_id=self.stream_id,
                creator_id=self.creator_id,
                gift_id=message.gift_id,
                count=message.count,
                catalog_version=message.catalog_version,
                to=message.to,
            )
        except LedgerRefusal as e:
            GIFTS.labels(e.code.value).inc()
            self._error(e.code, message.client_id, e.message, e.detail)
            return
        except RequestError as e:
            self._error(e.code, message.client_id, e.message)
            return
        except UnavailableError:
            GIFTS.labels("unavailable").inc()
            self._error(ErrorCode.UNAVAILABLE, message.client_id)
            return
        except InvariantError:
            log.exception(
                "send_gift failed: gift id %s, connection %s",
                message.client_id,
                self.connection.conn_id,
            )
            self._error(ErrorCode.INTERNAL, message.client_id)
            self.outbox.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        (_GIFTS_REPLAYED if receipt.replayed else _GIFTS_SENT).inc()
        GIFT_SECONDS.observe(time.perf_counter() - started)
        self.connection.send(
            events.gift_ack(
                client_id=receipt.client_id,
                transfer_id=receipt.transfer_id,
                gift_id=receipt.gift_id,
                count=receipt.count,
                coins=receipt.coins,
                balance=receipt.balance,
                combo=receipt.combo,
                seq=receipt.seq,
                replayed=receipt.replayed,
            )
        )

    def _error(
        self,
        code: ErrorCode,
        client_id: str | None,
        message: str | None = None,
        detail: dict[str, object] | None = None,
    ) -> None:
        ERRORS.labels(code.value).inc()
        self.connection.send(events.error(code, client_id, message, detail))
