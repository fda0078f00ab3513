//! The service's Prometheus metrics: every name and its meaning in one place
//! (README lists the same), the recorder behind `/metrics`, and the values
//! read from Redis at each scrape — queues, streams, lookups, the last
//! upload — which other processes (producers, a cron `batch-upload`) change.
//! Without an installed recorder (the library used by another program, the
//! one-shot commands) recording is a no-op.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::cache::lookup_counts;
use crate::configuration::{AfterUpload, Settings};
use crate::ingest::CommitOutcome;
use crate::keys::EventKind;
use crate::producer::Spool;
use crate::store::{LazyConnection, Role, status};
use crate::upload::{RunReport, RunStatus};

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
        "Hits over lookups in the last hour (Redis clock, one-minute slots), per kind; NaN after an hour without lookups."
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

/// Known series start at 0, so a first increment shows as a rate, not a new series.
fn start_at_zero() {
    for kind in EventKind::ALL {
        counter!(EVENTS_INGESTED, "kind" => kind.name()).increment(0);
        counter!(EVENTS_DUPLICATE, "kind" => kind.name()).increment(0);
        let table = crate::warehouse::TableSpec::for_kind(kind).qualified();
        for outcome in UPLOAD_OUTCOMES {
            counter!(UPLOAD_ROWS, "table" => table.clone(), "outcome" => outcome).increment(0);
        }
    }
    for status in ["ok", "partial", "busy"] {
        counter!(UPLOAD_RUNS, "status" => status).increment(0);
    }
}

const UPLOAD_OUTCOMES: [&str; 4] = ["uploaded", "dead_lettered", "expired", "kept_for_retry"];

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
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
    start_at_zero();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Histogram samples are folded on upkeep; without it they pile up between scrapes.
pub async fn keep_up(handle: PrometheusHandle, stop: tokio_util::sync::CancellationToken) {
    while crate::shutdown::sleep_or_stop(Duration::from_secs(5), &stop).await {
        handle.run_upkeep();
    }
}

/// Reads each table's freshness every `interval` (`monitor --bigquery`'s
/// reading: one small query per table over its recent partitions, so
/// never per scrape) and keeps it in the warehouse gauges, so the alert
/// rules can judge `warehouse_unreachable` and `warehouse_stale`.
pub async fn watch_warehouse(
    settings: std::sync::Arc<Settings>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let tables = tokio::select! {
            tables = crate::monitor::read_warehouse(&settings, chrono::Utc::now()) => tables,
            _ = stop.cancelled() => return,
        };
        record_warehouse(&tables, chrono::Utc::now());
        if !crate::shutdown::sleep_or_stop(interval, &stop).await {
            return;
        }
    }
}

/// Sets the warehouse gauges from one check of every table.
pub fn record_warehouse(
    tables: &[crate::monitor::TableFreshness],
    now: chrono::DateTime<chrono::Utc>,
) {
    for table in tables {
        let name = table.table.clone();
        let readable = table.error.is_none();
        gauge!(WAREHOUSE_UP, "table" => name.clone()).set(f64::from(u8::from(readable)));
        if !readable {
            continue;
        }
        gauge!(WAREHOUSE_HAS_RECENT_EVENTS, "table" => name.clone())
            .set(f64::from(u8::from(table.newest_event_at.is_some())));
        gauge!(WAREHOUSE_NEWEST_EVENT, "table" => name.clone()).set(
            table
                .newest_event_at
                .map_or(f64::NAN, |at| at.timestamp_micros() as f64 / 1e6),
        );
        gauge!(WAREHOUSE_ROWS_LAST_24H, "table" => name)
            .set(table.rows_last_24h.unwrap_or(0) as f64);
    }
    gauge!(WAREHOUSE_CHECKED).set(now.timestamp() as f64);
}

/// A worker committed a batch read `elapsed` ago; `rejected` are its reason codes.
pub fn record_commit(
    kind: EventKind,
    outcome: &CommitOutcome,
    rejected: impl Iterator<Item = &'static str>,
    elapsed: Duration,
) {
    counter!(EVENTS_INGESTED, "kind" => kind.name()).increment(outcome.stored);
    counter!(EVENTS_DUPLICATE, "kind" => kind.name()).increment(outcome.duplicates);
    for reason in rejected {
        counter!(EVENTS_REJECTED, "kind" => kind.name(), "reason" => reason).increment(1);
    }
    histogram!(WORKER_BATCH_DURATION, "kind" => kind.name()).record(elapsed.as_secs_f64());
}

/// An upload run finished in this process.
pub fn record_upload(report: &RunReport) {
    let status = match report.status {
        RunStatus::Ok => "ok",
        RunStatus::Partial => "partial",
        RunStatus::Busy => "busy",
    };
    counter!(UPLOAD_RUNS, "status" => status).increment(1);
    let seconds = (report.finished_at - report.started_at).num_milliseconds() as f64 / 1000.0;
    histogram!(UPLOAD_DURATION).record(seconds.max(0.0));
    for table in report.tables.iter().filter(|t| !t.table.is_empty()) {
        let rows = [
            table.rows_uploaded,
            table.dead_lettered,
            table.expired,
            table.kept_for_retry,
        ];
        for (outcome, rows) in UPLOAD_OUTCOMES.into_iter().zip(rows) {
            counter!(UPLOAD_ROWS, "table" => table.table.clone(), "outcome" => outcome)
                .increment(rows);
        }
    }
}

/// Where scrape-time values come from.
pub struct ScrapeSources {
    state: LazyConnection,
    records: Vec<(EventKind, LazyConnection)>,
    spool: Spool,
    ttl_seconds: u64,
    /// Dead letters of the last hour are counted up to this.
    dead_letter_limit: u64,
    /// Records stay for their TTL after upload: memory is projected.
    keep_uploaded: bool,
    /// Label values set to 1 at an earlier scrape, set to 0 when they no
    /// longer hold (a gauge series cannot be removed).
    shown: std::sync::Mutex<Shown>,
}

#[derive(Default)]
struct Shown {
    policy: Option<String>,
    tables: std::collections::BTreeSet<String>,
}

impl ScrapeSources {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        // A scrape waits for Redis as long as `monitor` does before
        // reporting it down.
        let lazy = |db| settings.redis.lazy(Role::Monitor, db);
        Ok(ScrapeSources {
            state: lazy(settings.redis.db_transactions)?,
            records: EventKind::ALL
                .into_iter()
                .map(|kind| Ok((kind, lazy(settings.db_for(kind))?)))
                .collect::<anyhow::Result<_>>()?,
            spool: Spool::new(
                &settings.producer.spool_dir,
                settings.producer.spool_max_bytes,
            ),
            ttl_seconds: settings.redis.ttl_seconds,
            dead_letter_limit: settings.monitor.alert_dead_letters_per_hour.max(1000) + 1,
            keep_uploaded: settings.upload.uploaded == AfterUpload::Keep,
            shown: std::sync::Mutex::new(Shown::default()),
        })
    }

    /// Sets the scrape-time gauges; Redis being down is a value, not an error.
    pub async fn refresh(&self) {
        gauge!(SPOOL_BYTES).set(self.spool.bytes() as f64);
        let up = match self.read_redis().await {
            Ok(()) => 1.0,
            Err(err) => {
                tracing::debug!(error = %format!("{err:#}"), "metrics: Redis unreadable");
                0.0
            }
        };
        gauge!(REDIS_UP).set(up);
    }

    async fn read_redis(&self) -> anyhow::Result<()> {
        let mut state = self.state.get().await?;
        let timeout = self.state.timeout();
        // The same readings `monitor` judges (src/store/status.rs).
        let server = self
            .state
            .bounded(timeout, status::server_facts(&mut state))
            .await?;
        self.server_gauges(&server);
        let uploads = self
            .state
            .bounded(timeout, status::upload_state(&mut state))
            .await?;
        self.upload_gauges(&uploads);
        let now = chrono::Utc::now();
        let mut volumes = Vec::new();
        for (kind, records) in &self.records {
            let name = kind.name();
            let mut conn = records.get().await?;
            let queue = records
                .bounded(
                    timeout,
                    status::queue_state(&mut conn, *kind, self.ttl_seconds),
                )
                .await?;
            queue_gauges(name, &queue, now);
            let stream = records
                .bounded(
                    timeout,
                    status::stream_state(&mut conn, *kind, self.dead_letter_limit),
                )
                .await?;
            gauge!(STREAM_LENGTH, "kind" => name).set(stream.length as f64);
            if let Some(lag) = stream.lag {
                gauge!(STREAM_LAG, "kind" => name).set(lag as f64);
            }
            gauge!(STREAM_PENDING, "kind" => name).set(stream.pending as f64);
            gauge!(DEAD_LETTER_LENGTH, "kind" => name).set(stream.dead_letter_length as f64);
            gauge!(DEAD_LETTERS_LAST_HOUR, "kind" => name)
                .set(stream.dead_letters_last_hour as f64);
            gauge!(DEAD_LETTER_BYTES, "kind" => name).set(stream.dead_letter_bytes as f64);
            counter!(DEAD_LETTERS_TRIMMED, "kind" => name).absolute(stream.dead_letters_trimmed);
            if let Some(ahead) = stream.last_id_ahead_ms {
                gauge!(STREAM_LAST_ID_AHEAD, "kind" => name).set(ahead as f64 / 1000.0);
            }
            gauge!(STREAM_DELETED_BEFORE_READ, "kind" => name)
                .set(f64::from(u8::from(stream.deleted_before_read.is_some())));
            if self.keep_uploaded {
                volumes.push(
                    records
                        .bounded(timeout, status::record_volume(&mut conn, *kind, now))
                        .await?,
                );
            }
            let lookups = self
                .state
                .bounded(timeout, lookup_counts(&mut state, *kind))
                .await?;
            counter!(CACHE_LOOKUPS, "kind" => name, "result" => "hit").absolute(lookups.hits);
            counter!(CACHE_LOOKUPS, "kind" => name, "result" => "miss").absolute(lookups.misses);
            gauge!(CACHE_LOOKUPS_LAST_HOUR, "kind" => name).set(lookups.last_hour() as f64);
            // NaN for an hour without lookups: no stale ratio, and no
            // comparison in an alert rule holds for it.
            gauge!(CACHE_HIT_RATIO, "kind" => name).set(lookups.hit_rate.unwrap_or(f64::NAN));
        }
        if self.keep_uploaded {
            gauge!(REDIS_PROJECTED_MEMORY).set(
                status::projected_memory(&volumes, self.ttl_seconds).map_or(f64::NAN, |b| b as f64),
            );
        }
        Ok(())
    }

    fn shown(&self) -> std::sync::MutexGuard<'_, Shown> {
        self.shown
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn server_gauges(&self, server: &status::ServerFacts) {
        gauge!(REDIS_USED_MEMORY).set(server.used_memory_bytes as f64);
        gauge!(REDIS_MAXMEMORY).set(server.maxmemory_bytes as f64);
        gauge!(REDIS_EVICTED_KEYS).set(server.evicted_keys as f64);
        if let Some(off) = server.persistence_off() {
            gauge!(REDIS_PERSISTENCE_ENABLED).set(if off { 0.0 } else { 1.0 });
        }
        gauge!(REDIS_PERSISTENCE_ERRORS).set(server.persistence_errors.len() as f64);
        let policy = server.maxmemory_policy.clone();
        let mut shown = self.shown();
        if let Some(before) = shown.policy.take().filter(|before| *before != policy) {
            gauge!(REDIS_MAXMEMORY_POLICY, "policy" => before).set(0.0);
        }
        gauge!(REDIS_MAXMEMORY_POLICY, "policy" => policy.clone()).set(1.0);
        shown.policy = Some(policy);
    }

    fn upload_gauges(&self, uploads: &status::UploadState) {
        if let Some(at) = uploads.last_success_at {
            gauge!(UPLOAD_LAST_SUCCESS).set(at.timestamp_millis() as f64 / 1000.0);
        }
        gauge!(RECENT_RUNS).set(uploads.recent_runs as f64);
        gauge!(RECENT_FAILURES).set(uploads.recent_failures as f64);
        gauge!(HISTORY_EXPIRED).set(uploads.expired_in_history as f64);
        if let Some(since) = uploads.history_since {
            gauge!(HISTORY_SINCE).set(since.timestamp_millis() as f64 / 1000.0);
        }
        // Every table starts at 0, so a set-aside table shows as a change.
        let mut set_aside: std::collections::BTreeMap<String, bool> = EventKind::ALL
            .into_iter()
            .map(|kind| {
                (
                    crate::warehouse::TableSpec::for_kind(kind).qualified(),
                    false,
                )
            })
            .collect();
        let mut shown = self.shown();
        set_aside.extend(shown.tables.iter().map(|table| (table.clone(), false)));
        for table in uploads
            .last_run
            .iter()
            .flat_map(|run| &run.tables)
            .filter(|t| !t.table.is_empty())
        {
            set_aside.insert(table.table.clone(), table.set_aside.is_some());
        }
        for (table, aside) in set_aside {
            gauge!(TABLE_SET_ASIDE, "table" => table.clone()).set(if aside { 1.0 } else { 0.0 });
            shown.tables.insert(table);
        }
    }
}

/// One kind's upload queue, in flight and parked batches.
fn queue_gauges(
    name: &'static str,
    queue: &status::QueueState,
    now: chrono::DateTime<chrono::Utc>,
) {
    gauge!(QUEUE_LENGTH, "kind" => name).set(queue.length as f64);
    gauge!(QUEUE_OLDEST_AGE, "kind" => name).set(queue.oldest_age_seconds.unwrap_or(0) as f64);
    // `monitor`'s queued_record_expired (negative) and _expiring (under 24 h).
    gauge!(QUEUE_OLDEST_TTL, "kind" => name).set(match queue.oldest_expires_in_seconds {
        None => f64::NAN,
        Some(i64::MAX) => f64::INFINITY,
        Some(left) => left as f64,
    });
    gauge!(PARKED_BATCHES, "kind" => name).set(queue.parked.len() as f64);
    gauge!(PARKED_RECORDS, "kind" => name)
        .set(queue.parked.iter().map(|p| p.records).sum::<usize>() as f64);
    gauge!(PARKED_MAX_FAILURES, "kind" => name)
        .set(queue.parked.iter().map(|p| p.failures).max().unwrap_or(0) as f64);
    gauge!(PARKED_EXPIRES_IN, "kind" => name).set(
        queue
            .parked_expires_at
            .map_or(f64::NAN, |at| (at - now).num_seconds() as f64),
    );
    gauge!(IN_FLIGHT_RECORDS, "kind" => name).set(queue.in_flight as f64);
    gauge!(IN_FLIGHT_AGE, "kind" => name).set(
        queue
            .in_flight_since
            .map_or(0.0, |since| (now - since).num_seconds() as f64),
    );
}
