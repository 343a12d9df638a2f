"""The Starlette application and its lifespan: the one place where the parts are wired."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from server.broker.redis_pubsub import RedisPubSubBroker
from server.domain.errors import GiftwireError, UnavailableError
from server.ledger.catalog_schedule import CatalogSchedule
from server.ledger.ledger import Ledger
from server.ledger.watch import REDIS_FAILURES, LedgerWatch
from server.realtime.hub import Hub
from server.record.service import RecordService
from server.settings import Settings, load_settings
from server.web import log_redaction
from server.web.battle_api import BATTLE_ROUTES
from server.web.battle_watch import BattleWatch
from server.web.catalog_api import CATALOG_ROUTES
from server.web.cluster_app import create_cluster_app
from server.web.edge import DirectWebSocket
from server.web.goals_api import ROUTES as GOAL_ROUTES
from server.web.guests_api import GUEST_ROUTES
from server.web.home import home_json, home_page
from server.web.http_api import ROUTES
from server.web.payouts_api import PAYOUT_ROUTES
from server.web.preflight import make_ledger, startup_problems
from server.web.record_api import RECORD_ROUTES
from server.web.services import Services
from server.web.spending_api import SPENDING_ROUTES
from server.web.ws import gift_socket

log = logging.getLogger("giftwire")

DEMO_PAGES_DIR = Path(__file__).resolve().parents[2] / "client_demo" / "static"


STARTUP_WAIT_S = 30.0


class UnfitRedisError(GiftwireError):
    """Redis' configuration or catalog forbids serving (``server/web/preflight.py``)."""


async def _prepare_when_reachable(ledger: Ledger, settings: Settings, redis_url: str) -> None:
    """Check Redis, load the scripts and the catalog, waiting up to ``STARTUP_WAIT_S``.

    ``giftwire serve`` already waits for Redis and runs the same checks before starting
    uvicorn (with a clear message and no traceback); this covers Redis going away or
    changing in between, or another ASGI server.
    """
    delay_s = 0.2
    where = redis_url.split("@")[-1]
    deadline = asyncio.get_running_loop().time() + STARTUP_WAIT_S
    while True:
        try:
            found = await startup_problems(ledger, settings)
            for line in found.warnings:
                log.warning("%s", line)
            for line in found.problems:
                log.error("%s", line)
            if found.problems:
                raise UnfitRedisError(found.problems[0])
            return
        except (UnavailableError, *REDIS_FAILURES) as e:
            if asyncio.get_running_loop().time() > deadline:
                raise UnavailableError(
                    f"Redis at {where} unreachable for {STARTUP_WAIT_S:.0f} s"
                ) from e
            log.warning("cannot reach Redis at %s (%s); retrying in %.1f s", where, e, delay_s)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, 5.0)


def create_app(settings: Settings) -> DirectWebSocket:
    if not settings.redis_url:
        raise ValueError("create_app needs settings.redis_url (the CLI starts the embedded Redis)")
    if not settings.jwt_secret:
        raise ValueError("GIFTWIRE_JWT_SECRET is required")
    if settings.redis_cluster:
        return create_cluster_app(settings)
    redis_url = settings.redis_url

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ledger = make_ledger(settings, redis_url)
        redis = ledger.redis
        await _prepare_when_reachable(ledger, settings, redis_url)
        catalog = await ledger.current_catalog()
        watch = LedgerWatch(
            ledger,
            durability=settings.durability_mode,
            replicas=settings.durability_replicas,
            interval_s=settings.redis_check_interval_s,
        )
        await watch.prime()
        broker = RedisPubSubBroker(
            ledger,
            # Presence outlives a few missed stats ticks, not a dead process.
            presence_ttl_s=settings.stats_interval_s * 3,
            timeout_s=settings.limits.redis_timeout_s,
        )
        hub = Hub(
            broker,
            catalog,
            settings.limits,
            batch_ms=settings.batch_ms,
            hot_events_per_s=settings.hot_room_events_per_s,
            stats_interval_s=settings.stats_interval_s,
        )
        await hub.start()
        battle_watch = BattleWatch(hub, ledger.battles)
        battle_watch.start()
        record = None
        if settings.database_url:
            # Reads only: `giftwire serve` runs the archiver in a process of its own.
            record = RecordService(settings.database_url, redis_url, ledger.keys, archive=False)
            record.start()
        else:
            log.warning("no durable record: set GIFTWIRE_DATABASE_URL to archive the ledger")
        services = Services(settings, catalog, redis, ledger, hub, watch, record)
        watch.on_catalog = services.follow_catalog
        watch.start()
        schedule = CatalogSchedule(
            ledger.catalogs,
            interval_s=settings.redis_check_interval_s,
            on_published=services.catalog_changed,
        )
        schedule.start()
        app.state.services = services
        log.info("giftwire ready (pid %s, redis %s)", os.getpid(), redis_url.split("@")[-1])
        try:
            yield
        finally:
            await schedule.stop()
            await watch.stop()
            await battle_watch.stop()
            await hub.stop()
            if record is not None:
                await record.stop()
            await redis.aclose()

    # The route stays listed (url_for, docs); DirectWebSocket serves it without the stack.
    routes: list[object] = [
        *ROUTES,
        *GOAL_ROUTES,
        *RECORD_ROUTES,
        *PAYOUT_ROUTES,
        *SPENDING_ROUTES,
        *CATALOG_ROUTES,
        *BATTLE_ROUTES,
        *GUEST_ROUTES,
        WebSocketRoute("/ws/streams/{stream_id}", gift_socket),
    ]
    if settings.demo_pages and DEMO_PAGES_DIR.is_dir():
        routes.append(Mount("/demo", StaticFiles(directory=DEMO_PAGES_DIR, html=True), name="demo"))
        routes.append(Route("/", home_page))
    else:
        routes.append(Route("/", home_json))
    app = Starlette(routes=routes, lifespan=lifespan)  # type: ignore[arg-type]
    return DirectWebSocket(app, "/ws/streams/", "stream_id", gift_socket)


def configure_logging(level: str) -> None:
    """Send giftwire's own log lines to stderr next to uvicorn's, at ``level``."""
    logger = logging.getLogger("giftwire")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)


def create_app_from_env() -> DirectWebSocket:
    """uvicorn factory: ``uvicorn --factory server.web.app:create_app_from_env``."""
    settings = load_settings()
    configure_logging(settings.log_level)
    log_redaction.install()  # after uvicorn's and our handlers exist
    return create_app(settings)
