//! flit-cache: events from Redis streams become cached records with an upload
//! queue, on their way to BigQuery. `docs/architecture.md` is the map.
//!
//! The library's API is what README promises a Rust service:
//!
//! - [`producer::Producer`] puts transactions and predictions onto the
//!   streams, with a short timeout, a circuit breaker and a durable spool;
//! - [`cache::RecordCache`] reads a record back by id, counting hits and
//!   misses;
//! - [`event`] holds the door's rules, the checks every event passes before
//!   it becomes a record;
//! - [`configuration::Settings`] reads the environment that all of them,
//!   and the service, are configured by;
//! - [`keys`] names the event kinds and the Redis keys.
//!
//! ```no_run
//! use flit_cache::configuration::Settings;
//! use flit_cache::keys::EventKind;
//!
//! # async fn example() -> anyhow::Result<()> {
//! let settings = Settings::from_env()?;
//! let producer = settings.producer()?;
//! producer
//!     .send(EventKind::Transaction, br#"{"transaction_id": "tx-1", "amount": 120.5}"#)
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Everything else is the service's own. What the binary, the tests and the
//! benches reach beyond the API goes through [`internal`], which is not API.

mod cli;
pub mod configuration;
pub mod event;
mod files;
mod generate;
mod http;
mod ingest;
mod monitor;
mod notify;
pub mod producer;
mod schedule;
mod shutdown;
mod startup;
mod store;
mod telemetry;
mod upload;
mod warehouse;

/// Key names and event kinds.
pub use store::keys;
/// Record lookups by id (`RecordCache`), as README shows them.
pub use store::lookups as cache;

/// Not API: what the `flit-cache` binary, the integration tests and the
/// benches use beyond the library's API. It changes with the service, with
/// no notice; nothing outside this repository should name it.
#[doc(hidden)]
pub mod internal {
    pub use crate::cli::{Cli, execute};
    pub use crate::generate::{Generator, MODELS};
    pub use crate::ingest::StreamWorker;
    pub use crate::shutdown::sleep_or_stop;
    pub use crate::startup::{Supervised, Supervisor, TaskFailure};
    pub use crate::store::Role;
    pub use crate::telemetry::{error_text, init as init_logging};
    pub use crate::upload::{
        BatchRecord, ParkedSummary, RunReport, RunStatus, TableReport, Take, Ttl, UploadLock,
        UploadQueue,
    };
    pub use crate::warehouse::{LocalWarehouse, RowBatch, TableSpec, Unlimited, Warehouse};
}
