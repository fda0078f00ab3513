"""`FlitClient`, the synchronous client: sends events to flit-cache's
streams and reads cached records back, and never holds the caller longer
than its bound.

Each Redis call runs on a small thread pool and the caller waits for it at
most `send_timeout` (sends) or `lookup_timeout` (lookups, stats, health):
socket timeouts alone bound each read, not a call (connect, SELECT and the
reply are three waits). A call that overruns is abandoned; its thread ends
at its own socket timeout and drops that connection rather than return it
mid-reply. There are no retries: a send that fails is spooled at once (the
breaker then skips Redis for a while), a lookup that fails returns None.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
import time
from typing import Any, Callable, TypeVar

import redis

from . import door
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
from .spool import Spool, SpoolError

T = TypeVar("T")

#: How often a send may look at the spool's size to decide on a replay.
SPOOL_LOOK_INTERVAL = 1.0


class RedisUnavailable(Exception):
    """Redis did not answer within the bound (or the breaker is open)."""


def _pool(settings: Settings, db: int, timeout: float, lookups: bool = False) -> redis.ConnectionPool:
    return make_pool(redis.ConnectionPool.from_url, settings, db, timeout, lookups)


def _get(conn: Any, key: str) -> Any:
    conn.send_command("GET", key)
    return conn.read_response()


def _count(conn: Any, kind: str, hit: bool) -> None:
    commands = count_commands(kind, hit, time.time())
    conn.send_packed_command(conn.pack_commands(commands))
    # Every reply read, errors included (a full Redis refuses INCR), so the
    # connection stays in step.
    for _ in commands:
        try:
            conn.read_response()
        except redis.exceptions.ResponseError:
            pass


def _mget(conn: Any, keys: list[str]) -> Any:
    conn.send_command("MGET", *keys)
    return conn.read_response()


class FlitClient:
    """Sends transactions and predictions, reads them back.

    `FlitClient.from_env()` reads REDIS_URL, FLIT_SPOOL_DIR and the other
    variables of the Rust side; keyword arguments override them.
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = (settings or Settings()).with_overrides(**overrides)
        self.spool = Spool(self.settings.spool_dir, self.settings.spool_max_bytes)
        self._spool_looked_at = 0.0
        self._lock = threading.Lock()
        self._start()

    @classmethod
    def from_env(cls, **overrides: Any) -> "FlitClient":
        return cls(Settings.from_env(**overrides))

    def _start(self) -> None:
        s = self.settings
        self._pid = os.getpid()
        # Fresh in a forked child too: a lock held by a parent's thread at
        # the fork would never be released there.
        self._replaying = threading.Lock()
        self.breaker = CircuitBreaker(s.breaker_failures, s.breaker_cooldown)
        # Lookups have their own: a full Redis refuses XADD but still
        # answers GET.
        self.lookup_breaker = CircuitBreaker(s.breaker_failures, s.breaker_cooldown)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=16, thread_name_prefix="flit-cache"
        )
        # Lookup counts go out behind the lookups, one at a time: a count
        # held up never holds up a lookup or a thread a lookup needs.
        self._count_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flit-cache-count"
        )
        self._counts_lock = threading.Lock()
        self._pending_counts: set[concurrent.futures.Future[None]] = set()
        self._send_pools = {k: _pool(s, s.db_for(k), s.send_timeout) for k in KINDS}
        self._lookup_pools = {k: _pool(s, s.db_for(k), s.lookup_timeout, lookups=True) for k in KINDS}
        self._replay_pools = {k: _pool(s, s.db_for(k), s.replay_timeout) for k in KINDS}

    def _check_fork(self) -> None:
        # A pre-forking server (gunicorn) gives each worker a copy of this
        # object: the parent's threads and sockets are not its own.
        if self._pid != os.getpid():
            self._lock = threading.Lock()
            with self._lock:
                if self._pid != os.getpid():
                    self._start()

    def close(self) -> None:
        self._flush_counts()
        self._count_executor.shutdown(wait=False)
        self._executor.shutdown(wait=False)
        for pools in (self._send_pools, self._lookup_pools, self._replay_pools):
            for pool in pools.values():
                pool.disconnect()

    def __enter__(self) -> "FlitClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the bounded call ----------------------------------------------------

    def _call(self, pool: redis.ConnectionPool, timeout: float, work: Callable[[Any], T]) -> T:
        """Runs `work` on a connection of its own, waiting at most `timeout`."""
        self._check_fork()

        def run() -> T:
            conn = pool.get_connection()
            try:
                return work(conn)
            except BaseException:
                # Never back into the pool with a reply half read.
                conn.disconnect()
                raise
            finally:
                pool.release(conn)

        future = self._executor.submit(run)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RedisUnavailable(f"no answer within {timeout * 1000:.0f} ms") from None

    # -- sending -------------------------------------------------------------

    def send_transaction(self, event: Event) -> Delivery:
        """Sends one transaction; see `send`."""
        return self.send(TRANSACTIONS, event)

    def send_prediction(self, event: Event) -> Delivery:
        """Sends one prediction; see `send`."""
        return self.send(PREDICTIONS, event)

    def send(self, kind: str, event: Event) -> Delivery:
        """Checks the event at the door (raises `door.Rejected`, nothing
        sent or spooled, when it could never become a row), then XADDs it
        within `send_timeout`, or appends it to the spool (fsync'd) when
        Redis fails or the breaker is open. Raises `SpoolError` only when
        neither took it: the caller still owns the event."""
        payload = prepare(kind, event, self.settings)
        return self.send_prepared(kind, [payload])

    def send_prepared(self, kind: str, payloads: list[str]) -> Delivery:
        """Sends events already prepared at the door (`SpoolError.payloads`:
        the texts to resend after a failure, so a stamped time stays the
        same), all to the stream or all to the spool."""
        if self.breaker.allow():
            try:
                self._call(
                    self._send_pools[kind],
                    self.settings.send_timeout,
                    lambda conn: self._xadd(conn, kind, payloads),
                )
                self.breaker.record_success()
                self._maybe_replay()
                return Delivery.STREAMED
            except (redis.RedisError, OSError, RedisUnavailable, RuntimeError):
                # RuntimeError: the pool is shut down (close(), interpreter
                # exit); the event still goes to the spool.
                self.breaker.record_failure()
        try:
            self.spool.append(kind, payloads)
        except SpoolError as err:
            err.payloads = list(payloads)
            raise
        return Delivery.SPOOLED

    @staticmethod
    def _xadd(conn: Any, kind: str, payloads: list[str]) -> None:
        commands = [("XADD", STREAMS[kind], "*", DATA_FIELD, p) for p in payloads]
        conn.send_packed_command(conn.pack_commands(commands))
        for _ in commands:
            conn.read_response()

    # -- the spool -----------------------------------------------------------

    def _maybe_replay(self) -> None:
        if not self.settings.replay_spool:
            return
        now = time.monotonic()
        if now - self._spool_looked_at < SPOOL_LOOK_INTERVAL:
            return
        self._spool_looked_at = now
        if self.spool.is_empty() or self._replaying.locked():
            return
        threading.Thread(target=self._replay_quietly, name="flit-cache-replay", daemon=True).start()

    def _replay_quietly(self) -> None:
        try:
            self.replay_spool()
        except Exception:  # noqa: BLE001 - the next look retries; nothing is lost
            pass

    def replay_spool(self) -> ReplayReport:
        """Re-sends every spooled event, in order, in chunks; each file is
        deleted once all of it is in Redis, and an interrupted replay
        resumes after its last noted chunk (at most one chunk twice, which
        the workers recognise as the same event). Files another replayer
        (this client elsewhere, `flit-cache run` or `replay-spool`) holds
        are skipped. Raises when Redis fails; what is left stays spooled."""
        report = ReplayReport()
        with self._replaying:
            for file in self.spool.take_for_replay():
                try:
                    events = self.spool.read_events(file)
                    while chunk := next_chunk(events):
                        report.events += self._replay_chunk(file, chunk)
                    self.spool.finish(file)
                    report.files += 1
                finally:
                    file.close()
        return report

    def _replay_chunk(self, file: Any, chunk: list[tuple[int, str, str]]) -> int:
        for kind in KINDS:
            payloads = [data for _, k, data in chunk if k == kind]
            if payloads:
                self._call(
                    self._replay_pools[kind],
                    replay_bound(self.settings, payloads),
                    functools.partial(self._xadd, kind=kind, payloads=payloads),
                )
        self.spool.record_progress(file, chunk[-1][0])
        return len(chunk)

    # -- lookups -------------------------------------------------------------

    def get_transaction(self, transaction_id: str) -> dict | None:
        """The cached transaction, or None when it is not in Redis or Redis
        does not answer within `lookup_timeout` (then nothing is counted)."""
        return self.get(TRANSACTIONS, transaction_id)

    def get_prediction(self, prediction_id: str) -> dict | None:
        """The cached prediction; as `get_transaction`."""
        return self.get(PREDICTIONS, prediction_id)

    def get(self, kind: str, record_id: str) -> dict | None:
        key = record_key(kind, record_id)  # raises door.Rejected for a bad id
        if not self.lookup_breaker.allow():
            return None
        try:
            value = self._call(
                self._lookup_pools[kind], self.settings.lookup_timeout, lambda conn: _get(conn, key)
            )
        except (redis.RedisError, OSError, RedisUnavailable, RuntimeError):
            self.lookup_breaker.record_failure()
            return None
        self.lookup_breaker.record_success()
        self._count_later(kind, value is not None)
        return decode_record(key, value)

    def _count_later(self, kind: str, hit: bool) -> None:
        """Counts a lookup in the state database, behind it (`count_commands`);
        dropped past MAX_PENDING_COUNTS or when it fails."""
        pool = self._lookup_pools[TRANSACTIONS]

        def run() -> None:
            conn = pool.get_connection()
            try:
                _count(conn, kind, hit)
            except BaseException:
                conn.disconnect()
            finally:
                pool.release(conn)

        with self._counts_lock:
            if len(self._pending_counts) >= MAX_PENDING_COUNTS:
                return
            try:
                future = self._count_executor.submit(run)
            except RuntimeError:  # closed
                return
            self._pending_counts.add(future)
        future.add_done_callback(self._count_done)

    def _count_done(self, future: "concurrent.futures.Future[None]") -> None:
        with self._counts_lock:
            self._pending_counts.discard(future)

    def _flush_counts(self) -> None:
        """Waits, at most `lookup_timeout`, for this client's counts to be sent."""
        with self._counts_lock:
            pending = list(self._pending_counts)
        if pending:
            concurrent.futures.wait(pending, timeout=self.settings.lookup_timeout)

    def stats(self) -> dict[str, LookupStats] | None:
        """Lookup counts of every process, per kind (this client's own
        lookups sent first); None when Redis does not answer."""
        self._flush_counts()
        def read(conn: Any) -> dict[str, LookupStats]:
            return {kind: stats_from(_mget(conn, stats_keys(kind))) for kind in KINDS}

        try:
            return self._call(self._lookup_pools[TRANSACTIONS], self.settings.lookup_timeout, read)
        except (redis.RedisError, OSError, RedisUnavailable, RuntimeError):
            return None

    def health(self) -> Health:
        """Whether Redis answers (both databases), how fast, the breaker,
        and what waits in the spool. Never raises for Redis."""
        started = time.perf_counter()
        try:
            for kind in KINDS:
                self._call(
                    self._lookup_pools[kind],
                    self.settings.lookup_timeout,
                    lambda conn: (conn.send_command("PING"), conn.read_response()),
                )
            latency = (time.perf_counter() - started) * 1000 / len(KINDS)
            return Health(True, latency, self.breaker.is_open, self.spool.bytes())
        except (redis.RedisError, OSError, RedisUnavailable, RuntimeError) as err:
            return Health(False, None, self.breaker.is_open, self.spool.bytes(), short(err))


__all__ = ["FlitClient", "RedisUnavailable", "door"]
