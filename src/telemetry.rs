//! Logging set-up: human-readable lines by default, JSON lines with
//! `FLIT_LOG_FORMAT=json`, filtered by `RUST_LOG` (default `info`). Logs go to
//! stderr so command output on stdout stays machine-readable. Also how an
//! error reads in a log line or a report (`error_text`). The metrics are in
//! `metrics`, a leaf that components emit events into.

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written (FLIT_LOG_FORMAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

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

/// An error and its causes on one line, `outer: inner`, as `{:#}` prints
/// them, but without a cause that only repeats the text before it (a Redis
/// error's source is its own server reply, so `{:#}` says it twice).
pub fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_that_repeats_its_error_is_said_once() {
        // An error reply as Redis sends it, read the way replies are read.
        let reply = redis::parse_redis_value(b"-FENCED this run no longer holds the lock\r\n")
            .expect("a RESP error reply");
        let redis = reply.extract_error().expect_err("an error reply");
        let err = anyhow::Error::new(redis).context("settling batch b1");
        assert_eq!(format!("{err:#}").matches("no longer holds").count(), 2);
        let text = error_text(&err);
        assert_eq!(text.matches("no longer holds").count(), 1, "{text}");
        assert!(text.starts_with("settling batch b1: "), "{text}");
        let plain = anyhow::anyhow!("disk full").context("writing part 2");
        assert_eq!(error_text(&plain), "writing part 2: disk full");
    }
}
