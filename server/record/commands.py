"""``giftwire archive``: the archiver on its own, for operators who run it apart."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import orjson

from server.ledger.connection import ledger_redis_url, make_client
from server.ledger.keys import Keys
from server.record.archiver import LEASE_TTL_MS, Archiver, ArchiverConfig
from server.record.connection import open_record, record_database_url
from server.record.service import ARCHIVER_REDIS_TIMEOUT_S
from server.settings import Settings, env_name


async def _archive(
    settings: Settings, redis_url: str, database_url: str, args: argparse.Namespace
) -> int:
    redis = make_client(redis_url, timeout_s=ARCHIVER_REDIS_TIMEOUT_S, pool_max=4)
    pool = await open_record(database_url)
    try:
        config = ArchiverConfig(lease_ttl_ms=args.lease_ttl_ms)
        archiver = Archiver(redis, pool, Keys(settings.key_prefix), config=config)
        if args.once:
            await archiver.drain()
            stats = archiver.stats
            print(orjson.dumps({name: getattr(stats, name) for name in stats.__slots__}).decode())
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await archiver.run(stop)
        return 0
    finally:
        await pool.close()
        await redis.aclose()


def cmd_archive(args: argparse.Namespace, settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s"
    )
    with (
        ledger_redis_url(settings.redis_url, settings.data_dir) as redis_url,
        record_database_url(settings.database_url, settings.redis_url, settings.data_dir) as url,
    ):
        if url is None:
            print(f"set {env_name('database_url')} to the record's PostgreSQL", file=sys.stderr)
            return 2
        return asyncio.run(_archive(settings, redis_url, url, args))


def add_record_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    archive = sub.add_parser(
        "archive", help="move committed ledger entries into PostgreSQL (until stopped)"
    )
    archive.add_argument(
        "--once", action="store_true", help="archive what is there, trim, print stats, exit"
    )
    archive.add_argument(
        "--lease-ttl-ms",
        type=int,
        default=LEASE_TTL_MS,
        help="how long a silent archiver keeps the lease before another takes over",
    )
    archive.set_defaults(func=cmd_archive)
