"""The JSON HTTP API (``docs/protocol.md``, "The HTTP API")."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from server.domain.accounts import Identity, Role, is_valid_id
from server.domain.errors import ErrorCode, OperatingError, RequestError, UnavailableError
from server.domain.limits import AMOUNT_MAX, PAGE_MAX, SEQUENCE_MAX
from server.protocol.events import enrich_gift, leaderboard_rows
from server.web.auth import bearer_from_header, verify_token
from server.web.errors import error_response
from server.web.inputs import int_param, read_body
from server.web.metrics import render
from server.web.services import Services

SIGNATURE_HEADER = "x-giftwire-signature"

Handler = Callable[[Request], Awaitable[Response]]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _identity(request: Request) -> Identity:
    token = bearer_from_header(request.headers.get("authorization"))
    if token is None:
        raise RequestError(ErrorCode.UNAUTHORIZED)
    return verify_token(_services(request).settings.jwt_secret, token)


def _acting_identity(request: Request) -> Identity:
    """The identity of a request that changes something: never a read-only token."""
    who = _identity(request)
    if who.read_only:
        raise RequestError(ErrorCode.READ_ONLY)
    return who


async def _take_change(request: Request, who: Identity) -> None:
    """Spend one of ``who``'s change tokens (``server/ledger/change_limits.py``): called by
    a call that changes something once its input is checked, just before its script runs
    (a malformed request costs no Redis call, so it costs no token). ``rate_limited`` (429,
    Retry-After) when none is left, and the call runs nothing."""
    await _services(request).ledger.changes.take(who.user_id)


async def _body(request: Request) -> bytes:
    return await read_body(request, _services(request).settings.limits.body_bytes_max)


async def _json_body(request: Request) -> dict[str, Any]:
    return _parse_json(await _body(request))


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise RequestError(ErrorCode.INVALID_REQUEST, "body must be JSON") from None
    if not isinstance(doc, dict):
        raise RequestError(ErrorCode.INVALID_REQUEST, "body must be a JSON object")
    return doc


def _id_field(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not is_valid_id(value):
        raise RequestError(
            ErrorCode.INVALID_REQUEST, f"{name} must be an id (1-64 of A-Za-z0-9_.:-)"
        )
    return value


def _amount_field(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name)
    if type(value) is not int or not 1 <= value <= AMOUNT_MAX:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"{name} must be a positive integer")
    return value


def _int_param(request: Request, name: str, default: int, high: int) -> int:
    return int_param(request.query_params.get(name), name, default, high)


def endpoint(handler: Handler) -> Handler:
    """Map operating errors to their documented HTTP responses."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except OperatingError as e:
            response = error_response(e.code, e.message, e.detail)
            if e.code is ErrorCode.MESSAGE_TOO_LARGE:
                # The rest of the body is still coming: close rather than read it through.
                response.headers["connection"] = "close"
            return response
        except UnavailableError:
            return error_response(ErrorCode.UNAVAILABLE)

    return wrapped


@endpoint
async def catalog(request: Request) -> Response:
    services = _services(request)
    try:
        cat = await services.ledger.current_catalog()  # what Redis holds now, not at start
    except UnavailableError:
        cat = services.catalog  # the last version read: gifts are refused meanwhile anyway
    if cat is not services.catalog:
        services.follow_catalog(cat)
    return JSONResponse({"version": cat.version, "gifts": [g.to_json() for g in cat]})


@endpoint
async def my_wallet(request: Request) -> Response:
    who = _identity(request)
    balance = await _services(request).ledger.balance(who.user_id)
    return JSONResponse(
        {
            "user_id": who.user_id,
            "coins": balance.coins,
            "diamonds": balance.diamonds,
            "debt_coins": balance.debt_coins,
            "held_diamonds": balance.held_diamonds,
            "withdrawable_diamonds": balance.withdrawable_diamonds,
            "next_release_ms": balance.next_release_ms,
        }
    )


@endpoint
async def start_stream(request: Request) -> Response:
    who = _acting_identity(request)
    if who.role not in (Role.CREATOR, Role.ADMIN):
        raise RequestError(ErrorCode.FORBIDDEN, "only creators start streams")
    doc = await _json_body(request)
    stream_id = _id_field(doc, "stream_id") if "stream_id" in doc else uuid.uuid4().hex[:16]
    title = doc.get("title", "")
    if not isinstance(title, str) or len(title) > 256:
        raise RequestError(ErrorCode.INVALID_REQUEST, "title must be a string of at most 256")
    change = await _services(request).ledger.start_stream(
        stream_id=stream_id, creator_id=who.user_id, title=title, creator_name=who.display_name
    )
    return JSONResponse(
        {"stream_id": change.stream_id, "creator_id": change.creator_id, "state": change.state},
        status_code=200 if change.replayed else 201,
    )


@endpoint
async def end_stream(request: Request) -> Response:
    who = _acting_identity(request)
    ledger = _services(request).ledger
    change = await ledger.end_stream(
        stream_id=request.path_params["stream_id"],
        actor_id=who.user_id,
        is_admin=who.role is Role.ADMIN,
    )
    # A battle ends with its stream (also on a replay: a crash may have come in between).
    await ledger.battles.end_for_stream(change.stream_id)
    return JSONResponse({"stream_id": change.stream_id, "state": change.state})


@endpoint
async def get_stream(request: Request) -> Response:
    services = _services(request)
    stream_id = request.path_params["stream_id"]
    stream = await services.ledger.stream(stream_id)
    if stream is None:
        raise RequestError(ErrorCode.UNKNOWN_STREAM)
    return JSONResponse(
        {
            "stream_id": stream.stream_id,
            "creator_id": stream.creator_id,
            "creator_name": stream.creator_name,
            "title": stream.title,
            "state": stream.state,
            "last_seq": stream.last_sequence,
            "coins": stream.coins_total,
            "diamonds": stream.diamonds_total,
            "gifts": stream.gifts_total,
            "viewers": await services.hub.viewers(stream_id),
        }
    )


@endpoint
async def leaderboard(request: Request) -> Response:
    limit = _int_param(request, "limit", 10, 100)
    ledger = _services(request).ledger
    rows = await ledger.leaderboard(request.path_params["stream_id"], limit)
    # Who received what on stage, next to who gave: the guests' totals in this stream.
    received = await ledger.guests.stage(request.path_params["stream_id"])
    return JSONResponse({"top": leaderboard_rows(rows), "received": received})


@endpoint
async def gift_history(request: Request) -> Response:
    """Gift events after ``after`` (a sequence), oldest first, at most ``limit``."""
    after = _int_param(request, "after", 0, SEQUENCE_MAX)
    limit = _int_param(request, "limit", 100, PAGE_MAX) or 1
    services = _services(request)
    rows = await services.ledger.feed(request.path_params["stream_id"], after, limit)
    # The same fields as live and resumed gifts: the catalog's display fields added.
    page = [enrich_gift(orjson.loads(raw), services.catalog) for raw in rows]
    body = {"events": page, "next_after": page[-1]["seq"] if page else after}
    return Response(orjson.dumps(body), media_type="application/json")


def _signature_matches(secret: str, body: bytes, header: str) -> bool:
    """``header`` is ``sha256=<hex HMAC-SHA256 of body>``, compared in constant time.

    Compared as bytes: ``hmac.compare_digest`` raises TypeError for a str that is not
    ASCII, and a header may hold any latin-1 character (Starlette decodes them so).
    """
    given = header.removeprefix("sha256=").encode("latin-1")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    return bool(secret) and hmac.compare_digest(given, expected)


@endpoint
async def payment_webhook(request: Request) -> Response:
    """Top-ups and chargebacks from the payment provider, signed with HMAC-SHA256."""
    services = _services(request)
    secret = services.settings.webhook_secret
    body = await _body(request)
    if not _signature_matches(secret, body, request.headers.get(SIGNATURE_HEADER, "")):
        raise RequestError(ErrorCode.BAD_SIGNATURE)
    doc = _parse_json(body)
    event, payment_id, user_id = (
        doc.get("type"),
        _id_field(doc, "payment_id"),
        _id_field(doc, "user_id"),
    )
    if event == "payment.succeeded":
        top_up = await services.ledger.top_up(
            payment_id=payment_id, user_id=user_id, coins=_amount_field(doc, "coins")
        )
        return JSONResponse(
            {
                "transfer_id": top_up.transfer_id,
                "credited": top_up.credited,
                "debt_repaid": top_up.debt_repaid,
                "withheld": top_up.withheld,
                "balance": top_up.balance,
                "replayed": top_up.replayed,
            }
        )
    if event == "payment.refunded":
        refund = await services.ledger.refund(
            payment_id=payment_id,
            user_id=user_id,
            refund_id=_id_field(doc, "refund_id"),
            coins=_amount_field(doc, "coins"),
        )
        return JSONResponse(
            {
                "transfer_id": refund.transfer_id,
                "refund_id": refund.refund_id,
                "refunded": refund.refunded,
                "before_payment": refund.before_payment,
                "clawed": refund.clawed,
                "debt_added": refund.debt_added,
                "reversed": refund.reversed,
                "balance": refund.balance,
                "replayed": refund.replayed,
            }
        )
    raise RequestError(
        ErrorCode.INVALID_REQUEST, "type must be payment.succeeded or payment.refunded"
    )


@endpoint
async def cash_out(request: Request) -> Response:
    who = _acting_identity(request)
    if who.role not in (Role.CREATOR, Role.ADMIN):
        raise RequestError(ErrorCode.FORBIDDEN, "only creators cash out")
    doc = await _json_body(request)
    receipt = await _services(request).ledger.cash_out(
        client_id=_id_field(doc, "id"),
        creator_id=who.user_id,
        diamonds=_amount_field(doc, "diamonds"),
    )
    return JSONResponse(
        {
            "transfer_id": receipt.transfer_id,
            "id": receipt.client_id,
            "diamonds": receipt.diamonds,
            "cents": receipt.cents,
            "balance": receipt.balance,
            "state": receipt.state,
            "replayed": receipt.replayed,
        },
        status_code=200 if receipt.replayed else 201,
    )


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    services = _services(request)
    ready = await services.ledger.ping()
    problems = services.watch.problems
    if ready:
        try:
            # Checked now, not at the last interval: a CONFIG SET is seen by the next probe.
            problems = await services.watch.check()
        except UnavailableError:
            ready = False
    pubsub = services.hub.connected
    status = 200 if ready and pubsub and not problems else 503
    return JSONResponse(
        {"redis": ready, "pubsub": pubsub, "problems": problems}, status_code=status
    )


async def metrics(request: Request) -> Response:
    body, content_type = render()
    return Response(body, media_type=content_type)


ROUTES = [
    Route("/api/catalog", catalog),
    Route("/api/me/wallet", my_wallet),
    Route("/api/streams", start_stream, methods=["POST"]),
    Route("/api/streams/{stream_id}", get_stream),
    Route("/api/streams/{stream_id}/end", end_stream, methods=["POST"]),
    Route("/api/streams/{stream_id}/leaderboard", leaderboard),
    Route("/api/streams/{stream_id}/gifts", gift_history),
    Route("/api/webhooks/payments", payment_webhook, methods=["POST"]),
    Route("/api/cashouts", cash_out, methods=["POST"]),
    Route("/healthz", healthz),
    Route("/readyz", readyz),
    Route("/metrics", metrics),
]
