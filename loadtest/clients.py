"""The generator's connections: viewers that count (and a few that check) what they see,
and gifters that send at a pace, retry with the same id, and time their acks.

Delivery latency is measured from the moment a gifter first sent a gift to the moment a
probe viewer saw its event. The event carries the stream's sequence number, the ack maps
the gifter's id to that sequence, and ``DeliveryClock`` joins the two whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from client_demo.wire import subprotocols
from loadtest.histogram import Histogram
from loadtest.wsclient import OP_TEXT, WsClientProtocol, open_connection

# Refusals worth retrying with the same id: the gift may still go through.
RETRY_CODES = frozenset({"rate_limited", "unavailable"})
ATTEMPTS_MAX = 8
ANSWER_TIMEOUT_S = 5.0
"""A gift with no answer after this long is sent again with the same id (unknown outcome)."""


class DeliveryClock:
    """Send times by (stream, seq), learned from acks; latencies of events probes saw."""

    def __init__(self) -> None:
        self.sent_at: dict[str, float] = {}
        self._by_seq: dict[tuple[str, int], float] = {}
        self._seen_early: dict[tuple[str, int], list[float]] = {}
        self.latency = Histogram()

    def sent(self, client_id: str, at: float) -> None:
        self.sent_at.setdefault(client_id, at)

    def acked(self, client_id: str, stream_id: str, seq: int) -> None:
        at = self.sent_at.pop(client_id, None)
        if at is None:
            return
        key = (stream_id, seq)
        self._by_seq[key] = at
        for seen in self._seen_early.pop(key, ()):
            self.latency.record(max(seen - at, 0.0))

    def seen(self, stream_id: str, seq: int, at: float) -> None:
        key = (stream_id, seq)
        sent = self._by_seq.get(key)
        if sent is not None:
            self.latency.record(at - sent)
        else:
            self._seen_early.setdefault(key, []).append(at)


@dataclass(slots=True)
class Totals:
    """Counters shared by every connection of a run."""

    frames: int = 0
    events: int = 0
    lag_notices: int = 0
    sent: int = 0
    retries: int = 0
    acked: int = 0
    replayed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    errors_without_id: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    ack_latency: Histogram = field(default_factory=Histogram)
    connect_time: Histogram = field(default_factory=Histogram)
    connect_failures: Counter[str] = field(default_factory=Counter)
    max_seq: dict[str, int] = field(default_factory=dict)


def protocols(token: str) -> list[str]:
    return subprotocols(token, "json")


class Viewer:
    """Counts gift events cheaply; a probe viewer also decodes them and checks the order."""

    def __init__(
        self,
        url: str,
        stream_id: str,
        token: str,
        totals: Totals,
        clock: DeliveryClock,
        *,
        probe: bool,
    ) -> None:
        self.url = url
        self.stream_id = stream_id
        self.token = token
        self.totals = totals
        self.clock = clock
        self.probe = probe
        self.proto: WsClientProtocol | None = None
        self.welcome_seq: int | None = None
        self.seqs: list[int] = []
        self.duplicates = 0

    async def connect(self, source_ip: str | None) -> None:
        self.proto, seconds = await open_connection(
            self.url, self.on_frame, protocols=protocols(self.token), source_ip=source_ip
        )
        self.totals.connect_time.record(seconds)

    def on_frame(self, opcode: int, payload: bytes) -> None:
        totals = self.totals
        totals.frames += 1
        if opcode != OP_TEXT:
            return
        if self.welcome_seq is None:
            doc = orjson.loads(payload)
            if doc.get("type") == "welcome":
                self.welcome_seq = int(doc["last_seq"])
                return
        if b'"type":"gift' not in payload:
            if b'"type":"lag"' in payload:
                totals.lag_notices += 1
            return
        if not self.probe:
            totals.events += payload.count(b'"seq":')
            return
        now = time.perf_counter()
        doc = orjson.loads(payload)
        events = doc["events"] if doc["type"] == "gifts" else [doc]
        totals.events += len(events)
        for event in events:
            seq = event["seq"]
            if self.seqs and seq <= self.seqs[-1]:
                self.duplicates += 1
            self.seqs.append(seq)
            self.clock.seen(self.stream_id, seq, now)

    def complete(self, last_seq: int) -> bool:
        """Saw every event after its welcome up to ``last_seq``, in order, once."""
        start = (self.welcome_seq or 0) + 1
        return (
            not self.duplicates
            and self.seqs == list(range(start, start + len(self.seqs)))
            and ((self.seqs[-1] if self.seqs else start - 1) >= last_seq)
        )

    def close(self) -> None:
        if self.proto is not None:
            self.proto.close()


class GiftBudget:
    """The run's bound on gifts: taken one at a time by every gifter."""

    def __init__(self, gifts_max: int, deadline: float) -> None:
        self.left = gifts_max
        self.deadline = deadline

    def take(self) -> bool:
        if self.left <= 0 or time.monotonic() >= self.deadline:
            return False
        self.left -= 1
        return True


class Gifter:
    """Sends gifts at ``rate_per_s`` (0: as fast as its window allows), ``window`` at once."""

    def __init__(
        self,
        url: str,
        user_id: str,
        stream_id: str,
        token: str,
        totals: Totals,
        clock: DeliveryClock,
        *,
        gift: str,
        rate_per_s: float,
        window: int,
        source_ip: str | None,
    ) -> None:
        self.url = url
        self.user_id = user_id
        self.stream_id = stream_id
        self.token = token
        self.totals = totals
        self.clock = clock
        self.gift = gift
        self.rate_per_s = rate_per_s
        self.window = window
        self.source_ip = source_ip
        self.proto: WsClientProtocol | None = None
        self.in_flight: dict[str, tuple[float, int]] = {}
        """client id -> (last send time, attempts)"""
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._next = 0

    async def connect(self) -> None:
        self.proto, seconds = await open_connection(
            self.url, self.on_frame, protocols=protocols(self.token), source_ip=self.source_ip
        )
        self.totals.connect_time.record(seconds)

    def _send(self, client_id: str, attempts: int) -> None:
        now = time.perf_counter()
        self.in_flight[client_id] = (now, attempts)
        if self.proto is not None:
            self.proto.send_text(
                orjson.dumps({"type": "send_gift", "id": client_id, "gift": self.gift, "count": 1})
            )

    async def run(self, budget: GiftBudget) -> None:
        interval = 1.0 / self.rate_per_s if self.rate_per_s > 0 else 0.0
        next_at = time.monotonic()
        while True:
            while len(self.in_flight) >= self.window:
                self._room.clear()
                await self._room.wait()
            if not budget.take():
                break
            client_id = f"{self.user_id}-{self._next}"
            self._next += 1
            self.clock.sent(client_id, time.perf_counter())
            self.totals.sent += 1
            self._send(client_id, 1)
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    next_at = time.monotonic()  # behind: do not burst to catch up
            else:
                await asyncio.sleep(0)

    async def drain(self, timeout_s: float) -> None:
        """Wait for every in-flight gift to be answered (resends continue meanwhile)."""
        if not self.in_flight:
            return
        self._idle.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()

    async def watch(self) -> None:
        """Resend gifts without an answer, and reconnect when the socket closes."""
        while True:
            await asyncio.sleep(0.5)
            if self.proto is None or self.proto.closed.done():
                await self._reconnect()
                continue
            now = time.perf_counter()
            for client_id, (at, attempts) in list(self.in_flight.items()):
                if now - at > ANSWER_TIMEOUT_S:
                    self._retry(client_id, attempts, "no_answer", 0.0)

    async def _reconnect(self) -> None:
        if self.proto is not None and self.proto.close_code is not None:
            self.totals.closes[str(self.proto.close_code)] += 1
        self.totals.reconnects += 1
        try:
            await self.connect()
        except (OSError, TimeoutError, ConnectionError) as e:
            self.totals.connect_failures[type(e).__name__] += 1
            await asyncio.sleep(0.5)
            return
        for client_id, (_, attempts) in list(self.in_flight.items()):
            self._retry(client_id, attempts, "reconnected", 0.0)

    def _retry(self, client_id: str, attempts: int, code: str, delay_s: float) -> None:
        if attempts >= ATTEMPTS_MAX:
            self._settle(client_id)
            self.totals.refused[code] += 1
            return
        self.totals.retries += 1
        self.in_flight[client_id] = (time.perf_counter() + delay_s, attempts + 1)
        asyncio.get_running_loop().call_later(delay_s, self._resend, client_id, attempts + 1)

    def _resend(self, client_id: str, attempts: int) -> None:
        if client_id in self.in_flight:
            self._send(client_id, attempts)

    def _settle(self, client_id: str) -> tuple[float, int] | None:
        entry = self.in_flight.pop(client_id, None)
        if len(self.in_flight) < self.window:
            self._room.set()
        if not self.in_flight:
            self._idle.set()
        return entry

    def on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode != OP_TEXT:
            return
        if b'"type":"gift_ack"' in payload:
            self._ack(orjson.loads(payload))
        elif b'"type":"error"' in payload:
            self._error(orjson.loads(payload))

    def _ack(self, ack: dict[str, Any]) -> None:
        client_id = ack["id"]
        entry = self._settle(client_id)
        if entry is None:
            return  # an answer to a resend of a gift already settled
        totals = self.totals
        totals.acked += 1
        totals.replayed += bool(ack["replayed"])
        first = self.clock.sent_at.get(client_id)
        totals.ack_latency.record(time.perf_counter() - (first if first else entry[0]))
        seq = int(ack["seq"])
        self.clock.acked(client_id, self.stream_id, seq)
        if seq > totals.max_seq.get(self.stream_id, 0):
            totals.max_seq[self.stream_id] = seq

    def _error(self, error: dict[str, Any]) -> None:
        code = str(error.get("code"))
        client_id = error.get("id")
        if client_id is None or client_id not in self.in_flight:
            self.totals.errors_without_id[code] += 1
            return
        if code in RETRY_CODES:
            _, attempts = self.in_flight[client_id]
            detail = error.get("detail") or {}
            delay_ms = detail.get("retry_after_ms", 100) if isinstance(detail, dict) else 100
            self._retry(client_id, attempts, code, min(float(delay_ms), 2000.0) / 1000)
            return
        self._settle(client_id)
        self.clock.sent_at.pop(client_id, None)
        self.totals.refused[code] += 1

    def close(self) -> None:
        if self.proto is not None:
            self.proto.close()
