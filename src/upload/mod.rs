//! One upload run (`batch-upload`, the schedule inside `run`): under the
//! upload lock, each kind's queue is drained in bounded batches into the
//! warehouse. A record leaves Redis only after the warehouse confirmed it.
//!
//! Nothing stops a table for good:
//! - rows the warehouse refuses are found (from its errors, else by
//!   halving the batch) and dead-lettered with its reason; the rest of the
//!   batch loads in the same run;
//! - a batch that keeps failing for other reasons is parked (retried first
//!   by later runs) and the queue behind it goes on; two failures in a row
//!   end the kind's run, since the warehouse then looks unavailable;
//! - a quota, the day's load-job budget, or credentials set the table aside
//!   until the next run: its batches are neither split nor given up.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

pub use crate::store::manifest::{BatchManifest, BatchRecord, ParkedSummary, Part};
pub use crate::store::run_report::{BusyLock, RunReport, RunStatus, TableReport};

pub use crate::store::upload_budget::LoadJobBudget;
pub use crate::store::upload_lock::{Busy, Fence, UploadLock};
pub use crate::store::upload_queue::{Take, Ttl, UploadQueue};

use crate::keys::EventKind;
use crate::notify::NotifySettings;
use crate::store::RedisSettings;
use crate::store::dead_letters::DeadLetterSettings;
use crate::store::upload_queue::AfterUpload;
use crate::store::{Role, reports, upload_queue};
use crate::telemetry::metrics::{UploadRunFinished, UploadStatus, UploadTableSettled};
use crate::warehouse::{
    Failure, Row, RowBatch, SinkError, TableSpec, Warehouse, WarehouseSettings, WriteOutcome,
};

/// How upload runs cut and retry batches.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    /// Write attempts per batch, the first included.
    pub attempts: usize,
    pub retry_min_delay: Duration,
    pub lock_ttl: Duration,
    /// Load jobs flit-cache starts per table in any 24 hours (BigQuery: 1,500,
    /// refilled over a rolling 24 hours).
    pub load_jobs_per_day: u64,
    /// Batches that may wait parked per kind before the queue waits too.
    pub max_parked: usize,
    /// What settling does with an uploaded record (`FLIT_KEEP_UPLOADED`).
    pub uploaded: AfterUpload,
}

/// What an upload run reads of the settings: its own section, and the
/// Redis, dead-letter and notification sections it works through.
#[derive(Debug, Clone, Copy)]
pub struct UploadContext<'a> {
    pub redis: &'a RedisSettings,
    pub upload: &'a UploadSettings,
    pub dead_letters: DeadLetterSettings,
    pub notify: &'a NotifySettings,
}

#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Read and validate, report what would happen, change nothing.
    pub dry_run: bool,
    /// Only this kind.
    pub only: Option<EventKind>,
    /// When cancelled, the run stops after the batch in hand (service shutdown).
    pub stop: Option<CancellationToken>,
}

impl UploadOptions {
    /// The kinds the run is for: `only`, or both.
    fn kinds(&self) -> Vec<EventKind> {
        EventKind::ALL
            .into_iter()
            .filter(|kind| self.only.is_none_or(|only| only == *kind))
            .collect()
    }
}

/// One upload run into the sink `FLIT_SINK` chose (`batch-upload`, the
/// schedule). A run that cannot start (no usable sink, Redis unreachable)
/// errs as `run_once` does and, with a webhook set, is notified too; where
/// Redis can still be told, its tables count as failed, so the next good
/// run is announced as their recovery (after Redis itself was unreachable
/// nothing could be noted, and no recovery follows). An older binary
/// refused by a newer layout is refused by design: it is logged, and
/// neither notifies nor writes.
pub async fn run_configured(
    settings: &UploadContext<'_>,
    warehouse: &WarehouseSettings,
    options: UploadOptions,
) -> anyhow::Result<RunReport> {
    let started_at = Utc::now();
    let (dry_run, kinds) = (options.dry_run, options.kinds());
    let result = match crate::warehouse::configured(warehouse).await {
        Ok(sink) => run_once(settings, &sink, options).await,
        Err(err) => Err(err),
    };
    if let Err(err) = &result
        && !dry_run
        && settings.notify.webhook_url.is_some()
        && !crate::store::layout::is_newer_layout(err)
    {
        note_not_started(settings, &kinds).await;
        let why = crate::telemetry::error_text(err);
        crate::notify::run_not_started(settings.notify, started_at, &why).await;
    }
    result
}

/// Notes the tables of a run that could not start as failed, if Redis
/// answers (it may be why the run could not start).
async fn note_not_started(settings: &UploadContext<'_>, kinds: &[EventKind]) {
    let outcomes: Vec<(String, bool)> = kinds
        .iter()
        .map(|kind| (TableSpec::for_kind(*kind).qualified(), true))
        .collect();
    let noted = async {
        // The monitor role's short timeout: Redis may be why the run did
        // not start, and the schedule must not wait on it for long.
        let mut state = settings
            .redis
            .open(Role::Monitor, settings.redis.db_transactions)
            .await?;
        anyhow::Ok(reports::note_outcomes(&mut state, &outcomes).await?)
    };
    if let Err(err) = noted.await {
        tracing::warn!(error = %format!("{err:#}"), "could not note the tables of a run that did not start");
    }
}

/// Runs one upload into `warehouse`. An `Err` means the run could not start
/// (Redis unreachable); everything after that is in the report.
pub async fn run_once<W: Warehouse>(
    settings: &UploadContext<'_>,
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
        busy: None,
        tables: Vec::new(),
    };
    let kinds = options.kinds();
    // One lock per kind, in its own database, taken in a fixed order; a run
    // goes only when it holds all it needs.
    let mut locks: Vec<UploadLock> = Vec::new();
    if !options.dry_run {
        for kind in &kinds {
            let acquired = async {
                let mut records = connect(settings, settings.redis.db_for(*kind)).await?;
                crate::store::layout::claim(&mut records)
                    .await
                    .with_context(|| {
                        format!("database {} ({kind})", settings.redis.db_for(*kind))
                    })?;
                UploadLock::acquire(records, *kind, settings.upload.lock_ttl).await
            }
            .await;
            let acquired = match acquired {
                Ok(acquired) => acquired,
                Err(err) => {
                    release_all(locks).await;
                    return Err(err);
                }
            };
            match acquired {
                Ok(lock) => locks.push(lock),
                Err(Busy {
                    holder,
                    expires_in_ms,
                }) => {
                    release_all(locks).await;
                    report.status = RunStatus::Busy;
                    report.busy = Some(BusyLock {
                        kind: *kind,
                        holder,
                        expires_in_ms,
                    });
                    report.finished_at = Utc::now();
                    // A busy run is counted too (status "busy"), with no table.
                    emit_metrics(&report);
                    return Ok(report);
                }
            }
        }
    }

    // The kinds share nothing (own database, lock, table and manifests), so
    // they upload side by side.
    let runs = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| upload_table(settings, warehouse, *kind, &state, &options, locks.get(i)));
    for table_report in futures_util::future::join_all(runs).await {
        if crate::notify::table_failed(&table_report) {
            report.status = RunStatus::Partial;
        }
        report.tables.push(table_report);
    }

    report.finished_at = Utc::now();
    emit_metrics(&report);
    let mut state = state;
    // Per table, read before this run's outcomes replace them: a
    // notification says when a table that failed has recovered, whatever
    // other tables (or runs limited to them) did meanwhile.
    let tables: Vec<String> = report.tables.iter().map(|t| t.table.clone()).collect();
    let failed_before = reports::failed_before(&mut state, &tables)
        .await
        .unwrap_or_else(|err| {
            tracing::warn!(error = %err, "could not read the tables' last outcomes");
            Vec::new()
        });
    if let Err(err) = reports::keep(&mut state, &report).await {
        tracing::error!(error = %err, "could not keep the upload report in Redis");
    }
    if !report.dry_run {
        let outcomes: Vec<(String, bool)> = report
            .tables
            .iter()
            .map(|t| (t.table.clone(), crate::notify::table_failed(t)))
            .collect();
        if let Err(err) = reports::note_outcomes(&mut state, &outcomes).await {
            tracing::warn!(error = %err, "could not note the tables' outcomes");
        }
    }
    // The lock goes first: a slow receiver must not hold back the next run.
    release_all(locks).await;
    crate::notify::after_run(settings.notify, &report, &failed_before).await;
    Ok(report)
}

/// The run as this process's metrics count it: the run, then what it
/// settled per table.
fn emit_metrics(report: &RunReport) {
    UploadRunFinished {
        status: match report.status {
            RunStatus::Ok => UploadStatus::Ok,
            RunStatus::Partial => UploadStatus::Partial,
            RunStatus::Busy => UploadStatus::Busy,
        },
        started_at: report.started_at,
        finished_at: report.finished_at,
    }
    .emit();
    for table in &report.tables {
        UploadTableSettled {
            table: &table.table,
            uploaded: table.rows_uploaded,
            dead_lettered: table.dead_lettered,
            expired: table.expired,
            kept_for_retry: table.kept_for_retry,
        }
        .emit();
    }
}

/// Releases a run's locks. A lock expires by itself; failing to release it
/// must not hide the report.
async fn release_all(locks: Vec<UploadLock>) {
    for lock in locks {
        if let Err(err) = lock.release().await {
            tracing::warn!(error = %err, "could not release an upload lock; it expires by itself");
        }
    }
}

/// Uploads one kind's queue; whatever goes wrong ends up in its report.
async fn upload_table<W: Warehouse>(
    settings: &UploadContext<'_>,
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
        let records = connect(settings, settings.redis.db_for(kind)).await?;
        let mut run = KindRun {
            settings,
            warehouse,
            queue: UploadQueue::new(
                kind,
                records.clone(),
                state.clone(),
                settings.dead_letters,
                settings.upload.uploaded,
                settings.redis.ttl_seconds,
                lock.map_or_else(|| Fence::closed(kind), UploadLock::fence),
            ),
            jobs: LoadJobBudget::new(records, kind, settings.upload.load_jobs_per_day),
            options,
            lock,
            report: &mut report,
            failures_in_a_row: 0,
        };
        let same_database = settings.redis.db_for(kind) == settings.redis.db_transactions;
        let outcome = run.upload(same_database).await;
        run.count_kept(outcome.as_ref().is_ok_and(|next| *next == Next::Continue))
            .await?;
        outcome.map(|_| ())
    }
    .await;
    if let Err(err) = result {
        report.errors.push(crate::telemetry::error_text(&err));
        // Whatever is still queued waits for the next run.
        if let Ok(mut records) = connect(settings, settings.redis.db_for(kind)).await {
            let left = upload_queue::queued(&mut records).await;
            report.kept_for_retry = report.kept_for_retry.max(left.unwrap_or_default());
        }
    }
    report
}

/// Partitions one BigQuery load job may modify.
const MAX_PARTITIONS: usize = 4_000;

/// Whether a kind's run goes on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    Stop,
}

/// Where a batch the warehouse did not take waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// Parked, for a later run; the queue behind it goes on.
    Parked,
    /// Too many batches are parked already: it stays in flight, and the
    /// queue behind it waits.
    InFlight,
}

/// Whether a part may have reached the warehouse before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovered {
    /// Left by an earlier run (in flight or parked): any part may have landed.
    Yes,
    /// Taken from the queue in this run.
    No,
}

/// One kind's share of a run.
struct KindRun<'a, W> {
    settings: &'a UploadContext<'a>,
    warehouse: &'a W,
    queue: UploadQueue,
    jobs: LoadJobBudget,
    options: &'a UploadOptions,
    lock: Option<&'a UploadLock>,
    report: &'a mut TableReport,
    failures_in_a_row: u32,
}

impl<W: Warehouse> KindRun<'_, W> {
    async fn upload(&mut self, same_database: bool) -> anyhow::Result<Next> {
        if self.options.dry_run {
            let queued = self.queue.len().await? as usize;
            return self.dry_run(queued).await;
        }
        self.may_go_on()?;
        self.queue.take_over_old_manifest(same_database).await?;
        self.queue.release_orphan_claims().await?;
        // A batch an earlier version left in flight still heads the queue:
        // parked, it is retried first below, and settles without the queue.
        self.queue.adopt_old_in_flight().await?;
        // Counted after the release, which may queue versions again.
        let queued_at_start = self.queue.len().await? as usize;

        // 1. Batches earlier runs could not upload: those that failed least
        // first, then the oldest, so one that fails every time cannot keep
        // the others from their turn. The first that fails again ends this
        // step, not the run: the queue behind them is always tried.
        let mut parked = self.queue.parked_summaries().await?;
        parked.sort_by(|a, b| (a.failures, &a.batch_id).cmp(&(b.failures, &b.batch_id)));
        for summary in parked {
            self.may_go_on()?;
            let Some(manifest) = self.queue.parked(&summary.batch_id).await? else {
                continue;
            };
            tracing::info!(batch = %manifest.batch_id, failures = manifest.failures, "retrying a parked batch");
            if self.deliver(manifest, Recovered::Yes, None).await? == Next::Stop {
                if self.report.set_aside.is_some() {
                    return Ok(Next::Stop);
                }
                break;
            }
        }
        // 2. A batch an earlier run left in flight (it crashed).
        let mut handled = 0usize;
        // After a pause in the steps above, the lock may be another run's.
        self.may_go_on()?;
        if let Some(manifest) = self.queue.in_flight().await? {
            tracing::info!(batch = %manifest.batch_id, "finishing a batch an earlier run left in flight");
            if self.deliver(manifest, Recovered::Yes, None).await? == Next::Stop {
                return Ok(Next::Stop);
            }
        }
        // 3. The queue. Records that arrive during the run wait for the
        // next one, so a run ends.
        let upload = &self.settings.upload;
        while handled < queued_at_start {
            self.may_go_on()?;
            let (manifest, rows) = self
                .queue
                .take_batch(Take::Upload, upload.batch_rows, upload.batch_bytes)
                .await?;
            if manifest.is_empty() {
                break;
            }
            handled += manifest.entries();
            if self.deliver(manifest, Recovered::No, Some(rows)).await? == Next::Stop {
                return Ok(Next::Stop);
            }
        }
        Ok(Next::Continue)
    }

    /// Reads and checks the queue as an upload would; changes nothing.
    async fn dry_run(&mut self, queued_at_start: usize) -> anyhow::Result<Next> {
        let upload = &self.settings.upload;
        let mut handled = 0usize;
        while handled < queued_at_start {
            let (manifest, _) = self
                .queue
                .take_batch(
                    Take::Look { skip: handled },
                    upload.batch_rows,
                    upload.batch_bytes,
                )
                .await?;
            if manifest.is_empty() {
                break;
            }
            handled += manifest.entries();
            self.report.rows_uploaded += manifest.records.len() as u64;
            self.report.dead_lettered += manifest.invalid.len() as u64;
            self.report.expired += manifest.expired.len() as u64;
            self.report.batches += 1;
        }
        Ok(Next::Continue)
    }

    /// Between batches: stop when the lock is lost or the service stops.
    fn may_go_on(&self) -> anyhow::Result<()> {
        if self.lock.is_some_and(UploadLock::is_lost) {
            anyhow::bail!("the upload lock was lost; stopped between batches");
        }
        if self
            .options
            .stop
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            anyhow::bail!("stopping (signal); the rest waits for the next run");
        }
        Ok(())
    }

    /// Writes a batch part by part and settles it, or keeps it; then says
    /// whether the run goes on.
    async fn deliver(
        &mut self,
        mut manifest: BatchManifest,
        recovered: Recovered,
        mut rows: Option<Vec<Row>>,
    ) -> anyhow::Result<Next> {
        let mut may_have_landed: HashSet<String> = match recovered {
            Recovered::Yes => manifest.pending_part_ids().into_iter().collect(),
            Recovered::No => HashSet::new(),
        };
        while let Some(part) = manifest.next_part() {
            let part_rows = match rows.take() {
                Some(rows) if part.id == manifest.batch_id => rows,
                _ => match manifest.rows_of(&part) {
                    Ok(rows) => rows,
                    Err(refused) => {
                        tracing::warn!(batch = %manifest.batch_id, part = %part.id, rows = refused.len(),
                            "records of a kept batch are no rows under this version's rules; dead-lettering them");
                        manifest.split_part(&part, &refused, "");
                        self.queue.save(&manifest, Ttl::Unchanged).await?;
                        continue;
                    }
                },
            };
            // One load job may modify at most 4,000 partitions.
            let days: HashSet<chrono::NaiveDate> = part_rows.iter().map(|r| r.day).collect();
            if days.len() > MAX_PARTITIONS && part.rows.len() > 1 {
                manifest.split_part(&part, &[], "");
                self.queue.save(&manifest, Ttl::Unchanged).await?;
                continue;
            }
            let ids: Vec<String> = part
                .rows
                .iter()
                .filter_map(|&i| Some(manifest.records.get(i)?.digest()))
                .collect();
            self.queue.check_fence().await?;
            let written = self
                .write(&part, &part_rows, &ids, may_have_landed.remove(&part.id))
                .await;
            match written {
                Ok(outcome) => {
                    manifest.part_written(&part, &outcome.rejected);
                    if manifest.next_part().is_some() {
                        self.queue.save(&manifest, Ttl::Unchanged).await?;
                    }
                }
                Err(SinkError {
                    failure: Failure::Rows { named, unexplained },
                    message,
                }) => {
                    tracing::warn!(batch = %manifest.batch_id, part = %part.id, rows = part.rows.len(),
                        named = named.len(), unexplained, error = %message,
                        "the warehouse refused rows of this batch; dead-lettering them and writing the rest");
                    manifest.split_part(&part, &named, &message);
                    self.queue.save(&manifest, Ttl::Unchanged).await?;
                }
                Err(err) if err.failure == Failure::SetAside => {
                    tracing::error!(table = %self.report.table, error = %err,
                        "the table is set aside until the next run; its batches wait, unsplit");
                    self.report
                        .errors
                        .push(format!("batch {}: {err}", manifest.batch_id));
                    self.report.set_aside = Some(err.message);
                    return Ok(Next::Stop);
                }
                Err(err) => return self.keep(manifest, &err).await,
            }
        }
        let settled_form = manifest.settled_form();
        let settled = self.queue.settle(&settled_form).await?;
        self.report.rows_uploaded += settled_form.records.len() as u64;
        self.report.dead_lettered += settled.dead_lettered;
        self.report.expired += settled.expired;
        self.report.batches += 1;
        self.failures_in_a_row = 0;
        tracing::debug!(table = %self.report.table, batch = %manifest.batch_id, "batch uploaded");
        Ok(Next::Continue)
    }

    /// Keeps a batch the warehouse did not take: parked (its records with a
    /// fresh TTL), so the queue goes on. Two in a row end the kind's run.
    async fn keep(&mut self, mut manifest: BatchManifest, err: &SinkError) -> anyhow::Result<Next> {
        manifest.failures += 1;
        manifest.last_error = Some(err.message.clone());
        self.report
            .errors
            .push(format!("batch {}: {err}", manifest.batch_id));
        self.queue
            .extend_ttl(&manifest, self.settings.redis.ttl_seconds)
            .await?;
        let kept = if !manifest.queued {
            self.queue.save(&manifest, Ttl::Renewed).await?;
            tracing::error!(table = %self.report.table, batch = %manifest.batch_id, error = %err,
                failures = manifest.failures, "a parked batch failed again; the other parked ones wait for a later run, the queue goes on");
            // It counts as one failure in a row: if the queue's next batch
            // fails too, the warehouse looks down and the run ends there.
            self.failures_in_a_row = 1;
            return Ok(Next::Stop);
        } else if self.queue.parked_summaries().await?.len() >= self.settings.upload.max_parked {
            self.queue.save(&manifest, Ttl::Renewed).await?;
            Kept::InFlight
        } else {
            self.queue.park(&mut manifest).await?;
            self.report.batches_parked += 1;
            Kept::Parked
        };
        tracing::error!(table = %self.report.table, batch = %manifest.batch_id, error = %err,
            ?kept, failures = manifest.failures, "the warehouse did not take the batch; it waits for a later run");
        self.failures_in_a_row += 1;
        if kept == Kept::InFlight {
            self.report.errors.push(format!(
                "{} batches are parked already (FLIT_UPLOAD_MAX_PARKED): this one stays in flight and the queue behind it waits",
                self.settings.upload.max_parked
            ));
            return Ok(Next::Stop);
        }
        if self.failures_in_a_row >= 2 {
            self.report.errors.push(
                "two batches in a row were not taken: the warehouse looks unavailable, the rest waits for the next run".to_owned(),
            );
            return Ok(Next::Stop);
        }
        Ok(Next::Continue)
    }

    /// Writes one part with retries (exponential backoff with jitter); a
    /// stop (signal) cuts a pause short and ends the retries.
    async fn write(
        &mut self,
        part: &Part,
        rows: &[Row],
        ids: &[String],
        may_have_landed: bool,
    ) -> Result<WriteOutcome, SinkError> {
        let table = TableSpec::for_kind(self.queue_kind());
        let stop = self.options.stop.clone().unwrap_or_default();
        let mut attempts = 1u64;
        let tried = std::sync::atomic::AtomicBool::new(may_have_landed);
        let warehouse = self.warehouse;
        let jobs = &self.jobs;
        let sleeper_stop = stop.clone();
        // Creating a missing table is part of delivering: it is retried, and
        // when it fails the batch is kept like any other failed write.
        let written = (|| async {
            let batch = RowBatch {
                batch_id: &part.id,
                table,
                rows,
                row_ids: ids,
                ingested_at: part.ingested_at,
                // A failed attempt may still have landed: later attempts check first.
                maybe_written: tried.swap(true, std::sync::atomic::Ordering::SeqCst),
                jobs,
            };
            warehouse.ensure_table(table).await?;
            warehouse.write(&batch).await
        })
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(self.settings.upload.retry_min_delay)
                .with_max_delay(Duration::from_secs(60))
                .with_max_times(self.settings.upload.attempts.saturating_sub(1))
                .with_jitter(),
        )
        .sleep(move |pause| {
            let stop = sleeper_stop.clone();
            async move {
                crate::shutdown::sleep_or_stop(pause, &stop).await;
            }
        })
        .when(|err| err.is_retryable() && !stop.is_cancelled())
        .notify(|err, delay| {
            attempts += 1;
            tracing::warn!(table = %table.qualified(), batch = %part.id, error = %err,
                retry_in_ms = delay.as_millis() as u64, "warehouse write failed; retrying");
        })
        .await;
        self.report.attempts += attempts;
        written
    }

    fn queue_kind(&self) -> EventKind {
        self.report.kind.unwrap_or(EventKind::Transaction)
    }

    /// Records still waiting after the run: in the queue when the run
    /// stopped early, and in parked batches.
    async fn count_kept(&mut self, finished: bool) -> anyhow::Result<()> {
        if self.options.dry_run {
            return Ok(());
        }
        let parked = self.queue.parked_summaries().await?;
        self.report.parked_waiting = parked.len() as u64;
        let mut kept: u64 = parked.iter().map(|p| p.records as u64).sum();
        if !finished {
            kept += self.queue.len().await? + self.queue.in_flight_entries().await?;
        }
        self.report.kept_for_retry = kept;
        Ok(())
    }
}

async fn connect(
    settings: &UploadContext<'_>,
    db: i64,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    settings.redis.open(Role::Uploader, db).await
}
