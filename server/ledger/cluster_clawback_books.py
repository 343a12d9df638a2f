"""Reconcile a cluster's chargebacks: each clawback claimed applied exactly once, and the
payout hold of gifts to guests (``docs/ledger.md``, "The payout hold in cluster mode" and
"Guests on stage in cluster mode"). Part of ``cluster_reconcile.py``; it only reads.

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


def check_clawbacks(
    claims: dict[str, tuple[str, dict[str, str]]],
    applied: dict[str, list[dict[str, str]]],
    pending: dict[str, str],
    now_ms: int,
    problems: list[str],
    stage: StageHoldBooks,
) -> tuple[int, list[tuple[str, int, int]]]:
    """Each clawback a refund claimed is applied exactly once, item for item (one
    ``clawback`` entry per reversed gift, in the creator's slot; a stage item's coins split
    between the creator's own ``stage`` entries and the guest clawbacks it forwarded), or
    pending in an outbox; each forwarded guest clawback likewise in its guest's slot.
    Returns the coins pending, and (id, coins, age ms) of each clawback pending."""
    waiting: list[tuple[str, int, int]] = []
    coins_pending = 0
    for clawback_id, (entry_id, claim) in claims.items():
        done = applied.get(clawback_id, [])
        forwarded = stage.by_parent.get(clawback_id, [])
        items = sorted(i for i in claim["items"].split(",") if not i.endswith(":stage"))
        got = sorted(f"{f['day']}:{f['share_bps']}:{f['coins']}" for f in done if "stage" not in f)
        staged = _stage_sums(claim["items"].split(","), marked_only=True)
        resolved = _stage_sums(
            [f"{f['day']}:{f['share_bps']}:{f['coins']}" for f in done if "stage" in f]
            + [item for f in forwarded for item in f["items"].split(",")]
        )
        if (done or forwarded) and (got != items or resolved != staged):
            problems.append(
                f"clawback {clawback_id}: applied {got} {resolved}, claimed {items} {staged}"
            )
        elif not (done or forwarded) and clawback_id in pending:
            age = now_ms - log_position(pending[clawback_id])[0]
            waiting.append((clawback_id, int(claim["coins"]), age))
            coins_pending += int(claim["coins"])
        elif not (done or forwarded):
            problems.append(f"clawback {clawback_id} claimed, neither applied nor pending")
        for f in [*done, *forwarded]:
            if (f["to"], f["payment"], f["refund_id"]) != (
                claim["to"],
                claim["payment"],
                claim["refund_id"],
            ):
                problems.append(f"clawback {clawback_id}: applied for another refund")
        if claim["from"] != clawback_id.rsplit("|", 1)[-1]:
            problems.append(f"clawback {clawback_id} ({entry_id}): names another creator")
    for child_id, (entry_id, f) in stage.forwards.items():
        done = applied.get(child_id, [])
        items = sorted(f["items"].split(","))
        got = sorted(f"{d['day']}:{d['share_bps']}:{d['coins']}" for d in done)
        if done and got != items:
            problems.append(f"guest clawback {child_id}: applied {got}, forwarded {items}")
        elif not done and child_id in pending:
            age = now_ms - log_position(pending[child_id])[0]
            waiting.append((child_id, int(f["coins"]), age))
            coins_pending += int(f["coins"])
        elif not done:
            problems.append(f"guest clawback {child_id} forwarded, neither applied nor pending")
        for d in done:
            if (d["to"], d["payment"], d["refund_id"], d.get("via")) != (
                f["to"], f["payment"], f["refund_id"], f["via"],
            ):  # fmt: skip
                problems.append(f"guest clawback {child_id}: applied for another refund")
        if f["parent"] not in claims or child_id != f"{f['parent']}|{f['from']}":
            problems.append(f"guest clawback {child_id} ({entry_id}): not its claim's part")
    for clawback_id in applied:
        if clawback_id not in claims and clawback_id not in stage.forwards:
            problems.append(f"clawback {clawback_id!r} applied without its claim")
    return coins_pending, waiting


def _stage_sums(items: list[str], *, marked_only: bool = False) -> dict[tuple[int, int], int]:
    """The coins of ``items`` (``DAY:SHARE:COINS[:stage]``; with ``marked_only`` only the
    stage items) per (day, share)."""
    sums: Counter[tuple[int, int]] = Counter()
    for day, share, coins, stage in items_of(",".join(items)) if items else []:
        if stage or not marked_only:
            sums[(day, share)] += coins
    return dict(sums)
