//! One upload run (`batch-upload`, the schedule inside `run`): under the
//! upload lock, each kind's queue is drained in bounded batches into the
//! warehouse. A record leaves Redis only after the warehouse confirmed it;
//! a batch the warehouse refuses is retried with exponential backoff and
//! jitter, then kept (with its TTL renewed) for the next run.

mod lock;
mod queue;
mod report;

use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

pub use lock::{Busy, UploadLock};
pub use queue::{BatchManifest, BatchRecord, InvalidRecord, Settled, UploadQueue};
pub use report::{HISTORY_LENGTH, RunReport, RunStatus, TableReport};

use crate::configuration::Settings;
use crate::keys::EventKind;
use crate::redis_target;
use crate::service_metrics;
use crate::warehouse::{Row, RowBatch, TableSpec, Warehouse};

#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Read and validate, report what would happen, change nothing.
    pub dry_run: bool,
    /// Only this kind.
    pub only: Option<EventKind>,
    /// When cancelled, the run stops after the batch in hand (service shutdown).
    pub stop: Option<CancellationToken>,
}

/// Runs one upload. An `Err` means the run could not start (Redis
/// unreachable); everything after that is in the report.
pub async fn run_once<W: Warehouse>(
    settings: &Settings,
    warehouse: &W,
    options: UploadOptions,
) -> anyhow::Result<RunReport> {
    let started_at = Utc::now();
    let state = connect(settings, settings.redis.db_transactions).await?;
    let mut report = RunReport {
        started_at,
        finished_at: started_at,
        status: RunStatus::Ok,
        dry_run: options.dry_run,
        warehouse: warehouse.describe(),
        tables: Vec::new(),
    };
    let lock = if options.dry_run {
        None
    } else {
        match UploadLock::acquire(state.clone(), settings.upload.lock_ttl).await? {
            Ok(lock) => Some(lock),
            Err(Busy {
                holder,
                expires_in_ms,
            }) => {
                report.status = RunStatus::Busy;
                report.tables.push(TableReport {
                    errors: vec![format!(
                        "another upload run holds the lock ({holder}, expires in {} s); nothing was done, try again later",
                        expires_in_ms.max(0) / 1000
                    )],
                    ..TableReport::default()
                });
                report.finished_at = Utc::now();
                return Ok(report);
            }
        }
    };

    // The kinds share nothing but the lock (own database, table and
    // manifest), so they upload side by side.
    let runs = EventKind::ALL
        .into_iter()
        .filter(|k| options.only.is_none_or(|only| only == *k))
        .map(|kind| upload_table(settings, warehouse, kind, &state, &options, lock.as_ref()));
    for table_report in futures_util::future::join_all(runs).await {
        if table_report.kept_for_retry > 0 || !table_report.errors.is_empty() {
            report.status = RunStatus::Partial;
        }
        report.tables.push(table_report);
    }

    report.finished_at = Utc::now();
    service_metrics::record_upload(&report);
    let mut state = state;
    if let Err(err) = report.store(&mut state).await {
        tracing::error!(error = %err, "could not keep the upload report in Redis");
    }
    // The lock expires by itself; failing to release it must not hide the report.
    if let Some(lock) = lock
        && let Err(err) = lock.release().await
    {
        tracing::warn!(error = %err, "could not release the upload lock; it expires by itself");
    }
    Ok(report)
}

/// Uploads one kind's queue; whatever goes wrong ends up in its report.
async fn upload_table<W: Warehouse>(
    settings: &Settings,
    warehouse: &W,
    kind: EventKind,
    state: &redis::aio::MultiplexedConnection,
    options: &UploadOptions,
    lock: Option<&UploadLock>,
) -> TableReport {
    let mut report = TableReport {
        kind: Some(kind),
        table: TableSpec::for_kind(kind).qualified(),
        ..TableReport::default()
    };
    let result = async {
        let records = connect(settings, settings.db_for(kind)).await?;
        let mut queue = UploadQueue::new(kind, records, state.clone(), settings.dead_letters);
        upload_kind(settings, warehouse, &mut queue, options, lock, &mut report).await
    }
    .await;
    if let Err(err) = result {
        report.errors.push(format!("{err:#}"));
        // Whatever is still queued waits for the next run.
        if let Ok(mut records) = connect(settings, settings.db_for(kind)).await {
            let left: redis::RedisResult<u64> = redis::cmd("LLEN")
                .arg(crate::keys::UPLOAD_QUEUE)
                .query_async(&mut records)
                .await;
            report.kept_for_retry = left.unwrap_or_default();
        }
    }
    report
}

async fn upload_kind<W: Warehouse>(
    settings: &Settings,
    warehouse: &W,
    queue: &mut UploadQueue,
    options: &UploadOptions,
    lock: Option<&UploadLock>,
    report: &mut TableReport,
) -> anyhow::Result<()> {
    let upload = &settings.upload;
    let queued_at_start = queue.len().await? as usize;
    if !options.dry_run
        && let Some(manifest) = queue.in_flight().await?
    {
        tracing::info!(batch = %manifest.batch_id, "finishing a batch an earlier run left in flight");
        let rows = manifest.rows();
        if !deliver(settings, warehouse, queue, &manifest, rows, true, report).await? {
            report.kept_for_retry = queue.len().await?;
            return Ok(());
        }
    }
    // Records that arrive during the run wait for the next one, so a run ends.
    let mut handled = 0usize;
    while handled < queued_at_start {
        if lock.is_some_and(UploadLock::is_lost) {
            anyhow::bail!("the upload lock was lost; stopped between batches");
        }
        if options
            .stop
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            anyhow::bail!("the service is stopping; the rest waits for the next run");
        }
        let skip = if options.dry_run { handled } else { 0 };
        let (manifest, rows) = queue
            .take_batch(
                skip,
                upload.batch_rows,
                upload.batch_bytes,
                !options.dry_run,
            )
            .await?;
        if manifest.is_empty() {
            break;
        }
        handled += manifest.entries();
        if options.dry_run {
            report.rows_uploaded += manifest.records.len() as u64;
            report.dead_lettered += manifest.invalid.len() as u64;
            report.expired += manifest.expired.len() as u64;
            report.batches += 1;
            continue;
        }
        if !deliver(settings, warehouse, queue, &manifest, rows, false, report).await? {
            report.kept_for_retry = queue.len().await?;
            return Ok(());
        }
    }
    Ok(())
}

/// Writes one batch with retries and settles it. `false` when the warehouse
/// did not take it: the batch stays queued (and in flight) for the next run.
async fn deliver<W: Warehouse>(
    settings: &Settings,
    warehouse: &W,
    queue: &mut UploadQueue,
    manifest: &BatchManifest,
    rows: Vec<Row>,
    recovered: bool,
    report: &mut TableReport,
) -> anyhow::Result<bool> {
    let table = TableSpec::for_kind(manifest.kind);
    let row_ids: Vec<String> = manifest.records.iter().map(|r| r.id.clone()).collect();
    let mut attempts = 1u64;
    let tried = std::sync::atomic::AtomicBool::new(recovered);
    // Creating a missing table is part of delivering: it is retried, and
    // when it fails the batch is kept like any other failed write.
    let written = (|| async {
        let batch = RowBatch {
            batch_id: &manifest.batch_id,
            table,
            rows: &rows,
            row_ids: &row_ids,
            ingested_at: manifest.ingested_at,
            // A failed attempt may still have landed: later attempts check first.
            maybe_written: tried.swap(true, std::sync::atomic::Ordering::SeqCst),
        };
        warehouse.ensure_table(table).await?;
        warehouse.write(&batch).await
    })
    .retry(
        ExponentialBuilder::default()
            .with_min_delay(settings.upload.retry_min_delay)
            .with_max_delay(Duration::from_secs(60))
            .with_max_times(settings.upload.attempts.saturating_sub(1))
            .with_jitter(),
    )
    .when(|err| err.retryable)
    .notify(|err, delay| {
        attempts += 1;
        tracing::warn!(table = %table.qualified(), batch = %manifest.batch_id, error = %err,
                retry_in_ms = delay.as_millis() as u64, "warehouse write failed; retrying");
    })
    .await;
    report.attempts += attempts;
    match written {
        Ok(outcome) => {
            // Only sinks that judge rows one by one (streaming inserts) refuse
            // some; those records are dead-lettered with the warehouse's reason.
            let refused = manifest.with_refused(&outcome.rejected);
            let manifest = &refused;
            let settled = queue.settle(manifest).await?;
            report.rows_uploaded += manifest.records.len() as u64;
            report.dead_lettered += settled.dead_lettered;
            report.expired += manifest.expired.len() as u64;
            report.batches += 1;
            tracing::debug!(table = %table.qualified(), batch = %manifest.batch_id, rows = rows.len(), "batch uploaded");
            Ok(true)
        }
        Err(err) => {
            report
                .errors
                .push(format!("batch {}: {err}", manifest.batch_id));
            queue
                .extend_ttl(manifest, settings.redis.ttl_seconds)
                .await?;
            tracing::error!(table = %table.qualified(), batch = %manifest.batch_id, error = %err, attempts,
                "warehouse did not take the batch; it stays queued for the next run");
            Ok(false)
        }
    }
}

async fn connect(
    settings: &Settings,
    db: i64,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = settings.redis.url.client(db)?;
    redis_target::connect(&client, Duration::from_secs(3), Duration::from_secs(30))
        .await
        .with_context(|| {
            format!(
                "cannot reach Redis at {} (database {db})",
                settings.redis.url
            )
        })
}
