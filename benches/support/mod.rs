//! What both benchmarks need: a private redis-server on a free port, with AOF
//! on and `appendfsync everysec` as in production (`BENCH_APPENDFSYNC=always`
//! to measure the other policy), stopped when dropped; and what they read
//! off it while they run.
// Each bench uses a part of this and of the test harness's files below.
#![allow(dead_code)]

use std::process::Child;
use std::time::{Duration, Instant};

// Redis starts the one way tests start it: the test harness's own files.
#[path = "../../tests/support/process.rs"]
pub mod process;
#[path = "../../tests/support/redis.rs"]
mod redis_server;

use redis_server::RedisServer;

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private redis-server with AOF on and the fsync policy of
/// `BENCH_APPENDFSYNC` (`everysec`, as in production, unless set).
pub fn start_redis() -> RedisServer {
    RedisServer::builder().appendfsync(&appendfsync()).start()
}

/// What a producer and a lookup see while the pipeline works: one single
/// XADD (onto a capped stream of its own) and one GET of `lookup_key`, one
/// at a time, about every millisecond, until `stop` is set. Blocking: run
/// it on a thread of its own. Returns the XADD and the GET latencies.
pub fn probe_latency(
    url: &str,
    lookup_key: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let payload = r#"{"prediction_id":"probe","selected_prediction":0.5}"#;
    let (mut xadds, mut gets) = (Vec::new(), Vec::new());
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let started = Instant::now();
        let _: String = redis::cmd("XADD")
            .arg("bench:probe")
            .arg("MAXLEN")
            .arg("~")
            .arg(1000)
            .arg("*")
            .arg("data")
            .arg(payload)
            .query(&mut conn)?;
        xadds.push(started.elapsed());
        let started = Instant::now();
        let _: Option<Vec<u8>> = redis::cmd("GET").arg(lookup_key).query(&mut conn)?;
        gets.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok((xadds, gets))
}

/// p50, p99, p99.9 and the maximum, in microseconds.
pub fn latency_summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let at = |p: f64| {
        let index = ((latencies.len().max(1) as f64 - 1.0) * p).round() as usize;
        latencies
            .get(index)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
    };
    format!(
        "{} calls: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
        latencies.len(),
        at(0.50),
        at(0.99),
        at(0.999),
        at(1.0)
    )
}

/// Microseconds Redis spent running scripts (EVAL and EVALSHA), from
/// INFO commandstats; `CONFIG RESETSTAT` (in `slowlog_reset`) zeroes it.
pub fn script_micros(url: &str) -> anyhow::Result<u64> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut conn)?;
    Ok(info
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("usec=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum())
}

/// Sets Redis's slowlog to keep every command of 5 ms or more, emptied.
pub fn slowlog_reset(url: &str) -> anyhow::Result<()> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(5000)
        .exec(&mut conn)?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-max-len")
        .arg(1000)
        .exec(&mut conn)?;
    redis::cmd("SLOWLOG").arg("RESET").exec(&mut conn)?;
    redis::cmd("CONFIG").arg("RESETSTAT").exec(&mut conn)?;
    Ok(())
}

/// What the slowlog kept since `slowlog_reset`: how many commands, the
/// slowest in microseconds, and the first word of each command kept.
pub fn slowlog_report(url: &str) -> anyhow::Result<String> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1000)
        .query(&mut conn)?;
    let mut slowest = 0i64;
    let mut names = std::collections::BTreeMap::<String, usize>::new();
    for entry in &entries {
        if let redis::Value::Array(fields) = entry {
            if let Some(redis::Value::Int(micros)) = fields.get(2) {
                slowest = slowest.max(*micros);
            }
            if let Some(redis::Value::Array(args)) = fields.get(3) {
                let text = |at: usize| match args.get(at) {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => "?".to_owned(),
                };
                let mut name = text(0).to_lowercase();
                // A script is named by its key count and its first two keys
                // (their first three parts), which tell flit-cache's apart.
                if name == "evalsha" || name == "eval" {
                    let shape = |key: String| key.split(':').take(3).collect::<Vec<_>>().join(":");
                    name = format!("{name} {} {} {}", text(2), shape(text(3)), shape(text(4)));
                }
                *names.entry(name).or_default() += 1;
            }
        }
    }
    Ok(format!(
        "{} commands of 5 ms or more (slowest {slowest} us) {names:?}",
        entries.len()
    ))
}

/// The AOF fsync policy of the benchmark's Redis (`BENCH_APPENDFSYNC`).
pub fn appendfsync() -> String {
    std::env::var("BENCH_APPENDFSYNC").unwrap_or_else(|_| "everysec".into())
}
