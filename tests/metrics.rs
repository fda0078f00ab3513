//! `/metrics` scraped from the real service after a known workload: the
//! counters and gauges must say exactly what was done.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::time::Duration;

use chrono::{Duration as Span, Timelike, Utc};
use flit_cache::cache::RecordCache;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload() {
    let mut redis = RedisServer::start();
    // The service's own upload runs at a second chosen here, once the
    // workload is in and looked up; its counters are the service's.
    let upload_at = Utc::now() + Span::seconds(15);
    let env = Env::new(&redis).set(
        "FLIT_UPLOAD_CRON",
        &format!(
            "{} {} {} * * *",
            upload_at.second(),
            upload_at.minute(),
            upload_at.hour()
        ),
    );

    let transactions: String = (0..20)
        .map(|i| {
            format!("{{\"transaction_id\":\"tx_{i}\",\"customer_id\":\"c\",\"amount\":{i}}}\n")
        })
        .collect();
    env.push("transactions", &transactions);
    let predictions: String = (0..10)
        .map(|i| format!("{{\"prediction_id\":\"p_{i}\",\"transaction_id\":\"tx_{i}\"}}\n"))
        .collect();
    env.push("predictions", &predictions);
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));
    for bad in [&b"{not json"[..], b"[1,2", br#"{"customer_id":"c"}"#] {
        xadd(&mut tx, "stream:transactions", &[("data", bad)]);
    }
    xadd(&mut pred, "stream:predictions", &[("data", b"42")]);

    let service = env.service("metrics");
    wait_until(Duration::from_secs(60), "ingested", || {
        llen(&mut tx, "upload_queue") == 20
            && llen(&mut pred, "upload_queue") == 10
            && xlen(&mut tx, "stream:transactions:dead") == 3
            && xlen(&mut pred, "stream:predictions:dead") == 1
    });
    let settings = env.settings();
    let cache = RecordCache::connect(&settings.redis)
        .await
        .expect("connect");
    assert!(
        cache
            .get_transaction("tx_3")
            .await
            .expect("lookup")
            .is_some()
    );
    assert!(
        cache
            .get_transaction("tx_4")
            .await
            .expect("lookup")
            .is_some()
    );
    assert!(
        cache
            .get_transaction("tx_99")
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(cache.get_prediction("p_0").await.expect("lookup").is_some());
    assert!(
        Utc::now() < upload_at,
        "the workload took too long to set up"
    );

    let page = scrape(&service);
    let tx_kind = [("kind", "transactions")];
    let pred_kind = [("kind", "predictions")];
    assert_eq!(value(&page, "flit_events_ingested_total", &tx_kind), 20.0);
    assert_eq!(value(&page, "flit_events_ingested_total", &pred_kind), 10.0);
    assert_eq!(value(&page, "flit_events_duplicate_total", &tx_kind), 0.0);
    let rejected = |kind: &str, reason: &str| {
        value(
            &page,
            "flit_events_rejected_total",
            &[("kind", kind), ("reason", reason)],
        )
    };
    assert_eq!(rejected("transactions", "invalid_json"), 2.0);
    assert_eq!(rejected("transactions", "missing_id"), 1.0);
    assert_eq!(rejected("predictions", "not_an_object"), 1.0);
    assert_eq!(value(&page, "flit_upload_queue_length", &tx_kind), 20.0);
    assert_eq!(value(&page, "flit_upload_queue_length", &pred_kind), 10.0);
    assert_eq!(value(&page, "flit_dead_letter_length", &tx_kind), 3.0);
    assert_eq!(value(&page, "flit_stream_lag", &tx_kind), 0.0);
    assert_eq!(value(&page, "flit_stream_pending", &pred_kind), 0.0);
    let lookups = |kind: &str, result: &str| {
        value(
            &page,
            "flit_cache_lookups_total",
            &[("kind", kind), ("result", result)],
        )
    };
    assert_eq!(lookups("transactions", "hit"), 2.0);
    assert_eq!(lookups("transactions", "miss"), 1.0);
    assert_eq!(lookups("predictions", "hit"), 1.0);
    assert!((value(&page, "flit_cache_hit_ratio", &tx_kind) - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(value(&page, "flit_cache_lookups_last_hour", &tx_kind), 3.0);
    assert_eq!(value(&page, "flit_redis_up", &[]), 1.0);
    assert_eq!(value(&page, "flit_spool_bytes", &[]), 0.0);
    assert!(value(&page, "flit_worker_batch_duration_seconds_count", &tx_kind) >= 1.0);
    assert_eq!(
        value(&page, "flit_upload_runs_total", &[("status", "ok")]),
        0.0
    );

    let mut state = redis.conn(0);
    wait_until(Duration::from_secs(90), "the scheduled upload", || {
        llen(&mut tx, "upload_queue") == 0
            && llen(&mut pred, "upload_queue") == 0
            && redis::cmd("EXISTS")
                .arg("flit:upload:last_success")
                .query::<bool>(&mut state)
                .unwrap_or(false)
    });
    let page = scrape(&service);
    let rows = |table: &str, outcome: &str| {
        value(
            &page,
            "flit_upload_rows_total",
            &[("table", table), ("outcome", outcome)],
        )
    };
    assert_eq!(rows(TX_TABLE, "uploaded"), 20.0);
    assert_eq!(rows(PRED_TABLE, "uploaded"), 10.0);
    assert_eq!(rows(TX_TABLE, "kept_for_retry"), 0.0);
    assert_eq!(
        value(&page, "flit_upload_runs_total", &[("status", "ok")]),
        1.0
    );
    assert_eq!(value(&page, "flit_upload_duration_seconds_count", &[]), 1.0);
    assert_eq!(value(&page, "flit_upload_queue_length", &tx_kind), 0.0);
    let last = value(&page, "flit_upload_last_success_timestamp_seconds", &[]);
    assert!(
        (last - Utc::now().timestamp() as f64).abs() < 120.0,
        "{last}"
    );

    redis.stop();
    let page = scrape(&service);
    assert_eq!(value(&page, "flit_redis_up", &[]), 0.0);
}
