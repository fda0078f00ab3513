//! The library's API as README shows it to a Rust service, used from the
//! outside with nothing but its public items: `Settings`, `Producer::send`
//! (streamed while Redis is up, spooled while it is down, replayed once),
//! the door's `accept`, and `RecordCache` reading back what the service
//! stored.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::time::{Duration, Instant};

use flit_cache::cache::RecordCache;
use flit_cache::configuration::Settings;
use flit_cache::event::{DoorRules, accept};
use flit_cache::keys::EventKind;
use flit_cache::producer::{Delivery, ProduceError};
use support::*;

/// What Python's `json.dumps(event, indent=2)` sends: indented, a string
/// amount, `datetime.isoformat()` without an offset.
const TRANSACTION: &str = r#"{
  "transaction_id": "tx-api-1",
  "customer_id": "c-7",
  "amount": "120.50",
  "transaction_timestamp": "2026-12-03T10:00:00"
}"#;

const PREDICTION: &str =
    r#"{"prediction_id": "pred-api-1", "transaction_id": "tx-api-1", "selected_prediction": 0.12}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_service_sends_spools_replays_and_reads_back_through_the_api() {
    let mut redis = RedisServer::start();
    let env = Env::new(&redis);
    let settings: Settings = env.settings();
    let producer = settings.producer().expect("producer");
    let mut tx = redis.conn(0);

    // Redis up: streamed.
    let sent = producer
        .send(EventKind::Transaction, TRANSACTION.as_bytes())
        .await
        .expect("send");
    assert_eq!(sent, Delivery::Streamed);
    assert_eq!(xlen(&mut tx, "stream:transactions"), 1);

    // What the door refuses is refused before it is sent, with its code.
    match producer
        .send(EventKind::Transaction, br#"{"amount": 1}"#)
        .await
    {
        Err(ProduceError::Rejected(why)) => assert_eq!(why.code(), "missing_id"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(xlen(&mut tx, "stream:transactions"), 1);
    // The same verdict from the rules themselves.
    let now = chrono::Utc::now();
    let refused = accept(
        EventKind::Transaction,
        br#"{"amount": 1}"#,
        now,
        now,
        &DoorRules::default(),
    )
    .expect_err("no id");
    assert_eq!(refused.code(), "missing_id");

    // Redis down: the call still returns (its timeout, then the breaker),
    // and the event is on disk.
    redis.kill();
    let started = Instant::now();
    let spooled = producer
        .send(EventKind::Prediction, PREDICTION.as_bytes())
        .await
        .expect("spooled, not lost");
    assert_eq!(spooled, Delivery::Spooled);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a send with Redis down is bounded by the producer timeout, took {:?}",
        started.elapsed()
    );
    assert!(!producer.spool().is_empty(), "the spool holds the event");

    // Redis back: the spool is replayed once, and only once.
    redis.restart();
    let replayed = producer.replay_spool().await.expect("replay");
    assert_eq!(replayed.events, 1, "{replayed:?}");
    let again = producer.replay_spool().await.expect("replay again");
    assert_eq!(again.events, 0, "{again:?}");
    let mut pred = redis.conn(1);
    assert_eq!(xlen(&mut pred, "stream:predictions"), 1);

    // The service stores both; RecordCache reads them back by id.
    ingest_until_queued(&redis, &env, 1, 1);
    let cache = RecordCache::connect(&settings.redis)
        .await
        .expect("connect");
    let transaction = cache
        .get_transaction("tx-api-1")
        .await
        .expect("lookup")
        .expect("cached");
    assert_eq!(transaction["amount"], "120.50", "{transaction}");
    let prediction = cache
        .get_prediction("pred-api-1")
        .await
        .expect("lookup")
        .expect("cached");
    assert_eq!(prediction["selected_prediction"], 0.12, "{prediction}");
    assert!(
        cache
            .get_prediction("pred-never-sent")
            .await
            .expect("lookup")
            .is_none()
    );
}
