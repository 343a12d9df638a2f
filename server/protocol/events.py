"""Server messages: one function per message type, so every field is named once."""

from __future__ import annotations

from typing import Any

from server.domain.catalog import Catalog
from server.domain.errors import ERROR_MESSAGES, ErrorCode

Message = dict[str, Any]


def error(
    code: ErrorCode,
    client_id: str | None = None,
    message: str | None = None,
    detail: dict[str, object] | None = None,
) -> Message:
    out: Message = {
        "type": "error",
        "id": client_id,
        "code": code.value,
        "message": message or ERROR_MESSAGES[code],
    }
    if detail:
        out["detail"] = detail
    return out


def enrich_gift(event: Message, catalog: Catalog) -> Message:
    """Add the catalog's display fields to a gift event published by send_gift.lua."""
    gift = catalog.get(event.get("gift_id", ""))
    if gift is not None:
        event["gift_name"] = gift.name
        event["animation"] = gift.animation
        event["tier"] = gift.tier
    return event


def gift_batch(events: list[Message]) -> Message:
    """Coalesced gift events of a hot room, oldest first."""
    return {"type": "gifts", "events": events}
