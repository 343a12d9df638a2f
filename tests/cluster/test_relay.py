"""The relay settles what the fast path left in the outboxes, exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from server.domain.errors import UnavailableError
from server.domain.limits import AMOUNT_MAX
from server.ledger.cluster_credits import CreditResult, Transfer
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.cluster_relay import GROUP, Relay
from server.ledger.keys import Keys
from tests.cluster.legs import funded, gift, live_stream, open_ledger
from tests.support.cluster import RedisCluster


@pytest.fixture
async def crashed(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    """A process whose every credit fails after its debit (it died between the legs)."""
    ledger = await open_ledger(redis_cluster, keys.prefix)

    async def died(transfer: Transfer) -> CreditResult:
        raise UnavailableError("died between the legs")

    ledger.credits.credit = died  # type: ignore[method-assign]
    yield ledger
    await ledger.aclose()


@pytest.fixture
async def survivor(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    yield ledger
    await ledger.aclose()


async def _debited_only(ledger: ClusterLedger, senders: int, gifts: int) -> tuple[str, str]:
    stream, creator = await live_stream(ledger)
    users = [await funded(ledger, 100) for _ in range(senders)]
    for user in users:
        for _ in range(gifts):
            with pytest.raises(UnavailableError):
                await gift(ledger, user, stream, creator, gift_id="finger_heart")
    return stream, creator


async def _settle(relay: Relay, rounds: int = 20) -> None:
    for _ in range(rounds):
        await relay.round()
        if relay.stats.pending == 0:
            return
    raise AssertionError(f"still pending: {relay.stats}")


async def test_the_relay_credits_what_a_crashed_process_debited(
    crashed: ClusterLedger, survivor: ClusterLedger
) -> None:
    stream, creator = await _debited_only(crashed, senders=6, gifts=3)
    report = await reconcile_cluster(survivor)
    assert report.problems == [] and len(report.pending) == 18
    assert all(p.age_ms >= 0 for p in report.pending)
    relay = Relay(survivor, grace_ms=0, full_sweep_s=0)
    await relay.round()
    assert relay.stats.settled == 18
    await _settle(relay)
    report = await reconcile_cluster(survivor)
    assert report.problems == [] and report.pending == []
    assert report.totals["outbox_entries"] == 0
    assert (await survivor.balance(creator)).diamonds == 18 * 5 // 2
    info = await survivor.stream(stream)
    assert info is not None and info.last_sequence == 18
    assert await relay.round() == 0  # nothing left, nothing credited twice


async def test_a_relay_killed_mid_batch_leaves_its_entries_to_another(
    crashed: ClusterLedger, survivor: ClusterLedger
) -> None:
    _, creator = await _debited_only(crashed, senders=1, gifts=8)
    dying = Relay(survivor, consumer="dying", grace_ms=0, full_sweep_s=0)
    real = survivor.credit_transfers

    async def half_then_die(transfers: list[Transfer]) -> list[CreditResult]:
        await real(transfers[: len(transfers) // 2])
        raise RuntimeError("kill -9 before XACK")

    survivor.credit_transfers = half_then_die  # type: ignore[method-assign]
    await dying.round()
    assert dying.settled == 0
    survivor.credit_transfers = real  # type: ignore[method-assign]
    assert (await survivor.balance(creator)).diamonds == 4 * 5 // 2
    # The dead relay's entries are pending in its name; after the grace another takes them.
    heir = Relay(survivor, consumer="heir", grace_ms=0, full_sweep_s=0)
    await _settle(heir)
    assert heir.settled == 8  # four credited now, four replayed
    report = await reconcile_cluster(survivor)
    assert report.problems == [] and report.pending == []
    assert (await survivor.balance(creator)).diamonds == 8 * 5 // 2


async def test_entries_the_fast_path_settled_leave_the_group_by_themselves(
    survivor: ClusterLedger,
) -> None:
    stream, creator = await live_stream(survivor)
    sender = await funded(survivor, 100)
    released = asyncio.Event()
    real = survivor.credits.credit

    async def slow(transfer: Transfer) -> CreditResult:
        await released.wait()
        return await real(transfer)

    survivor.credits.credit = slow  # type: ignore[method-assign]
    sending = asyncio.create_task(gift(survivor, sender, stream, creator))
    await asyncio.sleep(0.05)
    survivor.unsettled_slots.add(_sender_slot(survivor, sender))
    relay = Relay(survivor, grace_ms=60_000, full_sweep_s=3600)
    await relay.full_sweep()
    await relay.round()  # reads the entry into the group, too young to credit
    assert relay.settled == 0 and relay.stats.pending == 1
    released.set()
    await sending
    await asyncio.sleep(0.05)
    relay.grace_ms = 0
    await relay.round()
    outbox = survivor.keys.outbox_shard(_sender_slot(survivor, sender))
    assert relay.hot == set()
    summary = await survivor.command(outbox, "XPENDING", GROUP)
    assert summary["pending"] == 0
    report = await reconcile_cluster(survivor)
    assert report.problems == [] and report.pending == []


def _sender_slot(ledger: ClusterLedger, sender: str) -> int:
    return slot_of(ledger.keys.account(sender))


async def test_stats_count_the_pending_transfers_and_their_age(
    crashed: ClusterLedger,
) -> None:
    await _debited_only(crashed, senders=2, gifts=2)
    relay = Relay(crashed, grace_ms=0, full_sweep_s=0)
    await relay.round()  # its credits fail too: nothing settles
    assert relay.stats.pending == 4 and relay.stats.settled == 0
    assert relay.stats.lag_ms >= 0


async def test_entries_that_stay_refused_do_not_block_the_ones_behind(
    crashed: ClusterLedger, survivor: ClusterLedger
) -> None:
    """A creator at the largest balance refuses its credits; gifts from the same sender to
    another creator, debited after them, are still settled."""
    sender = await funded(crashed, 100)
    full_stream, full = await live_stream(crashed)
    stream, creator = await live_stream(crashed)
    await crashed.command(crashed.keys.account(full), "HSET", "diamonds", AMOUNT_MAX)
    for target in [(full_stream, full)] * 4 + [(stream, creator)] * 3:
        with pytest.raises(UnavailableError):
            await gift(crashed, sender, *target, gift_id="finger_heart")
    relay = Relay(survivor, grace_ms=0, full_sweep_s=0, batch_max=2)
    for _ in range(8):
        await relay.round()
    assert (await survivor.balance(creator)).diamonds == 3 * 5 // 2
    assert relay.settled == 3 and relay.stats.pending == 4
    report = await reconcile_cluster(survivor)
    assert len(report.pending) == 4  # left for an operator, never lost or doubled


async def test_one_broken_transfer_does_not_fail_its_batch(
    crashed: ClusterLedger, survivor: ClusterLedger
) -> None:
    stream, creator = await live_stream(crashed)
    broken, fine = await funded(crashed, 100), await funded(crashed, 100)
    for sender in (broken, fine, fine):
        with pytest.raises(UnavailableError):
            await gift(crashed, sender, stream, creator, gift_id="finger_heart")
    combo = survivor.keys.combo(creator, stream, broken, "finger_heart")
    await survivor.command(combo, "SET", "not a number")
    relay = Relay(survivor, grace_ms=0, full_sweep_s=0)
    for _ in range(3):
        await relay.round()
    assert relay.settled == 2 and relay.stats.pending == 1
    info = await survivor.stream(stream)
    assert info is not None and info.last_sequence == 2


def count_sweeps(ledger: ClusterLedger, swept: list[int]) -> None:
    """Record the number of outboxes each XLEN sweep of ``ledger`` reads."""
    lengths = ledger.shards.lengths

    async def counted(outboxes: Sequence[str]) -> dict[str, int]:
        swept.append(len(outboxes))
        return await lengths(outboxes)

    ledger.shards.lengths = counted  # type: ignore[method-assign]


async def test_one_relay_sweeps_every_outbox_per_period_and_the_others_read_its_list(
    crashed: ClusterLedger, survivor: ClusterLedger, redis_cluster: RedisCluster, keys: Keys
) -> None:
    await _debited_only(crashed, senders=3, gifts=1)
    left = set(crashed.unsettled_slots)
    crashed.unsettled_slots.clear()
    other = await open_ledger(redis_cluster, keys.prefix)
    try:
        relays = [Relay(ledger, grace_ms=0, full_sweep_s=30) for ledger in (survivor, other)]
        swept: list[int] = []
        for relay in relays:
            count_sweeps(relay.ledger, swept)
        await asyncio.gather(*(relay.full_sweep() for relay in relays))
        # One of them read the 16384 lengths and published the slots; the other, one GET.
        assert swept == [16384] and sorted(r.sweeps for r in relays) == [0, 1]
        sweeper = next(r for r in relays if r.sweeps)
        reader = next(r for r in relays if not r.sweeps)
        if not reader.hot:  # it read the list before the sweeper wrote it: next read
            await reader.read_hot_list()
        assert sweeper.hot == reader.hot == left
        await _settle(reader)
        report = await reconcile_cluster(survivor)
        assert report.problems == [] and report.pending == []
    finally:
        await other.aclose()


async def test_a_sweeper_that_died_holding_the_lease_is_replaced_after_its_period(
    crashed: ClusterLedger, survivor: ClusterLedger
) -> None:
    await _debited_only(crashed, senders=2, gifts=1)
    left = set(crashed.unsettled_slots)
    crashed.unsettled_slots.clear()
    # A relay took this period's lease and died before it swept or published anything.
    lease = survivor.keys.relay_sweep_lease()
    assert await survivor.command(lease, "SET", "dead-relay", "NX", "PX", 1000)
    relay = Relay(survivor, grace_ms=0, full_sweep_s=1.0, interval_s=0.05)
    await relay.round()
    assert relay.sweeps == 0 and relay.hot == set()  # the lease is the dead one's
    while not relay.sweeps:  # it tries again five times a period
        await asyncio.sleep(0.05)
        await relay.round()
    await _settle(relay)  # only its own sweep could have found them
    assert relay.settled == 2 and left
    assert (await reconcile_cluster(survivor)).pending == []
