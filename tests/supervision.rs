//! `run` supervises its tasks: one that ends before a stop was asked for
//! (an error, a panic, or just returning) is named in the log and stops the
//! service with exit 1, the others finishing cleanly first; a requested
//! stop is exit 0.
//!
//! None of the real tasks ends on a fault today: each one retries what can
//! go wrong outside the process (Redis, the warehouse, the spool, accept
//! errors on the HTTP socket), and what cannot be retried is checked before
//! any task starts (exit 2, `tests/cli.rs`). So the failing tasks here are
//! the library's `Supervisor`, the one `run` uses, given tasks that fail on
//! purpose, beside a task that behaves like a stream worker; and the real
//! binary is checked for the clean stop.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flit_cache::internal::sleep_or_stop;
use flit_cache::internal::{Supervised, Supervisor, TaskFailure};
use tokio_util::sync::CancellationToken;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// What a worker-like task did: rounds before the stop, and whether it
/// finished (acknowledged) the round in hand after the stop.
#[derive(Default)]
struct Worker {
    rounds: AtomicU64,
    acknowledged: AtomicBool,
}

/// A task shaped like a stream worker: rounds until `stop`, then it
/// finishes the batch in hand before it returns.
fn worker(tasks: &mut Supervisor<u64>, stop: &CancellationToken, name: &str) -> Arc<Worker> {
    let seen = Arc::new(Worker::default());
    let (stop, state) = (stop.clone(), seen.clone());
    tasks.spawn(name, async move {
        while sleep_or_stop(Duration::from_millis(5), &stop).await {
            state.rounds.fetch_add(1, Ordering::SeqCst);
        }
        // The batch in hand: committed and acknowledged after the stop.
        tokio::time::sleep(Duration::from_millis(50)).await;
        state.acknowledged.store(true, Ordering::SeqCst);
        Ok(state.rounds.load(Ordering::SeqCst))
    });
    seen
}

async fn wait(tasks: Supervisor<u64>) -> Supervised<u64> {
    tokio::time::timeout(LIMIT, tasks.wait())
        .await
        .expect("every task ended")
}

#[tokio::test]
async fn a_task_that_errs_is_named_and_stops_the_others_cleanly_with_exit_1() {
    let shutdown = CancellationToken::new();
    let stop = shutdown.child_token();
    let mut tasks = Supervisor::new(stop.clone());
    let transactions = worker(&mut tasks, &stop, "stream worker w-transactions");
    let predictions = worker(&mut tasks, &stop, "stream worker w-predictions");
    tasks.spawn("upload schedule", async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err(anyhow::anyhow!("connection refused").context("the job scheduler stopped"))
    });

    let ended = wait(tasks).await;
    assert_eq!(ended.exit_code(), 1);
    assert_eq!(
        ended.failures,
        vec![TaskFailure {
            task: "upload schedule".into(),
            error: "the job scheduler stopped: connection refused".into(),
        }]
    );
    assert_eq!(
        ended.failures[0].to_string(),
        "the upload schedule ended unexpectedly: the job scheduler stopped: connection refused",
        "the line `run` prints on stderr"
    );
    assert!(stop.is_cancelled(), "the others were told to stop");
    assert!(!shutdown.is_cancelled(), "the caller's token is left alone");
    for worker in [&transactions, &predictions] {
        assert!(
            worker.rounds.load(Ordering::SeqCst) > 0,
            "it ran until then"
        );
        assert!(
            worker.acknowledged.load(Ordering::SeqCst),
            "it finished the batch in hand"
        );
    }
    assert_eq!(ended.values.len(), 2, "both workers returned their totals");
}

#[tokio::test]
async fn a_task_that_panics_is_named_with_the_panic_and_the_exit_is_1() {
    let stop = CancellationToken::new();
    let mut tasks = Supervisor::new(stop.clone());
    let worker = worker(&mut tasks, &stop, "stream worker w-transactions");
    tasks.spawn("HTTP server", async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        panic!("listener gone at round {}", 3);
    });
    tasks.spawn("metrics upkeep", {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            Ok(0)
        }
    });

    let ended = wait(tasks).await;
    assert_eq!(ended.exit_code(), 1);
    assert_eq!(ended.failures.len(), 1, "{:?}", ended.failures);
    assert_eq!(ended.failures[0].task, "HTTP server");
    assert_eq!(
        ended.failures[0].error,
        "panicked: listener gone at round 3"
    );
    assert!(stop.is_cancelled());
    assert!(worker.acknowledged.load(Ordering::SeqCst));
    assert_eq!(ended.values.len(), 2, "the others ended cleanly");
}

#[tokio::test]
async fn a_task_that_just_returns_before_a_stop_is_a_failure_too() {
    let stop = CancellationToken::new();
    let mut tasks = Supervisor::new(stop.clone());
    let worker = worker(&mut tasks, &stop, "stream worker w-predictions");
    tasks.spawn("spool replayer", async { Ok(0) });

    let ended = wait(tasks).await;
    assert_eq!(ended.exit_code(), 1);
    assert_eq!(ended.failures.len(), 1, "{:?}", ended.failures);
    assert_eq!(ended.failures[0].task, "spool replayer");
    assert!(
        ended.failures[0].error.contains("before any stop"),
        "{}",
        ended.failures[0].error
    );
    assert!(worker.acknowledged.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_requested_stop_is_exit_0_once_every_task_has_finished() {
    let shutdown = CancellationToken::new();
    let stop = shutdown.child_token();
    let mut tasks = Supervisor::new(stop.clone());
    let workers: Vec<_> = (0..3)
        .map(|n| worker(&mut tasks, &stop, &format!("stream worker w-{n}")))
        .collect();
    let later = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        later.cancel(); // SIGTERM
    });

    let ended = wait(tasks).await;
    assert_eq!(ended.exit_code(), 0, "{:?}", ended.failures);
    assert!(ended.failures.is_empty());
    assert_eq!(ended.values.len(), 3);
    for worker in &workers {
        assert!(worker.acknowledged.load(Ordering::SeqCst));
    }
}

#[tokio::test]
async fn a_task_that_fails_while_stopping_still_makes_the_exit_1() {
    let stop = CancellationToken::new();
    let mut tasks = Supervisor::new(stop.clone());
    let worker = worker(&mut tasks, &stop, "stream worker w-transactions");
    tasks.spawn("upload schedule", {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            Err(anyhow::anyhow!("the scheduler did not shut down"))
        }
    });
    stop.cancel();

    let ended = wait(tasks).await;
    assert_eq!(ended.exit_code(), 1);
    assert_eq!(ended.failures.len(), 1);
    assert_eq!(ended.failures[0].task, "upload schedule");
    assert!(worker.acknowledged.load(Ordering::SeqCst));
}

/// The real binary: SIGTERM stops every task in order, none is reported as
/// failed, and the exit is 0 (the batch in hand: `tests/ingest.rs`).
#[test]
fn sigterm_stops_every_task_of_run_cleanly_with_exit_0() {
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_WAREHOUSE_CHECK_SECONDS", "1");
    let mut service = env.service("run");
    wait_until(LIMIT, "ready", || {
        service.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    env.generate(&["--count", "20"]);
    let mut conn = redis.conn(1);
    wait_until(LIMIT, "ingested", || llen(&mut conn, "upload_queue") == 20);

    let status = service.terminate();
    let log = service.log_text();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("stopping: finishing in-flight batches"),
        "{log}"
    );
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains("ended unexpectedly"), "{log}");
    assert_eq!(
        pending(&mut conn, "stream:predictions"),
        0,
        "all acknowledged"
    );
}
