"""Pure parts of the cluster support: node addresses and the fixture's CLUSTER NODES parser."""

from __future__ import annotations

import pytest

from server.domain.errors import InvariantError
from server.ledger.cluster_topology import address_of
from tests.support.cluster import _parse_nodes


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://10.0.0.7:7000/0", ("10.0.0.7", 7000)),
        ("redis://user:secret@node-1.internal:6380", ("node-1.internal", 6380)),
        ("rediss://[::1]:7001/0", ("[::1]", 7001)),
        ("127.0.0.1:7002", ("127.0.0.1", 7002)),
    ],
)
def test_node_addresses(url: str, address: tuple[str, int]) -> None:
    assert address_of(url) == address


@pytest.mark.parametrize("url", ["redis://host", "redis://:7000", "redis://host:port"])
def test_a_url_without_host_and_port_is_refused(url: str) -> None:
    with pytest.raises(InvariantError):
        address_of(url)


def test_cluster_nodes_lines() -> None:
    text = (
        "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-b2]\n"
        "b2 127.0.0.1:7001@17001 master,fail - 0 0 2 connected 5461-10922 16000\n"
        "c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n"
    )
    primary, failed, replica = _parse_nodes(text)
    assert primary.is_primary and not primary.failed and primary.slots == ((0, 5460),)
    assert failed.failed and failed.slots == ((5461, 10922), (16000, 16000))
    assert not replica.is_primary and replica.primary_id == "a1" and replica.slots == ()
    assert replica.port == 7002
