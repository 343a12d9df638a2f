"""Cluster mode (``GIFTWIRE_REDIS_CLUSTER=true``): gifts in two legs, sharded fan-out.

The single-node scripts cannot run on a Redis Cluster (send_gift alone spans six slots).
Here the server reads the cluster's slot map, loads the scripts on every primary
(``ClusterScriptRunner``), and wires:

* the ledger: ``ClusterLedger`` (``docs/ledger.md``, "Redis Cluster"): a gift is debited in
  the sender's slot and credited at once in the creator's, batched per stream; the
  catalog's current version is copied into every slot at start;
* the relay (``cluster_relay.py``), a task of this process: it settles what a crash or a
  timeout left in the outboxes; its pending transfers and lag are on ``/metrics``;
* viewers: the same endpoint, hub and protocol as single-node mode, fed by sharded pub/sub
  (``ShardedPubSubBroker``: ``SSUBSCRIBE`` on the primary of each room's slot, or on one
  of its replicas with ``GIFTWIRE_CLUSTER_SUBSCRIBE=replica``);
* the HTTP API the ledger covers: catalog and its admin API (edits and the schedule,
  ``cluster_catalog.py``), wallet (held and withdrawable diamonds), streams,
  leaderboard (names and levels), stream goals, battles (``ClusterBattles``, and their
  watch), guests on stage (``cluster_guests.py``), gift history, the payment webhook
  (refunds claw back held gifts across slots), cash-outs, and the payout webhook and admin
  call;
* the durable record's routes (wallet history, statements), which read PostgreSQL and do
  not care about the Redis mode: a pool for reads when ``GIFTWIRE_DATABASE_URL`` is set.
  ``giftwire serve`` runs the archiver, which follows every slot's log, in a process of
  its own (``server/cli/archive.py``), as in single-node mode.
Any other route is refused with ``unavailable`` and a reason.

``GET /readyz``: 200 ``{"redis": true, "cluster": true, "ready": true, "gifts": true}`` once
the ledger is prepared and the broker reads the cluster, else 503 (``gifts`` false while
the ledger could not be prepared: it is retried in the background).

Single-node mode never comes here: ``create_app`` branches before wiring anything.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from server.broker.shard_nodes import SubscribeRole
from server.domain.catalog import Catalog, load_catalog
from server.domain.errors import ErrorCode, UnavailableError
from server.ledger.catalog_schedule import CatalogSchedule
from server.ledger.cluster_catalog import CatalogFollower
from server.ledger.cluster_config import ClusterWatch, UnfitClusterError, check_cluster
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_relay import Relay, RelayStats
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.keys import Keys
from server.ledger.redis_config import Durability
from server.protocol import events
from server.realtime.hub import Hub
from server.record.service import RecordService
from server.settings import Settings
from server.web import http_api
from server.web.battle_api import BATTLE_ROUTES
from server.web.catalog_api import CATALOG_ROUTES
from server.web.cluster_battle_watch import ClusterBattleWatch
from server.web.edge import DirectWebSocket
from server.web.errors import error_response
from server.web.goals_api import ROUTES as GOAL_ROUTES
from server.web.guests_api import GUEST_ROUTES
from server.web.metrics import RELAY_LAG, RELAY_PENDING
from server.web.payouts_api import PAYOUT_ROUTES
from server.web.record_api import RECORD_ROUTES
from server.web.spending_api import SPENDING_ROUTES
from server.web.ws import gift_socket

log = logging.getLogger("giftwire")

NOT_YET_SUPPORTED = "not yet supported on a Redis Cluster"
"""Sent with every refusal of a route cluster mode does not serve yet."""
NOT_PREPARED = "the cluster ledger is not prepared yet (catalog copy pending)"
_DOWN = (UnavailableError, redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
PREPARE_RETRY_S = 1.0
_SERVED = {
    "/api/catalog",
    "/api/me/wallet",
    "/api/streams",
    "/api/streams/{stream_id}",
    "/api/streams/{stream_id}/end",
    "/api/streams/{stream_id}/leaderboard",
    "/api/streams/{stream_id}/gifts",
    "/api/streams/{stream_id}/goals",
    "/api/streams/{stream_id}/goals/{goal_id}",
    "/api/streams/{stream_id}/guests",
    "/api/streams/{stream_id}/guests/join",
    "/api/streams/{stream_id}/guests/leave",
    "/api/webhooks/payments",
    "/api/cashouts",
    "/api/webhooks/payouts",
    "/api/admin/payouts",
    "/api/me/transactions",
    "/api/creators/me/statements",
    "/metrics",
    # Battles: each side in its own stream's slot (ClusterBattles).
    "/api/battles",
    "/api/battles/{battle_id}",
    "/api/battles/{battle_id}/accept",
    "/api/battles/{battle_id}/decline",
    "/api/streams/{stream_id}/battle",
    "/api/streams/{stream_id}/battle/end",
}
"""The single-node HTTP routes cluster mode serves, with ``ClusterLedger`` behind them."""


@dataclass(slots=True)
class ClusterServices:
    """``services.SocketServices`` of cluster mode, and what the HTTP routes above read."""

    settings: Settings
    catalog: Catalog
    runner: ClusterScriptRunner
    hub: Hub
    ledger: ClusterLedger
    watch: ClusterWatch
    prepared: bool = False
    record: RecordService | None = None
    """The durable record's pool for reads (None without GIFTWIRE_DATABASE_URL)."""
    connections_by_user: Counter[str] = field(default_factory=Counter)
    connections_by_ip: Counter[str] = field(default_factory=Counter)

    follower: CatalogFollower | None = None

    def follow_catalog(self, catalog: Catalog) -> None:
        """A catalog version is current in the cluster: serve and display it; a new one is
        told to every connected client (``catalog``), as in single-node mode."""
        previous = self.catalog
        self.catalog = catalog
        if catalog.version == previous.version:
            self.hub.catalog = catalog
            return
        # Events of a retired gift (in flight, resumed, paged) keep their display fields.
        self.hub.catalog = Catalog(catalog.version, {**previous.gifts, **catalog.gifts})
        self.hub.announce(events.catalog(catalog))

    async def catalog_changed(self, *_: object) -> None:
        """A new version may be current (this process's edit, the schedule, the watch's
        tick): once it is copied into every slot, serve and announce it."""
        if self.follower is None or not self.prepared:
            return
        try:
            catalog = await self.follower.follow()
        except _DOWN as e:
            # Written, not yet copied everywhere: served once the copy is done, which the
            # watch's next tick (of this or any process) retries; an admin's edit still
            # answers with the version it wrote.
            log.warning("new catalog version not copied into every slot yet: %s", e)
            return
        if catalog is not None:
            self.follow_catalog(catalog)


def _relay_metrics(stats: RelayStats) -> None:
    RELAY_PENDING.set(stats.pending)
    RELAY_LAG.set(stats.lag_ms / 1000)


async def _prepare(services: ClusterServices, catalog: Catalog) -> None:
    """Seed the catalog (if the cluster has none) and copy it into every slot; retried
    until it succeeds, since a debit in a slot without a copy is refused."""
    while True:
        try:
            held = await services.ledger.prepare(catalog)
        except _DOWN as e:
            log.warning("cluster ledger not prepared yet (%s); retrying", e)
            await asyncio.sleep(PREPARE_RETRY_S)
            continue
        services.follow_catalog(held)
        services.follower = CatalogFollower(services.ledger, copied_version=held.version)
        services.prepared = True
        log.info("cluster ledger ready: catalog version %d in every slot", held.version)
        return


async def _refuse_unfit(watch: ClusterWatch) -> None:
    """The preflight of ``giftwire serve`` again, for any other way of starting the app:
    a primary that evicts keys or (under ``always``) does not fsync refuses the start."""
    found = await check_cluster(watch.slots, watch.durability, watch.replicas)
    for line in found.warnings + found.unready:
        log.warning("%s", line)
    for line in found.problems:
        log.error("%s", line)
    if found.problems:
        raise UnfitClusterError(found.problems[0])
    watch.problems = found.unready


def create_cluster_app(settings: Settings) -> DirectWebSocket:
    if not settings.redis_url:
        raise ValueError("cluster mode needs settings.redis_url (a node of the cluster)")
    node_url = settings.redis_url

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = settings.limits
        replicated = settings.durability_mode is Durability.ALWAYS_REPLICA
        runner = ClusterScriptRunner(
            [node_url],
            timeout_s=limits.redis_timeout_s,
            calls_per_pipeline_max=limits.pipeline_calls_max,
            pipelines_in_flight_max=limits.pipelines_in_flight_max,
            wait_replicas=settings.durability_replicas if replicated else 0,
            wait_timeout_ms=settings.durability_wait_ms,
            fence_keys=ClusterKeys(settings.key_prefix),
        )
        watch = ClusterWatch(
            runner.slots,
            durability=settings.durability_mode,
            replicas=settings.durability_replicas,
            interval_s=settings.redis_check_interval_s,
        )
        try:
            await runner.prepare()
            await _refuse_unfit(watch)
        except _DOWN as e:
            log.warning("cluster at %s not reachable yet: %s", node_url.split("@")[-1], e)
        ledger = ClusterLedger(
            runner,
            keys=ClusterKeys(settings.key_prefix),
            limits=limits,
            economics=settings.economics,
        )
        # The broker reads through the ledger: one owner cache, one routing of reads.
        rooms = ClusterRooms(ledger, timeout_s=limits.redis_timeout_s)
        broker = ShardedPubSubBroker(
            rooms,
            # Presence outlives a few missed stats ticks, not a dead process.
            presence_ttl_s=settings.stats_interval_s * 3,
            timeout_s=limits.redis_timeout_s,
            role=SubscribeRole(settings.cluster_subscribe),
        )
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
        record = None
        if settings.database_url:
            # Reads only: `giftwire serve` runs the archiver in a process of its own.
            record = RecordService(
                settings.database_url, node_url, Keys(settings.key_prefix), archive=False
            )
            record.start()
        services = ClusterServices(settings, catalog, runner, hub, ledger, watch, record=record)
        app.state.services = services
        watch.on_tick = services.catalog_changed
        watch.start()
        schedule = CatalogSchedule(
            ledger.catalogs,
            interval_s=settings.redis_check_interval_s,
            on_published=services.catalog_changed,
        )
        schedule.start()
        preparing = asyncio.get_running_loop().create_task(_prepare(services, catalog))
        relay = Relay(ledger, on_round=_relay_metrics)
        relay.start()
        battle_watch = ClusterBattleWatch(hub, ledger.battles)
        battle_watch.start()
        try:
            yield
        finally:
            preparing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await preparing
            await battle_watch.stop()
            await relay.stop()
            await schedule.stop()
            await watch.stop()
            await hub.stop()
            if record is not None:
                await record.stop()
            await runner.aclose()

    served = [
        route
        for route in [
            *http_api.ROUTES,
            *GOAL_ROUTES,
            *BATTLE_ROUTES,
            *RECORD_ROUTES,
            *PAYOUT_ROUTES,
            *GUEST_ROUTES,
        ]
        if getattr(route, "path", "") in _SERVED
    ]
    routes = [
        Route("/healthz", _healthz),
        Route("/readyz", _readyz),
        *served,
        # One key each (the user's account): spending_limits.lua runs in that slot.
        *SPENDING_ROUTES,
        # The managed catalog: the single-node store in the {catalog} slot, each new
        # version copied into every slot before it is served (cluster_catalog.py).
        *CATALOG_ROUTES,
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
    problems = services.watch.problems
    ready = reached and services.hub.connected and services.prepared and not problems
    body: dict[str, object] = {
        "redis": reached,
        "cluster": True,
        "ready": ready,
        "gifts": services.prepared,
    }
    if not services.prepared:
        body["reason"] = NOT_PREPARED
    if problems:
        body["problems"] = problems
    return JSONResponse(body, status_code=200 if ready else 503)


async def _refuse(request: Request) -> Response:
    return error_response(ErrorCode.UNAVAILABLE, NOT_YET_SUPPORTED)
