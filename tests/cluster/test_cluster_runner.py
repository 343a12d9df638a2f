"""The cluster script runner against the loopback cluster: routing, order, NOSCRIPT, MOVED,
ASK, and a primary killed under load.

The calls here run a probe script (append ARGV[1] to the list KEYS[1]) rather than a ledger
script: what is tested is where and in which order calls run, which a list shows exactly.
The ledger's own scripts get their cluster tests with the two legs.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from server.domain.errors import InvariantError, UnavailableError
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.keys import Keys
from server.ledger.scripts import LuaScript, ScriptName
from tests.support.cluster import RedisCluster

_PROBE_SOURCE = b"""
-- KEYS[1]: a list. ARGV[1]: a value. Appends the value; replies {'ok', new length}.
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
return {'ok', tostring(n)}
"""
PROBE = LuaScript("probe", _PROBE_SOURCE, hashlib.sha1(_PROBE_SOURCE).hexdigest())  # type: ignore[arg-type]


async def make_runner(cluster: RedisCluster, **options: float) -> ClusterScriptRunner:
    runner = ClusterScriptRunner(
        cluster.startup_urls,
        timeout_s=options.pop("timeout_s", 5.0),
        calls_per_pipeline_max=int(options.pop("calls_per_pipeline_max", 8)),
        pipelines_in_flight_max=int(options.pop("pipelines_in_flight_max", 4)),
    )
    runner.register(PROBE)
    await runner.prepare()
    return runner


@pytest.fixture
async def runner(redis_cluster: RedisCluster) -> AsyncIterator[ClusterScriptRunner]:
    runner = await make_runner(redis_cluster)
    yield runner
    await runner.aclose()


@pytest.fixture
async def own_runner(own_cluster: RedisCluster) -> AsyncIterator[ClusterScriptRunner]:
    """A runner on a cluster of the test's own: a slot migration that fails halfway must
    not leave the session's cluster with a half-moved slot for every later test."""
    runner = await make_runner(own_cluster)
    yield runner
    await runner.aclose()


def probe_key(keys: Keys, owner: str) -> str:
    return f"{keys.prefix}{{u:{owner}}}:probe"


async def on_node(port: int, key: str) -> list[bytes]:
    """LRANGE sent straight to one node: a node that does not own the key replies MOVED."""
    client = Redis(port=port)
    try:
        values = await client.lrange(key, 0, -1)
        return [v if isinstance(v, bytes) else v.encode() for v in values]
    finally:
        await client.aclose()


class Acks:
    """The values acknowledged to each sender, and a way to wait for the load to progress
    (rather than sleeping a fixed time on a machine whose speed varies)."""

    def __init__(self, senders: list[str]) -> None:
        self.values: dict[str, list[str]] = {sender: [] for sender in senders}
        self._changed = asyncio.Condition()

    async def add(self, sender: str, value: str) -> None:
        self.values[sender].append(value)
        async with self._changed:
            self._changed.notify_all()

    async def each_more(self, more: int = 2) -> None:
        """Return once every sender had ``more`` further calls acknowledged."""
        marks = {sender: len(values) for sender, values in self.values.items()}
        async with asyncio.timeout(30), self._changed:
            await self._changed.wait_for(
                lambda: all(len(v) >= marks[s] + more for s, v in self.values.items())
            )


async def command(client: Redis, *args: object) -> object:
    """An admin command sent to one node (redis-py leaves execute_command untyped)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


async def run_probe(runner: ClusterScriptRunner, key: str, value: str) -> list[bytes]:
    return await runner.run("probe", [key], [value], order_key=key)


async def test_each_call_runs_on_the_primary_of_its_slot(
    runner: ClusterScriptRunner, redis_cluster: RedisCluster, keys: Keys
) -> None:
    owners = [f"user{i}" for i in range(60)]
    replies = await asyncio.gather(
        *(run_probe(runner, probe_key(keys, o), f"v-{o}") for o in owners)
    )
    assert all(reply == [b"ok", b"1"] for reply in replies)
    ports = set()
    for owner in owners:
        key = probe_key(keys, owner)
        primary = redis_cluster.primary_for_slot(slot_of(key))
        assert runner.primary_of(slot_of(key))[1] == primary.port
        assert await on_node(primary.port, key) == [f"v-{owner}".encode()]
        ports.add(primary.port)
    assert len(ports) == 3  # 60 users cover every primary


async def test_each_senders_calls_keep_their_order_under_concurrency(
    runner: ClusterScriptRunner, redis_cluster: RedisCluster, keys: Keys
) -> None:
    senders = [f"sender{i}" for i in range(21)]  # not a multiple of the lanes
    calls_each = 30
    # Interleaved: every sender's n-th call is made before any sender's (n+1)-th.
    calls = [
        run_probe(runner, probe_key(keys, sender), str(n))
        for n, sender in itertools.product(range(calls_each), senders)
    ]
    await asyncio.gather(*calls)
    for sender in senders:
        key = probe_key(keys, sender)
        port = redis_cluster.primary_for_slot(slot_of(key)).port
        assert await on_node(port, key) == [str(n).encode() for n in range(calls_each)]


async def test_a_call_whose_keys_span_slots_is_refused_before_it_is_sent(
    runner: ClusterScriptRunner, redis_cluster: RedisCluster, keys: Keys
) -> None:
    first, second = probe_key(keys, "alice"), probe_key(keys, "bob")
    assert slot_of(first) != slot_of(second)
    with pytest.raises(InvariantError, match="more than one slot"):
        await runner.run("probe", [first, second], ["x"])
    with pytest.raises(InvariantError):
        await runner.run(ScriptName.END_STREAM, [], [])
    port = redis_cluster.primary_for_slot(slot_of(first)).port
    assert await on_node(port, first) == []


async def test_a_node_that_lost_its_scripts_gets_them_again(
    runner: ClusterScriptRunner, redis_cluster: RedisCluster, keys: Keys
) -> None:
    flushed = redis_cluster.primary_for_slot(slot_of(probe_key(keys, "alice")))
    admin = Redis(port=flushed.port)
    try:
        await admin.script_flush()
        assert not await runner.scripts_loaded()
        owners = [f"user{i}" for i in range(30)]
        replies = await asyncio.gather(
            *(run_probe(runner, probe_key(keys, o), "once") for o in owners)
        )
        assert all(reply == [b"ok", b"1"] for reply in replies)
        assert await runner.scripts_loaded()
        shas = [script.sha for script in runner.scripts.values()]
        assert all(await admin.script_exists(*shas))
    finally:
        await admin.aclose()
    # Each call ran exactly once, the ones on the flushed node included.
    for owner in owners:
        key = probe_key(keys, owner)
        assert await on_node(redis_cluster.primary_for_slot(slot_of(key)).port, key) == [b"once"]


async def test_moved_is_followed_and_the_slot_map_corrected(
    runner: ClusterScriptRunner, redis_cluster: RedisCluster, keys: Keys
) -> None:
    key = probe_key(keys, "alice")
    slot = slot_of(key)
    right = runner.primary_of(slot)
    wrong = next(address for address in runner.primaries() if address != right)
    runner.slots.owners[slot] = wrong  # what the runner believes after a slot moved away
    assert await run_probe(runner, key, "a") == [b"ok", b"1"]
    assert runner.primary_of(slot) == right
    assert await on_node(right[1], key) == [b"a"]


async def migrate_leftovers(source_client: Redis, target_port: int, slot: int) -> None:
    """Move every other key of ``slot`` too: the session cluster is shared, and other tests
    leave keys in every slot (the catalog's copy per slot). A slot whose source still holds
    keys cannot be given to the target, and would stay half-migrated for every later test."""
    while moving := await command(source_client, "CLUSTER", "GETKEYSINSLOT", slot, 100):
        await command(
            source_client, "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *moving
        )


async def test_a_slot_migrated_under_the_runner_is_followed_by_ask_then_moved(
    own_runner: ClusterScriptRunner, own_cluster: RedisCluster, keys: Keys
) -> None:
    runner, redis_cluster = own_runner, own_cluster
    key = probe_key(keys, "migrating")
    slot = slot_of(key)
    source = redis_cluster.primary_for_slot(slot)
    target = next(n for n in redis_cluster.primaries() if n.port != source.port)
    source_client, target_client = Redis(port=source.port), Redis(port=target.port)
    try:
        await command(target_client, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        await command(source_client, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        # The key does not exist on the source: it answers ASK, the target takes it.
        assert await run_probe(runner, key, "during") == [b"ok", b"1"]
    finally:
        await migrate_leftovers(source_client, target.port, slot)
        for primary in redis_cluster.primaries():
            client = Redis(port=primary.port)
            try:
                await command(client, "CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
            finally:
                await client.aclose()
        await source_client.aclose()
        await target_client.aclose()
    await asyncio.to_thread(redis_cluster.wait_ok)
    # The runner still believes the source owns the slot: MOVED, then the target.
    assert runner.primary_of(slot)[1] == source.port
    assert await run_probe(runner, key, "after") == [b"ok", b"2"]
    assert runner.primary_of(slot)[1] == target.port
    assert await on_node(target.port, key) == [b"during", b"after"]


async def test_a_primary_killed_under_load_is_unknown_then_served_by_its_replica(
    own_cluster: RedisCluster, keys: Keys
) -> None:
    runner = await make_runner(own_cluster, timeout_s=1.0)
    try:
        senders = [f"sender{i}" for i in range(12)]
        victim_key = probe_key(keys, senders[0])
        victim = own_cluster.primary_for_slot(slot_of(victim_key))
        outcomes: Counter[str] = Counter()
        acks = Acks(senders)
        acked = acks.values
        attempted: dict[str, list[str]] = {sender: [] for sender in senders}
        stop = asyncio.Event()

        async def send_until_stopped(sender: str) -> None:
            for n in itertools.count():
                if stop.is_set():
                    return
                value = f"{sender}-{n}"
                attempted[sender].append(value)
                try:
                    await run_probe(runner, probe_key(keys, sender), value)
                except UnavailableError:
                    outcomes["unavailable"] += 1
                    await asyncio.sleep(0.05)
                else:
                    outcomes["ok"] += 1
                    await acks.add(sender, value)

        load = [asyncio.create_task(send_until_stopped(s)) for s in senders]
        await acks.each_more()
        before = outcomes["ok"]
        own_cluster.kill(victim.port)
        promoted = await asyncio.to_thread(own_cluster.wait_promoted, victim.port)
        # After the promotion the victim's slot is served again (its scripts reloaded on
        # NOSCRIPT): the load goes on succeeding for every sender.
        served_after = {s: len(acked[s]) for s in senders}
        await acks.each_more(1)
        stop.set()
        await asyncio.gather(*load)  # every call returned: none hangs, none raised otherwise
    finally:
        await runner.aclose()

    assert before > 0 and outcomes["unavailable"] > 0
    assert all(len(acked[s]) > served_after[s] for s in senders)
    assert runner.primary_of(slot_of(victim_key))[1] == promoted.port
    for sender in senders:
        key = probe_key(keys, sender)
        stored = [
            v.decode() for v in await on_node(own_cluster.primary_for_slot(slot_of(key)).port, key)
        ]
        # Never re-sent: no value twice; nothing that was not attempted; order kept.
        assert len(stored) == len(set(stored))
        assert set(stored) <= set(attempted[sender])
        assert stored == sorted(stored, key=lambda v: int(v.rsplit("-", 1)[1]))
        # Acknowledged after the promotion means written on the new primary.
        assert set(acked[sender][served_after[sender] :]) <= set(stored)


async def test_per_sender_order_survives_a_slot_migrated_under_load(
    own_runner: ClusterScriptRunner,
    own_cluster: RedisCluster,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls keep running while the slot moves (served by the source, then ASK, then MOVED):
    each sender's list still holds every acknowledged value once, in order."""
    runner, redis_cluster = own_runner, own_cluster
    # Four senders' lists in one slot (one hash tag), moved together.
    senders = [f"{keys.prefix}{{u:mover}}:probe{i}" for i in range(4)]
    slot = slot_of(senders[0])
    asked: list[int] = []
    original = ClusterScriptRunner._on_node_asking

    async def counting(self: ClusterScriptRunner, node: Any, calls: Any) -> None:
        asked.append(len(calls))
        await original(self, node, calls)

    monkeypatch.setattr(ClusterScriptRunner, "_on_node_asking", counting)
    source = redis_cluster.primary_for_slot(slot)
    target = next(n for n in redis_cluster.primaries() if n.port != source.port)
    acks = Acks(senders)
    acked = acks.values
    stop = asyncio.Event()

    async def send(k: str) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            await run_probe(runner, k, str(n))  # no failure is expected: nothing is down
            await acks.add(k, str(n))

    load = [asyncio.create_task(send(k)) for k in senders]
    source_client, target_client = Redis(port=source.port), Redis(port=target.port)
    try:
        await acks.each_more()
        await command(target_client, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        await command(source_client, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        await acks.each_more()
        # Move the keys one by one while calls go on (MIGRATE is atomic per key).
        for k in senders:
            await command(
                source_client, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", k
            )
            await acks.each_more()  # some served by the source, some by ASK
        await migrate_leftovers(source_client, target.port, slot)
        for primary in redis_cluster.primaries():
            client = Redis(port=primary.port)
            try:
                await command(client, "CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
            finally:
                await client.aclose()
        await acks.each_more()  # by MOVED, then the new owner
    finally:
        stop.set()
        await asyncio.gather(*load)
        await source_client.aclose()
        await target_client.aclose()
    await asyncio.to_thread(redis_cluster.wait_ok)
    assert runner.primary_of(slot)[1] == target.port
    for k in senders:
        stored = [v.decode() for v in await on_node(target.port, k)]
        assert stored == acked[k] and len(stored) >= 2 * (3 + len(senders))
    assert asked  # the ASK path was taken, not only MOVED


async def test_a_timeout_is_unknown_and_never_re_sent(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    """A primary that holds the call past the timeout: the caller hears ``unavailable``
    while the other primary's part of the batch succeeds; the runner does not send the
    call again (the held connection is closed, and Redis drops what it held); the client's
    retry runs it once."""
    runner = await make_runner(redis_cluster, timeout_s=0.3)
    held = probe_key(keys, "alice")
    held_port = redis_cluster.primary_for_slot(slot_of(held)).port
    free = next(
        key
        for key in (probe_key(keys, f"user{i}") for i in range(100))
        if redis_cluster.primary_for_slot(slot_of(key)).port != held_port
    )
    admin = Redis(port=held_port)
    try:
        await admin.client_pause(1_000, all=False)  # writes wait; the pause ends by itself
        results = await asyncio.gather(
            run_probe(runner, held, "once"), run_probe(runner, free, "free"),
            return_exceptions=True,
        )  # fmt: skip
        assert isinstance(results[0], UnavailableError)
        assert results[1] == [b"ok", b"1"]
        # A write of our own waits for the end of the pause: after it, whatever the runner
        # had sent and Redis still held would have run.
        await admin.set(f"{keys.prefix}{{u:alice}}:barrier", "1")
        assert await on_node(held_port, held) == []
        assert await run_probe(runner, held, "once") == [b"ok", b"1"]  # the retry
        assert await on_node(held_port, held) == [b"once"]
    finally:
        await admin.aclose()
        await runner.aclose()


async def test_a_slot_without_a_primary_is_unavailable_and_writes_nothing(
    runner: ClusterScriptRunner, redis_cluster: RedisCluster, keys: Keys
) -> None:
    """CLUSTERDOWN (here: the owner dropped the slot) means the script did not run."""
    key = probe_key(keys, "alice")
    slot = slot_of(key)
    owner = redis_cluster.primary_for_slot(slot)
    admin = Redis(port=owner.port)
    try:
        await command(admin, "CLUSTER", "DELSLOTS", slot)
        with pytest.raises(UnavailableError, match="ClusterDownError"):
            await run_probe(runner, key, "never")
    finally:
        await command(admin, "CLUSTER", "ADDSLOTS", slot)
        await admin.aclose()
    await asyncio.to_thread(redis_cluster.wait_ok)
    assert await on_node(owner.port, key) == []
    assert await run_probe(runner, key, "after") == [b"ok", b"1"]


@pytest.mark.parametrize("spread", ["every primary", "one slot"])
async def test_each_primary_gets_pipelines_of_at_most_the_limit_in_order(
    redis_cluster: RedisCluster, keys: Keys, monkeypatch: pytest.MonkeyPatch, spread: str
) -> None:
    """A lane's batch takes up to the limit for each primary (not in total), and a call
    whose primary is full waits without letting the calls of its slot overtake it."""
    sizes: list[int] = []
    original = ClusterScriptRunner._pipeline

    async def counting(self: ClusterScriptRunner, node: Any, calls: Any, **kw: Any) -> Any:
        sizes.append(len(calls))
        return await original(self, node, calls, **kw)

    monkeypatch.setattr(ClusterScriptRunner, "_pipeline", counting)
    runner = await make_runner(redis_cluster, calls_per_pipeline_max=4, pipelines_in_flight_max=2)
    try:
        if spread == "one slot":
            senders = [f"{keys.prefix}{{u:hot}}:probe{i}" for i in range(5)]
        else:
            senders = [probe_key(keys, f"user{i}") for i in range(30)]
        calls_each = 12
        await asyncio.gather(
            *(
                run_probe(runner, sender, str(n))
                for n, sender in itertools.product(range(calls_each), senders)
            )
        )
    finally:
        await runner.aclose()
    assert sum(sizes) == calls_each * len(senders) and max(sizes) <= 4
    if spread == "every primary":
        # Cut at 4 calls per batch in total, each batch would make three pipelines of
        # about 1.3 calls (some 270 here); cut at 4 per primary, close to 90.
        assert len(sizes) < calls_each * len(senders) / 2
    for sender in senders:
        port = redis_cluster.primary_for_slot(slot_of(sender)).port
        assert await on_node(port, sender) == [str(n).encode() for n in range(calls_each)]
