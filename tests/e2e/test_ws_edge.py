"""The WebSocket edge against a real server process: how it closes what it refuses."""

from __future__ import annotations

import contextlib

import pytest
from websockets.exceptions import ConnectionClosed

from server.ledger.ledger import Ledger
from tests.support.servers import ServerProcess, client, token

STREAM = "edge"
FRAGMENT = "x" * 1024
FRAGMENTS = 2 * 1024  # 2 MiB in all, 512 times GIFTWIRE_FRAME_BYTES_MAX


@pytest.mark.parametrize("attempt", range(3))
async def test_a_fragmented_oversized_message_gets_a_1009_close_frame(
    server: ServerProcess, ledger: Ledger, attempt: int
) -> None:
    """Issue #11 item 14: the client is still streaming fragments when the server refuses
    the message. It must read the 1009 close frame, not lose it to a TCP reset (1006).
    Three attempts: the reset raced the close frame, so one attempt could pass by luck."""
    await ledger.start_stream(stream_id=STREAM, creator_id="creator", title="edge")
    await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=100)
    async with client(server, STREAM, token("alice")) as alice:
        # The send may finish (the server reads and discards the rest) or fail part way.
        with contextlib.suppress(ConnectionClosed):
            await alice.ws.send(FRAGMENT for _ in range(FRAGMENTS))
        await alice.ws.wait_closed()
        assert alice.ws.close_code == 1009
        assert alice.ws.protocol.close_rcvd is not None  # a frame, not a code made up locally
    assert (await ledger.balance("alice")).coins == 100
