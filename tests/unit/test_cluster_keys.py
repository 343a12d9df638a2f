"""Cluster-mode key names: every leg inside one slot, shards next to their accounts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.errors import InvariantError
from server.ledger.cluster_keys import SLOTS, ClusterKeys, slot_of, slot_tag, transfer_id
from server.ledger.keys import Keys

ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)


def test_every_slot_has_a_tag_that_hashes_to_it() -> None:
    tags = [slot_tag(slot) for slot in range(SLOTS)]
    assert [slot_of(f"x{{{tag}}}y") for tag in tags] == list(range(SLOTS))
    assert len(set(tags)) == SLOTS and all(tag.startswith("~") for tag in tags)
    with pytest.raises(InvariantError):
        slot_tag(SLOTS)


@given(sender=ids, creator=ids, stream=ids, client_id=ids)
def test_each_leg_stays_in_one_slot(sender: str, creator: str, stream: str, client_id: str) -> None:
    keys = ClusterKeys("t:")
    debit = keys.debit_keys(sender, client_id)
    assert {slot_of(key) for key in debit} == {slot_of(keys.account(sender))}
    credit = [
        *keys.credit_keys(creator, stream),
        keys.credit_receipt(creator, transfer_id(sender, client_id, "1-0")),
        keys.combo(creator, stream, sender, "rose"),
        *keys.credit_tail_keys(creator, stream),
    ]
    assert {slot_of(key) for key in credit} == {slot_of(keys.account(creator))}
    assert len(set(debit)) == len(debit) and len(set(credit)) == len(credit)


@given(a=ids, b=ids, c=ids, d=ids)
def test_transfer_ids_are_unambiguous(a: str, b: str, c: str, d: str) -> None:
    # Ids may contain ':' and '.', so the separator must be outside their alphabet.
    assert (transfer_id(a, b, "1-0") == transfer_id(c, d, "1-0")) == ((a, b) == (c, d))


def test_no_global_key_on_the_hot_path() -> None:
    keys = ClusterKeys()
    # Two senders in different slots write different platform, log and catalog shards.
    alice, bob = "alice", "bob"
    assert slot_of(keys.account(alice)) != slot_of(keys.account(bob))
    assert set(keys.debit_keys(alice, "g1")).isdisjoint(keys.debit_keys(bob, "g1"))
    assert set(keys.credit_keys(alice, "s")).isdisjoint(keys.credit_keys(bob, "s"))
    assert set(keys.credit_tail_keys(alice, "s")).isdisjoint(keys.credit_tail_keys(bob, "s"))
    assert len(set(keys.platform_shards())) == SLOTS


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(InvariantError):
        ClusterKeys("gw:{x}:")


def test_single_node_names_are_unchanged() -> None:
    keys = Keys()
    assert keys.account("u") == "gw:{u:u}:acct"
    assert keys.gift_receipt("u", "c") == "gw:{u:u}:gift:c"
    assert keys.stream("s") == "gw:{s:s}:stream"
    assert keys.feed("s") == "gw:{s:s}:feed"
    assert keys.platform() == "gw:{platform}:acct"
    assert keys.ledger() == "gw:{ledger}:log"
    assert keys.catalog() == "gw:{catalog}:prices"
