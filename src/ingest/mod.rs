//! The stream workers: they read events from `stream:*` as members of the
//! consumer group, check each at the door, and commit them through the
//! storage layer as records with an upload queue entry, or as dead letters.

mod worker;

pub use worker::{StreamWorker, WorkerTotals};

pub use crate::store::commit::{
    AcceptedEntry, BatchCommit, CommitOutcome, MemoryLimit, RejectedEntry, is_out_of_memory,
};
pub use crate::store::stream_entries::StreamEntry;
