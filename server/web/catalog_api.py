"""The managed catalog over HTTP, for admins (``docs/protocol.md``, "The managed
catalog"): read the current version and the schedule, edit now (compare-and-set on the
version the edit was made from), schedule an edit for a time, cancel a scheduled one.

Each edit and cancellation spends a change token of the admin's (``rate_limited``,
``server/ledger/change_limits.py``). Every process follows a new version by itself
(``LedgerWatch``); the one that wrote it follows at once, and each tells its connected
clients (``catalog`` message).
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.domain.accounts import Identity, Role, is_valid_id
from server.domain.catalog import Catalog, CatalogError
from server.domain.catalog_edits import CatalogFullError, UnknownGiftError, parse_changes
from server.domain.errors import ErrorCode, RequestError
from server.domain.limits import CATALOG_GIFTS_MAX, SEQUENCE_MAX
from server.ledger.catalogs import ScheduledEdit
from server.web.http_api import _identity, _json_body, _services, _take_change, endpoint

_EDIT_FIELDS = frozenset({"expect_version", "changes", "at_ms", "id"})


def _admin(request: Request) -> Identity:
    who = _identity(request)
    if who.role is not Role.ADMIN:
        raise RequestError(ErrorCode.FORBIDDEN, "only admins manage the catalog")
    return who


def _catalog_json(catalog: Catalog) -> dict[str, Any]:
    return {"version": catalog.version, "gifts": [g.to_json() for g in catalog]}


def _refusal(e: CatalogError) -> RequestError:
    message = str(e)[:200]
    if isinstance(e, UnknownGiftError):
        return RequestError(ErrorCode.UNKNOWN_GIFT, message)
    if isinstance(e, CatalogFullError):
        return RequestError(ErrorCode.CATALOG_LIMIT, message, {"gifts_max": CATALOG_GIFTS_MAX})
    return RequestError(ErrorCode.INVALID_REQUEST, message)


def _int_field(doc: dict[str, Any], name: str, low: int) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= SEQUENCE_MAX:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"{name} must be an integer >= {low}")
    return value


@endpoint
async def admin_catalog(request: Request) -> Response:
    _admin(request)
    store = _services(request).ledger.catalogs
    current = await store.current()
    body = _catalog_json(current) if current else {"version": 0, "gifts": []}
    body["scheduled"] = [edit.to_json() for edit in await store.scheduled()]
    return JSONResponse(body)


@endpoint
async def edit_catalog(request: Request) -> Response:
    """``{expect_version, changes, at_ms?, id?}``: now, or (``at_ms``) scheduled."""
    who = _admin(request)
    doc = await _json_body(request)
    unknown = set(doc) - _EDIT_FIELDS
    if unknown:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"unknown field {sorted(unknown)[0]!r}"[:200])
    expect = _int_field(doc, "expect_version", 1)
    at_ms = _int_field(doc, "at_ms", 0)
    edit_id = doc.get("id", uuid.uuid4().hex[:16])
    if not is_valid_id(edit_id):
        raise RequestError(ErrorCode.INVALID_REQUEST, "id must be an id (1-64 of A-Za-z0-9_.:-)")
    services = _services(request)
    store = services.ledger.catalogs
    try:
        changes = parse_changes(doc.get("changes"))
        await _take_change(request, who)
        if at_ms is not None:
            if expect is not None:
                await store.read_current_or_changed(expect)
            edit = ScheduledEdit(edit_id, at_ms, changes, who.user_id)
            added = await store.schedule(edit)
            return JSONResponse(
                {"scheduled": edit.to_json(), "replayed": not added},
                status_code=202 if added else 200,
            )
        if expect is None:
            raise RequestError(
                ErrorCode.INVALID_REQUEST, "expect_version: the version this edit was made from"
            )
        published = await store.edit(changes, expected_version=expect)
    except CatalogError as e:
        raise _refusal(e) from None
    await services.catalog_changed()
    return JSONResponse(
        {"version": published.version, "written": published.written,
         "catalog": _catalog_json(services.catalog)}
    )  # fmt: skip


@endpoint
async def cancel_scheduled(request: Request) -> Response:
    who = _admin(request)
    edit_id = request.path_params["edit_id"]
    if not is_valid_id(edit_id):
        raise RequestError(ErrorCode.INVALID_REQUEST, "not an edit id")
    await _take_change(request, who)
    await _services(request).ledger.catalogs.cancel(edit_id)
    return JSONResponse({"cancelled": edit_id})


CATALOG_ROUTES = [
    Route("/api/admin/catalog", admin_catalog, methods=["GET"]),
    Route("/api/admin/catalog", edit_catalog, methods=["POST"]),
    Route("/api/admin/catalog/scheduled/{edit_id}", cancel_scheduled, methods=["DELETE"]),
]
