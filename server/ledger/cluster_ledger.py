"""The ledger on a Redis Cluster: every money operation inside one slot (``docs/ledger.md``).

A gift is two legs: ``debit_gift.lua`` in the sender's slot (receipt, limits, balance,
debit, an outbox entry) and ``credit_gifts.lua`` in the creator's slot (diamonds, seq, feed,
SPUBLISH), joined by the transfer id ``SENDER|CLIENT_ID|DEBIT_LOG_ID``. ``send_gift`` runs
the credit at once after the debit (the fast path, batched per stream by ``CreditBatcher``)
and removes the settled outbox entry; the relay (``cluster_relay.py``) settles what a
crash, a timeout or a refusal left in the outboxes.

Contract of ``send_gift``, as in single-node mode: it either debits and credits the gift or
moves nothing; a retry with the same client id replays the debit's receipt (never a second
debit) and settles the credit of that same transfer, which the credit leg replays if it had
committed, so the retry returns the original ``gift_ack`` values. ``UnavailableError``
means unknown: retry with the same id. Between the legs the gift is *debited and pending*:
the sender's coins are gone and the creator's diamonds not yet there, for as long as the
relay takes (``docs/ledger.md``, "The two legs"); reconcile reports each such transfer
with its age.

The other money scripts need no second leg: in cluster mode their keys are laid out in one
slot (a payment and its refunds in the buyer's slot, a cash-out in the creator's), with a
claim in the id's own slot where one id must never name two accounts (a stream id, a
payment id).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections import defaultdict
from typing import Any, cast

import orjson
from redis import exceptions as redis_errors

from server.domain.catalog import Catalog, parse_catalog
from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal, UnavailableError
from server.domain.limits import (
    AMOUNT_MAX,
    GIFT_COUNT_MAX,
    OUTBOX_ENTRIES_MAX,
    SEND_COINS_MAX,
    Limits,
)
from server.domain.money import Economics
from server.ledger.catalogs import VERSION_FIELD, CatalogStore
from server.ledger.change_limits import ChangeLimiter
from server.ledger.cluster_battles import ClusterBattles
from server.ledger.cluster_catalog import CatalogSlot
from server.ledger.cluster_clawbacks import (
    NOT_CREDITED,
    Clawback,
    apply_clawback,
    receipt_clawbacks,
)
from server.ledger.cluster_credits import CreditBatcher, CreditResult, Transfer
from server.ledger.cluster_goals import ClusterGoals
from server.ledger.cluster_guests import ClusterStage, GuestCredit, GuestCredits, GuestResult
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.cluster_shards import Shards
from server.ledger.hold import hold_args
from server.ledger.ledger import StreamChange, _stream_change
from server.ledger.receipts import (
    CashOutReceipt,
    GiftReceipt,
    PayoutReceipt,
    RefundReceipt,
    TopUpReceipt,
    unpack,
)
from server.ledger.scripts import ScriptName
from server.ledger.spending import SpendingStore

log = logging.getLogger("giftwire.ledger")

CRASH_AFTER_DEBIT_ENV = "GIFTWIRE_TEST_CRASH_AFTER_DEBIT"
"""Test-only hook: ``1`` kills this process (SIGKILL) right after a debit committed, before
its credit (``tests/cluster/test_leg_faults.py``). Read once, at import."""
_CRASH_AFTER_DEBIT = os.environ.get(CRASH_AFTER_DEBIT_ENV) == "1"
CRASH_BEFORE_GUESTS_ENV = "GIFTWIRE_TEST_CRASH_BEFORE_GUEST_CREDITS"
"""Test-only hook: ``1`` kills this process (SIGKILL) after a credit to guests committed,
before its guest-credits (``tests/cluster/test_cluster_guests.py``). Read once, at import."""
_CRASH_BEFORE_GUESTS = os.environ.get(CRASH_BEFORE_GUESTS_ENV) == "1"
CRASH_AFTER_REFUND_CLAIM_ENV = "GIFTWIRE_TEST_CRASH_AFTER_REFUND_CLAIM"
"""Test-only hook: ``1`` kills this process (SIGKILL) right after a refund's buyer leg
committed, before its clawbacks (``tests/cluster/test_cluster_money_serve.py``)."""
_CRASH_AFTER_REFUND_CLAIM = os.environ.get(CRASH_AFTER_REFUND_CLAIM_ENV) == "1"
_COPY_PART = 1024


class ClusterLedger(ClusterGoals):
    """Money operations on a cluster; the same method contracts as ``Ledger`` (the goal
    calls in ``cluster_goals.py``, the reads in ``cluster_reads.py``)."""

    def __init__(
        self,
        runner: ClusterScriptRunner,
        *,
        keys: ClusterKeys | None = None,
        limits: Limits | None = None,
        economics: Economics | None = None,
    ) -> None:
        super().__init__(runner, keys or ClusterKeys(), limits or Limits())
        self.economics = economics or Economics()
        self.shards = Shards(runner.slots, timeout_s=self.limits.redis_timeout_s)
        self.credits = CreditBatcher(runner, self.keys, self.limits)
        self.guests = ClusterStage(self)
        """The stage scripts in the creator's slot (``cluster_guests.py``)."""
        self.guest_credits = GuestCredits(runner, self.keys, self.limits)
        # One key, the user's account: the same script as single-node, in its slot.
        self.spending = SpendingStore(runner, self.keys, self.limits)
        self.changes = ChangeLimiter(runner, self.keys, self.limits)  # the user's slot
        # Each side in its own stream's slot (docs/ledger.md, "Battles in cluster mode").
        self.battles = ClusterBattles(self, self.keys, self.limits)
        # The managed catalog: the single-node store, its keys in the {catalog} slot.
        self.catalogs = CatalogStore(CatalogSlot(self), self.keys, runner)
        self.catalog: Catalog | None = None
        self._to_delete: dict[str, list[str]] = defaultdict(list)
        self._deleting = False
        self._delete_task: asyncio.Task[None] | None = None
        self.unsettled_slots: set[int] = set()
        """Slots whose outbox this process left an entry in (a failed or refused credit):
        the relay looks there first, before its next full sweep."""

    async def _run(
        self, name: ScriptName, keys: list[str], args: list[str | int], order_key: str
    ) -> tuple[bytes, bool]:
        try:
            return unpack(await self.runner.run(name, keys, args, order_key=order_key))
        except LedgerRefusal as refusal:
            if refusal.code is ErrorCode.UNAVAILABLE:  # nothing written: retry later
                reason = (refusal.detail or {}).get("reason", "")
                raise UnavailableError(f"{name}: {reason}") from None
            raise

    # Start: scripts on every primary, the catalog and its copy in every slot.

    async def prepare(self, catalog: Catalog) -> Catalog:
        """Load the scripts, seed ``catalog`` if the cluster holds none, copy the current
        version into every slot that lacks it. Returns the catalog the cluster holds."""
        await self.runner.prepare()
        self.runner.on_reload = None
        args: list[str | int] = [
            "seed",
            catalog.document().decode(),
            1,
            SEND_COINS_MAX // GIFT_COUNT_MAX,
            "",  # no scheduled edit: a seed
        ]
        for gift_id, price in catalog.prices().items():
            args += [gift_id, price]
        k = self.keys
        catalog_keys = [k.catalog(), k.catalog_versions(), k.catalog_schedule(), k.catalog_due()]
        await self.runner.run(ScriptName.PUBLISH_CATALOG, catalog_keys, args)
        held = await self.current_catalog()
        await self.copy_catalog(held)
        return held

    async def current_catalog(self) -> Catalog:
        version = await self.command(self.keys.catalog(), "HGET", VERSION_FIELD)
        if version is None:
            raise InvariantError("the cluster holds no catalog")
        if self.catalog is None or self.catalog.version != int(version):
            raw = await self.command(self.keys.catalog_versions(), "HGET", int(version))
            parsed = parse_catalog(cast(bytes, raw))
            self.catalog = Catalog(version=int(version), gifts=parsed.gifts)
        return self.catalog

    async def copy_catalog(self, catalog: Catalog) -> int:
        """Copy ``catalog`` into every slot whose copy is an older version
        (``copy_catalog.lua``: the whole copy replaced in one step, never by an older
        version, so copies racing from several processes end at the newest). Returns the
        slots written. Safe to repeat after ``UnavailableError``."""
        shards = self.keys.catalog_shards()
        args = _copy_args(catalog)
        sha = self.runner.script(ScriptName.COPY_CATALOG).sha
        written = 0
        # In parts, so that each part's pipelines finish well within the call timeout on a
        # loaded machine (all 16384 at once took seconds here).
        for start in range(0, len(shards), _COPY_PART):
            part = shards[start : start + _COPY_PART]
            versions = await self.shards.field_of_each(part, VERSION_FIELD)
            stale = [key for key, value in versions.items() if _older(value, catalog.version)]
            if not stale:
                continue
            try:
                replies = await self.shards.script_on_each(stale, sha, args)
            except redis_errors.NoScriptError:  # a promoted replica: load, then once more
                await self.runner.ensure_loaded()
                replies = await self.shards.script_on_each(stale, sha, args)
            for reply in replies.values():
                _, held = unpack(cast(list[bytes], reply))  # a refusal (bad arguments) raises
                written += not held
        if written:
            log.info("catalog version %d copied into %d slots", catalog.version, written)
        return written

    # Streams: the id's claim in its own slot, the stream in its creator's.

    async def start_stream(
        self,
        *,
        stream_id: str,
        creator_id: str,
        title: str,
        creator_name: str | None = None,
        epoch: str | None = None,
    ) -> StreamChange:
        """As ``Ledger.start_stream``: first the id's claim (``SET NX``), then start_stream.lua
        in the creator's slot. A claim made for a start refused by the creator's bound is
        taken back, so that bound also bounds the claims."""
        k = self.keys
        previous = await self.command(
            k.stream_owner(stream_id), "SET", creator_id, "NX", "GET", get=True
        )
        if previous is not None and previous.decode() != creator_id:
            raise LedgerRefusal(ErrorCode.STREAM_EXISTS)
        try:
            body, replayed = await self._run(
                ScriptName.START_STREAM,
                [
                    k.stream(creator_id, stream_id),
                    k.room_channel(creator_id, stream_id),
                    k.feed(creator_id, stream_id),
                    k.leaderboard(creator_id, stream_id),
                    k.creator_streams(creator_id),
                ],
                [
                    stream_id,
                    creator_id,
                    title,
                    self.limits.streams_per_creator_max,
                    creator_id if creator_name is None else creator_name,
                    epoch or uuid.uuid4().hex[:16],
                ],
                order_key=creator_id,
            )
        except LedgerRefusal as refusal:
            if previous is None and refusal.code is ErrorCode.STREAM_LIMIT:
                await self.command(k.stream_owner(stream_id), "DEL")
            raise
        self._states.pop(stream_id, None)
        return _stream_change(body, replayed)

    async def end_stream(self, *, stream_id: str, actor_id: str, is_admin: bool) -> StreamChange:
        creator = await self.owner(stream_id)
        if creator is None:
            raise LedgerRefusal(ErrorCode.UNKNOWN_STREAM)
        k = self.keys
        body, replayed = await self._run(
            ScriptName.END_STREAM,
            [k.stream(creator, stream_id), k.room_channel(creator, stream_id)],
            [stream_id, actor_id, "1" if is_admin else "0"],
            order_key=creator,
        )
        self._states.pop(stream_id, None)
        return _stream_change(body, replayed)

    async def top_up(self, *, payment_id: str, user_id: str, coins: int) -> TopUpReceipt:
        """As ``Ledger.top_up``; the payment id is claimed for its buyer first (``SET NX``)."""
        k = self.keys
        claimed = await self.command(
            k.payment_owner(payment_id), "SET", user_id, "NX", "GET", get=True
        )
        if claimed is not None and claimed.decode() != user_id:
            raise LedgerRefusal(ErrorCode.DUPLICATE_MISMATCH)
        body, replayed = await self._run(
            ScriptName.TOP_UP,
            [
                k.payment(user_id, payment_id),
                k.account(user_id),
                k.ledger_shard(slot_of(k.account(user_id))),
            ],
            [payment_id, user_id, coins, AMOUNT_MAX],
            order_key=user_id,
        )
        return TopUpReceipt.from_reply(body, replayed)

    async def refund(
        self, *, payment_id: str, user_id: str, refund_id: str, coins: int
    ) -> RefundReceipt:
        """As ``Ledger.refund``. A refund names the payment's buyer: one naming another than
        the claimed one is ``invalid_request``, as in single-node mode; a refund before its
        payment claims the id for its buyer, so the payment must come for that buyer.

        Gifts still in the payout hold are reversed in two legs (``cluster_clawbacks.py``):
        the refund in the buyer's slot queues one clawback per creator, applied here at
        once and by the relay otherwise; the receipt is the refund's either way."""
        k = self.keys
        claimed = await self.command(
            k.payment_owner(payment_id), "SET", user_id, "NX", "GET", get=True
        )
        if claimed is not None and claimed.decode() != user_id:
            raise LedgerRefusal(ErrorCode.INVALID_REQUEST)
        slot = slot_of(k.account(user_id))
        body, replayed = await self._run(
            ScriptName.REFUND_CLAIM,
            [
                k.payment(user_id, payment_id),
                k.account(user_id),
                k.ledger_shard(slot),
                k.refund(user_id, payment_id, refund_id),
                k.hold_record(user_id),
                k.outbox_shard(slot),
            ],
            [
                payment_id,
                user_id,
                refund_id,
                coins,
                AMOUNT_MAX,
                *hold_args(self.limits),
                OUTBOX_ENTRIES_MAX,
            ],
            order_key=user_id,
        )
        # The fast path of the clawbacks (a replay too: a retry after a crash between the
        # legs settles them); what fails here stays in the outbox for the relay.
        receipt: dict[str, Any] = orjson.loads(body)
        clawbacks = receipt_clawbacks(receipt)
        if _CRASH_AFTER_REFUND_CLAIM and clawbacks:
            os.kill(os.getpid(), signal.SIGKILL)
        outbox_ids = [str(doc["outbox_id"]) for doc in receipt.get("clawbacks") or []]
        settled = await self.apply_clawbacks(clawbacks)
        for done, outbox_id in zip(settled, outbox_ids, strict=True):
            if done:
                self._forget_outbox_entry(k.outbox_shard(slot), outbox_id)
            else:
                self.unsettled_slots.add(slot)
        return RefundReceipt.from_reply(body, replayed)

    async def apply_clawbacks(self, clawbacks: list[Clawback]) -> list[bool]:
        """Apply each clawback in its account's slot; True for each applied now or before.
        A failed call (unknown outcome) or a refusal leaves it to the relay and is logged.
        The guest clawbacks a creator's clawback forwards (gifts to guests on its stage)
        are applied at once too, and their outbox entries forgotten; what fails of them
        stays in the creator's slot's outbox for the relay."""
        results = await asyncio.gather(
            *(apply_clawback(self.runner, self.keys, self.limits, c) for c in clawbacks),
            return_exceptions=True,
        )
        settled: list[bool] = []
        forwarded: list[tuple[Clawback, str, str]] = []
        for clawback, result in zip(clawbacks, results, strict=True):
            if isinstance(result, (UnavailableError, InvariantError)):
                settled.append(False)
            elif isinstance(result, BaseException):
                raise result
            else:
                if result.code == NOT_CREDITED:
                    log.warning("clawback %s waits for its credits", clawback.clawback_id)
                elif not result.settled:
                    log.error("clawback %s refused: %s", clawback.clawback_id, result.code)
                settled.append(result.settled)
                outbox = self.keys.outbox_shard(slot_of(self.keys.account(clawback.creator_id)))
                forwarded += [(child, outbox, entry) for child, entry in result.forwarded]
        if forwarded:
            done = await self.apply_clawbacks([child for child, _, _ in forwarded])
            for ok, (_, outbox, entry) in zip(done, forwarded, strict=True):
                if ok:
                    self._forget_outbox_entry(outbox, entry)
                else:
                    self.unsettled_slots.add(slot_of(outbox))
        return settled

    async def cash_out(self, *, client_id: str, creator_id: str, diamonds: int) -> CashOutReceipt:
        """As ``Ledger.cash_out``, in the creator's slot."""
        k = self.keys
        body, replayed = await self._run(
            ScriptName.CASH_OUT,
            [
                k.cashout(creator_id, client_id),
                k.account(creator_id),
                k.ledger_shard(slot_of(k.account(creator_id))),
            ],
            [
                client_id,
                creator_id,
                diamonds,
                self.limits.cashout_diamonds_min,
                self.economics.cents_per_100_diamonds,
                AMOUNT_MAX,
                *hold_args(self.limits),
            ],
            order_key=creator_id,
        )
        return CashOutReceipt.from_reply(body, replayed)

    async def settle_payout(
        self, *, client_id: str, creator_id: str, outcome: str
    ) -> PayoutReceipt:
        """As ``Ledger.settle_payout``, in the creator's slot (where cash_out left it)."""
        k = self.keys
        body, replayed = await self._run(
            ScriptName.SETTLE_PAYOUT,
            [
                k.cashout(creator_id, client_id),
                k.account(creator_id),
                k.ledger_shard(slot_of(k.account(creator_id))),
            ],
            [client_id, creator_id, outcome, AMOUNT_MAX],
            order_key=creator_id,
        )
        return PayoutReceipt.from_reply(body, replayed)

    async def send_gift(
        self,
        *,
        client_id: str,
        sender_id: str,
        sender_name: str,
        stream_id: str,
        creator_id: str,
        gift_id: str,
        count: int,
        catalog_version: int | None = None,
        to: str | None = None,
    ) -> GiftReceipt:
        """Debit, then credit at once; see the module docstring for the contract. A gift
        to guests (``to``) also applies its guest-credits at once (``cluster_guests.py``),
        and is acknowledged once all of them are."""
        owner = await self.owner(stream_id)
        verdict = ""
        if owner is None:
            state = "unknown"
            owner = creator_id  # only a stored receipt can answer; the debit checks it first
        else:
            if owner != creator_id:
                raise LedgerRefusal(ErrorCode.INVALID_REQUEST)
            state = await self.stream_state(stream_id, owner)
            if to is not None and state == "live":
                # Refusals as single-node gives them, returned by the debit after its receipt
                # check; a stage that changes before the credit is the credit leg's to decide.
                verdict = await self.guests.verdict(stream_id, owner, to, sender_id)
        body, replayed = await self._debit(
            self.keys.debit_keys(sender_id, client_id),
            [
                *self._debit_args(
                    client_id,
                    sender_id,
                    sender_name,
                    owner,
                    stream_id,
                    gift_id,
                    count,
                    catalog_version=catalog_version or 0,
                    state=state,
                ),
                # Guests on stage: always the last two (debit_gift.lua reads them from the end).
                to or "",
                verdict,
            ],
            sender_id,
            catalog_version or 0,
        )
        debit: dict[str, Any] = orjson.loads(body)
        if _CRASH_AFTER_DEBIT:
            os.kill(os.getpid(), signal.SIGKILL)
        transfer = Transfer.from_receipt(debit, sender_id)
        slot = slot_of(self.keys.account(sender_id))
        try:
            credit = await self.credits.credit(transfer)
        except UnavailableError:
            self.unsettled_slots.add(slot)
            raise
        except LedgerRefusal as refusal:
            # The coins are debited: a refusal now must not tell the client that nothing
            # moved. The transfer waits in its outbox, reconcile lists it as pending.
            self.unsettled_slots.add(slot)
            log.error("credit of %s refused: %s", transfer.transfer_id, refusal.code)
            raise UnavailableError(f"gift debited, credit pending: {refusal.code}") from None
        if not credit.settled:
            self.unsettled_slots.add(slot)
            raise UnavailableError(f"gift debited, credit pending: {credit.code}")
        if _CRASH_BEFORE_GUESTS and credit.guests:
            os.kill(os.getpid(), signal.SIGKILL)
        guests = await self.settle_guests(transfer, credit)
        if not all(g.settled for g in guests):
            raise UnavailableError("gift credited, a guest's credit pending")
        self._forget_outbox_entry(self.keys.outbox_shard(slot), str(debit["outbox_id"]))
        guest_diamonds = sum(g.diamonds for g in guests)
        return GiftReceipt(
            transfer_id=transfer.transfer_id,
            client_id=client_id,
            stream_id=stream_id,
            gift_id=gift_id,
            count=transfer.count,
            coins=transfer.coins,
            diamonds=credit.diamonds + guest_diamonds,
            platform_coins=credit.platform_coins + sum(g.platform_coins for g in guests),
            balance=int(debit["balance"]),
            combo=credit.combo,
            seq=credit.seq,
            ts=credit.ts,
            replayed=replayed,
        )

    async def _debit(
        self, keys: list[str], args: list[str | int], sender_id: str, shown_version: int
    ) -> tuple[bytes, bool]:
        """debit_gift.lua; once more after copying the current catalog into the sender's
        slot when that slot's copy is behind the version the viewer was shown (a copy
        still under way, or a slot that lost it): refused, the debit wrote nothing."""
        try:
            return await self._run(ScriptName.DEBIT_GIFT, keys, args, sender_id)
        except LedgerRefusal as refusal:
            held = (refusal.detail or {}).get("catalog_version", 0)
            behind = isinstance(held, int) and held < shown_version
            if refusal.code is not ErrorCode.CATALOG_CHANGED or not behind:
                raise
        current = await self.current_catalog()
        if current.version < shown_version:  # a version that never was current
            detail: dict[str, object] = {"catalog_version": current.version}
            raise LedgerRefusal(ErrorCode.CATALOG_CHANGED, detail=detail)
        await self._copy_into(slot_of(keys[0]), current)
        return await self._run(ScriptName.DEBIT_GIFT, keys, args, sender_id)

    async def _copy_into(self, slot: int, catalog: Catalog) -> None:
        keys = [self.keys.catalog_shard(slot)]
        await self._run(ScriptName.COPY_CATALOG, keys, _copy_args(catalog), "")

    def _debit_args(
        self,
        client_id: str,
        sender_id: str,
        sender_name: str,
        creator_id: str,
        stream_id: str,
        gift_id: str,
        count: int,
        *,
        catalog_version: int,
        state: str,
    ) -> list[str | int]:
        lim = self.limits
        return [
            client_id,
            sender_id,
            creator_id,
            stream_id,
            gift_id,
            count,
            sender_name,
            self.economics.creator_share_bps,
            lim.gifts_per_s_max,
            lim.gift_burst_max,
            lim.daily_spend_coins_max,
            lim.receipt_ttl_s,
            AMOUNT_MAX,
            SEND_COINS_MAX,
            catalog_version,
            OUTBOX_ENTRIES_MAX,
            state,
            lim.monthly_spend_coins_max,
            *hold_args(lim),
            lim.payout_hold_entries_max,
        ]

    async def credit_transfers(self, transfers: list[Transfer]) -> list[CreditResult]:
        """Credit ``transfers`` (the relay's batch), batched per stream. A call that failed
        (``UnavailableError``: unknown outcome; ``InvariantError``: broken data under that
        transfer) gives its transfers status ``failed``."""
        results = await asyncio.gather(
            *(self.credits.credit(t) for t in transfers), return_exceptions=True
        )
        out: list[CreditResult] = []
        for transfer, result in zip(transfers, results, strict=True):
            if isinstance(result, (UnavailableError, InvariantError)):
                # Unknown outcome, or a transfer whose data is broken (logged by the
                # runner): it stays pending, and the others go on.
                out.append(CreditResult(transfer.transfer_id, "failed", code=str(result)))
            elif isinstance(result, BaseException):
                raise result
            else:
                out.append(result)
        # A transfer to guests settled here has guest-credits to apply too: at once, as the
        # fast path does (those that fail stay in the outbox for the next round).
        settled = [(t, r) for t, r in zip(transfers, out, strict=True) if r.settled and r.guests]
        await asyncio.gather(*(self.settle_guests(t, r) for t, r in settled))
        return out

    async def settle_guests(self, transfer: Transfer, credit: CreditResult) -> list[GuestResult]:
        """Apply the guest-credits a credit left in the creator's slot's outbox (none for a
        gift to the creator) and forget the entries of those applied; the others stay for
        the relay, whose slot list learns of them."""
        credits = [
            GuestCredit.from_result(
                row,
                sender_id=transfer.sender_id,
                creator_id=transfer.creator_id,
                stream_id=transfer.stream_id,
                share_bps=transfer.share_bps,
                seq=credit.seq,
                ts=credit.ts,
                debit_ms=transfer.debit_ms,
            )
            for row in credit.guests
        ]
        return await self.credit_guests(credits)

    async def credit_guests(self, credits: list[GuestCredit]) -> list[GuestResult]:
        """Apply guest-credits (each in its guest's slot, concurrently); forget the outbox
        entries of those applied."""
        results = list(await asyncio.gather(*(self.guest_credits.credit(c) for c in credits)))
        for credit, result in zip(credits, results, strict=True):
            outbox = self.keys.outbox_shard(slot_of(self.keys.account(credit.creator_id)))
            if result.settled and credit.outbox_id:
                self._forget_outbox_entry(outbox, credit.outbox_id)
            elif not result.settled:
                self.unsettled_slots.add(slot_of(outbox))
                log.error("guest credit %s: %s %s", credit.credit_id, result.status, result.code)
        return results

    def _forget_outbox_entry(self, outbox: str, entry_id: str) -> None:
        """XDEL a settled entry, batched per outbox in the background. Lost in a crash, it
        costs the relay one credit call, which the credit leg answers with ``replay``."""
        self._to_delete[outbox].append(entry_id)
        if not self._deleting:
            self._deleting = True
            self._delete_task = asyncio.get_running_loop().create_task(self._delete_entries())

    async def _delete_entries(self) -> None:
        await asyncio.sleep(0)
        try:
            while self._to_delete:
                batch, self._to_delete = self._to_delete, defaultdict(list)
                # One pipeline per primary: a batch names an outbox per sender's slot, and
                # a command each (a round trip per gift) cost more than the debit's.
                try:
                    await self.shards.delete_entries(batch)
                except (UnavailableError, InvariantError):
                    self.unsettled_slots.update(slot_of(key) for key in batch)
        finally:
            self._deleting = False

    async def aclose(self) -> None:
        await self.runner.aclose()


def _older(held: bytes | None, version: int) -> bool:
    """A slot copy at ``held`` (None: no copy) is behind ``version``."""
    return held is None or not held.isdigit() or int(held) < version


def _copy_args(catalog: Catalog) -> list[str | int]:
    """copy_catalog.lua's ARGV for ``catalog``."""
    args: list[str | int] = [catalog.version, SEND_COINS_MAX // GIFT_COUNT_MAX]
    for gift_id, price in catalog.prices().items():
        args += [gift_id, price]
    return args
