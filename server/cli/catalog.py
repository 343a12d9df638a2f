"""``giftwire catalog show`` and ``giftwire catalog push [FILE]``: the operator's way to
change the one catalog every process serves (``server/ledger/catalogs.py``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from server.cli.common import CommandError, HelpFormatter
from server.domain.catalog import Catalog, CatalogError, load_catalog
from server.domain.errors import LedgerRefusal, UnavailableError
from server.ledger.catalogs import Published
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.connection import ledger_redis_url, make_client
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.settings import Settings


async def _show(settings: Settings, url: str, as_json: bool) -> int:
    redis = make_client(url, timeout_s=10)
    try:
        catalog = await Ledger(redis, keys=Keys(settings.key_prefix)).catalogs.current()
    finally:
        await redis.aclose()
    return _print(catalog, as_json)


def _print(catalog: Catalog | None, as_json: bool) -> int:
    if catalog is None:
        print("Redis holds no gift catalog yet (the first server seeds it)", file=sys.stderr)
        return 1
    if as_json:
        doc = {"version": catalog.version, "gifts": [g.to_json() for g in catalog]}
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return 0
    print(f"gift catalog version {catalog.version}")
    for gift in catalog:
        print(f"  {gift.gift_id:<20}{gift.price_coins:>10,} coins  {gift.name}")
    return 0


async def _push(settings: Settings, url: str, path: Path | None, expect: int) -> int:
    catalog = load_catalog(path)
    redis = make_client(url, timeout_s=10)
    try:
        ledger = Ledger(redis, keys=Keys(settings.key_prefix))
        await ledger.runner.prepare()
        before = await ledger.catalogs.version()
        published = await ledger.catalogs.push(catalog, expected_version=expect)
    finally:
        await redis.aclose()
    _said(published, path, before)
    return 0


def _said(published: Published, path: Path | None, before: int | None) -> None:
    source = path or "the built-in catalog"
    if published.written:
        print(f"gift catalog version {published.version} is current ({source}; was {before})")
    else:
        print(f"gift catalog version {published.version} already holds {source}: unchanged")


async def _on_cluster(settings: Settings, path: Path | None, push: bool, args: Any) -> int:
    """show / push on a Redis Cluster: the same store in the {catalog} slot; a pushed
    version is copied into every slot before the command returns (the servers would copy
    it at their next poll anyway, ``docs/operations.md``)."""
    if not settings.redis_url:
        raise CommandError("cluster mode needs GIFTWIRE_REDIS_URL (a node of the cluster)")
    runner = ClusterScriptRunner([settings.redis_url], timeout_s=10)
    ledger = ClusterLedger(runner, keys=ClusterKeys(settings.key_prefix))
    try:
        await runner.prepare()
        if not push:
            return _print(await ledger.catalogs.current(), args.json)
        before = await ledger.catalogs.version()
        published = await ledger.catalogs.push(
            load_catalog(path), expected_version=args.expect_version
        )
        slots = await ledger.copy_catalog(await ledger.current_catalog())
    finally:
        await ledger.aclose()
    _said(published, path, before)
    print(f"copied into {slots} slots")
    return 0


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if settings.redis_cluster:
            path = getattr(args, "file", None) or settings.catalog_path
            return asyncio.run(_on_cluster(settings, path, args.action == "push", args))
        with ledger_redis_url(settings.redis_url, settings.data_dir) as url:
            if args.action == "show":
                return asyncio.run(_show(settings, url, args.json))
            path = args.file or settings.catalog_path
            return asyncio.run(_push(settings, url, path, args.expect_version))
    except CatalogError as e:
        raise CommandError(f"invalid catalog: {e}") from e
    except LedgerRefusal as e:
        raise CommandError(f"refused: {e.code}: {e.message} {e.detail or ''}", 1) from e
    except (UnavailableError, OSError) as e:
        raise CommandError(f"cannot reach Redis: {e}", 3) from e


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "catalog",
        help="show the gift catalog in Redis, or push a new version",
        description="The gift catalog every server serves is the one in Redis, versioned. "
        "`show` prints the current version; `push` makes a file (default: "
        "GIFTWIRE_CATALOG_PATH, else the built-in catalog) the next version.",
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the current version and its gifts")
    show.add_argument("--json", action="store_true", help="one JSON object on stdout")
    push = actions.add_parser("push", help="make a file the next version")
    push.add_argument("file", nargs="?", type=Path, default=None, help="catalog JSON file")
    push.add_argument(
        "--expect-version",
        type=int,
        default=0,
        help="refuse unless this is the current version (compare-and-set; 0: any)",
    )
    parser.set_defaults(func=cmd_catalog)
