"""The creator's goal calls of the HTTP API (``docs/protocol.md``, "Stream goals").

``POST /api/streams/{id}/goals`` adds a goal (idempotent by ``goal_id``), ``GET`` lists the
stream's goals with their progress (anyone), ``DELETE /api/streams/{id}/goals/{goal_id}``
removes one. Only the stream's creator may add or delete (``not_stream_owner``); the Lua
script checks it against the stream hash, not the token's role alone. Adding and deleting
spend a change token of the caller's (``rate_limited``, ``server/ledger/change_limits.py``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.domain.accounts import is_valid_id
from server.domain.errors import ErrorCode, RequestError
from server.domain.goals import goal_from_request
from server.domain.limits import GOALS_PER_STREAM_MAX
from server.web.http_api import _acting_identity, _json_body, _services, _take_change, endpoint


def _path_id(request: Request, name: str) -> str:
    value = request.path_params[name]
    if not is_valid_id(value):
        raise RequestError(ErrorCode.INVALID_REQUEST, f"{name} must be an id")
    return str(value)


@endpoint
async def create_goal(request: Request) -> Response:
    who = _acting_identity(request)
    stream_id = _path_id(request, "stream_id")
    goal = goal_from_request(await _json_body(request))
    await _take_change(request, who)
    stored, replayed = await _services(request).ledger.set_goal(
        stream_id=stream_id, actor_id=who.user_id, goal=goal
    )
    return JSONResponse(
        {**stored.to_json(), "replayed": replayed}, status_code=200 if replayed else 201
    )


@endpoint
async def list_goals(request: Request) -> Response:
    stream_id = _path_id(request, "stream_id")
    goals = await _services(request).ledger.stream_goals(stream_id)
    return JSONResponse(
        {"goals": [goal.to_json() for goal in goals], "goals_max": GOALS_PER_STREAM_MAX}
    )


@endpoint
async def delete_goal(request: Request) -> Response:
    who = _acting_identity(request)
    stream_id, goal_id = _path_id(request, "stream_id"), _path_id(request, "goal_id")
    await _take_change(request, who)
    deleted = await _services(request).ledger.delete_goal(
        stream_id=stream_id, actor_id=who.user_id, goal_id=goal_id
    )
    return JSONResponse({"deleted": deleted})


ROUTES = [
    Route("/api/streams/{stream_id}/goals", create_goal, methods=["POST"]),
    Route("/api/streams/{stream_id}/goals", list_goals, methods=["GET"]),
    Route("/api/streams/{stream_id}/goals/{goal_id}", delete_goal, methods=["DELETE"]),
]
