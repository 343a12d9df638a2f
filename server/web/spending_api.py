"""Responsible spending over HTTP (``docs/protocol.md``): a user reads and sets their own
limits; an admin marks an account a minor with caps. Every change is one run of
``spending_limits.lua`` (``server/ledger/spending.py``), atomic against the user's gifts in
every process. Every change, once its input is checked, spends a change token of the
caller's (``rate_limited``, ``server/ledger/change_limits.py``)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.domain.accounts import Role, is_valid_id
from server.domain.errors import ErrorCode, RequestError
from server.domain.spending import SpendingStatus
from server.web.http_api import (
    _acting_identity,
    _identity,
    _json_body,
    _services,
    _take_change,
    endpoint,
)

_OWN_FIELDS = frozenset({"day", "month"})
_MINOR_FIELDS = frozenset({"minor", "day_cap", "month_cap"})


def _reply(status: SpendingStatus) -> Response:
    return JSONResponse(status.to_json())


def _only(doc: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(doc) - allowed
    if unknown:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"unknown field {sorted(unknown)[0]!r}"[:200])


def _limit(doc: dict[str, Any], name: str) -> int | None:
    """An optional limit field: absent or null, else an integer (checked by the store)."""
    value = doc.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"{name} must be an integer (0: none)")
    return value


@endpoint
async def my_spending(request: Request) -> Response:
    who = _acting_identity(request)  # private: never through a shareable overlay token
    return _reply(await _services(request).ledger.spending.show(who.user_id))


@endpoint
async def set_my_spending(request: Request) -> Response:
    """``{day?, month?}``: the caller's own limits (coins, 0: none)."""
    who = _acting_identity(request)
    doc = await _json_body(request)
    _only(doc, _OWN_FIELDS)
    day, month = _limit(doc, "day"), _limit(doc, "month")
    if day is None and month is None:
        raise RequestError(ErrorCode.INVALID_REQUEST, "name day or month (coins; 0: none)")
    await _take_change(request, who)
    store = _services(request).ledger.spending
    return _reply(await store.set(who.user_id, day=day, month=month))


def _admin_target(request: Request) -> str:
    if _identity(request).role is not Role.ADMIN:
        raise RequestError(ErrorCode.FORBIDDEN, "only admins manage accounts")
    user_id = request.path_params["user_id"]
    if not is_valid_id(user_id):
        raise RequestError(ErrorCode.INVALID_REQUEST, "user_id must be an id")
    return user_id


@endpoint
async def account_spending(request: Request) -> Response:
    user_id = _admin_target(request)
    return _reply(await _services(request).ledger.spending.show(user_id))


@endpoint
async def protect_account(request: Request) -> Response:
    """``{minor: bool, day_cap?, month_cap?}``: mark or unmark a minor (caps default to
    ``GIFTWIRE_MINOR_*_SPEND_COINS_MAX``)."""
    user_id = _admin_target(request)
    doc = await _json_body(request)
    _only(doc, _MINOR_FIELDS)
    minor = doc.get("minor")
    if type(minor) is not bool:
        raise RequestError(ErrorCode.INVALID_REQUEST, "minor must be true or false")
    await _take_change(request, _identity(request))
    store = _services(request).ledger.spending
    status = await store.protect(
        user_id, minor=minor, day_cap=_limit(doc, "day_cap"), month_cap=_limit(doc, "month_cap")
    )
    return _reply(status)


SPENDING_ROUTES = [
    Route("/api/me/spending", my_spending, methods=["GET"]),
    Route("/api/me/spending", set_my_spending, methods=["PUT"]),
    Route("/api/admin/accounts/{user_id}/spending", account_spending, methods=["GET"]),
    Route("/api/admin/accounts/{user_id}/spending", protect_account, methods=["PUT"]),
]
