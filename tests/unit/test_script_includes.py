"""The Lua loader's ``-- include:`` lines: fragments shared by scripts (for instance by the
single-node gift script and the cluster's credit leg) are prepended once, in order."""

import re
from importlib import resources

from server.ledger.scripts import ScriptName, includes, load_scripts


def test_leading_include_lines_are_collected_in_order_once() -> None:
    body = b"-- include: _b.lua\n-- comment\n-- include: _a.lua\n-- include: _b.lua\nlocal x = 1\n"
    assert includes(body) == ["_b.lua", "_a.lua"]


def test_include_lines_after_the_header_are_ignored() -> None:
    body = b"-- header\nlocal x = 1\n-- include: _a.lua\n"
    assert includes(body) == []


def test_a_name_that_is_not_a_fragment_is_not_an_include() -> None:
    assert includes(b"-- include: send_gift.lua\n-- include: ../x.lua\n") == []


def test_every_script_starts_with_the_prelude_and_its_fragments() -> None:
    scripts = load_scripts()
    for name in ScriptName:
        source = scripts[name].source
        assert source.startswith(b"#!lua\n")
        assert b"local function int_arg" in source
    assert not load_scripts(shebang=False)[ScriptName.SEND_GIFT].source.startswith(b"#!")


def test_every_fragment_function_a_script_calls_is_defined_before_the_call() -> None:
    """A fragment's function called by a script (or by another fragment it includes, as
    _guests.lua calls _gift_rules.lua's gift_split) must be defined earlier in that script's
    source: else Redis raises on the call, only when that branch runs."""
    fragments = resources.files("server.ledger").joinpath("scripts")
    defined = {
        name
        for path in fragments.iterdir()
        if path.name.startswith("_")
        for name in re.findall(rb"^local function (\w+)", path.read_bytes(), re.M)
    }
    for script in load_scripts().values():
        for name in defined:
            calls = [m.start() for m in re.finditer(rb"\b" + name + rb"\(", script.source)]
            definition = script.source.find(b"local function " + name + b"(")
            assert all(definition != -1 and definition < at for at in calls), (
                f"{script.name} calls {name.decode()} without (or before) its fragment"
            )
