"""``giftwire demo``: the server with demo data, and a banner with the pages to open.

The demo's data persists between runs in the data folder (the embedded Redis keeps an AOF
there); ``giftwire demo --reset`` wipes it first.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from dataclasses import dataclass

from server.cli.common import CommandError, HelpFormatter, refuse_cluster, say
from server.cli.demo_secrets import secrets_path, with_demo_secrets
from server.cli.serve import (
    add_address,
    archiving,
    fit_to_serve,
    run_uvicorn,
    with_durability,
    with_record,
)
from server.domain.accounts import Role
from server.domain.catalog import load_catalog
from server.ledger.connection import ledger_redis_url, make_client, running_embedded
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.record.connection import record_database_url, running_embedded_postgres
from server.settings import Settings, env_name
from server.web.auth import issue_token

DEMO_STREAM = "demo"
DEMO_CREATOR = "demo_creator"
DEMO_CREATOR_NAME = "Demo Creator"
DEMO_VIEWERS = ("alice", "bob", "carol")
DEMO_COINS = 50_000
"""Each demo viewer's top-up, made once (idempotent by payment id): spent coins stay spent."""
DEMO_TOKEN_TTL_S = 7 * 86_400


@dataclass(frozen=True, slots=True)
class DemoState:
    """What the ledger holds for the demo right now, for the banner."""

    stream_id: str
    coins: dict[str, int]
    creator_diamonds: int


async def seed_demo(settings: Settings, url: str) -> DemoState:
    """Idempotent: a demo creator with a live stream and three viewers with coins.

    The live stream is always ``demo``: a demo stream ended earlier is started again (its
    owner may reopen it, ``docs/ledger.md``). Balances are read back from the ledger.
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
            creator_name=DEMO_CREATOR_NAME,
        )
        stream_id = change.stream_id
        coins = {viewer: (await ledger.balance(viewer)).coins for viewer in DEMO_VIEWERS}
        diamonds = (await ledger.balance(DEMO_CREATOR)).diamonds
        return DemoState(stream_id, coins, diamonds)
    finally:
        await redis.aclose()


def overlay_token(secret: str, stream_id: str, ttl_s: int) -> str:
    """A token that may only watch ``stream_id``: safe in an OBS browser-source URL."""
    return issue_token(
        secret, f"overlay:{stream_id}", Role.OVERLAY, name="OBS overlay", ttl_s=ttl_s,
        stream=stream_id,
    )  # fmt: skip


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def banner(settings: Settings, host: str, port: int, state: DemoState) -> str:
    base = f"http://{host}:{port}"
    secret, stream = settings.jwt_secret, state.stream_id
    creator = issue_token(
        secret, DEMO_CREATOR, Role.CREATOR, name=DEMO_CREATOR_NAME, ttl_s=DEMO_TOKEN_TTL_S
    )
    overlay = overlay_token(secret, stream, DEMO_TOKEN_TTL_S)
    admin = issue_token(secret, "demo_admin", Role.ADMIN, name="Admin", ttl_s=DEMO_TOKEN_TTL_S)
    coins = ", ".join(f"{viewer} {amount:,}" for viewer, amount in state.coins.items())
    lines = [
        "",
        "giftwire demo is starting",
        f"  stream '{stream}' by {DEMO_CREATOR} is live; {DEMO_CREATOR} holds "
        f"{_plural(state.creator_diamonds, 'diamond')}",
        f"  coins: {coins}",
        f"  data in {settings.data_dir} (start over: giftwire demo --reset)",
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
        f"  OBS overlay   {base}/demo/overlay.html?stream={stream}#token={overlay}",
        "  (the overlay's token may only watch this stream)",
        f"  admin         {base}/demo/admin.html#token={admin}",
        "  (gift catalog and minors' caps: keep this link private)",
        "",
        f"WebSocket: ws://{host}:{port}/ws/streams/{stream} (subprotocol bearer.<token>)",
        f"More tokens: giftwire token --user NAME   (secrets in {secrets_path(settings)})",
        "",
    ]
    return "\n".join(lines)


def reset(settings: Settings) -> None:
    """Wipe the embedded Redis's data (the demo's ledger) and the embedded record that goes
    with it; keep the secrets."""
    if settings.redis_url:
        raise CommandError(
            f"--reset wipes only the embedded Redis, and {env_name('redis_url')} is set: "
            "unset it, or delete the demo's keys in that Redis yourself"
        )
    redis_dir = settings.data_dir / "redis"
    running = running_embedded(redis_dir)
    if running:
        raise CommandError(f"a demo is running on this data folder ({running}): stop it first")
    # The embedded record goes too: it would otherwise hold transfers the new Redis never
    # had, and reconcile would (rightly) say so.
    wiped = [redis_dir]
    postgres_dir = settings.data_dir / "postgres"
    if not settings.database_url:
        if running_embedded_postgres(postgres_dir):
            raise CommandError(f"a giftwire is using {postgres_dir}: stop it first")
        wiped.append(postgres_dir)
    for folder in wiped:
        shutil.rmtree(folder, ignore_errors=True)
    say(f"demo data wiped ({', '.join(map(str, wiped))})")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    refuse_cluster(settings, "demo")
    if args.reset:
        reset(settings)
    settings = with_durability(with_demo_secrets(settings, create=True))
    appendfsync = settings.durability_mode.appendfsync
    with (
        ledger_redis_url(settings.redis_url, settings.data_dir, appendfsync=appendfsync) as url,
        record_database_url(settings.database_url, settings.redis_url, settings.data_dir) as db,
    ):
        if not fit_to_serve(settings, url):
            return 4
        settings = with_record(settings, db)
        state = asyncio.run(seed_demo(settings, url))
        print(banner(settings, args.host, args.port, state), file=sys.stderr, flush=True)
        with archiving(settings, url):
            return run_uvicorn(settings, url, args.host, args.port, 1)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the server with demo data and an embedded Redis",
        description="Seed a live stream 'demo' and three viewers with coins (once: the data "
        "persists in the data folder), print the pages to open, then serve.",
        formatter_class=HelpFormatter,
    )
    add_address(demo)
    demo.add_argument(
        "--reset", action="store_true", help="wipe the demo's data first (the secrets stay)"
    )
    demo.set_defaults(func=cmd_demo)
