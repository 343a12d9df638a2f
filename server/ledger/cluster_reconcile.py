"""Reconcile a cluster's ledger: every slot's log and outbox against every account.

The single-node reconcile (``reconcile.py``) replays one log. On a cluster each slot has its
own (``{~N}:log``), and a gift is two entries in two of them, a ``gift_debit`` in the
sender's slot and a ``gift_credit`` in the creator's, joined by the transfer id
(``SENDER|CLIENT_ID|DEBIT_ENTRY_ID``). This reads every log and every outbox (XLEN of all
16384 of each, then the ones that have entries) and checks, in integers:

- **each debit has exactly one credit, or is pending**: a debit credited twice, a credit
  without its debit, or a debit neither credited nor in an outbox (lost) is a problem; a
  debit still in an outbox and not credited is *pending* and reported with its age;
- a credit says what its debit said (sender, creator, stream, gift, count, coins, price,
  catalog version, share), its coins are price × count, diamonds + platform = coins;
- each client id is debited once per sender within the receipt window;
- each creator's credits, in its slot's log order, carry ``share_rem`` exactly:
  ``(diamonds, share_rem) = divmod(previous share_rem + coins × share_bps, 10000)``;
- every account's coins, diamonds, debt and share_rem are what the logs add up to, and none
  is negative; the platform shards sum to the credits' platform shares;
- the payout hold: each account's held diamonds are the sum of its day buckets, none
  negative, and held <= diamonds;
- each stream's credits are numbered 1..N with no gap or reuse, and its hash says N;
- coins debited = coins credited + coins pending;
- guests on stage (``cluster_guests.py``): each guest-credit a credit to guests named
  (``recipients``) has exactly one ``guest_credit`` in its guest's slot saying the same
  (transfer, guest, coins), or is pending in an outbox (reported with its age); none
  without its credit; diamonds + platform = coins; the guest's ``share_rem`` carried in
  their slot's log order together with their own credits as a creator (one carry per
  account); the coins a credit gave to guests = coins applied to guests + pending; what
  each guest earned per stream (``{u:GUEST}:earned``) is the sum of their guest-credits.
- each refund's refunded = clawed + reversed + debt, and each clawback a refund claimed
  (``clawback_claim``, buyer's slot) is applied exactly once item for item (``clawback``,
  creator's slot, the exact inverse of the split with share_rem carried), or is pending in
  an outbox and reported with its age; no clawback is applied without its claim;
- the payout hold of gifts to guests (``cluster_clawback_books.py``): the credit leg's and the
  guest-credits' notes per debit day hold what the logs say, each claim's stage items are
  given back by the creator or forwarded in full, and each forwarded guest clawback is
  applied exactly once item for item in its guest's slot, or pending with its age;
- failed payouts return their diamonds.

It only reads, and not atomically: run it on a quiet ledger, as the single-node one. Entry
types this does not know are reported as problems rather than skipped.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from server.ledger.cluster_clawback_books import StageHoldBooks, check_clawbacks
from server.ledger.cluster_clawbacks import CLAWBACK_KIND
from server.ledger.cluster_guests import GUEST_CREDIT_KIND
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.hold import HOLD_FIELDS, hold_problems
from server.ledger.ledger import log_position

_MATCHED = (
    "from",
    "to",
    "stream",
    "gift",
    "count",
    "coins",
    "price",
    "catalog_version",
    "recipient",
)
_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Pending:
    transfer_id: str
    coins: int
    age_ms: int


@dataclass(slots=True)
class ClusterReport:
    problems: list[str] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


Entry = tuple[str, dict[str, str]]


async def _read_all(ledger: ClusterLedger, keys: list[str]) -> dict[str, list[Entry]]:
    found: dict[str, list[Entry]] = {}
    for key in await ledger.shards.lengths(keys):
        entries: list[Entry] = []
        start = "-"
        while True:
            rows = await ledger.command(key, "XRANGE", start, "+", "COUNT", _PAGE)
            for entry_id, fields in rows:
                text = {k.decode(): v.decode() for k, v in fields.items()}
                entries.append((entry_id.decode(), text))
            if len(rows) < _PAGE:
                break
            start = "(" + entries[-1][0]
        found[key] = entries
    return found


def _with_recorded(
    logs: dict[str, list[Entry]], recorded: Mapping[str, list[Entry]]
) -> dict[str, list[Entry]]:
    """Each log's history: what the durable record holds of it (the archiver trims what it
    has recorded), then what Redis still has, each entry once, in log order."""
    merged: dict[str, list[Entry]] = {}
    for key in set(logs) | set(recorded):
        entries = dict(recorded.get(key, []))
        entries.update(logs.get(key, []))
        merged[key] = sorted(entries.items(), key=lambda e: log_position(e[0]))
    return merged


async def reconcile_cluster(
    ledger: ClusterLedger, recorded: Mapping[str, list[Entry]] | None = None
) -> ClusterReport:
    """``recorded``: per log key, the entries the durable record holds (``server.record.
    cluster_logs.recorded_entries``), for logs the archiver has trimmed."""
    report = ClusterReport()
    problems = report.problems
    logs = await _read_all(ledger, ledger.keys.ledger_shards())
    if recorded is not None:
        logs = _with_recorded(logs, recorded)
    outboxes = await _read_all(ledger, ledger.keys.outbox_shards())
    now_ms = int(time.time() * 1000)

    coins: Counter[str] = Counter()
    diamonds: Counter[str] = Counter()
    debt: Counter[str] = Counter()
    share_rem: dict[str, int] = {}
    users: set[str] = set()
    debits: dict[str, dict[str, str]] = {}
    credits: dict[str, list[dict[str, str]]] = defaultdict(list)
    client_ids: dict[tuple[str, str], list[int]] = defaultdict(list)
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    claims: dict[str, tuple[str, dict[str, str]]] = {}
    applied: dict[str, list[dict[str, str]]] = defaultdict(list)
    platform = 0
    stage = _StageBooks()
    lim = ledger.limits
    stage_hold = StageHoldBooks(lim.payout_hold_days, lim.payout_hold_day_s)
    for key, entries in logs.items():
        for entry_id, f in entries:
            kind = f.get("type", "")
            if kind == "top_up":
                users.add(f["to"])
                coins[f["to"]] += int(f["credited"])
                debt[f["to"]] -= int(f["repaid"])
            elif kind == "refund":
                users.add(f["from"])
                coins[f["from"]] -= int(f["clawed"])
                debt[f["from"]] += int(f["debt"])
                parts = int(f["clawed"]) + int(f.get("reversed", 0)) + int(f["debt"])
                if int(f["refunded"]) != parts:
                    problems.append(f"refund {entry_id}: refunded != clawed + reversed + debt")
            elif kind == "clawback_claim":
                claims[f["clawback_id"]] = (entry_id, f)
            elif kind == "clawback_forward":
                stage_hold.forward(entry_id, f)
            elif kind == "clawback":
                creator = f["from"]
                users.add(creator)
                applied[f.get("clawback_id", "")].append(f)
                stage_hold.clawback(f)
                got, fee, paid = int(f["diamonds"]), int(f["platform"]), int(f["coins"])
                diamonds[creator] -= got
                platform -= fee
                # The exact inverse of the split: diamonds x 10000 + share_rem goes down by
                # coins x share.
                before = share_rem.get(creator, 0)
                after = int(f["share_rem"])
                if (
                    got + fee != paid
                    or not 0 <= after < 10000
                    or (before - paid * int(f["share_bps"]) != after - got * 10000)
                ):
                    problems.append(f"clawback {entry_id}: not the inverse of the split")
                share_rem[creator] = after
            elif kind == "cash_out":
                users.add(f["from"])
                diamonds[f["from"]] -= int(f["diamonds"])
            elif kind == "payout":
                users.add(f["to"])
                if f["state"] == "failed":
                    diamonds[f["to"]] += int(f["diamonds"])
                elif f["state"] != "paid":
                    problems.append(f"payout {entry_id}: state {f['state']!r}")
            elif kind == "gift_debit":
                users.add(f["from"])
                transfer = f"{f['from']}|{f['client_id']}|{entry_id}"
                debits[transfer] = f
                coins[f["from"]] -= int(f["coins"])
                client_ids[(f["from"], f["client_id"])].append(log_position(entry_id)[0])
                if int(f["coins"]) != int(f["price"]) * int(f["count"]):
                    problems.append(f"debit {transfer}: coins are not price x count")
            elif kind == "gift_credit":
                creator = f["to"]
                users.add(creator)
                credits[f["transfer_id"]].append(f)
                stage_hold.credit(entry_id, f)
                got, fee, paid = int(f["diamonds"]), int(f["platform"]), int(f["coins"])
                diamonds[creator] += got
                platform += fee
                if "recipients" in f:
                    # The guests earn it, in their own slots: the creator's carry stays.
                    paid = stage.credit_to_guests(f, problems)
                if got + fee != paid:
                    problems.append(f"credit {f['transfer_id']}: diamonds + platform != coins")
                expected = divmod(share_rem.get(creator, 0) + paid * int(f["share_bps"]), 10000)
                if (got, int(f["share_rem"])) != expected:
                    problems.append(f"credit {f['transfer_id']}: share_rem carry broken")
                share_rem[creator] = int(f["share_rem"])
                seqs[(creator, f["stream"])].append(int(f["seq"]))
            elif kind == "guest_credit":
                guest = f["to"]
                users.add(guest)
                got, fee, paid = int(f["diamonds"]), int(f["platform"]), int(f["coins"])
                diamonds[guest] += got
                platform += fee
                stage.applied[f["credit_id"]].append(f)
                stage_hold.guest_credit(entry_id, f)
                stage.earned[(guest, f["stream"])] += got
                if got + fee != paid:
                    problems.append(f"guest credit {f['credit_id']}: diamonds + platform != coins")
                expected = divmod(share_rem.get(guest, 0) + paid * int(f["share_bps"]), 10000)
                if (got, int(f["share_rem"])) != expected:
                    problems.append(f"guest credit {f['credit_id']}: share_rem carry broken")
                share_rem[guest] = int(f["share_rem"])
            else:
                problems.append(f"{key} {entry_id}: entry type {kind!r} not reconciled here")

    pending_ids: dict[str, tuple[str, dict[str, str]]] = {}
    pending_claws: dict[str, str] = {}
    for _key, entries in outboxes.items():
        for entry_id, f in entries:
            if f.get("kind") == GUEST_CREDIT_KIND:
                stage.waiting[f.get("credit_id", "")] = (entry_id, f)
                continue
            if f.get("kind") == CLAWBACK_KIND:
                pending_claws[f.get("clawback_id", "")] = entry_id
                continue
            transfer = f.get("transfer_id", "")
            if transfer not in debits:
                problems.append(f"outbox entry {entry_id}: no debit for {transfer!r}")
            pending_ids[transfer] = (entry_id, f)

    credited = pending = 0
    for transfer, debit in debits.items():
        done = credits.get(transfer, [])
        if len(done) > 1:
            problems.append(f"transfer {transfer} credited {len(done)} times")
        if done:
            credited += int(debit["coins"])
            for field_name in _MATCHED:
                if done[0].get(field_name) != debit.get(field_name):
                    problems.append(f"transfer {transfer}: credit's {field_name} differs")
        elif transfer in pending_ids:
            entry_id = pending_ids[transfer][0]
            age = now_ms - log_position(entry_id)[0]
            report.pending.append(Pending(transfer, int(debit["coins"]), age))
            pending += int(debit["coins"])
        else:
            problems.append(f"transfer {transfer} debited, neither credited nor pending")
    for transfer in credits:
        if transfer not in debits:
            problems.append(f"credit {transfer} has no debit")

    clawed_pending, waiting = check_clawbacks(
        claims, applied, pending_claws, now_ms, problems, stage_hold
    )
    report.pending += [Pending(*row) for row in waiting]
    await stage_hold.check_notes(ledger, problems)
    report.pending += stage.check(problems, now_ms)
    for (guest, stream), earned in stage.earned.items():
        held = await ledger.command(ledger.keys.guest_earned(guest), "HGET", stream)
        if int(held or 0) != earned:
            problems.append(f"guest {guest} on {stream}: earned {held!r}, the log says {earned}")

    window_ms = ledger.limits.receipt_ttl_s * 1000
    for (sender, client_id), times in client_ids.items():
        times.sort()
        if any(b - a < window_ms for a, b in itertools.pairwise(times)):
            problems.append(f"client id {client_id} of {sender} debited twice in its window")

    for (creator, stream), numbers in seqs.items():
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            problems.append(f"stream {stream}: credits are not numbered 1..{len(numbers)}")
        last = await ledger.command(ledger.keys.stream(creator, stream), "HGET", "seq")
        if int(last or 0) != len(numbers):
            problems.append(f"stream {stream}: seq is {last!r}, the log says {len(numbers)}")

    for user in sorted(users):
        stored = await ledger.command(
            ledger.keys.account(user), "HMGET", "coins", "diamonds", "debt", "share_rem",
            *HOLD_FIELDS,
        )  # fmt: skip
        values = [int(v) if v is not None else 0 for v in stored[:4]]
        problems += hold_problems(user, stored[4:], values[1])
        want = [coins[user], diamonds[user], debt[user], share_rem.get(user, 0)]
        if values != want:
            problems.append(f"account {user}: holds {values}, the logs say {want}")
        if min(values) < 0:
            problems.append(f"account {user}: negative balance {values}")

    shares = await ledger.shards.sum_field(ledger.keys.platform_shards(), "coins")
    if shares != platform:
        problems.append(f"platform shards hold {shares}, the credits say {platform}")
    debited = sum(int(d["coins"]) for d in debits.values())
    if debited != credited + pending:
        problems.append(f"coins debited {debited} != credited {credited} + pending {pending}")
    report.totals = {
        "clawbacks": len(claims),
        "coins_clawed_back_pending": clawed_pending,
        "log_entries": sum(len(e) for e in logs.values()),
        "log_shards": len(logs),
        "accounts": len(users),
        "transfers": len(debits),
        "coins_debited": debited,
        "coins_credited": credited,
        "coins_pending": pending,
        "platform_coins": platform,
        "diamonds_credited": sum(diamonds.values()),
        "outbox_entries": sum(len(e) for e in outboxes.values()),
        "outbox_slots": len({slot_of(k) for k in outboxes}),
        "guest_credits": len(stage.expected),
        "coins_to_guests": stage.coins,
        "coins_to_guests_pending": stage.coins_pending,
    }
    return report


@dataclass(slots=True)
class _StageBooks:
    """The guest-credits: what the credits to guests named, what the guests' slots applied,
    what waits in the outboxes."""

    expected: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    """credit id -> (transfer id, guest, coins), from the credits' ``recipients``."""
    applied: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    waiting: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    earned: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(guest, stream) -> diamonds their guest-credits gave them there."""
    coins: int = 0
    coins_pending: int = 0
    """Of ``coins``, those whose guest-credit waits in an outbox (``check``)."""

    def credit_to_guests(self, f: dict[str, str], problems: list[str]) -> int:
        """Record a credit's guest-credits; returns the coins the creator's part must add
        up to (those not given to guests: none)."""
        transfer, given = f["transfer_id"], 0
        for part in f["recipients"].split(";"):
            guest, _, coins = part.rpartition(":")
            credit_id = f"{transfer}|{guest}"
            if credit_id in self.expected:
                problems.append(f"credit {transfer}: guest {guest} named twice")
            self.expected[credit_id] = (transfer, guest, int(coins))
            given += int(coins)
        self.coins += given
        if given != int(f["coins"]):
            problems.append(f"credit {transfer}: the guests' coins do not add up to the gift's")
        return int(f["coins"]) - given

    def check(self, problems: list[str], now_ms: int) -> list[Pending]:
        pending: list[Pending] = []
        applied_coins = waiting_coins = 0
        for credit_id, (transfer, guest, coins) in self.expected.items():
            done = self.applied.get(credit_id, [])
            if len(done) > 1:
                problems.append(f"guest credit {credit_id} applied {len(done)} times")
            if done:
                applied_coins += coins
                f = done[0]
                if (f["transfer_id"], f["to"], int(f["coins"])) != (transfer, guest, coins):
                    problems.append(f"guest credit {credit_id}: differs from its credit")
            elif credit_id in self.waiting:
                age = now_ms - log_position(self.waiting[credit_id][0])[0]
                pending.append(Pending(credit_id, coins, age))
                waiting_coins += coins
            else:
                problems.append(f"guest credit {credit_id} neither applied nor pending")
        for credit_id in self.applied:
            if credit_id not in self.expected:
                problems.append(f"guest credit {credit_id} has no credit naming it")
        for credit_id, (entry_id, _) in self.waiting.items():
            if credit_id not in self.expected:
                problems.append(f"outbox entry {entry_id}: no credit for {credit_id!r}")
        self.coins_pending = waiting_coins
        if self.coins != applied_coins + waiting_coins:
            problems.append(
                f"coins to guests {self.coins} != applied {applied_coins} + pending {waiting_coins}"
            )
        return pending
