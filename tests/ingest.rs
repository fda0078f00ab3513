//! Ingest against a real redis-server: counts of records, queue entries,
//! TTLs and dead letters after the real `flit-cache run` processed events.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

const WEEK: i64 = 604_800;
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn ten_thousand_events_of_each_kind_become_records_with_ttl_and_one_queue_entry_each() {
    const N: usize = 10_000;
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    // Pushed before the first start: the group is created at the stream's start.
    let out = env.flit(&["generate", "--count", &N.to_string(), "--seed", "11"]);
    assert!(out.status.success(), "{}", output_text(&out));

    let service = env.service("run");
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));
    wait_until(LIMIT, "all records queued", || {
        llen(&mut tx, "upload_queue") as usize == N && llen(&mut pred, "upload_queue") as usize == N
    });
    assert_exactly_once(&redis, 0, "tx:", "stream:transactions", N);
    assert_exactly_once(&redis, 1, "pred:", "stream:predictions", N);

    // Kinds stay in their own database.
    assert!(keys(&mut tx, "pred:*").is_empty());
    assert!(keys(&mut pred, "tx:*").is_empty());

    for (conn, prefix) in [(&mut tx, "tx:*"), (&mut pred, "pred:*")] {
        let names: Vec<String> = keys(conn, prefix).into_iter().collect();
        let mut pipe = redis::pipe();
        for key in &names {
            pipe.cmd("TTL").arg(key);
        }
        let ttls: Vec<i64> = pipe.query(conn).expect("ttls");
        assert!(
            ttls.iter().all(|t| (WEEK - 60..=WEEK).contains(t)),
            "every TTL within a minute of 7 days"
        );
    }

    // Every transaction got `_timestamp` from its own transaction time.
    let sample: String = redis::cmd("GET")
        .arg(queue(&mut tx)[0].as_str())
        .query(&mut tx)
        .expect("get");
    let record: serde_json::Value = serde_json::from_str(&sample).expect("json");
    assert_eq!(record["_timestamp"], record["transaction_timestamp"]);

    // Acknowledged entries are trimmed away.
    wait_until(LIMIT, "streams trimmed", || {
        xlen(&mut tx, "stream:transactions") < 200 && xlen(&mut pred, "stream:predictions") < 200
    });
    assert!(
        service
            .get("/healthz")
            .is_some_and(|(status, _)| status == 200)
    );
    assert!(
        service
            .get("/readyz")
            .is_some_and(|(status, _)| status == 200)
    );
}

/// The fields of one stream entry.
type Fields = Vec<(&'static str, Vec<u8>)>;

/// One bad event for each rejection rule (with its expected reason code), between good ones.
fn corpus(max_event_bytes: usize) -> Vec<(Fields, Option<&'static str>)> {
    let data = |text: &str| vec![("data", text.as_bytes().to_vec())];
    let long_id = "i".repeat(257);
    vec![
        (data(r#"{"transaction_id":"good_1","amount":10}"#), None),
        (vec![("payload", b"{}".to_vec())], Some("missing_data")),
        (data("{not json"), Some("invalid_json")),
        (vec![("data", vec![0xff, 0xfe, b'{'])], Some("invalid_json")),
        (data("[1,2,3]"), Some("not_an_object")),
        (data(r#"{"amount":1}"#), Some("missing_id")),
        (data(r#"{"transaction_id":17}"#), Some("id_not_string")),
        (data(r#"{"transaction_id":""}"#), Some("empty_id")),
        (
            data(&format!(r#"{{"transaction_id":"{long_id}"}}"#)),
            Some("id_too_long"),
        ),
        (
            data(r#"{"transaction_id":"tx\tab"}"#),
            Some("id_bad_character"),
        ),
        (
            data(r#"{"transaction_id":"tx_ts","_timestamp":"not a time"}"#),
            Some("invalid_timestamp"),
        ),
        (
            data(r#"{"transaction_id":"tx_ts2","transaction_timestamp":"2025-02-30T00:00:00Z"}"#),
            Some("invalid_timestamp"),
        ),
        (
            data(&format!(
                r#"{{"transaction_id":"big","pad":"{}"}}"#,
                "x".repeat(max_event_bytes)
            )),
            Some("too_large"),
        ),
        (
            data(r#"{"transaction_id":"good_2","_timestamp":"2025-09-27T14:30:00+02:00"}"#),
            None,
        ),
    ]
}

#[test]
fn every_kind_of_bad_event_is_dead_lettered_with_its_reason_and_payload() {
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_MAX_EVENT_BYTES", "4096");
    let mut conn = redis.conn(0);
    let mut expected: HashMap<String, (&str, Fields)> = HashMap::new();
    let cases = corpus(4096);
    for (fields, reason) in &cases {
        let borrowed: Vec<(&str, &[u8])> = fields.iter().map(|(f, v)| (*f, v.as_slice())).collect();
        let id = xadd(&mut conn, "stream:transactions", &borrowed);
        if let Some(reason) = reason {
            expected.insert(id, (reason, fields.clone()));
        }
    }
    let _service = env.service("run");
    wait_until(LIMIT, "dead letters", || {
        xlen(&mut conn, "stream:transactions:dead") as usize == expected.len()
    });
    wait_until(LIMIT, "good events", || {
        llen(&mut conn, "upload_queue") == 2
    });

    let dead: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg("stream:transactions:dead")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("xrange");
    assert_eq!(dead.len(), expected.len());
    for (_, fields) in dead {
        let text = |name: &str| {
            String::from_utf8_lossy(fields.get(name).map(Vec::as_slice).unwrap_or_default())
                .into_owned()
        };
        let source = text("source_id");
        let (reason, original) = expected
            .remove(&source)
            .unwrap_or_else(|| panic!("unexpected dead letter for {source}"));
        assert_eq!(text("reason_code"), reason, "reason for {source}");
        assert!(!text("reason").is_empty(), "a reason in words");
        match original.iter().find(|(f, _)| *f == "data") {
            // Over 4 KiB: a prefix, the size and the digest are kept.
            Some((_, payload)) if text("truncated") == "1" => {
                let kept = fields.get("data").map(Vec::as_slice).unwrap_or_default();
                assert!(
                    kept.len() <= 4096 && payload.starts_with(kept),
                    "a prefix is kept"
                );
                assert_eq!(text("size"), payload.len().to_string());
            }
            Some((_, payload)) => {
                assert!(fields.get("data") == Some(payload), "original payload kept")
            }
            None => assert_eq!(
                text("data"),
                r#"{"payload":"{}"}"#,
                "fields kept when data is missing"
            ),
        }
    }
    assert!(
        expected.is_empty(),
        "every bad event dead-lettered: {:?}",
        expected.keys()
    );
    assert_eq!(
        keys(&mut conn, "tx:*").len(),
        2,
        "only the good events are records"
    );
    assert_eq!(
        pending(&mut conn, "stream:transactions"),
        0,
        "all acknowledged"
    );
    let kept: String = redis::cmd("GET")
        .arg("tx:good_2")
        .query(&mut conn)
        .expect("get");
    assert_eq!(
        kept,
        r#"{"transaction_id":"good_2","_timestamp":"2025-09-27T14:30:00+02:00"}"#
    );
}

#[test]
fn the_same_event_delivered_twice_is_one_record_and_one_queue_entry() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let mut conn = redis.conn(1);
    let event = br#"{"prediction_id":"pred_twice","selected_prediction":0.2}"#;
    // Twice on the stream, as a producer retry would do...
    xadd(&mut conn, "stream:predictions", &[("data", event)]);
    xadd(&mut conn, "stream:predictions", &[("data", event)]);
    // ...and a third copy delivered to a consumer that then died without acking.
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("stream:predictions")
        .arg("flit-cache")
        .arg("0")
        .query::<()>(&mut conn)
        .expect("group");
    xadd(&mut conn, "stream:predictions", &[("data", event)]);
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("flit-cache")
        .arg("ghost")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg("stream:predictions")
        .arg(">")
        .query(&mut conn)
        .expect("ghost reads");
    assert_eq!(pending(&mut conn, "stream:predictions"), 3);

    let service = env.service("run");
    wait_until(LIMIT, "the ghost's entries taken over", || {
        pending(&mut conn, "stream:predictions") == 0
    });
    assert_exactly_once(&redis, 1, "pred:", "stream:predictions", 1);
    let stored: String = redis::cmd("GET")
        .arg("pred:pred_twice")
        .query(&mut conn)
        .expect("get");
    assert!(stored.contains("prediction_timestamp"), "stamped: {stored}");
    assert!(
        service.log_text().contains("took over entries"),
        "takeover logged"
    );

    // Same id, no timestamp, other content: a new version, not a duplicate.
    xadd(
        &mut conn,
        "stream:predictions",
        &[(
            "data",
            br#"{"prediction_id":"pred_twice","selected_prediction":0.9}"#,
        )],
    );
    wait_until(LIMIT, "second version queued", || {
        llen(&mut conn, "upload_queue") == 2
    });
    let newest: String = redis::cmd("GET")
        .arg("pred:pred_twice")
        .query(&mut conn)
        .expect("get");
    assert!(
        newest.ends_with(r#""selected_prediction":0.9}"#),
        "{newest}"
    );
}

#[test]
fn an_id_reused_with_another_payload_keeps_both_versions_and_lookups_see_the_newest() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let mut conn = redis.conn(0);
    let monday =
        br#"{"transaction_id":"tx_reused","amount":10,"_timestamp":"2025-09-22T10:00:00Z"}"#;
    let tuesday =
        br#"{"transaction_id":"tx_reused","amount":99,"_timestamp":"2025-09-23T10:00:00Z"}"#;
    let wednesday =
        br#"{"transaction_id":"tx_reused","amount":5,"_timestamp":"2025-09-24T10:00:00Z"}"#;
    for event in [&monday[..], tuesday, monday, tuesday, wednesday] {
        xadd(&mut conn, "stream:transactions", &[("data", event)]);
    }
    let _service = env.service("run");
    wait_until(LIMIT, "all entries acknowledged", || {
        pending(&mut conn, "stream:transactions") == 0 && llen(&mut conn, "upload_queue") >= 3
    });
    std::thread::sleep(Duration::from_millis(500));

    let newest: String = redis::cmd("GET")
        .arg("tx:tx_reused")
        .query(&mut conn)
        .expect("get");
    assert_eq!(
        newest.as_bytes(),
        wednesday,
        "lookup by id returns the newest"
    );
    let queued = queue(&mut conn);
    assert_eq!(
        queued.len(),
        3,
        "three distinct versions, each queued once: {queued:?}"
    );
    let mut payloads = Vec::new();
    for key in &queued {
        let payload: String = redis::cmd("GET")
            .arg(key)
            .query(&mut conn)
            .expect("queued key exists");
        let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut conn).expect("ttl");
        assert!(ttl > WEEK - 60, "{key} keeps its expiry");
        payloads.push(payload.into_bytes());
    }
    payloads.sort();
    let mut expected = vec![monday.to_vec(), tuesday.to_vec(), wednesday.to_vec()];
    expected.sort();
    assert_eq!(
        payloads, expected,
        "every version waits for upload exactly once"
    );
}

#[test]
fn sigterm_finishes_the_batch_in_hand_and_exits_zero() {
    const N: usize = 20_000;
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_BATCH_SIZE", "200");
    let out = env.flit(&[
        "generate",
        "--count",
        &N.to_string(),
        "--kind",
        "predictions",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let mut conn = redis.conn(1);

    let mut service = env.service("first");
    wait_until(LIMIT, "ingest under way", || {
        llen(&mut conn, "upload_queue") > 0
    });
    let status = service.terminate();
    assert!(
        status.success(),
        "clean stop exits 0: {status:?}\n{}",
        service.log_text()
    );
    assert_eq!(
        pending(&mut conn, "stream:predictions"),
        0,
        "no batch left half done"
    );
    let done = llen(&mut conn, "upload_queue") as usize;
    assert!(
        done < N,
        "stopped before the end ({done} of {N}), so the test shows something"
    );

    let _second = env.service("second");
    wait_until(LIMIT, "the rest", || {
        llen(&mut conn, "upload_queue") as usize == N
    });
    assert_exactly_once(&redis, 1, "pred:", "stream:predictions", N);
}

#[test]
fn readyz_reports_redis_down_while_healthz_stays_up() {
    let mut redis = RedisServer::start();
    let env = Env::new(&redis);
    let service = env.service("run");
    wait_until(LIMIT, "ready", || {
        service.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    redis.kill();
    wait_until(LIMIT, "not ready", || {
        service.get("/readyz").is_some_and(|(s, _)| s == 503)
    });
    assert_eq!(service.get("/healthz").map(|(s, _)| s), Some(200));
    redis.restart();
    wait_until(LIMIT, "ready again", || {
        service.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
}
