//! flit-cache: events from Redis streams become cached records with an upload
//! queue, on their way to BigQuery. `docs/architecture.md` is the map.

pub mod cli;
pub mod configuration;
pub mod event;
pub mod files;
pub mod generate;
pub mod http;
pub mod ingest;
pub mod monitor;
pub mod notify;
pub mod producer;
pub mod schedule;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod upload;
pub mod warehouse;

/// The dead-letter streams: what `dead-letter list|show|redrive` reads.
pub use store::dead_letters as dead_letter;
/// Key names and event kinds.
pub use store::keys;
/// Record lookups by id (`RecordCache`), as README shows them.
pub use store::lookups as cache;
