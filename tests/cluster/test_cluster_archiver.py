"""The archiver on the loopback cluster: every slot's log (``{~N}:log``) into the record
exactly once, each keyed by its slot (two slots may reuse an entry id), trimmed per slot,
found as slots get their first entry; and the record reconciles against every log.

The entries are written the way ``cluster_keys`` describes (one log per slot, next to the
account whose script appends to it); their fields are single-node top-ups, which the record
already has a posting rule for (the cluster legs' own entry types come with the legs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as ClusterClient

from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.cluster_shards import Shards
from server.ledger.cluster_topology import SlotMap
from server.ledger.keys import Keys
from server.record.archiver import Archiver, ArchiverConfig
from server.record.cluster_logs import cluster_log, log_discovery, recorded_entries, slot_primary
from server.record.connection import RecordPool
from server.record.lease import Lease
from server.record.reconcile import reconcile_logs
from tests.cluster.legs import funded, gift, live_stream, open_ledger
from tests.support.cluster import RedisCluster

CONFIG = ArchiverConfig(batch_max=50, block_ms=20, discover_interval_s=0.0)
USERS = [f"user{n}" for n in range(12)]


@pytest.fixture
async def client(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    client = ClusterClient(
        startup_nodes=[ClusterNode("127.0.0.1", port) for port in redis_cluster.ports]
    )
    yield client
    await client.aclose()


@pytest.fixture
async def slot_map(redis_cluster: RedisCluster) -> AsyncIterator[SlotMap]:
    slots = SlotMap(redis_cluster.startup_urls[:1], timeout_s=5.0, pool_max=8)
    await slots.refresh()
    yield slots
    await slots.aclose()


async def _top_up(
    client: ClusterClient, ck: ClusterKeys, user: str, n: int, entry_id: str = "*"
) -> str:
    """A transfer committed in ``user``'s slot: appended to that slot's log."""
    log = ck.ledger_shard(slot_of(ck.account(user)))
    fields = {"type": "top_up", "payment": f"p-{user}-{n}", "to": user, "coins": str(100 + n),
              "credited": str(100 + n), "repaid": "0"}  # fmt: skip
    added = await client.xadd(log, fields, id=entry_id)  # type: ignore[arg-type]
    return f"{slot_of(log)}/{added.decode()}"


async def _recorded(pool: RecordPool) -> list[str]:
    async with pool.connection() as conn:
        rows = await (
            await conn.execute("SELECT log_slot, log_ms, log_seq FROM transfers")
        ).fetchall()
    return [f"{slot}/{ms}-{seq}" for slot, ms, seq in rows]


def _archiver(
    client: ClusterClient, slots: SlotMap, pool: RecordPool, keys: Keys, consumer: str
) -> Archiver:
    ck = ClusterKeys(keys.prefix)
    lease_key = ck.archiver_lease()
    return Archiver(
        client, pool, keys, config=CONFIG, consumer=consumer, logs=[], lease_key=lease_key,
        lease_redis=slots.client(slots.owners[slot_of(lease_key)]),
        discover=log_discovery(Shards(slots, timeout_s=5.0), ck),
    )  # fmt: skip


async def test_every_slots_log_is_archived_once_keyed_by_its_slot(
    client: ClusterClient,
    slot_map: SlotMap,
    record_pool: RecordPool,
    keys: Keys,
    redis_cluster: RedisCluster,
) -> None:
    ck = ClusterKeys(keys.prefix)
    made = [await _top_up(client, ck, user, n) for n in range(20) for user in USERS]
    # Two slots may hand out the same entry id: both are recorded, each under its slot.
    a, b = (
        USERS[0],
        next(u for u in USERS if slot_of(ck.account(u)) != slot_of(ck.account(USERS[0]))),
    )
    made += [await _top_up(client, ck, user, 99, "9999999999999-7") for user in (a, b)]
    slots = {slot_of(ck.account(u)) for u in USERS}
    assert len({redis_cluster.primary_for_slot(s).port for s in slots}) == 3  # every primary

    archiver = _archiver(client, slot_map, record_pool, keys, "a")
    assert await archiver.drain() == len(made)
    assert {log.slot for log in archiver.logs} == slots
    assert sorted(await _recorded(record_pool)) == sorted(made)
    for slot in slots:  # trimmed per slot, and only what the record holds
        log = cluster_log(ck, slot)
        assert await archiver.safe_trim_id(log) is not None
    report = await reconcile_logs(client, record_pool, archiver.logs)
    assert report.ok, report.problems
    assert (report.record.recorded, report.record.lag) == (len(made), 0)

    # Replays: another archiver over the same logs records nothing twice.
    again = _archiver(client, slot_map, record_pool, keys, "b")
    await again.drain()
    assert sorted(await _recorded(record_pool)) == sorted(made)

    # A slot's first transfer after the start is found by the next discovery.
    newcomer = next(
        u for u in (f"late{n}" for n in range(100)) if slot_of(ck.account(u)) not in slots
    )
    late = await _top_up(client, ck, newcomer, 0)
    await again.step()
    await again.step()
    assert late in await _recorded(record_pool)
    report = await reconcile_logs(client, record_pool, again.logs)
    assert report.ok, report.problems


async def test_reconcile_logs_finds_an_entry_lost_before_archiving(
    client: ClusterClient, slot_map: SlotMap, record_pool: RecordPool, keys: Keys
) -> None:
    ck = ClusterKeys(keys.prefix)
    for n in range(5):
        await _top_up(client, ck, USERS[1], n)
    archiver = _archiver(client, slot_map, record_pool, keys, "a")
    await archiver.drain()
    # Entries trimmed by hand (not by the archiver) that the record never saw.
    log = cluster_log(ck, slot_of(ck.account(USERS[1])))
    await _top_up(client, ck, USERS[1], 5)
    await client.xtrim(log.key, maxlen=0)
    report = await reconcile_logs(client, record_pool, [log])
    assert any("trimmed" in p for p in report.problems), report.problems


async def test_the_running_archiver_holds_the_lease_and_follows_new_slots(
    client: ClusterClient, slot_map: SlotMap, record_pool: RecordPool, keys: Keys
) -> None:
    ck = ClusterKeys(keys.prefix)
    made = [await _top_up(client, ck, user, 0) for user in USERS[:4]]
    archiver = _archiver(client, slot_map, record_pool, keys, "runner")
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    try:
        for _ in range(300):  # bounded; each round rests block_ms when nothing came
            if sorted(await _recorded(record_pool)) == sorted(made):
                break
            await asyncio.sleep(0.05)
        assert await client.get(ck.archiver_lease()) == b"runner"
        made += [await _top_up(client, ck, user, 1) for user in USERS[4:]]
        for _ in range(300):
            if sorted(await _recorded(record_pool)) == sorted(made):
                break
            await asyncio.sleep(0.05)
        assert sorted(await _recorded(record_pool)) == sorted(made)
    finally:
        stop.set()
        await task
    assert await client.get(ck.archiver_lease()) is None  # released on the way out


async def test_the_two_legs_of_cluster_gifts_are_recorded_and_balance(
    redis_cluster: RedisCluster,
    client: ClusterClient,
    slot_map: SlotMap,
    record_pool: RecordPool,
    keys: Keys,
) -> None:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    try:
        stream, creator = await live_stream(ledger)
        senders = [await funded(ledger, 1_000) for _ in range(4)]
        for n, sender in enumerate(senders * 3):
            await gift(ledger, sender, stream, creator, gift_id="cap", client_id=f"g{n}")
        archiver = _archiver(client, slot_map, record_pool, keys, "legs")
        await archiver.drain()
        report = await reconcile_logs(client, record_pool, archiver.logs)
        assert report.ok, report.problems
        async with record_pool.connection() as conn:
            rows = await (
                await conn.execute("SELECT user_id, account, balance FROM account_balances")
            ).fetchall()
        balances = {(user, account): int(balance) for user, account, balance in rows}
        assert balances.get((None, "transit"), 0) == 0  # every debit was credited
        want = (await ledger.balance(creator)).diamonds
        assert (
            balances[(creator, "diamonds")] == want == 12 * 99 // 2
        )  # share_rem carries the halves
        for sender in senders:
            assert balances[(sender, "coins")] == (await ledger.balance(sender)).coins
        # Once the logs are trimmed (all of it is recorded), the cluster's reconcile needs
        # the record's part of their history, and with it the books still add up.
        for ledger_log in archiver.logs:
            await client.xtrim(ledger_log.key, maxlen=0)
        assert not (await reconcile_cluster(ledger)).ok
        history = await recorded_entries(record_pool, ClusterKeys(keys.prefix))
        whole = await reconcile_cluster(ledger, history)
        assert whole.ok, whole.problems
    finally:
        await ledger.aclose()


async def test_gifts_to_guests_are_recorded_and_balance(
    redis_cluster: RedisCluster,
    client: ClusterClient,
    slot_map: SlotMap,
    record_pool: RecordPool,
    keys: Keys,
) -> None:
    """The third leg (``guest_credit`` in each guest's slot) posts the guests' diamonds; a
    credit to guests leaves its coins in transit until then."""
    ledger = await open_ledger(redis_cluster, keys.prefix)
    try:
        stream, creator = await live_stream(ledger)
        guests = ["guest-a", "guest-b"]
        for guest in guests:
            await ledger.guests.invite(stream_id=stream, creator_id=creator, guest_id=guest)
            await ledger.guests.join(stream_id=stream, guest_id=guest, name=guest)
        sender = await funded(ledger, 1_000)
        for n, to in enumerate(["*", "guest-a", None, "*"]):
            await gift(ledger, sender, stream, creator, gift_id="cap", client_id=f"t{n}", to=to)
        archiver = _archiver(client, slot_map, record_pool, keys, "guests")
        await archiver.drain()
        report = await reconcile_logs(client, record_pool, archiver.logs)
        assert report.ok, report.problems
        async with record_pool.connection() as conn:
            rows = await (
                await conn.execute("SELECT user_id, account, balance FROM account_balances")
            ).fetchall()
        balances = {(user, account): int(balance) for user, account, balance in rows}
        assert balances.get((None, "transit"), 0) == 0
        for user in [*guests, creator]:
            assert balances[(user, "diamonds")] == (await ledger.balance(user)).diamonds
        assert (await reconcile_cluster(ledger)).ok
    finally:
        await ledger.aclose()


@pytest.mark.slow
async def test_the_lease_follows_a_failover_of_its_slots_primary(
    own_cluster: RedisCluster, keys: Keys
) -> None:
    """The lease's client was the primary of its key's slot as found at start; after that
    primary dies and a replica takes over, renewing finds the new primary (the archiver's
    loop retries the failed attempt) instead of retrying the dead one until a restart."""
    ck = ClusterKeys(keys.prefix)
    slot = slot_of(ck.archiver_lease())
    slots = SlotMap(own_cluster.startup_urls, timeout_s=2.0, pool_max=4)
    await slots.refresh()
    try:
        lease = Lease(
            slots.client(slots.owners[slot]), ck.archiver_lease(), "holder", ttl_ms=10_000,
            locate=slot_primary(slots, slot),
        )  # fmt: skip
        assert await lease.acquire_or_renew()
        victim = own_cluster.primary_for_slot(slot)
        own_cluster.kill(victim.port)
        promoted = await asyncio.to_thread(own_cluster.wait_promoted, victim.port)
        renewed, failures = False, 0
        for _ in range(50):  # bounded: the first attempts may still meet the dead node
            try:
                renewed = await lease.acquire_or_renew()
                break
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
                failures += 1
                await asyncio.sleep(0.1)
        assert renewed and failures >= 1
        on_promoted = slots.client(("127.0.0.1", promoted.port))
        assert await on_promoted.get(ck.archiver_lease()) == b"holder"
    finally:
        await slots.aclose()
