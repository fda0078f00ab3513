//! The gauges that let Prometheus raise what `monitor` raises, scraped from
//! the real service against a real Redis; and the dashboard and alert rules
//! in deploy/ checked against the names src/telemetry/metrics.rs exports, so
//! neither can drift from /metrics.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{Duration as Span, Utc};
use flit_cache::internal::{ParkedSummary, RunReport, RunStatus, TableReport};
use serde_json::Value;
use support::*;

fn monitor_codes(env: &Env) -> BTreeSet<String> {
    let out = env.flit(&["monitor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("monitor --json");
    report["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| a["code"].as_str().expect("code").to_owned())
        .collect()
}

fn assert_near(actual: f64, expected: f64, within: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= within,
        "{what}: {actual}, expected {expected} ± {within}"
    );
}

const TTL: i64 = 604_800;

#[test]
fn gauges_show_what_monitor_judges() {
    let redis = RedisServer::builder()
        .args(&["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"])
        .start();
    // No upload runs during the test: the state below stays as written.
    let env = Env::new(&redis).set("FLIT_UPLOAD_CRON", "0 0 0 1 1 *");
    let predictions: String = (0..5)
        .map(|i| format!("{{\"prediction_id\":\"p_{i}\",\"transaction_id\":\"tx_{i}\"}}\n"))
        .collect();
    env.push("predictions", &predictions);
    let service = env.service("metrics-gauges");
    let (mut state, mut pred) = (redis.conn(0), redis.conn(1));
    wait_until(Duration::from_secs(60), "ingested", || {
        llen(&mut pred, "upload_queue") == 5
    });

    // Upload state as runs leave it: a batch in flight for 3 hours, a
    // parked batch that failed 4 times and expires in 3 hours, and two run
    // reports (an ok one, then a partial one that set the prediction table
    // aside and saw 2 records expire), with no success kept.
    let now = Utc::now();
    let manifest = serde_json::json!({
        "format": 3, "kind": "predictions", "ingested_at": (now - Span::hours(3)).to_rfc3339(),
        "records": [1, 2], "invalid": [], "expired": [], "repeated": [],
    });
    let parked = ParkedSummary {
        batch_id: "b1".into(),
        records: 7,
        failures: 4,
        last_error: Some("backendError".into()),
        parked_at: now - Span::hours(5),
        renewed_at: now - Span::seconds(TTL) + Span::hours(3),
    };
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("flit:upload:inflight:predictions")
        .arg(manifest.to_string())
        .ignore()
        .cmd("HSET")
        .arg("flit:upload:parked:predictions")
        .arg("b1")
        .arg(serde_json::to_string(&parked).expect("json"))
        .ignore()
        .query(&mut pred)
        .expect("upload state");
    let report = |started: chrono::DateTime<Utc>, status, tables| RunReport {
        started_at: started,
        finished_at: started + Span::minutes(1),
        status,
        dry_run: false,
        warehouse: "local".into(),
        busy: None,
        tables,
    };
    let older = report(now - Span::hours(2), RunStatus::Ok, vec![]);
    let newer = report(
        now - Span::hours(1),
        RunStatus::Partial,
        vec![
            TableReport {
                table: PRED_TABLE.into(),
                set_aside: Some("quotaExceeded".into()),
                expired: 2,
                ..Default::default()
            },
            TableReport {
                table: TX_TABLE.into(),
                ..Default::default()
            },
        ],
    );
    for run in [&older, &newer] {
        let _: () = redis::cmd("LPUSH")
            .arg("flit:upload:history")
            .arg(serde_json::to_string(run).expect("json"))
            .query(&mut state)
            .expect("history");
    }

    let page = scrape(&service);
    let pred_kind = [("kind", "predictions")];
    let tx_kind = [("kind", "transactions")];
    // Redis: eviction_policy, keys_evicted, persistence_*, memory_*.
    assert_eq!(
        value(&page, "flit_redis_maxmemory_bytes", &[]),
        100.0 * 1024.0 * 1024.0
    );
    assert_eq!(
        value(
            &page,
            "flit_redis_maxmemory_policy",
            &[("policy", "allkeys-lru")]
        ),
        1.0
    );
    assert_eq!(value(&page, "flit_redis_evicted_keys", &[]), 0.0);
    assert_eq!(value(&page, "flit_redis_persistence_enabled", &[]), 1.0);
    assert_eq!(value(&page, "flit_redis_persistence_errors", &[]), 0.0);
    let projected = value(&page, "flit_redis_projected_memory_bytes", &[]);
    assert!(
        projected.is_finite() && projected > 5.0 * 7.0 * 100.0,
        "5 records a day for 7 days: {projected}"
    );
    // dead_letters_memory sums these (no dead letters here).
    assert_eq!(value(&page, "flit_dead_letter_bytes", &tx_kind), 0.0);
    // Queues: queued_record_expiring / _expired.
    assert_near(
        value(&page, "flit_upload_queue_oldest_ttl_seconds", &pred_kind),
        TTL as f64,
        120.0,
        "a fresh record's TTL",
    );
    assert!(
        value(&page, "flit_upload_queue_oldest_ttl_seconds", &tx_kind).is_nan(),
        "an empty queue has no oldest record"
    );
    // Batches: batch_in_flight_old, parked_batch_expiring, batch_failures_repeating.
    assert_eq!(
        value(&page, "flit_upload_in_flight_records", &pred_kind),
        2.0
    );
    assert_eq!(value(&page, "flit_upload_in_flight_records", &tx_kind), 0.0);
    assert_near(
        value(&page, "flit_upload_in_flight_age_seconds", &pred_kind),
        3.0 * 3600.0,
        60.0,
        "in flight",
    );
    assert_eq!(value(&page, "flit_upload_parked_batches", &pred_kind), 1.0);
    assert_eq!(value(&page, "flit_upload_parked_records", &pred_kind), 7.0);
    assert_eq!(
        value(&page, "flit_upload_parked_max_failures", &pred_kind),
        4.0
    );
    assert_eq!(
        value(&page, "flit_upload_parked_max_failures", &tx_kind),
        0.0
    );
    assert_near(
        value(&page, "flit_upload_parked_expires_in_seconds", &pred_kind),
        3.0 * 3600.0,
        60.0,
        "parked batch expiry",
    );
    assert!(value(&page, "flit_upload_parked_expires_in_seconds", &tx_kind).is_nan());
    // Runs: upload_stale (none succeeded), upload_failures, records_expired, table_set_aside.
    assert_eq!(value(&page, "flit_upload_recent_runs", &[]), 2.0);
    assert_eq!(value(&page, "flit_upload_recent_failures", &[]), 1.0);
    assert_eq!(
        value(&page, "flit_upload_history_expired_records", &[]),
        2.0
    );
    assert_near(
        value(&page, "flit_upload_history_since_timestamp_seconds", &[]),
        older.started_at.timestamp() as f64,
        1.0,
        "the oldest kept report",
    );
    assert_eq!(
        value(
            &page,
            "flit_upload_table_set_aside",
            &[("table", PRED_TABLE)]
        ),
        1.0
    );
    assert_eq!(
        value(&page, "flit_upload_table_set_aside", &[("table", TX_TABLE)]),
        0.0
    );
    assert!(
        !page.contains("flit_upload_last_success_timestamp_seconds "),
        "no success kept, no time of one:\n{page}"
    );
    // monitor judges the same state the same way.
    let codes = monitor_codes(&env);
    for code in [
        "eviction_policy",
        "batch_in_flight_old",
        "parked_batch_expiring",
        "batch_failures_repeating",
        "table_set_aside",
        "upload_stale",
        "upload_failures",
        "records_expired",
    ] {
        assert!(codes.contains(code), "monitor raises {code}: {codes:?}");
    }

    // Redis changes: the policy's old series goes to 0, persistence off,
    // and the oldest queued record is gone before upload.
    let oldest: String = redis::cmd("LINDEX")
        .arg("upload_queue")
        .arg(0)
        .query(&mut pred)
        .expect("oldest");
    let _: () = redis::pipe()
        .cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .ignore()
        .cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("no")
        .ignore()
        .query(&mut state)
        .expect("config");
    let _: () = redis::cmd("DEL")
        .arg(&oldest)
        .query(&mut pred)
        .expect("del");
    let page = scrape(&service);
    assert_eq!(
        value(
            &page,
            "flit_redis_maxmemory_policy",
            &[("policy", "allkeys-lru")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &page,
            "flit_redis_maxmemory_policy",
            &[("policy", "noeviction")]
        ),
        1.0
    );
    assert_eq!(value(&page, "flit_redis_persistence_enabled", &[]), 0.0);
    assert_eq!(
        value(&page, "flit_upload_queue_oldest_ttl_seconds", &pred_kind),
        -1.0
    );
    let codes = monitor_codes(&env);
    for code in ["persistence_off", "queued_record_expired"] {
        assert!(codes.contains(code), "monitor raises {code}: {codes:?}");
    }
    assert!(!codes.contains("eviction_policy"), "{codes:?}");
}

/// Lower-case `flit_...` names in `text`.
/// `run` reads the warehouse's freshness every FLIT_WAREHOUSE_CHECK_SECONDS
/// (what `monitor --bigquery` reads) into gauges, so the rules can say
/// `warehouse_unreachable` and `warehouse_stale` as monitor does.
#[test]
fn the_warehouse_check_keeps_freshness_gauges() {
    let redis = RedisServer::start();
    let env = Env::new(&redis)
        .set("FLIT_SINK", "local")
        .set("FLIT_UPLOAD_CRON", "0 0 0 1 1 *")
        .set("FLIT_WAREHOUSE_CHECK_SECONDS", "1");
    let at = (Utc::now() - Span::hours(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let transactions: String = (0..12)
        .map(|i| {
            format!("{{\"transaction_id\":\"tx_w{i}\",\"amount\":1,\"transaction_timestamp\":\"{at}\"}}\n")
        })
        .collect();
    env.push("transactions", &transactions);
    ingest_until_queued(&redis, &env, 12, 0);
    let out = env.flit(&["batch-upload"]);
    assert!(out.status.success(), "{}", output_text(&out));

    let service = env.service("warehouse-check");
    let tx = [("table", TX_TABLE)];
    let pred = [("table", PRED_TABLE)];
    let mut page = String::new();
    wait_until(Duration::from_secs(30), "a warehouse check", || {
        page = service
            .get("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        page.contains("flit_warehouse_checked_timestamp_seconds")
    });
    assert_eq!(value(&page, "flit_warehouse_up", &tx), 1.0);
    assert_eq!(value(&page, "flit_warehouse_has_recent_events", &tx), 1.0);
    assert_eq!(value(&page, "flit_warehouse_rows_last_24h", &tx), 12.0);
    let newest = value(&page, "flit_warehouse_newest_event_timestamp_seconds", &tx);
    assert_near(
        newest,
        (Utc::now() - Span::hours(2)).timestamp() as f64,
        120.0,
        "newest event",
    );
    // The prediction table holds nothing yet: readable, no recent events
    // (warehouse_stale, as monitor --bigquery says).
    assert_eq!(value(&page, "flit_warehouse_up", &pred), 1.0);
    assert_eq!(value(&page, "flit_warehouse_has_recent_events", &pred), 0.0);

    // A table that cannot be read: up goes to 0 at the next check.
    let table_dir = env.dir.path().join("warehouse").join(TX_TABLE);
    std::fs::remove_dir_all(&table_dir).expect("remove");
    std::fs::write(&table_dir, b"not a folder").expect("file");
    wait_until(Duration::from_secs(30), "the table unreadable", || {
        value(&scrape(&service), "flit_warehouse_up", &tx) == 0.0
    });
    let out = env.flit(&["monitor", "--bigquery", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("monitor --json");
    let codes: Vec<&str> = report["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["code"].as_str())
        .collect();
    assert!(codes.contains(&"warehouse_unreachable"), "{codes:?}");
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices("flit_") {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let end = text[at..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |n| at + n);
        names.insert(text[at..end].to_owned());
    }
    names
}

fn read(path: &str) -> String {
    let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn exported() -> BTreeSet<String> {
    let source = read("src/telemetry/metrics.rs");
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("flit_"))
        .map(str::to_owned)
        .collect()
}

/// The metrics module is a leaf: components emit its events with plain
/// values, and it reaches into none of them, so metrics never sit on both
/// sides of the module graph.
#[test]
fn the_metrics_module_imports_no_component() {
    let source = read("src/telemetry/metrics.rs");
    let reaching: Vec<&str> = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .filter(|line| line.contains("crate::") || line.contains("super::"))
        .collect();
    assert!(
        reaching.is_empty(),
        "src/telemetry/metrics.rs reaches into the crate: {reaching:?}"
    );
}

fn assert_exported(used: &BTreeSet<String>, exported: &BTreeSet<String>, file: &str) {
    let unknown: Vec<&String> = used
        .iter()
        .filter(|name| {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            !exported.contains(*name) && !exported.contains(base)
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "{file} uses series src/telemetry/metrics.rs does not export: {unknown:?}"
    );
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_exported_series() {
    let exported = exported();
    assert!(exported.len() > 30, "{exported:?}");

    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/flit-cache.json")).expect("dashboard JSON");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut exprs = Vec::new();
    fn collect(value: &Value, exprs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(expr)) => exprs.push(expr.clone()),
                        ("uid", Value::String(uid)) if uid.starts_with('$') => {
                            assert_eq!(uid, "${DS_PROMETHEUS}", "datasource input")
                        }
                        _ => collect(value, exprs),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, exprs)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert_exported(&used, &exported, "deploy/grafana/flit-cache.json");
    for wanted in [
        "flit_events_ingested_total",
        "flit_events_rejected_total",
        "flit_upload_queue_length",
        "flit_upload_queue_oldest_age_seconds",
        "flit_stream_lag",
        "flit_upload_runs_total",
        "flit_upload_rows_total",
        "flit_cache_hit_ratio",
        "flit_redis_used_memory_bytes",
    ] {
        assert!(used.contains(wanted), "the dashboard shows {wanted}");
    }

    let rules = read("deploy/prometheus/flit-cache-alerts.yml");
    assert_exported(
        &metric_names(&rules),
        &exported,
        "deploy/prometheus/flit-cache-alerts.yml",
    );
}

#[test]
fn every_monitor_alert_has_a_rule_and_a_promtool_case() {
    let alerts = read("src/monitor/alerts.rs");
    let codes: BTreeSet<&str> = alerts
        .match_indices("alert(")
        .filter_map(|(at, _)| {
            let rest = alerts[at + "alert(".len()..].trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(&rest[..rest.find('"')?])
        })
        .collect();
    assert!(codes.len() > 20, "{codes:?}");
    let rules = read("deploy/prometheus/flit-cache-alerts.yml");
    let ruled: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("code: "))
        .collect();
    let missing: Vec<&&str> = codes
        .iter()
        .filter(|code| !ruled.contains(**code))
        .collect();
    assert!(
        missing.is_empty(),
        "monitor codes without a rule: {missing:?}"
    );
    // What only Prometheus can see: flit-cache itself gone (monitor is
    // flit-cache, and says nothing when it does not run).
    let prometheus_only = ["service_down"];
    let unknown: Vec<&&str> = ruled
        .iter()
        .filter(|code| !codes.contains(**code) && !prometheus_only.contains(*code))
        .collect();
    assert!(unknown.is_empty(), "rules for no monitor code: {unknown:?}");

    let tests = read("deploy/prometheus/flit-cache-alerts.test.yml");
    let tested: BTreeSet<&str> = tests
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alertname: "))
        .collect();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(tested.contains(alert), "no promtool case for {alert}");
    }
}
