//! Uploads into the real BigQuery emulator (bqemulator): rows counted by SQL,
//! day partitions read from INFORMATION_SCHEMA.PARTITIONS, with the uploader
//! killed and the emulator stopped along the way.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::*;

const TX: &str = "flit_bnpl_raw.raw_bnpl_txs_json";
const PRED: &str = "flit_ml_raw.raw_bnpl_prediction_logs";
const TX_ID: &str = "JSON_VALUE(json_body, '$.transaction_id')";

fn bigquery_env(redis: &RedisServer, emulator: &Emulator) -> Env {
    Env::new(redis)
        .set("BIGQUERY_PROJECT", PROJECT)
        .set("BIGQUERY_API_URL", &emulator.url())
        .set("FLIT_UPLOAD_RETRY_MIN_MS", "100")
}

fn upload(env: &Env) -> (Option<i32>, Value, String) {
    let out = env.flit(&["batch-upload", "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report, output_text(&out))
}

/// Expected rows per day partition (YYYYMMDD), from the records waiting in Redis.
fn expected_partitions(redis: &RedisServer, db: i64, field: &str) -> BTreeMap<String, u64> {
    let mut conn = redis.conn(db);
    let mut days = BTreeMap::new();
    for chunk in queue(&mut conn).chunks(1000) {
        let payloads: Vec<String> = redis::cmd("MGET")
            .arg(chunk)
            .query(&mut conn)
            .expect("mget");
        for payload in payloads {
            let record: Value = serde_json::from_str(&payload).expect("json");
            let at = chrono::DateTime::parse_from_rfc3339(record[field].as_str().expect("time"))
                .expect("rfc3339");
            *days
                .entry(at.with_timezone(&chrono::Utc).format("%Y%m%d").to_string())
                .or_default() += 1;
        }
    }
    days
}

fn partitions(emulator: &Emulator, dataset: &str, table: &str) -> BTreeMap<String, u64> {
    emulator
        .query(&format!(
            "SELECT partition_id, total_rows FROM {dataset}.INFORMATION_SCHEMA.PARTITIONS WHERE table_name = '{table}'"
        ))
        .into_iter()
        .filter(|row| row[1] != "0")
        .map(|row| (row[0].clone(), row[1].parse().unwrap_or(0)))
        .collect()
}

fn assert_drained(redis: &RedisServer) {
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));
    assert_eq!(
        llen(&mut tx, "upload_queue") + llen(&mut pred, "upload_queue"),
        0,
        "queues empty"
    );
    assert!(
        unuploaded_records(&mut tx, "tx").is_empty()
            && unuploaded_records(&mut pred, "pred").is_empty(),
        "every record uploaded (kept and marked)"
    );
    assert!(
        keys(&mut tx, "tx@*").is_empty() && keys(&mut pred, "pred@*").is_empty(),
        "no older version left"
    );
    assert!(
        keys(&mut tx, "flit:upload:inflight:*").is_empty(),
        "no batch in flight"
    );
}

#[test]
fn twenty_thousand_of_each_kind_load_once_into_their_day_partitions() {
    const N: u64 = 20_000;
    let redis = RedisServer::start();
    let emulator = Emulator::start();
    let env = bigquery_env(&redis, &emulator).set("FLIT_UPLOAD_BATCH_ROWS", "5000");
    ingest_generated(&redis, &env, N as usize);
    let out = env.flit(&["init"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let expected_tx = expected_partitions(&redis, 0, "_timestamp");
    let expected_pred = expected_partitions(&redis, 1, "prediction_timestamp");
    assert!(expected_pred.len() >= 7, "several days: {expected_pred:?}");

    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["status"], "ok", "{text}");
    assert_eq!(emulator.count(TX, TX_ID), (N, N));
    assert_eq!(emulator.count(PRED, "prediction_id"), (N, N));
    assert_eq!(
        partitions(&emulator, "flit_bnpl_raw", "raw_bnpl_txs_json"),
        expected_tx,
        "each row in its event day"
    );
    assert_eq!(
        partitions(&emulator, "flit_ml_raw", "raw_bnpl_prediction_logs"),
        expected_pred
    );
    assert_drained(&redis);

    // The monitor reads the same tables back: all rows arrived today.
    let out = env.flit(&["monitor", "--json", "--bigquery"]);
    let health: Value = serde_json::from_slice(&out.stdout).expect("monitor JSON");
    assert_eq!(out.status.code(), Some(0), "{health:#}");
    for table in health["warehouse"].as_array().expect("tables") {
        assert_eq!(table["rows_last_24h"], N, "{table:#}");
        let age = table["newest_event_age_hours"]
            .as_f64()
            .expect("newest event");
        assert!((0.0..26.0).contains(&age), "{table:#}");
    }

    // Typed columns and raw JSON came through.
    let sample = emulator.query(&format!(
        "SELECT business_decision, JSON_VALUE(raw, '$.prediction_id') = prediction_id FROM {PRED} LIMIT 1"
    ));
    assert!(
        ["approve", "review", "decline"].contains(&sample[0][0].as_str()),
        "{sample:?}"
    );
    assert_eq!(sample[0][1], "true");

    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["tables"][0]["rows_uploaded"], 0, "{text}");
    assert_eq!(
        emulator.count(PRED, "prediction_id"),
        (N, N),
        "a second run adds nothing"
    );
}

#[test]
fn killed_uploads_and_a_stopped_emulator_lose_and_double_nothing() {
    const N: u64 = 20_000;
    let redis = RedisServer::start();
    let mut emulator = Emulator::start();
    // Killed runs' locks expire within a second; runs that are not killed
    // get a long lock, so a late renewal on a busy machine cannot fence them.
    let env = bigquery_env(&redis, &emulator)
        .set("FLIT_UPLOAD_BATCH_ROWS", "1000")
        .set("FLIT_UPLOAD_LOCK_TTL_MS", "1000");
    ingest_generated(&redis, &env, N as usize);
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));

    // Each run is killed once it has taken 1, 3 and 6 batches from the
    // queues (LLEN: cheap enough to poll often), whenever that is on this
    // machine: a fixed delay can fall before the first batch on a loaded
    // one, or after the last on an idle one. The kill then lands somewhere
    // in a batch: writing it, settling it, or between two.
    let mut cut_mid_run = 0;
    for batches in [1u64, 3, 6] {
        let queued = |tx: &mut redis::Connection, pred: &mut redis::Connection| {
            llen(tx, "upload_queue") + llen(pred, "upload_queue")
        };
        let before = queued(&mut tx, &mut pred);
        let mut child = env.spawn(&["batch-upload"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while queued(&mut tx, &mut pred) + 1000 * batches > before
            && std::time::Instant::now() < deadline
            && matches!(child.try_wait(), Ok(None))
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let running = matches!(child.try_wait(), Ok(None));
        let _ = child.kill();
        let _ = child.wait();
        if running && waiting(&mut tx, &mut pred) > 0 {
            cut_mid_run += 1;
        }
        std::thread::sleep(Duration::from_millis(1100)); // the dead run's lock expires
    }
    assert!(
        cut_mid_run >= 2,
        "kills landed in the middle of runs ({cut_mid_run})"
    );

    // The emulator goes away during a run: the run keeps what it could not send.
    let env = env.set("FLIT_UPLOAD_LOCK_TTL_MS", "30000");
    let child = env.spawn(&["batch-upload", "--json"]);
    std::thread::sleep(Duration::from_millis(700));
    emulator.stop();
    let out = child.wait_with_output().expect("wait");
    let left = waiting(&mut tx, &mut pred);
    if left > 0 {
        assert_eq!(
            out.status.code(),
            Some(1),
            "records kept means exit 1: {}",
            output_text(&out)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("report");
        assert_eq!(report["status"], "partial", "{}", output_text(&out));
    }
    emulator.restart();

    let (code, _, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        emulator.count(TX, TX_ID),
        (N, N),
        "transactions exactly once"
    );
    assert_eq!(
        emulator.count(PRED, "prediction_id"),
        (N, N),
        "predictions exactly once"
    );
    assert_drained(&redis);
}

/// Records of both kinds not yet uploaded: queued, or in a batch in flight
/// (whose entries left the queue when it was taken).
fn waiting(tx: &mut redis::Connection, pred: &mut redis::Connection) -> u64 {
    (unuploaded_records(tx, "tx").len() + unuploaded_records(pred, "pred").len()) as u64
}

#[test]
fn streaming_inserts_write_each_row_once() {
    const N: u64 = 2_000;
    let redis = RedisServer::start();
    let emulator = Emulator::start();
    let env = bigquery_env(&redis, &emulator).set("FLIT_BQ_WRITE_MODE", "stream");
    ingest_generated(&redis, &env, N as usize);
    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        report["warehouse"]
            .as_str()
            .is_some_and(|w| w.contains("Stream")),
        "{text}"
    );
    assert_eq!(emulator.count(TX, TX_ID), (N, N));
    assert_eq!(emulator.count(PRED, "prediction_id"), (N, N));
    let sample = emulator.query(&format!(
        "SELECT JSON_VALUE(model_predictions, '$.ridge') IS NOT NULL FROM {PRED} LIMIT 1"
    ));
    assert_eq!(sample[0][0], "true", "JSON columns arrive as JSON");
    assert_drained(&redis);
}

#[test]
fn what_producers_send_loads_as_one_row_per_accepted_event_and_nothing_else() {
    let redis = RedisServer::start();
    let emulator = Emulator::start();
    let env = bigquery_env(&redis, &emulator).set("FLIT_MAX_EVENT_BYTES", "2048");
    let cases = corpus::cases();
    let expected = corpus::send(&redis, &cases);
    ingest_until_queued(
        &redis,
        &env,
        expected.records("transactions") as u64,
        expected.records("predictions") as u64,
    );
    for kind in ["transactions", "predictions"] {
        corpus::check_dead_letters(&redis, &expected, kind);
    }
    let out = env.flit(&["init"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["status"], "ok", "{text}");
    assert_drained(&redis);

    let records = &expected.records["predictions"];
    let rows = emulator.query(&format!(
        "SELECT prediction_id, TO_JSON_STRING(raw), CAST(selected_prediction AS STRING), UNIX_MICROS(prediction_timestamp) FROM {PRED}"
    ));
    assert_eq!(rows.len(), records.len(), "one row per accepted prediction");
    for row in &rows {
        let case = records
            .get(&row[0])
            .unwrap_or_else(|| panic!("a row nobody sent: {row:?}"));
        let raw: Value = serde_json::from_str(&row[1]).expect("raw is JSON");
        if let (Some(record), false) = (&case.record, case.stamped) {
            let sent: Value = serde_json::from_str(record).expect("record");
            assert_eq!(raw, sent, "{}: raw is the event", case.name);
        }
    }
    let cell = |id: &str, i: usize| {
        rows.iter()
            .find(|r| r[0] == id)
            .map(|r| r[i].clone())
            .unwrap_or_default()
    };
    assert_eq!(
        cell("p_str", 2),
        "0.234",
        "a numeric string loads as a number"
    );
    assert_eq!(
        cell("p_naive", 3),
        "1795185000123456",
        "a naive time is UTC: 2026-11-20T14:30:00.123456Z"
    );
    assert_eq!(
        cell("p_off", 3),
        "1795224600000000",
        "23:30-02:00 is 01:30Z"
    );

    let tx = &expected.records["transactions"];
    assert_eq!(
        emulator.count(TX, TX_ID),
        (tx.len() as u64, tx.len() as u64)
    );
    let amounts = emulator.query(&format!(
        "SELECT {TX_ID}, SAFE_CAST(JSON_VALUE(json_body, '$.amount') AS FLOAT64) FROM {TX}"
    ));
    assert!(
        amounts.iter().any(|r| r[0] == "t_amt" && r[1] == "299.99"),
        "the staging cast reads an amount sent as a string: {amounts:?}"
    );
}
