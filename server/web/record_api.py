"""HTTP endpoints on the durable record: wallet history and creator statements
(``docs/protocol.md``). They read PostgreSQL, never Redis, and answer ``unavailable``
(503) while the record is not configured or not reachable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.domain.accounts import Role
from server.domain.errors import ErrorCode, RequestError, UnavailableError
from server.record.connection import RecordPool
from server.record.history import HISTORY_PAGE_MAX, parse_cursor, wallet_history
from server.record.postings import RecordError
from server.record.statements import creator_statement, parse_period
from server.web.http_api import _identity, _int_param, _services, endpoint


def _pool(request: Request) -> RecordPool:
    record = _services(request).record
    if record is None or record.pool is None:
        raise UnavailableError("the durable record is not available")
    return record.pool


@asynccontextmanager
async def _database_errors() -> AsyncIterator[None]:
    try:
        yield
    except (psycopg.OperationalError, OSError) as e:
        raise UnavailableError(str(e)) from e


@endpoint
async def my_transactions(request: Request) -> Response:
    """``?before=NEXT_BEFORE&limit=50``: the caller's transfers, newest first."""
    who = _identity(request)
    limit = _int_param(request, "limit", 50, HISTORY_PAGE_MAX) or 1
    raw = request.query_params.get("before")
    try:
        before = parse_cursor(raw) if raw is not None else None
    except RecordError:
        raise RequestError(ErrorCode.INVALID_REQUEST, "before must be a next_before") from None
    async with _database_errors():
        page = await wallet_history(_pool(request), who.user_id, before=before, limit=limit)
    return JSONResponse({"transactions": page.items, "next_before": page.next_before})


@endpoint
async def my_statement(request: Request) -> Response:
    """``?month=YYYY-MM`` or ``?year=YYYY``, ``&format=csv`` for CSV."""
    who = _identity(request)
    if who.role not in (Role.CREATOR, Role.ADMIN):
        raise RequestError(ErrorCode.FORBIDDEN, "statements are for creators")
    params = request.query_params
    period = parse_period(params.get("month"), params.get("year"))
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise RequestError(ErrorCode.INVALID_REQUEST, "format must be json or csv")
    rate = _services(request).settings.economics.cents_per_100_diamonds
    async with _database_errors():
        statement = await creator_statement(_pool(request), who.user_id, period, rate)
    if fmt == "csv":
        name = f"giftwire-{who.user_id}-{period.label}.csv"
        return Response(
            statement.to_csv(),
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )
    return JSONResponse(statement.to_json())


RECORD_ROUTES = [
    Route("/api/me/transactions", my_transactions),
    Route("/api/creators/me/statements", my_statement),
]
