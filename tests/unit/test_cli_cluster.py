"""Commands that need the single-node ledger refuse cluster mode before touching Redis."""

from __future__ import annotations

import pytest

from server.cli import main


@pytest.mark.parametrize("command", ["demo"])
def test_single_node_commands_refuse_cluster_mode(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 1 is never listened on: a command that tried to connect would fail otherwise.
    monkeypatch.setenv("GIFTWIRE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("GIFTWIRE_REDIS_CLUSTER", "true")
    assert main([command]) == 2
    assert f"{command} is not yet supported on a Redis Cluster" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["reconcile"], ["relay", "--once"]])
def test_cluster_commands_say_when_the_cluster_is_unreachable(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GIFTWIRE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("GIFTWIRE_REDIS_CLUSTER", "true")
    assert main(command) == 3
    assert "cannot reach the cluster" in capsys.readouterr().err


def test_relay_refuses_single_node_mode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GIFTWIRE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("GIFTWIRE_REDIS_CLUSTER", raising=False)
    assert main(["relay"]) == 2
    assert "cluster mode only" in capsys.readouterr().err
