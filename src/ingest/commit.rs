//! The atomic step that turns a batch of stream entries into records: one
//! Lua script (`commit_batch.lua`) stores, queues, dead-letters and
//! acknowledges the whole batch, so a crash leaves either all of it done or
//! none of it, and redelivery can never queue a record twice.

use redis::Script;
use redis::aio::MultiplexedConnection;

use crate::event::{AcceptedEvent, Rejection};
use crate::keys::{CONSUMER_GROUP, EventKind, UPLOAD_QUEUE};

/// An entry that passed validation.
#[derive(Debug)]
pub struct AcceptedEntry {
    pub entry_id: String,
    pub event: AcceptedEvent,
}

/// An entry refused with a reason; `data` is what the producer sent, or a JSON
/// object of the entry's fields when it had no `data` field.
#[derive(Debug)]
pub struct RejectedEntry {
    pub entry_id: String,
    pub rejection: Rejection,
    pub data: Vec<u8>,
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
}

impl std::ops::AddAssign for CommitOutcome {
    fn add_assign(&mut self, other: Self) {
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        self.superseded += other.superseded;
        self.dead_lettered += other.dead_lettered;
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
    script: Script,
    under_pressure: Script,
}

const COMMIT_BODY: &str = include_str!("commit_batch.lua");

impl Default for BatchCommit {
    fn default() -> Self {
        BatchCommit {
            script: Script::new(&format!("#!lua\n{COMMIT_BODY}")),
            under_pressure: Script::new(&format!("#!lua flags=allow-oom\n{COMMIT_BODY}")),
        }
    }
}

/// Whether Redis refused a command because it is at maxmemory.
pub fn is_out_of_memory(err: &redis::RedisError) -> bool {
    err.code() == Some("OOM")
}

impl BatchCommit {
    /// Commits a batch; `under_pressure` lets it run while Redis is at maxmemory.
    pub async fn commit(
        &self,
        conn: &mut MultiplexedConnection,
        kind: EventKind,
        ttl_seconds: u64,
        accepted: &[AcceptedEntry],
        rejected: &[RejectedEntry],
        under_pressure: bool,
    ) -> redis::RedisResult<CommitOutcome> {
        if accepted.is_empty() && rejected.is_empty() {
            return Ok(CommitOutcome::default());
        }
        let script = if under_pressure {
            &self.under_pressure
        } else {
            &self.script
        };
        let mut invocation = script.prepare_invoke();
        invocation
            .key(kind.stream())
            .key(kind.dead_letter_stream())
            .key(UPLOAD_QUEUE)
            .arg(CONSUMER_GROUP)
            .arg(ttl_seconds)
            .arg(kind.record_prefix())
            .arg(kind.superseded_prefix())
            .arg(kind.timestamp_field())
            .arg(accepted.len())
            .arg(rejected.len());
        for entry in accepted {
            invocation
                .arg(&entry.entry_id)
                .arg(&entry.event.id)
                .arg(&entry.event.payload)
                .arg(match entry.event.stamped_at_arrival {
                    true => entry.event.original.as_str(),
                    false => "",
                });
        }
        for entry in rejected {
            invocation
                .arg(&entry.entry_id)
                .arg(entry.rejection.code())
                .arg(entry.rejection.to_string())
                .arg(&entry.data);
        }
        let (stored, duplicates, superseded, dead_lettered): (u64, u64, u64, u64) =
            invocation.invoke_async(conn).await?;
        Ok(CommitOutcome {
            stored,
            duplicates,
            superseded,
            dead_lettered,
        })
    }
}
