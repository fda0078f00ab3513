"""Test harness for the Python client: a private redis-server per test (own
port, own data folder, AOF on) that can be killed, paused and restarted,
and the real `flit-cache` binary run against it, as the Rust tests do."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest
import redis

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("FLIT_BIN", REPO / "target" / "debug" / "flit-cache"))
TX_TABLE = "flit_bnpl_raw.raw_bnpl_txs_json"
PRED_TABLE = "flit_ml_raw.raw_bnpl_prediction_logs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(limit: float, what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class RedisServer:
    """A private redis-server: `extra_args` are added to its command line
    (an ACL file, say); `conn` is how the test itself signs in."""

    def __init__(self, data_dir: Path, extra_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.dir = data_dir
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--logfile", "redis.log", "--dir", str(self.dir), *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(10, "redis-server to answer", self._answers)

    def _answers(self) -> bool:
        try:
            return bool(self.conn(socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def conn(self, db: int = 0, socket_timeout: float = 5) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, socket_timeout=socket_timeout)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(data)
    yield server
    if server.process is not None:
        server.resume()
        server.kill()


class Flit:
    """The real binary, with a test's environment."""

    def __init__(self, redis_server: RedisServer, root: Path) -> None:
        assert BIN.exists(), f"{BIN} is missing: build it with cargo build (or set FLIT_BIN)"
        self.root = root
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "REDIS_URL": redis_server.url,
            "FLIT_SPOOL_DIR": str(root / "spool"),
            "FLIT_WAREHOUSE_DIR": str(root / "warehouse"),
            "FLIT_BLOCK_MS": "200",
            "FLIT_CLAIM_IDLE_MS": "1500",
            "FLIT_TRIM_INTERVAL_MS": "300",
            "FLIT_BREAKER_COOLDOWN_MS": "200",
            "RUST_LOG": "info",
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(BIN), *args], env=self.env, capture_output=True, text=True, timeout=300)
        if check:
            assert out.returncode == 0, f"flit-cache {' '.join(args)}: {out.stdout}{out.stderr}"
        return out

    def ingest_until(self, redis_server: RedisServer, transactions: int, predictions: int) -> None:
        """Runs the service until the upload queues hold these many records."""
        env = dict(self.env, FLIT_HTTP_ADDR=f"127.0.0.1:{free_port()}", FLIT_UPLOAD_CRON="0 0 2 1 1 *")
        log = open(self.root / "run.log", "wb")
        service = subprocess.Popen([str(BIN), "run"], env=env, stdout=log, stderr=log)
        tx, pred = redis_server.conn(0), redis_server.conn(1)
        try:
            wait_until(120, "events ingested", lambda: tx.llen("upload_queue") == transactions
                       and pred.llen("upload_queue") == predictions)
        finally:
            service.send_signal(signal.SIGTERM)
            assert service.wait(60) == 0, (self.root / "run.log").read_text()

    def rows(self, table: str) -> list[dict]:
        rows = []
        for path in sorted((self.root / "warehouse" / table).glob("dt=*/*.ndjson")):
            rows.extend(json.loads(line) for line in path.read_text().splitlines() if line)
        return rows


@pytest.fixture
def flit(redis_server: RedisServer, tmp_path: Path) -> Flit:
    return Flit(redis_server, tmp_path)
