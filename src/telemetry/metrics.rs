//! The service's Prometheus metrics as a leaf of the module graph: every
//! name and its meaning in one place (README lists the same), the recorder
//! behind `/metrics`, and one type per event a component records, each with
//! an `emit` (in the manner of Vector's internal events). Components build
//! an event from plain values they already hold; this module knows none of
//! them. The values read from Redis at each scrape are set beside `/metrics`
//! (`http::scrape`), with the names defined here. Without an
//! installed recorder (the library used by another program, the one-shot
//! commands) emitting is a no-op.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS_INGESTED: &str = "flit_events_ingested_total";
pub const EVENTS_DUPLICATE: &str = "flit_events_duplicate_total";
pub const EVENTS_REJECTED: &str = "flit_events_rejected_total";
pub const WORKER_BATCH_DURATION: &str = "flit_worker_batch_duration_seconds";
pub const UPLOAD_ROWS: &str = "flit_upload_rows_total";
pub const UPLOAD_RUNS: &str = "flit_upload_runs_total";
pub const UPLOAD_DURATION: &str = "flit_upload_duration_seconds";
pub const UPLOAD_LAST_SUCCESS: &str = "flit_upload_last_success_timestamp_seconds";
pub const QUEUE_LENGTH: &str = "flit_upload_queue_length";
pub const QUEUE_OLDEST_AGE: &str = "flit_upload_queue_oldest_age_seconds";
pub const PARKED_BATCHES: &str = "flit_upload_parked_batches";
pub const IN_FLIGHT_AGE: &str = "flit_upload_in_flight_age_seconds";
pub const STREAM_LENGTH: &str = "flit_stream_length";
pub const STREAM_LAG: &str = "flit_stream_lag";
pub const STREAM_PENDING: &str = "flit_stream_pending";
pub const DEAD_LETTER_LENGTH: &str = "flit_dead_letter_length";
pub const DEAD_LETTERS_LAST_HOUR: &str = "flit_dead_letters_last_hour";
pub const DEAD_LETTER_BYTES: &str = "flit_dead_letter_bytes";
pub const DEAD_LETTERS_TRIMMED: &str = "flit_dead_letters_trimmed_total";
pub const STREAM_LAST_ID_AHEAD: &str = "flit_stream_last_id_ahead_seconds";
pub const STREAM_DELETED_BEFORE_READ: &str = "flit_stream_deleted_before_read";
pub const WAREHOUSE_UP: &str = "flit_warehouse_up";
pub const WAREHOUSE_HAS_RECENT_EVENTS: &str = "flit_warehouse_has_recent_events";
pub const WAREHOUSE_NEWEST_EVENT: &str = "flit_warehouse_newest_event_timestamp_seconds";
pub const WAREHOUSE_ROWS_LAST_24H: &str = "flit_warehouse_rows_last_24h";
pub const WAREHOUSE_CHECKED: &str = "flit_warehouse_checked_timestamp_seconds";
pub const CACHE_LOOKUPS: &str = "flit_cache_lookups_total";
pub const CACHE_HIT_RATIO: &str = "flit_cache_hit_ratio";
pub const CACHE_LOOKUPS_LAST_HOUR: &str = "flit_cache_lookups_last_hour";
pub const REDIS_UP: &str = "flit_redis_up";
pub const REDIS_USED_MEMORY: &str = "flit_redis_used_memory_bytes";
pub const SPOOL_BYTES: &str = "flit_spool_bytes";
// What `monitor` judges, read at each scrape from the same status report.
pub const REDIS_MAXMEMORY: &str = "flit_redis_maxmemory_bytes";
pub const REDIS_MAXMEMORY_POLICY: &str = "flit_redis_maxmemory_policy";
pub const REDIS_EVICTED_KEYS: &str = "flit_redis_evicted_keys";
pub const REDIS_PERSISTENCE_ENABLED: &str = "flit_redis_persistence_enabled";
pub const REDIS_PERSISTENCE_ERRORS: &str = "flit_redis_persistence_errors";
pub const REDIS_PROJECTED_MEMORY: &str = "flit_redis_projected_memory_bytes";
pub const QUEUE_OLDEST_TTL: &str = "flit_upload_queue_oldest_ttl_seconds";
pub const IN_FLIGHT_RECORDS: &str = "flit_upload_in_flight_records";
pub const PARKED_RECORDS: &str = "flit_upload_parked_records";
pub const PARKED_EXPIRES_IN: &str = "flit_upload_parked_expires_in_seconds";
pub const PARKED_MAX_FAILURES: &str = "flit_upload_parked_max_failures";
pub const RECENT_RUNS: &str = "flit_upload_recent_runs";
pub const RECENT_FAILURES: &str = "flit_upload_recent_failures";
pub const HISTORY_EXPIRED: &str = "flit_upload_history_expired_records";
pub const HISTORY_SINCE: &str = "flit_upload_history_since_timestamp_seconds";
pub const TABLE_SET_ASIDE: &str = "flit_upload_table_set_aside";

fn describe_all() {
    describe_counter!(
        EVENTS_INGESTED,
        "Events stored as new records and queued for upload, per kind."
    );
    describe_counter!(
        EVENTS_DUPLICATE,
        "Events already stored with the same payload (redelivery, producer retry), per kind."
    );
    describe_counter!(
        EVENTS_REJECTED,
        "Events dead-lettered, per kind and reason code."
    );
    describe_histogram!(
        WORKER_BATCH_DURATION,
        Unit::Seconds,
        "Time from a worker's read to the commit of that batch, per kind."
    );
    describe_counter!(
        UPLOAD_ROWS,
        "Records settled by upload runs in this process, per table and outcome (uploaded, dead_lettered, expired, kept_for_retry)."
    );
    describe_counter!(
        UPLOAD_RUNS,
        "Upload runs in this process, per status (ok, partial, busy)."
    );
    describe_histogram!(
        UPLOAD_DURATION,
        Unit::Seconds,
        "Duration of upload runs in this process."
    );
    describe_gauge!(
        UPLOAD_LAST_SUCCESS,
        Unit::Seconds,
        "End of the last upload run that kept nothing back, by any process (Unix time)."
    );
    describe_gauge!(QUEUE_LENGTH, "Records waiting in upload_queue, per kind.");
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest queued record (since stored or its TTL renewed), per kind."
    );
    describe_gauge!(
        PARKED_BATCHES,
        "Batches the warehouse did not take, parked for a later run, per kind."
    );
    describe_gauge!(
        IN_FLIGHT_AGE,
        Unit::Seconds,
        "Age of the batch in flight (0: none), per kind."
    );
    describe_gauge!(STREAM_LENGTH, "Entries in the event stream, per kind.");
    describe_gauge!(
        STREAM_LAG,
        "Stream entries not yet read by the flit-cache group, per kind."
    );
    describe_gauge!(
        STREAM_PENDING,
        "Stream entries read but not yet committed, per kind."
    );
    describe_gauge!(
        DEAD_LETTER_LENGTH,
        "Entries in the dead-letter stream, per kind."
    );
    describe_gauge!(
        DEAD_LETTERS_LAST_HOUR,
        "Dead letters added in the last hour, per kind (counted up to 1,000 or the alert threshold)."
    );
    describe_gauge!(
        DEAD_LETTER_BYTES,
        Unit::Bytes,
        "Memory the dead-letter stream takes in Redis (sampled estimate), per kind."
    );
    describe_counter!(
        DEAD_LETTERS_TRIMMED,
        "Old dead letters removed by the dead-letter stream's cap (FLIT_DEAD_LETTER_MAXLEN), per kind."
    );
    describe_gauge!(
        STREAM_LAST_ID_AHEAD,
        Unit::Seconds,
        "How far the stream's last generated id is ahead of the Redis clock (negative: behind, as it should be), per kind."
    );
    describe_gauge!(
        WAREHOUSE_UP,
        "1 when the last warehouse check (every FLIT_WAREHOUSE_CHECK_SECONDS) could read the table, else 0, per table."
    );
    describe_gauge!(
        WAREHOUSE_HAS_RECENT_EVENTS,
        "1 when the last warehouse check found events in the table's recent partitions (the record TTL + a day), per table."
    );
    describe_gauge!(
        WAREHOUSE_NEWEST_EVENT,
        Unit::Seconds,
        "The newest event time in the table's recent partitions at the last warehouse check, per table."
    );
    describe_gauge!(
        WAREHOUSE_ROWS_LAST_24H,
        "Rows the table received (by _ingestion_timestamp) in the 24 hours before the last warehouse check, per table."
    );
    describe_gauge!(
        WAREHOUSE_CHECKED,
        Unit::Seconds,
        "When the last warehouse check finished."
    );
    describe_gauge!(
        STREAM_DELETED_BEFORE_READ,
        "1 when the stream's max-deleted-entry-id is past the consumer group's last delivered id: a client deleted entries before flit-cache read them, per kind."
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Record lookups (get_transaction, get_prediction) by every process, per kind and result (hit, miss)."
    );
    describe_gauge!(
        CACHE_HIT_RATIO,
        "Hits over lookups in the last hour (one-minute slots, by the clock of the process that looked up), per kind; NaN after an hour without lookups."
    );
    describe_gauge!(
        CACHE_LOOKUPS_LAST_HOUR,
        "Record lookups by every process in the last hour, per kind: the hit ratio's weight (FLIT_ALERT_HIT_RATE_MIN_LOOKUPS)."
    );
    describe_gauge!(REDIS_UP, "1 when Redis answered the last scrape, else 0.");
    describe_gauge!(REDIS_USED_MEMORY, Unit::Bytes, "Redis used_memory.");
    describe_gauge!(
        SPOOL_BYTES,
        Unit::Bytes,
        "Events spooled to this host's disk while Redis refused them."
    );
    describe_gauge!(
        REDIS_MAXMEMORY,
        Unit::Bytes,
        "Redis maxmemory (0: no limit)."
    );
    describe_gauge!(
        REDIS_MAXMEMORY_POLICY,
        "1 for Redis's current maxmemory-policy (label policy), 0 for a policy it had before."
    );
    describe_gauge!(
        REDIS_EVICTED_KEYS,
        "Keys Redis has evicted since it started (INFO evicted_keys)."
    );
    describe_gauge!(
        REDIS_PERSISTENCE_ENABLED,
        "1 when Redis keeps data on disk (AOF or RDB save points), 0 when neither; absent when CONFIG GET is refused."
    );
    describe_gauge!(
        REDIS_PERSISTENCE_ERRORS,
        "Redis persistence status fields that are not ok (rdb_last_bgsave_status, aof_last_write_status, aof_last_bgrewrite_status)."
    );
    describe_gauge!(
        REDIS_PROJECTED_MEMORY,
        Unit::Bytes,
        "Memory records will take once a TTL's worth is kept: last 24 hours' records x bytes per record x TTL in days, both kinds (with FLIT_KEEP_UPLOADED on; NaN when nothing could be sampled)."
    );
    describe_gauge!(
        QUEUE_OLDEST_TTL,
        Unit::Seconds,
        "TTL left to the oldest queued record behind the in-flight batch, per kind; -1: it expired before upload; NaN: queue empty; +Inf: no TTL."
    );
    describe_gauge!(
        IN_FLIGHT_RECORDS,
        "Queue entries of the batch in flight (0: none), per kind."
    );
    describe_gauge!(PARKED_RECORDS, "Records in parked batches, per kind.");
    describe_gauge!(
        PARKED_EXPIRES_IN,
        Unit::Seconds,
        "Time until the first records of a parked batch expire, per kind (NaN: nothing parked)."
    );
    describe_gauge!(
        PARKED_MAX_FAILURES,
        "Runs the most-failed parked batch failed in, per kind (0: nothing parked)."
    );
    describe_gauge!(
        RECENT_RUNS,
        "Upload runs by any process among the kept reports' latest 20: the failure rate's weight."
    );
    describe_gauge!(
        RECENT_FAILURES,
        "Upload runs among those that kept records back (status partial)."
    );
    describe_gauge!(
        HISTORY_EXPIRED,
        "Records that expired in Redis before upload, over the kept run reports (the last 100 runs)."
    );
    describe_gauge!(
        HISTORY_SINCE,
        Unit::Seconds,
        "Start of the oldest kept run report, the window of the expired count (Unix time)."
    );
    describe_gauge!(
        TABLE_SET_ASIDE,
        "1 when the last upload run set the table aside (a quota, the day's load-job budget, credentials), else 0, per table."
    );
}

/// The `outcome` label of `UPLOAD_ROWS`, in the order of `UploadTableSettled`'s counts.
const UPLOAD_OUTCOMES: [&str; 4] = ["uploaded", "dead_lettered", "expired", "kept_for_retry"];

/// The label values whose series exist before their first event, so that a
/// first increment shows as a rate, not as a new series. They are the
/// components' names (event kinds, warehouse tables), handed in at install.
pub struct KnownSeries<'a> {
    /// Event kind names (the `kind` label).
    pub kinds: &'a [&'static str],
    /// Qualified warehouse table names (the `table` label).
    pub tables: &'a [String],
}

fn start_at_zero(known: &KnownSeries<'_>) {
    for &kind in known.kinds {
        counter!(EVENTS_INGESTED, "kind" => kind).increment(0);
        counter!(EVENTS_DUPLICATE, "kind" => kind).increment(0);
    }
    for table in known.tables {
        for outcome in UPLOAD_OUTCOMES {
            counter!(UPLOAD_ROWS, "table" => table.clone(), "outcome" => outcome).increment(0);
        }
    }
    for status in UploadStatus::ALL {
        counter!(UPLOAD_RUNS, "status" => status.label()).increment(0);
    }
}

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install(known: &KnownSeries<'_>) -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(WORKER_BATCH_DURATION.to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(UPLOAD_DURATION.to_owned()),
            &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0],
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("another metrics recorder is installed"))?;
    describe_all();
    start_at_zero(known);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// A worker committed a batch it read `elapsed` ago: `stored` events became
/// new records, `duplicates` were already stored. Its rejected events are
/// each an `EventRejected`.
pub struct BatchCommitted {
    pub kind: &'static str,
    pub stored: u64,
    pub duplicates: u64,
    pub elapsed: Duration,
}

impl BatchCommitted {
    pub fn emit(self) {
        counter!(EVENTS_INGESTED, "kind" => self.kind).increment(self.stored);
        counter!(EVENTS_DUPLICATE, "kind" => self.kind).increment(self.duplicates);
        histogram!(WORKER_BATCH_DURATION, "kind" => self.kind).record(self.elapsed.as_secs_f64());
    }
}

/// A worker dead-lettered one event of a committed batch, for `reason` (the
/// rejection's stable code).
pub struct EventRejected {
    pub kind: &'static str,
    pub reason: &'static str,
}

impl EventRejected {
    pub fn emit(self) {
        counter!(EVENTS_REJECTED, "kind" => self.kind, "reason" => self.reason).increment(1);
    }
}

/// How an upload run ended: the `status` label of `UPLOAD_RUNS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStatus {
    /// Everything queued at the start was settled.
    Ok,
    /// Some records are kept for a later run.
    Partial,
    /// Another run held the upload lock; nothing was done.
    Busy,
}

impl UploadStatus {
    pub const ALL: [UploadStatus; 3] =
        [UploadStatus::Ok, UploadStatus::Partial, UploadStatus::Busy];

    pub fn label(self) -> &'static str {
        match self {
            UploadStatus::Ok => "ok",
            UploadStatus::Partial => "partial",
            UploadStatus::Busy => "busy",
        }
    }
}

/// An upload run finished in this process. What it settled per table is
/// each an `UploadTableSettled`.
pub struct UploadRunFinished {
    pub status: UploadStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

impl UploadRunFinished {
    pub fn emit(self) {
        counter!(UPLOAD_RUNS, "status" => self.status.label()).increment(1);
        let seconds = (self.finished_at - self.started_at).num_milliseconds() as f64 / 1000.0;
        histogram!(UPLOAD_DURATION).record(seconds.max(0.0));
    }
}

/// What an upload run in this process settled for one table, in records.
pub struct UploadTableSettled<'a> {
    /// The qualified table name.
    pub table: &'a str,
    pub uploaded: u64,
    pub dead_lettered: u64,
    pub expired: u64,
    pub kept_for_retry: u64,
}

impl UploadTableSettled<'_> {
    pub fn emit(self) {
        let rows = [
            self.uploaded,
            self.dead_lettered,
            self.expired,
            self.kept_for_retry,
        ];
        for (outcome, rows) in UPLOAD_OUTCOMES.into_iter().zip(rows) {
            counter!(UPLOAD_ROWS, "table" => self.table.to_owned(), "outcome" => outcome)
                .increment(rows);
        }
    }
}
