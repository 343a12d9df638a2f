"""The embedded PostgreSQL: a private server in a data folder, started as root or not."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from server.record import embedded
from server.record.embedded import EmbeddedPostgresError, PostgresProcess

REPO = Path(__file__).resolve().parents[2]


def test_a_database_is_ready_to_use(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE t (n bigint PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        total = conn.execute("SELECT sum(n) FROM t").fetchone()
    assert total == (3,)


def test_it_runs_under_a_parent_folder_others_cannot_enter(tmp_path: Path) -> None:
    # pytest's temp folders sit under a 0700 folder of root's: PostgreSQL, which refuses to
    # run as root, still starts in one.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    with (
        PostgresProcess(locked / "pg", fsync=False) as server,
        psycopg.connect(server.url()) as conn,
    ):
        row = conn.execute("SELECT current_user").fetchone()
    assert row == ("giftwire",)


def test_committed_rows_survive_kill_9_and_initdb_runs_once(own_postgres: PostgresProcess) -> None:
    url = own_postgres.create_database("kept")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE t (n bigint)")
        conn.execute("INSERT INTO t VALUES (42)")
    version = (own_postgres.data_dir / "PG_VERSION").stat().st_mtime_ns
    own_postgres.kill()
    own_postgres.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT n FROM t").fetchall() == [(42,)]
    assert (own_postgres.data_dir / "PG_VERSION").stat().st_mtime_ns == version


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: its parent (init here) has not reaped it yet.
    status = Path(f"/proc/{pid}/status").read_text()
    return "\nState:\tZ" not in status


def test_postgres_dies_with_its_parent(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from server.record.embedded import PostgresProcess\n"
        "p = PostgresProcess(Path(sys.argv[1]), fsync=False, die_with_parent=True)\n"
        "p.start()\n"
        "print(p.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "pg")],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    postmaster = int(parent.stdout.readline())
    assert _alive(postmaster)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 20
    while _alive(postmaster) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(postmaster)


@pytest.mark.skipif(os.geteuid() != 0, reason="the root case needs root")
def test_as_root_the_data_folder_stays_ours(own_postgres: PostgresProcess) -> None:
    # PostgreSQL checks this itself and would not have started; the data stays ours.
    assert own_postgres.data_dir.stat().st_uid == os.geteuid()


@pytest.fixture
def without_user_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("the system-account fallback is only used as root")
    monkeypatch.setattr(embedded, "_user_namespaces_work", lambda: False)


@pytest.mark.usefixtures("without_user_namespaces")
def test_without_user_namespaces_it_runs_as_a_system_account() -> None:
    parent = Path(tempfile.mkdtemp(prefix="giftwire-pg-"))
    try:
        parent.chmod(0o711)
        with (
            PostgresProcess(parent / "pg", fsync=False) as server,
            psycopg.connect(server.url()) as conn,
        ):
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert server.process is not None
            uid = Path(f"/proc/{server.process.pid}/status").read_text().split("\nUid:\t")[1]
        assert int(uid.split()[0]) != 0
    finally:
        shutil.rmtree(parent)


@pytest.mark.usefixtures("without_user_namespaces")
def test_without_user_namespaces_an_unreachable_folder_is_named(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    with pytest.raises(EmbeddedPostgresError, match="not searchable by others"):
        PostgresProcess(locked / "pg", fsync=False).start()
