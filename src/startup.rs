//! `flit-cache run`: wires the long-running service together — one stream
//! worker per kind (or more), the spool replayer, the upload schedule, the
//! HTTP server (health and metrics), the metrics upkeep and the warehouse
//! watch — and keeps every one of them in one `Supervisor`. Whatever can
//! fail at start is checked before any task starts (exit 2). A task that
//! ends before a stop was asked for (an error, a panic, or just returning)
//! is logged with its name and stops the service (exit 1), so Railway or
//! systemd restarts it. Either way the stop is in order: workers finish
//! and acknowledge their batch, an upload stops between batches, before
//! the process exits.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::configuration::{Settings, SinkChoice, WarehouseSettings};
use crate::http::scrape::{self, ScrapeSources};
use crate::http::{self, HttpState, MetricsEndpoint};
use crate::ingest::{StreamWorker, WorkerTotals};
use crate::keys::EventKind;
use crate::producer::Producer;
use crate::shutdown::sleep_or_stop;
use crate::store::{Role, reports};
use crate::upload::{self, RunStatus, UploadOptions};

/// How long `/readyz` waits for Redis: a probe must answer fast.
const READINESS_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the service looks for spooled events to replay.
const SPOOL_CHECK: Duration = Duration::from_secs(2);

pub struct Application {
    settings: Settings,
    listener: tokio::net::TcpListener,
}

impl Application {
    /// Checks what can fail at start (the HTTP address) before anything runs.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("FLIT_HTTP_ADDR {}: cannot listen", settings.http_addr))?;
        Ok(Application { settings, listener })
    }

    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Runs until `shutdown` is cancelled, or until one of its tasks ends
    /// unexpectedly, then stops everything cleanly. Errs only when the
    /// service could not start, and then no task was started.
    pub async fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Supervised<WorkerTotals>> {
        let settings = &self.settings;
        tracing::info!(redis = %settings.redis.url, http = %self.http_addr()?,
            consumer = %settings.ingest.consumer_name, "flit-cache starting");
        log_sink(&settings.warehouse);

        // What can fail at start, before any task runs.
        let producer = settings.producer()?;
        let readiness = settings.redis.lazy_within(
            Role::Monitor,
            settings.redis.db_transactions,
            READINESS_TIMEOUT,
        )?;
        let handle = scrape::install()?;
        let app = http::router(HttpState {
            redis: Arc::new(readiness),
            metrics: Arc::new(MetricsEndpoint {
                handle: handle.clone(),
                sources: ScrapeSources::new(&settings.monitor_context())?,
            }),
        });

        // The tasks stop on `stop`: on the caller's shutdown, or when the
        // supervisor cancels it because a task ended.
        let stop = shutdown.child_token();
        let mut tasks = Supervisor::new(stop.clone());
        spawn_stream_workers(&mut tasks, settings, &stop);
        tasks.spawn("spool replayer", {
            let stop = stop.clone();
            async move {
                replay_spool_while_running(producer, stop).await;
                Ok(None)
            }
        });
        tasks.spawn("upload schedule", {
            let (settings, stop) = (settings.clone(), stop.clone());
            async move {
                run_scheduled_uploads(&settings, stop).await?;
                Ok(None)
            }
        });
        tasks.spawn("HTTP server", {
            let (listener, stop) = (self.listener, stop.clone());
            async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await?;
                Ok(None)
            }
        });
        tasks.spawn("metrics upkeep", {
            let stop = stop.clone();
            async move {
                scrape::keep_up(handle, stop).await;
                Ok(None)
            }
        });
        // An unusable sink reads as unreachable tables: the rules alert.
        if let Some(interval) = settings.monitor.warehouse_check_interval {
            let (warehouse, ttl_seconds) = (settings.warehouse.clone(), settings.redis.ttl_seconds);
            let stop = stop.clone();
            tasks.spawn("warehouse watch", async move {
                scrape::watch_warehouse(warehouse, ttl_seconds, interval, stop).await;
                Ok(None)
            });
        }

        let ended = tasks.wait().await;
        if ended.failures.is_empty() {
            tracing::info!("stopped");
        } else {
            tracing::error!(
                failed = ended.failures.len(),
                "stopped because a task failed; exit 1"
            );
        }
        Ok(Supervised {
            values: ended.values.into_iter().flatten().collect(),
            failures: ended.failures,
        })
    }
}

/// Names the upload sink in the log, or why there is none (ingest runs on).
fn log_sink(warehouse: &WarehouseSettings) {
    match &warehouse.sink {
        SinkChoice::Refused(why) => tracing::error!(
            "no upload sink: {why}; ingest runs, scheduled uploads refuse until it is fixed"
        ),
        SinkChoice::BigQuery => tracing::info!(
            sink = "bigquery",
            project = warehouse.bigquery_project.as_deref().unwrap_or_default(),
            "upload sink"
        ),
        SinkChoice::Local => tracing::info!(
            sink = "local",
            dir = %warehouse.warehouse_dir.display(),
            "upload sink"
        ),
    }
}

/// `FLIT_WORKERS` stream workers per kind, each a consumer of its own.
fn spawn_stream_workers(
    tasks: &mut Supervisor<Option<WorkerTotals>>,
    settings: &Settings,
    stop: &CancellationToken,
) {
    for kind in EventKind::ALL {
        for n in 0..settings.ingest.workers_per_kind {
            let consumer = match settings.ingest.workers_per_kind {
                1 => format!("{}-{kind}", settings.ingest.consumer_name),
                _ => format!("{}-{kind}-{n}", settings.ingest.consumer_name),
            };
            let worker = StreamWorker::new(
                kind,
                settings.redis.clone(),
                consumer.clone(),
                settings.ingest.clone(),
                settings.door,
                settings.dead_letters,
            );
            let stop = stop.clone();
            tasks.spawn(format!("stream worker {consumer}"), async move {
                Ok(Some(worker.run(stop).await))
            });
        }
    }
}

/// Uploads on the schedule until `stop`; an upload in progress stops
/// between batches. A missed scheduled run is caught up at start.
async fn run_scheduled_uploads(settings: &Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let schedule = &settings.schedule;
    let catch_up = async {
        match last_successful_upload(settings).await {
            Some(last) if schedule.missed_a_run(last, chrono::Utc::now()) => {
                tracing::info!(last_success = %last, "the last scheduled upload was missed; catching up now");
                true
            }
            _ => false,
        }
    };
    let upload_on_tick = |reason: &'static str| {
        let stop = stop.clone();
        async move {
            tracing::info!(reason, "upload run starting");
            let options = UploadOptions {
                stop: Some(stop),
                ..UploadOptions::default()
            };
            let result =
                upload::run_configured(&settings.upload_context(), &settings.warehouse, options)
                    .await;
            match result {
                Ok(report) if report.status == RunStatus::Busy => {
                    tracing::info!("another process is uploading; this tick is skipped")
                }
                Ok(report) => {
                    let rows: u64 = report.tables.iter().map(|t| t.rows_uploaded).sum();
                    let kept: u64 = report.tables.iter().map(|t| t.kept_for_retry).sum();
                    tracing::info!(status = ?report.status, rows, kept, "upload run finished")
                }
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "upload run could not start")
                }
            }
        }
    };
    schedule.drive(catch_up, stop.clone(), upload_on_tick).await
}

/// When the last upload run succeeded, if Redis says; a Redis that cannot
/// say gets no catch-up (logged).
async fn last_successful_upload(settings: &Settings) -> Option<chrono::DateTime<chrono::Utc>> {
    let last: anyhow::Result<_> = async {
        let mut conn = settings
            .redis
            .open(Role::Monitor, settings.redis.db_transactions)
            .await?;
        Ok(reports::last_success(&mut conn).await?)
    }
    .await;
    last.unwrap_or_else(|err| {
        tracing::warn!(error = %format!("{err:#}"), "cannot read the upload history; no catch-up check");
        None
    })
}

/// The tasks of the service, each under its name. Until `stop` is
/// cancelled, a task that ends in any way (an error, a panic, returning) is
/// a failure: it is logged, and `stop` is cancelled so the others finish
/// cleanly. Once `stop` is cancelled a task that returns is expected, and
/// one that errs or panics while stopping is still a failure.
pub struct Supervisor<T> {
    tasks: JoinSet<anyhow::Result<T>>,
    names: HashMap<tokio::task::Id, String>,
    stop: CancellationToken,
}

/// How the tasks of a `Supervisor` ended: what those that returned gave
/// back, and the failures, in the order they happened.
#[derive(Debug)]
pub struct Supervised<T> {
    pub values: Vec<T>,
    pub failures: Vec<TaskFailure>,
}

impl<T> Supervised<T> {
    /// 0 after a clean stop, 1 when a task failed (2, could not start, is
    /// not the supervisor's to give: nothing had started then).
    pub fn exit_code(&self) -> u8 {
        match self.failures.is_empty() {
            true => 0,
            false => 1,
        }
    }
}

/// A task that ended unexpectedly: its name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    pub task: String,
    pub error: String,
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} ended unexpectedly: {}", self.task, self.error)
    }
}

impl<T: Send + 'static> Supervisor<T> {
    pub fn new(stop: CancellationToken) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            stop,
        }
    }

    /// Starts `task` under `name`. It must stop by itself, soon, once the
    /// supervisor's `stop` is cancelled.
    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name.into());
    }

    /// Waits until every task has ended (see `Supervisor`).
    pub async fn wait(mut self) -> Supervised<T> {
        let mut values = Vec::new();
        let mut failures = Vec::new();
        let mut announced = false;
        loop {
            let joined = tokio::select! {
                joined = self.tasks.join_next_with_id() => joined,
                _ = self.stop.cancelled(), if !announced => {
                    announced = true;
                    tracing::info!("stopping: finishing in-flight batches");
                    continue;
                }
            };
            let Some(joined) = joined else { break };
            let (id, ended) = match joined {
                Ok((id, Ok(value))) => (id, Ok(value)),
                Ok((id, Err(err))) => (id, Err(crate::telemetry::error_text(&err))),
                Err(err) => (err.id(), Err(join_error_text(err))),
            };
            let task = self
                .names
                .remove(&id)
                .unwrap_or_else(|| format!("task {id}"));
            let stopping = self.stop.is_cancelled();
            let error = match ended {
                Ok(value) => {
                    values.push(value);
                    if stopping {
                        continue;
                    }
                    "it returned before any stop was asked for".to_owned()
                }
                Err(error) => error,
            };
            tracing::error!(task = %task, error = %error, stopping,
                "a task of the service ended unexpectedly; stopping the service (exit 1)");
            self.stop.cancel();
            failures.push(TaskFailure { task, error });
        }
        Supervised { values, failures }
    }
}

fn join_error_text(err: JoinError) -> String {
    if !err.is_panic() {
        return err.to_string();
    }
    let payload = err.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    format!("panicked: {message}")
}

/// Replays the local spool whenever it holds events and Redis takes them.
async fn replay_spool_while_running(producer: Producer, shutdown: CancellationToken) {
    loop {
        if !sleep_or_stop(SPOOL_CHECK, &shutdown).await {
            return;
        }
        if producer.spool().is_empty() {
            continue;
        }
        match producer.replay_spool().await {
            Ok(report) if report.events > 0 => {
                tracing::info!(
                    events = report.events,
                    files = report.files,
                    "replayed spooled events"
                )
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %crate::producer::summary(&err), "spool replay failed; will retry")
            }
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(err) => {
                        tracing::error!(error = %err, "cannot listen for SIGTERM");
                        let _ = interrupt.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = interrupt => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = interrupt.await;
        token.cancel();
    });
}
