//! Test harness, by concern: a private `redis-server` per test (`redis`,
//! shared with benches), the real `flit-cache` binary run against it as a
//! service or a one-shot command (`binary`), the BigQuery emulator
//! (`emulator`), HTTP both ways on reqwest (`http`), and what tests read
//! off Redis (`redis_keys`), `/metrics` (`prometheus`) and the local
//! warehouse (`warehouse`).
//!
//! Each test binary compiles all of it and uses a part, so what one binary
//! leaves unused (a helper, a re-export) is not dead: hence the allow. Every
//! helper here is used by some test or bench.
#![allow(dead_code, unused_imports)]

pub mod acl;
pub mod corpus;
pub mod tls;

// Private, and re-exported below: `use support::*` in a test must not
// bring a module named `redis` over the redis crate.
mod binary;
mod emulator;
mod http;
mod process;
mod prometheus;
mod redis;
mod redis_keys;
mod warehouse;

pub use self::binary::*;
pub use self::emulator::*;
pub use self::http::*;
pub use self::process::*;
pub use self::prometheus::*;
pub use self::redis::*;
pub use self::redis_keys::*;
pub use self::warehouse::*;
