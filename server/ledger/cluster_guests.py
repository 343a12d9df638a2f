"""Guests on stage on a Redis Cluster (``docs/ledger.md``, "Guests on stage").

The stage (``{u:CREATOR}:s:STREAM:guests``) lives in the creator's slot, next to the stream,
so the single-node stage scripts (invite_guest, join_stage, leave_stage) run there unchanged
but for their last ARGV (``'shard'``: ``SPUBLISH`` on the room's shard channel).

A gift to guests is three legs: the debit (``debit_gift.lua``, which carries the gift's
``to``), the credit (``credit_gifts.lua``, which decides the recipients from the stage when
it runs, splits the coins and leaves one **guest-credit** per recipient in its slot's
outbox), and per recipient ``credit_guest.lua`` in the guest's slot, exactly once by its
credit id ``TRANSFER|GUEST``: the guest's diamonds with their own carried ``share_rem``, and
the platform's share in that slot. The fast path (``ClusterLedger.send_gift``) applies the
guest-credits at once and deletes their outbox entries; the relay applies whatever it left.

Contract of ``GuestCredits.credit``: ``ok`` or ``replay`` means applied (now or before),
``refused`` wrote nothing, ``failed`` is unknown (a timeout): retried with the same credit
id, by the relay if nobody else. Calls are batched per guest (``credit_guest.lua`` takes
up to 256 guest-credits of one guest).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal, UnavailableError
from server.domain.limits import (
    AMOUNT_MAX,
    CREDIT_BATCH_MAX,
    GUESTS_MAX,
    GUESTS_REMEMBERED_MAX,
    Limits,
)
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_reads import ClusterReads
from server.ledger.guests import ALL_GUESTS, stage_rows
from server.ledger.hold import hold_args
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

log = logging.getLogger("giftwire.ledger")

SHARD = "shard"
"""The stage scripts' last ARGV in cluster mode: publish with SPUBLISH."""
GUEST_CREDIT_KIND = "guest_credit"
"""The ``kind`` field of a guest-credit's outbox entry (a debit's entry has none)."""


@dataclass(frozen=True, slots=True)
class GuestCredit:
    """A guest's part of a transfer, on its way to the guest's slot."""

    credit_id: str
    transfer_id: str
    guest_id: str
    sender_id: str
    creator_id: str
    stream_id: str
    coins: int
    share_bps: int
    seq: int
    written_ms: int
    outbox_id: str
    """Its entry in the creator's slot's outbox (deleted once it is applied)."""
    debit_ms: int = 0
    """The gift's debit time (the sender's primary's clock): the guest's diamonds are held
    by that day (0: unknown, ``written_ms`` stands in, for entries written before it)."""

    @property
    def hold_ms(self) -> int:
        """The moment whose day holds the diamonds: the debit's."""
        return self.debit_ms or self.written_ms

    @classmethod
    def from_outbox(cls, entry_id: str, fields: Mapping[bytes, bytes]) -> GuestCredit:
        """From an outbox entry (``_stage_credit.lua``); KeyError/ValueError if broken."""
        text = {key.decode(): value.decode() for key, value in fields.items()}
        return cls(
            credit_id=text["credit_id"],
            transfer_id=text["transfer_id"],
            guest_id=text["guest"],
            sender_id=text["from"],
            creator_id=text["creator"],
            stream_id=text["stream"],
            coins=int(text["coins"]),
            share_bps=int(text["share_bps"]),
            seq=int(text["seq"]),
            written_ms=int(text["ts"]),
            outbox_id=entry_id,
            debit_ms=int(text.get("debit_ts", 0)),
        )

    @classmethod
    def from_result(
        cls,
        row: Mapping[str, Any],
        *,
        sender_id: str,
        creator_id: str,
        stream_id: str,
        share_bps: int,
        seq: int,
        ts: int,
        debit_ms: int = 0,
    ) -> GuestCredit:
        """From a row of a credit result's ``guests`` (``credit_gifts.lua``)."""
        return cls(
            credit_id=str(row["credit_id"]),
            transfer_id=str(row["credit_id"]).rsplit("|", 1)[0],
            guest_id=str(row["user_id"]),
            sender_id=sender_id,
            creator_id=creator_id,
            stream_id=stream_id,
            coins=int(row["coins"]),
            share_bps=share_bps,
            seq=seq,
            written_ms=ts,
            outbox_id=str(row.get("outbox_id", "")),
            debit_ms=debit_ms,
        )


@dataclass(frozen=True, slots=True)
class GuestResult:
    credit_id: str
    status: str
    code: str = ""
    diamonds: int = 0
    platform_coins: int = 0

    @property
    def settled(self) -> bool:
        return self.status in ("ok", "replay")


@dataclass(slots=True)
class _Queue:
    waiting: list[tuple[GuestCredit, asyncio.Future[GuestResult]]] = field(default_factory=list)
    busy: bool = False


class GuestCredits:
    """Runs ``credit_guest.lua`` in each guest's slot, batched per guest as credits are per
    stream (``CreditBatcher``): one call in flight per guest, the guest-credits that arrive
    meanwhile in the next call, up to ``batch_max``. A guest on stage in a hot room gets a
    share of every gift to ``*``, so is as hot as the creator.

    Order: a guest's guest-credits are applied in the order they were submitted. A failed
    call (``UnavailableError``, unknown outcome) gives its guest-credits status ``failed``;
    they stay in their outbox and are applied again with the same ids (``replay`` if the
    call had committed)."""

    def __init__(
        self, runner: Any, keys: ClusterKeys, limits: Limits, *, batch_max: int = CREDIT_BATCH_MAX
    ) -> None:
        self._runner = runner
        self._keys = keys
        self._limits = limits
        self._batch_max = batch_max
        self._queues: dict[str, _Queue] = {}
        self.calls = 0
        """credit_guest calls made."""

    async def credit(self, credit: GuestCredit) -> GuestResult:
        """Apply one guest-credit (batched with the others waiting for its guest)."""
        queue = self._queues.get(credit.guest_id)
        if queue is None:
            queue = self._queues[credit.guest_id] = _Queue()
        future: asyncio.Future[GuestResult] = asyncio.get_running_loop().create_future()
        queue.waiting.append((credit, future))
        if not queue.busy:
            queue.busy = True
            task = asyncio.get_running_loop().create_task(self._drain(credit.guest_id, queue))
            task.add_done_callback(_retrieve)
        return await future

    async def _drain(self, guest_id: str, queue: _Queue) -> None:
        await asyncio.sleep(0)  # every caller of this loop turn joins the first call
        try:
            while queue.waiting:
                batch = queue.waiting[: self._batch_max]
                del queue.waiting[: self._batch_max]
                try:
                    results = await self._call_isolating(guest_id, [c for c, _ in batch])
                except BaseException as e:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    if not isinstance(e, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            queue.busy = False
            if self._queues.get(guest_id) is queue and not queue.waiting:
                del self._queues[guest_id]

    async def _call_isolating(self, guest_id: str, batch: list[GuestCredit]) -> list[GuestResult]:
        """``call``; unknown outcomes become ``failed``; a batch whose script failed on
        broken data (``InvariantError``) is tried one guest-credit at a time."""
        try:
            return await self.call(guest_id, batch)
        except UnavailableError as e:
            return [GuestResult(c.credit_id, "failed", code=str(e)) for c in batch]
        except InvariantError as e:
            if len(batch) == 1:
                return [GuestResult(batch[0].credit_id, "failed", code=str(e))]
        results: list[GuestResult] = []
        for credit in batch:
            results += await self._call_isolating(guest_id, [credit])
        return results

    async def call(self, guest_id: str, batch: list[GuestCredit]) -> list[GuestResult]:
        """One ``credit_guest`` call; one result per guest-credit, in order."""
        lim = self._limits
        keys = self._keys.guest_credit_keys(guest_id, [c.credit_id for c in batch])
        # The payout hold: one guest_held key per distinct debit day (none with it off).
        keys += self._keys.guest_held_keys(guest_id, [c.hold_ms for c in batch], lim)
        args: list[str | int] = [guest_id, lim.receipt_ttl_s, AMOUNT_MAX, len(batch)]
        for credit in batch:
            if credit.guest_id != guest_id:
                raise InvariantError(f"guest-credit {credit.credit_id} is not {guest_id}'s")
            args += [
                credit.transfer_id,
                credit.sender_id,
                credit.creator_id,
                credit.stream_id,
                credit.coins,
                credit.share_bps,
                credit.seq,
                credit.written_ms,
            ]
        args += [*hold_args(lim), *(credit.hold_ms for credit in batch)]
        self.calls += 1
        try:
            reply = await self._runner.run(ScriptName.CREDIT_GUEST, keys, args, order_key=guest_id)
            body, _ = unpack(reply)
        except LedgerRefusal as refusal:
            return [GuestResult(c.credit_id, "refused", code=refusal.code.value) for c in batch]
        docs: list[dict[str, Any]] = orjson.loads(body)
        if len(docs) != len(batch):
            raise InvariantError(f"credit_guest answered {len(docs)} results for {len(batch)}")
        return [
            GuestResult(
                str(doc["credit_id"]),
                str(doc["status"]),
                code=str(doc.get("code", "")),
                diamonds=int(doc.get("diamonds", 0)),
                platform_coins=int(doc.get("platform_coins", 0)),
            )
            for doc in docs
        ]


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("guest-credit queue failed: %s", task.exception())


class ClusterStage:
    """``Guests`` of cluster mode: the same method contracts, in the creator's slot."""

    def __init__(self, reads: ClusterReads) -> None:
        self._reads = reads

    async def _run(self, name: ScriptName, stream_id: str, args: list[str | int]) -> dict[str, Any]:
        creator = await self._reads.owner(stream_id)
        if creator is None:
            raise LedgerRefusal(ErrorCode.UNKNOWN_STREAM)
        k = self._reads.keys
        keys = [
            k.stream(creator, stream_id),
            k.guests(creator, stream_id),
            k.room_channel(creator, stream_id),
        ]
        reply = await self._reads.runner.run(
            name, keys, [stream_id, *args, SHARD], order_key=creator
        )
        body, _ = unpack(reply)
        doc: dict[str, Any] = orjson.loads(body)
        return doc

    async def invite(self, *, stream_id: str, creator_id: str, guest_id: str) -> dict[str, Any]:
        return await self._run(
            ScriptName.INVITE_GUEST,
            stream_id,
            [creator_id, guest_id, GUESTS_MAX, GUESTS_REMEMBERED_MAX],
        )

    async def join(self, *, stream_id: str, guest_id: str, name: str) -> dict[str, Any]:
        return await self._run(ScriptName.JOIN_STAGE, stream_id, [guest_id, name])

    async def leave(self, *, stream_id: str, actor_id: str, guest_id: str) -> dict[str, Any]:
        return await self._run(ScriptName.LEAVE_STAGE, stream_id, [actor_id, guest_id])

    async def _fields(self, creator_id: str, stream_id: str) -> dict[str, str]:
        raw = await self._reads.command(self._reads.keys.guests(creator_id, stream_id), "HGETALL")
        return {key.decode(): value.decode() for key, value in (raw or {}).items()}

    async def stage(self, stream_id: str) -> list[dict[str, Any]]:
        """Invited and on-stage guests, id order: {user_id, name, state, coins, diamonds}.
        ``coins`` comes from the stage; ``diamonds`` from each guest's own slot (their
        guest-credits decide them there), one read per guest, concurrently."""
        creator = await self._reads.owner(stream_id)
        if creator is None:
            return []
        rows = stage_rows(await self._fields(creator, stream_id))
        earned = await asyncio.gather(
            *(
                self._reads.command(
                    self._reads.keys.guest_earned(row["user_id"]), "HGET", stream_id
                )
                for row in rows
            )
        )
        for row, diamonds in zip(rows, earned, strict=True):
            row["diamonds"] = int(diamonds or 0)
        return rows

    async def verdict(self, stream_id: str, creator_id: str, to: str, sender_id: str) -> str:
        """The refusal single-node mode would give a gift to ``to`` now ('' for none), for
        the debit to return after its receipt check (``debit_gift.lua`` ARGV[20])."""
        fields = await self._fields(creator_id, stream_id)
        if to == ALL_GUESTS:
            on = [g for g, state in fields.items() if "|" not in g and state == "on"]
            if not on:
                return ErrorCode.NO_GUESTS.value
            return ErrorCode.SELF_GIFT.value if sender_id in on else ""
        state = fields.get(to)
        if state == "left":
            return ErrorCode.GUEST_LEFT.value
        if state != "on":
            return ErrorCode.NOT_A_GUEST.value
        return ErrorCode.SELF_GIFT.value if to == sender_id else ""
