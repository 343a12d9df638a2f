"""The archiver: every committed entry of ``{ledger}:log`` into PostgreSQL, exactly once.

Guarantees, as a port would state them:

* **Order.** Entries are recorded in batches in log order; a batch is one transaction.
  Entries a crashed archiver had read but not acknowledged are claimed (``XAUTOCLAIM``)
  and recorded before new ones.
* **Delivery.** Redis delivers each entry to the consumer group at least once; the record
  keeps it exactly once, keyed by its entry id (a second insert is a replay). ``XACK``
  comes only after the database commit, so a crash anywhere loses nothing: what was
  committed and not acknowledged is delivered again and skipped as a replay.
* **Trimming.** The log is trimmed only below the oldest entry that is not both committed
  and acknowledged (the oldest pending one, else the last delivered): every trimmed entry
  is in PostgreSQL, and Redis' memory for the log stays flat while the archiver keeps up.
* **After a data loss.** A Redis that comes back without the group gets it again from the
  start of whatever log it has; a Redis that lost acknowledged writes and reused an id for
  another transfer stops the archiver with ``RecordError`` (``store.record_transfers``).
  So does an entry with no posting rule: money is never skipped to keep going.

One archiver is active per log (a ``Lease`` in Redis); the others stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.ledger.keys import Keys
from server.record.connection import RecordPool
from server.record.lease import Lease
from server.record.postings import RecordError, Transfer, to_transfer
from server.record.store import record_transfers

log = logging.getLogger("giftwire.record")

GROUP = "archiver"
"""The consumer group of ``{ledger}:log`` that only the archiver reads."""

Rows = list[tuple[bytes, dict[bytes, bytes]]]
LEASE_TTL_MS = 10_000
"""How long a silent archiver (dead, or cut off from Redis) keeps the lease."""


@dataclass(frozen=True, slots=True)
class ArchiverConfig:
    batch_max: int = 1_000
    """Most entries recorded in one transaction."""
    block_ms: int = 500
    """How long one read waits for new entries."""
    claim_idle_ms: int = 30_000
    """An entry pending this long for another consumer is claimed (its archiver died)."""
    lease_ttl_ms: int = LEASE_TTL_MS
    trim_interval_s: float = 1.0
    retry_s_max: float = 5.0


@dataclass(slots=True)
class ArchiverStats:
    recorded: int = 0
    replayed: int = 0
    claimed: int = 0
    trimmed: int = 0
    batches: int = 0


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{time.monotonic_ns() % 1_000_000}"


class Archiver:
    def __init__(
        self,
        redis: Redis,
        pool: RecordPool,
        keys: Keys,
        *,
        config: ArchiverConfig | None = None,
        consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.log_key = keys.ledger()
        self.config = config or ArchiverConfig()
        self.consumer = consumer or consumer_name()
        self.lease = Lease(
            redis, keys.archiver_lease(), self.consumer, ttl_ms=self.config.lease_ttl_ms
        )
        self.stats = ArchiverStats()
        self._next_trim = 0.0

    async def ensure_group(self) -> None:
        """Create the group at the start of the log (so every entry is archived) if missing."""
        try:
            await self.redis.xgroup_create(self.log_key, GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def take_over(self) -> None:
        """Having just become the active archiver: claim everything pending for consumers
        that are gone (holding the lease, there is no live one) and forget them."""
        await self.ensure_group()
        await self._claim(min_idle_ms=0, everything=True)
        consumers = await self.redis.xinfo_consumers(self.log_key, GROUP)
        for consumer in consumers:
            name = consumer["name"].decode()
            if name != self.consumer and int(consumer["pending"]) == 0:
                await self.redis.xgroup_delconsumer(self.log_key, GROUP, name)

    async def step(self) -> int:
        """One round: entries left by a dead consumer, else new ones; record, ack, trim.
        Returns how many entries it handled."""
        try:
            handled = await self._claim(min_idle_ms=self.config.claim_idle_ms, everything=False)
            if not handled:
                handled = await self._read_new()
        except redis_errors.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("the archiver's consumer group is gone (Redis lost data?): recreating")
            await self.ensure_group()
            return 0
        if time.monotonic() >= self._next_trim:
            await self.trim()
            self._next_trim = time.monotonic() + self.config.trim_interval_s
        return handled

    async def drain(self) -> int:
        """Archive until nothing is left, then trim: for ``giftwire archive --once`` and tests."""
        await self.take_over()
        total = 0
        while handled := await self.step():
            total += handled
        await self.trim()
        return total

    async def _claim(self, *, min_idle_ms: int, everything: bool) -> int:
        start, handled = "0-0", 0
        while True:
            reply = await self.redis.xautoclaim(
                self.log_key, GROUP, self.consumer, min_idle_ms, start, count=self.config.batch_max
            )
            start = reply[0].decode()
            rows = cast(Rows, reply[1])
            if len(reply) > 2 and reply[2]:
                # Only a trim below our own cut, or a hand-made XDEL, can remove a pending
                # entry; Redis has already dropped it from the group.
                log.error("pending ledger entries vanished before archiving: %s", reply[2])
            if rows:
                await self._record(rows)
                self.stats.claimed += len(rows)
                handled += len(rows)
            if start == "0-0" or not everything:
                return handled

    async def _read_new(self) -> int:
        reply: Any = await self.redis.xreadgroup(
            GROUP,
            self.consumer,
            {self.log_key: ">"},
            count=self.config.batch_max,
            block=self.config.block_ms,
        )
        if not reply:
            return 0
        rows = cast(Rows, reply[0][1])
        await self._record(rows)
        return len(rows)

    async def _record(self, rows: Rows) -> None:
        transfers: list[Transfer] = [
            to_transfer(entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})
            for entry_id, fields in rows
        ]
        async with self.pool.connection() as conn:
            new = await record_transfers(conn, transfers)
        # Only now, with the batch committed, may Redis forget it was delivered.
        await self.redis.xack(self.log_key, GROUP, *(entry_id for entry_id, _ in rows))
        self.stats.recorded += new
        self.stats.replayed += len(rows) - new
        self.stats.batches += 1

    async def safe_trim_id(self) -> str | None:
        """The id below which every entry is committed in PostgreSQL and acknowledged."""
        groups = await self.redis.xinfo_groups(self.log_key)
        ours = next((g for g in groups if g["name"] == GROUP.encode()), None)
        if ours is None:
            return None
        if int(ours["pending"]):
            pending = await self.redis.xpending(self.log_key, GROUP)
            if pending["pending"]:
                return cast(bytes, pending["min"]).decode()
        return cast(bytes, ours["last-delivered-id"]).decode()

    async def trim(self) -> int:
        """Trim the log below ``safe_trim_id`` (approximately: whole nodes, cheaply)."""
        cut = await self.safe_trim_id()
        if cut is None or cut == "0-0":
            return 0
        removed = int(await self.redis.xtrim(self.log_key, minid=cut, approximate=True))
        self.stats.trimmed += removed
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        """Archive until ``stop`` is set: hold the lease, step, retry failures with backoff."""
        active, retry_s, renew_at = False, 0.2, 0.0
        renew_every_s = self.config.lease_ttl_ms / 3000
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() >= renew_at:
                        was_active, active = active, await self.lease.acquire_or_renew()
                        renew_at = time.monotonic() + renew_every_s
                        if active and not was_active:
                            log.info("archiver %s is active", self.consumer)
                            await self.take_over()
                    if not active:
                        await _wait(stop, renew_every_s)
                        continue
                    await self.step()
                    retry_s = 0.2
                except (redis_errors.RedisError, psycopg.Error, OSError, RecordError) as e:
                    log.error("archiver: %s: %s; retrying in %.1f s", type(e).__name__, e, retry_s)
                    active, renew_at = False, 0.0
                    await _wait(stop, retry_s)
                    retry_s = min(retry_s * 2, self.config.retry_s_max)
        finally:
            if active:
                with contextlib.suppress(redis_errors.RedisError, OSError):
                    await self.lease.release()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
