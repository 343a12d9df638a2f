"""Reconcile the payout hold of gifts to guests on a cluster (``docs/ledger.md``, "Guests on
stage in cluster mode"). Part of ``cluster_reconcile.py``; it only reads.

A gift to guests is noted in the sender's record under the creator (a stage entry), and the
legs that decide who received it keep notes per debit day that a chargeback's clawback
resolves and takes down: ``{u:CREATOR}:stage_held:DAY|SENDER`` (``RECIPIENT|SHARE`` ->
coins, written by the credit leg: the guests, or the creator for a redirected gift) and
``{u:GUEST}:guest_held:DAY`` (``SENDER|CREATOR|SHARE`` -> coins, written by each
guest-credit). Replaying the logs gives what each note must hold: the credits' and
guest-credits' coins less the clawbacks' (``clawback`` entries with ``stage`` or ``via``)
and the forwards' (``clawback_forward``, a guest's part of a creator's clawback). Each note
of a day still in the hold is compared with Redis'; older ones expire by themselves.

The forwards themselves are checked with the claims (``check_forwards``): each guest
clawback a creator's clawback forwarded is applied exactly once item for item in the
guest's slot, or pending in an outbox with its age.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.hold import hold_day_of
from server.ledger.ledger import log_position

STAGE_HELD = "stage_held"
GUEST_HELD = "guest_held"

NoteKey = tuple[str, str, int, str]
"""(kind, user, day, sender): one note hash (sender '' for a guest's, which is per day)."""


def items_of(text: str) -> list[tuple[int, int, int, bool]]:
    """``DAY:SHARE:COINS[:stage],...`` -> (day, share, coins, stage) each."""
    out = []
    for item in text.split(","):
        day, share, coins, *mark = item.split(":")
        out.append((int(day), int(share), int(coins), mark == ["stage"]))
    return out


@dataclass(slots=True)
class StageHoldBooks:
    hold_days: int
    day_s: int
    notes: dict[NoteKey, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    forwards: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    """Guest clawback id -> (its ``clawback_forward`` entry id, fields)."""
    by_parent: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))

    def _debit_day(self, transfer_id: str) -> int:
        return hold_day_of(log_position(transfer_id.rsplit("|", 1)[-1])[0], self.day_s)

    def _kept(self, day: int, entry_id: str) -> bool:
        """Whether a leg that ran at ``entry_id``'s time kept a note of ``day``
        (``_hold_legs.lua``'s ``hold_notes_day``)."""
        written_s = log_position(entry_id)[0] // 1000
        return self.hold_days > 0 and (day + self.hold_days + 2) * self.day_s > written_s

    def credit(self, entry_id: str, f: dict[str, str]) -> None:
        """A ``gift_credit``: a gift to guests notes who received it."""
        if "recipient" not in f:
            return
        day = self._debit_day(f["transfer_id"])
        if not self._kept(day, entry_id):
            return
        note = self.notes[(STAGE_HELD, f["to"], day, f["from"])]
        if "recipients" in f:
            for part in f["recipients"].split(";"):
                guest, _, coins = part.rpartition(":")
                note[f"{guest}|{f['share_bps']}"] += int(coins)
        elif "redirected" in f:
            note[f"{f['to']}|{f['share_bps']}"] += int(f["coins"])

    def guest_credit(self, entry_id: str, f: dict[str, str]) -> None:
        day = self._debit_day(f["transfer_id"])
        if self._kept(day, entry_id):
            note = self.notes[(GUEST_HELD, f["to"], day, "")]
            note[f"{f['from']}|{f['creator']}|{f['share_bps']}"] += int(f["coins"])

    def clawback(self, f: dict[str, str]) -> None:
        """A ``clawback`` entry: a redirected gift's part (``stage``) or a guest's (``via``)
        takes its note down."""
        day, share, coins = int(f["day"]), f["share_bps"], int(f["coins"])
        if "stage" in f:
            self.notes[(STAGE_HELD, f["from"], day, f["to"])][f"{f['from']}|{share}"] -= coins
        elif "via" in f:
            self.notes[(GUEST_HELD, f["from"], day, "")][f"{f['to']}|{f['via']}|{share}"] -= coins

    def forward(self, entry_id: str, f: dict[str, str]) -> None:
        """A ``clawback_forward``: a guest's part of a creator's clawback."""
        self.forwards[f["clawback_id"]] = (entry_id, f)
        self.by_parent[f["parent"]].append(f)
        for day, share, coins, _ in items_of(f["items"]):
            self.notes[(STAGE_HELD, f["via"], day, f["to"])][f"{f['from']}|{share}"] -= coins

    async def check_notes(self, ledger: ClusterLedger, problems: list[str]) -> None:
        """Each note of a day still in the hold holds what the logs say."""
        today = int(time.time()) // self.day_s
        k = ledger.keys
        for (kind, user, day, sender), want in sorted(self.notes.items()):
            if day < today - self.hold_days:
                continue  # expiring or expired: nothing claims it any more
            key = k.stage_held(user, day, sender) if kind == STAGE_HELD else k.guest_held(user, day)
            raw = await ledger.command(key, "HGETALL")
            held = {name.decode(): int(v) for name, v in (raw or {}).items()}
            expected = {name: coins for name, coins in want.items() if coins != 0}
            if held != expected:
                problems.append(f"{key}: holds {held}, the logs say {expected}")
            if min(want.values(), default=0) < 0:
                problems.append(f"{key}: clawed back more than received")
