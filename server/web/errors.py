"""Error responses of the HTTP API: ``{"error": {"code", "message", "detail"?}}``."""

from __future__ import annotations

import math

from starlette.responses import JSONResponse

from server.domain.errors import ERROR_MESSAGES, ErrorCode
from server.web.metrics import ERRORS

UNLISTED_STATUS = 422
"""A well-formed request the rules refuse: the status of any code not listed below."""

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.BAD_SIGNATURE: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.READ_ONLY: 403,
    ErrorCode.NOT_STREAM_OWNER: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNKNOWN_STREAM: 404,
    ErrorCode.UNKNOWN_PAYMENT: 404,
    ErrorCode.UNKNOWN_PAYOUT: 404,
    ErrorCode.PAYOUT_SETTLED: 409,
    ErrorCode.UNKNOWN_GIFT: 404,
    ErrorCode.INSUFFICIENT_FUNDS: 409,
    ErrorCode.DUPLICATE_MISMATCH: 409,
    ErrorCode.STREAM_EXISTS: 409,
    ErrorCode.STREAM_LIMIT: 409,
    ErrorCode.STREAM_NOT_LIVE: 409,
    ErrorCode.CATALOG_CHANGED: 409,
    ErrorCode.FUNDS_HELD: 409,
    ErrorCode.HOLD_LIMIT: 429,
    ErrorCode.HOLD_CHANGED: 503,
    ErrorCode.UNKNOWN_INVITE: 404,
    ErrorCode.UNKNOWN_BATTLE: 404,
    ErrorCode.INVITE_PENDING: 409,
    ErrorCode.INVITEE_BUSY: 409,
    ErrorCode.BATTLE_RUNNING: 409,
    ErrorCode.BATTLE_NOT_OVER: 409,
    ErrorCode.SELF_BATTLE: 422,
    ErrorCode.NOT_A_GUEST: 404,
    ErrorCode.GUEST_LIMIT: 409,
    ErrorCode.GUEST_LEFT: 409,
    ErrorCode.NO_GUESTS: 409,
    ErrorCode.GUESTS_CHANGED: 409,
    ErrorCode.GOAL_LIMIT: 409,
    ErrorCode.SELF_GIFT: 422,
    ErrorCode.SPENDING_LIMIT: 422,
    ErrorCode.SPENDING_CAP: 422,
    ErrorCode.CATALOG_LIMIT: 422,
    ErrorCode.BALANCE_LIMIT: 422,
    ErrorCode.BELOW_MINIMUM: 422,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_MANY_CONNECTIONS: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


def error_response(
    code: ErrorCode, message: str | None = None, detail: dict[str, object] | None = None
) -> JSONResponse:
    ERRORS.labels(code.value).inc()
    body: dict[str, object] = {"code": code.value, "message": message or ERROR_MESSAGES[code]}
    if detail:
        body["detail"] = detail
    response = JSONResponse({"error": body}, status_code=HTTP_STATUS.get(code, UNLISTED_STATUS))
    retry_after_ms = (detail or {}).get("retry_after_ms")
    if code is ErrorCode.RATE_LIMITED and type(retry_after_ms) is int:
        # Whole seconds (RFC 9110), rounded up: a client that waits them finds a token.
        response.headers["retry-after"] = str(max(1, math.ceil(retry_after_ms / 1000)))
    return response
