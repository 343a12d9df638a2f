"""Cluster mode (``GIFTWIRE_REDIS_CLUSTER=true``): viewers served, gifts not yet.

The single-node scripts cannot run on a Redis Cluster (send_gift alone spans six slots).
What is built serves *watching*: the server reads the cluster's slot map, loads the scripts
on every primary (``ClusterScriptRunner``), and serves ``/ws/streams/{id}`` with the same
endpoint, hub and protocol as single-node mode, fed by sharded pub/sub
(``ShardedPubSubBroker``: ``SSUBSCRIBE`` on the primary of each room's slot, one connection
per primary). A viewer gets the welcome, live gifts, stats, resume and repair from the
feed, across failovers and slot moves. Until the two-leg gift scripts are wired here, the
rest is refused honestly, with the documented ``unavailable`` code and a reason:

* ``GET /healthz``: 200 (the process is up);
* ``GET /readyz``: 200 ``{"redis": true, "cluster": true, "ready": true, "gifts": false,
  "reason"}`` while the broker can read the cluster, else 503;
* a ``send_gift`` on a socket: ``error`` ``unavailable``;
* every ``/api/...`` request: 503 ``unavailable`` with the reason.

Single-node mode never comes here: ``create_app`` branches before wiring anything.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from redis import exceptions as redis_errors
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from server.broker.cluster_rooms import ClusterRooms
from server.broker.redis_sharded import ShardedPubSubBroker
from server.domain.accounts import Balance
from server.domain.catalog import Catalog, load_catalog
from server.domain.errors import ErrorCode, UnavailableError
from server.domain.streams import Stream
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.receipts import GiftReceipt
from server.realtime.hub import Hub
from server.settings import Settings
from server.web.edge import DirectWebSocket
from server.web.errors import error_response
from server.web.ws import gift_socket

log = logging.getLogger("giftwire")

NOT_YET_SUPPORTED = (
    "gifts and the HTTP API on a Redis Cluster are not yet supported (they need the two legs)"
)
"""Sent with every refusal; short enough for a WebSocket close reason (123 bytes)."""
_DOWN = (UnavailableError, redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


class WatchOnlyLedger:
    """``services.SocketLedger`` for cluster mode until the gift legs are wired: the reads
    a viewer's socket needs, and an honest ``unavailable`` for a gift (nothing moves)."""

    def __init__(self, rooms: ClusterRooms) -> None:
        self.rooms = rooms

    async def stream(self, stream_id: str) -> Stream | None:
        return await self.rooms.stream(stream_id)

    async def balance(self, user_id: str) -> Balance:
        return await self.rooms.balance(user_id)

    async def send_gift(
        self,
        *,
        client_id: str,
        sender_id: str,
        sender_name: str,
        stream_id: str,
        creator_id: str,
        gift_id: str,
        count: int,
        catalog_version: int | None = None,
    ) -> GiftReceipt:
        raise UnavailableError(NOT_YET_SUPPORTED)


@dataclass(slots=True)
class ClusterServices:
    """``services.SocketServices`` of cluster mode."""

    settings: Settings
    catalog: Catalog
    runner: ClusterScriptRunner
    hub: Hub
    ledger: WatchOnlyLedger
    connections_by_user: Counter[str] = field(default_factory=Counter)
    connections_by_ip: Counter[str] = field(default_factory=Counter)


def create_cluster_app(settings: Settings) -> DirectWebSocket:
    if not settings.redis_url:
        raise ValueError("cluster mode needs settings.redis_url (a node of the cluster)")
    node_url = settings.redis_url

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = settings.limits
        runner = ClusterScriptRunner(
            [node_url],
            timeout_s=limits.redis_timeout_s,
            calls_per_pipeline_max=limits.pipeline_calls_max,
            pipelines_in_flight_max=limits.pipelines_in_flight_max,
        )
        try:
            await runner.prepare()
        except _DOWN as e:
            log.warning("cluster at %s not reachable yet: %s", node_url.split("@")[-1], e)
        rooms = ClusterRooms(
            runner, ClusterKeys(settings.key_prefix), timeout_s=limits.redis_timeout_s
        )
        broker = ShardedPubSubBroker(
            rooms,
            # Presence outlives a few missed stats ticks, not a dead process.
            presence_ttl_s=settings.stats_interval_s * 3,
            timeout_s=limits.redis_timeout_s,
        )
        # Display fields only (names, animations): prices live in the cluster's catalog.
        catalog = load_catalog(settings.catalog_path)
        hub = Hub(
            broker,
            catalog,
            limits,
            batch_ms=settings.batch_ms,
            hot_events_per_s=settings.hot_room_events_per_s,
            stats_interval_s=settings.stats_interval_s,
        )
        await hub.start()
        app.state.services = ClusterServices(settings, catalog, runner, hub, WatchOnlyLedger(rooms))
        log.warning("giftwire in cluster mode: %s", NOT_YET_SUPPORTED)
        try:
            yield
        finally:
            await hub.stop()
            await runner.aclose()

    routes = [
        Route("/healthz", _healthz),
        Route("/readyz", _readyz),
        Route("/api/{path:path}", _refuse, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        WebSocketRoute("/ws/streams/{stream_id}", gift_socket),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    # The same ASGI shape as single-node mode (create_app): upgrades skip the stack.
    return DirectWebSocket(app, "/ws/streams/", "stream_id", gift_socket)


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _readyz(request: Request) -> Response:
    services: ClusterServices = request.app.state.services
    try:
        reached = await services.runner.ensure_loaded()
    except _DOWN:
        reached = False
    ready = reached and services.hub.connected
    body = {
        "redis": reached,
        "cluster": True,
        "ready": ready,
        "gifts": False,
        "reason": NOT_YET_SUPPORTED,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


async def _refuse(request: Request) -> Response:
    return error_response(ErrorCode.UNAVAILABLE, NOT_YET_SUPPORTED)
