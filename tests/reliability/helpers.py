"""Clients and checks shared by the reliability tests.

A ``Peer`` is one real WebSocket connection whose replies are read by a background task and
filed by gift id, so a test can fire many gifts without waiting and still know, for each id,
whether it was acknowledged, refused, or left without an answer when something broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, cast

import msgpack
import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from client_demo.wire import subprotocols
from server.domain.catalog import load_catalog
from server.domain.errors import UnavailableError
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.reconcile import reconcile
from server.ledger.runner import StreamRows
from tests.support.servers import ServerProcess, token

STREAM = "rel1"
CREATOR = "rel_creator"

# Rate limits high enough that only the limit a test is about can refuse anything.
FAST = {
    "GIFTWIRE_GIFTS_PER_S_MAX": "100000",
    "GIFTWIRE_GIFT_BURST_MAX": "100000",
    "GIFTWIRE_MESSAGES_PER_S_MAX": "100000",
    "GIFTWIRE_CONNECTIONS_PER_USER_MAX": "100",
    "GIFTWIRE_CONNECTIONS_PER_IP_MAX": "5000",
}


class Peer:
    """A viewer or sender: every reply filed by gift id, every gift event by sequence."""

    def __init__(self, ws: ClientConnection, fmt: str) -> None:
        self.ws = ws
        self.fmt = fmt
        self.welcome: dict[str, Any] = {}
        self.acks: dict[str, dict[str, Any]] = {}
        self.ack_log: list[dict[str, Any]] = []
        self.errors: dict[str | None, list[dict[str, Any]]] = {}
        self.seqs: list[int] = []
        self.gifts: list[dict[str, Any]] = []
        self.other: list[dict[str, Any]] = []
        self.stats = 0
        self.last_stats: dict[str, Any] = {}
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self._welcomed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        server: ServerProcess,
        bearer: str,
        *,
        stream_id: str = STREAM,
        fmt: str = "json",
        since: int | None = None,
        epoch: str | None = None,
    ) -> Peer:
        url = server.ws_url(stream_id) + ("" if since is None else f"?since={since}")
        url += "" if epoch is None else f"&epoch={epoch}"
        ws = await connect(
            url,
            subprotocols=subprotocols(bearer, fmt),  # type: ignore[arg-type]
            compression=None,
            open_timeout=10,
            close_timeout=2,
            max_queue=None,
        )
        peer = cls(ws, fmt)
        peer._reader = asyncio.get_running_loop().create_task(peer._read())
        await asyncio.wait_for(peer._welcomed.wait(), 10)
        return peer

    async def send(self, message: dict[str, Any]) -> None:
        if self.fmt == "msgpack":
            await self.ws.send(msgpack.packb(message))
        else:
            await self.ws.send(orjson.dumps(message).decode())

    async def send_gift(self, client_id: str, gift: str = "rose", count: int = 1) -> None:
        await self.send({"type": "send_gift", "id": client_id, "gift": gift, "count": count})

    def _decode(self, raw: str | bytes) -> dict[str, Any]:
        if isinstance(raw, bytes):
            return dict(msgpack.unpackb(raw))
        return dict(orjson.loads(raw))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self._file(self._decode(raw))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self.changed.set()

    def _file(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "welcome":
            self.welcome = message
            self._welcomed.set()
        elif kind == "gift_ack":
            self.acks[message["id"]] = message
            self.ack_log.append(message)
        elif kind == "error":
            self.errors.setdefault(message.get("id"), []).append(message)
        elif kind == "gift":
            self.seqs.append(message["seq"])
            self.gifts.append(message)
        elif kind == "gifts":
            self.seqs.extend(event["seq"] for event in message["events"])
            self.gifts.extend(message["events"])
        elif kind == "stats":
            self.stats += 1
            self.last_stats = message
        elif kind != "leaderboard":
            self.other.append(message)
        self.changed.set()

    def reply(self, client_id: str) -> dict[str, Any] | None:
        """The ack, else the last error, for this gift id; None while there is neither."""
        if client_id in self.acks:
            return self.acks[client_id]
        errors = self.errors.get(client_id)
        return errors[-1] if errors else None

    def answers(self, client_ids: list[str]) -> list[dict[str, Any]]:
        """The ack or last error of each of these ids that has one."""
        return [reply for i in client_ids if (reply := self.reply(i)) is not None]

    async def wait_replies(self, client_ids: list[str], timeout_s: float = 15.0) -> None:
        """Wait until each of these gift ids has an ack or an error."""
        await self.wait_for(lambda: all(self.reply(i) for i in client_ids), timeout_s)

    async def wait_for(self, predicate: Any, timeout_s: float = 15.0) -> None:
        """Wait until ``predicate()`` holds (checked after every message) or time out."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                if predicate():
                    return
                await self.changed.wait()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


async def fire(peer: Peer, prefix: str, stop: asyncio.Event, window: int = 16) -> list[str]:
    """Send rose gifts with ids ``prefix-0, prefix-1, …`` until ``stop``, at most ``window``
    unanswered at a time. Returns every id sent."""
    sent: list[str] = []
    while not stop.is_set() and not peer.closed.is_set():
        if len(sent) - len(peer.acks) - len(peer.errors) >= window:
            peer.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(peer.changed.wait(), 0.05)
            continue
        client_id = f"{prefix}-{len(sent)}"
        sent.append(client_id)
        await peer.send_gift(client_id)
    return sent


async def settle(
    peer: Peer, client_ids: list[str], *, gift: str = "rose", attempts_max: int = 20
) -> int:
    """Send each gift until it is acknowledged or refused for good: the client's contract.

    ``unavailable`` means the outcome is unknown, so the same id is sent again (after a short
    pause). Returns how many retries that took in all.
    """
    retries = 0
    pending = list(client_ids)
    for attempt in range(attempts_max):
        for client_id in pending:
            peer.errors.pop(client_id, None)
            await peer.send_gift(client_id, gift)
        await peer.wait_replies(pending)
        pending = [i for i in pending if (peer.reply(i) or {}).get("code") == "unavailable"]
        if not pending:
            return retries
        retries += len(pending)
        await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError(f"still unavailable after {attempts_max} attempts: {pending}")


async def send_direct(ledger: Ledger, sender: str, client_id: str, gift: str = "rose") -> bool:
    """send_gift through the test's own ledger, retried with the same id while unavailable.

    Returns whether the receipt was a replay.
    """
    for attempt in range(50):
        try:
            receipt = await ledger.send_gift(
                client_id=client_id,
                sender_id=sender,
                sender_name=sender.title(),
                stream_id=STREAM,
                creator_id=CREATOR,
                gift_id=gift,
                count=1,
            )
            return receipt.replayed
        except UnavailableError:
            await asyncio.sleep(0.02 * (attempt + 1))
    raise AssertionError(f"{client_id}: the ledger stayed unavailable")


async def ledger_on(url: str, keys: Keys) -> Ledger:
    """A ledger of the test's own (its own client), for setting up and checking the books."""
    redis = Redis.from_url(url, decode_responses=False)
    ledger = Ledger(redis, keys=keys)
    await ledger.prepare(load_catalog())
    return ledger


async def open_stream(ledger: Ledger, *viewers: tuple[str, int]) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="reliability")
    for user, coins in viewers:
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=coins)


async def applied_gifts(redis: Redis, keys: Keys) -> Counter[tuple[str, str]]:
    """How often each (sender, client id) appears among the committed gifts of the ledger."""
    rows = cast(StreamRows, await redis.xrange(keys.ledger()))
    return Counter(
        (fields[b"from"].decode(), fields[b"client_id"].decode())
        for _, fields in rows
        if fields.get(b"type") == b"gift"
    )


async def assert_books_hold(redis: Redis, keys: Keys) -> None:
    """No gift applied twice, no negative balance, and the whole ledger reconciles."""
    twice = {key: n for key, n in (await applied_gifts(redis, keys)).items() if n > 1}
    assert not twice, f"gifts applied more than once: {twice}"
    report = await reconcile(redis, keys)
    assert report.ok, report.problems


TRACEBACK = re.compile(r"Traceback \(most recent call last\)")


def assert_no_traceback(*logs: Path) -> None:
    for path in logs:
        text = path.read_text(errors="replace") if path.exists() else ""
        assert not TRACEBACK.search(text), f"traceback in {path.name}:\n{text[-4000:]}"


async def wait_ready(server: ServerProcess, timeout_s: float = 20.0) -> float:
    """Poll /readyz until it answers 200; return how long that took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < timeout_s:
        status = await asyncio.to_thread(readyz_status, server)
        if status == 200:
            return loop.time() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{server.http} not ready after {timeout_s} s:\n{server.log()}")


def readyz_status(server: ServerProcess) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(server.http + "/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from ``/proc`` (KiB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_metrics(server: ServerProcess) -> dict[str, float]:
    """The server's ``/metrics``, one value per sample line (blocking: call in a thread)."""
    with urllib.request.urlopen(server.http + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in text.splitlines())
        if not name.startswith("#") and value
    }


async def stalled_viewer(
    server: ServerProcess, user: str, *, close_timeout_s: float = 10.0
) -> ClientConnection:
    """A viewer with a tiny receive buffer that stops reading at once (``resume_reading``
    on its transport lets it read again)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = await connect(
        server.ws_url(STREAM),
        sock=sock,
        subprotocols=[f"bearer.{token(user)}"],  # type: ignore[list-item]
        compression=None,
        max_queue=1,
        close_timeout=close_timeout_s,
    )
    ws.transport.pause_reading()
    return ws
