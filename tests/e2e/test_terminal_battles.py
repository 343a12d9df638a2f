"""The terminal client drives battles and guest gifts: a creator invites a battle and
guests with ``creator --invite/--guest``, the other accepts with ``--accept``, a guest
joins from the viewer prompt and a viewer sends ``rose @guest``."""

from __future__ import annotations

from server.domain.accounts import Role
from server.ledger.ledger import Ledger
from tests.e2e.test_terminal_client import run
from tests.support.servers import ServerProcess, token


async def test_the_terminal_client_drives_a_battle_and_a_guest_gift(
    server: ServerProcess, ledger: Ledger
) -> None:
    for stream, creator in (("left", "host-l"), ("right", "host-r")):
        await ledger.start_stream(stream_id=stream, creator_id=creator, title=stream)
    await ledger.top_up(payment_id="pay-vic", user_id="vic", coins=1000)
    host_l, host_r = token("host-l", Role.CREATOR), token("host-r", Role.CREATOR)

    status, client = await run(
        server,
        host_l,
        ["creator", "--stream", "left", "--invite", "right", "--battle-seconds", "120",
         "--guest", "gina", "--duration", "0.5"],
    )  # fmt: skip
    assert status == 0, client.lines
    (invited,) = client.of("battle_invited")
    assert invited["to_stream"] == "right" and invited["duration_s"] == 120
    assert client.of("guests")[0]["guests"][0]["user_id"] == "gina"

    status, client = await run(
        server, host_r, ["creator", "--stream", "right", "--accept", "left", "--duration", "0.5"]
    )
    assert status == 0, client.lines
    started = client.of("battle")[0]
    assert [s["stream_id"] for s in started["sides"]] == ["left", "right"]

    status, client = await run(
        server, token("gina"), ["viewer", "--stream", "left", "--rate", "0"], stdin="join\n"
    )
    assert status == 0, client.lines
    assert client.of("guests")[0]["guests"][0]["state"] == "on"

    status, client = await run(
        server,
        token("vic"),
        ["viewer", "--stream", "left", "--events", "2", "--rate", "0"],
        stdin="rose @gina\nfinger_heart @*\n",
    )
    assert status == 0, client.lines
    gifts = client.of("gift")
    assert [g["to"] for g in gifts] == ["gina", "*"]
    assert all(g["battle_id"] == started["battle_id"] for g in gifts)
    assert (await ledger.balance("gina")).diamonds == 3  # half of 1 + 5 coins, carried

    status, client = await run(
        server, host_r, ["creator", "--stream", "right", "--end-battle", "--duration", "0.5"]
    )
    assert status == 0, client.lines
    (result,) = client.of("battle_end")
    assert result["winner"] == "left" and result["sides"][0]["score"] == 6
    assert result["sides"][0]["mvp"] == {"user_id": "vic", "coins": 6}
