"""judge_loss: which replies of one check mean that Redis lost data (pure)."""

from __future__ import annotations

from typing import Any

from server.ledger.watch import judge_loss

SEEN = (1000, 2)
MARKER = b"abc"


def _info(last: str, first: str | None, length: int, deleted: str = "0-0") -> dict[str, Any]:
    return {
        "last-generated-id": last.encode(),
        "first-entry": (first.encode(), {}) if first else None,
        "length": length,
        "max-deleted-entry-id": deleted.encode(),
    }


def test_everything_present_is_no_loss() -> None:
    info = _info("1000-5", "900-0", 10)
    assert judge_loss(MARKER, MARKER, info, [(SEEN, [(b"1000-2", {})])]) is None


def test_a_gone_or_changed_marker_is_a_loss() -> None:
    info = _info("1000-5", "900-0", 10)
    assert "gone" in (judge_loss(MARKER, None, info, []) or "")
    assert "changed" in (judge_loss(MARKER, b"xyz", info, []) or "")
    assert judge_loss(None, b"xyz", info, []) is None  # never primed: nothing to compare


def test_a_missing_entry_is_a_loss_even_when_newer_ones_exist() -> None:
    assert "missing" in (
        judge_loss(MARKER, MARKER, _info("2000-0", "900-0", 3), [(SEEN, [])]) or ""
    )
    assert "missing" in (judge_loss(MARKER, MARKER, _info("999-0", "900-0", 3), [(SEEN, [])]) or "")
    assert "log is gone" in (judge_loss(MARKER, MARKER, None, [(SEEN, [])]) or "")


def test_trimmed_or_deleted_entries_are_not_a_loss() -> None:
    trimmed_past = _info("3000-0", "2000-0", 5)
    trimmed_to_nothing = _info("3000-0", None, 0)
    deleted = _info("3000-0", "900-0", 5, deleted="1000-2")
    for info in (trimmed_past, trimmed_to_nothing, deleted):
        assert judge_loss(MARKER, MARKER, info, [(SEEN, [])]) is None
    # Emptied, but Redis never generated the entry: lost, not trimmed.
    assert judge_loss(MARKER, MARKER, _info("999-0", None, 0), [(SEEN, [])]) is not None
