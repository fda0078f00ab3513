//! Logging set-up: human-readable lines by default, JSON lines with
//! `FLIT_LOG_FORMAT=json`, filtered by `RUST_LOG` (default `info`). Logs go to
//! stderr so command output on stdout stays machine-readable.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::configuration::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests calling in-process) is harmless: keep the first.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
