"""The clawback leg of a chargeback on a Redis Cluster (``docs/ledger.md``, "The payout hold
in cluster mode").

A refund runs in the buyer's slot (``refund_claim.lua``): the coins the buyer no longer holds
were spent on gifts, and those still in the payout hold are reversed from the buyer's hold
record, which names creators in other slots. So the refund queues one **clawback** per
creator in its slot's outbox (next to the gift transfers), and ``clawback.lua`` applies each
in the creator's slot, exactly once by its id ``PAYMENT|REFUND_ID|CREATOR`` (a marker kept
for the receipt TTL). The server that ran the refund applies them at once (the fast path,
``ClusterLedger.refund``); the relay applies what it did not, from the outbox, with the same
ids. Delivery is at least once, the leg idempotent: each clawback is applied exactly once.

Between the legs the buyer's debt is already lower by the reversed coins, and the creator
still holds the diamonds: the coins are in transit the other way, which reconcile and the
record (``transit``) count as pending.

Gifts to guests on the creator's stage are claimed as *stage items*: the creator's clawback
resolves them from the credit leg's notes (``stage_held``), gives back the creator's own
part (a redirected gift), and **forwards** each guest's part as a guest clawback
``PAYMENT|REFUND_ID|CREATOR|GUEST`` (``via`` = the creator) into the creator's slot's
outbox, applied in the guest's slot like the others. A clawback whose gifts' credits have
not arrived yet is refused ``not_credited`` and stays in its outbox (``docs/ledger.md``,
"Guests on stage in cluster mode").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from server.domain.limits import OUTBOX_ENTRIES_MAX, Limits
from server.ledger.cluster_credits import ScriptRuns
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.hold import hold_args
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

CLAWBACK_KIND = "clawback"
"""The ``kind`` field of a clawback's outbox entry (gift transfers have none)."""
NOT_CREDITED = "not_credited"
"""clawback.lua's refusal while the credits (or guest-credits) of the gifts it reverses have
not all arrived: nothing written, the clawback stays in its outbox and is applied again."""


@dataclass(frozen=True, slots=True)
class Clawback:
    """One creator's part of a chargeback, as refund_claim.lua queued it."""

    clawback_id: str
    payment_id: str
    refund_id: str
    creator_id: str
    buyer_id: str
    coins: int
    items: str
    """``DAY:SHARE_BPS:COINS,...``: the reversed gifts, newest first."""
    claimed_ms: int
    via: str = ""
    """'' for a creator's clawback (refund_claim.lua's); for a guest clawback, the creator
    whose clawback forwarded it (the gifts were to guests on that creator's stage)."""

    @property
    def item_days(self) -> list[int]:
        """The distinct days whose notes the clawback reads: of its stage items (a
        creator's), or of all its items (a guest's)."""
        days: dict[int, None] = {}
        for item in self.items.split(","):
            parts = item.split(":")
            if parts[0].isdigit() and (self.via or parts[3:] == ["stage"]):
                days[int(parts[0])] = None
        return list(days)

    @classmethod
    def from_forward(cls, doc: Mapping[str, Any], parent: Clawback) -> Clawback:
        """From one of a creator's clawback result's ``forwarded`` (a guest's part)."""
        return cls(
            clawback_id=str(doc["clawback_id"]),
            payment_id=parent.payment_id,
            refund_id=parent.refund_id,
            creator_id=str(doc["guest_id"]),
            buyer_id=parent.buyer_id,
            coins=int(doc["coins"]),
            items=str(doc["items"]),
            claimed_ms=parent.claimed_ms,
            via=parent.creator_id,
        )

    @classmethod
    def from_receipt(cls, doc: Mapping[str, Any], receipt: Mapping[str, Any]) -> Clawback:
        """From one of a refund receipt's ``clawbacks`` and the receipt itself."""
        return cls(
            clawback_id=str(doc["clawback_id"]),
            payment_id=str(receipt["payment_id"]),
            refund_id=str(receipt["refund_id"]),
            creator_id=str(doc["creator_id"]),
            buyer_id=str(receipt["user_id"]),
            coins=int(doc["coins"]),
            items=str(doc["items"]),
            claimed_ms=int(doc["ts"]),
        )

    @classmethod
    def from_outbox(cls, fields: Mapping[bytes, bytes]) -> Clawback:
        """From an outbox entry of kind ``clawback``; KeyError/ValueError if broken."""
        text = {key.decode(): value.decode() for key, value in fields.items()}
        return cls(
            clawback_id=text["clawback_id"],
            payment_id=text["payment"],
            refund_id=text["refund_id"],
            creator_id=text["from"],
            buyer_id=text["to"],
            coins=int(text["coins"]),
            items=text["items"],
            claimed_ms=int(text["ts"]),
            via=text.get("via", ""),
        )


def receipt_clawbacks(receipt: Mapping[str, Any]) -> list[Clawback]:
    """The clawbacks a refund_claim receipt queued (cjson writes an empty list as ``{}``)."""
    docs = receipt.get("clawbacks") or []
    return [Clawback.from_receipt(doc, receipt) for doc in docs] if isinstance(docs, list) else []


@dataclass(frozen=True, slots=True)
class ClawbackResult:
    status: str
    """``ok``, ``replay`` (settled) or ``refused`` (``code``; it stays in the outbox)."""
    code: str = ""
    forwarded: tuple[tuple[Clawback, str], ...] = ()
    """A creator's clawback: the guest clawbacks it queued, each with its outbox entry id
    (in the creator's slot's outbox), for the caller to apply at once."""

    @property
    def settled(self) -> bool:
        return self.status in ("ok", "replay")


async def apply_clawback(
    runner: ScriptRuns, keys: ClusterKeys, limits: Limits, clawback: Clawback
) -> ClawbackResult:
    """Run clawback.lua for ``clawback`` in its account's slot (the creator's, or for a
    guest clawback the guest's). ``UnavailableError``: unknown outcome, apply again with the
    same id."""
    k = keys
    account = clawback.creator_id
    slot = slot_of(k.account(account))
    if clawback.via:
        marker = k.guest_clawback_marker(
            account, clawback.payment_id, clawback.refund_id, clawback.via
        )
        notes = [k.guest_held(account, day) for day in clawback.item_days]
    else:
        marker = k.clawback_marker(account, clawback.payment_id, clawback.refund_id)
        notes = [k.stage_held(account, day, clawback.buyer_id) for day in clawback.item_days]
    reply = await runner.run(
        ScriptName.CLAWBACK,
        [
            k.account(account),
            k.platform_shard(slot),
            k.ledger_shard(slot),
            marker,
            k.outbox_shard(slot),
            *notes,
        ],
        [
            clawback.clawback_id,
            account,
            clawback.buyer_id,
            clawback.payment_id,
            clawback.refund_id,
            clawback.items,
            clawback.claimed_ms,
            *hold_args(limits),
            limits.receipt_ttl_s,
            clawback.via,
            OUTBOX_ENTRIES_MAX,
        ],
        order_key=account,
    )
    if reply and reply[0] == b"refused":
        # Its codes are the leg's own (transfer_expired is not a client's error code).
        return ClawbackResult("refused", reply[1].decode())
    body, replayed = unpack(reply)
    doc = orjson.loads(body)
    rows = doc.get("forwarded") or []  # cjson writes an empty list as {}
    forwarded = tuple(
        (Clawback.from_forward(row, clawback), str(row["outbox_id"]))
        for row in (rows if isinstance(rows, list) else [])
    )
    return ClawbackResult("replay" if replayed else "ok", forwarded=forwarded)
