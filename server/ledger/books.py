"""The books beyond their sums: ids, receipts, sequences and prices against the ledger log.

Sums can agree while the books are wrong: a gift logged twice and its sender's coins
debited twice still add up. So ``reconcile`` also hands every log entry to a ``LogAudit``,
which checks, after the whole log was read:

* each gift client id appears once per sender, each payment id once, each refund id once
  per payment, each cash-out id once per creator;
* every gift's coins are its unit price × count, that price is the one its catalog version
  lists (when the entry names the version it was charged under), and the refunds of a
  payment (with what top_up withheld) never pass its coins;
* every stored receipt or record (gift receipts, payments, refunds, cash-outs) matches its
  log entry, every log entry younger than the receipt window still has its gift receipt
  (an older one expired; a younger one was evicted or deleted), and every payment, refund
  and cash-out in the log has its record (they never expire);
* each stream's gifts are numbered 1, 2, 3, … in the log (a stream id that starts over
  starts again at 1), the stream hash's ``seq`` is the last of them, and every event in
  the feed is the log's gift of that number.

It only reads, and it keeps one small tuple per log entry in memory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from server.domain.catalog import CatalogError, parse_catalog
from server.ledger.keys import Keys
from server.ledger.runner import StreamRows

_SCAN_COUNT = 1_000
_TTL_MARGIN_MS = 2_000
"""A receipt set with ``EX`` may go a little before ``ts + ttl``: do not call that evicted."""


@dataclass(frozen=True, slots=True)
class _Gift:
    entry_id: str
    sender: str
    client_id: str
    stream: str
    gift: str
    count: int
    coins: int
    diamonds: int
    seq: int


@dataclass(slots=True)
class LogAudit:
    """Fed each log entry in order (``see``); ``finish`` compares them with what Redis holds."""

    keys: Keys
    receipt_ttl_s: int
    problems: list[str] = field(default_factory=list)
    gifts: dict[tuple[str, str], _Gift] = field(default_factory=dict)
    gifts_by_id: dict[str, _Gift] = field(default_factory=dict)
    top_ups: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    refunds: dict[tuple[str, str], dict[bytes, bytes]] = field(default_factory=dict)
    cash_outs: dict[tuple[str, str], dict[bytes, bytes]] = field(default_factory=dict)
    refunded: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    early: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    charged: defaultdict[tuple[int, str], list[tuple[str, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """(catalog version, gift id) -> (entry id, unit price charged) of each gift."""
    last_seq: dict[str, int] = field(default_factory=dict)
    last_gift_ms: dict[str, int] = field(default_factory=dict)
    restarts: defaultdict[str, list[tuple[str, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def see(self, entry_id: str, entry: dict[bytes, bytes]) -> None:
        kind = entry.get(b"type")
        try:
            if kind == b"gift":
                self._gift(entry_id, entry)
            elif kind == b"top_up":
                self._once(self.top_ups, _s(entry, b"payment"), entry_id, entry, "payment")
            elif kind == b"refund":
                payment = _s(entry, b"payment")
                key = (payment, entry.get(b"refund_id", b"").decode())
                self._once(self.refunds, key, entry_id, entry, "refund")
                self.refunded[payment] += int(entry.get(b"refunded", entry[b"coins"]))
                if entry.get(b"before_payment") == b"1":
                    self.early[payment] += int(entry[b"coins"])
            elif kind == b"cash_out":
                key = (_s(entry, b"from"), _s(entry, b"client_id"))
                self._once(self.cash_outs, key, entry_id, entry, "cash-out")
        except (KeyError, ValueError) as e:
            self.problems.append(f"{entry_id}: {kind!r} entry is malformed ({e!r})")

    def _once(
        self,
        seen: dict[Any, dict[bytes, bytes]],
        key: object,
        entry_id: str,
        entry: dict[bytes, bytes],
        what: str,
    ) -> None:
        if key in seen:
            first = seen[key][b"__id"].decode()
            self.problems.append(f"{entry_id}: {what} {key} is in the log twice (first {first})")
            return
        seen[key] = {**entry, b"__id": entry_id.encode()}

    def _gift(self, entry_id: str, entry: dict[bytes, bytes]) -> None:
        g = _Gift(
            entry_id,
            _s(entry, b"from"),
            _s(entry, b"client_id"),
            _s(entry, b"stream"),
            _s(entry, b"gift"),
            int(entry[b"count"]),
            int(entry[b"coins"]),
            int(entry[b"diamonds"]),
            int(entry[b"seq"]),
        )
        # A client id may send a new gift once its receipt has expired: only a second use
        # within the receipt window is a gift applied twice.
        first = self.gifts.get((g.sender, g.client_id))
        if first and _entry_ms(entry_id) - _entry_ms(first.entry_id) < self._window_ms():
            self.problems.append(
                f"{entry_id}: gift {g.client_id} of {g.sender} is in the log twice "
                f"(first {first.entry_id})"
            )
        else:
            self.gifts[(g.sender, g.client_id)] = g
        self.gifts_by_id[entry_id] = g
        version = int(entry.get(b"catalog_version", 0))
        if version and b"price" in entry:
            self.charged[(version, g.gift)].append((entry_id, int(entry[b"price"])))
        if b"price" in entry and int(entry[b"price"]) * g.count != g.coins:
            self.problems.append(
                f"{entry_id}: gift charged {g.coins} coins for {g.count} x {g.gift} "
                f"at {int(entry[b'price'])}"
            )
        previous = self.last_seq.get(g.stream, 0)
        if g.seq == 1 and previous:
            # A stream id started over, or seq 1 was used twice: finish tells which.
            self.restarts[g.stream].append((entry_id, self.last_gift_ms[g.stream]))
        elif g.seq != previous + 1:
            self.problems.append(
                f"{entry_id}: stream {g.stream} gift seq {g.seq} follows seq {previous} "
                "(reused or skipped)"
            )
        self.last_seq[g.stream] = g.seq
        self.last_gift_ms[g.stream] = _entry_ms(entry_id)

    def _window_ms(self) -> int:
        return self.receipt_ttl_s * 1000 - _TTL_MARGIN_MS

    async def finish(self, redis: Redis) -> None:
        now_ms = await _now_ms(redis)
        await self._check_gift_receipts(redis, now_ms)
        await self._check_payments(redis)
        await self._check_refunds(redis)
        await self._check_cash_outs(redis)
        await self._check_streams(redis)
        await self._check_prices(redis)

    async def _check_prices(self, redis: Redis) -> None:
        """Each gift's unit price is the one its catalog version lists (``{catalog}:versions``
        keeps every version's document, never rewritten)."""
        prices: dict[int, dict[str, int] | None] = {}
        for (version, gift_id), charges in self.charged.items():
            if version not in prices:
                raw = cast(
                    bytes | None, await redis.hget(self.keys.catalog_versions(), str(version))
                )
                try:
                    prices[version] = parse_catalog(raw).prices() if raw else None
                except CatalogError:
                    prices[version] = None
                if prices[version] is None:
                    self.problems.append(f"catalog version {version}: not in Redis, or unreadable")
            listed = prices[version]
            if listed is None:
                continue
            for entry_id, price in charges:
                if listed.get(gift_id) != price:
                    self.problems.append(
                        f"{entry_id}: {gift_id} charged at {price}, catalog version {version} "
                        f"lists {listed.get(gift_id)}"
                    )

    async def _check_gift_receipts(self, redis: Redis, now_ms: int) -> None:
        found: set[str] = set()
        async for key, raw in _values(redis, self.keys.gift_receipt_pattern()):
            if raw is None:
                continue  # expired between SCAN and GET
            receipt = _receipt(raw.partition(b"\n")[2])
            g = self.gifts_by_id.get(str(receipt.get("transfer_id")))
            if g is None or key.decode() != self.keys.gift_receipt(g.sender, g.client_id):
                self.problems.append(f"receipt {key.decode()}: no such gift in the log")
                continue
            found.add(g.entry_id)
            names = ("stream_id", "gift_id", "count", "coins", "diamonds", "seq")
            stored = tuple(receipt.get(n) for n in names)
            if stored != (g.stream, g.gift, g.count, g.coins, g.diamonds, g.seq):
                self.problems.append(
                    f"receipt {key.decode()}: does not match log entry {g.entry_id}"
                )
        for entry_id, g in self.gifts_by_id.items():
            if entry_id not in found and now_ms - _entry_ms(entry_id) < self._window_ms():
                self.problems.append(
                    f"{entry_id}: the receipt of gift {g.client_id} of {g.sender} is gone before "
                    "its window ended (evicted or deleted): a retry would send it again"
                )

    async def _check_payments(self, redis: Redis) -> None:
        # Payment ids by record key: the log's top-ups and early refunds name them all.
        by_key = {self.keys.payment(p): p for p in (*self.top_ups, *self.early)}
        found: set[str] = set()
        async for raw_key in redis.scan_iter(match=self.keys.payment_pattern(), count=_SCAN_COUNT):
            key = raw_key.decode()
            record = cast(dict[bytes, bytes], await redis.hgetall(raw_key))
            payment = by_key.get(key)
            if payment is None:
                self.problems.append(f"payment record {key}: no such payment in the log")
                continue
            early = self.early.get(payment, 0)
            if int(record.get(b"early", 0)) != early:
                self.problems.append(
                    f"payment {payment}: record says refunds before it asked "
                    f"{int(record.get(b'early', 0))}, the log says {early}"
                )
            entry = self.top_ups.get(payment)
            if entry is None:
                if record.get(b"state") != b"awaiting_payment":
                    self.problems.append(f"payment {payment}: record says paid, the log does not")
                continue
            found.add(payment)
            receipt = _receipt(record.get(b"receipt", b""))
            names = {"transfer_id": b"__id", "coins": b"coins", "credited": b"credited"}
            if _mismatch(receipt, entry, names) or receipt.get("user_id") != _s(entry, b"to"):
                self.problems.append(f"payment {payment}: record does not match the log")
            coins = int(entry[b"coins"])
            taken = self.refunded[payment] + int(entry.get(b"withheld", 0))
            if taken > coins:
                self.problems.append(f"payment {payment}: {taken} refunded of {coins} paid")
            if b"refunded" in record and int(record[b"refunded"]) != taken:
                self.problems.append(
                    f"payment {payment}: record says {int(record[b'refunded'])} refunded, "
                    f"the log {taken}"
                )
        for payment in self.top_ups.keys() - found:
            self.problems.append(f"payment {payment}: in the log, but its record is gone")

    async def _check_refunds(self, redis: Redis) -> None:
        found: set[tuple[str, str]] = set()
        async for key in redis.scan_iter(match=self.keys.refund_pattern(), count=_SCAN_COUNT):
            receipt = _receipt(cast(bytes, await redis.hget(key, "receipt")) or b"")
            ref = (str(receipt.get("payment_id")), str(receipt.get("refund_id")))
            entry = self.refunds.get(ref)
            if entry is None or key.decode() != self.keys.refund(*ref):
                self.problems.append(f"refund record {key.decode()}: no such refund in the log")
                continue
            found.add(ref)
            if _mismatch(
                receipt,
                entry,
                {
                    "transfer_id": b"__id",
                    "coins": b"coins",
                    "refunded": b"refunded",
                    "clawed": b"clawed",
                },
            ):
                self.problems.append(f"refund {ref}: record does not match the log")
        for ref in self.refunds.keys() - found:
            if ref[1]:  # refunds before refund ids kept their receipt on the payment
                self.problems.append(f"refund {ref}: in the log, but its record is gone")

    async def _check_cash_outs(self, redis: Redis) -> None:
        found: set[tuple[str, str]] = set()
        async for key in redis.scan_iter(match=self.keys.cashout_pattern(), count=_SCAN_COUNT):
            receipt = _receipt(cast(bytes, await redis.hget(key, "receipt")) or b"")
            ref = (str(receipt.get("user_id")), str(receipt.get("client_id")))
            entry = self.cash_outs.get(ref)
            if entry is None or key.decode() != self.keys.cashout(*ref):
                self.problems.append(f"cash-out record {key.decode()}: no such cash-out in the log")
                continue
            found.add(ref)
            if _mismatch(
                receipt, entry, {"transfer_id": b"__id", "diamonds": b"diamonds", "cents": b"cents"}
            ):
                self.problems.append(f"cash-out {ref}: record does not match the log")
        for ref in self.cash_outs.keys() - found:
            self.problems.append(f"cash-out {ref}: in the log, but its record is gone")

    async def _check_streams(self, redis: Redis) -> None:
        for stream, last in self.last_seq.items():
            held, started_at = cast(
                list[bytes | None],
                await redis.hmget(self.keys.stream(stream), ["seq", "started_at"]),
            )
            if held is not None and int(held) != last:
                self.problems.append(
                    f"stream {stream}: holds seq {int(held)}, the log's last gift is seq {last}"
                )
            for entry_id, previous_ms in self.restarts.get(stream, []):
                # The gift before this seq 1 came after the stream (as it is now) started:
                # both belong to the same life, which numbered two gifts 1.
                if started_at is not None and previous_ms >= int(started_at):
                    self.problems.append(
                        f"{entry_id}: stream {stream} gift seq 1 again within one stream "
                        "(reused seq)"
                    )
            await self._check_feed(redis, stream, last)

    async def _check_feed(self, redis: Redis, stream: str, last: int) -> None:
        rows = cast(StreamRows, await redis.xrange(self.keys.feed(stream)))
        previous = 0
        for feed_id, fields in rows:
            event = _receipt(fields.get(b"e", b""))
            g = self.gifts_by_id.get(str(event.get("transfer_id")))
            seq = int(feed_id.split(b"-")[0])
            if g is None or (g.stream, g.seq, g.coins) != (stream, seq, event.get("coins")):
                self.problems.append(
                    f"stream {stream}: feed event {seq} is not the log's gift {seq}"
                )
            if previous and seq != previous + 1:
                self.problems.append(f"stream {stream}: the feed skips from {previous} to {seq}")
            previous = seq
        if previous and previous != last:
            self.problems.append(
                f"stream {stream}: the feed ends at seq {previous}, the log's last gift is "
                f"seq {last}"
            )


async def _values(redis: Redis, pattern: str) -> AsyncIterator[tuple[bytes, bytes | None]]:
    """Each string key matching ``pattern`` with its value, read a SCAN page at a time."""
    page: list[bytes] = []
    keys = redis.scan_iter(match=pattern, count=_SCAN_COUNT)
    done = False
    while not done:
        try:
            page.append(await anext(keys))
        except StopAsyncIteration:
            done = True
        if page and (done or len(page) == _SCAN_COUNT):
            values = cast(list[bytes | None], await redis.mget(page))
            for pair in zip(page, values, strict=True):
                yield pair
            page = []


def _s(entry: dict[bytes, bytes], name: bytes) -> str:
    return entry[name].decode()


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


def _receipt(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _mismatch(receipt: dict[str, Any], entry: dict[bytes, bytes], names: dict[str, bytes]) -> bool:
    """True when any receipt field differs from its log field (compared as text)."""
    for name, logged in names.items():
        if logged not in entry:
            continue
        if str(receipt.get(name)) != entry[logged].decode():
            return True
    return False


async def _now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
