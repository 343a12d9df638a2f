"""The credit leg on a Redis Cluster: debited transfers, batched per creator's stream.

A hot creator would be capped at one script call per gift if every gift made its own credit
call. ``CreditBatcher`` instead keeps one queue per (creator, stream) with **one call in
flight**: transfers submitted while a call runs wait, and the next call takes up to
``CREDIT_BATCH_MAX`` of them at once (``credit_gifts.lua`` applies each exactly once, by its
transfer id). So at low load a credit costs one call as before, and under load the calls per
second stay flat while the credits per call grow.

Order: the transfers of one stream are credited in the order they were submitted (one call
in flight per stream, and the script applies a batch in order). Delivery: at most once per
submit; a failed call (``UnavailableError``) has an unknown outcome, and the transfer stays
in its outbox, where a retry of the client or the relay credits it again with the same id,
which the script answers with ``replay`` if the first call had committed.

Bounded: a queue holds the transfers of callers awaiting it, which the edge bounds
(``IN_FLIGHT_GIFTS_MAX`` per connection) and the relay bounds (one batch per slot); an idle
queue is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from server.domain.errors import InvariantError
from server.domain.levels import ladder_arg
from server.domain.limits import AMOUNT_MAX, CREDIT_BATCH_MAX, Limits
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.hold import hold_args
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

log = logging.getLogger("giftwire.ledger")
_LADDER = ladder_arg()
"""The gifter level ladder as credit_gifts.lua's last ARGV, built once per process."""


class ScriptRuns(Protocol):
    """What the batcher needs of a runner: the cluster's, or the single-node one (the
    scripts also run on one Redis, where their tests run them too)."""

    async def run(
        self,
        name: ScriptName,
        keys: Sequence[str],
        args: Sequence[str | int],
        *,
        order_key: str = "",
    ) -> list[bytes]: ...


@dataclass(frozen=True, slots=True)
class Transfer:
    """A debited gift on its way to its creator: a debit receipt or an outbox entry."""

    transfer_id: str
    client_id: str
    sender_id: str
    sender_name: str
    creator_id: str
    stream_id: str
    gift_id: str
    count: int
    coins: int
    price: int
    catalog_version: int
    share_bps: int
    debit_ms: int
    to: str = ""
    """The gift's recipient: '' the creator, a guest's id, '*' every guest on stage."""

    @classmethod
    def from_receipt(cls, doc: Mapping[str, Any], sender_id: str) -> Transfer:
        """From the debit leg's receipt JSON (``debit_gift.lua``)."""
        return cls(
            transfer_id=doc["transfer_id"],
            client_id=doc["client_id"],
            sender_id=sender_id,
            sender_name=doc["sender_name"],
            creator_id=doc["creator_id"],
            stream_id=doc["stream_id"],
            gift_id=doc["gift_id"],
            count=int(doc["count"]),
            coins=int(doc["coins"]),
            price=int(doc["price"]),
            catalog_version=int(doc["catalog_version"]),
            share_bps=int(doc["share_bps"]),
            debit_ms=int(doc["ts"]),
            to=str(doc.get("recipient", "")),
        )

    @classmethod
    def from_outbox(cls, fields: Mapping[bytes, bytes]) -> Transfer:
        """From an outbox entry's fields (``debit_gift.lua``); KeyError/ValueError if broken."""
        text = {key.decode(): value.decode() for key, value in fields.items()}
        return cls(
            transfer_id=text["transfer_id"],
            client_id=text["client_id"],
            sender_id=text["from"],
            sender_name=text["sender_name"],
            creator_id=text["to"],
            stream_id=text["stream"],
            gift_id=text["gift"],
            count=int(text["count"]),
            coins=int(text["coins"]),
            price=int(text["price"]),
            catalog_version=int(text["catalog_version"]),
            share_bps=int(text["share_bps"]),
            debit_ms=int(text["ts"]),
            to=text.get("recipient", ""),
        )

    def args(self) -> list[str | int]:
        """The transfer's 11 ARGV of ``credit_gifts.lua``, in its order."""
        return [
            self.transfer_id,
            self.client_id,
            self.sender_id,
            self.sender_name,
            self.gift_id,
            self.count,
            self.coins,
            self.price,
            self.catalog_version,
            self.share_bps,
            self.debit_ms,
        ]


@dataclass(frozen=True, slots=True)
class CreditResult:
    """One transfer's outcome in ``credit_gifts.lua``: ``ok``, ``replay`` or ``refused``."""

    transfer_id: str
    status: str
    code: str = ""
    seq: int = 0
    diamonds: int = 0
    platform_coins: int = 0
    combo: int = 0
    ts: int = 0
    epoch: str = ""
    guests: tuple[Mapping[str, Any], ...] = ()
    """A transfer to guests: its guest-credits {user_id, coins, credit_id, outbox_id}
    (``cluster_guests.py`` applies them); empty for a gift to the creator."""
    redirected: str = ""
    """Why the creator received a gift to guests ('' when it did not): the guest left,
    was not on stage, or nobody was (``_stage_credit.lua``)."""

    @property
    def settled(self) -> bool:
        """Credited, now or before: the outbox entry may go."""
        return self.status in ("ok", "replay")


@dataclass(slots=True)
class _Queue:
    waiting: list[tuple[Transfer, asyncio.Future[CreditResult]]] = field(default_factory=list)
    busy: bool = False


class CreditBatcher:
    """Credits transfers, one ``credit_gifts`` call in flight per creator's stream."""

    def __init__(
        self,
        runner: ScriptRuns,
        keys: ClusterKeys,
        limits: Limits,
        *,
        batch_max: int = CREDIT_BATCH_MAX,
    ) -> None:
        self._runner = runner
        self._keys = keys
        self._limits = limits
        self._batch_max = batch_max
        self._queues: dict[tuple[str, str], _Queue] = {}
        self.calls = 0
        """credit_gifts calls made (the batching benchmark divides credits by it)."""

    async def credit(self, transfer: Transfer) -> CreditResult:
        """Credit one transfer (batched with the others waiting for its stream)."""
        key = (transfer.creator_id, transfer.stream_id)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        future: asyncio.Future[CreditResult] = asyncio.get_running_loop().create_future()
        queue.waiting.append((transfer, future))
        if not queue.busy:
            queue.busy = True
            task = asyncio.get_running_loop().create_task(self._drain(key, queue))
            task.add_done_callback(_retrieve)
        return await future

    async def _drain(self, key: tuple[str, str], queue: _Queue) -> None:
        # Yield once so that every caller of this loop turn joins the first call.
        await asyncio.sleep(0)
        try:
            while queue.waiting:
                batch = queue.waiting[: self._batch_max]
                del queue.waiting[: self._batch_max]
                try:
                    results = await self._call_isolating(key[0], key[1], [t for t, _ in batch])
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
            if self._queues.get(key) is queue and not queue.waiting:
                del self._queues[key]

    async def _call_isolating(
        self, creator_id: str, stream_id: str, batch: list[Transfer]
    ) -> list[CreditResult]:
        """``call``; a batch whose script failed (``InvariantError``: corrupt data under one
        transfer's keys, say its combo counter) is tried again one transfer at a time, so one
        broken transfer cannot keep the others of its stream from their credits."""
        try:
            return await self.call(creator_id, stream_id, batch)
        except InvariantError:
            if len(batch) == 1:
                raise
        results: list[CreditResult] = []
        for transfer in batch:
            try:
                results += await self.call(creator_id, stream_id, [transfer])
            except InvariantError as e:
                results.append(CreditResult(transfer.transfer_id, "failed", code=str(e)))
        return results

    async def call(
        self, creator_id: str, stream_id: str, batch: list[Transfer]
    ) -> list[CreditResult]:
        """One ``credit_gifts`` call; one result per transfer, in order."""
        k, lim = self._keys, self._limits
        keys = k.credit_keys(creator_id, stream_id)
        args: list[str | int] = [
            creator_id,
            stream_id,
            lim.receipt_ttl_s,
            lim.combo_window_ms,
            lim.feed_events_max,
            AMOUNT_MAX,
            len(batch),
        ]
        for transfer in batch:
            if (transfer.creator_id, transfer.stream_id) != (creator_id, stream_id):
                raise InvariantError(f"transfer {transfer.transfer_id} is not for {stream_id}")
            keys.append(k.credit_receipt(creator_id, transfer.transfer_id))
            keys.append(k.combo(creator_id, stream_id, transfer.sender_id, transfer.gift_id))
            args += transfer.args()
        keys += k.credit_tail_keys(creator_id, stream_id)
        args += [_LADDER, *hold_args(lim)]
        # Guests on stage: two KEYS and n ARGV after anything else, then the payout hold's
        # stage_held key per distinct (debit day, sender) of the gifts to guests, and their
        # count.
        keys += k.credit_stage_keys(creator_id, stream_id)
        days = k.stage_held_keys(
            creator_id, [(t.debit_ms, t.sender_id) for t in batch if t.to], lim
        )
        keys += days
        args += [*(transfer.to for transfer in batch), len(days)]
        self.calls += 1
        reply = await self._runner.run(ScriptName.CREDIT_GIFTS, keys, args, order_key=creator_id)
        body, _ = unpack(reply)
        docs: list[dict[str, Any]] = orjson.loads(body)
        if len(docs) != len(batch):
            raise InvariantError(f"credit_gifts answered {len(docs)} results for {len(batch)}")
        results = [_result(doc) for doc in docs]
        for result in results:
            if not result.settled:
                log.error("credit of %s refused: %s", result.transfer_id, result.code)
        return results


def _result(doc: Mapping[str, Any]) -> CreditResult:
    return CreditResult(
        transfer_id=str(doc["transfer_id"]),
        status=str(doc["status"]),
        code=str(doc.get("code", "")),
        seq=int(doc.get("seq", 0)),
        diamonds=int(doc.get("diamonds", 0)),
        platform_coins=int(doc.get("platform_coins", 0)),
        combo=int(doc.get("combo", 0)),
        ts=int(doc.get("ts", 0)),
        epoch=str(doc.get("epoch", "")),
        guests=tuple(doc.get("guests") or ()),
        redirected=str(doc.get("redirected", "")),
    )


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("credit queue failed: %s", task.exception())
