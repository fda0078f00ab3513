"""The Python client over TLS with a CA of one's own, as the Rust side: a
real redis-server speaking only TLS and requiring client certificates, a
CA, server and client certificates made by `openssl` in the test. Without
the CA, or without the client certificate, Redis is unreachable; with
REDIS_CA_FILE, FLIT_REDIS_CERT_FILE and FLIT_REDIS_KEY_FILE events sent from
Python are ingested and uploaded by the real binary over TLS and read back;
wrong files are errors naming the variable, never the contents."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import redis

from flit_cache import AsyncFlitClient, Delivery, FlitClient, Settings

from conftest import BIN, PRED_TABLE, TX_TABLE, free_port, wait_until

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def openssl(cwd: Path, *args: str) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"openssl {' '.join(args)}: {out.stderr}"


def make_ca(cwd: Path, name: str) -> None:
    openssl(cwd, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=flit test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def make_leaf(cwd: Path, name: str, subject: str, extensions: str) -> None:
    (cwd / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n" + extensions
    )
    openssl(cwd, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
    openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")


class TlsRedis:
    """redis-server on a TLS port only, requiring client certificates."""

    def __init__(self, root: Path) -> None:
        self.pki = root / "pki"
        self.pki.mkdir()
        make_ca(self.pki, "ca")
        make_leaf(self.pki, "server", "/CN=localhost",
                  "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        make_leaf(self.pki, "client", "/CN=flit python client", "extendedKeyUsage=clientAuth\n")
        data = root / "redis"
        data.mkdir()
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(self.pki / "server.crt"), "--tls-key-file", str(self.pki / "server.key"),
             "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "yes",
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--logfile", "redis.log", "--dir", str(data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(10, "redis-server (TLS) to answer", self._answers)

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}"

    def env(self, root: Path, ca: bool = True, client_cert: bool = True) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "REDIS_URL": self.url,
            "FLIT_SPOOL_DIR": str(root / "spool"),
            "FLIT_WAREHOUSE_DIR": str(root / "warehouse"),
            "FLIT_SINK": "local",
            "FLIT_BLOCK_MS": "200",
            "FLIT_PRODUCER_TIMEOUT_MS": "2000",
            "FLIT_REDIS_LOOKUP_TIMEOUT_MS": "2000",
            "RUST_LOG": "info",
        }
        if ca:
            env["REDIS_CA_FILE"] = str(self.ca)
        if client_cert:
            env["FLIT_REDIS_CERT_FILE"] = str(self.pki / "client.crt")
            env["FLIT_REDIS_KEY_FILE"] = str(self.pki / "client.key")
        return env

    def conn(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5, ssl=True,
                           ssl_ca_certs=str(self.ca), ssl_certfile=str(self.pki / "client.crt"),
                           ssl_keyfile=str(self.pki / "client.key"))

    def _answers(self) -> bool:
        try:
            return bool(self.conn().ping())
        except (redis.RedisError, OSError):
            return False

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path)
    yield server
    server.kill()


def transaction(i: int) -> dict:
    return {"transaction_id": f"tx_tls_{i}", "customer_id": f"cust_{i % 3}", "amount": 10.5 + i,
            "transaction_timestamp": (NOW - dt.timedelta(minutes=i)).isoformat(), "device_type": "mobile"}


def prediction(i: int) -> dict:
    return {"prediction_id": f"pred_tls_{i}", "transaction_id": f"tx_tls_{i}", "customer_id": f"cust_{i % 3}",
            "model_predictions": {"ridge": 0.2}, "selected_model": "ridge", "selected_prediction": 0.2,
            "business_decision": "approve", "risk_level": "LOW", "processing_time_ms": 3.5,
            "prediction_timestamp": (NOW - dt.timedelta(minutes=i)).isoformat()}


def flit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=300)


def rows(root: Path, table: str) -> list[dict]:
    found = []
    for path in sorted((root / "warehouse" / table).glob("dt=*/*.ndjson")):
        found.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return found


def test_events_sent_over_tls_with_a_private_ca_and_a_client_certificate_become_rows(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    assert BIN.exists(), f"{BIN} is missing: build it with cargo build (or set FLIT_BIN)"
    # Without the CA (system CAs only), or without a client certificate:
    # the handshake fails, Redis is reported down, nothing is streamed.
    for env in (tls_redis.env(tmp_path, ca=False), tls_redis.env(tmp_path, client_cert=False)):
        with FlitClient(Settings.from_env(env)) as refused:
            health = refused.health()
            assert not health.redis_ok, health
            assert health.error
    assert tls_redis.conn(0).xlen("stream:transactions") == 0

    env = tls_redis.env(tmp_path)
    with FlitClient(Settings.from_env(env)) as client:
        assert client.health().redis_ok, client.health()
        for i in range(20):
            assert client.send_transaction(transaction(i)) is Delivery.STREAMED
            assert client.send_prediction(prediction(i)) is Delivery.STREAMED
        assert client.spool.bytes() == 0

        # The real binary, over the same TLS: ingest, then upload.
        service_env = dict(env, FLIT_HTTP_ADDR=f"127.0.0.1:{free_port()}", FLIT_UPLOAD_CRON="0 0 2 1 1 *")
        with open(tmp_path / "run.log", "wb") as log:
            service = subprocess.Popen([str(BIN), "run"], env=service_env, stdout=log, stderr=log)
        tx, pred = tls_redis.conn(0), tls_redis.conn(1)
        try:
            wait_until(120, "events ingested",
                       lambda: tx.llen("upload_queue") == 20 and pred.llen("upload_queue") == 20)
        finally:
            service.send_signal(signal.SIGTERM)
            assert service.wait(60) == 0, (tmp_path / "run.log").read_text()
        out = flit(env, "batch-upload")
        assert out.returncode == 0, out.stdout + out.stderr
        tx_ids = [json.loads(r["json_body"])["transaction_id"] if isinstance(r["json_body"], str)
                  else r["json_body"]["transaction_id"] for r in rows(tmp_path, TX_TABLE)]
        assert sorted(tx_ids) == sorted(f"tx_tls_{i}" for i in range(20))
        assert sorted(r["prediction_id"] for r in rows(tmp_path, PRED_TABLE)) == sorted(
            f"pred_tls_{i}" for i in range(20)
        )
        # Lookups over TLS read the records back.
        record = client.get_transaction("tx_tls_3")
        assert record is not None and record["transaction_id"] == "tx_tls_3"

    async def async_side() -> None:
        aclient = AsyncFlitClient(Settings.from_env(env))
        try:
            assert (await aclient.health()).redis_ok
            assert (await aclient.get_prediction("pred_tls_4") or {}).get("prediction_id") == "pred_tls_4"
        finally:
            await aclient.close()

    asyncio.run(async_side())
    out = flit(env, "monitor", "--json")
    assert json.loads(out.stdout)["redis"]["reachable"] is True, out.stdout + out.stderr


def test_wrong_tls_settings_name_the_variable_and_never_the_contents(tls_redis: TlsRedis, tmp_path: Path) -> None:
    env = tls_redis.env(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("password = SECRET-MARKER-4711\n")
    key = env["FLIT_REDIS_KEY_FILE"]
    cases = [
        ({"REDIS_CA_FILE": str(notes)}, "REDIS_CA_FILE", "not a PEM file"),
        ({"REDIS_CA_FILE": key}, "REDIS_CA_FILE", "holds no certificate"),
        ({"REDIS_CA_FILE": str(tmp_path / "nowhere.pem")}, "REDIS_CA_FILE", "does not exist"),
        ({"FLIT_REDIS_CERT_FILE": ""}, "FLIT_REDIS_KEY_FILE", "both or neither"),
        ({"FLIT_REDIS_KEY_FILE": ""}, "FLIT_REDIS_CERT_FILE", "both or neither"),
        ({"FLIT_REDIS_KEY_FILE": env["FLIT_REDIS_CERT_FILE"]}, "FLIT_REDIS_KEY_FILE", "holds no private key"),
        ({"REDIS_URL": "redis://127.0.0.1:6379"}, "REDIS_CA_FILE", "not a rediss:// URL"),
    ]
    secret_line = next(line for line in Path(key).read_text().splitlines() if not line.startswith("-----"))
    for change, variable, problem in cases:
        with pytest.raises(ValueError) as caught:
            Settings.from_env(dict(env, **change))
        message = str(caught.value)
        assert variable in message and problem in message, (change, message)
        assert "SECRET-MARKER" not in message and secret_line not in message, message
    # No TLS files at all: a plain redis:// URL is fine, and gets no TLS keywords.
    plain = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379"})
    assert plain.tls_kwargs() == {}
    assert Settings.from_env(env).tls_kwargs()["ssl_ca_certs"] == str(tls_redis.ca)
    # Sends and lookups on different URLs: each gets what its scheme takes.
    mixed = Settings.from_env(dict(env, FLIT_LOOKUP_REDIS_URL="redis://127.0.0.1:6379"))
    assert mixed.tls_kwargs(mixed.lookup_url) == {}
    assert mixed.tls_kwargs()["ssl_ca_certs"] == str(tls_redis.ca)
    lookups_over_tls = Settings.from_env(
        dict(env, REDIS_URL="redis://127.0.0.1:6379", FLIT_LOOKUP_REDIS_URL=env["REDIS_URL"])
    )
    assert lookups_over_tls.tls_kwargs() == {}
    assert lookups_over_tls.tls_kwargs(lookups_over_tls.lookup_url)["ssl_ca_certs"] == str(tls_redis.ca)
