//! The atomic step that turns a batch of stream entries into records: one
//! Lua script (`commit_batch.lua`) stores, queues, dead-letters and
//! acknowledges the whole batch, so a crash leaves either all of it done or
//! none of it, and redelivery can never queue a record twice.

use redis::aio::MultiplexedConnection;

use super::dead_letters::DeadLetterSettings;
use super::dead_letters::KeptBody;
use super::scripts;
use crate::event::{AcceptedEvent, Rejection};
use crate::keys::{CONSUMER_GROUP, EventKind, UPLOAD_QUEUE};

/// An entry that passed validation.
#[derive(Debug)]
pub struct AcceptedEntry {
    pub entry_id: String,
    pub event: AcceptedEvent,
}

/// An entry refused with a reason; `body` is what the producer sent (or a
/// JSON object of the entry's fields when it had no `data` field), bounded.
#[derive(Debug)]
pub struct RejectedEntry {
    pub entry_id: String,
    pub rejection: Rejection,
    pub body: KeptBody,
}

/// What one commit did, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// New records stored and queued.
    pub stored: u64,
    /// Events already stored with the same payload: acknowledged, nothing queued.
    pub duplicates: u64,
    /// Ids reused with a new payload: the waiting version was kept and queued too.
    pub superseded: u64,
    pub dead_lettered: u64,
    /// Old dead letters the stream's cap removed.
    pub dead_letters_trimmed: u64,
}

impl std::ops::AddAssign for CommitOutcome {
    fn add_assign(&mut self, other: Self) {
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        self.superseded += other.superseded;
        self.dead_lettered += other.dead_lettered;
        self.dead_letters_trimmed += other.dead_letters_trimmed;
    }
}

/// The commit script, and the same script allowed to run when Redis is at
/// maxmemory. Normally Redis refuses the whole script up front when memory is
/// full, rather than failing half way. But when the streams alone fill Redis,
/// refusing every commit would be a deadlock: nothing is acknowledged, so
/// nothing is trimmed and nothing reaches the upload queue that would free
/// memory. Committing one batch past the limit and trimming right after turns
/// stream entries into records at about the same memory cost.
pub struct BatchCommit {
    kind: EventKind,
    ttl_seconds: u64,
    dead_letters: DeadLetterSettings,
}

/// Whether a commit may run while Redis is at maxmemory (see `BatchCommit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    Respect,
    /// Once, after Redis refused the commit for memory.
    Exceed,
}

impl BatchCommit {
    /// Commits of `kind`: records kept `ttl_seconds`, dead letters bounded
    /// as `dead_letters` says.
    pub fn new(kind: EventKind, ttl_seconds: u64, dead_letters: DeadLetterSettings) -> Self {
        BatchCommit {
            kind,
            ttl_seconds,
            dead_letters,
        }
    }
}

/// Whether Redis refused a command because it is at maxmemory.
pub fn is_out_of_memory(err: &redis::RedisError) -> bool {
    err.code() == Some("OOM")
}

impl BatchCommit {
    /// Commits a batch of stream entries.
    pub async fn commit(
        &self,
        conn: &mut MultiplexedConnection,
        accepted: &[AcceptedEntry],
        rejected: &[RejectedEntry],
        memory: MemoryLimit,
    ) -> redis::RedisResult<CommitOutcome> {
        if accepted.is_empty() && rejected.is_empty() {
            return Ok(CommitOutcome::default());
        }
        let kind = self.kind;
        let script = match memory {
            MemoryLimit::Respect => &scripts::COMMIT,
            MemoryLimit::Exceed => &scripts::COMMIT_PAST_THE_LIMIT,
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(kind.stream())
            .key(kind.dead_letter_stream())
            .key(UPLOAD_QUEUE)
            .key(kind.dead_letters_trimmed_key())
            .key(crate::keys::claims_key(kind))
            .key(crate::keys::uploaded_index_key(kind))
            .key(crate::keys::LAYOUT)
            .arg(CONSUMER_GROUP)
            .arg(self.ttl_seconds)
            .arg(kind.record_prefix())
            .arg(kind.superseded_prefix())
            .arg(self.dead_letters.max_len)
            .arg(accepted.len())
            .arg(rejected.len())
            .arg(kind.timestamp_field())
            .arg(kind.uploaded_mark_prefix())
            .arg(crate::keys::stored_per_hour_prefix(kind))
            .arg(self.dead_letters.keep_bytes)
            .arg(super::layout::LAYOUT_VERSION);
        for entry in accepted {
            let event = &entry.event;
            let stamp = event.stamped_at_arrival;
            invocation
                .arg(&entry.entry_id)
                .arg(&event.id)
                .arg(&event.payload)
                .arg(stamp.map_or("", |_| event.original.as_str()))
                .arg(stamp.map_or(0, |s| s.at))
                .arg(stamp.map_or(0, |s| s.replaced));
        }
        for entry in rejected {
            invocation
                .arg(&entry.entry_id)
                .arg(entry.rejection.code())
                .arg(entry.rejection.to_string())
                .arg(&entry.body.data)
                .arg(entry.body.size)
                .arg(&entry.body.sha1)
                .arg(if entry.body.truncated { "1" } else { "0" });
        }
        let (stored, duplicates, superseded, dead_lettered, dead_letters_trimmed): (
            u64,
            u64,
            u64,
            u64,
            u64,
        ) = invocation.invoke_async(conn).await?;
        Ok(CommitOutcome {
            stored,
            duplicates,
            superseded,
            dead_lettered,
            dead_letters_trimmed,
        })
    }
}
