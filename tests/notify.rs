//! Upload notifications against a local HTTP receiver and the real binary:
//! a partial run is announced, so is the first success after it, a plain
//! success is not; a receiver that hangs or is gone never fails or stalls
//! the run, and the webhook URL (it holds a secret) never reaches the output.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;
use support::*;

/// Part of the URL path, as in Slack's hooks: it must never be printed.
const SECRET: &str = "T000SECRET/B000SECRET/hush-hush-4242";

#[derive(Default)]
struct Receiver {
    bodies: Vec<Value>,
    /// Answer only after this long (a hung receiver).
    delay: Duration,
}

type Shared = Arc<Mutex<Receiver>>;

async fn receive(State(receiver): State<Shared>, body: axum::body::Bytes) -> &'static str {
    let delay = {
        let mut receiver = receiver.lock().expect("receiver");
        receiver
            .bodies
            .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
        receiver.delay
    };
    tokio::time::sleep(delay).await;
    "ok"
}

/// Starts the receiver on a free port in a thread of its own.
fn start_receiver(delay: Duration) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Receiver {
        delay,
        ..Receiver::default()
    }));
    let app = Router::new()
        .route("/services/{*rest}", post(receive))
        .with_state(shared.clone());
    let port = serve_http(app);
    (format!("http://127.0.0.1:{port}/services/{SECRET}"), shared)
}

fn bodies(receiver: &Shared) -> Vec<Value> {
    receiver.lock().expect("receiver").bodies.clone()
}

/// An environment that notifies `url`, with quick retries.
fn notifying(redis: &RedisServer, url: &str) -> Env {
    Env::new(redis)
        .set("FLIT_NOTIFY_WEBHOOK_URL", url)
        .set("FLIT_UPLOAD_RETRY_MIN_MS", "20")
        .set("FLIT_UPLOAD_ATTEMPTS", "2")
}

/// Runs `batch-upload` with `extra` arguments, returning its exit code and
/// everything it printed, which must not hold the secret.
fn upload_with(env: &Env, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["batch-upload", "--json"];
    args.extend_from_slice(extra);
    let out = env.flit(&args);
    let text = output_text(&out);
    assert!(!text.contains("SECRET"), "the webhook URL leaked: {text}");
    (out.status.code(), text)
}

fn upload(env: &Env) -> (Option<i32>, String) {
    upload_with(env, &[])
}

/// An environment whose warehouse folder sits under a plain file, so that
/// every write fails and the run is partial.
fn failing(env: &Env, redis: &RedisServer) -> Env {
    let blocked = env.dir.path().join("not-a-folder");
    std::fs::write(&blocked, b"").expect("file");
    let mut failing = Env::new(redis).set(
        "FLIT_WAREHOUSE_DIR",
        &format!("{}/warehouse", path_str(&blocked)),
    );
    for (name, value) in &env.vars {
        if name.starts_with("FLIT_NOTIFY") || name.starts_with("FLIT_UPLOAD_") {
            failing = failing.set(name, value);
        }
    }
    failing
}

#[test]
fn a_partial_run_and_the_first_success_after_it_are_announced_once_each() {
    const N: usize = 40;
    let redis = RedisServer::start();
    let (url, receiver) = start_receiver(Duration::ZERO);
    let env = notifying(&redis, &url);
    ingest_generated(&redis, &env, N);

    let (code, text) = upload(&failing(&env, &redis));
    assert_eq!(code, Some(1), "{text}");
    let sent = bodies(&receiver);
    assert_eq!(
        sent.len(),
        1,
        "one notification for the partial run: {sent:?}"
    );
    let failed = &sent[0];
    assert_eq!(failed["flit_cache"]["occasion"], "failed", "{failed}");
    assert_eq!(failed["flit_cache"]["status"], "partial", "{failed}");
    assert_eq!(failed["flit_cache"]["rows_uploaded"], 0, "{failed}");
    assert_eq!(
        failed["flit_cache"]["kept_for_retry"],
        2 * N as u64,
        "{failed}"
    );
    let line = failed["text"].as_str().unwrap_or_default();
    assert!(line.contains("partial"), "{line}");
    assert!(line.contains("not-a-folder"), "the cause is named: {line}");

    let (code, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    let sent = bodies(&receiver);
    assert_eq!(sent.len(), 2, "one more for the recovery: {sent:?}");
    let recovered = &sent[1];
    assert_eq!(recovered["flit_cache"]["occasion"], "recovered");
    assert_eq!(recovered["flit_cache"]["status"], "ok");
    assert_eq!(recovered["flit_cache"]["rows_uploaded"], 2 * N as u64);
    assert!(
        recovered["text"]
            .as_str()
            .is_some_and(|t| t.contains("recovered")),
        "{recovered}"
    );

    // A success after a success is news to no one.
    ingest_generated(&redis, &env, N);
    let (code, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        bodies(&receiver).len(),
        2,
        "no notification for a plain success"
    );
    assert_eq!(warehouse_rows(&env, TX_TABLE).len(), 2 * N);
    assert_eq!(warehouse_rows(&env, PRED_TABLE).len(), 2 * N);
}

#[test]
fn a_hung_or_missing_receiver_neither_fails_nor_stalls_the_run() {
    const N: usize = 20;
    let redis = RedisServer::start();
    let (url, receiver) = start_receiver(Duration::from_secs(60));
    let env = notifying(&redis, &url).set("FLIT_NOTIFY_TIMEOUT_MS", "500");
    ingest_generated(&redis, &env, N);

    let started = Instant::now();
    let (code, text) = upload(&failing(&env, &redis));
    let took = started.elapsed();
    assert_eq!(
        code,
        Some(1),
        "the run's own outcome, not the receiver's: {text}"
    );
    assert_eq!(bodies(&receiver).len(), 1, "the receiver was reached");
    assert!(
        took < Duration::from_secs(20),
        "a hung receiver costs its timeout, not a minute: {took:?}"
    );
    assert!(
        text.contains("could not send the upload notification"),
        "the failure is logged: {text}"
    );

    // Nobody listening at all: the recovery run still succeeds.
    let gone = format!("http://127.0.0.1:{}/services/{SECRET}", free_port());
    let env = env.set("FLIT_NOTIFY_WEBHOOK_URL", &gone);
    let (code, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("could not send the upload notification"),
        "{text}"
    );
    assert_eq!(warehouse_rows(&env, TX_TABLE).len(), N);
}

#[test]
fn a_webhook_url_that_is_not_http_is_refused_without_being_echoed() {
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_NOTIFY_WEBHOOK_URL", &format!("ftp://{SECRET}"));
    let (code, text) = upload(&env);
    assert_eq!(code, Some(2), "a configuration error: {text}");
    assert!(text.contains("FLIT_NOTIFY_WEBHOOK_URL"), "{text}");
}

#[test]
fn a_run_of_one_kind_does_not_announce_the_recovery_of_the_other() {
    const N: usize = 10;
    let redis = RedisServer::start();
    let (url, receiver) = start_receiver(Duration::ZERO);
    let env = notifying(&redis, &url);
    ingest_generated(&redis, &env, N);
    let only = |env: &Env, kind: &str| upload_with(env, &["--only", kind]).0;
    assert_eq!(only(&failing(&env, &redis), "predictions"), Some(1));
    assert_eq!(bodies(&receiver).len(), 1, "the failure");
    assert_eq!(only(&env, "transactions"), Some(0));
    assert_eq!(
        bodies(&receiver).len(),
        1,
        "transactions never failed: nothing to announce while predictions still wait"
    );
    assert_eq!(only(&env, "predictions"), Some(0));
    let sent = bodies(&receiver);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1]["flit_cache"]["occasion"], "recovered");
}

/// The text of a `not_started` notification, checked to say so.
fn not_started_line(body: &Value) -> String {
    assert_eq!(body["flit_cache"]["occasion"], "not_started", "{body}");
    let line = body["text"].as_str().unwrap_or_default().to_owned();
    assert!(line.contains("could not start"), "{line}");
    line
}

#[test]
fn a_run_that_cannot_start_is_announced_and_so_is_the_recovery_after_it() {
    const N: usize = 10;
    let redis = RedisServer::start();
    let (url, receiver) = start_receiver(Duration::ZERO);
    let env = notifying(&redis, &url);
    ingest_generated(&redis, &env, N);

    // A sink that cannot be used: the run does not start, and says so.
    let refused = notifying(&redis, &url).set("FLIT_SINK", "bigqeury");
    let (code, text) = upload(&refused);
    assert_eq!(code, Some(2), "{text}");
    let sent = bodies(&receiver);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let line = not_started_line(&sent[0]);
    assert!(line.contains("bigqeury"), "the cause is named: {line}");

    // Redis gone: not started either, and still announced.
    let down = Env::for_url(format!("redis://127.0.0.1:{}", free_port()))
        .set("FLIT_NOTIFY_WEBHOOK_URL", &url);
    let (code, text) = upload(&down);
    assert_eq!(code, Some(2), "{text}");
    let sent = bodies(&receiver);
    assert_eq!(sent.len(), 2, "{sent:?}");
    not_started_line(&sent[1]);

    // The next good run is the tables' recovery.
    let (code, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    let sent = bodies(&receiver);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(
        sent[2]["flit_cache"]["occasion"], "recovered",
        "{}",
        sent[2]
    );
    assert_eq!(warehouse_rows(&env, TX_TABLE).len(), N);

    // A dry run that cannot start changes nothing and tells no one.
    let nowhere = notifying(&redis, &url).set("FLIT_SINK", "nowhere");
    let (code, _) = upload_with(&nowhere, &["--dry-run"]);
    assert_eq!(code, Some(2));
    assert_eq!(bodies(&receiver).len(), 3);
}
