"""The ``resume`` message with and without its epoch."""

from __future__ import annotations

import pytest

from server.domain.errors import ErrorCode
from server.protocol.messages import ProtocolError, Resume, parse_message


def test_resume_in_the_old_bare_form_counts_in_the_current_epoch() -> None:
    assert parse_message({"type": "resume", "since": 5}) == Resume(5, None)


@pytest.mark.parametrize("epoch", ["", "a1b2c3", "x" * 64])
def test_resume_with_an_epoch(epoch: str) -> None:
    assert parse_message({"type": "resume", "since": 5, "epoch": epoch}) == Resume(5, epoch)


@pytest.mark.parametrize("epoch", [None, 5, "a b", "x" * 65, ["e"], "é"])
def test_resume_with_a_bad_epoch_is_invalid_request(epoch: object) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_message({"type": "resume", "since": 5, "epoch": epoch})
    assert refused.value.code is ErrorCode.INVALID_REQUEST
