"""Reads of the record: a wallet's history, paged newest first.

The record trails Redis by the archive lag (about a second while the archiver keeps up):
a transfer shows up here once it is archived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.record.connection import RecordPool
from server.record.postings import SINGLE_NODE_LOG, Account, RecordError, parse_entry_id

HISTORY_PAGE_MAX = 100

# Every transfer the user is a party to, with the user's own postings (none for a gift that
# earned 0 diamonds). In cluster mode a transfer is two entries, one per leg, each naming
# both parties: a user sees the leg of their own side (_CLUSTER_KINDS), the sender the
# debit, the creator the credit (even one that earned 0 diamonds), a guest their
# guest-credit, the buyer the clawback claim, the creator (or guest) the clawback; and any
# leg that posted to them (a clawback_forward posts nothing, so nobody sees it).
# Newest first by (time, seq, slot): two slots' logs may give two transfers one entry id,
# so the cursor names the slot too (HistoryCursor).
_HISTORY = """
SELECT t.log_ms, t.log_seq, t.type, t.stream_id, t.gift_id, t.count, t.client_id,
       t.payment_id, t.fields,
       coalesce(array_agg(p.account) FILTER (WHERE p.account IS NOT NULL), '{}'),
       coalesce(array_agg(p.amount) FILTER (WHERE p.account IS NOT NULL), '{}'),
       t.log_slot
  FROM transfers t
  LEFT JOIN postings p
    ON p.log_slot = t.log_slot AND p.log_ms = t.log_ms AND p.log_seq = t.log_seq
   AND p.user_id = %(user)s
 WHERE (t.from_user = %(user)s OR t.to_user = %(user)s)
   AND (t.log_ms, t.log_seq, t.log_slot) < (%(ms)s, %(seq)s, %(slot)s)
   AND (t.type NOT IN ('gift_debit', 'gift_credit', 'guest_credit', 'clawback_claim',
                       'clawback', 'clawback_forward')
        OR t.type = 'clawback' AND t.fields->>'clawback_id' IS NULL
        OR t.type = 'gift_debit' AND t.from_user = %(user)s
        OR t.type IN ('gift_credit', 'guest_credit', 'clawback_claim') AND t.to_user = %(user)s
        OR t.type = 'clawback' AND t.from_user = %(user)s
        OR EXISTS (SELECT 1 FROM postings q
                    WHERE q.log_slot = t.log_slot AND q.log_ms = t.log_ms
                      AND q.log_seq = t.log_seq AND q.user_id = %(user)s))
 GROUP BY t.log_slot, t.log_ms, t.log_seq
 ORDER BY t.log_ms DESC, t.log_seq DESC, t.log_slot DESC
 LIMIT %(limit)s
"""


HistoryCursor = tuple[int, int, int]
"""(log_ms, log_seq, log_slot) of the last transfer of a page: the next page is older."""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[dict[str, Any]]
    next_before: str | None
    """Pass as ``before`` for the next (older) page; None on the last page. ``MS-SEQ`` for a
    single-node transfer, ``SLOT/MS-SEQ`` for a cluster one (``parse_cursor``)."""


def parse_cursor(raw: str) -> HistoryCursor:
    """``SLOT/MS-SEQ`` or ``MS-SEQ`` (the single-node log, slot -1: also what a client holding
    a transfer id passes, which skips every other slot's transfer with the same id)."""
    slot_text, sep, entry_id = raw.rpartition("/")
    if sep and not (slot_text.isascii() and slot_text.isdigit() and int(slot_text) < 16384):
        raise RecordError(f"not a history cursor: {raw!r}")
    ms, seq = parse_entry_id(entry_id)
    return ms, seq, int(slot_text) if sep else SINGLE_NODE_LOG


def _cursor(ms: int, seq: int, slot: int) -> str:
    return f"{ms}-{seq}" if slot == SINGLE_NODE_LOG else f"{slot}/{ms}-{seq}"


_CLUSTER_KINDS = {
    "gift_debit": "gift_sent",
    "gift_credit": "gift_received",
    "guest_credit": "gift_received",
    "clawback_claim": "gift_reversed",
}
"""Cluster mode's leg entries as the single-node kinds of the user they moved money of."""


def _kind(entry_type: str, fields: dict[str, str], user_id: str) -> str:
    if entry_type in _CLUSTER_KINDS:
        return _CLUSTER_KINDS[entry_type]
    if entry_type == "gift":
        return "gift_sent" if fields.get("from") == user_id else "gift_received"
    if entry_type == "payout":
        return f"payout_{fields.get('state')}"
    if entry_type == "clawback":
        # A chargeback reversed a gift in the payout hold: the creator gave the diamonds
        # back, the sender got the coins back (which the refund took).
        return "clawback" if fields.get("from") == user_id else "gift_reversed"
    return entry_type


def _item(row: tuple[Any, ...], user_id: str) -> dict[str, Any]:
    ms, seq, entry_type, stream_id, gift_id, count, client_id, payment_id, fields = row[:9]
    accounts, amounts = row[9], row[10]
    changes: dict[str, int] = {}
    for account, amount in zip(accounts, amounts, strict=True):
        changes[account] = changes.get(account, 0) + int(amount)
    counterparty = fields.get("to") if fields.get("from") == user_id else fields.get("from")
    item: dict[str, Any] = {
        "transfer_id": f"{ms}-{seq}",
        "kind": _kind(entry_type, fields, user_id),
        "at_ms": int(ms),
        "coins": changes.get(Account.COINS.value, 0),
        "diamonds": changes.get(Account.DIAMONDS.value, 0),
        # The debt account holds minus what is owed: owing more is a positive change here.
        "debt_coins": -changes.get(Account.DEBT.value, 0),
    }
    optional = {
        "stream_id": stream_id,
        "gift_id": gift_id,
        "count": count,
        "client_id": client_id,
        "payment_id": payment_id,
        "refund_id": fields.get("refund_id") or None,
        "counterparty": counterparty
        if entry_type in ("gift", "clawback", *_CLUSTER_KINDS)
        else None,
    }
    item.update({k: v for k, v in optional.items() if v is not None})
    if row[11] != SINGLE_NODE_LOG:
        # Two slots' logs may give two transfers one id: with its slot, the transfer's key.
        item["log_slot"] = int(row[11])
    return item


async def wallet_history(
    pool: RecordPool,
    user_id: str,
    *,
    before: HistoryCursor | tuple[int, int] | None,
    limit: int,
) -> HistoryPage:
    """The user's transfers older than ``before`` (``parse_cursor``; an entry id (ms, seq)
    is the single-node log's), newest first."""
    limit = max(1, min(limit, HISTORY_PAGE_MAX))
    ms, seq, slot = (2**62, 0, 0) if before is None else (*before[:2], SINGLE_NODE_LOG)
    if before is not None and len(before) == 3:
        slot = before[2]
    args = {"user": user_id, "ms": ms, "seq": seq, "slot": slot, "limit": limit + 1}
    async with pool.connection() as conn:
        rows = await (await conn.execute(_HISTORY, args)).fetchall()
    items = [_item(row, user_id) for row in rows[:limit]]
    next_before = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_before = _cursor(int(last[0]), int(last[1]), int(last[11]))
    return HistoryPage(items, next_before)
