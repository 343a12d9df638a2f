"""The payout lifecycle over HTTP: the payout provider's signed webhook and the admin call
that settle a pending cash-out as ``paid`` or ``failed`` (``docs/protocol.md``). Both run
``settle_payout.lua``: idempotent per cash-out, and a failure returns the diamonds."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.domain.accounts import Identity, Role
from server.domain.errors import ErrorCode, RequestError
from server.ledger.receipts import PayoutReceipt
from server.web.http_api import (
    SIGNATURE_HEADER,
    _body,
    _id_field,
    _identity,
    _json_body,
    _parse_json,
    _services,
    _signature_matches,
    _take_change,
    endpoint,
)

_EVENTS = {"payout.paid": "paid", "payout.failed": "failed"}


async def _settle(
    request: Request, doc: dict[str, Any], outcome: str, admin: Identity | None = None
) -> Response:
    """Settle the cash-out ``doc`` names; an ``admin``'s call spends a change token first
    (the provider's signed webhook is not limited: its volume is the cash-outs')."""
    client_id, creator_id = _id_field(doc, "id"), _id_field(doc, "creator_id")
    if admin is not None:
        await _take_change(request, admin)
    receipt: PayoutReceipt = await _services(request).ledger.settle_payout(
        client_id=client_id, creator_id=creator_id, outcome=outcome
    )
    return JSONResponse(
        {
            "transfer_id": receipt.transfer_id,
            "id": receipt.client_id,
            "creator_id": receipt.user_id,
            "state": receipt.state,
            "diamonds": receipt.diamonds,
            "cents": receipt.cents,
            "balance": receipt.balance,
            "replayed": receipt.replayed,
        }
    )


@endpoint
async def payout_webhook(request: Request) -> Response:
    """``{type: payout.paid | payout.failed, creator_id, id}``, HMAC-signed with
    ``GIFTWIRE_PAYOUT_WEBHOOK_SECRET`` like the payment webhook."""
    secret = _services(request).settings.payout_webhook_secret
    body = await _body(request)
    if not _signature_matches(secret, body, request.headers.get(SIGNATURE_HEADER, "")):
        raise RequestError(ErrorCode.BAD_SIGNATURE)
    doc = _parse_json(body)
    outcome = _EVENTS.get(str(doc.get("type")))
    if outcome is None:
        raise RequestError(ErrorCode.INVALID_REQUEST, "type must be payout.paid or payout.failed")
    return await _settle(request, doc, outcome)


@endpoint
async def admin_settle_payout(request: Request) -> Response:
    """``{creator_id, id, state: paid | failed}`` by an admin: support settling by hand."""
    admin = _identity(request)
    if admin.role is not Role.ADMIN:
        raise RequestError(ErrorCode.FORBIDDEN, "only admins settle payouts")
    doc = await _json_body(request)
    outcome = doc.get("state")
    if outcome not in ("paid", "failed"):
        raise RequestError(ErrorCode.INVALID_REQUEST, "state must be paid or failed")
    return await _settle(request, doc, str(outcome), admin)


PAYOUT_ROUTES = [
    Route("/api/webhooks/payouts", payout_webhook, methods=["POST"]),
    Route("/api/admin/payouts", admin_settle_payout, methods=["POST"]),
]
