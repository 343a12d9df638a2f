"""The relay: settles every debited transfer the fast path did not (``docs/ledger.md``).

The server that debits a gift credits it at once and deletes its outbox entry. What a crash,
a timeout or a refused credit leaves behind stays in the sender's slot's outbox
(``{~N}:outbox``), and the relay settles it:

1. **Where to look.** Every ``RELAY_FULL_SWEEP_S`` one relay of the whole cluster (the
   one that takes the lease ``{~0}:relay_sweep``, ``SET NX PX`` for the period) reads the
   length of all 16384 outboxes (one pipeline per primary) and publishes the slots with
   entries (``{~0}:relay_hot``, for two periods). Every relay tries the lease
   ``RELAY_HOT_LIST_READS_PER_SWEEP`` times a period and, when another holds it, reads
   that list (one ``GET``) instead of sweeping itself: the sweep costs the cluster 16384
   ``XLEN`` per period, not per process. Its slots become *hot*; between sweeps a relay
   looks only at the hot slots and at those its own process left an entry in
   (``ClusterLedger.unsettled_slots``). A slot stops being hot once its outbox is empty.
   A sweeper that dies holds the lease to the end of its period; an entry a dead process
   left is found within about one period and a fifth.
2. **A consumer group** ``relay`` on each hot outbox (created at id 0, so every entry is
   delivered): ``XREADGROUP >`` hands each new entry to one relay of all the processes.
3. **``XAUTOCLAIM`` with ``RELAY_GRACE_MS``** then returns the entries that have been
   pending for at least that long, whoever's they were: this relay's own (after the grace
   the fast path has usually settled and deleted them, and XAUTOCLAIM drops deleted
   entries from the group by itself), and those of a relay that died mid-batch.
4. **Credit, then acknowledge.** An entry is a debited transfer, or a guest-credit that a
   credit to guests left in the creator's slot (``kind`` = ``guest_credit``,
   ``cluster_guests.py``), applied by ``credit_guest.lua`` in the guest's slot. The batch
   goes through the same ``credit_gifts`` (and ``credit_guest``) calls as the fast path,
   with the same ids: a transfer (or guest-credit) applied already is a ``replay``. Only
   ``ok`` and ``replay`` are acknowledged and deleted (``XACK``, ``XDEL``); anything else
   (the credit side down, a refused transfer) stays pending and is tried again after the
   grace. A crash anywhere in between leaves the entry pending: delivery
   is at least once and the credit idempotent, so each transfer is credited exactly once.

The outboxes also carry chargebacks' clawbacks (``kind=clawback``, ``cluster_clawbacks.py``),
and the guest clawbacks a creator's clawback forwarded (``via``): the relay applies them
the same way, with the same ids, acknowledging only ``ok`` and ``replay``, after the
slot's transfers and guest-credits of the same round (a clawback refused ``not_credited``
waits for those).

Bounded: at most ``batch_max`` entries per slot per round in memory, at most 16384 hot
slots; an entry that cannot be parsed is logged and left pending (reconcile reports it).

Metrics (``RelayStats``): pending transfers (entries in the hot outboxes) and the lag, the
age of the oldest of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors

from server.domain.errors import GiftwireError
from server.domain.limits import (
    CREDIT_BATCH_MAX,
    RELAY_FULL_SWEEP_S,
    RELAY_GRACE_MS,
    RELAY_HOT_LIST_READS_PER_SWEEP,
)
from server.domain.tasks import stop_task
from server.ledger.cluster_clawbacks import CLAWBACK_KIND, Clawback
from server.ledger.cluster_credits import Transfer
from server.ledger.cluster_guests import GUEST_CREDIT_KIND, GuestCredit
from server.ledger.cluster_keys import SLOTS, slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.ledger import log_position

log = logging.getLogger("giftwire.relay")

GROUP = "relay"
CRASH_AFTER_CREDIT_ENV = "GIFTWIRE_TEST_CRASH_RELAY_AFTER_CREDIT"
"""Test-only hook: ``1`` kills the relay's process (SIGKILL) after it credited a batch and
before it acknowledged it (``tests/cluster/test_leg_faults.py``). Read once, at import."""
_CRASH_AFTER_CREDIT = os.environ.get(CRASH_AFTER_CREDIT_ENV) == "1"


@dataclass(frozen=True, slots=True)
class RelayStats:
    pending: int
    """Transfers debited and not yet settled, in the outboxes the relay watches."""
    lag_ms: int
    """Age of the oldest of them (0 when none)."""
    settled: int
    """Transfers this relay settled since it started."""


class Relay:
    def __init__(
        self,
        ledger: ClusterLedger,
        *,
        consumer: str | None = None,
        grace_ms: int = RELAY_GRACE_MS,
        batch_max: int = CREDIT_BATCH_MAX,
        interval_s: float = 0.5,
        full_sweep_s: float = RELAY_FULL_SWEEP_S,
        on_round: Callable[[RelayStats], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.consumer = consumer or f"relay-{uuid.uuid4().hex[:12]}"
        self.grace_ms = grace_ms
        self.batch_max = batch_max
        self.interval_s = interval_s
        self.full_sweep_s = full_sweep_s
        self.on_round = on_round
        """Called with the stats after every round (the server's metrics)."""
        self.hot: set[int] = set()
        self._cursors: dict[int, str] = {}
        """Per slot, where the next XAUTOCLAIM starts (at most one per watched slot)."""
        self.settled = 0
        self.stats = RelayStats(0, 0, 0)
        self._task: asyncio.Task[None] | None = None
        self._swept_at = -float("inf")
        self.sweeps = 0
        """Full sweeps this relay made itself (the others it read from the shared list)."""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.round()
            except (GiftwireError, redis_errors.RedisError, OSError) as e:
                log.warning("relay round failed: %s: %s", type(e).__name__, e)
            await asyncio.sleep(self.interval_s)

    async def full_sweep(self) -> None:
        """Find every slot whose outbox has entries: sweep (XLEN of all 16384) if this
        relay takes the period's lease, else read the list the sweeper published. Called
        ``RELAY_HOT_LIST_READS_PER_SWEEP`` times a period, so a sweeper that died is
        replaced soon after its lease lapsed. With ``full_sweep_s`` 0 (``giftwire relay
        --once``, tests) it always sweeps itself."""
        self._swept_at = time.monotonic()
        keys, period_ms = self.ledger.keys, int(self.full_sweep_s * 1000)
        if period_ms > 0:
            took = await self.ledger.command(
                keys.relay_sweep_lease(), "SET", self.consumer, "NX", "PX", period_ms
            )
            if not took:
                await self.read_hot_list()
                return
        lengths = await self.ledger.shards.lengths(keys.outbox_shards())
        found = sorted({slot_of(key) for key in lengths})
        self.hot.update(found)
        self.sweeps += 1
        if period_ms > 0:
            listed = ",".join(map(str, found))
            await self.ledger.command(keys.relay_hot_slots(), "SET", listed, "PX", 2 * period_ms)

    async def read_hot_list(self) -> None:
        """Add the slots of the last sweep's list (one GET; bounded to the 16384 slots)."""
        raw = await self.ledger.command(self.ledger.keys.relay_hot_slots(), "GET")
        self.hot.update(_slots_listed(raw))

    async def round(self) -> int:
        """One pass over the hot slots; returns the transfers settled."""
        if time.monotonic() - self._swept_at >= self.full_sweep_s / RELAY_HOT_LIST_READS_PER_SWEEP:
            await self.full_sweep()
        self.hot |= self.ledger.unsettled_slots
        self.ledger.unsettled_slots.clear()
        slots = sorted(self.hot)
        results = await asyncio.gather(
            *(self._slot(slot) for slot in slots), return_exceptions=True
        )
        settled, pending, oldest_ms = 0, 0, 0
        now_ms = int(time.time() * 1000)
        for slot, result in zip(slots, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                log.warning("relay: slot %d: %s: %s", slot, type(result).__name__, result)
                continue
            done, left, first, keep = result
            settled += done
            pending += left
            if not keep:
                self.hot.discard(slot)
                self._cursors.pop(slot, None)
            elif first is not None:
                oldest_ms = max(oldest_ms, now_ms - log_position(first)[0])
        self.settled += settled
        self.stats = RelayStats(pending, oldest_ms, self.settled)
        if self.on_round is not None:
            self.on_round(self.stats)
        return settled

    async def _slot(self, slot: int) -> tuple[int, int, str | None, bool]:
        """Settle what slot ``slot``'s outbox holds past the grace: (settled, entries left,
        the oldest's id, whether to keep watching the slot)."""
        if not 0 <= slot < SLOTS:
            return 0, 0, None, False
        ledger, outbox = self.ledger, self.ledger.keys.outbox_shard(slot)
        try:
            await self._read_new(outbox)
        except redis_errors.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self._create_group(outbox)
            await self._read_new(outbox)
        # From where the last round stopped, so that entries that stay pending (a refused
        # credit) cannot keep the ones behind them from ever being claimed.
        claimed = await ledger.command(
            outbox,
            "XAUTOCLAIM",
            GROUP,
            self.consumer,
            self.grace_ms,
            self._cursors.get(slot, "0-0"),
            "COUNT",
            self.batch_max,
        )
        cursor = claimed[0].decode() if isinstance(claimed[0], bytes) else str(claimed[0])
        if cursor == "0-0":
            self._cursors.pop(slot, None)
        else:
            self._cursors[slot] = cursor
        entries: list[tuple[bytes, Any]] = [e for e in claimed[1] if e and e[1]]
        done = 0
        if entries:
            transfers: list[tuple[str, Transfer]] = []
            guests: list[GuestCredit] = []
            clawbacks: list[tuple[str, Clawback]] = []
            for entry_id, fields in entries:
                doc = _as_dict(fields)
                try:
                    if doc.get(b"kind") == GUEST_CREDIT_KIND.encode():
                        guests.append(GuestCredit.from_outbox(entry_id.decode(), doc))
                    elif doc.get(b"kind") == CLAWBACK_KIND.encode():
                        clawbacks.append((entry_id.decode(), Clawback.from_outbox(doc)))
                    else:
                        transfers.append((entry_id.decode(), Transfer.from_outbox(doc)))
                except (KeyError, ValueError) as e:
                    log.error(
                        "relay: outbox entry %s of slot %d is malformed: %s", entry_id, slot, e
                    )
            results = await ledger.credit_transfers([t for _, t in transfers])
            guest_results = await ledger.credit_guests(guests)
            applied = await ledger.apply_clawbacks([c for _, c in clawbacks])
            if _CRASH_AFTER_CREDIT:
                os.kill(os.getpid(), signal.SIGKILL)
            acked = [eid for (eid, _), r in zip(transfers, results, strict=True) if r.settled]
            acked += [g.outbox_id for g, r in zip(guests, guest_results, strict=True) if r.settled]
            acked += [eid for (eid, _), ok in zip(clawbacks, applied, strict=True) if ok]
            if acked:
                await ledger.command(outbox, "XACK", GROUP, *acked)
                await ledger.command(outbox, "XDEL", *acked)
                done = len(acked)
        left = int(await ledger.command(outbox, "XLEN"))
        first: str | None = None
        if left:
            head = await ledger.command(outbox, "XRANGE", "-", "+", "COUNT", 1)
            first = head[0][0].decode() if head else None
            return done, left, first, True
        # Entries read into the group and then deleted by the fast path leave the group at
        # the next XAUTOCLAIM past the grace: the slot stays watched until they have.
        summary = await ledger.command(outbox, "XPENDING", GROUP)
        return done, 0, None, _pending_count(summary) > 0

    async def _read_new(self, outbox: str) -> None:
        """Move the outbox's new entries into the group (their content comes back through
        XAUTOCLAIM once past the grace). Its key is not its first argument, so it is not
        sent through ``ClusterLedger.command``; a MOVED reply fails this round."""
        ledger = self.ledger
        client = ledger.runner.client(ledger.runner.primary_of(slot_of(outbox)))
        try:
            async with asyncio.timeout(ledger.limits.redis_timeout_s):
                await client.xreadgroup(GROUP, self.consumer, {outbox: ">"}, count=self.batch_max)
        except redis_errors.AskError:
            ledger.runner.slots.stale = True
            raise

    async def _create_group(self, outbox: str) -> None:
        ledger = self.ledger
        client = ledger.runner.client(ledger.runner.primary_of(slot_of(outbox)))
        try:
            async with asyncio.timeout(ledger.limits.redis_timeout_s):
                await client.xgroup_create(outbox, GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


def _slots_listed(raw: object) -> set[int]:
    """The slots of a published list (``1,17,4242``); anything else in it is ignored."""
    if not isinstance(raw, bytes):
        return set()
    parts = raw.split(b",")[:SLOTS]
    return {int(p) for p in parts if p.isdigit() and int(p) < SLOTS}


def _pending_count(summary: Any) -> int:
    """XPENDING's summary: a dict from redis-py's callback, else the raw list."""
    if isinstance(summary, dict):
        return int(summary.get("pending", 0))
    return int(summary[0]) if summary else 0


def _as_dict(fields: Any) -> dict[bytes, bytes]:
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))
