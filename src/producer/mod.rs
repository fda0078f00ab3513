//! The library's way to put events onto the streams, for `push`, `generate`
//! and any Rust service (the ML API) that produces events.
//!
//! The prediction path must not wait on a sick Redis: every call has a short
//! timeout, a circuit breaker skips Redis after repeated failures, and events
//! that cannot be sent are appended to a durable local spool instead. The
//! spool is replayed later (`replay-spool`, or by `run` once Redis is back).

mod breaker;
mod spool;

pub(crate) use breaker::CircuitBreaker;
pub(crate) use spool::ReplayFile;
pub use spool::{Spool, SpoolError};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::event::{self, AcceptedEvent, DoorRules, Rejection};
use crate::keys::EventKind;
use crate::store::{LazyConnection, RedisSettings, Role, event_stream};

/// When producers stop calling Redis and where they spool meanwhile (their
/// call timeout is the producer role's, `RoleTimeouts::producer`).
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
}

/// Events sent in one pipelined round trip.
pub const PIPELINE_CHUNK: usize = 1_000;
/// Events a spool replay sends between two notes of its progress: what an
/// interrupted replay may send twice.
const REPLAY_CHUNK: usize = 200;

/// Where events went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Added to the stream.
    Streamed,
    /// Redis could not be reached in time; the events are safe in the spool.
    Spooled,
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("event refused: {0}")]
    Rejected(#[from] Rejection),
    /// Neither Redis nor the spool took the events: the caller still owns them.
    #[error("Redis unreachable and {0}")]
    Spool(#[from] SpoolError),
}

/// What a spool replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    pub files: u64,
    pub events: u64,
    /// Lines that could not be read back, kept in `unreadable.ndjson`.
    pub unreadable: u64,
}

pub struct Producer {
    connections: [LazyConnection; 2],
    breaker: CircuitBreaker,
    spool: Spool,
    door: DoorRules,
}

impl Producer {
    /// Builds a producer; it connects lazily, so it starts even when Redis is down.
    pub fn new(
        redis: &RedisSettings,
        producer: &ProducerSettings,
        door: DoorRules,
    ) -> anyhow::Result<Self> {
        let connection = |kind| redis.lazy(Role::Producer, redis.db_for(kind));
        Ok(Producer {
            connections: [
                connection(EventKind::Transaction)?,
                connection(EventKind::Prediction)?,
            ],
            breaker: CircuitBreaker::new(producer.breaker_failures, producer.breaker_cooldown),
            spool: Spool::new(&producer.spool_dir, producer.spool_max_bytes),
            door,
        })
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Checks one event at the door as the workers will (against this
    /// host's clock), stamping a missing timestamp now, so a retried copy of
    /// it is identical and deduplicated downstream.
    pub fn prepare(&self, kind: EventKind, event: &[u8]) -> Result<AcceptedEvent, Rejection> {
        let now = chrono::Utc::now();
        event::accept(kind, event, now, now, &self.door)
    }

    /// Sends one event: to the stream, or to the spool when Redis fails.
    /// An event the door would refuse is refused here, before it is sent.
    ///
    /// ```no_run
    /// use flit_cache::configuration::Settings;
    /// use flit_cache::keys::EventKind;
    /// use flit_cache::producer::{Delivery, ProduceError};
    ///
    /// # async fn example() -> anyhow::Result<()> {
    /// let producer = Settings::from_env()?.producer()?;
    /// let prediction = br#"{"prediction_id": "pred-1", "transaction_id": "tx-1", "selected_prediction": 0.12}"#;
    /// match producer.send(EventKind::Prediction, prediction).await {
    ///     Ok(Delivery::Streamed) => {}
    ///     Ok(Delivery::Spooled) => eprintln!("Redis is down: spooled, replayed later"),
    ///     Err(ProduceError::Rejected(why)) => eprintln!("refused: {} ({why})", why.code()),
    ///     Err(err) => return Err(err.into()),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, kind: EventKind, event: &[u8]) -> Result<Delivery, ProduceError> {
        let prepared = self.prepare(kind, event)?;
        self.send_prepared(kind, &[prepared.payload]).await
    }

    /// Sends prepared payloads, pipelined; all of them go to the stream, or
    /// all of them to the spool.
    pub async fn send_prepared(
        &self,
        kind: EventKind,
        payloads: &[String],
    ) -> Result<Delivery, ProduceError> {
        if payloads.is_empty() {
            return Ok(Delivery::Streamed);
        }
        if self.breaker.allow() {
            match self.xadd(kind, payloads).await {
                Ok(()) => {
                    self.breaker.record_success();
                    return Ok(Delivery::Streamed);
                }
                Err(err) => {
                    self.breaker.record_failure();
                    tracing::warn!(%kind, error = %summary(&err), events = payloads.len(),
                        "Redis did not take the events; spooling");
                }
            }
        }
        let spool = self.spool.clone();
        let owned = payloads.to_vec();
        tokio::task::spawn_blocking(move || spool.append(kind, &owned))
            .await
            .map_err(|join| SpoolError::Io {
                dir: self.spool.dir().display().to_string(),
                source: std::io::Error::other(join.to_string()),
            })??;
        Ok(Delivery::Spooled)
    }

    /// Re-sends every spooled event. A file is deleted only after all its
    /// events are in Redis; on failure it stays for the next replay, which
    /// resumes after the last chunk that reached Redis (progress is noted,
    /// synced, after each chunk), so at most one chunk can be sent twice.
    pub async fn replay_spool(&self) -> anyhow::Result<ReplayReport> {
        let spool = self.spool.clone();
        let files = tokio::task::spawn_blocking(move || spool.take_for_replay()).await??;
        let mut report = ReplayReport::default();
        for file in files {
            let file = Arc::new(file);
            let (sender, mut receiver) =
                tokio::sync::mpsc::channel::<(u64, EventKind, String)>(REPLAY_CHUNK);
            let spool = self.spool.clone();
            let reading = file.clone();
            let reader = tokio::task::spawn_blocking(move || {
                spool.read_events(&reading, |line, kind, data| {
                    sender
                        .blocking_send((line, kind, data))
                        .map_err(|_| std::io::Error::other("replay stopped"))
                })
            });
            let mut chunk: Vec<(u64, EventKind, String)> = Vec::with_capacity(REPLAY_CHUNK);
            let mut sent = 0u64;
            let mut failure = None;
            loop {
                let item = receiver.recv().await;
                let end = item.is_none();
                chunk.extend(item);
                if chunk.len() == REPLAY_CHUNK || (end && !chunk.is_empty()) {
                    match self.replay_chunk(&file, &mut chunk).await {
                        Ok(count) => sent += count,
                        Err(err) => {
                            failure = Some(err);
                            break;
                        }
                    }
                }
                if end {
                    break;
                }
            }
            // Dropping the receiver stops the reader early after a failure.
            drop(receiver);
            let unreadable = reader.await?;
            if let Some(err) = failure {
                return Err(err.context(format!(
                    "replay of {} stopped; the rest of it stays for the next replay",
                    file.path.display()
                )));
            }
            report.unreadable += unreadable?;
            report.events += sent;
            report.files += 1;
            let spool = self.spool.clone();
            let file = Arc::try_unwrap(file)
                .map_err(|_| anyhow::anyhow!("a spool file is still in use after its replay"))?;
            tokio::task::spawn_blocking(move || spool.finish(file)).await??;
        }
        if report.unreadable > 0 {
            tracing::error!(unreadable = report.unreadable, dir = %self.spool.dir().display(),
                "spool lines could not be read back; kept in unreadable.ndjson");
        }
        Ok(report)
    }

    /// Sends a chunk of spooled events, grouped by kind, then notes how far
    /// the file got; returns how many were sent.
    async fn replay_chunk(
        &self,
        file: &Arc<ReplayFile>,
        chunk: &mut Vec<(u64, EventKind, String)>,
    ) -> anyhow::Result<u64> {
        let mut sent = 0;
        for kind in EventKind::ALL {
            let payloads: Vec<String> = chunk
                .iter()
                .filter(|(_, k, _)| *k == kind)
                .map(|(_, _, p)| p.clone())
                .collect();
            if !payloads.is_empty() {
                self.xadd(kind, &payloads).await?;
                sent += payloads.len() as u64;
            }
        }
        if let Some(&(line, _, _)) = chunk.last() {
            let spool = self.spool.clone();
            let file = file.clone();
            tokio::task::spawn_blocking(move || spool.record_progress(&file, line)).await??;
        }
        chunk.clear();
        Ok(sent)
    }

    /// XADDs payloads in pipelined chunks, each bounded by the call timeout.
    async fn xadd(&self, kind: EventKind, payloads: &[String]) -> anyhow::Result<()> {
        let connection = &self.connections[kind_index(kind)];
        for chunk in payloads.chunks(PIPELINE_CHUNK) {
            let mut conn = connection.get().await?;
            // A pipeline of many events may take longer than one call.
            let timeout = connection.timeout() * (1 + chunk.len() as u32 / 100);
            connection
                .bounded(timeout, event_stream::append(&mut conn, kind, chunk))
                .await?;
        }
        Ok(())
    }
}

/// The first part of an error: a failed pipeline lists every command in it.
pub(crate) fn summary(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn kind_index(kind: EventKind) -> usize {
    match kind {
        EventKind::Transaction => 0,
        EventKind::Prediction => 1,
    }
}
