"""Where a primary's durability fence goes: a slot it serves, found again when it moved."""

from __future__ import annotations

import pytest

from server.ledger.cluster_keys import SLOTS, ClusterKeys, slot_of
from server.ledger.cluster_topology import SlotMap

A, B = ("10.0.0.1", 7000), ("10.0.0.2", 7000)


def test_the_fence_slot_is_served_by_its_primary_and_follows_a_move() -> None:
    slots = SlotMap(["redis://10.0.0.1:7000/0"], timeout_s=1.0, pool_max=1)
    slots.owners = [A] * (SLOTS // 2) + [B] * (SLOTS // 2)
    first = slots.fence_slot(A)
    assert slots.owners[first] == A and slots.owners[slots.fence_slot(B)] == B
    slots.owners[first] = B  # the slot moved (a MOVED reply corrects the map at once)
    moved = slots.fence_slot(A)
    assert moved != first and slots.owners[moved] == A
    # The key is in that slot, so the primary accepts it.
    assert slot_of(ClusterKeys("p:").fence_shard(moved)) == moved
    with pytest.raises(ValueError):
        slots.fence_slot(("10.0.0.3", 7000))  # serves nothing: never routed to
