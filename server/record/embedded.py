"""Run a private PostgreSQL: for the server's embedded default and for the tests.

The binaries are ``initdb``/``postgres`` from PATH, else the newest under
``/usr/lib/postgresql/*/bin`` (Debian's layout), else the ones inside the ``pgserver``
wheel (``pip install 'giftwire[embedded]'``).

PostgreSQL refuses to run as root, and CI runs as root. Two ways out, tried in order:

1. **A user namespace** (Linux): the child enters a new user namespace in which our own
   uid is mapped to uid 1. PostgreSQL sees a non-root user; the kernel still sees us, so the
   data folder may live anywhere we can write (a pytest temp folder under a ``0700``
   parent included) and every file stays ours, to read, copy and delete.
2. **An unprivileged system account** (``postgres`` if it exists, else ``nobody``), with
   the data folder handed to it. Every folder above the data must then be searchable by that
   account; if one is not, start() says which.

The server listens on 127.0.0.1 only (no Unix socket) and trusts local connections, like the
embedded redis-server: it is for development, demos and tests. Production points
``GIFTWIRE_DATABASE_URL`` at a managed PostgreSQL.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from server.domain.errors import GiftwireError
from server.ledger.embedded import free_port

SUPERUSER = "giftwire"
"""The cluster's superuser, made by initdb; the embedded server's URLs connect as it."""
_CLONE_NEWUSER = 0x10000000
_PR_SET_PDEATHSIG = 1
_INNER_ID = 1
"""The uid/gid our own ids appear as inside the user namespace (PostgreSQL only needs it
to be non-zero)."""
_FALLBACK_ACCOUNTS = ("postgres", "nobody")


class EmbeddedPostgresError(GiftwireError):
    """The private PostgreSQL could not be found or started."""


def find_postgres_bin() -> Path:
    """The folder holding ``initdb`` and ``postgres``, or raise with what to install."""
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    # Located without importing it: its import has side effects (and warnings) we do not need.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        wheel_bin = Path(spec.origin).parent / "pginstall" / "bin"
        if (wheel_bin / "postgres").exists():
            return wheel_bin
    raise EmbeddedPostgresError(
        "no PostgreSQL found: install it (apt-get install postgresql) "
        "or the fallback with pip install 'giftwire[embedded]'"
    )


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _enter_user_namespace(outer_uid: int, outer_gid: int) -> None:
    """In the child, before exec: become uid/gid 1 of a new user namespace."""
    if _libc().unshare(_CLONE_NEWUSER) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    Path("/proc/self/uid_map").write_text(f"{_INNER_ID} {outer_uid} 1\n")
    Path("/proc/self/setgroups").write_text("deny\n")
    Path("/proc/self/gid_map").write_text(f"{_INNER_ID} {outer_gid} 1\n")


def _die_with_parent(signum: int) -> None:
    """Ask Linux to send ``signum`` to the child when its parent dies, so that a ``kill -9``
    of giftwire does not leave an orphaned postgres behind. Set after any change of
    credentials, which would clear it."""
    # Not Linux: the embedded PostgreSQL outlives a hard-killed parent.
    with contextlib.suppress(OSError, AttributeError):
        _libc().prctl(_PR_SET_PDEATHSIG, signum)


@functools.cache
def _user_namespaces_work() -> bool:
    uid, gid = os.geteuid(), os.getegid()
    try:
        subprocess.run(
            ["true"], preexec_fn=lambda: _enter_user_namespace(uid, gid), check=True, timeout=10
        )
    except (subprocess.SubprocessError, OSError):
        return False
    return True


def _fallback_account() -> pwd.struct_passwd:
    for name in _FALLBACK_ACCOUNTS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise EmbeddedPostgresError("running as root without user namespaces or a nobody account")


def _check_searchable(path: Path, account: pwd.struct_passwd) -> None:
    for folder in [path, *path.parents]:
        mode = folder.stat()
        if mode.st_uid != account.pw_uid and not mode.st_mode & 0o001:
            raise EmbeddedPostgresError(
                f"PostgreSQL runs as {account.pw_name} and cannot reach {path}: {folder} is "
                f"not searchable by others; put the data folder elsewhere (GIFTWIRE_DATA_DIR)"
            )


class PostgresProcess:
    """One postgres child process on 127.0.0.1, its cluster in ``root_dir/data``.

    ``fsync=False`` is for tests: a killed postgres loses nothing it has committed (the
    kernel still holds the written WAL), only a machine crash would.
    """

    def __init__(
        self,
        root_dir: Path,
        *,
        port: int | None = None,
        fsync: bool = True,
        die_with_parent: bool = False,
    ) -> None:
        self.root_dir = root_dir
        self.data_dir = root_dir / "data"
        self.log_path = root_dir / "postgres.log"
        self.port = port or free_port()
        self.fsync = fsync
        # As with the embedded Redis: the death signal is tied to the thread that started the
        # child, so only for processes started from the main thread of a long-lived parent.
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _spawn_options(self) -> tuple[Callable[[], None] | None, int | None]:
        """The preexec function and the uid to run as that make the child unprivileged
        (neither when we are not root)."""
        die = self.die_with_parent
        if os.geteuid() != 0:
            return (lambda: _die_with_parent(signal.SIGINT)) if die else None, None
        if _user_namespaces_work():
            uid, gid = os.geteuid(), os.getegid()

            def in_namespace() -> None:
                _enter_user_namespace(uid, gid)
                if die:
                    _die_with_parent(signal.SIGINT)

            return in_namespace, None
        account = _fallback_account()
        _check_searchable(self.root_dir, account)
        for folder, _, files in os.walk(self.root_dir):
            os.chown(folder, account.pw_uid, account.pw_gid)
            for name in files:
                os.chown(Path(folder) / name, account.pw_uid, account.pw_gid)
        preexec = (lambda: _die_with_parent(signal.SIGINT)) if die else None
        return preexec, account.pw_uid

    def _run(self, args: list[str], *, log: int) -> subprocess.Popen[bytes]:
        preexec, uid = self._spawn_options()
        account = pwd.getpwuid(uid) if uid is not None else None
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root_dir,
            preexec_fn=preexec,
            # A child of serve/demo leaves the terminal's process group, as the embedded
            # Redis does: Ctrl-C stops giftwire, which stops postgres after the archiver,
            # instead of postgres cutting the archiver's connections first.
            process_group=0 if self.die_with_parent else None,
            user=uid,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self, timeout_s: float = 120.0) -> None:
        """initdb, once: a folder that already holds a cluster is kept as it is."""
        if self.initialized():
            return
        self.root_dir.mkdir(parents=True, exist_ok=True)
        bin_dir = find_postgres_bin()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            args = [
                str(bin_dir / "initdb"),
                "--pgdata", str(self.data_dir),
                "--username", SUPERUSER,
                "--auth", "trust",
                "--encoding", "UTF8",
                "--locale", "C",
            ]  # fmt: skip
            initdb = self._run(args + ([] if self.fsync else ["--no-sync"]), log=fd)
            code = initdb.wait(timeout_s)
        finally:
            os.close(fd)
        if code != 0:
            raise EmbeddedPostgresError(f"initdb failed ({code}):\n{self._log_tail()}")

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "logging_collector": "off",
        }
        if not self.fsync:
            settings |= {"fsync": "off", "full_page_writes": "off"}
        cmd = [str(find_postgres_bin() / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            cmd += ["-c", f"{name}={value}"]
        return cmd

    def start(self, timeout_s: float = 30.0) -> None:
        """initdb if needed, start postgres and wait until it accepts connections.

        Right after a ``kill -9`` the old server's backends may still hold its shared memory
        for a moment, and postgres refuses to start: it is started again until the deadline.
        """
        self.init()
        deadline = time.monotonic() + timeout_s
        while True:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                self.process = self._run(self.command(), log=fd)
            finally:
                os.close(fd)
            if self._wait_ready(deadline):
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise EmbeddedPostgresError(
                    f"postgres not ready on port {self.port}:\n{self._log_tail()}"
                )
            time.sleep(0.2)

    def _wait_ready(self, deadline: float) -> bool:
        """True once postgres answers; False if it exited (the caller may retry)."""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            try:
                with psycopg.connect(self.url(), connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def create_database(self, name: str) -> str:
        """Create database ``name`` if it is missing; return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if found is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def kill(self) -> None:
        """SIGKILL of the postmaster: what a crash looks like to the data folder. Its
        backends notice the postmaster is gone and exit by themselves."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGINT, PostgreSQL's fast shutdown: roll back open transactions, checkpoint, exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def __enter__(self) -> PostgresProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
