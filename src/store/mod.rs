//! The storage layer: the one module that speaks Redis. Every connection is
//! opened here for a role with that role's timeouts (`connection`), every
//! key name is formatted here (`keys`), every Lua script is loaded here
//! (`scripts`), and each key family has its store, whose functions are the
//! only way the rest of flit-cache reads or writes it:
//!
//! | store | key family |
//! |---|---|
//! | `event_stream` | the event streams and their consumer group |
//! | `commit` | records, claims-free commit of a read batch, its dead letters |
//! | `lookups` | record lookups and the hit/miss counter |
//! | `upload_queue` | upload queues, manifests, entries lists, claims, marks |
//! | `upload_lock`, `upload_budget` | the per-kind upload lock, the load-job budget |
//! | `reports` | upload run reports (`run_report`, their format) and the last success |
//! | `manifest` | the format of a batch in flight or parked (`BatchManifest`) |
//! | `dead_letters` | the dead-letter streams |
//! | `status` | what `monitor` and `/metrics` read (both through these functions) |
//! | `layout` | the layout version |
//!
//! Outside this module, clippy's `disallowed-methods` (clippy.toml) refuses
//! `redis::cmd`, `redis::pipe`, `Script::new` and `Client::open`.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod commit;
pub mod connection;
pub mod dead_letters;
pub mod event_stream;
pub mod keys;
pub mod layout;
pub mod lookups;
pub mod manifest;
pub mod reports;
pub mod run_report;
mod scripts;
pub mod status;
pub mod stream_entries;
pub mod upload_budget;
pub mod upload_lock;
pub mod upload_queue;

pub use connection::{LazyConnection, RedisSettings, Role};
