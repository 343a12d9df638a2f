"""Helpers of the two-leg gift tests: a ClusterLedger on the loopback cluster, and money."""

from __future__ import annotations

import uuid

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.receipts import GiftReceipt
from tests.support.cluster import RedisCluster

GENEROUS = Limits(gifts_per_s_max=100_000, gift_burst_max=100_000)


async def open_ledger(
    cluster: RedisCluster, prefix: str, limits: Limits = GENEROUS
) -> ClusterLedger:
    """A ledger like one server process's: its own runner and connections."""
    runner = ClusterScriptRunner(cluster.startup_urls[:1], timeout_s=5.0, pool_max=16)
    ledger = ClusterLedger(runner, keys=ClusterKeys(prefix), limits=limits)
    await ledger.prepare(load_catalog())
    return ledger


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def live_stream(ledger: ClusterLedger, creator: str | None = None) -> tuple[str, str]:
    """A live stream of a new creator: (stream id, creator id)."""
    creator = creator or uid("creator")
    stream = uid("stream")
    await ledger.start_stream(stream_id=stream, creator_id=creator, title="t")
    return stream, creator


async def funded(ledger: ClusterLedger, coins: int, name: str = "viewer") -> str:
    user = uid(name)
    await ledger.top_up(payment_id=uid("pay"), user_id=user, coins=coins)
    return user


async def gift(
    ledger: ClusterLedger,
    sender: str,
    stream: str,
    creator: str,
    *,
    client_id: str | None = None,
    gift_id: str = "rose",
    count: int = 1,
    catalog_version: int | None = None,
    to: str | None = None,
) -> GiftReceipt:
    return await ledger.send_gift(
        client_id=client_id or uid("g"),
        sender_id=sender,
        sender_name=sender,
        stream_id=stream,
        creator_id=creator,
        gift_id=gift_id,
        count=count,
        catalog_version=catalog_version,
        to=to,
    )
