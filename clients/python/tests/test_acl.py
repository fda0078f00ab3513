"""The Python client signed in as the shipped Redis users
(deploy/redis/users.acl, rendered by the shipped render-acl.sh): an ML API
sends as flit-producer and looks up as flit-reader (FLIT_LOOKUP_REDIS_URL),
flit-cache runs as flit-service, and every event lands once. Signed in as
the producer, redis-py can do nothing but XADD to the two streams."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import redis

from flit_cache import AsyncFlitClient, Delivery, FlitClient, Settings

from conftest import PRED_TABLE, REPO, TX_TABLE, Flit, RedisServer
from test_client import ids, prediction, transaction

PASSWORDS = {
    "SERVICE": "py-service-password-0123456789",
    "PRODUCER": "py-producer-password-0123456789",
    "READER": "py-reader-password-0123456789",
    "MONITOR": "py-monitor-password-0123456789",
    "ADMIN": "py-admin-password-0123456789",
}


class AclRedis(RedisServer):
    """conftest's redis-server with the shipped users and the default user
    off; `url` signs in as flit-service, `conn` as flit-admin (for the
    test's own checks)."""

    def __init__(self, root: Path) -> None:
        users = root / "users.acl"
        env = {"PATH": os.environ.get("PATH", "")}
        env.update({f"REDIS_{role}_PASSWORD": password for role, password in PASSWORDS.items()})
        rendered = subprocess.run(
            ["sh", str(REPO / "deploy/redis/render-acl.sh"), str(REPO / "deploy/redis/users.acl"), str(users)],
            env=env, capture_output=True, text=True,
        )
        assert rendered.returncode == 0, rendered.stderr
        assert not any(p in rendered.stderr for p in PASSWORDS.values()), "a password was printed"
        super().__init__(root, ["--aclfile", str(users)])

    def user_url(self, user: str) -> str:
        role = user.removeprefix("flit-").upper()
        return f"redis://{user}:{PASSWORDS[role]}@127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.user_url("flit-service")

    def conn(self, db: int = 0, socket_timeout: float = 5) -> redis.Redis:
        return redis.Redis.from_url(self.user_url("flit-admin"), db=db, socket_timeout=socket_timeout)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    data = tmp_path / "redis"
    data.mkdir()
    server = AclRedis(data)
    yield server
    server.kill()


def test_an_api_sends_as_the_producer_and_looks_up_as_the_reader(acl_redis: AclRedis, tmp_path: Path) -> None:
    flit = Flit(acl_redis, tmp_path)
    flit.env["FLIT_SINK"] = "local"
    env = {
        "REDIS_URL": acl_redis.user_url("flit-producer"),
        "FLIT_LOOKUP_REDIS_URL": acl_redis.user_url("flit-reader"),
        "FLIT_SPOOL_DIR": str(tmp_path / "api-spool"),
        # Not a test of the bound: a loaded machine must not spool these.
        "FLIT_PRODUCER_TIMEOUT_MS": "2000",
    }
    c = FlitClient(Settings.from_env(env))
    for i in range(40):
        assert c.send_transaction(transaction(i)) is Delivery.STREAMED
    for i in range(30):
        assert c.send_prediction(prediction(i)) is Delivery.STREAMED
    assert c.health().redis_ok
    flit.ingest_until(acl_redis, 40, 30)

    found = c.get_transaction("tx_py_7")
    assert found is not None and found["transaction_id"] == "tx_py_7"
    assert c.get_prediction("pred_py_missing") is None
    stats = c.stats()
    assert stats is not None and (stats["transactions"].hits, stats["predictions"].misses) == (1, 1)
    c.close()

    async def asyncio_side() -> None:
        async with AsyncFlitClient(Settings.from_env(env)) as a:
            assert await a.send_transaction(transaction(40)) is Delivery.STREAMED
            record = await a.get_transaction("tx_py_8")
            assert record is not None and record["transaction_id"] == "tx_py_8"

    asyncio.run(asyncio_side())
    flit.ingest_until(acl_redis, 41, 30)
    flit.run("batch-upload")
    assert sorted(ids(flit.rows(TX_TABLE), "transaction_id")) == sorted(f"tx_py_{i}" for i in range(41))
    assert len(flit.rows(PRED_TABLE)) == 30
    assert not list((tmp_path / "api-spool").glob("*.ndjson")), "nothing was spooled"


def test_signed_in_as_the_producer_only_xadd_to_the_streams_works(acl_redis: AclRedis) -> None:
    producer = redis.Redis.from_url(acl_redis.user_url("flit-producer"), socket_timeout=5)
    assert producer.xadd("stream:transactions", {"data": "{}"})
    refused = [
        lambda: producer.set("tx:forged", "{}"),
        lambda: producer.get("tx:1"),
        lambda: producer.delete("upload_queue"),
        lambda: producer.xrange("stream:transactions"),
        lambda: producer.xgroup_create("stream:transactions", "intruder", id="$"),
        lambda: producer.xadd("stream:transactions:dead", {"data": "{}"}),
        lambda: producer.config_set("maxmemory-policy", "allkeys-lru"),
        lambda: producer.keys("*"),
        lambda: producer.eval("return 1", 0),
        lambda: producer.flushall(),
    ]
    for call in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    # Lookups with the producer's credentials fail (None, counted by the
    # breaker) rather than reading anything.
    c = FlitClient(Settings(url=acl_redis.user_url("flit-producer"), breaker_failures=100))
    assert c.get_transaction("tx_py_1") is None
    c.close()
    anonymous = redis.Redis(port=acl_redis.port, socket_timeout=5)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
