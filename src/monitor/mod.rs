//! `flit-cache monitor`: one look at everything that decides whether records
//! reach the warehouse — Redis and its configuration, the queues, the
//! streams, the upload runs, lookups, and with `--bigquery` the tables —
//! judged against the `FLIT_ALERT_*` thresholds. Exit 0 healthy, 1 alerts,
//! 2 Redis unreachable.

mod alerts;
mod render;

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use serde::Serialize;

pub use alerts::{Alert, evaluate};
pub use status::{QueueState, RecordVolume, ServerFacts, StreamState, UploadState};

use crate::cache::{LookupCounts, lookup_counts};
use std::time::Duration;

use crate::keys::EventKind;
use crate::producer::ProducerSettings;
use crate::producer::Spool;
use crate::store::RedisSettings;
use crate::store::upload_queue::AfterUpload;
use crate::store::{Role, status};
use crate::warehouse::{self, TableSpec, Warehouse, WarehouseSettings};

/// Thresholds of `flit-cache monitor`: past any of them, it raises an alert.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    /// Redis `used_memory` above this many MiB.
    pub alert_memory_mb: u64,
    /// An upload queue (or a stream's consumer-group lag) longer than this.
    pub alert_queue: u64,
    /// No successful upload run for longer than this.
    pub alert_upload_age: Duration,
    /// Share of failed runs among the recent ones above this (0 to 1).
    pub alert_failure_rate: f64,
    /// More dead letters than this in the last hour, per kind.
    pub alert_dead_letters_per_hour: u64,
    /// A batch in flight for longer than this (its run died, or hangs).
    pub alert_in_flight_age: Duration,
    /// A parked batch that failed in this many runs.
    pub alert_batch_failures: u32,
    /// A last hour's lookup hit rate below this (0 to 1), per kind...
    pub alert_hit_rate: f64,
    /// ...once the hour saw at least this many lookups of the kind.
    pub alert_hit_rate_min_lookups: u64,
    /// How often `run` reads the warehouse's freshness for /metrics (one
    /// small query per table); `None`: never.
    pub warehouse_check_interval: Option<Duration>,
}

/// What `monitor` and `/metrics` read of the settings: the thresholds, and
/// where the records, the spool and the warehouse are.
#[derive(Debug, Clone, Copy)]
pub struct MonitorContext<'a> {
    pub redis: &'a RedisSettings,
    pub monitor: &'a MonitorSettings,
    /// The spool's folder and cap (the producer's section).
    pub spool: &'a ProducerSettings,
    pub warehouse: &'a WarehouseSettings,
    pub uploaded: AfterUpload,
}

#[derive(Debug, Clone, Serialize)]
pub struct RedisHealth {
    /// Where, with any password hidden.
    pub url: String,
    pub reachable: bool,
    pub error: Option<String>,
    #[serde(flatten)]
    pub server: Option<ServerFacts>,
}

/// One kind's queue, stream and lookups. A part that could not be read is
/// `None`, with the reason in `errors`.
#[derive(Debug, Clone, Serialize)]
pub struct KindHealth {
    pub kind: EventKind,
    pub db: i64,
    pub queue: Option<QueueState>,
    pub stream: Option<StreamState>,
    pub lookups: Option<LookupCounts>,
    pub volume: Option<RecordVolume>,
    pub errors: Vec<String>,
}

/// What a warehouse table received lately.
#[derive(Debug, Clone, Serialize)]
pub struct TableFreshness {
    pub table: String,
    /// Rows whose `_ingestion_timestamp` is within the last 24 hours.
    pub rows_last_24h: Option<u64>,
    pub newest_event_at: Option<DateTime<Utc>>,
    pub newest_event_age_hours: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MonitorReport {
    pub generated_at: DateTime<Utc>,
    pub healthy: bool,
    pub redis: RedisHealth,
    pub kinds: Vec<KindHealth>,
    pub uploads: Option<UploadState>,
    /// Bytes of events spooled on this host while Redis refused them.
    pub spool_bytes: u64,
    /// The memory records will take once a TTL's worth of them is kept:
    /// records stored in the last 24 hours × bytes per record × TTL in
    /// days, both kinds. `None` with FLIT_KEEP_UPLOADED=false (records
    /// leave at upload) or when nothing could be sampled.
    pub projected_memory_bytes: Option<u64>,
    /// Only with `--bigquery`.
    pub warehouse: Option<Vec<TableFreshness>>,
    pub alerts: Vec<Alert>,
}

impl MonitorReport {
    pub fn exit_code(&self) -> u8 {
        if !self.redis.reachable {
            2
        } else if self.alerts.is_empty() {
            0
        } else {
            1
        }
    }

    pub fn to_text(&self) -> String {
        render::text(self)
    }
}

/// Gathers the report. Never fails: what cannot be read is in the report.
pub async fn check(settings: &MonitorContext<'_>, with_warehouse: bool) -> MonitorReport {
    let generated_at = Utc::now();
    let spool_bytes = Spool::new(&settings.spool.spool_dir, settings.spool.spool_max_bytes).bytes();
    let mut report = MonitorReport {
        generated_at,
        healthy: false,
        redis: RedisHealth {
            url: settings.redis.url.redacted(),
            reachable: false,
            error: None,
            server: None,
        },
        kinds: Vec::new(),
        uploads: None,
        spool_bytes,
        projected_memory_bytes: None,
        warehouse: None,
        alerts: Vec::new(),
    };
    match read_redis(settings, &mut report).await {
        Ok(()) => report.redis.reachable = true,
        Err(err) => report.redis.error = Some(crate::telemetry::error_text(&err)),
    }
    if settings.uploaded == AfterUpload::Keep {
        report.projected_memory_bytes = status::projected_memory(
            report.kinds.iter().filter_map(|k| k.volume.as_ref()),
            settings.redis.ttl_seconds,
        );
    }
    if with_warehouse && report.redis.reachable {
        report.warehouse = Some(
            read_warehouse(settings.warehouse, settings.redis.ttl_seconds, generated_at).await,
        );
    }
    report.alerts = evaluate(&report, settings.monitor);
    report.healthy = report.alerts.is_empty();
    report
}

async fn open(settings: &MonitorContext<'_>, db: i64) -> anyhow::Result<MultiplexedConnection> {
    settings.redis.open(Role::Monitor, db).await
}

async fn read_redis(
    settings: &MonitorContext<'_>,
    report: &mut MonitorReport,
) -> anyhow::Result<()> {
    let mut state = open(settings, settings.redis.db_transactions).await?;
    report.redis.server = Some(status::server_facts(&mut state).await?);
    for kind in EventKind::ALL {
        report
            .kinds
            .push(read_kind(settings, kind, &mut state).await);
    }
    report.uploads = Some(status::upload_state(&mut state).await?);
    Ok(())
}

async fn read_kind(
    settings: &MonitorContext<'_>,
    kind: EventKind,
    state: &mut MultiplexedConnection,
) -> KindHealth {
    let db = settings.redis.db_for(kind);
    let mut health = KindHealth {
        kind,
        db,
        queue: None,
        stream: None,
        lookups: None,
        volume: None,
        errors: Vec::new(),
    };
    let mut records = match open(settings, db).await {
        Ok(conn) => conn,
        Err(err) => {
            health.errors.push(format!("database {db}: {err:#}"));
            return health;
        }
    };
    match status::queue_state(&mut records, kind, settings.redis.ttl_seconds).await {
        Ok(queue) => health.queue = Some(queue),
        Err(err) => health.errors.push(format!("upload queue: {err:#}")),
    }
    let dead_letter_limit = settings.monitor.alert_dead_letters_per_hour + 1;
    match status::stream_state(&mut records, kind, dead_letter_limit).await {
        Ok(stream) => health.stream = Some(stream),
        Err(err) => health.errors.push(format!("stream: {err}")),
    }
    match status::record_volume(&mut records, kind, Utc::now()).await {
        Ok(volume) => health.volume = Some(volume),
        Err(err) => health.errors.push(format!("record volume: {err}")),
    }
    match lookup_counts(state, kind).await {
        Ok(counts) => health.lookups = Some(counts),
        Err(err) => health.errors.push(format!("lookup counters: {err}")),
    }
    health
}

/// Each table's freshness (`monitor --bigquery`, and `run`'s periodic
/// check for /metrics); a table that cannot be read carries its error.
pub async fn read_warehouse(
    warehouse: &WarehouseSettings,
    ttl_seconds: u64,
    now: DateTime<Utc>,
) -> Vec<TableFreshness> {
    let sink = match warehouse::configured(warehouse).await {
        Ok(sink) => sink,
        Err(err) => return unreadable_tables(&format!("{err:#}")),
    };
    // Rows ingested lately can carry event times up to the record TTL back
    // (and a day for the upload): read that many daily partitions, no more.
    let window_days = ttl_seconds.div_ceil(86_400) as u32 + 1;
    let mut tables = Vec::new();
    for kind in EventKind::ALL {
        let spec = TableSpec::for_kind(kind);
        tables.push(match sink.freshness(spec, window_days).await {
            Ok(freshness) => TableFreshness {
                table: spec.qualified(),
                rows_last_24h: Some(freshness.rows_last_24h),
                newest_event_at: freshness.newest_event_at,
                newest_event_age_hours: freshness
                    .newest_event_at
                    .map(|at| (now - at).num_seconds() as f64 / 3_600.0),
                error: None,
            },
            Err(err) => unreadable(spec, err.message),
        });
    }
    tables
}

/// Every table, unreadable for `why` (a check that did not finish).
pub fn unreadable_tables(why: &str) -> Vec<TableFreshness> {
    EventKind::ALL
        .into_iter()
        .map(|kind| unreadable(TableSpec::for_kind(kind), why.to_owned()))
        .collect()
}

fn unreadable(spec: TableSpec, error: String) -> TableFreshness {
    TableFreshness {
        table: spec.qualified(),
        rows_last_24h: None,
        newest_event_at: None,
        newest_event_age_hours: None,
        error: Some(error),
    }
}
