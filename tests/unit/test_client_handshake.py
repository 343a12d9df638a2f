"""The Python client's handshake list agrees with what the server accepts."""

from __future__ import annotations

from client_demo.wire import subprotocols
from server.protocol.codec import SUBPROTOCOLS
from server.web.auth import bearer_from_subprotocols


def test_every_wire_format_the_client_offers_is_one_the_server_speaks() -> None:
    for fmt in ("json", "msgpack"):
        offered = subprotocols("t0k3n", fmt)
        assert offered[0] in SUBPROTOCOLS and SUBPROTOCOLS[offered[0]].value == fmt
        assert bearer_from_subprotocols(offered) == "t0k3n"
