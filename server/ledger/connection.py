"""Find or start the Redis that holds the ledger."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis as SyncRedis
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis

from server.ledger.embedded import RedisProcess, check_data_readable, find_redis_server

_PORT_FILE = "redis.port"


def make_client(url: str, *, timeout_s: float, pool_max: int = 64) -> Redis:
    """The hot-path client: bytes replies (parsed by hiredis), bounded pool and timeouts.

    The pool blocks (up to ``timeout_s``) when all ``pool_max`` connections are in use: the
    default pool raises "Too many connections" at once, which refused viewers with 503
    during a burst of a few dozen concurrent handshakes.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=False,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        max_connections=pool_max,
        timeout=timeout_s,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def running_embedded(redis_dir: Path) -> str | None:
    """The URL of the embedded redis-server that a running giftwire started in
    ``redis_dir``, or None. A stale port file (the owner was killed) whose port now belongs
    to some other Redis is recognised by that Redis's own ``dir``."""
    port_file = redis_dir / _PORT_FILE
    if not port_file.exists():
        return None
    try:
        port = int(port_file.read_text().strip())
    except ValueError:
        return None
    probe = RedisProcess(redis_dir, port=port)
    if not probe._ping():
        return None
    client = SyncRedis.from_url(
        probe.url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
    )
    try:
        served = str(client.config_get("dir").get("dir", ""))
    except (redis_errors.RedisError, OSError):
        return None
    finally:
        client.close()
    same = Path(served).resolve() == redis_dir.resolve()
    return probe.url if same else None


@contextmanager
def ledger_redis_url(
    redis_url: str | None, data_dir: Path, *, appendfsync: str = "everysec"
) -> Iterator[str]:
    """Yield the Redis URL to use.

    With ``redis_url`` set, that. Otherwise the embedded redis-server of ``data_dir``: the
    one a running giftwire process already started there, or a new one (AOF on with
    ``appendfsync``, in ``data_dir/redis``) that is stopped when the block ends.
    """
    if redis_url:
        yield redis_url
        return
    redis_dir = data_dir / "redis"
    existing = running_embedded(redis_dir)
    if existing:
        yield existing
        return
    check_data_readable(redis_dir, find_redis_server())
    server = RedisProcess(redis_dir, appendfsync=appendfsync, die_with_parent=True)
    server.start()
    (redis_dir / _PORT_FILE).write_text(str(server.port))
    try:
        yield server.url
    finally:
        (redis_dir / _PORT_FILE).unlink(missing_ok=True)
        server.stop()


def wait_for_redis(url: str, *, wait_s: float, report: Callable[[str], None]) -> bool:
    """Block until Redis at ``url`` answers PING, for at most ``wait_s``; False if never.

    ``report`` is told, every few seconds, that we are still waiting and why.
    """
    client = SyncRedis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    deadline = time.monotonic() + wait_s
    next_report = 0.0
    try:
        while True:
            try:
                if client.ping():
                    return True
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as e:
                now = time.monotonic()
                if now >= deadline:
                    report(f"Redis at {url.split('@')[-1]} is unreachable ({e}); giving up")
                    return False
                if now >= next_report:
                    report(f"waiting for Redis at {url.split('@')[-1]} ({e})")
                    next_report = now + 5
            time.sleep(0.25)
    finally:
        client.close()
