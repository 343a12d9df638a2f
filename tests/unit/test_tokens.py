"""Access tokens: the read-only overlay role names its one stream."""

from __future__ import annotations

import jwt
import pytest

from server.domain.accounts import Identity, Role
from server.domain.errors import RequestError
from server.web.auth import issue_token, verify_token

SECRET = "s" * 40


def test_an_overlay_token_may_watch_only_its_stream_and_is_read_only() -> None:
    who = verify_token(SECRET, issue_token(SECRET, "o", Role.OVERLAY, stream="demo"))
    assert who == Identity("o", Role.OVERLAY, "o", "demo")
    assert who.read_only
    assert who.may_watch("demo") and not who.may_watch("demo-2")


@pytest.mark.parametrize("role", [Role.VIEWER, Role.CREATOR, Role.ADMIN])
def test_other_roles_may_watch_any_stream_and_write(role: Role) -> None:
    who = verify_token(SECRET, issue_token(SECRET, "u", role))
    assert who.watch_stream is None and not who.read_only and who.may_watch("anything")


def test_a_stream_scope_belongs_to_overlay_tokens_only() -> None:
    with pytest.raises(ValueError):
        issue_token(SECRET, "o", Role.OVERLAY)
    with pytest.raises(ValueError):
        issue_token(SECRET, "u", Role.CREATOR, stream="demo")


def test_a_stream_claim_on_another_role_scopes_nothing() -> None:

    token = jwt.encode(
        {"sub": "u", "role": "viewer", "stream": "demo", "exp": 2**40}, SECRET, algorithm="HS256"
    )
    assert verify_token(SECRET, token).watch_stream is None


def test_an_overlay_claim_without_a_valid_stream_is_unauthorized() -> None:

    for stream in (None, "", "no spaces", 7):
        claims: dict[str, object] = {"sub": "o", "role": "overlay", "exp": 2**40}
        if stream is not None:
            claims["stream"] = stream
        with pytest.raises(RequestError) as refused:
            verify_token(SECRET, jwt.encode(claims, SECRET, algorithm="HS256"))
        assert refused.value.code == "unauthorized"
