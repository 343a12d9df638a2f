"""Battles over HTTP (``docs/protocol.md``, "Battles"): invite, accept, decline or withdraw,
end, and read a stream's battle or a stored result. Each change is one battle script
(``server/ledger/battles.py``); its document is also published to both rooms."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.domain.accounts import Identity, Role, is_valid_id
from server.domain.errors import ErrorCode, RequestError
from server.ledger.battles import BattleReply
from server.web.http_api import (
    _acting_identity,
    _id_field,
    _json_body,
    _services,
    _take_change,
    endpoint,
)


def _creator(request: Request) -> Identity:
    who = _acting_identity(request)
    if who.role not in (Role.CREATOR, Role.ADMIN):
        raise RequestError(ErrorCode.FORBIDDEN, "only creators take part in battles")
    return who


async def _pair(request: Request, who: Identity) -> tuple[str, str, str]:
    """The battle id and ``{from_stream, to_stream}`` of an answer to an invitation, checked,
    then one of the creator's change tokens spent."""
    doc = await _json_body(request)
    pair = _battle_id(request), _id_field(doc, "from_stream"), _id_field(doc, "to_stream")
    await _take_change(request, who)
    return pair


def _battle_id(request: Request) -> str:
    battle_id = request.path_params["battle_id"]
    if not is_valid_id(battle_id):
        raise RequestError(ErrorCode.INVALID_REQUEST, "battle id must be an id")
    return str(battle_id)


def _reply(reply: BattleReply, created: bool = False) -> Response:
    status = 201 if created and not reply.replayed else 200
    return JSONResponse({**reply.doc, "replayed": reply.replayed}, status_code=status)


@endpoint
async def invite(request: Request) -> Response:
    """``POST /api/battles`` {id?, from_stream, to_stream, duration_s?}."""
    who = _creator(request)
    doc: dict[str, Any] = await _json_body(request)
    duration = doc.get("duration_s")
    if duration is not None and (type(duration) is not int or not 1 <= duration <= 86_400):
        raise RequestError(ErrorCode.INVALID_REQUEST, "duration_s must be a number of seconds")
    battle_id = _id_field(doc, "id") if "id" in doc else uuid.uuid4().hex[:16]
    from_stream, to_stream = _id_field(doc, "from_stream"), _id_field(doc, "to_stream")
    await _take_change(request, who)
    reply = await _services(request).ledger.battles.invite(
        battle_id=battle_id,
        from_stream=from_stream,
        to_stream=to_stream,
        actor_id=who.user_id,
        duration_s=duration,
    )
    return _reply(reply, created=True)


@endpoint
async def accept(request: Request) -> Response:
    """``POST /api/battles/{id}/accept`` {from_stream, to_stream}: the invited creator."""
    who = _creator(request)
    battle_id, from_stream, to_stream = await _pair(request, who)
    reply = await _services(request).ledger.battles.accept(
        battle_id=battle_id, from_stream=from_stream, to_stream=to_stream, actor_id=who.user_id
    )
    return _reply(reply, created=True)


@endpoint
async def decline(request: Request) -> Response:
    """``POST /api/battles/{id}/decline`` {from_stream, to_stream}: either creator."""
    who = _creator(request)
    battle_id, from_stream, to_stream = await _pair(request, who)
    reply = await _services(request).ledger.battles.decline(
        battle_id=battle_id, from_stream=from_stream, to_stream=to_stream, actor_id=who.user_id
    )
    return _reply(reply)


@endpoint
async def end(request: Request) -> Response:
    """``POST /api/streams/{id}/battle/end``: either creator ends the stream's battle."""
    who = _creator(request)
    await _take_change(request, who)
    reply = await _services(request).ledger.battles.end(
        stream_id=request.path_params["stream_id"], actor_id=who.user_id, reason="ended"
    )
    return _reply(reply)


@endpoint
async def stream_battle(request: Request) -> Response:
    """``GET /api/streams/{id}/battle``: the current or last battle and the invitations."""
    battles = _services(request).ledger.battles
    stream_id = request.path_params["stream_id"]
    await battles.finish_due(stream_id)
    live = await battles.live(stream_id)
    return JSONResponse({"battle": live, **(await battles.invites(stream_id))})


@endpoint
async def result(request: Request) -> Response:
    """``GET /api/battles/{id}``: a finished battle's result (404 ``unknown_battle``)."""
    return JSONResponse(await _services(request).ledger.battles.result(_battle_id(request)))


BATTLE_ROUTES = [
    Route("/api/battles", invite, methods=["POST"]),
    Route("/api/battles/{battle_id}", result),
    Route("/api/battles/{battle_id}/accept", accept, methods=["POST"]),
    Route("/api/battles/{battle_id}/decline", decline, methods=["POST"]),
    Route("/api/streams/{stream_id}/battle", stream_battle),
    Route("/api/streams/{stream_id}/battle/end", end, methods=["POST"]),
]
