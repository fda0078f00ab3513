"""`AsyncFlitClient`, the asyncio client: the same calls as `FlitClient`,
for an asyncio web server (FastAPI), without blocking the event loop.

Each Redis call takes a connection of its own from the pool and runs under
`asyncio.wait_for` with its bound. A call that overruns, or fails, drops
its connection before returning it to the pool, so no later call can read
the reply meant for this one. Spool appends (fsync) and replay file work
run in a thread (`asyncio.to_thread`), off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, Awaitable, Callable, TypeVar

import redis
import redis.asyncio

from ._common import (
    DATA_FIELD,
    KINDS,
    PREDICTIONS,
    STREAMS,
    TRANSACTIONS,
    Delivery,
    Event,
    Health,
    LookupStats,
    ReplayReport,
    Settings,
    decode_record,
    event_bytes,
    make_pool,
    next_chunk,
    prepare,
    replay_bound,
    record_key,
    short,
    stats_from,
    stats_keys,
    count_commands,
    MAX_PENDING_COUNTS,
)
from .breaker import CircuitBreaker
from .client import SPOOL_LOOK_INTERVAL, RedisUnavailable
from .spool import ReplayFile, Spool, SpoolError

T = TypeVar("T")

#: Events above this size are checked at the door in a thread.
LARGE_EVENT_BYTES = 64 * 1024

# RuntimeError: a pool made on an event loop that has closed.
_FAILURES = (redis.RedisError, OSError, RedisUnavailable, RuntimeError)


def _pool(settings: Settings, db: int, timeout: float, lookups: bool = False) -> redis.asyncio.ConnectionPool:
    return make_pool(redis.asyncio.ConnectionPool.from_url, settings, db, timeout, lookups)


async def _get(conn: Any, key: str) -> Any:
    await conn.send_command("GET", key)
    return await conn.read_response()


async def _count(conn: Any, kind: str, hit: bool) -> None:
    commands = count_commands(kind, hit, time.time())
    await conn.send_packed_command(conn.pack_commands(commands))
    # Every reply read, errors included (a full Redis refuses INCR), so the
    # connection stays in step.
    for _ in commands:
        try:
            await conn.read_response()
        except redis.exceptions.ResponseError:
            pass


async def _mget(conn: Any, keys: list[str]) -> Any:
    await conn.send_command("MGET", *keys)
    return await conn.read_response()


async def _xadd(conn: Any, kind: str, payloads: list[str]) -> None:
    commands = [("XADD", STREAMS[kind], "*", DATA_FIELD, p) for p in payloads]
    await conn.send_packed_command(conn.pack_commands(commands))
    for _ in commands:
        await conn.read_response()


class AsyncFlitClient:
    """Sends transactions and predictions, reads them back, from asyncio.
    Create it inside the running event loop (a FastAPI lifespan)."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = (settings or Settings()).with_overrides(**overrides)
        s = self.settings
        self.spool = Spool(s.spool_dir, s.spool_max_bytes)
        self.breaker = CircuitBreaker(s.breaker_failures, s.breaker_cooldown)
        # Lookups have their own: a full Redis refuses XADD but still
        # answers GET.
        self.lookup_breaker = CircuitBreaker(s.breaker_failures, s.breaker_cooldown)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Lookup counts sent behind the lookups (see `_count_later`).
        self._pending_counts: set[asyncio.Task[None]] = set()
        self._make_pools()
        self._replaying = asyncio.Lock()
        self._replay_task: asyncio.Task[Any] | None = None
        self._spool_looked_at = 0.0

    def _make_pools(self) -> None:
        s = self.settings
        self._send_pools = {k: _pool(s, s.db_for(k), s.send_timeout) for k in KINDS}
        self._lookup_pools = {k: _pool(s, s.db_for(k), s.lookup_timeout, lookups=True) for k in KINDS}
        self._replay_pools = {k: _pool(s, s.db_for(k), s.replay_timeout) for k in KINDS}

    def _on_this_loop(self) -> None:
        # asyncio connections belong to the loop that opened them: used from
        # another loop (a test, asyncio.run twice) they fail. New pools then.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._make_pools()
                self._replaying = asyncio.Lock()
            self._loop = loop

    @classmethod
    def from_env(cls, **overrides: Any) -> "AsyncFlitClient":
        return cls(Settings.from_env(**overrides))

    async def close(self) -> None:
        await self._flush_counts()
        if self._replay_task is not None:
            self._replay_task.cancel()
        for pools in (self._send_pools, self._lookup_pools, self._replay_pools):
            for pool in pools.values():
                await pool.disconnect()

    async def __aenter__(self) -> "AsyncFlitClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the bounded call ----------------------------------------------------

    async def _call(
        self,
        pools: str,
        kind: str,
        timeout: float,
        work: Callable[[Any], Awaitable[T]],
    ) -> T:
        """Runs `work` on a connection of its own from `self.<pools>[kind]`,
        within `timeout`."""
        self._on_this_loop()
        pool = getattr(self, pools)[kind]

        async def run() -> T:
            conn = await pool.get_connection()
            try:
                return await work(conn)
            except BaseException:
                # Cancelled by the bound, or failed: the reply may be half
                # read, so this connection is never used again.
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)

        try:
            return await asyncio.wait_for(run(), timeout)
        except asyncio.TimeoutError:
            raise RedisUnavailable(f"no answer within {timeout * 1000:.0f} ms") from None

    # -- sending -------------------------------------------------------------

    async def send_transaction(self, event: Event) -> Delivery:
        return await self.send(TRANSACTIONS, event)

    async def send_prediction(self, event: Event) -> Delivery:
        return await self.send(PREDICTIONS, event)

    async def send(self, kind: str, event: Event) -> Delivery:
        """As `FlitClient.send`: door check, XADD within `send_timeout`,
        else an fsync'd spool append in a thread."""
        data = event_bytes(event)
        if len(data) > LARGE_EVENT_BYTES:
            # The door reads a large event in pure Python (about 0.3 s for
            # 1 MiB of small values): in a thread, the loop keeps serving.
            payload = await asyncio.to_thread(prepare, kind, data, self.settings)
        else:
            payload = prepare(kind, data, self.settings)
        return await self.send_prepared(kind, [payload])

    async def send_prepared(self, kind: str, payloads: list[str]) -> Delivery:
        """As `FlitClient.send_prepared`."""
        if self.breaker.allow():
            try:
                await self._call(
                    "_send_pools",
                    kind,
                    self.settings.send_timeout,
                    lambda conn: _xadd(conn, kind, payloads),
                )
                self.breaker.record_success()
                self._maybe_replay()
                return Delivery.STREAMED
            except _FAILURES:
                self.breaker.record_failure()
        try:
            await asyncio.to_thread(self.spool.append, kind, payloads)
        except SpoolError as err:
            err.payloads = list(payloads)
            raise
        return Delivery.SPOOLED

    # -- the spool -----------------------------------------------------------

    def _maybe_replay(self) -> None:
        if not self.settings.replay_spool:
            return
        now = time.monotonic()
        if now - self._spool_looked_at < SPOOL_LOOK_INTERVAL:
            return
        self._spool_looked_at = now
        if self._replaying.locked():
            return
        self._replay_task = asyncio.get_running_loop().create_task(self._replay_quietly())

    async def _replay_quietly(self) -> None:
        try:
            # Listing the spool folder is file I/O: off the loop.
            if await asyncio.to_thread(self.spool.is_empty):
                return
            await self.replay_spool()
        except Exception:  # noqa: BLE001 - the next look retries; nothing is lost
            pass

    async def replay_spool(self) -> ReplayReport:
        """As `FlitClient.replay_spool`."""
        report = ReplayReport()
        async with self._replaying:
            for file in await asyncio.to_thread(self.spool.take_for_replay):
                try:
                    # Read a chunk at a time in a thread: a spool file may
                    # hold a gigabyte, the loop's memory holds one chunk.
                    events = self.spool.read_events(file)
                    while chunk := await asyncio.to_thread(next_chunk, events):
                        report.events += await self._replay_chunk(file, chunk)
                    await asyncio.to_thread(self.spool.finish, file)
                    report.files += 1
                finally:
                    file.close()
        return report

    async def _replay_chunk(self, file: ReplayFile, chunk: list[tuple[int, str, str]]) -> int:
        for kind in KINDS:
            payloads = [data for _, k, data in chunk if k == kind]
            if payloads:
                await self._call(
                    "_replay_pools",
                    kind,
                    replay_bound(self.settings, payloads),
                    functools.partial(_xadd, kind=kind, payloads=payloads),
                )
        await asyncio.to_thread(self.spool.record_progress, file, chunk[-1][0])
        return len(chunk)

    # -- lookups -------------------------------------------------------------

    async def get_transaction(self, transaction_id: str) -> dict | None:
        return await self.get(TRANSACTIONS, transaction_id)

    async def get_prediction(self, prediction_id: str) -> dict | None:
        return await self.get(PREDICTIONS, prediction_id)

    async def get(self, kind: str, record_id: str) -> dict | None:
        """As `FlitClient.get`."""
        key = record_key(kind, record_id)
        if not self.lookup_breaker.allow():
            return None
        try:
            value = await self._call(
                "_lookup_pools", kind, self.settings.lookup_timeout, lambda conn: _get(conn, key)
            )
        except _FAILURES:
            self.lookup_breaker.record_failure()
            return None
        self.lookup_breaker.record_success()
        self._count_later(kind, value is not None)
        return decode_record(key, value)

    def _count_later(self, kind: str, hit: bool) -> None:
        """As `FlitClient._count_later`: the count goes out in a task of its
        own, bounded by `lookup_timeout`, dropped past MAX_PENDING_COUNTS or
        when it fails; a count held up never holds up a lookup."""
        if len(self._pending_counts) >= MAX_PENDING_COUNTS:
            return

        async def run() -> None:
            try:
                await self._call(
                    "_lookup_pools",
                    TRANSACTIONS,
                    self.settings.lookup_timeout,
                    lambda conn: _count(conn, kind, hit),
                )
            except _FAILURES:
                pass

        task = asyncio.get_running_loop().create_task(run())
        self._pending_counts.add(task)
        task.add_done_callback(self._pending_counts.discard)

    async def _flush_counts(self) -> None:
        pending = [t for t in self._pending_counts if t.get_loop() is asyncio.get_running_loop()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.lookup_timeout)

    async def stats(self) -> dict[str, LookupStats] | None:
        await self._flush_counts()
        async def read(conn: Any) -> dict[str, LookupStats]:
            return {kind: stats_from(await _mget(conn, stats_keys(kind))) for kind in KINDS}

        try:
            return await self._call("_lookup_pools", TRANSACTIONS, self.settings.lookup_timeout, read)
        except _FAILURES:
            return None

    async def health(self) -> Health:
        async def ping(conn: Any) -> Any:
            await conn.send_command("PING")
            return await conn.read_response()

        spool_bytes = await asyncio.to_thread(self.spool.bytes)
        started = time.perf_counter()
        try:
            for kind in KINDS:
                await self._call("_lookup_pools", kind, self.settings.lookup_timeout, ping)
            latency = (time.perf_counter() - started) * 1000 / len(KINDS)
            return Health(True, latency, self.breaker.is_open, spool_bytes)
        except _FAILURES as err:
            return Health(False, None, self.breaker.is_open, spool_bytes, short(err))
