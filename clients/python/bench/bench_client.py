"""Send and lookup latency of the Python client, with Redis up and with
Redis down (killed), sync and asyncio. Prints p50/p99/max per case; asserts
nothing. Starts its own redis-server (AOF everysec, as deploy/redis) in a
temporary folder.

    python clients/python/bench/bench_client.py [--events 5000]

With Redis down the breaker is open after the first failures, so a send is
one door check plus one fsync'd spool append, and a lookup is a None
without a network call.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import socket
import subprocess
import tempfile
import time

import redis

from flit_cache import AsyncFlitClient, FlitClient, Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prediction(i: int) -> dict:
    return {
        "prediction_id": f"bench_{i}",
        "transaction_id": f"tx_{i}",
        "customer_id": "c",
        "model_predictions": {"ridge": 0.2, "logistic": 0.3, "elastic": 0.25, "ensemble": 0.24},
        "selected_model": "ridge",
        "selected_prediction": 0.2,
        "business_decision": "approve",
        "risk_level": "LOW",
        "processing_time_ms": 3.5,
        "prediction_timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def summary(name: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    print(f"| {name} | {len(ms)} | {p(0.5):.3f} | {p(0.99):.3f} | {ms[-1]:.3f} | {len(ms) / sum(seconds):,.0f} |")


def timed(call, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - started)
    return out


async def timed_async(call, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    n = parser.parse_args().events
    work = tempfile.mkdtemp(prefix="flit-bench-")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--dir", work, "--appendonly", "yes",
         "--appendfsync", "everysec", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    # Records to look up, as the workers store them.
    seed = redis.Redis.from_url(url, db=1)
    for i in range(n):
        seed.set(f"pred:bench_{i}", '{"prediction_id":"bench_%d","selected_prediction":0.2}' % i)
    settings = Settings(url=url, spool_dir=os.path.join(work, "spool"), lookup_timeout=0.1)
    sync = FlitClient(settings)
    print(f"{n} calls each; {platform.python_implementation()} {platform.python_version()}, "
          f"redis-py {redis.__version__}, {os.cpu_count()} cores\n")
    print("| case | calls | p50 ms | p99 ms | max ms | calls/s |")
    print("|---|---|---|---|---|---|")
    summary("sync send, Redis up", timed(lambda i: sync.send_prediction(prediction(i)), n))
    summary("sync lookup (hit), Redis up", timed(lambda i: sync.get_prediction(f"bench_{i}"), n))

    async def async_up() -> None:
        client = AsyncFlitClient(Settings(**vars(settings)))
        summary("async send, Redis up", await timed_async(lambda i: client.send_prediction(prediction(i)), n))
        summary("async lookup (hit), Redis up", await timed_async(lambda i: client.get_prediction(f"bench_{i}"), n))
        await client.close()

    asyncio.run(async_up())
    server.kill()
    server.wait()
    summary("sync send, Redis down (spooled)", timed(lambda i: sync.send_prediction(prediction(i)), n))
    summary("sync lookup, Redis down (None)", timed(lambda i: sync.get_prediction(f"bench_{i}"), n))

    async def async_down() -> None:
        client = AsyncFlitClient(Settings(**vars(settings)))
        summary("async send, Redis down (spooled)", await timed_async(lambda i: client.send_prediction(prediction(i)), n))
        summary("async lookup, Redis down (None)", await timed_async(lambda i: client.get_prediction(f"bench_{i}"), n))
        await client.close()

    asyncio.run(async_down())
    sync.close()
    print(f"\nspool after the run: {sync.spool.bytes():,} bytes in {settings.spool_dir}")


if __name__ == "__main__":
    main()
