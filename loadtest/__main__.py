"""``python -m loadtest run [options]``: run the asyncio load generator, print its JSON.

Secrets are found the way ``giftwire token`` finds them: the server's own environment
variables (``GIFTWIRE_JWT_SECRET``, ``GIFTWIRE_WEBHOOK_SECRET``, ``GIFTWIRE_REDIS_URL``,
``GIFTWIRE_KEY_PREFIX``), else the demo's ``demo-secrets.json`` in the data folder (and the
running demo's embedded Redis, to reconcile the books after the run).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from loadtest.generator import RunConfig, run
from server.cli.common import CommandError
from server.cli.demo_secrets import ClientSecrets, client_secrets
from server.settings import SettingsError


def build_parser(found: ClientSecrets) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the generator against a running server")
    d = RunConfig()
    p.add_argument("--url", default=d.url, help="server base URL (default %(default)s)")
    p.add_argument("--jwt-secret", default=found.jwt_secret, help=f"default: from {found.source}")
    p.add_argument(
        "--webhook-secret", default=found.webhook_secret, help=f"default: from {found.source}"
    )
    p.add_argument(
        "--redis-url",
        default=found.redis_url,
        help="reconcile the books after the run (default: GIFTWIRE_REDIS_URL, else the "
        "running demo's Redis; skipped when neither)",
    )
    p.add_argument(
        "--database-url",
        default=found.database_url,
        help="the server's durable record: reconcile across Redis and it (default: "
        "GIFTWIRE_DATABASE_URL, else the running demo's PostgreSQL)",
    )
    p.add_argument("--key-prefix", default=found.key_prefix)
    p.add_argument("--hot-rooms", type=int, default=d.hot_rooms)
    p.add_argument("--cold-rooms", type=int, default=d.cold_rooms)
    p.add_argument("--viewers", type=int, default=d.viewers)
    p.add_argument("--hot-viewer-share", type=float, default=d.hot_viewer_share)
    p.add_argument("--gifters", type=int, default=d.gifters)
    p.add_argument("--hot-gifter-share", type=float, default=d.hot_gifter_share)
    p.add_argument("--gift", default=d.gift, help="gift id from the catalog")
    p.add_argument(
        "--gift-rate", type=float, default=d.gift_rate_per_s, help="per gifter per second; 0: max"
    )
    p.add_argument("--window", type=int, default=d.window, help="unanswered gifts per gifter")
    p.add_argument("--gifts", type=int, default=d.gifts_max, help="stop after this many gifts")
    p.add_argument("--duration", type=float, default=d.duration_s, help="stop sending after (s)")
    p.add_argument("--drain", type=float, default=d.drain_s, help="wait for answers (s)")
    p.add_argument("--probes", type=int, default=d.probe_viewers_per_room)
    p.add_argument("--per-source-ip", type=int, default=d.connections_per_source_ip)
    p.add_argument(
        "--goals-per-room", type=int, default=d.goals_per_room, help="goals set on each room"
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        found = client_secrets()
    except (SettingsError, CommandError) as e:
        print(e, file=sys.stderr)
        return 2
    args = build_parser(found).parse_args(argv)
    config = RunConfig(
        url=args.url,
        jwt_secret=args.jwt_secret,
        webhook_secret=args.webhook_secret,
        redis_url=args.redis_url,
        database_url=args.database_url,
        key_prefix=args.key_prefix,
        hot_rooms=args.hot_rooms,
        cold_rooms=args.cold_rooms,
        viewers=args.viewers,
        hot_viewer_share=args.hot_viewer_share,
        gifters=args.gifters,
        hot_gifter_share=args.hot_gifter_share,
        gift=args.gift,
        gift_rate_per_s=args.gift_rate,
        window=args.window,
        gifts_max=args.gifts,
        duration_s=args.duration,
        drain_s=args.drain,
        probe_viewers_per_room=args.probes,
        connections_per_source_ip=args.per_source_ip,
        progress=not args.quiet,
        goals_per_room=args.goals_per_room,
    )
    if not config.jwt_secret or not config.webhook_secret:
        print(
            "no secrets: start `./dev demo` once (it keeps them in its data folder), or set "
            "GIFTWIRE_JWT_SECRET and GIFTWIRE_WEBHOOK_SECRET (or --jwt-secret, --webhook-secret)",
            file=sys.stderr,
        )
        return 2
    result = asyncio.run(run(config))
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    reconcile = result.get("reconcile")
    return 1 if reconcile is not None and not reconcile["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
