//! `flit-cache monitor` against a real redis-server, each condition put in
//! place for real (server flags, workloads, failing runs), the JSON report
//! parsed and the exit code checked; and record lookups counted as hits and
//! misses through the library.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::BTreeSet;

use chrono::{Duration as Age, Utc};
use flit_cache::cache::{LookupError, RecordCache};
use serde_json::Value;
use support::*;

/// Runs `monitor --json`: the exit code and the parsed report.
fn monitor(env: &Env) -> (Option<i32>, Value) {
    let out = env.flit(&["monitor", "--json"]);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("monitor --json is not JSON ({e}): {}", output_text(&out)));
    (out.status.code(), report)
}

fn alert_codes(report: &Value) -> BTreeSet<String> {
    report["alerts"]
        .as_array()
        .expect("alerts array")
        .iter()
        .map(|a| a["code"].as_str().expect("code").to_owned())
        .collect()
}

fn alert<'a>(report: &'a Value, code: &str) -> &'a Value {
    report["alerts"]
        .as_array()
        .and_then(|alerts| alerts.iter().find(|a| a["code"] == code))
        .unwrap_or_else(|| panic!("no {code} alert in {report:#}"))
}

fn kind<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["kinds"]
        .as_array()
        .and_then(|kinds| kinds.iter().find(|k| k["kind"] == name))
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

fn codes(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|c| c.to_string()).collect()
}

fn upload_ok(env: &Env) {
    let out = env.flit(&["batch-upload"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
}

#[test]
fn a_working_pipeline_is_healthy_and_the_report_says_what_it_measured() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    ingest_generated(&redis, &env, 40);
    let (code, before) = monitor(&env);
    assert_eq!(code, Some(0), "{before:#}");
    let tx = kind(&before, "transactions");
    assert_eq!(tx["queue"]["length"], 40);
    assert!(tx["queue"]["oldest_age_seconds"].as_u64().expect("age") < 600);
    assert_eq!(tx["stream"]["group_exists"], true);
    assert_eq!(tx["stream"]["lag"], 0);
    assert_eq!(tx["stream"]["pending"], 0);
    assert_eq!(before["redis"]["aof_enabled"], true);
    assert_eq!(before["redis"]["maxmemory_policy"], "noeviction");
    assert!(
        before["redis"]["keys_per_db"]["db0"]
            .as_u64()
            .expect("db0 keys")
            >= 40
    );

    upload_ok(&env);
    let (code, after) = monitor(&env);
    assert_eq!(code, Some(0), "{after:#}");
    assert_eq!(after["healthy"], true);
    assert_eq!(kind(&after, "predictions")["queue"]["length"], 0);
    let uploads = &after["uploads"];
    assert!(uploads["last_success_at"].is_string());
    assert_eq!(uploads["recent_runs"], 1);
    assert_eq!(uploads["recent_failures"], 0);
    let uploaded: u64 = uploads["last_run"]["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| t["rows_uploaded"].as_u64().expect("rows"))
        .sum();
    assert_eq!(uploaded, 80);

    // The warehouse check reads the configured sink (here the local one).
    let out = env.flit(&["monitor", "--json", "--bigquery"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for table in report["warehouse"].as_array().expect("warehouse tables") {
        assert_eq!(table["rows_last_24h"], 40, "{table:#}");
        assert!(table["newest_event_at"].is_string(), "{table:#}");
    }

    let out = env.flit(&["monitor"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("HEALTHY") && text.contains("No alerts."),
        "{text}"
    );
}

#[test]
fn an_evicting_memory_policy_is_an_alert_with_the_fix() {
    let redis = RedisServer::builder()
        .args(&["--maxmemory-policy", "allkeys-lru"])
        .start();
    let env = Env::new(&redis);
    let (code, report) = monitor(&env);
    assert_eq!(code, Some(1));
    assert_eq!(alert_codes(&report), codes(&["eviction_policy"]));
    let eviction = alert(&report, "eviction_policy");
    assert_eq!(eviction["value"], "maxmemory-policy allkeys-lru");
    assert_eq!(eviction["threshold"], "noeviction");
    assert!(
        eviction["action"]
            .as_str()
            .expect("action")
            .contains("noeviction")
    );

    // Every record has a TTL, so volatile-* evicts records too.
    let mut conn = redis.conn(0);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-ttl")
        .query(&mut conn)
        .expect("config set");
    let (code, report) = monitor(&env);
    assert_eq!(code, Some(1));
    assert_eq!(alert_codes(&report), codes(&["eviction_policy"]));

    let out = env.flit(&["monitor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[eviction_policy]") && text.contains("do: CONFIG SET"),
        "{text}"
    );
}

#[test]
fn redis_without_persistence_is_an_alert() {
    // The helper already turns RDB snapshots off; this turns AOF off too.
    let redis = RedisServer::builder().args(&["--appendonly", "no"]).start();
    let env = Env::new(&redis);
    let (code, report) = monitor(&env);
    assert_eq!(code, Some(1));
    assert_eq!(alert_codes(&report), codes(&["persistence_off"]));
    assert_eq!(report["redis"]["aof_enabled"], false);
    assert_eq!(report["redis"]["rdb_save"], "");

    // RDB snapshots alone are persistence.
    let mut conn = redis.conn(0);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("save")
        .arg("3600 1")
        .query(&mut conn)
        .expect("config set");
    assert_eq!(monitor(&env).0, Some(0));
}

#[test]
fn a_queue_over_the_threshold_is_an_alert() {
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_ALERT_QUEUE", "25");
    ingest_generated(&redis, &env, 30);
    let (code, report) = monitor(&env);
    assert_eq!(code, Some(1));
    assert_eq!(alert_codes(&report), codes(&["queue_long"]));
    let queue = alert(&report, "queue_long");
    assert_eq!(queue["value"], "30 records");
    assert!(
        queue["threshold"]
            .as_str()
            .expect("threshold")
            .contains("25")
    );
    // One alert per queue over the limit.
    assert_eq!(report["alerts"].as_array().expect("alerts").len(), 2);
}

/// Redis's own `lag` counter goes stale after a restart from the AOF (the
/// soak saw 1,074 "unread" entries on a stream the group had read to the
/// end); `XGROUP SETID ... ENTRIESREAD` puts the same stale counter in place.
#[test]
fn stream_lag_counts_only_entries_the_group_has_not_read() {
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_ALERT_QUEUE", "5");
    ingest_generated(&redis, &env, 30);
    upload_ok(&env);
    let mut conn = redis.conn(0);
    let info = |conn: &mut redis::Connection| -> std::collections::HashMap<String, redis::Value> {
        let mut groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("stream:transactions")
            .query(conn)
            .expect("xinfo");
        groups.pop().expect("the group")
    };
    let last: String = redis::from_redis_value_ref(&info(&mut conn)["last-delivered-id"])
        .expect("last delivered id");
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg("stream:transactions")
        .arg("flit-cache")
        .arg(&last)
        .arg("ENTRIESREAD")
        .arg(1)
        .query(&mut conn)
        .expect("setid");
    assert_eq!(
        info(&mut conn).get("lag"),
        Some(&redis::Value::Int(29)),
        "Redis's counter is stale"
    );
    let (code, report) = monitor(&env);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(kind(&report, "transactions")["stream"]["lag"], 0);

    // Entries the group has really not read: the alert, with a count the
    // stream's length bounds.
    for i in 0..8 {
        let _: String = redis::cmd("XADD")
            .arg("stream:transactions")
            .arg("*")
            .arg("data")
            .arg(format!("{{\"n\": {i}}}"))
            .query(&mut conn)
            .expect("xadd");
    }
    let (code, report) = monitor(&env);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(alert_codes(&report), codes(&["stream_lag"]));
    let lag = kind(&report, "transactions")["stream"]["lag"]
        .as_u64()
        .expect("lag");
    let length = kind(&report, "transactions")["stream"]["length"]
        .as_u64()
        .expect("length");
    assert!((8..=length).contains(&lag), "lag {lag} of {length}");
}

#[test]
fn a_stale_last_success_is_an_alert() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    ingest_generated(&redis, &env, 5);
    upload_ok(&env);
    assert_eq!(monitor(&env).0, Some(0));

    // The same run, 30 hours ago: move its stored times back.
    let mut conn = redis.conn(0);
    let back = |text: &str| -> String {
        let mut report: Value = serde_json::from_str(text).expect("report");
        for field in ["started_at", "finished_at"] {
            let at: chrono::DateTime<Utc> =
                serde_json::from_value(report[field].clone()).expect("time");
            report[field] = serde_json::to_value(at - Age::hours(30)).expect("time");
        }
        report.to_string()
    };
    let last: String = redis::cmd("GET")
        .arg("flit:upload:last_run")
        .query(&mut conn)
        .expect("last run");
    let old = back(&last);
    let finished = serde_json::from_str::<Value>(&old).expect("report")["finished_at"]
        .as_str()
        .expect("finished")
        .to_owned();
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("flit:upload:last_run")
        .arg(&old)
        .cmd("LSET")
        .arg("flit:upload:history")
        .arg(0)
        .arg(&old)
        .cmd("SET")
        .arg("flit:upload:last_success")
        .arg(&finished)
        .query(&mut conn)
        .expect("rewrite");

    let (code, report) = monitor(&env);
    assert_eq!(code, Some(1));
    assert_eq!(alert_codes(&report), codes(&["upload_stale"]));
    let stale = alert(&report, "upload_stale");
    assert!(
        stale["value"]
            .as_str()
            .expect("value")
            .starts_with("30.0 h"),
        "{stale:#}"
    );
    assert!(
        stale["threshold"]
            .as_str()
            .expect("threshold")
            .starts_with("26 h")
    );

    // A lower threshold is not reached by a fresh run.
    upload_ok(&env);
    assert_eq!(monitor(&env).0, Some(0));
}

#[test]
fn failing_runs_raise_the_failure_rate_alert() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    ingest_generated(&redis, &env, 5);
    upload_ok(&env);

    // A warehouse nobody answers at: each run keeps its records back.
    let unreachable = Env::new(&redis)
        .set("BIGQUERY_PROJECT", "flit-data-platform")
        .set(
            "BIGQUERY_API_URL",
            &format!("http://127.0.0.1:{}", free_port()),
        )
        .set("FLIT_UPLOAD_ATTEMPTS", "1");
    unreachable.generate(&["--count", "3"]);
    ingest_until_queued(&redis, &unreachable, 3, 3);
    for _ in 0..2 {
        let out = unreachable.flit(&["batch-upload"]);
        assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    }

    let (code, report) = monitor(&env);
    assert_eq!(code, Some(1));
    assert_eq!(alert_codes(&report), codes(&["upload_failures"]));
    assert_eq!(report["uploads"]["recent_runs"], 3);
    assert_eq!(report["uploads"]["recent_failures"], 2);
    assert_eq!(
        alert(&report, "upload_failures")["value"],
        "67% (2 of the last 3 runs)"
    );
    assert!(
        !report["uploads"]["last_run"]["tables"][0]["errors"]
            .as_array()
            .expect("errors")
            .is_empty(),
        "the last run's errors are in the report"
    );
    // The threshold is the operator's: at 100% nothing is an alert.
    let tolerant = Env::new(&redis).set("FLIT_ALERT_FAILURE_RATE", "1");
    assert_eq!(monitor(&tolerant).0, Some(0));
}

#[test]
fn an_unreachable_redis_is_exit_2_and_the_password_stays_hidden() {
    let mut redis = RedisServer::builder().password("hunter2-monitor").start();
    let env = Env::new(&redis);
    assert_eq!(monitor(&env).0, Some(0));
    redis.stop();
    let (code, report) = monitor(&env);
    assert_eq!(code, Some(2));
    assert_eq!(report["redis"]["reachable"], false);
    assert!(report["redis"]["error"].is_string());
    assert_eq!(alert_codes(&report), codes(&["redis_unreachable"]));
    let out = env.flit(&["monitor"]);
    assert_eq!(out.status.code(), Some(2));
    let text = output_text(&out);
    assert!(text.contains("REDIS UNREACHABLE"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!report.to_string().contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_count_hits_and_misses_for_every_process() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let transactions: String = (0..3)
        .map(|i| {
            format!("{{\"transaction_id\":\"tx_{i}\",\"customer_id\":\"c\",\"amount\":{i}}}\n")
        })
        .collect();
    env.push("transactions", &transactions);
    env.push(
        "predictions",
        r#"{"prediction_id":"p_1","transaction_id":"tx_0","customer_id":"c","selected_model":"ridge","selected_prediction":0.2}"#,
    );
    ingest_until_queued(&redis, &env, 3, 1);

    let settings = env.settings();
    let cache = RecordCache::connect(&settings.redis)
        .await
        .expect("connect");
    let other = RecordCache::connect(&settings.redis)
        .await
        .expect("connect");
    let found = cache.get_transaction("tx_1").await.expect("lookup");
    assert_eq!(found.expect("hit")["amount"], 1);
    assert!(
        cache
            .get_transaction("tx_0")
            .await
            .expect("lookup")
            .is_some()
    );
    assert!(
        other
            .get_transaction("tx_2")
            .await
            .expect("lookup")
            .is_some()
    );
    assert!(
        other
            .get_transaction("tx_404")
            .await
            .expect("lookup")
            .is_none()
    );
    let prediction = cache.get_prediction("p_1").await.expect("lookup");
    assert_eq!(prediction.expect("hit")["selected_model"], "ridge");
    assert!(
        cache
            .get_prediction("tx_1")
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(cache.get_prediction("p_2").await.expect("lookup").is_none());
    // A bad id is an error, not a lookup.
    assert!(matches!(
        cache.get_transaction("two words").await,
        Err(LookupError::InvalidId(_))
    ));
    assert!(matches!(
        cache.get_prediction("").await,
        Err(LookupError::InvalidId(_))
    ));

    let (code, report) = monitor(&env);
    assert_eq!(code, Some(0), "{report:#}");
    let tx_lookups = &kind(&report, "transactions")["lookups"];
    assert_eq!(tx_lookups["hits"], 3);
    assert_eq!(tx_lookups["misses"], 1);
    assert_eq!(tx_lookups["hit_rate"], 0.75);
    assert_eq!(tx_lookups["last_hour_hits"], 3);
    assert_eq!(tx_lookups["last_hour_misses"], 1);
    let pred_lookups = &kind(&report, "predictions")["lookups"];
    assert_eq!(pred_lookups["hits"], 1);
    assert_eq!(pred_lookups["misses"], 2);

    // The rate is the last hour's. Hits long past (a million, in the total
    // and in a minute counter that has since expired) count nothing, and a
    // run of misses now brings the rate down at once, whatever the totals.
    let mut state = redis.conn(0);
    // A minute half an hour from now's: never the one just counted in.
    let other_minute = (chrono::Utc::now().timestamp() / 60 + 30) % 60;
    let _: () = redis::pipe()
        .cmd("INCRBY")
        .arg("flit:cache:transactions:hits")
        .arg(1_000_000)
        .cmd("SET")
        .arg(format!("flit:cache:transactions:hits:{other_minute:02}"))
        .arg(1_000_000)
        .arg("PX")
        .arg(1)
        .query(&mut state)
        .expect("counters");
    std::thread::sleep(std::time::Duration::from_millis(20));
    for i in 0..120 {
        let id = format!("tx_gone_{i}");
        assert!(cache.get_transaction(&id).await.expect("lookup").is_none());
    }
    let (code, report) = monitor(&env);
    assert_eq!(code, Some(1), "{report:#}");
    let tx_lookups = &kind(&report, "transactions")["lookups"];
    assert_eq!(tx_lookups["hits"], 1_000_003, "totals keep everything");
    assert_eq!(tx_lookups["last_hour_hits"], 3, "{tx_lookups}");
    assert_eq!(tx_lookups["last_hour_misses"], 121, "{tx_lookups}");
    let codes: Vec<&str> = report["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["code"].as_str())
        .collect();
    assert_eq!(codes, ["hit_rate_low"], "{report:#}");
    // Predictions saw 3 lookups this hour: too few to judge, however low.
    assert!(pred_lookups["hit_rate"].as_f64().is_some_and(|r| r < 0.8));
}
