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

Contract of ``GuestCredits.credit``: one ``credit_guest`` call; ``ok`` or ``replay`` means
applied (now or before), ``refused`` wrote nothing, ``failed`` is unknown (a timeout):
retried with the same credit id, by the relay if nobody else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal, UnavailableError
from server.domain.limits import AMOUNT_MAX, GUESTS_MAX, GUESTS_REMEMBERED_MAX, Limits
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_reads import ClusterReads
from server.ledger.guests import ALL_GUESTS, stage_rows
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

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


class GuestCredits:
    """Runs ``credit_guest.lua`` in each guest's slot (one call per guest-credit: a gift has
    at most ``GUESTS_MAX`` of them, each in another slot)."""

    def __init__(self, runner: Any, keys: ClusterKeys, limits: Limits) -> None:
        self._runner = runner
        self._keys = keys
        self._limits = limits

    async def credit(self, credit: GuestCredit) -> GuestResult:
        args: list[str | int] = [
            credit.credit_id,
            credit.transfer_id,
            credit.guest_id,
            credit.sender_id,
            credit.creator_id,
            credit.stream_id,
            credit.coins,
            credit.share_bps,
            credit.seq,
            credit.written_ms,
            self._limits.receipt_ttl_s,
            AMOUNT_MAX,
        ]
        try:
            reply = await self._runner.run(
                ScriptName.CREDIT_GUEST,
                self._keys.guest_credit_keys(credit.guest_id, credit.credit_id),
                args,
                order_key=credit.guest_id,
            )
            body, replayed = unpack(reply)
        except LedgerRefusal as refusal:
            return GuestResult(credit.credit_id, "refused", code=refusal.code.value)
        except (UnavailableError, InvariantError) as e:
            return GuestResult(credit.credit_id, "failed", code=str(e))
        doc = orjson.loads(body)
        if doc.get("status") == "refused":
            return GuestResult(credit.credit_id, "refused", code=str(doc.get("code", "")))
        return GuestResult(
            credit.credit_id,
            "replay" if replayed else "ok",
            diamonds=int(doc["diamonds"]),
            platform_coins=int(doc["platform_coins"]),
        )


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
        On a cluster ``diamonds`` stays 0: each guest's diamonds are decided in their own
        slot (their wallet shows them); ``coins`` is exact."""
        creator = await self._reads.owner(stream_id)
        if creator is None:
            return []
        return stage_rows(await self._fields(creator, stream_id))

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
