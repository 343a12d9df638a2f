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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.domain.limits import Limits
from server.ledger.cluster_credits import ScriptRuns
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.hold import hold_args
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

CLAWBACK_KIND = "clawback"
"""The ``kind`` field of a clawback's outbox entry (gift transfers have none)."""


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
        )


def receipt_clawbacks(receipt: Mapping[str, Any]) -> list[Clawback]:
    """The clawbacks a refund_claim receipt queued (cjson writes an empty list as ``{}``)."""
    docs = receipt.get("clawbacks") or []
    return [Clawback.from_receipt(doc, receipt) for doc in docs] if isinstance(docs, list) else []


async def apply_clawback(
    runner: ScriptRuns, keys: ClusterKeys, limits: Limits, clawback: Clawback
) -> tuple[str, str]:
    """Run clawback.lua for ``clawback`` in its creator's slot: (status, detail) with status
    ``ok``, ``replay`` (settled) or ``refused`` (code in detail; it stays in the outbox).
    ``UnavailableError``: unknown outcome, apply again with the same id."""
    k = keys
    slot = slot_of(k.account(clawback.creator_id))
    reply = await runner.run(
        ScriptName.CLAWBACK,
        [
            k.account(clawback.creator_id),
            k.platform_shard(slot),
            k.ledger_shard(slot),
            k.clawback_marker(clawback.creator_id, clawback.payment_id, clawback.refund_id),
        ],
        [
            clawback.clawback_id,
            clawback.creator_id,
            clawback.buyer_id,
            clawback.payment_id,
            clawback.refund_id,
            clawback.items,
            clawback.claimed_ms,
            *hold_args(limits),
            limits.receipt_ttl_s,
        ],
        order_key=clawback.creator_id,
    )
    if reply and reply[0] == b"refused":
        # Its codes are the leg's own (transfer_expired is not a client's error code).
        return "refused", reply[1].decode()
    _, replayed = unpack(reply)
    return ("replay" if replayed else "ok"), ""
