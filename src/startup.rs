//! `flit-cache run`: wires the long-running service together — one stream
//! worker per kind (or more), the spool replayer, the upload schedule and the
//! HTTP server (health and metrics) — and stops them in order when asked: workers finish and
//! acknowledge their batch, an upload stops between batches, before the
//! process exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::configuration::{Settings, SinkChoice};
use crate::http::scrape::{self, ScrapeSources};
use crate::http::{self, HttpState, MetricsEndpoint};
use crate::ingest::{StreamWorker, WorkerTotals};
use crate::keys::EventKind;
use crate::producer::Producer;
use crate::schedule;
use crate::store::Role;

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

    /// Runs until `shutdown` is cancelled, then stops everything cleanly.
    pub async fn run_until_stopped(
        self,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Vec<WorkerTotals>> {
        let settings = &self.settings;
        tracing::info!(redis = %settings.redis.url, http = %self.http_addr()?,
            consumer = %settings.ingest.consumer_name, "flit-cache starting");
        match &settings.warehouse.sink {
            SinkChoice::Refused(why) => tracing::error!(
                "no upload sink: {why}; ingest runs, scheduled uploads refuse until it is fixed"
            ),
            SinkChoice::BigQuery => tracing::info!(
                sink = "bigquery",
                project = settings
                    .warehouse
                    .bigquery_project
                    .as_deref()
                    .unwrap_or_default(),
                "upload sink"
            ),
            SinkChoice::Local => tracing::info!(
                sink = "local",
                dir = %settings.warehouse.warehouse_dir.display(),
                "upload sink"
            ),
        }

        let mut workers = JoinSet::new();
        for kind in EventKind::ALL {
            for n in 0..settings.ingest.workers_per_kind {
                let consumer = match settings.ingest.workers_per_kind {
                    1 => format!("{}-{kind}", settings.ingest.consumer_name),
                    _ => format!("{}-{kind}-{n}", settings.ingest.consumer_name),
                };
                let worker = StreamWorker::new(
                    kind,
                    settings.redis.clone(),
                    consumer,
                    settings.ingest.clone(),
                    settings.door,
                    settings.dead_letters,
                );
                workers.spawn(worker.run(shutdown.clone()));
            }
        }

        let producer = Producer::new(settings)?;
        let replayer = tokio::spawn(replay_spool_while_running(producer, shutdown.clone()));
        let uploads = tokio::spawn(schedule::run_scheduled_uploads(
            Arc::new(settings.clone()),
            shutdown.clone(),
        ));

        let readiness = settings.redis.lazy_within(
            Role::Monitor,
            settings.redis.db_transactions,
            READINESS_TIMEOUT,
        )?;
        let handle = scrape::install()?;
        let upkeep = tokio::spawn(scrape::keep_up(handle.clone(), shutdown.clone()));
        // An unusable sink reads as unreachable tables: the rules alert.
        let warehouse_watch = settings.monitor.warehouse_check_interval.map(|interval| {
            tokio::spawn(scrape::watch_warehouse(
                Arc::new(settings.clone()),
                interval,
                shutdown.clone(),
            ))
        });
        let app = http::router(HttpState {
            redis: Arc::new(readiness),
            metrics: Arc::new(MetricsEndpoint {
                handle,
                sources: ScrapeSources::new(settings)?,
            }),
        });
        let http_shutdown = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await
        });

        shutdown.cancelled().await;
        tracing::info!("stopping: finishing in-flight batches");
        let mut totals = Vec::new();
        while let Some(result) = workers.join_next().await {
            totals.push(result.context("a stream worker failed")?);
        }
        replayer.await.context("the spool replayer failed")?;
        uploads.await.context("the upload schedule failed")??;
        server.await.context("the HTTP server failed")??;
        upkeep.await.context("the metrics upkeep failed")?;
        if let Some(watch) = warehouse_watch {
            watch.await.context("the warehouse check failed")?;
        }
        tracing::info!("stopped");
        Ok(totals)
    }
}

/// Replays the local spool whenever it holds events and Redis takes them.
async fn replay_spool_while_running(producer: Producer, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SPOOL_CHECK) => {}
            _ = shutdown.cancelled() => return,
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
