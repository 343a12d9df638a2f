"""``giftwire archive``: the archiver on its own (operators who run it apart), and the
child process that ``serve`` and ``demo`` run it in."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import orjson
import psycopg
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as ClusterClient

from server.cli.common import CommandError, HelpFormatter
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_shards import Shards
from server.ledger.cluster_topology import SlotMap, address_of
from server.ledger.connection import ledger_redis_url, make_client
from server.ledger.keys import Keys
from server.record.archiver import LEASE_TTL_MS, Archiver, ArchiverConfig
from server.record.cluster_logs import log_discovery, slot_primary
from server.record.connection import RecordPool, open_record, record_database_url
from server.record.service import ARCHIVER_REDIS_TIMEOUT_S
from server.settings import Settings, env_name


async def _cluster_archiver(
    settings: Settings, redis_url: str, pool: RecordPool, config: ArchiverConfig
) -> tuple[Archiver, Callable[[], Awaitable[None]]]:
    """Cluster mode: every slot's log ({~N}:log), found with one XLEN per slot; commands
    routed by key (``RedisCluster``: each names one key, and none moves money)."""
    host, port = address_of(redis_url)
    client = ClusterClient(
        startup_nodes=[ClusterNode(host, port)],
        socket_timeout=ARCHIVER_REDIS_TIMEOUT_S,
        socket_connect_timeout=ARCHIVER_REDIS_TIMEOUT_S,
    )
    slots = SlotMap([redis_url], timeout_s=ARCHIVER_REDIS_TIMEOUT_S, pool_max=4)
    await slots.refresh()
    cluster_keys = ClusterKeys(settings.key_prefix)
    lease_key = cluster_keys.archiver_lease()
    archiver = Archiver(
        client, pool, Keys(settings.key_prefix), config=config, logs=[], lease_key=lease_key,
        lease_redis=slots.client(slots.owners[slot_of(lease_key)]),
        lease_locate=slot_primary(slots, slot_of(lease_key)),
        discover=log_discovery(Shards(slots, timeout_s=ARCHIVER_REDIS_TIMEOUT_S), cluster_keys),
    )  # fmt: skip

    async def close() -> None:
        await slots.aclose()
        await client.aclose()

    return archiver, close


async def _archive(
    settings: Settings, redis_url: str, database_url: str, args: argparse.Namespace
) -> int:
    try:
        pool = await open_record(database_url)
    except psycopg.OperationalError as exc:
        # serve/demo restarts its archiver child; one line says why, not a traceback.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(f"the archiver cannot open the record: {first}", exit_code=1) from exc
    config = ArchiverConfig(lease_ttl_ms=args.lease_ttl_ms)
    if settings.redis_cluster:
        archiver, close = await _cluster_archiver(settings, redis_url, pool, config)
    else:
        redis = make_client(redis_url, timeout_s=ARCHIVER_REDIS_TIMEOUT_S, pool_max=4)
        archiver, close = (
            Archiver(redis, pool, Keys(settings.key_prefix), config=config),
            redis.aclose,
        )
    try:
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
        await close()


def cmd_archive(args: argparse.Namespace, settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s"
    )
    with (
        ledger_redis_url(settings.redis_url, settings.data_dir) as redis_url,
        record_database_url(settings.database_url, settings.redis_url, settings.data_dir) as url,
    ):
        if url is None:
            raise CommandError(f"set {env_name('database_url')} to the record's PostgreSQL")
        return asyncio.run(_archive(settings, redis_url, url, args))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    archive = sub.add_parser(
        "archive",
        help="move committed ledger entries into PostgreSQL (until stopped)",
        description="Archive every committed ledger entry into the durable record once, and "
        "trim Redis' log below what PostgreSQL holds. serve and demo run one themselves.",
        formatter_class=HelpFormatter,
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


ARCHIVER_RESTART_S = 1.0


@contextmanager
def archiver_process(settings: Settings, redis_url: str, database_url: str) -> Iterator[None]:
    """Run ``giftwire archive`` as a child of ``serve`` while the block runs, started again
    if it dies, and stopped (SIGTERM: it finishes its batch) when the block ends.

    A process of its own rather than a task in a server worker: recording costs tens of
    microseconds of CPU per transfer, which on the workers' event loop would delay every
    WebSocket frame behind it; apart, it only uses a core the workers are not using. Any
    number of serve processes may each run one: the lease keeps one active.
    """
    env = {
        **os.environ,
        env_name("redis_url"): redis_url,
        env_name("database_url"): database_url,
        env_name("key_prefix"): settings.key_prefix,
        env_name("log_level"): settings.log_level,
        env_name("redis_cluster"): "true" if settings.redis_cluster else "false",
    }
    stopping = threading.Event()
    current: list[subprocess.Popen[bytes]] = []

    def supervise() -> None:
        while not stopping.is_set():
            child = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "archive"],
                env=env,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                # Out of the terminal's process group: Ctrl-C stops serve, which stops it,
                # instead of reaching both and reading as a crash to restart.
                start_new_session=True,
            )
            current[:] = [child]
            code = child.wait()
            if not stopping.is_set():
                print(f"giftwire: the archiver exited ({code}); restarting", file=sys.stderr)
                stopping.wait(ARCHIVER_RESTART_S)

    thread = threading.Thread(target=supervise, name="giftwire-archiver", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        for child in current:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
        thread.join(15)


def _die_with_parent() -> None:
    # Not Linux: the archiver outlives a hard-killed serve (and, holding the lease, goes on).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
