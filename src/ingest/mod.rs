//! The Redis side of the pipeline: stream workers that read events from
//! `stream:*` with a consumer group and commit them as records with an upload
//! queue entry, or as dead letters.

mod commit;
mod entries;
mod worker;

pub use commit::{
    AcceptedEntry, BatchCommit, CommitOutcome, MemoryLimit, RejectedEntry, is_out_of_memory,
};
pub use entries::StreamEntry;
pub use worker::{StreamWorker, WorkerTotals};
