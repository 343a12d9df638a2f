"""A ledger on either store, for the suites that run the same assertions on both.

``single``: ``Ledger`` on one redis-server, one script per gift. ``cluster``: ``ClusterLedger``
on the loopback 3-primary + 3-replica cluster, a debit leg and a credit leg per gift (built
as ``tests/cluster/legs.py`` builds one: a runner and connections of its own, like one
server process). The helpers here are the only place that looks at which one a test has:
the books (``reconciled``: ``reconcile.py`` or ``cluster_reconcile.py``), the gifts the
log(s) hold, a snapshot of the test's keys (``snapshot``), and the per-mode spelling of a
transfer id (``docs/protocol.md``, "On a Redis Cluster").
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import cast

from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.reconcile import reconcile
from server.ledger.runner import StreamRows
from tests.support.cluster import RedisCluster

AnyLedger = Ledger | ClusterLedger
OpenLedger = Callable[..., Awaitable[AnyLedger]]
"""``await open_any_ledger(limits=None)``: another started ledger on the same store and prefix
(another server process's, as far as the store can tell); closed at the test's end."""

GENEROUS = Limits(gifts_per_s_max=100_000, gift_burst_max=100_000, payout_hold_days=0)
"""No rate limit in the way, and no payout hold, so that a test may cash out what it earned."""

_ENTRY_ID = r"\d+-\d+"


def mode_of(ledger: AnyLedger) -> str:
    return "cluster" if isinstance(ledger, ClusterLedger) else "single"


async def open_single(url: str, keys: Keys, limits: Limits | None = None) -> Ledger:
    ledger = Ledger(Redis.from_url(url), keys=keys, limits=limits or GENEROUS)
    await ledger.prepare(load_catalog())
    return ledger


async def open_cluster(
    cluster: RedisCluster, keys: Keys, limits: Limits | None = None
) -> ClusterLedger:
    runner = ClusterScriptRunner(cluster.startup_urls[:1], timeout_s=5.0, pool_max=16)
    ledger = ClusterLedger(runner, keys=ClusterKeys(keys.prefix), limits=limits or GENEROUS)
    await ledger.prepare(load_catalog())
    return ledger


async def close(ledger: AnyLedger) -> None:
    if isinstance(ledger, ClusterLedger):
        await quiet(ledger)
        await ledger.aclose()
    else:
        await ledger.redis.aclose()


async def quiet(ledger: AnyLedger) -> None:
    """Wait for the background writes a gift leaves behind (cluster: the settled outbox
    entries' ``XDEL``), so that a snapshot taken now stays still."""
    if isinstance(ledger, ClusterLedger):
        for _ in range(200):
            if not ledger._deleting:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the outbox deletions never finished")


def transfer_id_pattern(ledger: AnyLedger, sender: str, client_id: str) -> str:
    """What a gift's ``transfer_id`` looks like: the ledger entry id ``N-M`` on a single
    node, ``SENDER|CLIENT_ID|N-M`` on a cluster (opaque to clients either way)."""
    if isinstance(ledger, ClusterLedger):
        return re.escape(f"{sender}|{client_id}|") + _ENTRY_ID
    return _ENTRY_ID


_CATALOG_COPY = re.compile(rb"\{~\d+\}:catalog$")
"""A slot's copy of the catalog (16384 of them): written by ``prepare`` and catalog edits,
never by a money operation, so a snapshot leaves them out rather than read them all."""


async def _value(node: Redis, key: bytes) -> tuple[bytes, object]:
    kind = cast(bytes, await node.type(key))
    value: object
    if kind == b"hash":
        value = await node.hgetall(key)
    elif kind == b"string":
        value = await node.get(key)
    elif kind == b"zset":
        value = await node.zrange(key, 0, -1, withscores=True)
    elif kind == b"stream":
        value = await node.xrange(key)
    elif kind == b"list":
        value = await node.lrange(key, 0, -1)
    elif kind == b"set":
        value = sorted(await node.smembers(key))
    else:
        raise AssertionError(f"snapshot cannot read {key!r} of type {kind!r}")
    return kind, value


async def snapshot(ledger: AnyLedger, *ids: str) -> dict[bytes, object]:
    """Every key of the ledger's prefix with its value (but the slots' catalog copies): two
    equal snapshots prove that what ran between them wrote nothing.

    Single node: every key of the prefix. Cluster: every key of the prefix in the slots
    that ``ids`` (the users and stream ids taking part) own: their accounts' slots, which
    hold their receipts, streams, and the slot's log, outbox and platform shard, and the
    stream ids' claims. Not a SCAN of the whole cluster, which holds 16384 catalog copies
    for each test that ran before."""
    await quiet(ledger)
    prefix = ledger.keys.prefix.encode()
    out: dict[bytes, object] = {}
    if not isinstance(ledger, ClusterLedger):
        async for key in ledger.redis.scan_iter(match=f"{ledger.keys.prefix}*", count=1000):
            out[key] = await _value(ledger.redis, key)
        return out
    k = ledger.keys
    slots = {slot_of(k.account(i)) for i in ids} | {slot_of(k.stream_owner(i)) for i in ids}
    for slot in sorted(slots):
        node = ledger.runner.client(ledger.runner.primary_of(slot))
        found = await node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1_000_000)  # type: ignore[no-untyped-call]
        for key in found:
            if key.startswith(prefix) and not _CATALOG_COPY.search(key):
                out[key] = await _value(node, key)
    return out


async def applied_gifts(ledger: AnyLedger) -> Counter[tuple[str, str]]:
    """How often each (sender, client id) was debited, from the ledger log(s)."""
    if isinstance(ledger, ClusterLedger):
        found: Counter[tuple[str, str]] = Counter()
        for key in await ledger.shards.lengths(ledger.keys.ledger_shards()):
            rows = await ledger.command(key, "XRANGE", "-", "+")
            for _, fields in rows:
                if fields.get(b"type") == b"gift_debit":
                    found[(fields[b"from"].decode(), fields[b"client_id"].decode())] += 1
        return found
    rows = cast(StreamRows, await ledger.redis.xrange(ledger.keys.ledger()))
    return Counter(
        (fields[b"from"].decode(), fields[b"client_id"].decode())
        for _, fields in rows
        if fields.get(b"type") == b"gift"
    )


async def reconciled(ledger: AnyLedger) -> dict[str, int]:
    """Reconcile the books the way this mode does and insist they balance, every gift
    settled (no transfer pending between the legs). Returns the report's totals."""
    if isinstance(ledger, ClusterLedger):
        cluster_report = await reconcile_cluster(ledger)
        assert cluster_report.problems == []
        assert cluster_report.pending == []
        return dict(cluster_report.totals)
    report = await reconcile(ledger.redis, ledger.keys)
    assert report.ok, report.problems
    return {name: int(getattr(report.totals, name)) for name in report.totals.__slots__}


def gifts_in(totals: dict[str, int]) -> int:
    """The gifts a reconcile counted (``transfers`` on a cluster, ``gifts`` on one node)."""
    return totals["transfers"] if "transfers" in totals else totals["gifts"]
