"""``giftwire serve``, ``giftwire demo`` and ``giftwire token``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import sys

import orjson
import uvicorn

from server.domain.accounts import Role
from server.domain.catalog import load_catalog
from server.ledger.connection import ledger_redis_url, make_client, wait_for_redis
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.record.commands import archiver_process
from server.record.connection import record_database_url
from server.settings import Settings, env_name
from server.web.auth import issue_token

DEMO_STREAM = "demo"
DEMO_CREATOR = "demo_creator"
DEMO_VIEWERS = ("alice", "bob", "carol")
DEMO_COINS = 50_000
DEMO_TOKEN_TTL_S = 7 * 86_400
SECRETS_FILE = "demo-secrets.json"


def _demo_secrets(settings: Settings) -> Settings:
    """Fill missing secrets from ``data_dir/demo-secrets.json``, creating it once."""
    path = settings.data_dir / SECRETS_FILE
    if path.exists():
        stored = orjson.loads(path.read_bytes())
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        stored = {
            "jwt_secret": secrets.token_urlsafe(32),
            "webhook_secret": secrets.token_urlsafe(32),
        }
        path.write_bytes(orjson.dumps(stored, option=orjson.OPT_INDENT_2))
        path.chmod(0o600)
    return dataclasses.replace(
        settings,
        jwt_secret=settings.jwt_secret or stored["jwt_secret"],
        webhook_secret=settings.webhook_secret or stored["webhook_secret"],
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_uvicorn(settings: Settings, url: str, host: str, port: int, workers: int) -> int:
    # uvicorn re-raises the signal that stopped it once it has shut down. With the default
    # SIGTERM disposition that would kill this process on the spot and orphan the embedded
    # redis-server; raising SystemExit instead unwinds through ``ledger_redis_url``.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.environ[env_name("redis_url")] = url
    if settings.database_url:
        os.environ[env_name("database_url")] = settings.database_url
    os.environ[env_name("jwt_secret")] = settings.jwt_secret
    os.environ[env_name("webhook_secret")] = settings.webhook_secret
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
        ws="server.web.uvicorn_ws:BoundedWebSocketProtocol",
        ws_max_size=settings.limits.frame_bytes_max,
        ws_per_message_deflate=False,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.jwt_secret:
        print(
            f"{env_name('jwt_secret')} is not set: set it to a random string of 32+ characters "
            "(or use `giftwire demo`, which makes one).",
            file=sys.stderr,
        )
        return 2
    with (
        ledger_redis_url(settings.redis_url, settings.data_dir) as url,
        record_database_url(settings.database_url, settings.redis_url, settings.data_dir) as db,
    ):
        if not settings.redis_url:
            print(
                f"embedded Redis at {url} (data in {settings.data_dir / 'redis'})", file=sys.stderr
            )
        elif not wait_for_redis(url, wait_s=args.wait_redis_s, report=_say):
            return 3
        _say_embedded_record(settings, db)
        settings = dataclasses.replace(settings, database_url=db)
        with _archiving(settings, url):
            return _run_uvicorn(settings, url, args.host, args.port, args.workers)


def _archiving(settings: Settings, redis_url: str) -> contextlib.AbstractContextManager[None]:
    """The archiver next to the server, when there is a record to archive into."""
    if settings.database_url is None:
        return contextlib.nullcontext()
    return archiver_process(settings, redis_url, settings.database_url)


def _say_embedded_record(settings: Settings, database_url: str | None) -> None:
    if database_url and not settings.database_url:
        where = settings.data_dir / "postgres"
        print(f"embedded PostgreSQL at {database_url} (data in {where})", file=sys.stderr)


def _say(message: str) -> None:
    print(f"giftwire: {message}", file=sys.stderr, flush=True)


async def seed_demo(settings: Settings, url: str) -> str:
    """Idempotent: a demo creator with a live stream and three viewers with coins.

    Returns the live stream's id, always ``demo``: a demo stream ended earlier is started
    again (its owner may reopen it, ``docs/ledger.md``).
    """
    redis = make_client(url, timeout_s=5)
    try:
        ledger = Ledger(redis, keys=Keys(settings.key_prefix), limits=settings.limits)
        await ledger.prepare(load_catalog(settings.catalog_path))
        for viewer in DEMO_VIEWERS:
            await ledger.top_up(payment_id=f"demo-{viewer}", user_id=viewer, coins=DEMO_COINS)
        change = await ledger.start_stream(
            stream_id=DEMO_STREAM,
            creator_id=DEMO_CREATOR,
            title="giftwire demo stream",
            creator_name="Demo Creator",
        )
        return change.stream_id
    finally:
        await redis.aclose()


def _banner(settings: Settings, host: str, port: int, stream: str) -> str:
    base = f"http://{host}:{port}"
    secret = settings.jwt_secret
    creator = issue_token(
        secret, DEMO_CREATOR, Role.CREATOR, name="Demo Creator", ttl_s=DEMO_TOKEN_TTL_S
    )
    lines = [
        "",
        "giftwire demo is starting",
        f"  stream '{stream}' is live; {', '.join(DEMO_VIEWERS)} have {DEMO_COINS:,} coins each",
        "",
        "Open in a browser:",
    ]
    for viewer in DEMO_VIEWERS:
        token = issue_token(
            secret, viewer, Role.VIEWER, name=viewer.title(), ttl_s=DEMO_TOKEN_TTL_S
        )
        lines.append(f"  viewer {viewer:<6} {base}/demo/viewer.html?stream={stream}#token={token}")
    lines += [
        f"  creator       {base}/demo/creator.html?stream={stream}#token={creator}",
        f"  OBS overlay   {base}/demo/overlay.html?stream={stream}#token={creator}",
        "",
        f"WebSocket: ws://{host}:{port}/ws/streams/{stream} (subprotocol bearer.<token>)",
        "More tokens: giftwire token --user NAME --role viewer",
        f"  (secrets in {settings.data_dir / SECRETS_FILE})",
        "",
    ]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    settings = _demo_secrets(settings)
    with (
        ledger_redis_url(settings.redis_url, settings.data_dir) as url,
        record_database_url(settings.database_url, settings.redis_url, settings.data_dir) as db,
    ):
        _say_embedded_record(settings, db)
        settings = dataclasses.replace(settings, database_url=db)
        stream = asyncio.run(seed_demo(settings, url))
        print(_banner(settings, args.host, args.port, stream), file=sys.stderr)
        with _archiving(settings, url):
            return _run_uvicorn(settings, url, args.host, args.port, 1)


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.jwt_secret and (settings.data_dir / SECRETS_FILE).exists():
        settings = _demo_secrets(settings)
    if not settings.jwt_secret:
        print(f"set {env_name('jwt_secret')} first (or run `giftwire demo` once)", file=sys.stderr)
        return 2
    print(
        issue_token(
            settings.jwt_secret, args.user, Role(args.role), name=args.name, ttl_s=args.ttl_s
        )
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the server (uvicorn)")
    demo = sub.add_parser("demo", help="run the server with demo data and an embedded Redis")
    for parser in (serve, demo):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.add_argument(
        "--wait-redis-s",
        type=float,
        default=60.0,
        help="how long to wait for GIFTWIRE_REDIS_URL to answer before giving up (default 60)",
    )
    serve.set_defaults(func=cmd_serve)
    demo.set_defaults(func=cmd_demo)
    token = sub.add_parser("token", help="mint an access token for development")
    token.add_argument("--user", required=True)
    token.add_argument("--role", choices=[r.value for r in Role], default="viewer")
    token.add_argument("--name", default=None, help="display name (default: the user id)")
    token.add_argument("--ttl-s", type=int, default=3600)
    token.set_defaults(func=cmd_token)
