//! flit-cache: events from Redis streams become cached records with an upload
//! queue, on their way to BigQuery. `docs/architecture.md` is the map.

pub mod cache;
pub mod cli;
pub mod configuration;
pub mod dead_letter;
pub mod event;
pub mod generate;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod layout;
pub mod monitor;
pub mod producer;
pub mod redis_target;
pub mod schedule;
pub mod service_metrics;
pub mod startup;
pub mod telemetry;
pub mod upload;
pub mod warehouse;
