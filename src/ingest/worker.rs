//! One stream worker: reads its kind's stream as a member of the consumer
//! group, validates each entry and commits the batch atomically. It takes over
//! entries left pending by consumers that died (XAUTOCLAIM), trims what every
//! group has acknowledged, and survives Redis going away by reconnecting with
//! exponential backoff. It stops between batches when asked, never inside one.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use super::IngestSettings;
use crate::event::{self, DoorRules, Rejection};
use crate::keys::{DATA_FIELD, EventKind};
use crate::shutdown::sleep_or_stop;
use crate::store::commit::{
    AcceptedEntry, BatchCommit, CommitOutcome, MemoryLimit, RejectedEntry, is_out_of_memory,
};
use crate::store::dead_letters::DeadLetterSettings;
use crate::store::dead_letters::KeptBody;
use crate::store::event_stream::{self, ReadFrom};
use crate::store::stream_entries::StreamEntry;
use crate::store::{RedisSettings, upload_queue};
use crate::telemetry::metrics::{BatchCommitted, EventRejected};

/// Upper bounds of one commit call, so that it runs about a millisecond in
/// Redis (a script blocks every other client, the producers' XADDs
/// included) and stays far below Lua's limit on unpacked values (its one
/// RPUSH and one XACK take every entry of the call). A read batch
/// (`FLIT_BATCH_SIZE`) is committed in as many calls as these bounds need;
/// each call is atomic on its own.
const MAX_COMMIT_EVENTS: usize = 200;
const MAX_COMMIT_BYTES: usize = 1024 * 1024;

/// How often a worker that met a full Redis tries its batch again.
const OOM_PAUSE: Duration = Duration::from_millis(500);

/// Consumers with nothing pending that have been idle this long are removed
/// from the group, so restarts do not pile up dead consumer names.
const STALE_CONSUMER: Duration = Duration::from_secs(3600);

/// Counts of what a worker did over its life, returned when it stops.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerTotals {
    pub committed: CommitOutcome,
    pub batches: u64,
    /// Pending entries that were no longer in the stream when read.
    pub vanished: u64,
    pub reconnects: u64,
}

pub struct StreamWorker {
    kind: EventKind,
    redis: RedisSettings,
    consumer: String,
    settings: IngestSettings,
    door: DoorRules,
    dead_letters: DeadLetterSettings,
    commit: BatchCommit,
}

/// Where the worker is in its reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Re-reading entries delivered to this consumer name but never acknowledged.
    OwnPending,
    /// Reading new entries.
    New,
}

struct Session {
    conn: MultiplexedConnection,
    phase: Phase,
    claim_cursor: String,
    next_claim: Instant,
    next_trim: Instant,
}

impl StreamWorker {
    pub fn new(
        kind: EventKind,
        redis: RedisSettings,
        consumer: String,
        settings: IngestSettings,
        door: DoorRules,
        dead_letters: DeadLetterSettings,
    ) -> Self {
        StreamWorker {
            kind,
            commit: BatchCommit::new(kind, redis.ttl_seconds, dead_letters),
            redis,
            consumer,
            settings,
            door,
            dead_letters,
        }
    }

    /// Runs until `shutdown` is cancelled; the batch in hand is committed first.
    pub async fn run(self, shutdown: CancellationToken) -> WorkerTotals {
        let mut totals = WorkerTotals::default();
        let mut backoff = reconnect_backoff();
        let mut session: Option<Session> = None;
        let mut waiting_for_memory = false;
        tracing::info!(kind = %self.kind, consumer = %self.consumer, "stream worker started");

        while !shutdown.is_cancelled() {
            let result: anyhow::Result<()> = match session.as_mut() {
                Some(session) => self.step(session, &mut totals).await.map_err(Into::into),
                None => match self.open_session().await {
                    Ok(opened) => {
                        session = Some(opened);
                        continue;
                    }
                    Err(err) => Err(err),
                },
            };
            let delay = match result {
                Ok(()) => {
                    backoff = reconnect_backoff();
                    waiting_for_memory = false;
                    continue;
                }
                Err(err)
                    if err
                        .downcast_ref::<redis::RedisError>()
                        .is_some_and(is_out_of_memory) =>
                {
                    // Not a connection problem: keep it, re-read the entries
                    // in hand (still pending on this consumer) after a pause.
                    if let Some(session) = session.as_mut() {
                        session.phase = Phase::OwnPending;
                    }
                    if !std::mem::replace(&mut waiting_for_memory, true) {
                        tracing::warn!(kind = %self.kind, retry_every_ms = OOM_PAUSE.as_millis() as u64,
                            "Redis is at maxmemory and records wait for upload; waiting for an upload to free memory (producers spool meanwhile)");
                    }
                    OOM_PAUSE
                }
                Err(err) => {
                    session = None;
                    totals.reconnects += 1;
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(kind = %self.kind, error = %format!("{err:#}"), retry_in_ms = delay.as_millis() as u64,
                        "stream worker cannot read or commit; reconnecting after a pause");
                    delay
                }
            };
            sleep_or_stop(delay, &shutdown).await;
        }
        tracing::info!(kind = %self.kind, consumer = %self.consumer, stored = totals.committed.stored,
            duplicates = totals.committed.duplicates, superseded = totals.committed.superseded,
            dead_lettered = totals.committed.dead_lettered, "stream worker stopped");
        totals
    }

    async fn open_session(&self) -> anyhow::Result<Session> {
        // Blocking reads hold the connection for up to BLOCK on top of the
        // role's timeout.
        let mut conn = self
            .redis
            .open_blocking(self.redis.db_for(self.kind), self.settings.block)
            .await?;
        crate::store::layout::claim(&mut conn).await?;
        event_stream::ensure_group(&mut conn, self.kind).await?;
        let now = Instant::now();
        Ok(Session {
            conn,
            phase: Phase::OwnPending,
            claim_cursor: "0-0".to_owned(),
            next_claim: now,
            next_trim: now + self.settings.trim_interval,
        })
    }

    /// One round: take over abandoned entries when due, read and commit one
    /// batch, trim when due.
    async fn step(
        &self,
        session: &mut Session,
        totals: &mut WorkerTotals,
    ) -> redis::RedisResult<()> {
        if Instant::now() >= session.next_claim {
            let event_stream::Claimed {
                cursor,
                read,
                deleted,
            } = event_stream::claim_stalled(
                &mut session.conn,
                self.kind,
                &self.consumer,
                self.settings.claim_idle,
                &session.claim_cursor,
                self.settings.batch_size,
            )
            .await?;
            if !deleted.is_empty() {
                // Redis already dropped these from the pending list.
                totals.vanished += deleted.len() as u64;
                tracing::error!(kind = %self.kind, count = deleted.len(),
                    "pending entries were deleted from the stream before any worker committed them");
            }
            if !read.entries.is_empty() {
                tracing::info!(kind = %self.kind, count = read.entries.len(), "took over entries of a stalled consumer");
                self.process(&mut session.conn, read.entries, read.server_now, totals)
                    .await?;
            }
            if cursor == "0-0" {
                session.next_claim = Instant::now() + self.settings.claim_idle / 2;
            }
            session.claim_cursor = cursor;
        }

        let from = match session.phase {
            Phase::OwnPending => ReadFrom::OwnPending,
            Phase::New => ReadFrom::New {
                block: self.settings.block,
            },
        };
        // The read comes with the server's clock: the door's window and the
        // arrival stamp of entries whose id a producer chose are read against it.
        let read = event_stream::read(
            &mut session.conn,
            self.kind,
            &self.consumer,
            self.settings.batch_size,
            from,
        )
        .await?;
        if read.entries.is_empty() && session.phase == Phase::OwnPending {
            session.phase = Phase::New;
        }
        self.process(&mut session.conn, read.entries, read.server_now, totals)
            .await?;

        if Instant::now() >= session.next_trim {
            self.trim_stream(&mut session.conn).await?;
            session.next_trim = Instant::now() + self.settings.trim_interval;
        }
        Ok(())
    }

    /// Validates entries and commits them in slices bounded by count and bytes.
    async fn process(
        &self,
        conn: &mut MultiplexedConnection,
        batch: Vec<StreamEntry>,
        server_now: DateTime<Utc>,
        totals: &mut WorkerTotals,
    ) -> redis::RedisResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let read_at = Instant::now();
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        let mut bytes = 0usize;
        for entry in batch {
            bytes += match self.classify(entry, server_now) {
                Classified::Accepted(entry) => {
                    let size = entry.event.payload.len();
                    accepted.push(entry);
                    size
                }
                Classified::Rejected(entry) => {
                    let size = entry.body.data.len();
                    rejected.push(entry);
                    size
                }
                Classified::Vanished(id) => {
                    totals.vanished += 1;
                    tracing::error!(kind = %self.kind, entry = %id,
                        "pending entry was deleted from the stream before it was committed; acknowledging it");
                    event_stream::ack(conn, self.kind, &id).await?;
                    0
                }
            };
            if bytes >= MAX_COMMIT_BYTES || accepted.len() + rejected.len() >= MAX_COMMIT_EVENTS {
                self.commit_slice(conn, &mut accepted, &mut rejected, totals, read_at)
                    .await?;
                bytes = 0;
            }
        }
        self.commit_slice(conn, &mut accepted, &mut rejected, totals, read_at)
            .await
    }

    /// Trims what every group has acknowledged (see trim_stream.lua).
    async fn trim_stream(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let trimmed = event_stream::trim(conn, self.kind, STALE_CONSUMER).await?;
        tracing::debug!(kind = %self.kind, trimmed, "trimmed acknowledged entries");
        Ok(())
    }

    async fn commit_slice(
        &self,
        conn: &mut MultiplexedConnection,
        accepted: &mut Vec<AcceptedEntry>,
        rejected: &mut Vec<RejectedEntry>,
        totals: &mut WorkerTotals,
        read_at: Instant,
    ) -> redis::RedisResult<()> {
        if accepted.is_empty() && rejected.is_empty() {
            return Ok(());
        }
        let outcome = match self
            .commit
            .commit(conn, accepted, rejected, MemoryLimit::Respect)
            .await
        {
            Err(err) if is_out_of_memory(&err) => {
                // See BatchCommit: past the limit by one batch, then trim at
                // once. Only while nothing waits for upload, though: records
                // that wait are what an upload frees, so the worker waits for
                // it instead, and what goes past the limit stays one slice.
                // A batch in flight has left the queue but waits too: an
                // upload under way (or resumed by the next run) frees it.
                if upload_queue::waiting_for_upload(conn, self.kind).await? {
                    return Err(err);
                }
                tracing::warn!(kind = %self.kind, "Redis is at maxmemory; committing this batch past the limit and trimming the stream");
                let outcome = self
                    .commit
                    .commit(conn, accepted, rejected, MemoryLimit::Exceed)
                    .await?;
                self.trim_stream(conn).await?;
                outcome
            }
            other => other?,
        };
        for entry in rejected.iter() {
            tracing::warn!(kind = %self.kind, entry = %entry.entry_id, reason = entry.rejection.code(),
                detail = %entry.rejection, "event dead-lettered");
            EventRejected {
                kind: self.kind.name(),
                reason: entry.rejection.code(),
            }
            .emit();
        }
        BatchCommitted {
            kind: self.kind.name(),
            stored: outcome.stored,
            duplicates: outcome.duplicates,
            elapsed: read_at.elapsed(),
        }
        .emit();
        totals.committed += outcome;
        totals.batches += 1;
        tracing::debug!(kind = %self.kind, ?outcome, "batch committed");
        accepted.clear();
        rejected.clear();
        Ok(())
    }

    fn classify(&self, entry: StreamEntry, server_now: DateTime<Utc>) -> Classified {
        if entry.fields.is_none() {
            return Classified::Vanished(entry.id);
        }
        let keep = self.dead_letters.keep_bytes;
        let Some(data) = entry.field(DATA_FIELD) else {
            return Classified::Rejected(RejectedEntry {
                body: KeptBody::new(&entry.fields_as_json(), keep),
                entry_id: entry.id,
                rejection: Rejection::MissingData,
            });
        };
        // Stamping with the entry's own time keeps redelivered copies identical.
        let arrival = event::arrival_time(&entry.id, server_now, &self.door);
        match event::accept(self.kind, data, arrival, server_now, &self.door) {
            Ok(event) => Classified::Accepted(AcceptedEntry {
                entry_id: entry.id,
                event,
            }),
            Err(rejection) => Classified::Rejected(RejectedEntry {
                body: KeptBody::new(data, keep),
                entry_id: entry.id,
                rejection,
            }),
        }
    }
}

enum Classified {
    Accepted(AcceptedEntry),
    Rejected(RejectedEntry),
    Vanished(String),
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}
