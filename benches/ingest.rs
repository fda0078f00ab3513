//! Ingest benchmark: prints numbers, asserts nothing.
//!
//! Starts a private redis-server (AOF on, `appendfsync everysec`, as in
//! production), then measures:
//! 1. the producer's single-event XADD latency (p50, p99, max), one call at a time;
//! 2. the workers draining a backlog already on the streams (events/s);
//! 3. end to end: events pushed pipelined while the workers run, from the
//!    first XADD until the last record is stored and queued (events/s);
//! 4. record lookups by id;
//! 5. what the door's checks cost on one core, per event, for the compact
//!    events `generate` sends and for the same events indented.
//!
//! Step 2 also measures a producer's single XADD while the drain runs, and
//! what Redis's slowlog kept (commands of 5 ms or more).
//!
//! Run: `cargo bench --bench ingest` (optionally `BENCH_EVENTS=200000`;
//! `BENCH_ONLY=drain` runs step 2 alone).
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use chrono::Utc;
use flit_cache::cache::RecordCache;
use flit_cache::configuration::Settings;
use flit_cache::event;
use flit_cache::internal::Generator;
use flit_cache::internal::StreamWorker;
use flit_cache::keys::{EventKind, UPLOAD_QUEUE};
use flit_cache::producer::{PIPELINE_CHUNK, Producer};
use tokio_util::sync::CancellationToken;

mod support;
use support::{
    latency_summary, probe_latency, script_micros, slowlog_report, slowlog_reset, start_redis,
};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

fn print_latencies(what: &str, latencies: &mut [Duration], note: &str) {
    latencies.sort();
    println!(
        "{what} ({} single calls{note}): p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        latencies.len(),
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        percentile(latencies, 1.0)
    );
}

async fn queued(client: &redis::Client) -> anyhow::Result<u64> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("LLEN")
        .arg(UPLOAD_QUEUE)
        .query_async(&mut conn)
        .await?)
}

async fn flush(client: &redis::Client) -> anyhow::Result<()> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("FLUSHALL").exec_async(&mut conn).await?;
    Ok(())
}

fn prepared_events(
    producer: &Producer,
    count: usize,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut generator = Generator::new(7, Utc::now(), 7);
    let mut transactions = Vec::with_capacity(count);
    let mut predictions = Vec::with_capacity(count);
    for _ in 0..count {
        let pair = generator.next_pair();
        transactions.push(
            producer
                .prepare(EventKind::Transaction, pair.transaction.as_bytes())?
                .payload,
        );
        predictions.push(
            producer
                .prepare(EventKind::Prediction, pair.prediction.as_bytes())?
                .payload,
        );
    }
    Ok((transactions, predictions))
}

async fn push_all(
    producer: &Producer,
    transactions: &[String],
    predictions: &[String],
) -> anyhow::Result<()> {
    for (tx, pred) in transactions
        .chunks(PIPELINE_CHUNK)
        .zip(predictions.chunks(PIPELINE_CHUNK))
    {
        producer.send_prepared(EventKind::Transaction, tx).await?;
        producer.send_prepared(EventKind::Prediction, pred).await?;
    }
    Ok(())
}

/// Runs one worker per kind until both queues hold `per_kind` entries; returns the time taken.
async fn drain(settings: &Settings, per_kind: u64, started: Instant) -> anyhow::Result<Duration> {
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for kind in EventKind::ALL {
        let worker = StreamWorker::new(
            kind,
            settings.redis.clone(),
            format!("bench-{kind}"),
            settings.ingest.clone(),
            settings.door,
            settings.dead_letters,
        );
        handles.push(tokio::spawn(worker.run(shutdown.clone())));
    }
    let tx = settings.redis.url.client(0)?;
    let pred = settings.redis.url.client(1)?;
    while queued(&tx).await? < per_kind || queued(&pred).await? < per_kind {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    for handle in handles {
        handle.await?;
    }
    Ok(elapsed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let per_kind: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let batch = std::env::var("FLIT_BATCH_SIZE").unwrap_or_else(|_| "500".into());
    let redis = start_redis();
    let spool = tempfile::tempdir()?;
    let url = redis.url();
    let vars = [
        ("REDIS_URL", url.clone()),
        ("FLIT_SPOOL_DIR", spool.path().display().to_string()),
        ("FLIT_BATCH_SIZE", batch.clone()),
        ("FLIT_PRODUCER_TIMEOUT_MS", "2000".into()),
    ];
    let settings = Settings::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })?;
    let producer = settings.producer()?;
    let all = redis::Client::open(url.as_str())?;
    println!(
        "flit-cache ingest benchmark: {per_kind} events of each kind, batch {batch}, redis AOF {}",
        support::appendfsync()
    );

    let only_drain = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "drain");
    // 1. Producer latency, one event per call.
    let (transactions, predictions) = prepared_events(&producer, per_kind)?;
    let mut latencies = Vec::with_capacity(20_000);
    let probes = if only_drain { 0 } else { 20_000 };
    for payload in predictions.iter().take(probes) {
        let started = Instant::now();
        producer
            .send_prepared(EventKind::Prediction, std::slice::from_ref(payload))
            .await?;
        latencies.push(started.elapsed());
    }
    if !only_drain {
        print_latencies("producer XADD latency", &mut latencies, "");
    }
    flush(&all).await?;

    // 2. Backlog drain: events already on the streams.
    let started = Instant::now();
    push_all(&producer, &transactions, &predictions).await?;
    let pushed = started.elapsed();
    let events = 2.0 * per_kind as f64;
    println!(
        "pipelined XADD: {:.0} events/s ({events} events in {:.2} s)",
        events / pushed.as_secs_f64(),
        pushed.as_secs_f64()
    );
    slowlog_reset(&url)?;
    let stop_probe = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let (url, stop) = (url.clone(), stop_probe.clone());
        std::thread::spawn(move || probe_latency(&url, "tx:none", &stop))
    };
    let drained = drain(&settings, per_kind as u64, Instant::now()).await?;
    stop_probe.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut probed, _) = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the latency probe panicked"))??;
    println!(
        "backlog drain by the workers: {:.0} events/s ({:.2} s)",
        events / drained.as_secs_f64(),
        drained.as_secs_f64()
    );
    println!(
        "producer XADD during the drain: {}",
        latency_summary(&mut probed)
    );
    println!("slowlog during the drain: {}", slowlog_report(&url)?);
    println!(
        "Redis time in scripts during the drain: {:.2} us per event",
        script_micros(&url)? as f64 / events
    );
    if only_drain {
        return Ok(());
    }
    flush(&all).await?;

    // 3. End to end: pushing and ingesting at the same time.
    let started = Instant::now();
    let (pushed, drained) = tokio::join!(
        push_all(&producer, &transactions, &predictions),
        drain(&settings, per_kind as u64, started)
    );
    pushed?;
    let elapsed = drained?;
    println!(
        "end to end, XADD to stored record: {:.0} events/s ({events} events in {:.2} s)",
        events / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );

    // 4. Record lookups by id, as the prediction path would make them: one
    // call at a time, every tenth id unknown.
    let cache = RecordCache::connect(&settings.redis).await?;
    let ids: Vec<String> = transactions
        .iter()
        .take(20_000)
        .enumerate()
        .map(|(i, payload)| {
            let id = serde_json::from_str::<serde_json::Value>(payload)
                .ok()
                .and_then(|event| event["transaction_id"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if i % 10 == 9 {
                format!("{id}-unknown")
            } else {
                id
            }
        })
        .collect();
    let mut latencies = Vec::with_capacity(ids.len());
    let mut hits = 0;
    for id in &ids {
        let started = Instant::now();
        hits += usize::from(cache.get_transaction(id).await?.is_some());
        latencies.push(started.elapsed());
    }
    print_latencies(
        "get_transaction latency",
        &mut latencies,
        &format!(", {hits} hits"),
    );

    // 5. The door on one core: every check, the whitespace removal, the stamp.
    let mut generator = Generator::new(11, Utc::now(), 7);
    let pairs: Vec<_> = (0..per_kind.min(50_000))
        .map(|_| generator.next_pair())
        .collect();
    let indented: Vec<_> = pairs
        .iter()
        .map(|pair| {
            let value: serde_json::Value =
                serde_json::from_str(&pair.prediction).unwrap_or_default();
            serde_json::to_string_pretty(&value).unwrap_or_default()
        })
        .collect();
    let rules = settings.door;
    let now = Utc::now();
    for (what, kind, texts) in [
        (
            "transactions",
            EventKind::Transaction,
            pairs
                .iter()
                .map(|p| p.transaction.as_str())
                .collect::<Vec<_>>(),
        ),
        (
            "predictions",
            EventKind::Prediction,
            pairs.iter().map(|p| p.prediction.as_str()).collect(),
        ),
        (
            "predictions, indented",
            EventKind::Prediction,
            indented.iter().map(String::as_str).collect(),
        ),
    ] {
        let started = Instant::now();
        let mut accepted = 0;
        for text in &texts {
            accepted += usize::from(event::accept(kind, text.as_bytes(), now, now, &rules).is_ok());
        }
        let elapsed = started.elapsed();
        println!(
            "door checks, {what}: {:.2} us per event, {:.0} events/s on one core ({accepted} of {} accepted)",
            elapsed.as_secs_f64() * 1e6 / texts.len() as f64,
            texts.len() as f64 / elapsed.as_secs_f64(),
            texts.len()
        );
    }
    Ok(())
}
