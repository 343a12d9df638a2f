"""``giftwire serve``: the server under uvicorn, with the embedded Redis when none is set."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal

import uvicorn
from redis.exceptions import RedisError

from server.cli.archive import archiver_process
from server.cli.common import CommandError, HelpFormatter, say
from server.domain.errors import GiftwireError
from server.ledger.connection import ledger_redis_url, wait_for_redis
from server.record.connection import record_database_url
from server.settings import Settings, env_name
from server.web.preflight import cluster_preflight, preflight
from server.web.uvicorn_setup import uvicorn_options

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_uvicorn(settings: Settings, url: str, host: str, port: int, workers: int) -> int:
    """Serve until stopped. Returns once uvicorn has shut down, before the caller stops the
    embedded Redis: the viewers are gone by then, so no pub/sub connection is cut under them.
    """
    # uvicorn re-raises the signal that stopped it once it has shut down. With the default
    # SIGTERM disposition that would kill this process on the spot and orphan the embedded
    # redis-server; raising SystemExit instead unwinds through ``ledger_redis_url``.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # The uvicorn workers load their settings from the environment again: hand them what
    # this process decided (the Redis it started, the secrets, the absolute data folder).
    os.environ[env_name("redis_url")] = url
    if settings.database_url:
        os.environ[env_name("database_url")] = settings.database_url
    os.environ[env_name("jwt_secret")] = settings.jwt_secret
    os.environ[env_name("webhook_secret")] = settings.webhook_secret
    os.environ[env_name("data_dir")] = str(settings.data_dir)
    if workers > 1:
        metrics_dir = settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    uvicorn.run(
        "server.web.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        **uvicorn_options(settings),
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.jwt_secret:
        raise CommandError(
            f"{env_name('jwt_secret')} is not set: set it to a random string of 32+ characters "
            "(or use `giftwire demo`, which makes one)"
        )
    settings = with_durability(settings)
    appendfsync = settings.durability_mode.appendfsync
    with (
        ledger_redis_url(settings.redis_url, settings.data_dir, appendfsync=appendfsync) as url,
        record_database_url(settings.database_url, settings.redis_url, settings.data_dir) as db,
    ):
        if not settings.redis_url:
            say(f"embedded Redis at {url} (data in {settings.data_dir / 'redis'})")
        elif not wait_for_redis(url, wait_s=args.wait_redis_s, report=say):
            return 3
        if not fit_to_serve(settings, url):
            return 4
        settings = with_record(settings, db)
        with archiving(settings, url):
            return run_uvicorn(settings, url, args.host, args.port, args.workers)


def with_record(settings: Settings, database_url: str | None) -> Settings:
    """The settings with the record's URL that ``record_database_url`` decided, said aloud
    when it is the embedded PostgreSQL."""
    if database_url and not settings.database_url:
        say(f"embedded PostgreSQL at {database_url} (data in {settings.data_dir / 'postgres'})")
    return dataclasses.replace(settings, database_url=database_url)


def archiving(settings: Settings, redis_url: str) -> contextlib.AbstractContextManager[None]:
    """The archiver next to the server, when there is a record to archive into."""
    if settings.database_url is None:
        return contextlib.nullcontext()
    # In cluster mode the archiver reads every slot's log ({~N}:log) instead.
    return archiver_process(settings, redis_url, settings.database_url)


def with_durability(settings: Settings) -> Settings:
    """Fill in the embedded Redis' default durability, for this process and uvicorn's."""
    settings = settings.for_embedded_redis()
    if settings.durability:
        os.environ[env_name("durability")] = settings.durability
    return settings


def fit_to_serve(settings: Settings, url: str) -> bool:
    """Refuse an unfit Redis or a conflicting catalog: one line each, no traceback."""
    try:
        if settings.redis_cluster:
            # Each primary's policy and fsync; the catalog is settled by the app (it copies
            # the current version into every slot).
            found = asyncio.run(cluster_preflight(settings, url))
        else:
            found = asyncio.run(preflight(settings, url, embedded=not settings.redis_url))
    except (GiftwireError, RedisError, OSError) as e:
        say(f"refusing to start: cannot check Redis at {url.split('@')[-1]}: {e}")
        return False
    for line in found.notes:
        say(line)
    for line in found.warnings:
        say(f"warning: {line}")
    for line in found.problems:
        say(f"refusing to start: {line}")
    return not found.problems


def add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the server (uvicorn)",
        description="Run the server under uvicorn, and the archiver beside it when there is a "
        "durable record (GIFTWIRE_DATABASE_URL). With GIFTWIRE_REDIS_URL unset, a private "
        "redis-server with AOF, and with GIFTWIRE_DATABASE_URL unset too a private "
        "PostgreSQL, are started in the data folder and stopped afterwards.",
        formatter_class=HelpFormatter,
    )
    add_address(serve)
    serve.add_argument("--workers", type=int, default=1, help="server processes")
    serve.add_argument(
        "--wait-redis-s",
        type=float,
        default=60.0,
        help="how long to wait for GIFTWIRE_REDIS_URL to answer before giving up (s)",
    )
    serve.set_defaults(func=cmd_serve)
