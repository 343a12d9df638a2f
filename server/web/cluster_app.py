"""Cluster mode (``GIFTWIRE_REDIS_CLUSTER=true``) until the two-leg gift scripts exist.

The single-node scripts cannot run on a Redis Cluster (send_gift alone spans six slots),
and a half-working server would be worse than an honest refusal. So in cluster mode the
server starts, reads the cluster's slot map and loads the scripts on every primary
(``ClusterScriptRunner``, the part that is built), and then refuses everything that needs
the ledger, with the documented ``unavailable`` code and a message that says why:

* ``GET /healthz``: 200 (the process is up);
* ``GET /readyz``: 503 ``{"redis": reached, "cluster": true, "ready": false, "reason"}``,
  so a load balancer sends it no traffic;
* every ``/api/...`` request: 503 ``unavailable`` with the reason;
* a WebSocket: accepted, then closed with 1001 and the reason.

Single-node mode never comes here: ``create_app`` branches before wiring anything.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis import exceptions as redis_errors
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from server.domain.errors import ErrorCode, UnavailableError
from server.ledger.cluster_runner import ClusterScriptRunner
from server.protocol.close_codes import CloseCode
from server.settings import Settings
from server.web.edge import DirectWebSocket
from server.web.errors import error_response

log = logging.getLogger("giftwire")

NOT_YET_SUPPORTED = (
    "giftwire on a Redis Cluster is not yet supported (gifts need the two-leg scripts)"
)
"""Sent with every refusal; short enough for a WebSocket close reason (123 bytes)."""
_DOWN = (UnavailableError, redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


def create_cluster_app(settings: Settings) -> DirectWebSocket:
    if not settings.redis_url:
        raise ValueError("cluster mode needs settings.redis_url (a node of the cluster)")
    node_url = settings.redis_url

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runner = ClusterScriptRunner(
            [node_url],
            timeout_s=settings.limits.redis_timeout_s,
            calls_per_pipeline_max=settings.limits.pipeline_calls_max,
            pipelines_in_flight_max=settings.limits.pipelines_in_flight_max,
        )
        try:
            await runner.prepare()
        except _DOWN as e:
            log.warning("cluster at %s not reachable yet: %s", node_url.split("@")[-1], e)
        app.state.cluster_runner = runner
        log.warning("giftwire in cluster mode: %s", NOT_YET_SUPPORTED)
        try:
            yield
        finally:
            await runner.aclose()

    routes = [
        Route("/healthz", _healthz),
        Route("/readyz", _readyz),
        Route("/api/{path:path}", _refuse, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        WebSocketRoute("/ws/streams/{stream_id}", _refuse_socket),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    # The same ASGI shape as single-node mode (create_app): upgrades skip the stack.
    return DirectWebSocket(app, "/ws/streams/", "stream_id", _refuse_socket)


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _readyz(request: Request) -> Response:
    runner: ClusterScriptRunner = request.app.state.cluster_runner
    try:
        reached = await runner.ensure_loaded()
    except _DOWN:
        reached = False
    body = {"redis": reached, "cluster": True, "ready": False, "reason": NOT_YET_SUPPORTED}
    return JSONResponse(body, status_code=503)


async def _refuse(request: Request) -> Response:
    return error_response(ErrorCode.UNAVAILABLE, NOT_YET_SUPPORTED)


async def _refuse_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close(CloseCode.GOING_AWAY, NOT_YET_SUPPORTED)
