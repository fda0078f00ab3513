"""What the sync and asyncio clients share: settings (the Rust side's
environment variables and defaults), preparing an event at the door, the
Redis names, the lookup counters, and the result types."""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import json
import os
import uuid
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, TypeVar, Union

from . import door

Event = Union[Mapping[str, Any], str, bytes]
P = TypeVar("P")

TRANSACTIONS = door.TRANSACTIONS
PREDICTIONS = door.PREDICTIONS
KINDS = (TRANSACTIONS, PREDICTIONS)
#: One place for the Redis names this client uses (src/store/keys.rs is the
#: other side's): the streams, the record keys, the lookup counters.
STREAMS = {TRANSACTIONS: "stream:transactions", PREDICTIONS: "stream:predictions"}
RECORD_PREFIX = {TRANSACTIONS: "tx:", PREDICTIONS: "pred:"}
DATA_FIELD = "data"
#: Lookup counters in the state database (src/store/keys.rs,
#: `lookup_total_key`/`lookup_minute_key`): a total per kind and result, and
#: one integer per minute of the hour that expires within the hour, so the
#: minutes that exist are the last hour's. Names from a closed set, values
#: integers: what the flit-reader user may INCR.
LOOKUP_RESULTS = ("hits", "misses")
LOOKUP_MINUTE_TTL_SECONDS = 59 * 60


def lookup_total_key(kind: str, result: str) -> str:
    return f"flit:cache:{kind}:{result}"


def lookup_minute_key(kind: str, result: str, minute: int) -> str:
    return f"flit:cache:{kind}:{result}:{minute % 60:02d}"


def count_commands(kind: str, hit: bool, now: float) -> list[tuple[Any, ...]]:
    """One lookup counted, as the Rust side counts it (`count_lookup`): its
    total and the current minute's counter, with `EXPIRE NX` sent every time
    so that a counter cut off from its expiry gets one at the next count. No
    MULTI: the lookup user may not queue commands."""
    result = "hits" if hit else "misses"
    slot = lookup_minute_key(kind, result, int(now // 60) % 60)
    return [
        ("INCR", lookup_total_key(kind, result)),
        ("INCR", slot),
        ("EXPIRE", slot, LOOKUP_MINUTE_TTL_SECONDS, "NX"),
    ]


#: Counts waiting to be sent, per client; past this, new ones are dropped
#: (a Redis that holds writes, a write pause): statistics, never lookups,
#: pay for it.
MAX_PENDING_COUNTS = 1000


def stats_keys(kind: str) -> list[str]:
    """The counters `stats_from` reads: per result, its total, then its 60
    minutes (the order of the Rust side's `lookup_counts`)."""
    keys = []
    for result in LOOKUP_RESULTS:
        keys.append(lookup_total_key(kind, result))
        keys.extend(lookup_minute_key(kind, result, minute) for minute in range(60))
    return keys


def stats_from(values: list[Any]) -> "LookupStats":
    numbers = [int(v) if v is not None else 0 for v in values]
    return LookupStats(numbers[0], numbers[61], sum(numbers[1:61]), sum(numbers[62:122]))


class Delivery(str, enum.Enum):
    """Where a sent event went."""

    #: Added to the stream.
    STREAMED = "streamed"
    #: Redis could not take it in time; it is safe in the spool.
    SPOOLED = "spooled"


class CorruptRecord(ValueError):
    """A record key holds a value that is not JSON."""


@dataclass(frozen=True)
class LookupStats:
    """Lookups of one kind, by every process: totals since the counters
    began and the last hour's, whose ratio is the hit rate (None when the
    hour saw no lookup). The same figures as `flit-cache monitor`."""

    hits: int
    misses: int
    last_hour_hits: int
    last_hour_misses: int

    @property
    def hit_rate(self) -> float | None:
        total = self.last_hour_hits + self.last_hour_misses
        return self.last_hour_hits / total if total else None


@dataclass(frozen=True)
class Health:
    redis_ok: bool
    #: Mean round trip of a PING to each database; None when down.
    latency_ms: float | None
    breaker_open: bool
    spool_bytes: int
    error: str | None = None


@dataclass
class ReplayReport:
    files: int = 0
    events: int = 0


def _millis(env: Mapping[str, str], name: str, default: int) -> float:
    text = env.get(name)
    if text is None or not text.strip():
        return default / 1000
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of milliseconds, not {text!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1")
    return value / 1000


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None


def _time(env: Mapping[str, str], name: str, default: _dt.datetime) -> _dt.datetime:
    text = env.get(name)
    if text is None or not text.strip():
        return default
    # The door's own reading of a TIMESTAMP literal (naive is UTC), as the
    # Rust side reads this variable.
    micros = door._parse_timestamp(text.strip())
    if micros is None:
        raise ValueError(f"{name} must be a date and time such as 2000-01-01T00:00:00Z, not {text!r}")
    return door._from_us(micros)


@dataclass
class Settings:
    """How the client reaches Redis and where it spools. `from_env` reads
    the variables the Rust side reads, with its defaults."""

    #: Not in repr: it may hold the Redis password. Sends and spool replays
    #: use it (as the flit-producer user, deploy/redis/users.acl).
    url: str = field(default="redis://127.0.0.1:6379", repr=False)
    #: Lookups, stats and health checks (as flit-reader), when they sign in
    #: as another user than sends (FLIT_LOOKUP_REDIS_URL); unset: `url`.
    lookup_url: str | None = field(default=None, repr=False)
    spool_dir: str = "./spool"
    spool_max_bytes: int = 1 << 30
    #: Hard bound of one send's Redis part (FLIT_PRODUCER_TIMEOUT_MS).
    send_timeout: float = 0.1
    #: Hard bound of one lookup, stats read or health check
    #: (FLIT_REDIS_LOOKUP_TIMEOUT_MS).
    lookup_timeout: float = 2.0
    breaker_failures: int = 3
    breaker_cooldown: float = 2.0
    db_transactions: int = 0
    db_predictions: int = 1
    max_event_bytes: int = door.MAX_EVENT_BYTES
    #: The door's time window, as the workers read it
    #: (FLIT_EARLIEST_EVENT_TIME, FLIT_MAX_EVENT_AHEAD_SECONDS).
    earliest_event_time: _dt.datetime = door.EARLIEST_EVENT_TIME
    max_event_ahead: _dt.timedelta = door.MAX_EVENT_AHEAD
    #: Replay the spool from this process once Redis takes events again. On
    #: where no `flit-cache run` can see the spool (an API container).
    replay_spool: bool = False
    #: Bound of one replayed chunk of events.
    replay_timeout: float = 5.0
    #: TLS files for a rediss:// URL, as the Rust side reads them: the CAs
    #: to trust (REDIS_CA_FILE), and a client
    #: certificate chain with its key for mutual TLS (FLIT_REDIS_CERT_FILE,
    #: FLIT_REDIS_KEY_FILE; both or neither). Paths to PEM files.
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if env is None else env
        settings = cls(
            url=env.get("REDIS_URL") or cls.url,
            lookup_url=env.get("FLIT_LOOKUP_REDIS_URL") or None,
            spool_dir=env.get("FLIT_SPOOL_DIR") or cls.spool_dir,
            spool_max_bytes=_int(env, "FLIT_SPOOL_MAX_BYTES", cls.spool_max_bytes),
            send_timeout=_millis(env, "FLIT_PRODUCER_TIMEOUT_MS", 100),
            lookup_timeout=_millis(env, "FLIT_REDIS_LOOKUP_TIMEOUT_MS", 2000),
            breaker_failures=_int(env, "FLIT_BREAKER_FAILURES", 3),
            breaker_cooldown=_millis(env, "FLIT_BREAKER_COOLDOWN_MS", 2000),
            db_transactions=_int(env, "REDIS_DB_TRANSACTIONS", 0),
            db_predictions=_int(env, "REDIS_DB_PREDICTIONS", 1),
            max_event_bytes=_int(env, "FLIT_MAX_EVENT_BYTES", door.MAX_EVENT_BYTES),
            earliest_event_time=_time(env, "FLIT_EARLIEST_EVENT_TIME", door.EARLIEST_EVENT_TIME),
            max_event_ahead=_dt.timedelta(
                seconds=_int(env, "FLIT_MAX_EVENT_AHEAD_SECONDS", int(door.MAX_EVENT_AHEAD.total_seconds()))
            ),
            replay_spool=(env.get("FLIT_CLIENT_REPLAY_SPOOL", "").lower() in ("1", "true", "yes")),
            ssl_ca_certs=(env.get("REDIS_CA_FILE") or "").strip() or None,
            ssl_certfile=(env.get("FLIT_REDIS_CERT_FILE") or "").strip() or None,
            ssl_keyfile=(env.get("FLIT_REDIS_KEY_FILE") or "").strip() or None,
        )
        return settings.with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> "Settings":
        """A checked copy with `overrides` applied (TypeError for a name
        that is not a setting); the original is left as it is."""
        settings = dataclasses.replace(self, **overrides)
        settings.check()
        return settings

    def check(self) -> None:
        if self.db_transactions == self.db_predictions:
            raise ValueError("REDIS_DB_TRANSACTIONS and REDIS_DB_PREDICTIONS must differ")
        for name in ("send_timeout", "lookup_timeout", "breaker_cooldown", "replay_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        self._check_tls()

    def _check_tls(self) -> None:
        """The TLS files as the Rust side checks them: each a readable PEM
        file of the right kind, the certificate and key both or neither,
        and only for a rediss:// URL. Messages name the variable and the
        path, never the contents."""
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError(
                "FLIT_REDIS_KEY_FILE is set but FLIT_REDIS_CERT_FILE is not: mutual TLS needs "
                "the client certificate and its key, set both or neither"
            )
        if self.ssl_certfile and not self.ssl_keyfile:
            raise ValueError(
                "FLIT_REDIS_CERT_FILE is set but FLIT_REDIS_KEY_FILE is not: mutual TLS needs "
                "the client certificate and its key, set both or neither"
            )
        files = [
            ("REDIS_CA_FILE", self.ssl_ca_certs, b"CERTIFICATE-----", "holds no certificate"),
            ("FLIT_REDIS_CERT_FILE", self.ssl_certfile, b"CERTIFICATE-----", "holds no certificate"),
            ("FLIT_REDIS_KEY_FILE", self.ssl_keyfile, b"PRIVATE KEY-----", "holds no private key"),
        ]
        given = [(name, path, marker, missing) for name, path, marker, missing in files if path]
        if not given:
            return
        urls = [("REDIS_URL", self.url)]
        if self.lookup_url:
            urls.append(("FLIT_LOOKUP_REDIS_URL", self.lookup_url))
        if not any(url.startswith("rediss://") for _, url in urls):
            variable, url = urls[0]
            raise ValueError(
                f"{given[0][0]} is set, but {variable} is {redacted_url(url)}, not a rediss:// URL: "
                "the TLS files are only used over TLS (use rediss://host:port)"
            )
        for name, path, marker, missing in given:
            if "-----BEGIN" in path:
                raise ValueError(f"{name} holds what looks like PEM text itself (not shown), not a path")
            try:
                with open(path, "rb") as file:
                    text = file.read()
            except FileNotFoundError:
                raise ValueError(f"{name}: {path} does not exist") from None
            except OSError as err:
                raise ValueError(f"{name}: {path} cannot be read: {err.strerror}") from None
            if b"-----BEGIN " not in text:
                raise ValueError(f"{name}: {path} is not a PEM file (contents not shown)")
            if marker not in text:
                raise ValueError(f"{name}: {path} is PEM but {missing}")

    def tls_kwargs(self, url: str | None = None) -> dict[str, Any]:
        """redis-py's connection keywords for the TLS files on `url` (this
        settings' `url` unless given): none unless it is rediss://, so a
        plain lookup URL beside a TLS send URL (or the other way round)
        gets what its scheme takes. redis-py adds the CA file to the
        system's CAs (the Rust side trusts only the file's); the server's
        certificate and name are always checked."""
        if not (url or self.url).startswith("rediss://"):
            return {}
        kwargs: dict[str, Any] = {}
        if self.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = self.ssl_ca_certs
        if self.ssl_certfile and self.ssl_keyfile:
            kwargs["ssl_certfile"] = self.ssl_certfile
            kwargs["ssl_keyfile"] = self.ssl_keyfile
        return kwargs

    def db_for(self, kind: str) -> int:
        return self.db_transactions if kind == TRANSACTIONS else self.db_predictions


def _json_default(value: Any) -> Any:
    # What an ML API's event dicts hold besides JSON types. A naive datetime
    # is written as isoformat() writes it; the door reads it as UTC.
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def event_bytes(event: Event) -> bytes:
    """The event as the producer's JSON bytes."""
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode("utf-8", "surrogatepass")
    try:
        return json.dumps(
            event, default=_json_default, ensure_ascii=False, allow_nan=False
        ).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError) as err:
        raise door.Rejected("invalid_json", f"not valid JSON: {err}") from None
    except RecursionError:
        raise door.Rejected("too_deep", "the event is nested too deeply to serialise") from None


def prepare(kind: str, event: Event, settings: Settings) -> str:
    """Checks an event at the door as the workers will (this host's clock),
    stamping a missing time now so a retried copy is identical; returns the
    payload to send. Raises door.Rejected."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    return door.accept(
        kind,
        event_bytes(event),
        max_event_bytes=settings.max_event_bytes,
        earliest=settings.earliest_event_time,
        max_ahead=settings.max_event_ahead,
    ).payload


def record_key(kind: str, record_id: str) -> str:
    door.check_id(kind, record_id)
    return RECORD_PREFIX[kind] + record_id


def decode_record(key: str, value: bytes | None) -> dict | None:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as err:
        raise CorruptRecord(f"{key} holds a value that is not JSON: {err}") from None


#: Events a replay sends between two notes of its progress (as the Rust
#: replay): what an interrupted replay may send twice...
REPLAY_CHUNK = 200
#: ...or fewer, once they hold this many bytes: one pipeline stays small.
REPLAY_CHUNK_BYTES = 4 << 20


def next_chunk(events: Iterator[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """The next replay chunk of `events` (line, kind, payload): up to
    REPLAY_CHUNK events, or fewer holding REPLAY_CHUNK_BYTES."""
    chunk: list[tuple[int, str, str]] = []
    size = 0
    for item in events:
        chunk.append(item)
        size += len(item[2])
        if len(chunk) == REPLAY_CHUNK or size >= REPLAY_CHUNK_BYTES:
            break
    return chunk


def replay_bound(settings: "Settings", payloads: list[str]) -> float:
    """A replayed pipeline's bound: `replay_timeout`, and a second more per
    MiB it carries (a large chunk over a slow link is not a failure)."""
    return settings.replay_timeout + sum(map(len, payloads)) / (1 << 20)


def make_pool(
    pool_class: Callable[..., P], settings: "Settings", db: int, timeout: float, lookups: bool = False
) -> P:
    """A pool (`pool_class` is redis-py's sync or asyncio `from_url`) for
    database `db`, every socket wait bounded by `timeout`; for lookups, on
    `lookup_url` when it is set."""
    url, variable = settings.url, "REDIS_URL"
    if lookups and settings.lookup_url:
        url, variable = settings.lookup_url, "FLIT_LOOKUP_REDIS_URL"
    try:
        pool = pool_class(url, socket_timeout=timeout, socket_connect_timeout=timeout, **settings.tls_kwargs(url))
    except ValueError:
        # redis-py's message can quote the password (a '#' or '/' in it
        # breaks the URL's parsing); ours names only the host part.
        raise ValueError(
            f"{variable} is not a Redis URL redis-py reads ({redacted_url(url)}); "
            "percent-encode special characters of the password"
        ) from None
    # A database in the URL's path would win over a keyword; each kind has
    # its own database whatever the URL says.
    pool.connection_kwargs["db"] = db  # type: ignore[attr-defined]
    return pool


def redacted_url(url: str) -> str:
    """The URL without its credentials, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unreadable URL>"
    host = rest.rsplit("@", 1)[-1]
    return f"{scheme}://{host.split('?', 1)[0]}"


def short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 200 else text[:200] + "…"
