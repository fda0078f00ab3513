//! The stream workers: they read events from `stream:*` as members of the
//! consumer group, check each at the door, and commit them through the
//! storage layer as records with an upload queue entry, or as dead letters.

mod worker;

use std::time::Duration;

pub use worker::{StreamWorker, WorkerTotals};

/// How the stream workers read and commit.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub batch_size: usize,
    pub block: Duration,
    /// Entries pending this long on a consumer are taken over by another.
    pub claim_idle: Duration,
    pub workers_per_kind: usize,
    pub consumer_name: String,
    pub trim_interval: Duration,
}
