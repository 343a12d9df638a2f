"""Client messages: parsed from decoded frames into typed values, strictly.

Unknown message types, unknown fields, wrong types (``true`` is not a number here) and
out-of-range values are refused with ``invalid_request``. No field can name a sender,
a creator or a price: the sender is the token's subject and the price is the catalog's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.domain.accounts import is_valid_id
from server.domain.errors import ErrorCode
from server.domain.limits import GIFT_COUNT_MAX


class ProtocolError(ValueError):
    """A message was refused. ``client_id`` is the message's ``id`` when one was readable."""

    def __init__(self, code: ErrorCode, message: str, client_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_id = client_id


@dataclass(frozen=True, slots=True)
class SendGift:
    client_id: str
    gift_id: str
    count: int
    catalog_version: int | None = None
    """The catalog version the client showed its user; a stale one is refused."""


@dataclass(frozen=True, slots=True)
class Resume:
    since: int


@dataclass(frozen=True, slots=True)
class Ping:
    client_id: str | None


ClientMessage = SendGift | Resume | Ping

_FIELDS: dict[str, frozenset[str]] = {
    "send_gift": frozenset({"type", "id", "gift", "count", "catalog_version"}),
    "resume": frozenset({"type", "since"}),
    "ping": frozenset({"type", "id"}),
}
SEQUENCE_MAX = 2**53 - 1


def _int_field(doc: dict[str, Any], name: str, low: int, high: int, client_id: str | None) -> int:
    value = doc.get(name)
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"{name} must be an integer in {low}..{high}", client_id
        )
    return value


def parse_message(doc: dict[str, Any]) -> ClientMessage:
    """Turn a decoded frame into a client message, or raise ProtocolError."""
    raw_id = doc.get("id")
    client_id = raw_id if is_valid_id(raw_id) else None
    kind = doc.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "unknown message type", client_id)
    extra = doc.keys() - _FIELDS[kind]
    if extra:
        names = ", ".join(sorted(extra)[:5])
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"unknown fields: {names}", client_id)
    if kind == "send_gift":
        if client_id is None:
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, "id must be 1-64 characters of A-Z a-z 0-9 _ . : -"
            )
        gift = doc.get("gift")
        if not is_valid_id(gift):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "gift must be a gift id", client_id)
        count = 1 if "count" not in doc else _int_field(doc, "count", 1, GIFT_COUNT_MAX, client_id)
        version = (
            None
            if "catalog_version" not in doc
            else _int_field(doc, "catalog_version", 1, SEQUENCE_MAX, client_id)
        )
        return SendGift(client_id, gift, count, version)
    if kind == "resume":
        return Resume(_int_field(doc, "since", 0, SEQUENCE_MAX, None))
    if "id" in doc and client_id is None:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid id")
    return Ping(client_id)
