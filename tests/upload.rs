//! Upload runs into the local warehouse, against a real redis-server and the
//! real binary: every record lands exactly once, in the partition of its own
//! event day, whatever is killed or fails on the way.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn upload(env: &Env, extra: &[&str]) -> (Option<i32>, Value, String) {
    let mut args = vec!["batch-upload", "--json"];
    args.extend_from_slice(extra);
    let out = env.flit(&args);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report, output_text(&out))
}

fn table<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .and_then(|tables| tables.iter().find(|t| t["table"] == name))
        .unwrap_or(&Value::Null)
}

/// Exactly `n` rows with `n` distinct ids, each in the folder of its own event day.
fn assert_rows_once(env: &Env, table_name: &str, n: usize) {
    let rows = warehouse_rows(env, table_name);
    let ids = row_ids(&rows);
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(rows.len(), n, "rows in {table_name}");
    assert_eq!(distinct.len(), n, "distinct ids in {table_name}");
    let time_column = if table_name == TX_TABLE {
        "_timestamp"
    } else {
        "prediction_timestamp"
    };
    for (dt, row) in &rows {
        let at = row[time_column].as_str().unwrap_or_default();
        assert_eq!(&at[..10], dt, "row of {at} sits in dt={dt}");
        assert!(row["_ingestion_timestamp"].is_string());
    }
}

fn assert_redis_drained(redis: &RedisServer) {
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));
    assert_eq!(llen(&mut tx, "upload_queue"), 0, "transaction queue empty");
    assert_eq!(llen(&mut pred, "upload_queue"), 0, "prediction queue empty");
    assert_eq!(
        unuploaded_records(&mut tx, "tx"),
        Vec::<String>::new(),
        "every transaction record uploaded (kept and marked)"
    );
    assert_eq!(
        unuploaded_records(&mut pred, "pred"),
        Vec::<String>::new(),
        "every prediction record uploaded (kept and marked)"
    );
    assert!(keys(&mut tx, "tx@*").is_empty(), "no older version left");
    assert!(
        keys(&mut pred, "pred@*").is_empty(),
        "no older version left"
    );
    for conn in [&mut tx, &mut pred] {
        for (pattern, what) in [
            ("flit:upload:inflight:*", "no batch left in flight"),
            ("flit:upload:entries:*", "no batch's entries list left"),
            ("flit:upload:taking:*", "no taking list left"),
            ("flit:upload:settled:*", "no settle cursor left"),
            ("flit:upload:claims:*", "no claim left"),
        ] {
            assert_eq!(
                keys(conn, pattern),
                std::collections::HashSet::<String>::new(),
                "{what}"
            );
        }
    }
}

#[test]
fn twenty_thousand_of_each_kind_land_once_in_their_day_partitions_and_a_second_run_adds_nothing() {
    const N: usize = 20_000;
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_UPLOAD_BATCH_ROWS", "3000");
    ingest_generated(&redis, &env, N);

    let (code, report, text) = upload(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["status"], "ok");
    for name in [TX_TABLE, PRED_TABLE] {
        assert_eq!(table(&report, name)["rows_uploaded"], N as u64, "{text}");
        assert!(
            table(&report, name)["batches"].as_u64() >= Some(7),
            "bounded batches: {text}"
        );
        assert_rows_once(&env, name, N);
    }
    let days: HashSet<String> = warehouse_rows(&env, PRED_TABLE)
        .into_iter()
        .map(|(dt, _)| dt)
        .collect();
    assert!(
        days.len() >= 7,
        "rows spread over the generated days: {days:?}"
    );
    assert_redis_drained(&redis);

    let stored: String = redis::cmd("GET")
        .arg("flit:upload:last_run")
        .query(&mut redis.conn(0))
        .expect("report kept");
    let stored: Value = serde_json::from_str(&stored).expect("json");
    assert_eq!(table(&stored, TX_TABLE)["rows_uploaded"], N as u64);

    let (code, report, text) = upload(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    for name in [TX_TABLE, PRED_TABLE] {
        assert_eq!(table(&report, name)["rows_uploaded"], 0, "{text}");
        assert_rows_once(&env, name, N);
    }
    let history: u64 = redis::cmd("LLEN")
        .arg("flit:upload:history")
        .query(&mut redis.conn(0))
        .expect("history");
    assert_eq!(history, 2);
}

#[test]
fn batch_upload_killed_at_several_points_then_rerun_uploads_every_record_once() {
    const N: usize = 30_000;
    let redis = RedisServer::start();
    let env = Env::new(&redis)
        .set("FLIT_UPLOAD_BATCH_ROWS", "300")
        .set("FLIT_UPLOAD_LOCK_TTL_MS", "800");
    ingest_generated(&redis, &env, N);
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));
    let mut cut_mid_run = 0;
    for delay_ms in [60u64, 200, 450, 900, 1500] {
        let mut child = env.spawn(&["batch-upload"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let left = (llen(&mut tx, "upload_queue") + llen(&mut pred, "upload_queue")) as usize;
        if left > 0 && left < 2 * N {
            cut_mid_run += 1;
        }
        std::thread::sleep(Duration::from_millis(900)); // the dead run's lock expires
    }
    assert!(
        cut_mid_run >= 2,
        "kills landed in the middle of runs ({cut_mid_run})"
    );

    // The last run may renew late on a busy machine: a lost lock would fence
    // it (correctly), which is not what this test is about.
    let env = env.set("FLIT_UPLOAD_LOCK_TTL_MS", "30000");
    let (code, report, text) = upload(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["status"], "ok", "{text}");
    for name in [TX_TABLE, PRED_TABLE] {
        assert_rows_once(&env, name, N);
    }
    assert_redis_drained(&redis);
}

#[test]
fn invalid_records_are_dead_lettered_and_expired_ones_counted_never_silent() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let mut conn = redis.conn(1);
    for n in 0..100 {
        let event = format!(
            r#"{{"prediction_id":"p{n}","selected_prediction":0.{n},"prediction_timestamp":"2025-09-27T10:00:00Z"}}"#
        );
        xadd(
            &mut conn,
            "stream:predictions",
            &[("data", event.as_bytes())],
        );
    }
    let mut service = env.service("ingest");
    wait_until(Duration::from_secs(60), "ingested", || {
        llen(&mut conn, "upload_queue") == 100
    });
    assert!(service.terminate().success());
    // Records the door would refuse today, queued past it (by an older
    // binary, or set by hand): they cannot be rows of the typed table.
    let past_the_door: [(&str, &[u8]); 3] = [
        ("pred:bad_score", br#"{"prediction_id":"bad_score","selected_prediction":"high","prediction_timestamp":"2025-09-27T10:00:00Z"}"#),
        ("pred:bad_level", br#"{"prediction_id":"bad_level","risk_level":3,"prediction_timestamp":"2025-09-27T10:00:00Z"}"#),
        ("pred:not_text", b"{\"prediction_id\":\"not_text\",\"x\":\"\xff\"}"),
    ];
    for (key, value) in past_the_door {
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(3600)
            .ignore()
            .cmd("RPUSH")
            .arg("upload_queue")
            .arg(key)
            .ignore()
            .query(&mut conn)
            .expect("set");
    }
    for n in 0..3 {
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(format!("pred:p{n}"))
            .arg(1)
            .query(&mut conn)
            .expect("expire");
    }
    std::thread::sleep(Duration::from_millis(50));

    let (code, report, text) = upload(&env, &["--only", "predictions"]);
    assert_eq!(code, Some(0), "{text}");
    let predictions = table(&report, PRED_TABLE);
    assert_eq!(predictions["rows_uploaded"], 97, "{text}");
    assert_eq!(predictions["dead_lettered"], 3, "{text}");
    assert_eq!(predictions["expired"], 3, "{text}");
    assert_eq!(
        report["tables"].as_array().map(Vec::len),
        Some(1),
        "--only uploads one kind"
    );
    assert_rows_once(&env, PRED_TABLE, 97);
    assert_eq!(llen(&mut conn, "upload_queue"), 0);

    let dead: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg("stream:predictions:dead")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("xrange");
    let text = |f: &std::collections::HashMap<String, Vec<u8>>, name: &str| {
        String::from_utf8_lossy(&f[name]).into_owned()
    };
    // Each expired record is accounted for by key, not only counted.
    let (expired, dead): (Vec<_>, Vec<_>) = dead
        .into_iter()
        .partition(|(_, f)| text(f, "reason_code") == "expired");
    let mut expired_keys: Vec<String> =
        expired.iter().map(|(_, f)| text(f, "source_key")).collect();
    expired_keys.sort();
    assert_eq!(expired_keys, ["pred:p0", "pred:p1", "pred:p2"]);
    assert_eq!(dead.len(), 3);
    let reasons: Vec<String> = dead.iter().map(|(_, f)| text(f, "reason")).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("`selected_prediction` is a string")),
        "{reasons:?}"
    );
    let mut codes: Vec<String> = dead.iter().map(|(_, f)| text(f, "reason_code")).collect();
    codes.sort();
    assert_eq!(codes, ["invalid_json", "invalid_type", "invalid_type"]);
    assert!(dead.iter().all(|(_, f)| f["data"].starts_with(b"{")));
    for (key, _) in past_the_door {
        assert!(
            !keys(&mut conn, "pred:*").contains(key),
            "the refused record {key} left Redis with its dead letter"
        );
    }
    assert_eq!(
        keys(&mut conn, "pred:*").len(),
        97,
        "uploaded records stay readable"
    );
    assert_eq!(unuploaded_records(&mut conn, "pred"), Vec::<String>::new());
}

#[test]
fn a_warehouse_that_keeps_failing_parks_the_batch_with_a_fresh_ttl() {
    const N: usize = 500;
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_UPLOAD_RETRY_MIN_MS", "20");
    ingest_generated(&redis, &env, N);
    let mut conn = redis.conn(0);
    for key in keys(&mut conn, "tx:*") {
        let _: i64 = redis::cmd("EXPIRE")
            .arg(&key)
            .arg(3600)
            .query(&mut conn)
            .expect("shorten ttl");
    }

    // A file where the warehouse folder should be: every write fails.
    let blocked = env.dir.path().join("not-a-folder");
    std::fs::write(&blocked, b"").expect("file");
    let failing = Env::new(&redis).set("FLIT_UPLOAD_RETRY_MIN_MS", "20").set(
        "FLIT_WAREHOUSE_DIR",
        &format!("{}/warehouse", path_str(&blocked)),
    );
    let (code, report, text) = upload(&failing, &["--only", "transactions"]);
    assert_eq!(code, Some(1), "some records kept for a later run: {text}");
    let transactions = table(&report, TX_TABLE);
    assert_eq!(transactions["rows_uploaded"], 0, "{text}");
    assert_eq!(transactions["kept_for_retry"], N as u64, "{text}");
    assert!(
        transactions["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("not-a-folder")),
        "{text}"
    );
    assert_eq!(transactions["batches_parked"], 1, "{text}");
    assert_eq!(keys(&mut conn, "tx:*").len(), N, "every record kept");
    assert_eq!(
        llen(&mut conn, "upload_queue"),
        0,
        "the batch is parked, out of the queue's way"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(
            keys(&mut conn, "tx:*")
                .into_iter()
                .next()
                .unwrap_or_default(),
        )
        .query(&mut conn)
        .expect("ttl");
    assert!(ttl > 604_000, "TTL renewed while waiting: {ttl}");

    let (code, _, text) = upload(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_rows_once(&env, TX_TABLE, N);
    assert_rows_once(&env, PRED_TABLE, N);
    assert_redis_drained(&redis);
}

#[test]
fn a_run_while_another_holds_the_lock_exits_1_and_dry_run_changes_nothing() {
    const N: usize = 1_000;
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    ingest_generated(&redis, &env, N);
    let mut conn = redis.conn(0);

    let _: () = redis::cmd("SET")
        .arg("flit:upload:lock:transactions")
        .arg("other-host/pid 1")
        .arg("PX")
        .arg(10_000)
        .query(&mut conn)
        .expect("lock");
    let (code, report, text) = upload(&env, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(report["status"], "busy");
    // Busy is the run's status, with whose lock it is; there is no table.
    assert_eq!(report["busy"]["holder"], "other-host/pid 1", "{report}");
    assert_eq!(report["busy"]["kind"], "transactions", "{report}");
    assert_eq!(report["tables"], serde_json::json!([]), "{report}");
    // The text report says it in words.
    let words = output_text(&env.flit(&["batch-upload"]));
    assert!(
        words.contains("another upload run holds the lock of transactions (other-host/pid 1"),
        "{text}\n{words}"
    );
    let _: () = redis::cmd("DEL")
        .arg("flit:upload:lock:transactions")
        .query(&mut conn)
        .expect("unlock");

    let (code, report, text) = upload(&env, &["--dry-run"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["dry_run"], true);
    assert_eq!(
        table(&report, TX_TABLE)["rows_uploaded"],
        N as u64,
        "would upload: {text}"
    );
    assert_eq!(
        llen(&mut conn, "upload_queue") as usize,
        N,
        "nothing removed"
    );
    assert!(warehouse_rows(&env, TX_TABLE).is_empty(), "nothing written");
    let stored: Option<String> = redis::cmd("GET")
        .arg("flit:upload:last_run")
        .query(&mut conn)
        .expect("get");
    assert!(stored.is_none(), "a dry run leaves no report behind");
}

#[test]
fn the_service_uploads_on_its_schedule() {
    const N: usize = 2_000;
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_UPLOAD_CRON", "*/2 * * * * *");
    let out = env.flit(&["generate", "--count", &N.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let mut service = env.service("scheduled");
    wait_until(
        Duration::from_secs(120),
        "scheduled uploads drained both queues",
        || warehouse_rows(&env, TX_TABLE).len() == N && warehouse_rows(&env, PRED_TABLE).len() == N,
    );
    assert!(service.terminate().success(), "{}", service.log_text());
    assert_rows_once(&env, TX_TABLE, N);
    assert_rows_once(&env, PRED_TABLE, N);
    assert_redis_drained(&redis);
}

#[test]
fn a_missed_scheduled_run_is_caught_up_at_start_but_a_fresh_redis_gets_none() {
    const N: usize = 300;
    let redis = RedisServer::start();
    // Daily at 02:00: no tick will come during this test.
    let env = Env::new(&redis).set("FLIT_UPLOAD_CRON", "0 0 2 * * *");
    ingest_generated(&redis, &env, N);
    let mut conn = redis.conn(0);

    // No history: starting the service uploads nothing.
    let mut first = env.service("no-history");
    std::thread::sleep(Duration::from_secs(3));
    assert!(first.terminate().success());
    assert_eq!(
        llen(&mut conn, "upload_queue") as usize,
        N,
        "no catch-up without history"
    );

    // The last success was two days ago: the service was down at 02:00.
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339();
    let _: () = redis::cmd("SET")
        .arg("flit:upload:last_success")
        .arg(&two_days_ago)
        .query(&mut conn)
        .expect("set");
    let mut second = env.service("catch-up");
    wait_until(Duration::from_secs(60), "catch-up upload", || {
        warehouse_rows(&env, TX_TABLE).len() == N && warehouse_rows(&env, PRED_TABLE).len() == N
    });
    assert!(
        second.log_text().contains("catching up"),
        "{}",
        second.log_text()
    );
    assert!(second.terminate().success());
    assert_redis_drained(&redis);
}

/// An id reused while its batch is being uploaded: the uploaded version
/// leaves Redis, the newer one stays queued, and each reaches the warehouse once.
#[tokio::test(flavor = "multi_thread")]
async fn an_id_reused_during_an_upload_keeps_the_newer_version_queued() {
    use flit_cache::internal::{LocalWarehouse, RowBatch, TableSpec, Warehouse};
    use flit_cache::keys::EventKind;

    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let v1 = br#"{"_timestamp":"2025-09-22T10:00:00Z","transaction_id":"tx_again","amount":10}"#;
    let v2 = br#"{"_timestamp":"2025-09-23T10:00:00Z","transaction_id":"tx_again","amount":20}"#;
    ingest_transactions(&redis, &env, &[v1], 1);

    let (mut uploads, lock) = locked_queue(&redis, EventKind::Transaction).await;
    let (manifest, rows) = uploads
        .take_batch(flit_cache::internal::Take::Upload, 100, 1 << 20)
        .await
        .expect("batch");
    assert_eq!(manifest.records.len(), 1);

    // While the batch is "in the warehouse's hands", the id comes back with
    // new content: queued on its own (the batch's entry left the queue).
    ingest_transactions(&redis, &env, &[v2], 1);

    let warehouse = LocalWarehouse::new(env.dir.path().join("warehouse"));
    let ids: Vec<String> = manifest.records.iter().map(|r| r.id.clone()).collect();
    let batch = RowBatch {
        batch_id: &manifest.batch_id,
        table: TableSpec::for_kind(EventKind::Transaction),
        rows: &rows,
        row_ids: &ids,
        ingested_at: manifest.ingested_at,
        maybe_written: false,
        jobs: &flit_cache::internal::Unlimited,
    };
    warehouse.write(&batch).await.expect("write");
    let settled = uploads.settle(&manifest).await.expect("settle");
    assert_eq!(settled.removed, 1);
    lock.release().await.expect("release");

    let mut conn = redis.conn(0);
    assert_eq!(
        queue(&mut conn),
        vec!["tx:tx_again".to_owned()],
        "the newer version is still queued, once"
    );
    let current: String = redis::cmd("GET")
        .arg("tx:tx_again")
        .query(&mut conn)
        .expect("get");
    assert_eq!(current.as_bytes(), v2);
    assert!(
        keys(&mut conn, "tx@*").is_empty(),
        "the uploaded version's copy is gone"
    );

    let (code, _, text) = upload(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    let amounts: Vec<i64> = warehouse_rows(&env, TX_TABLE)
        .iter()
        .filter_map(|(_, row)| row["json_body"]["amount"].as_i64())
        .collect();
    let mut sorted = amounts.clone();
    sorted.sort();
    assert_eq!(sorted, vec![10, 20], "each version once: {amounts:?}");
}

#[test]
fn an_in_flight_batch_left_by_the_first_version_is_taken_over_and_loaded_once() {
    old_in_flight_batch_is_taken_over(OldBatch::FirstVersion);
}

#[test]
fn an_in_flight_batch_of_manifest_format_2_heading_the_queue_is_taken_over_and_loaded_once() {
    old_in_flight_batch_is_taken_over(OldBatch::Format2);
}

/// Which binary left an in-flight batch behind.
#[derive(Clone, Copy, PartialEq)]
enum OldBatch {
    /// Layout 1: the manifest in database 0, no format, no claims.
    FirstVersion,
    /// Layout 2: in the kind's database, `format` 2, every version claimed,
    /// its entries still at the head of the queue.
    Format2,
}

fn old_in_flight_batch_is_taken_over(old: OldBatch) {
    const N: usize = 300;
    let redis = RedisServer::start();
    // Records removed at upload: an entry of the old batch left in the
    // queue would then be taken again and found gone (a dead letter).
    let env = Env::new(&redis).set("FLIT_KEEP_UPLOADED", "false");
    env.generate(&["--count", &N.to_string(), "--kind", "predictions"]);
    ingest_until_queued(&redis, &env, 0, N as u64);
    // The earlier binary died after cutting a batch of the first 100
    // queued predictions: its manifest, in its format, sits where it kept it.
    let mut pred = redis.conn(1);
    let head: Vec<String> = queue(&mut pred).into_iter().take(100).collect();
    let payloads: Vec<String> = redis::cmd("MGET")
        .arg(&head)
        .query(&mut pred)
        .expect("mget");
    let records: Vec<Value> = head
        .iter()
        .zip(&payloads)
        .map(|(key, payload)| {
            serde_json::json!({"key": key, "id": key.trim_start_matches("pred:"), "payload": payload})
        })
        .collect();
    let mut manifest = serde_json::json!({
        "batch_id": "predictions_20261123T010203000000Z_00000000000000ab",
        "kind": "predictions",
        "ingested_at": "2026-11-23T01:02:03Z",
        "records": records,
        "invalid": [],
        "expired": [],
        "repeated": [],
    });
    let db = match old {
        OldBatch::FirstVersion => 0,
        OldBatch::Format2 => {
            manifest["format"] = 2.into();
            manifest["queued"] = true.into();
            let mut claims = redis::cmd("HSET");
            claims.arg("flit:upload:claims:predictions");
            for (key, payload) in head.iter().zip(&payloads) {
                let digest = sha1_smol::Sha1::from(payload).digest().to_string();
                claims.arg(format!("{digest}:{key}")).arg(1);
            }
            let () = claims.query(&mut pred).expect("claims");
            let () = redis::cmd("SET")
                .arg("flit:layout")
                .arg(2)
                .query(&mut pred)
                .expect("layout");
            1
        }
    };
    let _: () = redis::cmd("SET")
        .arg("flit:upload:inflight:predictions")
        .arg(manifest.to_string())
        .query(&mut redis.conn(db))
        .expect("old manifest");
    let (code, report, text) = upload(&env, &["--only", "predictions"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        table(&report, PRED_TABLE)["rows_uploaded"],
        N as u64,
        "{text}"
    );
    assert_rows_once(&env, PRED_TABLE, N);
    let ingested: std::collections::HashSet<String> = warehouse_rows(&env, PRED_TABLE)
        .iter()
        .map(|(_, row)| {
            row["_ingestion_timestamp"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        ingested.contains("2026-11-23T01:02:03.000000Z"),
        "the old batch was written as it was recorded: {ingested:?}"
    );
    assert_eq!(table(&report, PRED_TABLE)["expired"], 0, "{text}");
    let dead: u64 = redis::cmd("XLEN")
        .arg("stream:predictions:dead")
        .query(&mut pred)
        .expect("xlen");
    assert_eq!(dead, 0, "no entry of the old batch was taken twice");
    assert_redis_drained(&redis);
    assert!(
        keys(&mut redis.conn(0), "flit:upload:parked*").is_empty()
            && keys(&mut pred, "flit:upload:parked*").is_empty(),
        "the old batch, parked to take its entries off the queue, was settled"
    );
    let layout: Option<String> = redis::cmd("GET")
        .arg("flit:layout")
        .query(&mut pred)
        .expect("get");
    assert_eq!(layout.as_deref(), Some("4"), "the layout was raised");
}

#[test]
fn claims_left_by_an_upload_killed_before_saving_its_batch_are_released_and_nothing_is_lost() {
    orphan_claim_released(false);
}

/// The same, when a run that was already past its own release (the claim was
/// a stale run's, made meanwhile) uploaded and removed the newer version
/// before anyone released the claim: the claimed version still comes back.
#[test]
fn an_orphan_claim_on_a_version_whose_successor_is_gone_still_brings_it_back() {
    orphan_claim_released(true);
}

fn orphan_claim_released(successor_uploaded_meanwhile: bool) {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let mut pred = redis.conn(1);
    let line = |score: f64| {
        format!(
            r#"{{"prediction_id":"p_x","selected_prediction":{score},"prediction_timestamp":"2026-11-20T10:00:00Z"}}"#
        )
    };
    env.push("predictions", &line(0.1));
    ingest_until_queued(&redis, &env, 0, 1);
    // An upload read and claimed this version, then died before saving its batch.
    let first: String = redis::cmd("GET")
        .arg("pred:p_x")
        .query(&mut pred)
        .expect("get");
    let digest = sha1_smol::Sha1::from(first.as_bytes()).digest().to_string();
    let _: () = redis::cmd("HSET")
        .arg("flit:upload:claims:predictions")
        .arg(format!("{digest}:pred:p_x"))
        .arg(1)
        .query(&mut pred)
        .expect("claim");
    // A new version arrives while the claim stands: ingest leaves the claimed
    // version to a batch that no longer exists.
    env.push("predictions", &line(0.9));
    ingest_until_queued(&redis, &env, 0, 2);
    let mut expected = vec![0.1, 0.9];
    if successor_uploaded_meanwhile {
        // What that run's settle leaves: the newer version and its entry gone.
        let _: () = redis::pipe()
            .cmd("DEL")
            .arg("pred:p_x")
            .ignore()
            .cmd("LREM")
            .arg("upload_queue")
            .arg(0)
            .arg("pred:p_x")
            .ignore()
            .query(&mut pred)
            .expect("settled elsewhere");
        expected = vec![0.1];
    }

    let (code, report, text) = upload(&env, &["--only", "predictions"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        table(&report, PRED_TABLE)["rows_uploaded"],
        expected.len() as u64,
        "{text}"
    );
    let mut scores: Vec<f64> = warehouse_rows(&env, PRED_TABLE)
        .iter()
        .filter_map(|(_, row)| row["selected_prediction"].as_f64())
        .collect();
    scores.sort_by(f64::total_cmp);
    assert_eq!(scores, expected, "each version once");
    assert!(keys(&mut pred, "flit:upload:claims:*").is_empty());
    assert_eq!(unuploaded_records(&mut pred, "pred"), Vec::<String>::new());
    assert!(keys(&mut pred, "pred@*").is_empty());
    assert_eq!(llen(&mut pred, "upload_queue"), 0);
}

/// A run that lost its batch to another run (its lock expired while it was
/// paused) may come back holding a manifest the other run already settled.
/// Nothing it then does may touch Redis: settling again would drop the queue
/// entry of a version that arrived since, and saving would bring the settled
/// batch back to be uploaded twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_batch_another_run_settled_writes_nothing() {
    use flit_cache::internal::{Take, Ttl};
    use flit_cache::keys::EventKind;

    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let v1 = br#"{"_timestamp":"2025-09-22T10:00:00Z","transaction_id":"tx_a","amount":10}"#;
    let v2 = br#"{"_timestamp":"2025-09-23T10:00:00Z","transaction_id":"tx_a","amount":20}"#;
    let other = br#"{"_timestamp":"2025-09-22T11:00:00Z","transaction_id":"tx_b","amount":30}"#;
    ingest_transactions(&redis, &env, &[v1, other], 2);
    // A second queue entry for tx_a: the batch will carry it as `repeated`.
    let mut conn = redis.conn(0);
    let _: () = redis::cmd("RPUSH")
        .arg("upload_queue")
        .arg("tx:tx_a")
        .query(&mut conn)
        .expect("rpush");

    let (mut stale, stale_lock) = locked_queue(&redis, EventKind::Transaction).await;
    let (mut manifest, _) = stale
        .take_batch(Take::Upload, 100, 1 << 20)
        .await
        .expect("batch");
    assert_eq!(manifest.records.len(), 2);
    assert_eq!(manifest.repeated, vec!["tx:tx_a".to_owned()]);

    // The run pauses past its lock's expiry (the lock is gone)...
    let _: () = redis::cmd("DEL")
        .arg("flit:upload:lock:transactions")
        .query(&mut conn)
        .expect("expire");
    drop(stale_lock);
    // ... another run finishes its batch...
    let (code, _, text) = upload(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    // ... and tx_a comes back with new content, queued once.
    ingest_transactions(&redis, &env, &[v2], 1);

    // The stale run wakes up: every step that writes is fenced off.
    let refused = [
        stale.save(&manifest, Ttl::Unchanged).await.err(),
        stale.settle(&manifest).await.err(),
        stale.park(&mut manifest).await.err(),
        stale.take_batch(Take::Upload, 100, 1 << 20).await.err(),
    ];
    for err in &refused {
        let err = err.as_ref().expect("refused");
        assert!(format!("{err:#}").contains("FENCED"), "{err:#}");
    }
    assert_eq!(
        queue(&mut conn),
        vec!["tx:tx_a".to_owned()],
        "v2 still queued"
    );
    assert!(keys(&mut conn, "flit:upload:inflight:*").is_empty());
    assert!(keys(&mut conn, "flit:upload:parked*").is_empty());
    assert!(keys(&mut conn, "flit:upload:claims:*").is_empty());

    // Behind the fence, each manifest step checks its own batch too: with
    // the lock held, a second batch cannot start while one is in flight,
    // and a batch settled already cannot be settled again.
    let (mut live, live_lock) = locked_queue(&redis, EventKind::Transaction).await;
    let (first, _) = live
        .take_batch(Take::Upload, 100, 1 << 20)
        .await
        .expect("batch");
    // The first batch's entries left the queue; one more record arrives.
    let v3 = br#"{"_timestamp":"2025-09-24T10:00:00Z","transaction_id":"tx_c","amount":40}"#;
    let () = redis::pipe()
        .cmd("SET")
        .arg("tx:tx_c")
        .arg(&v3[..])
        .ignore()
        .cmd("RPUSH")
        .arg("upload_queue")
        .arg("tx:tx_c")
        .ignore()
        .query(&mut conn)
        .expect("seed");
    let second = live.take_batch(Take::Upload, 100, 1 << 20).await;
    assert!(
        second.is_err_and(|e| e.to_string().contains("another run")),
        "a second batch in flight"
    );
    let again = live.settle(&manifest).await;
    assert!(
        again.is_err_and(|e| e.to_string().contains("another run")),
        "settled twice"
    );
    let in_flight: String = redis::cmd("GET")
        .arg("flit:upload:inflight:transactions")
        .query(&mut conn)
        .expect("manifest");
    assert!(in_flight.contains(&first.batch_id));
    live_lock.release().await.expect("release");

    // The next run finishes what is there: each version exactly once.
    let (code, _, text) = upload(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    let mut amounts: Vec<i64> = warehouse_rows(&env, TX_TABLE)
        .iter()
        .filter_map(|(_, row)| row["json_body"]["amount"].as_i64())
        .collect();
    amounts.sort();
    assert_eq!(amounts, vec![10, 20, 30, 40]);
    assert_redis_drained(&redis);
}

/// A record the batch dead-letters is accounted for from the manifest's
/// copy, even when its key expired while the batch waited (parked).
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_written_even_when_its_record_expired_meanwhile() {
    use flit_cache::internal::Take;
    use flit_cache::keys::EventKind;

    let redis = RedisServer::start();
    let mut conn = redis.conn(1);
    // Past the door (an older binary, or by hand): no row of the typed table.
    let bad = br#"{"prediction_id":"bad","selected_prediction":"high","prediction_timestamp":"2025-09-27T10:00:00Z"}"#;
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("pred:bad")
        .arg(&bad[..])
        .ignore()
        .cmd("RPUSH")
        .arg("upload_queue")
        .arg("pred:bad")
        .ignore()
        .query(&mut conn)
        .expect("seed");
    let (mut uploads, _lock) = locked_queue(&redis, EventKind::Prediction).await;
    let (manifest, rows) = uploads
        .take_batch(Take::Upload, 100, 1 << 20)
        .await
        .expect("batch");
    assert!(rows.is_empty());
    assert_eq!(manifest.invalid.len(), 1);
    let _: () = redis::cmd("DEL")
        .arg("pred:bad")
        .query(&mut conn)
        .expect("expire");
    let settled = uploads.settle(&manifest).await.expect("settle");
    assert_eq!(settled.dead_lettered, 1);
    let dead: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("stream:predictions:dead")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("xrange");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].1["data"].as_bytes(),
        bad,
        "from the manifest's copy"
    );
    assert!(
        dead[0].1["reason"].contains("selected_prediction"),
        "{dead:?}"
    );
    assert_eq!(llen(&mut conn, "upload_queue"), 0);
}

/// Settling costs what the batch costs, never what the queue behind it
/// holds: the batch's entries left the queue when it was taken, so no
/// settle step reads or changes the queue (counted with Redis's own
/// commandstats, which include the commands scripts call), including when
/// half its records are already gone, and when it is read back from its
/// entries list and settled a second time after a crash before its last
/// step: then nothing is written twice.
#[tokio::test(flavor = "multi_thread")]
async fn settling_a_batch_whose_records_are_gone_twice_costs_the_batch_not_the_queue() {
    use flit_cache::internal::Take;
    use flit_cache::keys::EventKind;

    const QUEUED: usize = 50_000;
    const BATCH: usize = 1_000;
    let redis = RedisServer::start();
    let mut conn = redis.conn(1);
    let mut seed = redis::pipe();
    for i in 0..QUEUED {
        let key = format!("pred:p{i}");
        // In the first batch: every 100th refused by the door's rules at
        // the take, every 250th an entry whose record expired.
        let body = match i {
            i if i < BATCH && i % 100 == 7 => format!(
                r#"{{"prediction_id":"p{i}","prediction_timestamp":"2025-09-27T10:00:00Z","selected_prediction":"high"}}"#
            ),
            _ => format!(
                r#"{{"prediction_id":"p{i}","prediction_timestamp":"2025-09-27T10:00:00Z","selected_prediction":0.5}}"#
            ),
        };
        if !(i < BATCH && i % 250 == 3) {
            seed.cmd("SET").arg(&key).arg(body).ignore();
        }
        seed.cmd("RPUSH").arg("upload_queue").arg(&key).ignore();
    }
    let () = seed.query(&mut conn).expect("seed");

    let (mut uploads, _lock) = locked_queue(&redis, EventKind::Prediction).await;
    let (manifest, _) = uploads
        .take_batch(Take::Upload, BATCH, 1 << 30)
        .await
        .expect("batch");
    let (records, invalid, expired) = (
        manifest.records.len(),
        manifest.invalid.len(),
        manifest.expired.len(),
    );
    // A batch counts rows (records and dead letters); expired entries come
    // along.
    assert_eq!((records + invalid, invalid, expired), (BATCH, 10, 4));
    let taken = manifest.entries();
    assert_eq!(
        llen(&mut conn, "upload_queue"),
        (QUEUED - taken) as u64,
        "the batch's entries left the queue when its manifest was saved"
    );
    let stored: String = redis::cmd("GET")
        .arg("flit:upload:inflight:predictions")
        .query(&mut conn)
        .expect("manifest");
    assert!(
        stored.len() < 40 * BATCH,
        "the manifest holds positions, not payloads: {} bytes",
        stored.len()
    );
    let list = format!("flit:upload:entries:predictions:{}", manifest.batch_id);
    let entries: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(&list)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .expect("entries");
    assert_eq!(entries.len(), 2 * (records + invalid));
    // Read back as a recovering run reads it: the same batch.
    assert_eq!(
        uploads.in_flight().await.expect("read back").as_ref(),
        Some(&manifest)
    );
    // Half its records are gone (expired, or removed by a settle that died).
    let mut gone = redis::cmd("DEL");
    for record in manifest.records.iter().step_by(2) {
        gone.arg(&record.key);
    }
    let () = gone.query(&mut conn).expect("del");

    let counted = |conn: &mut redis::Connection| -> (u64, u64) {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(conn)
            .expect("info");
        let mut queue_calls = 0;
        let mut all_calls = 0;
        for line in info.lines() {
            let Some((name, stats)) = line.split_once(':') else {
                continue;
            };
            let calls: u64 = stats
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if name.starts_with("cmdstat_") && !name.ends_with("_info") {
                all_calls += calls;
            }
            if [
                "cmdstat_lrange",
                "cmdstat_lrem",
                "cmdstat_ltrim",
                "cmdstat_lpos",
                "cmdstat_lindex",
            ]
            .contains(&name)
            {
                queue_calls += calls;
            }
        }
        (queue_calls, all_calls)
    };
    let dead_letters = |conn: &mut redis::Connection| -> u64 {
        redis::cmd("XLEN")
            .arg("stream:predictions:dead")
            .query(conn)
            .expect("xlen")
    };
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .expect("resetstat");
    let settled = uploads.settle(&manifest).await.expect("settle");
    assert_eq!(
        settled.removed as usize,
        records / 2,
        "the half still there"
    );
    assert_eq!(
        (settled.dead_lettered, settled.expired),
        (invalid as u64, expired as u64)
    );
    let (queue_calls, all_calls) = counted(&mut conn);
    assert_eq!(queue_calls, 0, "settling read or changed no list");
    assert!(
        all_calls < 10 * BATCH as u64,
        "{all_calls} commands for a batch of {BATCH}: O(batch)"
    );
    assert_eq!(dead_letters(&mut conn), (invalid + expired) as u64);

    // A settle that died after its last slice, before its last step: the
    // manifest, its entries list and a full cursor are there. The batch is
    // read back and settled again: nothing is written twice.
    let mut restore = redis::pipe();
    restore
        .cmd("SET")
        .arg("flit:upload:inflight:predictions")
        .arg(&stored)
        .ignore()
        .cmd("RPUSH")
        .arg(&list)
        .arg(&entries)
        .ignore()
        .cmd("SET")
        .arg(format!(
            "flit:upload:settled:predictions:{}",
            manifest.batch_id
        ))
        .arg(manifest.entries() - manifest.repeated.len())
        .ignore();
    // Meanwhile a producer sent a refused event and an uploaded one again:
    // each is stored anew (its record was removed) and queued on its own,
    // a record of its own that the second settle must leave alone.
    let again_sent = [&manifest.invalid[0].record, &manifest.records[1]];
    for record in again_sent {
        restore
            .cmd("SET")
            .arg(&record.key)
            .arg(&record.payload)
            .ignore()
            .cmd("RPUSH")
            .arg("upload_queue")
            .arg(&record.key)
            .ignore();
    }
    let () = restore
        .query(&mut conn)
        .expect("crash before the last step");
    let recovered = uploads
        .in_flight()
        .await
        .expect("read back")
        .expect("in flight");
    assert_eq!(recovered, manifest);
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .expect("resetstat");
    let again = uploads.settle(&recovered).await.expect("settle again");
    assert_eq!(
        (again.removed, again.dead_lettered, again.expired),
        (0, 0, 0)
    );
    let (queue_calls, all_calls) = counted(&mut conn);
    assert_eq!(queue_calls, 0);
    assert!(all_calls < 10 * BATCH as u64, "{all_calls} commands");
    assert_eq!(
        dead_letters(&mut conn),
        (invalid + expired) as u64,
        "no dead letter twice"
    );
    for record in again_sent {
        let stored: Option<String> = redis::cmd("GET")
            .arg(&record.key)
            .query(&mut conn)
            .expect("get");
        assert_eq!(
            stored.as_deref(),
            Some(record.payload.as_str()),
            "{} sent again is left to its own entry",
            record.key
        );
    }
    for pattern in [
        "flit:upload:inflight:*",
        "flit:upload:settled:*",
        "flit:upload:entries:*",
        "flit:upload:claims:*",
    ] {
        assert_eq!(
            keys(&mut conn, pattern),
            std::collections::HashSet::<String>::new(),
            "{pattern}"
        );
    }
    assert_eq!(llen(&mut conn, "upload_queue"), (QUEUED - taken + 2) as u64);
}

/// A batch read back from its entries list is the batch as taken, whatever
/// the take met: a key queued twice in one page, an entry whose record is
/// gone, a version marked uploaded, values that are not UTF-8, and a page
/// cut short by the byte budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_read_back_from_its_entries_list_is_the_batch_as_taken() {
    use flit_cache::internal::Take;
    use flit_cache::keys::EventKind;

    let redis = RedisServer::start();
    let mut conn = redis.conn(0);
    let body = |id: &str, amount: usize| {
        format!(
            r#"{{"_timestamp":"2025-09-22T10:00:00Z","transaction_id":"{id}","amount":{amount}}}"#
        )
    };
    const NOT_UTF8: &[u8] = b"{\"transaction_id\":\"t_bytes\",\"x\":\"\xff\"}";
    let marked = body("t_marked", 1);
    let digest = sha1_smol::Sha1::from(&marked).digest().to_string();
    let () = redis::pipe()
        .cmd("SET")
        .arg("tx:t1")
        .arg(body("t1", 1))
        .ignore()
        .cmd("SET")
        .arg("tx:t_marked")
        .arg(&marked)
        .ignore()
        .cmd("HSET")
        .arg("tx!t_marked")
        .arg(&digest)
        .arg(1)
        .ignore()
        .cmd("SET")
        .arg("tx:t_bytes")
        .arg(NOT_UTF8)
        .ignore()
        .cmd("SET")
        .arg("tx:t3")
        .arg(body("t3", 3))
        .ignore()
        .cmd("SET")
        .arg("tx:t4")
        .arg(body("t4", 4))
        .ignore()
        .cmd("RPUSH")
        .arg("upload_queue")
        .arg(&[
            "tx:t1",
            "tx:t1",
            "tx:t_gone",
            "tx:t_marked",
            "tx:t_bytes",
            "tx:t3",
            "tx:t4",
        ])
        .ignore()
        .query(&mut conn)
        .expect("seed");
    let (mut uploads, _lock) = locked_queue(&redis, EventKind::Transaction).await;
    // The byte budget ends the batch after t3.
    let budget = body("t1", 1).len() + NOT_UTF8.len() + body("t3", 3).len();
    let (manifest, _) = uploads
        .take_batch(Take::Upload, 100, budget)
        .await
        .expect("batch");
    let keys_of = |records: &[flit_cache::internal::BatchRecord]| -> Vec<String> {
        records.iter().map(|r| r.key.clone()).collect()
    };
    assert_eq!(keys_of(&manifest.records), ["tx:t1", "tx:t3"]);
    assert_eq!(manifest.invalid.len(), 1, "not UTF-8");
    assert_eq!(manifest.expired, ["tx:t_gone"]);
    assert_eq!(manifest.repeated, ["tx:t1", "tx:t_marked"]);
    assert_eq!(
        queue(&mut conn),
        ["tx:t4"],
        "what the batch did not read stays"
    );
    let back = uploads
        .in_flight()
        .await
        .expect("read back")
        .expect("in flight");
    assert_eq!(back, manifest);
    assert_eq!(
        back.invalid[0].record.digest(),
        manifest.invalid[0].record.digest(),
        "the stored bytes' SHA-1, not the lossy text's"
    );
}

/// An `UploadQueue` for `kind` holding the kind's upload lock, as a run does.
async fn locked_queue(
    redis: &RedisServer,
    kind: flit_cache::keys::EventKind,
) -> (
    flit_cache::internal::UploadQueue,
    flit_cache::internal::UploadLock,
) {
    let db = match kind {
        flit_cache::keys::EventKind::Transaction => 0,
        flit_cache::keys::EventKind::Prediction => 1,
    };
    let client = redis::Client::open(format!("{}/{db}", redis.url())).expect("client");
    let records = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let lock =
        flit_cache::internal::UploadLock::acquire(records.clone(), kind, Duration::from_secs(60))
            .await
            .expect("redis")
            .expect("the lock is free");
    let queue = flit_cache::internal::UploadQueue::new(
        kind,
        records.clone(),
        records,
        flit_cache::configuration::DeadLetterSettings {
            keep_bytes: 4096,
            max_len: 100_000,
        },
        flit_cache::configuration::AfterUpload::Remove,
        604_800,
        lock.fence(),
    );
    (queue, lock)
}

/// Two uploaders: one paused (SIGSTOP) past its locks' expiry while the
/// other takes over and finishes, then resumed. Whatever it held in hand,
/// the fence and the local sink's no-replace rename keep every record to
/// exactly one row.
#[test]
fn an_uploader_paused_past_its_lock_s_expiry_writes_nothing_twice() {
    const N: usize = 6_000;
    for pause_after_ms in [30u64, 120, 300] {
        let redis = RedisServer::start();
        let env = Env::new(&redis)
            .set("FLIT_UPLOAD_BATCH_ROWS", "500")
            .set("FLIT_UPLOAD_LOCK_TTL_MS", "600");
        ingest_generated(&redis, &env, N);
        let mut first = env.spawn(&["batch-upload"]);
        let pid = format!("/pid {}/", first.id());
        let mut conn = redis.conn(0);
        wait_until(
            Duration::from_secs(30),
            "the first run holds its lock",
            || {
                let holder: Option<String> = redis::cmd("GET")
                    .arg("flit:upload:lock:transactions")
                    .query(&mut conn)
                    .unwrap_or(None);
                holder.is_some_and(|h| h.contains(&pid))
            },
        );
        std::thread::sleep(Duration::from_millis(pause_after_ms));
        signal(&first, "STOP");
        std::thread::sleep(Duration::from_millis(1_000)); // its locks expire

        // The second run holds a long lock, so that only the first can lose
        // one (a late renewal on a busy machine would fence the second too).
        let env = env.set("FLIT_UPLOAD_LOCK_TTL_MS", "30000");
        let (code, _, text) = upload(&env, &[]);
        assert_eq!(code, Some(0), "the second run finishes: {text}");
        signal(&first, "CONT");
        let status = first.wait().expect("first run");
        println!("paused after {pause_after_ms} ms: the first run exited with {status}");

        for name in [TX_TABLE, PRED_TABLE] {
            assert_rows_once(&env, name, N);
        }
        assert_redis_drained(&redis);
    }
}

/// Pushes `events` onto the transaction stream and runs the workers until
/// the queue holds `queued` entries and nothing is pending.
fn ingest_transactions(redis: &RedisServer, env: &Env, events: &[&[u8]], queued: u64) {
    let mut conn = redis.conn(0);
    for event in events {
        xadd(&mut conn, "stream:transactions", &[("data", event)]);
    }
    let mut service = env.service("ingest");
    wait_until(Duration::from_secs(60), "ingested", || {
        llen(&mut conn, "upload_queue") == queued && pending(&mut conn, "stream:transactions") == 0
    });
    assert!(service.terminate().success());
}
