"""Guests on stage over HTTP (``docs/protocol.md``, "Guests on stage"): the creator invites
or takes a guest off, an invited user joins or leaves. Each change is one script
(``server/ledger/guests.py``) that also publishes the stage (``guests``) to the room, after
a change token of the caller's (``rate_limited``, ``server/ledger/change_limits.py``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.web.http_api import (
    _acting_identity,
    _id_field,
    _json_body,
    _services,
    _take_change,
    endpoint,
)


@endpoint
async def invite(request: Request) -> Response:
    """``POST /api/streams/{id}/guests`` {user_id}: the creator invites a user on stage."""
    who = _acting_identity(request)
    guest = _id_field(await _json_body(request), "user_id")
    await _take_change(request, who)
    event = await _services(request).ledger.guests.invite(
        stream_id=request.path_params["stream_id"], creator_id=who.user_id, guest_id=guest
    )
    return JSONResponse({"guests": event["guests"]})


@endpoint
async def join(request: Request) -> Response:
    """``POST /api/streams/{id}/guests/join``: the caller, invited, goes on stage."""
    who = _acting_identity(request)
    await _take_change(request, who)
    event = await _services(request).ledger.guests.join(
        stream_id=request.path_params["stream_id"], guest_id=who.user_id, name=who.display_name
    )
    return JSONResponse({"guests": event["guests"]})


@endpoint
async def leave(request: Request) -> Response:
    """``POST /api/streams/{id}/guests/leave`` {user_id?}: the caller leaves the stage, or
    the creator takes ``user_id`` off (or withdraws its invitation)."""
    who = _acting_identity(request)
    doc = await _json_body(request)
    guest = _id_field(doc, "user_id") if "user_id" in doc else who.user_id
    await _take_change(request, who)
    event = await _services(request).ledger.guests.leave(
        stream_id=request.path_params["stream_id"], actor_id=who.user_id, guest_id=guest
    )
    return JSONResponse({"guests": event["guests"]})


@endpoint
async def stage(request: Request) -> Response:
    """``GET /api/streams/{id}/guests``: who is invited or on stage, and what each received."""
    guests = await _services(request).ledger.guests.stage(request.path_params["stream_id"])
    return JSONResponse({"guests": guests})


GUEST_ROUTES = [
    Route("/api/streams/{stream_id}/guests", stage),
    Route("/api/streams/{stream_id}/guests", invite, methods=["POST"]),
    Route("/api/streams/{stream_id}/guests/join", join, methods=["POST"]),
    Route("/api/streams/{stream_id}/guests/leave", leave, methods=["POST"]),
]
