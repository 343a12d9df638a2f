"""Which node of a shard a process subscribes a room on: the spread over replicas, what a
replica leaving moves, the primary as fallback, and the audit's rule (``shard_nodes``)."""

from __future__ import annotations

from collections import Counter

from server.broker.shard_nodes import SubscribeRole, candidates, rank, serves
from server.ledger.cluster_keys import SLOTS
from server.ledger.cluster_topology import parse_slots

PRIMARY = ("10.0.0.1", 7000)
REPLICAS = [("10.0.0.2", 7000), ("10.0.0.3", 7000), ("10.0.0.4", 7000)]
PROCESSES = [f"process{n}" for n in range(600)]
REPLICA, ON_PRIMARY = SubscribeRole.REPLICA, SubscribeRole.PRIMARY


def first_choice(replicas: list[tuple[str, int]]) -> dict[str, tuple[str, int]]:
    return {p: candidates(REPLICA, p, PRIMARY, replicas)[0] for p in PROCESSES}


def test_processes_spread_evenly_over_a_shards_replicas() -> None:
    shares = Counter(first_choice(REPLICAS).values())
    assert set(shares) == set(REPLICAS)
    # 600 processes over 3 replicas: 200 each, give or take what hashing gives.
    assert all(150 <= count <= 250 for count in shares.values()), shares


def test_a_process_always_makes_the_same_choice_whatever_the_replicas_order() -> None:
    assert first_choice(REPLICAS) == first_choice(list(reversed(REPLICAS)))


def test_a_replica_leaving_moves_only_the_processes_that_were_on_it() -> None:
    before, after = first_choice(REPLICAS), first_choice(REPLICAS[:2])
    moved = {p for p in PROCESSES if before[p] != after[p]}
    assert moved == {p for p in PROCESSES if before[p] == REPLICAS[2]}
    # They spread over the remaining two, not all onto one.
    assert len(Counter(after[p] for p in moved)) == 2


def test_the_primary_is_the_last_candidate_and_the_fallback() -> None:
    ranked = candidates(REPLICA, "p", PRIMARY, REPLICAS)
    assert ranked[-1] == PRIMARY and sorted(ranked[:-1]) == sorted(REPLICAS)
    assert ranked[:-1] == rank("p", REPLICAS)
    held = {ranked[0]}
    assert candidates(REPLICA, "p", PRIMARY, REPLICAS, held) == [*ranked[1:]]
    assert candidates(REPLICA, "p", PRIMARY, []) == [PRIMARY]
    assert candidates(REPLICA, "p", PRIMARY, REPLICAS[:1], set(REPLICAS)) == [PRIMARY]
    assert candidates(ON_PRIMARY, "p", PRIMARY, REPLICAS) == [PRIMARY]


def test_a_room_is_in_the_right_place_on_any_replica_of_its_shard_in_the_chosen_role() -> None:
    other_shard = ("10.0.0.9", 7000)
    assert all(serves(REPLICA, r, PRIMARY, REPLICAS) for r in REPLICAS)
    assert not serves(REPLICA, other_shard, PRIMARY, REPLICAS)  # moved to another shard
    assert not serves(REPLICA, PRIMARY, PRIMARY, REPLICAS)  # a replica is up: move there
    assert serves(REPLICA, PRIMARY, PRIMARY, [])  # none listed (a promotion, all dead)
    assert serves(REPLICA, PRIMARY, PRIMARY, REPLICAS[:1], set(REPLICAS))  # all held back
    assert serves(ON_PRIMARY, PRIMARY, PRIMARY, REPLICAS)
    assert not serves(ON_PRIMARY, REPLICAS[0], PRIMARY, REPLICAS)


def test_the_slot_map_keeps_each_slots_replicas() -> None:
    half = SLOTS // 2
    reply = [
        [0, half - 1, [b"10.0.0.1", 7000, b"id1", {}], [b"10.0.0.2", 7001, b"id2", {}],
         [b"", 7002, b"id3", {}]],
        [half, SLOTS - 1, [b"10.0.0.5", 7000, b"id5", {}]],
    ]  # fmt: skip
    owners, replicas = parse_slots(reply, "10.0.0.7")
    assert owners[0] == owners[half - 1] == ("10.0.0.1", 7000)
    assert replicas[0] == (("10.0.0.2", 7001), ("10.0.0.7", 7002))  # no host: the one asked
    assert owners[half] == ("10.0.0.5", 7000) and replicas[SLOTS - 1] == ()
    assert parse_slots(reply[:1], "h")[0][half] is None  # a slot nobody serves
