//! Upload benchmark: prints numbers, asserts nothing.
//!
//! Fills a private redis-server with `BENCH_RECORDS` records of each kind
//! (default 100,000) and their queue entries, then runs the release
//! `flit-cache batch-upload` against the local warehouse folder, and against
//! the BigQuery emulator when one is installed (`BQEMULATOR_BIN` or
//! `.venv/bin/bqemulator`). Prints rows/s and the uploader's peak resident
//! memory (VmHWM, sampled from /proc while it runs).
//!
//! While the local upload runs, a producer's single XADD and a lookup GET
//! are timed, and Redis's slowlog (5 ms and more) is read afterwards.
//!
//! Run: `cargo bench --bench upload` (`BENCH_ONLY=local` stops after the
//! local warehouse).
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use flit_cache::event;
use flit_cache::internal::Generator;
use flit_cache::keys::{EventKind, UPLOAD_QUEUE};

mod support;
use support::process::{free_port, wait_until};
use support::{
    Killed, latency_summary, probe_latency, script_micros, slowlog_report, slowlog_reset,
    start_redis,
};

fn fill(url: &str, per_kind: usize) -> anyhow::Result<()> {
    let mut generator = Generator::new(3, Utc::now(), 7);
    let pairs: Vec<_> = (0..per_kind).map(|_| generator.next_pair()).collect();
    for (db, kind) in [(0, EventKind::Transaction), (1, EventKind::Prediction)] {
        let mut conn = redis::Client::open(format!("{url}/{db}"))?.get_connection()?;
        for chunk in pairs.chunks(2_000) {
            let mut pipe = redis::pipe();
            for pair in chunk {
                let raw = if kind == EventKind::Transaction {
                    &pair.transaction
                } else {
                    &pair.prediction
                };
                let now = Utc::now();
                let accepted =
                    event::accept(kind, raw.as_bytes(), now, now, &event::DoorRules::default())?;
                let key = kind.record_key(&accepted.id);
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(&accepted.payload)
                    .arg("EX")
                    .arg(604_800)
                    .ignore();
                pipe.cmd("RPUSH").arg(UPLOAD_QUEUE).arg(&key).ignore();
            }
            pipe.exec(&mut conn)?;
        }
    }
    Ok(())
}

/// Runs batch-upload, sampling its peak memory; returns (seconds, peak KiB, stdout).
fn timed_upload(envs: &[(&str, String)], dir: &Path) -> anyhow::Result<(f64, u64, String)> {
    let started = Instant::now();
    // BENCH_FLIT_BIN: another build's binary, to compare side by side.
    let binary =
        std::env::var("BENCH_FLIT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_flit-cache").into());
    let mut child = Command::new(binary)
        .arg("batch-upload")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    while child.try_wait()?.is_none() {
        if let Ok(status) = std::fs::read_to_string(&status_file)
            && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
        {
            peak_kib = peak_kib.max(
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let seconds = started.elapsed().as_secs_f64();
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "batch-upload failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    Ok((
        seconds,
        peak_kib,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

fn main() -> anyhow::Result<()> {
    let per_kind: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let redis = start_redis();
    let dir = redis.dir();
    let url = redis.url();
    let rows = 2 * per_kind;
    println!(
        "flit-cache upload benchmark: {per_kind} records of each kind ({rows} rows), default batch size"
    );

    fill(&url, per_kind)?;
    let local = [
        ("REDIS_URL", url.clone()),
        (
            "FLIT_WAREHOUSE_DIR",
            dir.join("warehouse").display().to_string(),
        ),
    ];
    // A producer and a lookup (of a record being uploaded) while it runs.
    let lookup_key: String = redis::cmd("LINDEX")
        .arg(UPLOAD_QUEUE)
        .arg(per_kind / 2)
        .query(&mut redis::Client::open(url.as_str())?.get_connection()?)?;
    slowlog_reset(&url)?;
    let stop_probe = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let (url, stop) = (url.clone(), stop_probe.clone());
        std::thread::spawn(move || probe_latency(&url, &lookup_key, &stop))
    };
    let uploaded = timed_upload(&local, dir);
    stop_probe.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut xadds, mut gets) = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the latency probe panicked"))??;
    let (seconds, peak, _) = uploaded?;
    println!(
        "local warehouse: {:.0} rows/s ({rows} rows in {seconds:.2} s), uploader peak memory {:.1} MiB",
        rows as f64 / seconds,
        peak as f64 / 1024.0
    );
    println!(
        "producer XADD during the upload: {}",
        latency_summary(&mut xadds)
    );
    println!(
        "record GET during the upload: {}",
        latency_summary(&mut gets)
    );
    println!("slowlog during the upload: {}", slowlog_report(&url)?);
    println!(
        "Redis time in scripts during the upload: {:.2} us per row",
        script_micros(&url)? as f64 / rows as f64
    );
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "local") {
        return Ok(());
    }

    let emulator = std::env::var("BQEMULATOR_BIN")
        .unwrap_or_else(|_| format!("{}/.venv/bin/bqemulator", env!("CARGO_MANIFEST_DIR")));
    if !Path::new(&emulator).exists() {
        println!(
            "BigQuery emulator: skipped, {emulator} not installed (scripts/test.sh installs it)"
        );
        return Ok(());
    }
    let (rest, grpc) = (free_port(), free_port());
    let _emulator = Killed(
        Command::new(&emulator)
            .args([
                "start",
                "--rest-port",
                &rest.to_string(),
                "--grpc-port",
                &grpc.to_string(),
            ])
            .args(["--project", "flit-data-platform", "--log-level", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_until(Duration::from_secs(60), "the emulator", || {
        std::net::TcpStream::connect(("127.0.0.1", rest)).is_ok()
    });
    // Uploaded records stay (marked uploaded): start again from an empty Redis.
    redis::cmd("FLUSHALL").exec(&mut redis::Client::open(url.as_str())?.get_connection()?)?;
    fill(&url, per_kind)?;
    let bigquery = [
        ("REDIS_URL", url.clone()),
        ("BIGQUERY_PROJECT", "flit-data-platform".to_owned()),
        ("BIGQUERY_API_URL", format!("http://127.0.0.1:{rest}")),
    ];
    let (seconds, peak, _) = timed_upload(&bigquery, dir)?;
    println!(
        "BigQuery emulator (load jobs): {:.0} rows/s ({rows} rows in {seconds:.2} s), uploader peak memory {:.1} MiB",
        rows as f64 / seconds,
        peak as f64 / 1024.0
    );
    Ok(())
}
