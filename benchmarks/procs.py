"""Child processes of a benchmark run and what /proc says about them (CPU time, memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from server.ledger.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
JWT_SECRET = "bench-secret-" + "b" * 40
WEBHOOK_SECRET = "bench-webhook-secret"
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat`` utime + stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    import starlette
    import uvicorn
    import websockets

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0],
        "redis": redis_version,
        "websockets": websockets.__version__,
        "uvicorn": uvicorn.__version__,
        "starlette": starlette.__version__,
        "kernel": os.uname().release,
    }


class Child:
    """A server process on a free port, its output in ``log_dir``."""

    def __init__(self, name: str, args: Sequence[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.args = [a.replace("{port}", str(self.port)) for a in args]
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, ready_path: str | None = "/readyz", timeout_s: float = 30.0) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.args, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log()}")
            if self._ready(ready_path):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready:\n{self.log()}")

    def _ready(self, path: str | None) -> bool:
        url = f"http://127.0.0.1:{self.port}{path or '/'}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError:
            return path is None  # any HTTP answer means the port is up
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def giftwire_server(
    log_dir: Path,
    redis_url: str,
    key_prefix: str,
    python: Sequence[str] = (sys.executable,),
    **env: str,
) -> Child:
    settings = {
        "GIFTWIRE_REDIS_URL": redis_url,
        "GIFTWIRE_KEY_PREFIX": key_prefix,
        "GIFTWIRE_JWT_SECRET": JWT_SECRET,
        "GIFTWIRE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GIFTWIRE_LOG_LEVEL": "warning",
        # The benchmark's clients all come from this machine and send as fast as allowed.
        "GIFTWIRE_CONNECTIONS_PER_IP_MAX": "100000",
        "GIFTWIRE_PENDING_REQUESTS_PER_IP_MAX": "100000",
        "GIFTWIRE_GIFTS_PER_S_MAX": "1000000",
        "GIFTWIRE_GIFT_BURST_MAX": "1000000",
        "GIFTWIRE_MESSAGES_PER_S_MAX": "1000000",
        **env,
    }
    return Child(
        "giftwire",
        [*python, "-m", "server.cli", "serve", "--port", "{port}"],
        log_dir,
        settings,
    )
