"""The managed catalog on a cluster: copy_catalog.lua (a whole version per slot, never an
older one), edits followed into every slot, a debit in a slot not yet copied charging only
what the viewer was shown, and the admin API on two cluster-mode server processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.domain.accounts import Role
from server.domain.catalog import load_catalog
from server.domain.catalog_edits import parse_changes
from server.domain.errors import ErrorCode, LedgerRefusal
from server.ledger.catalog_schedule import CatalogSchedule, redis_now_ms
from server.ledger.catalogs import ScheduledEdit
from server.ledger.cluster_catalog import CatalogFollower
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_ledger import ClusterLedger, _copy_args
from server.ledger.keys import Keys
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName
from tests.cluster.legs import funded, gift, live_stream, open_ledger, uid
from tests.support.cluster import RedisCluster
from tests.support.servers import REPO, ServerProcess, client, http_json, token

ADMIN = token("ops", Role.ADMIN)
REPRICE_ROSE = [{"op": "reprice", "id": "rose", "price_coins": 3}]


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    yield ledger
    await ledger.aclose()


async def copy_into(ledger: ClusterLedger, slot: int, args: list[str | int]) -> tuple[str, bool]:
    reply = await ledger.runner.run(
        ScriptName.COPY_CATALOG, [ledger.keys.catalog_shard(slot)], args
    )
    body, held = unpack(reply)
    return body.decode(), held


async def copy_of(ledger: ClusterLedger, slot: int) -> dict[str, str]:
    raw = await ledger.command(ledger.keys.catalog_shard(slot), "HGETALL")
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_copy_catalog_replaces_a_copy_whole_and_never_with_an_older_version(
    ledger: ClusterLedger,
) -> None:
    slot = 4242
    assert await copy_into(ledger, slot, [5, 1000, "rose", 1, "lion", 500]) == ("5", False)
    assert await copy_into(ledger, slot, [4, 1000, "rose", 9]) == ("5", True)  # older
    assert await copy_into(ledger, slot, [5, 1000, "rose", 9]) == ("5", True)  # the same
    assert await copy_of(ledger, slot) == {"@version": "5", "rose": "1", "lion": "500"}
    # A newer version replaces the copy whole: a retired gift leaves it.
    assert await copy_into(ledger, slot, [6, 1000, "rose", 2]) == ("6", False)
    assert await copy_of(ledger, slot) == {"@version": "6", "rose": "2"}
    for bad in ([0, 1000, "rose", 1], [7, 1000], [7, 1000, "rose"], [7, 1000, "rose", 1001]):
        with pytest.raises(LedgerRefusal) as refused:
            await copy_into(ledger, slot, bad)
        assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await copy_of(ledger, slot) == {"@version": "6", "rose": "2"}


async def test_racing_copies_of_two_versions_end_at_the_newer_in_every_slot(
    ledger: ClusterLedger,
) -> None:
    slots = list(range(100, 400))
    older, newer = [20, 1000, "rose", 1, "lion", 500], [21, 1000, "rose", 3]
    await asyncio.gather(
        *(copy_into(ledger, slot, args) for slot in slots for args in (newer, older))
    )
    for slot in slots[::50]:
        assert await copy_of(ledger, slot) == {"@version": "21", "rose": "3"}


async def edit(ledger: ClusterLedger, changes: list[dict[str, Any]], version: int) -> int:
    published = await ledger.catalogs.edit(parse_changes(changes), expected_version=version)
    return published.version


async def test_an_edit_is_copied_into_every_slot_and_the_shown_version_decides(
    ledger: ClusterLedger,
) -> None:
    stream, creator = await live_stream(ledger)
    sender = await funded(ledger, 100)
    assert (await gift(ledger, sender, stream, creator, catalog_version=1)).coins == 1
    follower = CatalogFollower(ledger, copied_version=1)
    assert await follower.follow() is None  # nothing new
    changes = [*REPRICE_ROSE, {"op": "retire", "id": "heart"}]
    assert await edit(ledger, changes, 1) == 2
    followed = await follower.follow()
    assert followed is not None and followed.version == 2
    versions = await ledger.shards.field_of_each(ledger.keys.catalog_shards(), "@version")
    assert set(versions.values()) == {b"2"}
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, sender, stream, creator, catalog_version=1)
    assert refused.value.code is ErrorCode.CATALOG_CHANGED
    assert refused.value.detail == {"catalog_version": 2}
    assert (await gift(ledger, sender, stream, creator, catalog_version=2)).coins == 3
    with pytest.raises(LedgerRefusal) as retired:
        await gift(ledger, sender, stream, creator, gift_id="heart", catalog_version=2)
    assert retired.value.code is ErrorCode.UNKNOWN_GIFT
    assert (await ledger.balance(sender)).coins == 100 - 1 - 3


async def test_a_copy_cut_short_is_finished_by_the_next_follow(ledger: ClusterLedger) -> None:
    assert await edit(ledger, REPRICE_ROSE, 1) == 2
    current = await ledger.current_catalog()
    for slot in range(0, 16384, 7):  # a process copied these, then died
        await copy_into(ledger, slot, _copy_args(current))
    follower = CatalogFollower(ledger, copied_version=1)
    assert await follower.follow() == current
    versions = await ledger.shards.field_of_each(ledger.keys.catalog_shards(), "@version")
    assert set(versions.values()) == {b"2"}
    assert await ledger.copy_catalog(current) == 0  # nothing left to write


async def test_a_slot_not_copied_yet_charges_only_the_price_the_viewer_was_shown(
    ledger: ClusterLedger,
) -> None:
    """A new version is current (published in the home slot) and copied nowhere yet, as
    while another process copies it: a viewer shown the old version pays the old price; one
    shown the new version makes the ledger copy it into that slot and pays the new one."""
    stream, creator = await live_stream(ledger)
    old_viewer, new_viewer = await funded(ledger, 100), await funded(ledger, 100)
    assert await edit(ledger, REPRICE_ROSE, 1) == 2
    new_slot = slot_of(ledger.keys.account(new_viewer))
    assert (await copy_of(ledger, new_slot))["@version"] == "1"
    assert (await gift(ledger, old_viewer, stream, creator, catalog_version=1)).coins == 1
    assert (await gift(ledger, new_viewer, stream, creator, catalog_version=2)).coins == 3
    assert (await copy_of(ledger, new_slot))["@version"] == "2"
    # A version that never was current is refused, and copies nothing.
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, old_viewer, stream, creator, catalog_version=9)
    assert refused.value.detail == {"catalog_version": 2}
    assert (await ledger.balance(old_viewer)).coins == 99
    assert (await ledger.balance(new_viewer)).coins == 97


async def test_a_scheduled_edit_is_published_once_and_copied(ledger: ClusterLedger) -> None:
    now_ms = await redis_now_ms(ledger.catalogs.redis)
    scheduled = ScheduledEdit("sale", now_ms + 200, parse_changes(REPRICE_ROSE), "ops")
    assert await ledger.catalogs.schedule(scheduled)
    assert not await ledger.catalogs.schedule(scheduled)  # the same edit again
    assert [e.edit_id for e in await ledger.catalogs.scheduled()] == ["sale"]
    follower = CatalogFollower(ledger, copied_version=1)
    published: list[int] = []

    async def copied(*_: object) -> None:
        catalog = await follower.follow()
        published.append(catalog.version if catalog else 0)

    schedules = [CatalogSchedule(ledger.catalogs, interval_s=0.05, on_published=copied)] * 2
    while not published:
        for schedule in schedules:  # two processes' turns: one publishes
            _, delay = await schedule.run_once()
        await asyncio.sleep(min(delay, 0.05))
    assert published == [2] and await ledger.catalogs.scheduled() == []
    versions = await ledger.shards.field_of_each(ledger.keys.catalog_shards()[::97], "@version")
    assert set(versions.values()) == {b"2"}


def test_copy_args_name_every_gift_of_the_version() -> None:
    catalog = load_catalog()
    args = _copy_args(catalog)
    assert args[0] == catalog.version and len(args) == 2 + 2 * len(catalog.prices())


def _cli(node_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIFTWIRE_REDIS_URL": node_url, "GIFTWIRE_REDIS_CLUSTER": "true",
           "GIFTWIRE_KEY_PREFIX": prefix}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "catalog", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_catalog_push_and_show_on_a_cluster(
    ledger: ClusterLedger, redis_cluster: RedisCluster, keys: Keys, tmp_path: Path
) -> None:
    doc = orjson.loads(load_catalog().document())
    for gift_doc in doc["gifts"]:
        if gift_doc["id"] == "rose":
            gift_doc["price_coins"] = 4
    path = tmp_path / "catalog.json"
    path.write_bytes(orjson.dumps(doc))
    url = redis_cluster.startup_urls[2]
    pushed = await asyncio.to_thread(
        _cli, url, keys.prefix, "push", str(path), "--expect-version", "1"
    )
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "version 2 is current" in pushed.stdout and "copied into 16384 slots" in pushed.stdout
    shown = await asyncio.to_thread(_cli, url, keys.prefix, "show", "--json")
    prices = {g["id"]: g["price_coins"] for g in orjson.loads(shown.stdout)["gifts"]}
    assert orjson.loads(shown.stdout)["version"] == 2 and prices["rose"] == 4
    stale = await asyncio.to_thread(
        _cli, url, keys.prefix, "push", str(path), "--expect-version", "1"
    )
    assert stale.returncode == 1 and "catalog_changed" in stale.stderr
    stream, creator = await live_stream(ledger)
    sender = await funded(ledger, 10)
    assert (await gift(ledger, sender, stream, creator, catalog_version=2)).coins == 4


# Two cluster-mode server processes.


@pytest.fixture
def cluster_pair(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {
        "GIFTWIRE_REDIS_CLUSTER": "true",
        "GIFTWIRE_REDIS_CHECK_INTERVAL_S": "0.2",
        "GIFTWIRE_GIFTS_PER_S_MAX": "10000",
        "GIFTWIRE_GIFT_BURST_MAX": "10000",
    }
    servers = [
        ServerProcess(redis_cluster.startup_urls[i], keys.prefix, tmp_path, **env) for i in range(2)
    ]
    try:
        for server in servers:
            server.start(timeout_s=60)
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert "Traceback" not in server.log()


async def _gift(peer: Any, client_id: str, gift_id: str, **extra: Any) -> Any:
    await peer.send({"type": "send_gift", "id": client_id, "gift": gift_id, **extra})
    return await peer.recv_type("gift_ack", "error")


async def test_an_admins_edit_on_one_process_reaches_the_clients_of_the_other(
    cluster_pair: tuple[ServerProcess, ServerProcess], redis_cluster: RedisCluster, keys: Keys
) -> None:
    a, b = cluster_pair
    ledger = await open_ledger(redis_cluster, keys.prefix)
    try:
        stream, _ = await live_stream(ledger)
        await ledger.top_up(payment_id=uid("pay"), user_id="alice", coins=1000)
        async with (
            client(a, stream, token("viewer")) as viewer,
            client(b, stream, token("alice")) as sender,
        ):
            changes = [
                *REPRICE_ROSE,
                {"op": "add", "gift": {"id": "comet", "name": "Comet", "price_coins": 42}},
                {"op": "retire", "id": "heart"},
            ]
            body = {"expect_version": 1, "changes": changes}
            status, reply = http_json("POST", a.http + "/api/admin/catalog", body, bearer=ADMIN)
            assert status == 200 and reply["version"] == 2, reply
            status, reply = http_json("POST", a.http + "/api/admin/catalog", body, bearer=ADMIN)
            assert (status, reply["error"]["code"]) == (409, "catalog_changed")
            for peer in (viewer, sender):  # the process that wrote it, and the other
                message = await peer.recv_type("catalog", timeout_s=15)
                prices = {g["id"]: g["price_coins"] for g in message["gifts"]}
                assert message["version"] == 2 and prices["rose"] == 3 and "heart" not in prices
            refused = await _gift(sender, "r1", "rose", catalog_version=1)
            assert refused["code"] == "catalog_changed", refused
            ack = await _gift(sender, "r1", "rose", catalog_version=2)
            assert ack["type"] == "gift_ack" and ack["coins"] == 3, ack
            assert (await _gift(sender, "c1", "comet", catalog_version=2))["coins"] == 42
            assert (await _gift(sender, "h1", "heart"))["code"] == "unknown_gift"
            status, reply = http_json("GET", b.http + "/api/admin/catalog", bearer=ADMIN)
            assert status == 200 and reply["version"] == 2 and reply["scheduled"] == []
        assert (await ledger.balance("alice")).coins == 1000 - 3 - 42
    finally:
        await ledger.aclose()
