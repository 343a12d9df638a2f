"""``giftwire --help``: plain text, and every option says its default."""

from __future__ import annotations

import argparse

import pytest

from server.cli import build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_the_top_level_help_has_no_markup() -> None:
    text = build_parser().format_help()
    assert "``" not in text and "giftwire" in text
    for command in ("serve", "demo", "token", "reconcile", "settings"):
        assert command in text


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_option_shows_its_default(command: str) -> None:
    parser = _subparsers()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.default is argparse.SUPPRESS:
            continue
        shown = formatter._expand_help(action) if action.help else ""
        assert "``" not in shown
        if action.default is None:
            # No default value: the help says what happens without the option.
            assert shown, f"{command} {action.option_strings[0]} has no help"
        else:
            assert "(default: " in shown, f"{command} {action.option_strings[0]}: {shown!r}"
