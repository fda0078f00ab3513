//! What the monitor and `/metrics` read from Redis, each with O(1) or
//! bounded commands (never `KEYS` or a scan): server facts from `INFO` and
//! `CONFIG GET`, queue heads, stream groups, and the upload run reports.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use redis::InfoDict;
use redis::aio::MultiplexedConnection;

use serde::Serialize;

use super::manifest::ParkedSummary;
use super::run_report::{RunReport, RunStatus};
use crate::keys::{CONSUMER_GROUP, EventKind, UPLOAD_QUEUE};

/// Facts about the Redis server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFacts {
    /// Round trip of a PING, the best of three.
    pub latency_ms: f64,
    pub version: String,
    pub used_memory_bytes: u64,
    /// 0: no limit.
    pub maxmemory_bytes: u64,
    pub maxmemory_policy: String,
    pub connected_clients: u64,
    pub aof_enabled: bool,
    /// RDB save points (`CONFIG GET save`); `None` when `CONFIG` is not allowed.
    pub rdb_save: Option<String>,
    /// Failed background saves or AOF writes, as Redis reports them.
    pub persistence_errors: Vec<String>,
    /// Keys evicted since Redis started.
    pub evicted_keys: u64,
    /// Keys per database (`INFO keyspace`), for example `db0 -> 12`.
    pub keys_per_db: BTreeMap<String, u64>,
}

impl ServerFacts {
    /// Neither AOF nor RDB snapshots: a restart loses everything. `None` when unknown.
    pub fn persistence_off(&self) -> Option<bool> {
        let save = self.rdb_save.as_deref()?;
        Some(!self.aof_enabled && save.trim().is_empty())
    }

    /// A policy under which Redis deletes keys to make room. Every record has
    /// a TTL, so `volatile-*` policies may evict records not yet uploaded too.
    pub fn may_evict(&self) -> bool {
        self.maxmemory_policy.starts_with("allkeys-")
            || self.maxmemory_policy.starts_with("volatile-")
    }
}

pub async fn server_facts(conn: &mut MultiplexedConnection) -> redis::RedisResult<ServerFacts> {
    let mut latency_ms = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        redis::cmd("PING").query_async::<String>(conn).await?;
        latency_ms = latency_ms.min(started.elapsed().as_secs_f64() * 1000.0);
    }
    let info: InfoDict = redis::cmd("INFO").query_async(conn).await?;
    // Managed Redis may rename or forbid CONFIG; the rest of the report still stands.
    let rdb_save = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async::<Vec<String>>(conn)
        .await
        .ok()
        .and_then(|pair| pair.into_iter().nth(1));
    let number = |name: &str| info.get::<u64>(name).unwrap_or(0);
    let text = |name: &str| info.get::<String>(name).unwrap_or_default();
    let persistence_errors = [
        "rdb_last_bgsave_status",
        "aof_last_write_status",
        "aof_last_bgrewrite_status",
    ]
    .into_iter()
    .filter_map(|field| {
        let status = text(field);
        (!status.is_empty() && status != "ok").then(|| format!("{field}:{status}"))
    })
    .collect();
    let keys_per_db = (0..16)
        .filter_map(|db| {
            let name = format!("db{db}");
            let line = info.get::<String>(&name)?;
            let keys = line
                .split(',')
                .find_map(|part| part.strip_prefix("keys="))
                .and_then(|n| n.parse().ok())?;
            Some((name, keys))
        })
        .collect();
    Ok(ServerFacts {
        latency_ms,
        version: text("redis_version"),
        used_memory_bytes: number("used_memory"),
        maxmemory_bytes: number("maxmemory"),
        maxmemory_policy: text("maxmemory_policy"),
        connected_clients: number("connected_clients"),
        aof_enabled: number("aof_enabled") == 1,
        rdb_save,
        persistence_errors,
        evicted_keys: number("evicted_keys"),
        keys_per_db,
    })
}

/// One kind's upload queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueState {
    pub length: u64,
    /// Queue entries of the batch an upload is writing now (or left unsettled).
    pub in_flight: u64,
    /// When that batch was cut from the queue.
    pub in_flight_since: Option<DateTime<Utc>>,
    /// The oldest queued record outside the in-flight batch, if any.
    pub oldest_key: Option<String>,
    /// Seconds until that record expires; negative: already gone.
    pub oldest_expires_in_seconds: Option<i64>,
    /// Seconds since that record was stored (or its TTL renewed by a failed
    /// upload), from its remaining TTL.
    pub oldest_age_seconds: Option<u64>,
    /// Batches the warehouse did not take, waiting for a later run.
    pub parked: Vec<ParkedSummary>,
    /// When the first records of a parked batch expire (TTLs are renewed
    /// at each failure).
    pub parked_expires_at: Option<DateTime<Utc>>,
}

pub async fn queue_state(
    records: &mut MultiplexedConnection,
    kind: EventKind,
    ttl_seconds: u64,
) -> redis::RedisResult<QueueState> {
    let length = super::upload_queue::queued(records).await?;
    let head = super::upload_queue::in_flight_head(records, kind).await?;
    let in_flight = head.as_ref().map_or(0, |m| m.entries() as u64);
    let parked = super::upload_queue::parked_summaries(records, kind).await?;
    // The in-flight batch has left the queue (or, cut by an earlier
    // version, heads it), and its TTLs are renewed when it fails: the
    // record to watch is the first one behind it.
    let behind = match &head {
        Some(head) if head.entries_in_queue() => in_flight,
        _ => 0,
    };
    let oldest: Option<String> = redis::cmd("LINDEX")
        .arg(UPLOAD_QUEUE)
        .arg(behind)
        .query_async(records)
        .await?;
    let mut expires_in = None;
    if let Some(key) = &oldest {
        let pttl: i64 = redis::cmd("PTTL").arg(key).query_async(records).await?;
        expires_in = Some(match pttl {
            -2 => -1, // the record is gone: it expired before upload
            -1 => i64::MAX,
            ms => ms / 1000,
        });
    }
    Ok(QueueState {
        length,
        in_flight,
        in_flight_since: head.map(|m| m.ingested_at),
        oldest_key: oldest,
        oldest_expires_in_seconds: expires_in,
        oldest_age_seconds: expires_in
            .filter(|left| (0..=ttl_seconds as i64).contains(left))
            .map(|left| ttl_seconds - left as u64),
        parked_expires_at: parked
            .iter()
            .map(|p| super::upload_queue::parked_expiry(p, ttl_seconds))
            .min(),
        parked,
    })
}

/// How many records of a kind Redis took in lately, and what one costs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecordVolume {
    /// Records (and new versions) stored in the last 24 hours.
    pub stored_last_24h: u64,
    /// Bytes one record takes with its field of the uploaded index (MEMORY
    /// USAGE of a few sampled records); `None` when there is none to sample.
    pub bytes_per_record: Option<u64>,
    pub sampled: usize,
}

/// Records to sample for their size.
const SAMPLE_RECORDS: usize = 5;

pub async fn record_volume(
    records: &mut MultiplexedConnection,
    kind: EventKind,
    now: DateTime<Utc>,
) -> redis::RedisResult<RecordVolume> {
    let hour = now.timestamp().div_euclid(3_600);
    let prefix = crate::keys::stored_per_hour_prefix(kind);
    let counters: Vec<String> = (0..24)
        .map(|back| format!("{prefix}{}", hour - back))
        .collect();
    let counts: Vec<Option<u64>> = redis::cmd("MGET")
        .arg(&counters)
        .query_async(records)
        .await?;
    // The newest queued records, or (all uploaded) the first a bounded
    // SCAN finds.
    let mut keys: Vec<String> = redis::cmd("LRANGE")
        .arg(UPLOAD_QUEUE)
        .arg(-(SAMPLE_RECORDS as i64))
        .arg(-1)
        .query_async(records)
        .await?;
    if keys.is_empty() {
        let (_, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(format!("{}*", kind.record_prefix()))
            .arg("COUNT")
            .arg(200)
            .query_async(records)
            .await?;
        keys = found.into_iter().take(SAMPLE_RECORDS).collect();
    }
    // What the uploaded index takes per field: MEMORY USAGE samples a few
    // fields of a large hash, so this stays cheap however large it is.
    let index = crate::keys::uploaded_index_key(kind);
    let (index_bytes, index_fields): (Option<u64>, u64) = redis::pipe()
        .cmd("MEMORY")
        .arg("USAGE")
        .arg(&index)
        .cmd("HLEN")
        .arg(&index)
        .query_async(records)
        .await?;
    let per_field = match (index_bytes, index_fields) {
        (Some(bytes), fields) if fields >= 100 => bytes / fields,
        _ => INDEX_FIELD_BYTES,
    };
    let mut total = 0u64;
    let mut sampled = 0usize;
    for key in &keys {
        if kind.id_of_key(key).is_none() {
            continue;
        }
        let record: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(records)
            .await?;
        if let Some(record) = record {
            // A record not uploaded yet will take a field of the index
            // like the others.
            total += record + per_field;
            sampled += 1;
        }
    }
    Ok(RecordVolume {
        stored_last_24h: counts.into_iter().flatten().sum(),
        bytes_per_record: total.checked_div(sampled as u64),
        sampled,
    })
}

/// The memory records kept for their whole TTL will take, as `monitor`
/// and /metrics project it: records stored in the last 24 hours x bytes per
/// record x TTL in days, summed over the kinds; `None` when no kind could
/// be sampled (a kind with nothing to sample holds no records: it adds
/// nothing).
pub fn projected_memory<'a>(
    volumes: impl IntoIterator<Item = &'a RecordVolume>,
    ttl_seconds: u64,
) -> Option<u64> {
    let days = ttl_seconds as f64 / 86_400.0;
    let sampled: Vec<(u64, u64)> = volumes
        .into_iter()
        .filter_map(|v| Some((v.stored_last_24h, v.bytes_per_record?)))
        .collect();
    if sampled.is_empty() {
        return None;
    }
    let per_day: f64 = sampled.iter().map(|(n, bytes)| (n * bytes) as f64).sum();
    Some((per_day * days) as u64)
}

/// What a field of the uploaded index takes when too few are there to
/// measure (an id of about 36 bytes, its version and upload time, in a
/// large hash on Redis 7.0).
const INDEX_FIELD_BYTES: u64 = 110;

/// One kind's stream and its consumer group.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamState {
    pub length: u64,
    /// Whether the `flit-cache` group exists (a worker has run).
    pub group_exists: bool,
    pub consumers: u64,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell.
    pub lag: Option<u64>,
    /// Entries delivered but not yet acknowledged.
    pub pending: u64,
    pub dead_letter_length: u64,
    /// How far the stream's last generated id is ahead of the server's
    /// clock, in ms (negative: behind, as it should be). Every later
    /// automatic id is at least that far ahead.
    pub last_id_ahead_ms: Option<i64>,
    /// The stream's last generated id.
    pub last_generated_id: Option<String>,
    /// The stream's max-deleted-entry-id, when it is past the group's last
    /// delivered id: entries were deleted before flit-cache read them (a
    /// producer's XDEL; XADD MAXLEN/MINID trims where Redis records them).
    pub deleted_before_read: Option<String>,
    /// Dead letters of the last hour, counted up to the alert threshold + 1.
    pub dead_letters_last_hour: u64,
    /// Dead letters the stream's cap removed, since the counter began.
    pub dead_letters_trimmed: u64,
    /// Memory the dead-letter stream takes (Redis's sampled estimate).
    pub dead_letter_bytes: u64,
}

/// Reads one kind's stream facts; `dead_letter_limit` bounds the count of
/// the last hour's dead letters (the alert threshold is all that matters).
pub async fn stream_state(
    conn: &mut MultiplexedConnection,
    kind: EventKind,
    dead_letter_limit: u64,
) -> redis::RedisResult<StreamState> {
    // Plain read commands, no script: the monitor user runs no code of its
    // own, and a script cache emptied by a restart must not blind it.
    let (length, dead_letter_length, exists, time, trimmed, dead_letter_bytes): (
        u64,
        u64,
        bool,
        (i64, i64),
        Option<u64>,
        Option<u64>,
    ) = redis::pipe()
        .cmd("XLEN")
        .arg(kind.stream())
        .cmd("XLEN")
        .arg(kind.dead_letter_stream())
        .cmd("EXISTS")
        .arg(kind.stream())
        .cmd("TIME")
        .cmd("GET")
        .arg(kind.dead_letters_trimmed_key())
        .cmd("MEMORY")
        .arg("USAGE")
        .arg(kind.dead_letter_stream())
        .arg("SAMPLES")
        .arg(5)
        .query_async(conn)
        .await?;
    let now_ms = super::connection::clock_reading(time).timestamp_millis();
    // Dead letters of the last hour, counted up to the limit: the threshold
    // is all that matters. The entries themselves come back (at most the
    // limit, each at most FLIT_DEAD_LETTER_KEEP_BYTES of its event): Redis
    // has no command that only counts a range.
    let since = (now_ms - 3_600_000).max(0);
    let recent: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(kind.dead_letter_stream())
        .arg(since)
        .arg("+")
        .arg("COUNT")
        .arg(dead_letter_limit.max(1))
        .query_async(conn)
        .await?;
    let mut state = StreamState {
        length,
        dead_letter_length,
        dead_letters_last_hour: recent.len() as u64,
        dead_letters_trimmed: trimmed.unwrap_or(0),
        dead_letter_bytes: dead_letter_bytes.unwrap_or(0),
        ..StreamState::default()
    };
    if !exists {
        state.lag = Some(0);
        return Ok(state);
    }
    let (info, groups): (BTreeMap<String, redis::Value>, Vec<redis::Value>) = redis::pipe()
        .cmd("XINFO")
        .arg("STREAM")
        .arg(kind.stream())
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(kind.stream())
        .query_async(conn)
        .await?;
    let info_text = |name: &str| {
        info.get(name)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    };
    let last = info_text("last-generated-id").and_then(|id| StreamId::parse(&id));
    // Redis 7.0+; older servers do not say, and nothing is judged.
    let max_deleted = info_text("max-deleted-entry-id").and_then(|id| StreamId::parse(&id));
    state.last_id_ahead_ms =
        last.map(|id| i64::try_from(i128::from(id.ms) - i128::from(now_ms)).unwrap_or(i64::MAX));
    state.last_generated_id = last.map(|id| id.to_string());

    let Some(group) = consumer_group(groups)? else {
        state.lag = Some(length);
        return Ok(state);
    };
    state.group_exists = true;
    state.consumers = group.consumers;
    state.pending = group.pending;
    let delivered = group.last_delivered;
    let reported_lag = group.lag;
    let unread = has_unread(conn, kind, delivered, last).await?;
    // `lag` is Redis 7's count of undelivered entries (nil when unknown),
    // but it can be stale after a restart: it only counts when an
    // undelivered entry exists, and never beyond the stream's length.
    state.lag = match unread {
        false => Some(0),
        true => reported_lag.map(|lag| lag.clamp(1, length.max(1))),
    };
    // An entry deleted past the last delivered id was never read. A
    // max-deleted id past the last generated one is what lowering the ids
    // leaves (XSETID), not a deletion.
    state.deleted_before_read = max_deleted
        .filter(|deleted| *deleted > delivered && last.is_some_and(|last| *deleted <= last))
        .map(|deleted| deleted.to_string());
    Ok(state)
}

/// flit-cache's consumer group as XINFO GROUPS tells it.
struct GroupFacts {
    consumers: u64,
    pending: u64,
    last_delivered: StreamId,
    /// Redis 7's count of undelivered entries; nil when it does not know.
    lag: Option<u64>,
}

/// flit-cache's group among the stream's groups (XINFO GROUPS), if it exists.
fn consumer_group(groups: Vec<redis::Value>) -> redis::RedisResult<Option<GroupFacts>> {
    for group in groups {
        let fields: BTreeMap<String, redis::Value> = redis::from_redis_value(group)?;
        let text = |name: &str| {
            fields
                .get(name)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        };
        if text("name").as_deref() != Some(CONSUMER_GROUP) {
            continue;
        }
        let number = |name: &str| {
            fields
                .get(name)
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
        };
        return Ok(Some(GroupFacts {
            consumers: number("consumers").unwrap_or(0),
            pending: number("pending").unwrap_or(0),
            last_delivered: text("last-delivered-id")
                .and_then(|id| StreamId::parse(&id))
                .unwrap_or_default(),
            lag: number("lag"),
        }));
    }
    Ok(None)
}

/// Whether an entry after the group's last delivered one exists. Nothing
/// comes after the last generated id (and asking would fail when it is the
/// largest possible one).
async fn has_unread(
    conn: &mut MultiplexedConnection,
    kind: EventKind,
    delivered: StreamId,
    last: Option<StreamId>,
) -> redis::RedisResult<bool> {
    match last {
        Some(last) if last > delivered => {
            let next: Vec<redis::Value> = redis::cmd("XRANGE")
                .arg(kind.stream())
                .arg(format!("({delivered}"))
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(conn)
                .await?;
            Ok(!next.is_empty())
        }
        _ => Ok(false),
    }
}

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    fn parse(text: &str) -> Option<StreamId> {
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Upload runs the monitor judges, newest first.
pub const RECENT_RUNS: usize = 20;

/// What the kept run reports say.
#[derive(Debug, Clone, Serialize)]
pub struct UploadState {
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_run: Option<RunReport>,
    /// How many of the latest reports the failure rate covers.
    pub recent_runs: usize,
    /// Runs among those that kept records back (status partial).
    pub recent_failures: usize,
    /// Records that expired before upload, over every kept report.
    pub expired_in_history: u64,
    /// The oldest kept report's start, the window of `expired_in_history`.
    pub history_since: Option<DateTime<Utc>>,
    /// Reports that could not be read (written by another version?).
    pub unreadable_reports: usize,
}

impl UploadState {
    pub fn failure_rate(&self) -> Option<f64> {
        (self.recent_runs > 0).then(|| self.recent_failures as f64 / self.recent_runs as f64)
    }
}

pub async fn upload_state(state: &mut MultiplexedConnection) -> redis::RedisResult<UploadState> {
    let (last_success, history) = super::reports::history(state).await?;
    let mut unreadable_reports = 0;
    let reports: Vec<RunReport> = history
        .iter()
        .filter_map(|text| {
            let report = serde_json::from_str(text).ok();
            unreadable_reports += usize::from(report.is_none());
            report
        })
        .collect();
    let recent = &reports[..reports.len().min(RECENT_RUNS)];
    Ok(UploadState {
        last_success_at: last_success,
        last_run: reports.first().cloned(),
        recent_runs: recent.len(),
        recent_failures: recent
            .iter()
            .filter(|r| r.status == RunStatus::Partial)
            .count(),
        expired_in_history: reports
            .iter()
            .flat_map(|r| &r.tables)
            .map(|t| t.expired)
            .sum(),
        history_since: reports.last().map(|r| r.started_at),
        unreadable_reports,
    })
}
