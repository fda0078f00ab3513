//! The values `/metrics` reads when it is scraped, and the readings kept
//! between scrapes: queues, streams, lookups, the last upload, the Redis
//! server — which other processes (producers, a cron `batch-upload`) change,
//! read from Redis (through `store::status`) at each scrape — and the
//! warehouse's freshness, read on its own interval (`watch_warehouse`). It
//! sets gauges under the names `telemetry::metrics` defines, and installs
//! that recorder with the service's event kinds and tables.

use std::time::Duration;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::cache::lookup_counts;
use crate::keys::EventKind;
use crate::monitor::MonitorContext;
use crate::producer::Spool;
use crate::store::upload_queue::AfterUpload;
use crate::store::{LazyConnection, Role, status};
use crate::telemetry::metrics::{
    CACHE_HIT_RATIO, CACHE_LOOKUPS, CACHE_LOOKUPS_LAST_HOUR, DEAD_LETTER_BYTES, DEAD_LETTER_LENGTH,
    DEAD_LETTERS_LAST_HOUR, DEAD_LETTERS_TRIMMED, HISTORY_EXPIRED, HISTORY_SINCE, IN_FLIGHT_AGE,
    IN_FLIGHT_RECORDS, KnownSeries, PARKED_BATCHES, PARKED_EXPIRES_IN, PARKED_MAX_FAILURES,
    PARKED_RECORDS, QUEUE_LENGTH, QUEUE_OLDEST_AGE, QUEUE_OLDEST_TTL, RECENT_FAILURES, RECENT_RUNS,
    REDIS_EVICTED_KEYS, REDIS_MAXMEMORY, REDIS_MAXMEMORY_POLICY, REDIS_PERSISTENCE_ENABLED,
    REDIS_PERSISTENCE_ERRORS, REDIS_PROJECTED_MEMORY, REDIS_UP, REDIS_USED_MEMORY, SPOOL_BYTES,
    STREAM_DELETED_BEFORE_READ, STREAM_LAG, STREAM_LAST_ID_AHEAD, STREAM_LENGTH, STREAM_PENDING,
    TABLE_SET_ASIDE, UPLOAD_LAST_SUCCESS, WAREHOUSE_CHECKED, WAREHOUSE_HAS_RECENT_EVENTS,
    WAREHOUSE_NEWEST_EVENT, WAREHOUSE_ROWS_LAST_24H, WAREHOUSE_UP,
};
use crate::warehouse::TableSpec;

/// Installs the process-wide recorder (`telemetry::metrics::install`), each
/// kind's and table's series starting at 0.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let tables: Vec<String> = EventKind::ALL
        .into_iter()
        .map(|kind| TableSpec::for_kind(kind).qualified())
        .collect();
    crate::telemetry::metrics::install(&KnownSeries {
        kinds: &EventKind::ALL.map(EventKind::name),
        tables: &tables,
    })
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
    warehouse: crate::warehouse::WarehouseSettings,
    ttl_seconds: u64,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    // The first check a minute after start (or one interval, if shorter):
    // a service that restarts in a loop, or a short-lived `run`, does not
    // query BigQuery each time it starts.
    if !crate::shutdown::sleep_or_stop(interval.min(Duration::from_secs(60)), &stop).await {
        return;
    }
    loop {
        // A check that hangs must not leave the last good reading up: past
        // the interval (at most 5 minutes) it counts as unreadable.
        let limit = interval.min(Duration::from_secs(300));
        let reading = tokio::time::timeout(
            limit,
            crate::monitor::read_warehouse(&warehouse, ttl_seconds, chrono::Utc::now()),
        );
        let tables = tokio::select! {
            tables = reading => tables.unwrap_or_else(|_| {
                crate::monitor::unreadable_tables(&format!(
                    "the warehouse check did not finish within {} s",
                    limit.as_secs()
                ))
            }),
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
            // Unknown, not the last good values.
            gauge!(WAREHOUSE_HAS_RECENT_EVENTS, "table" => name.clone()).set(f64::NAN);
            gauge!(WAREHOUSE_NEWEST_EVENT, "table" => name.clone()).set(f64::NAN);
            gauge!(WAREHOUSE_ROWS_LAST_24H, "table" => name).set(f64::NAN);
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
    pub fn new(settings: &MonitorContext<'_>) -> anyhow::Result<Self> {
        // A scrape waits for Redis as long as `monitor` does before
        // reporting it down.
        let lazy = |db| settings.redis.lazy(Role::Monitor, db);
        Ok(ScrapeSources {
            state: lazy(settings.redis.db_transactions)?,
            records: EventKind::ALL
                .into_iter()
                .map(|kind| Ok((kind, lazy(settings.redis.db_for(kind))?)))
                .collect::<anyhow::Result<_>>()?,
            spool: Spool::new(&settings.spool.spool_dir, settings.spool.spool_max_bytes),
            ttl_seconds: settings.redis.ttl_seconds,
            dead_letter_limit: settings.monitor.alert_dead_letters_per_hour.max(1000) + 1,
            keep_uploaded: settings.uploaded == AfterUpload::Keep,
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
            .map(|kind| (TableSpec::for_kind(kind).qualified(), false))
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
