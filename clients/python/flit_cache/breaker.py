"""The circuit breaker in front of Redis, as the Rust producer has it
(`src/producer/breaker.rs`): after a run of failures it opens and calls skip
Redis entirely, failing fast to the spool, until a cool-down has passed;
then one probe call decides whether it closes again.

Thread-safe, so one breaker serves a threaded web server; asyncio code uses
it from one thread and never waits on its lock for long.
"""

from __future__ import annotations

import threading
import time


class CircuitBreaker:
    def __init__(self, failures_to_open: int = 3, cooldown: float = 2.0) -> None:
        self._failures_to_open = max(1, failures_to_open)
        self._cooldown = cooldown
        self._lock = threading.Lock()
        self._failures = 0
        # None: closed. Otherwise the monotonic time until which calls fail
        # fast (open), or the deadline of the probe that is out (half-open).
        self._until: float | None = None

    def allow(self) -> bool:
        """Whether a call may go to Redis now."""
        now = time.monotonic()
        with self._lock:
            if self._until is None:
                return True
            if now >= self._until:
                # Half-open: this caller probes; others fail fast until it
                # reports or its deadline passes.
                self._until = now + self._cooldown
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._until = None

    def record_failure(self) -> None:
        with self._lock:
            if self._until is None and self._failures + 1 < self._failures_to_open:
                self._failures += 1
                return
            self._failures = 0
            self._until = time.monotonic() + self._cooldown

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._until is not None
