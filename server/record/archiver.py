"""The archiver: every committed entry of the ledger's logs into PostgreSQL, exactly once.

Single node, one log: ``{ledger}:log``. Cluster mode: one log per hash slot, ``{~N}:log``
(``server/ledger/cluster_keys.py``), each with its own consumer group and trim, found by a
scan of every primary (``cluster_logs``); the record keys each transfer by its log's slot
and entry id, as two slots may give two transfers the same id.

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

One archiver is active (a ``Lease`` in Redis); the others stand by. With several logs it
reads each in turn without blocking, and waits ``block_ms`` once a round found nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from server.ledger.keys import Keys
from server.record.connection import RecordPool
from server.record.lease import Lease, Locate
from server.record.postings import SINGLE_NODE_LOG, RecordError, Transfer, to_transfer
from server.record.store import record_transfers

log = logging.getLogger("giftwire.record")

GROUP = "archiver"
"""The consumer group of ``{ledger}:log`` that only the archiver reads."""

Rows = list[tuple[bytes, dict[bytes, bytes]]]
LEASE_TTL_MS = 10_000
"""How long a silent archiver (dead, or cut off from Redis) keeps the lease."""


@dataclass(frozen=True, slots=True)
class LedgerLog:
    """One ledger log: its key and the slot it is recorded under (``SINGLE_NODE_LOG``)."""

    key: str
    slot: int = SINGLE_NODE_LOG


LogClient = Redis | RedisCluster
"""A single node's client, or a cluster's (every log command names one key)."""

Discover = Callable[[], Awaitable[list[LedgerLog]]]
"""Finds the logs to archive (cluster mode: they appear as slots get their first transfer)."""


@dataclass(frozen=True, slots=True)
class ArchiverConfig:
    batch_max: int = 1_000
    """Most entries recorded in one transaction."""
    block_ms: int = 500
    """How long one read waits for new entries."""
    claim_idle_ms: int = 30_000
    """An entry pending this long for another consumer is claimed (its archiver died)."""
    claim_interval_s: float = 1.0
    """How often the logs are looked at for such entries (taking over claims at once)."""
    linger_ms: int = 200
    """After a batch smaller than ``batch_max``, wait this long before the next read: under
    a steady load the batches grow (fewer XREADGROUP/XACK round trips and transactions per
    transfer, for Redis and for the archiver) at the price of this much more lag."""
    lease_ttl_ms: int = LEASE_TTL_MS
    trim_interval_s: float = 1.0
    retry_s_max: float = 5.0
    discover_interval_s: float = 5.0
    """How often the logs are looked for again (cluster mode)."""


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
        redis: LogClient,
        pool: RecordPool,
        keys: Keys,
        *,
        config: ArchiverConfig | None = None,
        consumer: str | None = None,
        logs: Sequence[LedgerLog] | None = None,
        lease_key: str | None = None,
        lease_redis: Redis | None = None,
        lease_locate: Locate | None = None,
        discover: Discover | None = None,
    ) -> None:
        """``redis``: a client of the single node, or a ``RedisCluster`` (each command here
        names one key, so it routes by it). ``logs`` (default: ``{ledger}:log``) and, in
        cluster mode, ``discover`` to find them again now and then, and ``lease_redis``, a
        client of the node holding ``lease_key`` (the lease uses WATCH, which a cluster
        client's pipelines do not), with ``lease_locate`` to find that node again after a
        failover."""
        self.redis: Any = redis
        self.pool = pool
        self.logs = list(logs) if logs is not None else [LedgerLog(keys.ledger())]
        self.discover = discover
        self.config = config or ArchiverConfig()
        self.consumer = consumer or consumer_name()
        if lease_redis is None and not isinstance(redis, Redis):
            raise TypeError("a cluster's archiver needs lease_redis")
        self.lease = Lease(
            lease_redis or cast(Redis, redis), lease_key or keys.archiver_lease(), self.consumer,
            ttl_ms=self.config.lease_ttl_ms, locate=lease_locate,
        )  # fmt: skip
        self.stats = ArchiverStats()
        self._next_trim = 0.0
        self._next_discover = 0.0
        self._next_claim = 0.0

    @property
    def log_key(self) -> str:
        """The first log's key (the only one on a single node)."""
        return self.logs[0].key

    async def refresh_logs(self, *, force: bool = False) -> None:
        """Look for logs again (``discover``) and take over each new one."""
        if self.discover is None or (not force and time.monotonic() < self._next_discover):
            return
        self._next_discover = time.monotonic() + self.config.discover_interval_s
        known = {log.key for log in self.logs}
        for found in await self.discover():
            if found.key not in known:
                self.logs.append(found)
                await self._take_over(found)

    async def ensure_group(self, ledger_log: LedgerLog | None = None) -> None:
        """Create the group at the start of the log (so every entry is archived) if missing."""
        key = (ledger_log or self.logs[0]).key
        try:
            await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def take_over(self) -> None:
        """Having just become the active archiver: for every log, claim everything pending
        for consumers that are gone (holding the lease, there is no live one), forget them."""
        await self.refresh_logs(force=True)
        for ledger_log in self.logs:
            await self._take_over(ledger_log)

    async def _take_over(self, ledger_log: LedgerLog) -> None:
        await self.ensure_group(ledger_log)
        await self._claim(ledger_log, min_idle_ms=0, everything=True)
        consumers = await self.redis.xinfo_consumers(ledger_log.key, GROUP)
        for consumer in consumers:
            name = consumer["name"].decode()
            if name != self.consumer and int(consumer["pending"]) == 0:
                await self.redis.xgroup_delconsumer(ledger_log.key, GROUP, name)

    async def step(self) -> int:
        """One round over every log: entries left by a dead consumer, else new ones; record,
        ack, trim. Returns how many entries it handled."""
        await self.refresh_logs()
        handled = 0
        block = self.config.block_ms if len(self.logs) == 1 else None
        claim = time.monotonic() >= self._next_claim
        if claim:
            self._next_claim = time.monotonic() + self.config.claim_interval_s
        for ledger_log in list(self.logs):
            handled += await self._step(ledger_log, block, claim=claim)
        if time.monotonic() >= self._next_trim:
            await self.trim()
            self._next_trim = time.monotonic() + self.config.trim_interval_s
        return handled

    async def _step(self, ledger_log: LedgerLog, block: int | None, *, claim: bool) -> int:
        try:
            handled = 0
            if claim:
                handled = await self._claim(
                    ledger_log, min_idle_ms=self.config.claim_idle_ms, everything=False
                )
            if not handled:
                handled = await self._read_new(ledger_log, block)
        except redis_errors.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("the archiver's consumer group is gone (Redis lost data?): recreating")
            await self.ensure_group(ledger_log)
            return 0
        return handled

    async def drain(self) -> int:
        """Archive until nothing is left, then trim: for ``giftwire archive --once`` and tests."""
        await self.take_over()
        total = 0
        while handled := await self.step():
            total += handled
        await self.trim()
        return total

    async def _claim(self, ledger_log: LedgerLog, *, min_idle_ms: int, everything: bool) -> int:
        start, handled = "0-0", 0
        while True:
            reply = await self.redis.xautoclaim(
                ledger_log.key, GROUP, self.consumer, min_idle_ms, start,
                count=self.config.batch_max,
            )  # fmt: skip
            start = reply[0].decode()
            rows = cast(Rows, reply[1])
            if len(reply) > 2 and reply[2]:
                # Only a trim below our own cut, or a hand-made XDEL, can remove a pending
                # entry; Redis has already dropped it from the group.
                log.error("pending ledger entries vanished before archiving: %s", reply[2])
            if rows:
                await self._record(ledger_log, rows)
                self.stats.claimed += len(rows)
                handled += len(rows)
            if start == "0-0" or not everything:
                return handled

    async def _read_new(self, ledger_log: LedgerLog, block: int | None) -> int:
        reply: Any = await self.redis.xreadgroup(
            GROUP, self.consumer, {ledger_log.key: ">"}, count=self.config.batch_max, block=block
        )
        if not reply:
            return 0
        rows = cast(Rows, reply[0][1])
        await self._record(ledger_log, rows)
        return len(rows)

    async def _record(self, ledger_log: LedgerLog, rows: Rows) -> None:
        # map() decodes in C: half the CPU of a comprehension calling .decode() per item.
        decode = bytes.decode
        transfers: list[Transfer] = [
            to_transfer(
                decode(entry_id),
                dict(zip(map(decode, fields), map(decode, fields.values()), strict=True)),
                ledger_log.slot,
            )
            for entry_id, fields in rows
        ]
        async with self.pool.connection() as conn:
            new = await record_transfers(conn, transfers)
        # Only now, with the batch committed, may Redis forget it was delivered.
        await self.redis.xack(ledger_log.key, GROUP, *(entry_id for entry_id, _ in rows))
        self.stats.recorded += new
        self.stats.replayed += len(rows) - new
        self.stats.batches += 1

    async def safe_trim_id(self, ledger_log: LedgerLog | None = None) -> str | None:
        """The id below which every entry of the log is committed in PostgreSQL and
        acknowledged (default: the first log)."""
        key = (ledger_log or self.logs[0]).key
        groups = await self.redis.xinfo_groups(key)
        ours = next((g for g in groups if g["name"] == GROUP.encode()), None)
        if ours is None:
            return None
        if int(ours["pending"]):
            pending = await self.redis.xpending(key, GROUP)
            if pending["pending"]:
                return cast(bytes, pending["min"]).decode()
        return cast(bytes, ours["last-delivered-id"]).decode()

    async def trim(self) -> int:
        """Trim every log below its ``safe_trim_id`` (approximately: whole nodes, cheaply)."""
        removed = 0
        for ledger_log in self.logs:
            cut = await self.safe_trim_id(ledger_log)
            if cut is None or cut == "0-0":
                continue
            removed += int(await self.redis.xtrim(ledger_log.key, minid=cut, approximate=True))
        self.stats.trimmed += removed
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        """Archive until ``stop`` is set: hold the lease, step, retry failures with backoff."""
        active, retry_s, renew_at = False, 0.2, 0.0
        ever_active = False
        renew_every_s = self.config.lease_ttl_ms / 3000
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() >= renew_at:
                        was_active, active = active, await self.lease.acquire_or_renew()
                        renew_at = time.monotonic() + renew_every_s
                        if active and not was_active:
                            ever_active = True
                            log.info("archiver %s is active", self.consumer)
                            await self.take_over()
                    if not active:
                        await _wait(stop, renew_every_s)
                        continue
                    handled = await self.step()
                    if not handled and len(self.logs) != 1:
                        # Several logs are read without blocking: rest once all were empty.
                        await _wait(stop, self.config.block_ms / 1000)
                    elif 0 < handled < self.config.batch_max:
                        await _wait(stop, self.config.linger_ms / 1000)
                    retry_s = 0.2
                except (redis_errors.RedisError, psycopg.Error, OSError, RecordError) as e:
                    log.error("archiver: %s: %s; retrying in %.1f s", type(e).__name__, e, retry_s)
                    active, renew_at = False, 0.0
                    await _wait(stop, retry_s)
                    retry_s = min(retry_s * 2, self.config.retry_s_max)
        finally:
            # Also after an error took the lease away from this loop (it may still be ours
            # in Redis): trimming below safe_trim_id is safe for any process, and release
            # only deletes a lease that is still ours.
            if ever_active:
                with contextlib.suppress(redis_errors.RedisError, OSError):
                    # A last trim of what was recorded since the timer's last one, so that a
                    # stopped archiver leaves the log no longer than it must.
                    await self.trim()
                with contextlib.suppress(redis_errors.RedisError, OSError):
                    await self.lease.release()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
