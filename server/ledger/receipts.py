"""Typed results of the ledger scripts. No raw Redis reply leaves ``server.ledger``."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, Self

import orjson

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal

_OK = b"ok"
_REPLAY = b"replay"
_REFUSED = b"refused"


class _FromJSON:
    @classmethod
    def from_reply(cls, body: bytes, replayed: bool) -> Self:
        doc: dict[str, Any] = orjson.loads(body)
        doc["replayed"] = replayed
        # A field with a default is newer than some stored receipts: absent there.
        return cls(
            **{
                f.name: doc[f.name]
                for f in fields(cls)  # type: ignore[arg-type]
                if f.name in doc or f.default is MISSING
            }
        )


@dataclass(frozen=True, slots=True)
class GiftReceipt(_FromJSON):
    transfer_id: str
    client_id: str
    stream_id: str
    gift_id: str
    count: int
    coins: int
    diamonds: int
    platform_coins: int
    balance: int
    combo: int
    seq: int
    ts: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class TopUpReceipt(_FromJSON):
    transfer_id: str
    payment_id: str
    user_id: str
    coins: int
    credited: int
    debt_repaid: int
    balance: int
    ts: int
    replayed: bool
    withheld: int = 0
    """Coins refunded before the payment arrived, never credited."""


@dataclass(frozen=True, slots=True)
class RefundReceipt(_FromJSON):
    transfer_id: str
    payment_id: str
    refund_id: str
    user_id: str
    coins: int
    refunded: int
    """Coins taken back now: ``coins`` capped at what is left of the payment; 0 before it."""
    before_payment: bool
    clawed: int
    debt_added: int
    balance: int
    debt: int
    ts: int
    replayed: bool
    reversed: int = 0
    """Coins of the buyer's gifts still in the payout hold that the refund reversed."""


@dataclass(frozen=True, slots=True)
class CashOutReceipt(_FromJSON):
    transfer_id: str
    client_id: str
    user_id: str
    diamonds: int
    cents: int
    balance: int
    state: str
    ts: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class PayoutReceipt(_FromJSON):
    transfer_id: str
    client_id: str
    user_id: str
    diamonds: int
    cents: int
    state: str
    balance: int
    ts: int
    replayed: bool


def unpack(reply: list[bytes]) -> tuple[bytes, bool]:
    """Return (body, replayed) of a successful reply, or raise the script's refusal."""
    status = reply[0]
    if status == _OK:
        return reply[1], False
    if status == _REPLAY:
        return reply[1], True
    if status == _REFUSED:
        raw_code = reply[1].decode()
        try:
            code = ErrorCode(raw_code)
        except ValueError:
            raise InvariantError(f"script refused with unknown code {raw_code!r}") from None
        detail = orjson.loads(reply[2]) if len(reply) > 2 else None
        raise LedgerRefusal(code, detail=detail)
    raise InvariantError(f"unexpected script status {status!r}")
