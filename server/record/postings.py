"""From a ledger log entry to a transfer and its double-entry postings. Pure: no I/O.

One rule per entry ``type``. A rule reads the entry's fields and returns the postings; every
other field is kept in the transfer's ``fields`` as it is, so a field a script adds later
is recorded before any rule uses it. A type with no rule, a missing or malformed amount, or
postings that do not sum to zero raise ``RecordError``: the archiver stops on that entry
(and says why) rather than record something wrong.

Accounts, all in one unit (a coin; a diamond is worth the coin it came from)::

    coins     USER   coins a user holds
    diamonds  USER   diamonds a creator holds
    debt      USER   minus the coins a user owes after a chargeback
    platform  -      the platform's share of gifts
    provider  -      the payment provider: coins sold (negative) less coins charged back
    payouts   -      diamonds cashed out, waiting for the payout provider
    paid_out  -      diamonds paid out
    transit   -      cluster gifts debited from the sender, not yet credited to the creator,
                     less clawbacks given back to a buyer, not yet taken from the creator
                     (or, for gifts to guests, from the guests)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from server.domain.errors import GiftwireError

Fields = Mapping[str, str]


class RecordError(GiftwireError):
    """A log entry the record cannot take as it is (unknown type, bad or unbalanced)."""


class Account(StrEnum):
    COINS = "coins"
    DIAMONDS = "diamonds"
    DEBT = "debt"
    PLATFORM = "platform"
    PROVIDER = "provider"
    PAYOUTS = "payouts"
    PAID_OUT = "paid_out"
    TRANSIT = "transit"


SINGLE_NODE_LOG = -1
"""``log_slot`` of the single-node ``{ledger}:log`` (cluster logs carry their slot)."""

USER_ACCOUNTS = frozenset({Account.COINS, Account.DIAMONDS, Account.DEBT})


@dataclass(frozen=True, slots=True)
class Posting:
    user_id: str | None
    account: Account
    amount: int


@dataclass(frozen=True, slots=True)
class Transfer:
    log_ms: int
    log_seq: int
    type: str
    fields: Fields
    postings: tuple[Posting, ...]
    log_slot: int = SINGLE_NODE_LOG
    """The hash slot of the log the entry came from (cluster mode's ``{~N}:log``), or
    ``SINGLE_NODE_LOG`` for ``{ledger}:log``: with the entry id, the transfer's key."""

    @property
    def transfer_id(self) -> str:
        return f"{self.log_ms}-{self.log_seq}"

    def text(self, name: str) -> str | None:
        return self.fields.get(name)

    @property
    def count(self) -> int | None:
        raw = self.fields.get("count")
        return int(raw) if raw is not None else None


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    """``"MS-SEQ"`` -> (ms, seq)."""
    ms, sep, seq = entry_id.partition("-")
    if not (sep and ms.isdigit() and seq.isdigit() and ms.isascii() and seq.isascii()):
        raise RecordError(f"not a stream entry id: {entry_id!r}")
    return int(ms), int(seq)


def _amount(fields: Fields, name: str) -> int:
    raw = fields.get(name)
    if raw is None or not raw.isascii() or not raw.isdigit():
        raise RecordError(f"field {name!r} is not a non-negative integer: {raw!r}")
    return int(raw)


def _user(fields: Fields, name: str) -> str:
    value = fields.get(name)
    if not value:
        raise RecordError(f"field {name!r} is missing")
    return value


def _gift(f: Fields) -> list[Posting]:
    if "recipients" in f:
        # A gift split between guests (``_guests.lua``): id:coins:diamonds:share_rem each.
        credits = []
        for part in f["recipients"].split(";"):
            user, _, diamonds, _ = part.rsplit(":", 3)  # an id may hold ":"
            credits.append(Posting(user, Account.DIAMONDS, int(diamonds)))
    else:
        credits = [Posting(_user(f, "to"), Account.DIAMONDS, _amount(f, "diamonds"))]
    return [
        Posting(_user(f, "from"), Account.COINS, -_amount(f, "coins")),
        *credits,
        Posting(None, Account.PLATFORM, _amount(f, "platform")),
    ]


def _top_up(f: Fields) -> list[Posting]:
    # Coins withheld against a refund that arrived before the payment never reach the buyer:
    # the provider is owed only what was credited or repaid (entries before withholding
    # have no such field).
    user = _user(f, "to")
    withheld = _amount(f, "withheld") if "withheld" in f else 0
    return [
        Posting(None, Account.PROVIDER, -(_amount(f, "coins") - withheld)),
        Posting(user, Account.COINS, _amount(f, "credited")),
        Posting(user, Account.DEBT, _amount(f, "repaid")),
    ]


def _refund(f: Fields) -> list[Posting]:
    # A partial refund (refund_id) returns ``refunded`` of the payment's ``coins``; refunds
    # before refund ids took the whole payment and have no ``refunded`` field.
    user = _user(f, "from")
    refunded = _amount(f, "refunded") if "refunded" in f else _amount(f, "coins")
    # The coins of gifts a chargeback reversed in the hold came back to the buyer with the
    # clawback entries before this one; the refund takes them with the balance's.
    reversed_coins = _amount(f, "reversed") if "reversed" in f else 0
    return [
        Posting(None, Account.PROVIDER, refunded),
        Posting(user, Account.COINS, -(_amount(f, "clawed") + reversed_coins)),
        Posting(user, Account.DEBT, -_amount(f, "debt")),
    ]


def _clawback(f: Fields) -> list[Posting]:
    # A gift in the payout hold reversed by a chargeback: the creator's diamonds and the
    # platform's share go back to the buyer as coins (which the refund entry then takes).
    # In cluster mode (a clawback id) they go into transit: the buyer's slot's
    # clawback_claim gave the buyer the coins already.
    buyer = Posting(_user(f, "to"), Account.COINS, _amount(f, "coins"))
    if "clawback_id" in f:
        buyer = Posting(None, Account.TRANSIT, _amount(f, "coins"))
    return [
        Posting(_user(f, "from"), Account.DIAMONDS, -_amount(f, "diamonds")),
        Posting(None, Account.PLATFORM, -_amount(f, "platform")),
        buyer,
    ]


def _clawback_claim(f: Fields) -> list[Posting]:
    # Cluster mode, the buyer's slot: a refund reverses held gifts of a creator in another
    # slot; the buyer gets the coins back now (the refund entry takes them), and transit
    # owes them until the creator's slot applies the clawback.
    coins = _amount(f, "coins")
    return [
        Posting(None, Account.TRANSIT, -coins),
        Posting(_user(f, "to"), Account.COINS, coins),
    ]


def _clawback_forward(f: Fields) -> list[Posting]:
    # Cluster mode, a creator's slot: a guest's part of a clawback of gifts to guests, queued
    # for the guest's slot. Nothing moves yet: transit still owes the coins, until the
    # guest's ``clawback`` entry takes the diamonds back.
    _amount(f, "coins")
    return []


def _gift_debit(f: Fields) -> list[Posting]:
    # Cluster mode, the sender's slot: the coins leave the sender and wait for the credit.
    coins = _amount(f, "coins")
    return [
        Posting(_user(f, "from"), Account.COINS, -coins),
        Posting(None, Account.TRANSIT, coins),
    ]


def _gift_credit(f: Fields) -> list[Posting]:
    # Cluster mode, the creator's slot: the debited coins become diamonds and the share.
    # Coins a credit gives to guests (``recipients``, id:coins each) stay in transit until
    # each guest's slot applies its guest-credit.
    to_guests = 0
    if "recipients" in f:
        to_guests = sum(int(part.rpartition(":")[2]) for part in f["recipients"].split(";"))
    return [
        Posting(None, Account.TRANSIT, -(_amount(f, "coins") - to_guests)),
        Posting(_user(f, "to"), Account.DIAMONDS, _amount(f, "diamonds")),
        Posting(None, Account.PLATFORM, _amount(f, "platform")),
    ]


def _guest_credit(f: Fields) -> list[Posting]:
    # Cluster mode, a guest's slot: a guest's part of a gift becomes their diamonds.
    return [
        Posting(None, Account.TRANSIT, -_amount(f, "coins")),
        Posting(_user(f, "to"), Account.DIAMONDS, _amount(f, "diamonds")),
        Posting(None, Account.PLATFORM, _amount(f, "platform")),
    ]


def _cash_out(f: Fields) -> list[Posting]:
    diamonds = _amount(f, "diamonds")
    return [
        Posting(_user(f, "from"), Account.DIAMONDS, -diamonds),
        Posting(None, Account.PAYOUTS, diamonds),
    ]


def _payout(f: Fields) -> list[Posting]:
    diamonds, state = _amount(f, "diamonds"), f.get("state")
    if state == "paid":
        return [
            Posting(None, Account.PAYOUTS, -diamonds),
            Posting(None, Account.PAID_OUT, diamonds),
        ]
    if state == "failed":
        return [
            Posting(None, Account.PAYOUTS, -diamonds),
            Posting(_user(f, "to"), Account.DIAMONDS, diamonds),
        ]
    raise RecordError(f"payout state {state!r} is neither paid nor failed")


RULES: dict[str, Callable[[Fields], list[Posting]]] = {
    "gift": _gift,
    "top_up": _top_up,
    "refund": _refund,
    "clawback": _clawback,
    "clawback_claim": _clawback_claim,
    "clawback_forward": _clawback_forward,
    "gift_debit": _gift_debit,
    "gift_credit": _gift_credit,
    "guest_credit": _guest_credit,
    "cash_out": _cash_out,
    "payout": _payout,
}
"""Entry type -> its postings. A new entry type gets a rule here (and a test)."""


def to_transfer(entry_id: str, fields: Fields, log_slot: int = SINGLE_NODE_LOG) -> Transfer:
    """The transfer of one log entry (of the log of ``log_slot``), with its postings (zero
    amounts left out)."""
    log_ms, log_seq = parse_entry_id(entry_id)
    kind = fields.get("type", "")
    rule = RULES.get(kind)
    if rule is None:
        raise RecordError(f"{entry_id}: no posting rule for entry type {kind!r}")
    try:
        postings = tuple(p for p in rule(fields) if p.amount != 0)
    except RecordError as e:
        raise RecordError(f"{entry_id} ({kind}): {e}") from None
    total = sum(p.amount for p in postings)
    if total != 0:
        raise RecordError(f"{entry_id} ({kind}): postings sum to {total}, not 0")
    return Transfer(log_ms, log_seq, kind, dict(fields), postings, log_slot)
