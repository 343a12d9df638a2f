"""Redis key names in cluster mode (``GIFTWIRE_REDIS_CLUSTER``); ``keys.py`` spells single-node.

On a Redis Cluster every key one script touches must hash to one slot. Today's names put
the platform's share, the ledger log and the catalog in one slot each (``{platform}``,
``{ledger}``, ``{catalog}``): every gift of every room would meet on one primary. Cluster
mode therefore settles a gift in two legs, each inside one slot (``docs/ledger.md``,
"Redis Cluster"), and shards what used to be global **per hash slot**:

=========================================  ======  =========================================
key                                        type    holds
=========================================  ======  =========================================
``{u:USER}:acct``                          hash    as in single-node mode
``{u:USER}:gift:CLIENT_ID``                string  the debit leg's receipt (TTL)
``{u:USER}:changes``                       hash    as in single-node mode (change_rate.lua)
``{u:USER}:held``                          hash    the sender's gifts within the payout hold
``{u:CREATOR}:credit:TRANSFER_ID``         string  the credit leg's receipt (idempotency)
``{u:CREATOR}:clawback:PAYMENT|REFUND``    string  a chargeback's clawback applied (TTL)
``{u:CREATOR}:s:STREAM:stream``            hash    the stream, in its creator's slot
``{u:CREATOR}:s:STREAM:top|feed|room``     ...     leaderboard, feed, shard channel (SPUBLISH)
``{u:CREATOR}:s:STREAM:combo:USER:GIFT``   string  combo counter (TTL)
``{u:CREATOR}:s:STREAM:goals|names``       hash    the stream's goals; sender -> display name
``{u:CREATOR}:s:STREAM:guests``            hash    the stage (``_guests.lua``)
``{u:GUEST}:credit:TRANSFER|GUEST``        string  a guest-credit's marker (idempotency)
``{u:GUEST}:earned``                       hash    stream -> diamonds earned on its stage
``{u:CREATOR}:fans``                       zset    viewer -> lifetime coins to the creator
``{u:CREATOR}:s:STREAM:battle[_top]``      ...     the stream's side of a battle, its gifters
``{u:CREATOR}:s:STREAM:battle_invite[s]`` ...     its pending invitation; invitations to it
``{u:CREATOR}:battle_invite``              string  the creator's pending invitation's stream
``{battle:BATTLE}:result``                 string  a finished battle's result (TTL)
``{s:STREAM}:owner``                       string  the stream id's creator: claims the id
                                                   once and lets a viewer find the slot
``{s:STREAM}:viewers``                     hash    presence, as in single-node mode
``{~N}:platform``                          hash    platform share earned in this slot
``{~N}:log``                               stream  transfers committed in this slot
``{~N}:catalog``                           hash    this slot's copy of the catalog
``{~N}:outbox``                            stream  transfers debited in this slot, not yet
                                                   credited (the relay's work list)
``{~N}:fence``                             string  written before each WAIT on the primary
                                                   serving N (``always+replica``)
``{~0}:relay_sweep``, ``{~0}:relay_hot``   string  the relays' shared sweep: its lease, and
                                                   the slots it found with entries (TTL)
=========================================  ======  =========================================

``{~N}`` is a *slot tag*: a short string chosen so that it hashes to one given slot, so a
shard key lives in the same slot as the account whose script writes it (Redis checks
slots, not tags, for CROSSSLOT). There are at most 16384 shards of each kind, whatever the
number of users: summing the platform share or reading every log means one read per slot
that has the key, grouped per primary. ``~`` is outside the id alphabet, so a slot tag
never equals a user's or a stream's tag.

The transfer id joining the two legs is ``SENDER|CLIENT_ID|DEBIT_LOG_ID`` (``transfer_id``):
the debit leg makes it and stores it in its receipt, so a retry after a crash between the
legs replays the receipt and settles the same transfer. The debit's log entry id makes it
unique per debit: once a receipt expired the same client id sends a new gift, whose credit
must not be taken for the old one's.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from redis.crc import key_slot

from server.domain.errors import InvariantError
from server.domain.limits import Limits
from server.ledger.hold import hold_day_of
from server.ledger.keys import DEFAULT_PREFIX

SLOTS = 16384
TRANSFER_SEPARATOR = "|"
"""Outside the id alphabet (``[A-Za-z0-9_.:-]``): ``SENDER|CLIENT_ID`` is unambiguous."""


def slot_of(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16 of its hash tag, mod 16384)."""
    return key_slot(key.encode())


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For every slot, the shortest ``~N`` (smallest N) that hashes to it.

    Found by counting up once per process (about 200k CRCs, a fraction of a second); only
    cluster mode asks for it.
    """
    tags: list[str | None] = [None] * SLOTS
    missing, n = SLOTS, 0
    while missing:
        tag = f"~{n}"
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        n += 1
    return tuple(tag for tag in tags if tag is not None)


def slot_tag(slot: int) -> str:
    if not 0 <= slot < SLOTS:
        raise InvariantError(f"no such slot {slot}")
    return _slot_tags()[slot]


def transfer_id(sender_id: str, client_id: str, debit_id: str) -> str:
    """As ``debit_gift.lua`` spells it; ``debit_id`` is its ledger log entry id."""
    return f"{sender_id}{TRANSFER_SEPARATOR}{client_id}{TRANSFER_SEPARATOR}{debit_id}"


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """Key names of cluster mode; same prefix rule as ``Keys`` (no braces in the prefix)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            # The first {...} of a key is its hash tag: braces in the prefix would put
            # every key in one slot.
            raise InvariantError(f"a key prefix must not contain braces: {self.prefix!r}")

    # The sender's slot: the debit leg.

    def account(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:acct"

    def gift_receipt(self, sender_id: str, client_id: str) -> str:
        return f"{self.prefix}{{u:{sender_id}}}:gift:{client_id}"

    def changes(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:changes"

    # The creator's slot: the credit leg, and the creator's streams.

    def credit_receipt(self, creator_id: str, transfer: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:credit:{transfer}"

    def stream(self, creator_id: str, stream_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:stream"

    def leaderboard(self, creator_id: str, stream_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:top"

    def feed(self, creator_id: str, stream_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:feed"

    def combo(self, creator_id: str, stream_id: str, sender_id: str, gift_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:combo:{sender_id}:{gift_id}"

    def goals(self, creator_id: str, stream_id: str) -> str:
        """The stream's goals and their progress (``_goals.lua``), in the creator's slot."""
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:goals"

    def names(self, creator_id: str, stream_id: str) -> str:
        """Sender -> display name of their latest gift to the stream (the leaderboard's)."""
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:names"

    def guests(self, creator_id: str, stream_id: str) -> str:
        """The stage (``_guests.lua``), in the creator's slot next to the stream."""
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:guests"

    def fans(self, creator_id: str) -> str:
        """Viewer -> lifetime coins sent to the creator over all its streams (levels)."""
        return f"{self.prefix}{{u:{creator_id}}}:fans"

    def room_channel(self, creator_id: str, stream_id: str) -> str:
        """The room's shard channel: SPUBLISH from the credit leg, SSUBSCRIBE by servers."""
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:room"

    # A stream's side of a battle, in its creator's slot (docs/ledger.md, "Battles in
    # cluster mode"): credit_gifts.lua scores against it in the same step as the coins.

    def battle(self, creator_id: str, stream_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:battle"

    def battle_top(self, creator_id: str, stream_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:battle_top"

    def battle_invite(self, creator_id: str, stream_id: str) -> str:
        """The stream's pending invitation (hash, TTL), next to its creator's mark."""
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:battle_invite"

    def battle_invites(self, creator_id: str, stream_id: str) -> str:
        """Invitations to the stream: from-stream -> expires_at ms (zset)."""
        return f"{self.prefix}{{u:{creator_id}}}:s:{stream_id}:battle_invites"

    def creator_battle_invite(self, creator_id: str) -> str:
        """The stream of the creator's one pending invitation (string, TTL)."""
        return f"{self.prefix}{{u:{creator_id}}}:battle_invite"

    def battle_result(self, battle_id: str) -> str:
        """A finished battle's result, in the battle's own slot."""
        return f"{self.prefix}{{battle:{battle_id}}}:result"

    def creator_streams(self, creator_id: str) -> str:
        """The stream ids a creator owns (start_stream's bound), in the creator's slot."""
        return f"{self.prefix}{{u:{creator_id}}}:streams"

    def hold_record(self, user_id: str) -> str:
        """A sender's gifts within the payout hold (``_hold.lua``), in the sender's slot:
        written by the debit leg, read by a refund's buyer leg."""
        return f"{self.prefix}{{u:{user_id}}}:held"

    def clawback_marker(self, creator_id: str, payment_id: str, refund_id: str) -> str:
        """A chargeback's clawback applied in the creator's slot (clawback.lua), once."""
        return f"{self.prefix}{{u:{creator_id}}}:clawback:{payment_id}|{refund_id}"

    def guest_clawback_marker(
        self, guest_id: str, payment_id: str, refund_id: str, creator_id: str
    ) -> str:
        """A guest clawback (a guest's part of a creator's clawback, for gifts to guests on
        that creator's stage) applied in the guest's slot, once; not the guest's own
        ``clawback_marker`` as a creator of the same refund."""
        return f"{self.prefix}{{u:{guest_id}}}:clawback:{payment_id}|{refund_id}|{creator_id}"

    def cashout(self, creator_id: str, client_id: str) -> str:
        return f"{self.prefix}{{u:{creator_id}}}:cashout:{client_id}"

    # Payments live in the buyer's slot (top_up and refund then touch one slot); the id's
    # own slot holds its claim, so one payment id is credited to one buyer only.

    def payment(self, user_id: str, payment_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:pay:{payment_id}"

    def refund(self, user_id: str, payment_id: str, refund_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}:pay:{payment_id}:refund:{refund_id}"

    def payment_owner(self, payment_id: str) -> str:
        return f"{self.prefix}{{pay:{payment_id}}}:owner"

    # The catalog's source of truth (versions, current prices): one slot, off the hot path;
    # the debit leg reads the per-slot copy (catalog_shard).

    def catalog(self) -> str:
        return f"{self.prefix}{{catalog}}:prices"

    def catalog_versions(self) -> str:
        return f"{self.prefix}{{catalog}}:versions"

    def catalog_schedule(self) -> str:
        return f"{self.prefix}{{catalog}}:schedule"

    def catalog_due(self) -> str:
        return f"{self.prefix}{{catalog}}:due"

    # The stream id's own slot: who owns it, who watches it.

    def stream_owner(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:owner"

    def viewers(self, stream_id: str) -> str:
        return f"{self.prefix}{{s:{stream_id}}}:viewers"

    # Shards per slot, next to the account whose script writes them.

    def platform_shard(self, slot: int) -> str:
        return f"{self.prefix}{{{slot_tag(slot)}}}:platform"

    def ledger_shard(self, slot: int) -> str:
        return f"{self.prefix}{{{slot_tag(slot)}}}:log"

    def catalog_shard(self, slot: int) -> str:
        return f"{self.prefix}{{{slot_tag(slot)}}}:catalog"

    def fence_shard(self, slot: int) -> str:
        """The durability fence of the primary serving ``slot`` (``always+replica``)."""
        return f"{self.prefix}{{{slot_tag(slot)}}}:fence"

    def outbox_shard(self, slot: int) -> str:
        """Per slot, not per sender: a relay can sweep at most 16384 outboxes, but could not
        even find millions of per-sender ones."""
        return f"{self.prefix}{{{slot_tag(slot)}}}:outbox"

    def platform_shards(self) -> list[str]:
        """Every platform shard, to sum on read (most do not exist until a gift lands)."""
        return [self.platform_shard(slot) for slot in range(SLOTS)]

    def ledger_shards(self) -> list[str]:
        return [self.ledger_shard(slot) for slot in range(SLOTS)]

    def catalog_shards(self) -> list[str]:
        return [self.catalog_shard(slot) for slot in range(SLOTS)]

    def outbox_shards(self) -> list[str]:
        return [self.outbox_shard(slot) for slot in range(SLOTS)]

    # What each leg passes in KEYS: one slot per script, checked by the tests and the runner.

    def debit_keys(self, sender_id: str, client_id: str) -> list[str]:
        slot = slot_of(self.account(sender_id))
        return [
            self.gift_receipt(sender_id, client_id),
            self.account(sender_id),
            self.outbox_shard(slot),
            self.ledger_shard(slot),
            self.catalog_shard(slot),
            self.hold_record(sender_id),
        ]

    def credit_keys(self, creator_id: str, stream_id: str) -> list[str]:
        """The keys of one credit call into a creator's stream (a batch of transfers; the
        per-transfer receipts and combo counters follow in KEYS after these, then
        ``credit_tail_keys``)."""
        slot = slot_of(self.account(creator_id))
        return [
            self.account(creator_id),
            self.stream(creator_id, stream_id),
            self.leaderboard(creator_id, stream_id),
            self.feed(creator_id, stream_id),
            self.room_channel(creator_id, stream_id),
            self.platform_shard(slot),
            self.ledger_shard(slot),
        ]

    def credit_tail_keys(self, creator_id: str, stream_id: str) -> list[str]:
        """The keys of a credit call after the per-transfer ones: goals, fans, names, then
        the stream's battle side and its gifters (``credit_gifts.lua`` reads them as
        ``KEYS[8 + 2n ..]``)."""
        return [
            self.goals(creator_id, stream_id),
            self.fans(creator_id),
            self.names(creator_id, stream_id),
            self.battle(creator_id, stream_id),
            self.battle_top(creator_id, stream_id),
        ]

    # The relay (cluster_relay.py): one full sweep of the outboxes per period, shared.

    def relay_sweep_lease(self) -> str:
        """Held by the relay that sweeps every outbox this period (``SET NX PX``)."""
        return f"{self.prefix}{{{slot_tag(0)}}}:relay_sweep"

    def relay_hot_slots(self) -> str:
        """The slots whose outbox the last sweep found with entries (comma-separated)."""
        return f"{self.prefix}{{{slot_tag(0)}}}:relay_hot"

    def credit_stage_keys(self, creator_id: str, stream_id: str) -> list[str]:
        """The LAST two keys of a credit call, after every other (``credit_gifts.lua`` reads
        them as ``KEYS[#KEYS - 1 ..]``): the stage, and the creator's slot's outbox that
        takes the guest-credits (``_stage_credit.lua``)."""
        return [
            self.guests(creator_id, stream_id),
            self.outbox_shard(slot_of(self.account(creator_id))),
        ]

    def guest_credit_keys(self, guest_id: str, credit_ids: list[str]) -> list[str]:
        """The keys of one ``credit_guest.lua`` call, in the guest's slot: the account, the
        slot's platform share and log, each guest-credit's marker (a credit id is
        ``TRANSFER|GUEST``), then what the guest earned per stream."""
        slot = slot_of(self.account(guest_id))
        return [
            self.account(guest_id),
            self.platform_shard(slot),
            self.ledger_shard(slot),
            *(self.credit_receipt(guest_id, credit_id) for credit_id in credit_ids),
            self.guest_earned(guest_id),
        ]

    def stage_held(self, creator_id: str, day: int, sender_id: str) -> str:
        """Who a creator's credit leg gave ``sender_id``'s coins of gifts to guests of debit
        day ``day`` within the payout hold: field ``RECIPIENT|SHARE_BPS`` -> coins (a guest,
        or the creator for a redirected gift); expires a day past the hold. One per sender,
        so that a chargeback's clawback reads only its buyer's."""
        return f"{self.prefix}{{u:{creator_id}}}:stage_held:{day}|{sender_id}"

    def guest_held(self, guest_id: str, day: int) -> str:
        """The stage coins that reached a guest from gifts of debit day ``day`` within the
        payout hold: field ``SENDER|CREATOR|SHARE_BPS`` -> coins; expires a day past it."""
        return f"{self.prefix}{{u:{guest_id}}}:guest_held:{day}"

    def guest_held_keys(
        self, guest_id: str, moments_ms: Iterable[int], limits: Limits
    ) -> list[str]:
        """``guest_held`` of each distinct hold day of ``moments_ms`` (in order of first
        appearance); none with the hold off."""
        if limits.payout_hold_days == 0:
            return []
        days = dict.fromkeys(hold_day_of(ms, limits.payout_hold_day_s) for ms in moments_ms)
        return [self.guest_held(guest_id, day) for day in days]

    def stage_held_keys(
        self, creator_id: str, debits: Iterable[tuple[int, str]], limits: Limits
    ) -> list[str]:
        """``stage_held`` of each distinct (hold day, sender) of ``debits`` ((debit ms,
        sender) each; in order of first appearance); none with the hold off."""
        if limits.payout_hold_days == 0:
            return []
        day_s = limits.payout_hold_day_s
        keys = dict.fromkeys((hold_day_of(ms, day_s), sender) for ms, sender in debits)
        return [self.stage_held(creator_id, day, sender) for day, sender in keys]

    def guest_earned(self, guest_id: str) -> str:
        """Stream id -> diamonds the guest earned on that stream's stage (``credit_guest.lua``
        writes it; the stage in the creator's slot cannot know a guest's carry)."""
        return f"{self.prefix}{{u:{guest_id}}}:earned"

    # The archiver (server/record/): one lease for the logs of every slot.

    def archiver_lease(self) -> str:
        return f"{self.prefix}{{{slot_tag(0)}}}:archiver"
