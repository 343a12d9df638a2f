"""The Lua loader's ``-- include:`` lines: fragments shared by scripts (for instance by the
single-node gift script and the cluster's credit leg) are prepended once, in order."""

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
