//! The storage layout, against a real redis-server and the real binary:
//! records stay readable by id after upload (recorded in the uploaded index),
//! a late copy of an uploaded event adds no row, every version of a reused
//! id is uploaded once, `FLIT_KEEP_UPLOADED=false` removes them instead,
//! and a Redis holding a newer layout is refused without a change.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn upload(env: &Env) -> (Option<i32>, Value, String) {
    let out = env.flit(&["batch-upload", "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report, output_text(&out))
}

fn rows_uploaded(report: &Value, table: &str) -> u64 {
    report["tables"]
        .as_array()
        .and_then(|tables| tables.iter().find(|t| t["table"] == table))
        .and_then(|t| t["rows_uploaded"].as_u64())
        .unwrap_or(u64::MAX)
}

/// XADDs `events` onto `stream` and runs the workers until the group has
/// read and acknowledged every one of them (whether or not it queued
/// anything: a duplicate queues nothing).
fn ingest_all(redis: &RedisServer, env: &Env, db: i64, stream: &str, events: &[Vec<u8>]) {
    let mut conn = redis.conn(db);
    let mut last = String::new();
    for event in events {
        last = xadd(&mut conn, stream, &[("data", event)]);
    }
    let mut service = env.service("ingest");
    wait_until(
        Duration::from_secs(60),
        "every entry read and acknowledged",
        || {
            let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query(&mut conn)
                .unwrap_or_default();
            let delivered = groups
                .first()
                .and_then(|g| match g.get("last-delivered-id") {
                    Some(redis::Value::BulkString(id)) => {
                        Some(String::from_utf8_lossy(id).into_owned())
                    }
                    _ => None,
                });
            delivered.as_deref() == Some(last.as_str()) && pending(&mut conn, stream) == 0
        },
    );
    assert!(service.terminate().success());
}

fn transaction(id: &str, amount: &str) -> Value {
    serde_json::json!({
        "transaction_id": id,
        "customer_id": "cust_1",
        "amount": amount.parse::<f64>().expect("amount"),
        "_timestamp": "2026-11-30T10:00:00",
        "customer_credit_score_range": "good",
        "customer_age_bracket": "25-34",
        "device_type": "mobile",
        "product_category": "electronics",
    })
}

/// `count` transactions `tx_0`, `tx_1`, ..., as bytes to send.
fn numbered(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|n| {
            transaction(&format!("tx_{n}"), "1.0")
                .to_string()
                .into_bytes()
        })
        .collect()
}

fn get(conn: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(conn).expect("get")
}

fn sha1(text: &str) -> String {
    sha1_smol::Sha1::from(text).digest().to_string()
}

/// Amounts of the warehouse's transaction rows, per transaction id.
fn amounts(env: &Env) -> HashMap<String, Vec<f64>> {
    let mut found: HashMap<String, Vec<f64>> = HashMap::new();
    for (_, row) in warehouse_rows(env, TX_TABLE) {
        let body: Value = match &row["json_body"] {
            Value::String(text) => serde_json::from_str(text).expect("body"),
            other => other.clone(),
        };
        let id = body["transaction_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        found
            .entry(id)
            .or_default()
            .push(body["amount"].as_f64().unwrap_or(f64::NAN));
    }
    for list in found.values_mut() {
        list.sort_by(f64::total_cmp);
    }
    found
}

#[test]
fn uploaded_records_stay_readable_and_late_copies_add_no_row() {
    const N: usize = 40;
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let events: Vec<Value> = (0..N)
        .map(|n| transaction(&format!("tx_{n}"), &format!("{n}.5")))
        .collect();
    let compact: Vec<Vec<u8>> = events.iter().map(|e| e.to_string().into_bytes()).collect();
    ingest_all(&redis, &env, 0, "stream:transactions", &compact);

    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rows_uploaded(&report, TX_TABLE), N as u64, "{text}");

    let mut conn = redis.conn(0);
    for (n, event) in events.iter().enumerate() {
        let key = format!("tx:tx_{n}");
        let stored = get(&mut conn, &key).expect("the record stays readable after upload");
        assert_eq!(
            stored,
            event.to_string(),
            "a plain GET reads the event's JSON"
        );
        assert_eq!(
            uploaded_versions(&mut conn, "tx", &format!("tx_{n}")),
            [sha1(&stored)],
            "{key} is recorded as uploaded"
        );
        assert!(
            keys(&mut conn, &format!("tx!tx_{n}")).is_empty(),
            "keeping {key} costs no key of its own: its version is a field of the uploaded index"
        );
        let indexed: String = redis::cmd("HGET")
            .arg("flit:uploaded:transactions")
            .arg(format!("tx_{n}"))
            .query(&mut conn)
            .expect("hget");
        let deadline: i64 = indexed[40..].parse().expect("deadline");
        let now = chrono::Utc::now().timestamp();
        assert!(
            (now + 604_800 - 120..=now + 604_800 + 5).contains(&deadline)
                && deadline * 1000 >= now * 1000 + record_ttl(&mut conn, &key),
            "the field lasts a TTL from the upload, and never less than its record: {indexed}"
        );
    }
    assert_eq!(llen(&mut conn, "upload_queue"), 0);

    // The same events again, as producers resend them: compact, indented
    // (Python's json.dumps(indent=2)), through a spool replay or a retry.
    let late: Vec<Vec<u8>> = events
        .iter()
        .enumerate()
        .map(|(n, e)| match n % 2 {
            0 => e.to_string().into_bytes(),
            _ => serde_json::to_string_pretty(e).expect("json").into_bytes(),
        })
        .collect();
    ingest_all(&redis, &env, 0, "stream:transactions", &late);
    assert_eq!(
        llen(&mut conn, "upload_queue"),
        0,
        "a late copy of an uploaded record is not queued again"
    );
    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rows_uploaded(&report, TX_TABLE), 0, "{text}");
    let rows = amounts(&env);
    assert_eq!(rows.len(), N);
    assert!(
        rows.values().all(|a| a.len() == 1),
        "one row each: {rows:?}"
    );
}

#[test]
fn a_reused_id_after_upload_uploads_each_version_once() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let first = transaction("tx_reused", "10.0").to_string().into_bytes();
    let second = transaction("tx_reused", "20.0").to_string().into_bytes();
    let other = transaction("tx_other", "1.0").to_string().into_bytes();

    ingest_all(
        &redis,
        &env,
        0,
        "stream:transactions",
        &[first.clone(), other],
    );
    let (code, _, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");

    // The upstream API reuses the id for a new purchase: a new version.
    ingest_all(
        &redis,
        &env,
        0,
        "stream:transactions",
        std::slice::from_ref(&second),
    );
    let mut conn = redis.conn(0);
    assert_eq!(
        queue(&mut conn),
        ["tx:tx_reused"],
        "the new version is queued"
    );
    assert!(
        keys(&mut conn, "tx@*").is_empty(),
        "the uploaded version is not kept aside: nothing waits for it"
    );
    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rows_uploaded(&report, TX_TABLE), 1, "{text}");

    // Both versions come back late: neither is queued again.
    ingest_all(
        &redis,
        &env,
        0,
        "stream:transactions",
        &[first.clone(), second.clone()],
    );
    assert_eq!(llen(&mut conn, "upload_queue"), 0, "{:?}", queue(&mut conn));
    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rows_uploaded(&report, TX_TABLE), 0, "{text}");

    let rows = amounts(&env);
    assert_eq!(rows["tx_reused"], [10.0, 20.0], "each version once");
    assert_eq!(rows["tx_other"], [1.0]);
    assert_eq!(
        get(&mut conn, "tx:tx_reused").as_deref().map(str::as_bytes),
        Some(second.as_slice()),
        "a lookup reads the newest"
    );
    let mut both = [
        sha1(&String::from_utf8_lossy(&first)),
        sha1(&String::from_utf8_lossy(&second)),
    ];
    both.sort();
    assert_eq!(
        uploaded_versions(&mut conn, "tx", "tx_reused"),
        both,
        "both versions recorded as uploaded, once each"
    );
}

#[test]
fn with_keep_uploaded_off_records_leave_redis_at_upload() {
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_KEEP_UPLOADED", "false");
    ingest_all(&redis, &env, 0, "stream:transactions", &numbered(10));
    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rows_uploaded(&report, TX_TABLE), 10, "{text}");
    let mut conn = redis.conn(0);
    assert!(keys(&mut conn, "tx*").is_empty(), "records and marks gone");
    assert_eq!(llen(&mut conn, "upload_queue"), 0);
}

#[test]
fn near_maxmemory_uploaded_records_leave_and_late_copies_of_them_still_add_no_row() {
    const N: usize = 30;
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let events = numbered(N);
    ingest_all(&redis, &env, 0, "stream:transactions", &events);
    let mut conn = redis.conn(0);
    // Redis at 92% of its maxmemory when the upload settles.
    let info: redis::InfoDict = redis::cmd("INFO")
        .arg("memory")
        .query(&mut conn)
        .expect("info");
    let used: u64 = info.get("used_memory").expect("used_memory");
    let set_max = |conn: &mut redis::Connection, bytes: u64| {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(bytes)
            .query(conn)
            .expect("config set");
    };
    set_max(&mut conn, used * 100 / 92);
    let (code, report, text) = upload(&env);
    set_max(&mut conn, 0);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rows_uploaded(&report, TX_TABLE), N as u64, "{text}");
    assert!(
        keys(&mut conn, "tx:*").is_empty(),
        "the uploaded records left Redis to free memory"
    );
    let fields: u64 = redis::cmd("HLEN")
        .arg("flit:uploaded:transactions")
        .query(&mut conn)
        .expect("hlen");
    assert_eq!(
        fields, N as u64,
        "the uploaded index still records each one"
    );

    // Late copies: stored anew (their records were gone) and queued, but
    // the take finds their versions in the index.
    ingest_all(&redis, &env, 0, "stream:transactions", &events);
    assert_eq!(llen(&mut conn, "upload_queue"), N as u64);
    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rows_uploaded(&report, TX_TABLE), 0, "{text}");
    assert_eq!(llen(&mut conn, "upload_queue"), 0, "the stale entries left");
    assert_eq!(
        warehouse_rows(&env, TX_TABLE).len(),
        N,
        "every event once in the warehouse"
    );
    // A late copy must not outlive the field that says it was uploaded:
    // the take capped it at the field's deadline.
    for n in 0..N {
        let indexed: String = redis::cmd("HGET")
            .arg("flit:uploaded:transactions")
            .arg(format!("tx_{n}"))
            .query(&mut conn)
            .expect("hget");
        let deadline: i64 = indexed[40..].parse().expect("deadline");
        let left = record_ttl(&mut conn, &format!("tx:tx_{n}"));
        let now_ms = chrono::Utc::now().timestamp_millis();
        assert!(
            left > 0 && now_ms + left <= deadline * 1000 + 1000,
            "tx_{n}: expires in {left} ms, the field at {deadline}"
        );
    }
}

/// PTTL of `key`, in milliseconds.
fn record_ttl(conn: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(conn).expect("pttl")
}

#[test]
fn a_record_a_layout_3_worker_replaced_after_a_layout_4_upload_is_still_uploaded_once() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let first = transaction("tx_side", "10.0").to_string().into_bytes();
    ingest_all(
        &redis,
        &env,
        0,
        "stream:transactions",
        std::slice::from_ref(&first),
    );
    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rows_uploaded(&report, TX_TABLE), 1, "{text}");

    // A layout-3 worker, still running during a deploy, reads only the
    // marks: it takes the uploaded record for one still waiting when the id
    // comes again with new content, moves it aside, queues only the moved
    // key (for the record key's entry, which is gone, to pass to the
    // newest) and stores the newest.
    let mut conn = redis.conn(0);
    let second = transaction("tx_side", "20.0").to_string();
    let moved = format!("tx@{}:tx_side", sha1(&String::from_utf8_lossy(&first)));
    let () = redis::pipe()
        .cmd("SET")
        .arg(&moved)
        .arg(&first)
        .arg("EX")
        .arg(604_800)
        .ignore()
        .cmd("RPUSH")
        .arg("upload_queue")
        .arg(&moved)
        .ignore()
        .cmd("SET")
        .arg("tx:tx_side")
        .arg(&second)
        .arg("EX")
        .arg(604_800)
        .ignore()
        .query(&mut conn)
        .expect("what layout 3 writes");

    // The first run finds the moved version uploaded and queues the newest
    // again; whichever run uploads it, each version reaches the warehouse once.
    for _ in 0..2 {
        let (code, _, text) = upload(&env);
        assert_eq!(code, Some(0), "{text}");
    }
    assert_eq!(amounts(&env)["tx_side"], [10.0, 20.0], "each version once");
    assert_eq!(llen(&mut conn, "upload_queue"), 0);
    assert!(
        unuploaded_records(&mut conn, "tx").is_empty(),
        "nothing left waiting (the moved copy, uploaded already, only expires)"
    );
}

#[test]
fn a_worker_already_running_stops_committing_when_a_newer_layout_appears() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let mut conn = redis.conn(0);
    let service = env.service("ingest");
    let first = transaction("tx_first", "1.0").to_string().into_bytes();
    xadd(&mut conn, "stream:transactions", &[("data", &first)]);
    wait_until(Duration::from_secs(30), "the worker committing", || {
        get(&mut conn, "tx:tx_first").is_some()
    });
    // A newer flit-cache raised the layout while this worker ran.
    let () = redis::cmd("SET")
        .arg("flit:layout")
        .arg("99")
        .query(&mut conn)
        .expect("set");
    let late = transaction("tx_late", "2.0").to_string().into_bytes();
    xadd(&mut conn, "stream:transactions", &[("data", &late)]);
    wait_until(Duration::from_secs(30), "the commit refused", || {
        service.log_text().contains("NEWER_LAYOUT")
    });
    assert_eq!(get(&mut conn, "tx:tx_late"), None, "nothing committed");
    assert_eq!(
        llen(&mut conn, "upload_queue"),
        1,
        "only the earlier record"
    );

    // The newer binary rolled back: the worker, retrying, commits it.
    let () = redis::cmd("SET")
        .arg("flit:layout")
        .arg("4")
        .query(&mut conn)
        .expect("set");
    wait_until(Duration::from_secs(60), "the event committed", || {
        get(&mut conn, "tx:tx_late").is_some()
    });
    assert_eq!(llen(&mut conn, "upload_queue"), 2);
}

#[test]
fn a_redis_holding_a_newer_layout_is_refused_and_left_as_it_is() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    ingest_all(&redis, &env, 0, "stream:transactions", &numbered(5));
    let mut tx = redis.conn(0);
    let mut pred = redis.conn(1);
    for conn in [&mut tx, &mut pred] {
        assert_eq!(
            get(conn, "flit:layout").as_deref(),
            Some("4"),
            "the workers claimed today's layout in each kind's database"
        );
    }

    // A newer flit-cache took the predictions' database over.
    let () = redis::cmd("SET")
        .arg("flit:layout")
        .arg("99")
        .query(&mut pred)
        .expect("set");
    let out = env.flit(&["batch-upload"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "could not start: {text}");
    assert!(
        text.contains("layout 99") && text.contains("flit:layout"),
        "names what it found: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(llen(&mut tx, "upload_queue"), 5, "nothing was taken");
    assert!(warehouse_rows(&env, TX_TABLE).is_empty());
    assert_eq!(get(&mut pred, "flit:layout").as_deref(), Some("99"));

    // The workers refuse it too: the predictions stream is left unread.
    let mut service = env.service("ingest");
    xadd(
        &mut pred,
        "stream:predictions",
        &[("data", br#"{"prediction_id":"p1"}"#)],
    );
    wait_until(Duration::from_secs(30), "the refusal logged", || {
        service.log_text().contains("NEWER_LAYOUT")
    });
    assert!(service.terminate().success());
    assert!(keys(&mut pred, "pred:*").is_empty(), "nothing committed");
}

#[test]
fn a_record_key_of_another_type_dead_letters_its_event_and_the_rest_of_the_call_goes_on() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let mut conn = redis.conn(0);
    // Set by hand, past the door: a list where a record would go.
    let () = redis::cmd("RPUSH")
        .arg("tx:tx_2")
        .arg("not a record")
        .query(&mut conn)
        .expect("rpush");
    ingest_all(&redis, &env, 0, "stream:transactions", &numbered(5));
    let mut queued = queue(&mut conn);
    queued.sort();
    assert_eq!(queued, ["tx:tx_0", "tx:tx_1", "tx:tx_3", "tx:tx_4"]);
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("stream:transactions:dead")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("xrange");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let fields = &dead[0].1;
    assert_eq!(fields["reason_code"], "record_key_unusable");
    assert!(fields["reason"].contains("WRONGTYPE"), "{fields:?}");
    assert!(
        fields["data"].contains("tx_2"),
        "the event is kept: {fields:?}"
    );
    assert_eq!(
        pending(&mut conn, "stream:transactions"),
        0,
        "all acknowledged"
    );
}

#[test]
fn marks_of_an_id_reused_again_and_again_and_old_index_fields_do_not_pile_up() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let mut conn = redis.conn(0);
    // 63 versions uploaded more than a TTL ago: their records are long gone.
    let mut old = redis::cmd("HSET");
    old.arg("tx!tx_hot");
    for n in 0..63 {
        old.arg(format!("{n:040x}")).arg(1_000_000);
    }
    let () = old.query(&mut conn).expect("hset");
    // The index still names the version uploaded before those, and 300
    // other records uploaded long ago.
    let mut index = redis::cmd("HSET");
    index
        .arg("flit:uploaded:transactions")
        .arg("tx_hot")
        .arg(format!("{}1000000", "f".repeat(40)));
    for n in 0..300 {
        index
            .arg(format!("tx_gone_{n}"))
            .arg(format!("{n:040x}1000000"));
    }
    let () = index.query(&mut conn).expect("hset");
    ingest_all(
        &redis,
        &env,
        0,
        "stream:transactions",
        &[transaction("tx_hot", "5.0").to_string().into_bytes()],
    );
    let (code, report, text) = upload(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rows_uploaded(&report, TX_TABLE), 1, "{text}");
    let stored = get(&mut conn, "tx:tx_hot").expect("kept");
    assert_eq!(
        uploaded_versions(&mut conn, "tx", "tx_hot"),
        [sha1(&stored)],
        "the version the index held moved to the mark as its 64th, which swept the stale ones"
    );
    assert!(
        keys(&mut conn, "tx!tx_hot").is_empty(),
        "all of them were stale"
    );
    let fields: u64 = redis::cmd("HLEN")
        .arg("flit:uploaded:transactions")
        .query(&mut conn)
        .expect("hlen");
    assert_eq!(
        fields, 1,
        "the upload's sweep removed the index's stale fields"
    );
}
