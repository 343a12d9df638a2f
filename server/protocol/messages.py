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
from server.domain.limits import GIFT_COUNT_MAX, SEQUENCE_MAX


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
    to: str | None = None
    """A guest on stage who receives the gift, or ``*`` for every guest (split); None: the
    creator."""


@dataclass(frozen=True, slots=True)
class Resume:
    since: int
    epoch: str | None = None
    """The epoch ``since`` counts in; None (the old form): the stream's current one."""


@dataclass(frozen=True, slots=True)
class Ping:
    client_id: str | None


ClientMessage = SendGift | Resume | Ping

_FIELDS: dict[str, frozenset[str]] = {
    "send_gift": frozenset({"type", "id", "gift", "count", "catalog_version", "to"}),
    "resume": frozenset({"type", "since", "epoch"}),
    "ping": frozenset({"type", "id"}),
}
__all__ = ["SEQUENCE_MAX", "ClientMessage", "Ping", "ProtocolError", "Resume", "SendGift"]


def _int_field(doc: dict[str, Any], name: str, low: int, high: int, client_id: str | None) -> int:
    value = doc.get(name)
    if type(value) is not int or not low <= value <= high:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"{name} must be an integer in {low}..{high}", client_id
        )
    return value


def is_epoch(value: object) -> bool:
    """An epoch as the server hands them out (``welcome``, every gift): an id, or ''
    for a stream from before epochs existed."""
    return value == "" or is_valid_id(value)


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
        to = doc.get("to")
        if "to" in doc and to != "*" and not is_valid_id(to):
            raise ProtocolError(
                ErrorCode.INVALID_REQUEST, "to must be a guest's user id or *", client_id
            )
        return SendGift(client_id, gift, count, version, to)
    if kind == "resume":
        since = _int_field(doc, "since", 0, SEQUENCE_MAX, None)
        epoch = doc.get("epoch")
        if "epoch" in doc and not is_epoch(epoch):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "epoch must be an epoch id")
        return Resume(since, epoch)
    if "id" in doc and client_id is None:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "invalid id")
    return Ping(client_id)
