//! The dbt project (dbt/) run for real: flit-cache generates, ingests and
//! uploads events into the BigQuery emulator, duplicates included, then
//! `dbt build` (models and tests) runs against it and every mart is checked
//! against what the known input implies. A second round checks that the
//! incremental run reads only the days that received rows.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use chrono::{DateTime, Utc};
use serde_json::Value;
use support::*;

use flit_cache::internal::MODELS;
const DATASET: &str = "flit_ml_monitoring";

fn dbt_bin() -> String {
    std::env::var("DBT_BIN").unwrap_or_else(|_| {
        panic!("DBT_BIN must name the dbt executable (scripts/test.sh installs dbt-bigquery)")
    })
}

/// Days every incremental run reads again, today (UTC) included.
const LOOKBACK_DAYS: i64 = 2;

/// The lookback days of a run now.
fn lookback_days() -> BTreeSet<String> {
    (0..LOOKBACK_DAYS)
        .map(|back| {
            (Utc::now() - chrono::Duration::days(back))
                .format("%Y-%m-%d")
                .to_string()
        })
        .collect()
}

/// The days a compiled incremental model read from its upstream, by its
/// constant partition filters on `column`.
fn days_read(work: &Path, model: &str, column: &str) -> BTreeSet<String> {
    let path = work.join(format!(
        "target/compiled/flit_ml_monitoring/models/{model}.sql"
    ));
    let compiled = std::fs::read_to_string(&path).expect("compiled model");
    let filter = format!("{column} >= timestamp '");
    compiled
        .match_indices(&filter)
        .map(|(at, found)| compiled[at + found.len()..at + found.len() + 10].to_owned())
        .collect()
}

/// Runs `dbt build` against the emulator; its output must report no error.
fn dbt_build(emulator: &Emulator, work: &Path) -> String {
    let text = dbt(emulator, work, &["build"]);
    assert!(text.contains("ERROR=0"), "{text}");
    text
}

/// Runs a dbt command against the emulator; it must succeed.
fn dbt(emulator: &Emulator, work: &Path, command: &[&str]) -> String {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbt");
    let out = Command::new(dbt_bin())
        .args(command)
        .arg("--project-dir")
        .arg(&project)
        .arg("--profiles-dir")
        .arg(&project)
        .args(["--target", "emulator"])
        // The emulator keeps no partition modification times: find changed
        // days from rows (see dbt/macros/changed_days.sql). No margin: the
        // rounds here are seconds apart.
        .args([
            "--vars",
            &format!("{{changed_days_from: rows, reload_margin_hours: 0, lookback_days: {LOOKBACK_DAYS}}}"),
        ])
        .env("BIGQUERY_API_URL", emulator.url())
        .env("BIGQUERY_PROJECT", PROJECT)
        .env("NO_GCE_CHECK", "True")
        .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        .env("DBT_TARGET_PATH", work.join("target"))
        .env("DBT_LOG_PATH", work.join("logs"))
        .output()
        .expect("run dbt");
    let text = output_text(&out);
    assert!(out.status.success(), "dbt {command:?} failed:\n{text}");
    text
}

/// The records waiting for upload in `db`, as JSON.
fn queued_records(redis: &RedisServer, db: i64) -> Vec<Value> {
    let mut conn = redis.conn(db);
    let keys = queue(&mut conn);
    let mut records = Vec::new();
    for chunk in keys.chunks(500) {
        let payloads: Vec<String> = redis::cmd("MGET")
            .arg(chunk)
            .query(&mut conn)
            .expect("mget");
        records.extend(
            payloads
                .iter()
                .map(|p| serde_json::from_str::<Value>(p).expect("record")),
        );
    }
    records
}

fn upload(env: &Env) {
    let out = env.flit(&["batch-upload"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
}

fn time(record: &Value, field: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(record[field].as_str().expect("time"))
        .expect("rfc3339")
        .with_timezone(&Utc)
}

fn day(record: &Value) -> String {
    time(record, "prediction_timestamp")
        .format("%Y-%m-%d")
        .to_string()
}

fn number(record: &Value, pointer: &str) -> f64 {
    record
        .pointer(pointer)
        .and_then(Value::as_f64)
        .expect(pointer)
}

/// APPROX_QUANTILES(x, 100)[OFFSET(k)] is approximate (BigQuery and the
/// emulator's t-digest alike): its rank must be within 3% of n (at least 2)
/// of the exact one.
fn assert_quantile(values: &[f64], k: usize, got: f64, what: &str) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = k as f64 / 100.0 * (sorted.len() - 1) as f64;
    let slack = (0.03 * sorted.len() as f64).ceil().max(2.0) as usize;
    let low = sorted[(rank.floor() as usize).saturating_sub(slack)];
    let high = sorted[(rank.ceil() as usize + slack).min(sorted.len() - 1)];
    assert!(
        (low..=high).contains(&got),
        "{what}: p{k} {got} outside [{low}, {high}]"
    );
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Every mart against what `predictions` and `transactions` (one copy of
/// each event) imply.
fn check_marts(emulator: &Emulator, predictions: &[Value], transactions: &[Value]) {
    let query = |sql: &str| emulator.query(&sql.replace("$", DATASET));
    let int = |s: &str| s.parse::<u64>().expect("integer");
    let float = |s: &str| s.parse::<f64>().expect("number");

    assert_eq!(
        query("select count(*) from $.stg_predictions")[0][0],
        predictions.len().to_string()
    );
    assert_eq!(
        query("select count(*) from $.stg_transactions")[0][0],
        transactions.len().to_string()
    );

    // Daily volume per selected model, with its decisions.
    let mut volume: BTreeMap<(String, String), [u64; 4]> = BTreeMap::new();
    for p in predictions {
        let model = p["selected_model"].as_str().expect("model").to_owned();
        let entry = volume.entry((day(p), model)).or_default();
        entry[0] += 1;
        match p["business_decision"].as_str() {
            Some("approve") => entry[1] += 1,
            Some("review") => entry[2] += 1,
            Some("decline") => entry[3] += 1,
            // Missing or a value the vars do not list: counted, in no column.
            _ => {}
        }
    }
    let got: BTreeMap<(String, String), [u64; 4]> = query(
        "select cast(prediction_day as string), selected_model, predictions, approved, reviewed, declined from $.ml_daily_model_volume",
    )
    .into_iter()
    .map(|r| {
        (
            (r[0].clone(), r[1].clone()),
            [int(&r[2]), int(&r[3]), int(&r[4]), int(&r[5])],
        )
    })
    .collect();
    assert_eq!(got, volume, "ml_daily_model_volume");

    // Decision and risk-level mix, and each pair's share of its day.
    let mut mix: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut per_day: BTreeMap<String, u64> = BTreeMap::new();
    for p in predictions {
        let key = (
            day(p),
            p["business_decision"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            p["risk_level"].as_str().unwrap_or("unknown").to_owned(),
        );
        *mix.entry(key).or_default() += 1;
        *per_day.entry(day(p)).or_default() += 1;
    }
    let rows = query(
        "select cast(prediction_day as string), business_decision, risk_level, predictions, share_of_day from $.ml_decision_risk_mix",
    );
    assert_eq!(rows.len(), mix.len(), "ml_decision_risk_mix rows");
    for r in rows {
        let key = (r[0].clone(), r[1].clone(), r[2].clone());
        let expected = mix[&key];
        assert_eq!(int(&r[3]), expected, "{key:?}");
        let share = expected as f64 / per_day[&key.0] as f64;
        assert!(close(float(&r[4]), share), "{key:?} share {}", r[4]);
    }

    // Every model's score distribution per day.
    let mut scores: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for p in predictions {
        for model in MODELS {
            scores
                .entry((day(p), model.to_owned()))
                .or_default()
                .push(number(p, &format!("/model_predictions/{model}")));
        }
    }
    let rows = query(
        "select cast(prediction_day as string), model, predictions, mean_score, p50_score, p95_score from $.ml_score_distribution",
    );
    assert_eq!(rows.len(), scores.len(), "ml_score_distribution rows");
    for r in rows {
        let values = &scores[&(r[0].clone(), r[1].clone())];
        let what = format!("{} {}", r[0], r[1]);
        assert_eq!(int(&r[2]), values.len() as u64, "{what}");
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(close(float(&r[3]), mean), "{what}: mean {} vs {mean}", r[3]);
        assert_quantile(values, 50, float(&r[4]), &what);
        assert_quantile(values, 95, float(&r[5]), &what);
    }

    // Processing time per day.
    let mut latency: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for p in predictions {
        latency
            .entry(day(p))
            .or_default()
            .push(number(p, "/processing_time_ms"));
    }
    let rows = query(
        "select cast(prediction_day as string), predictions, p50_ms, p95_ms, p99_ms from $.ml_processing_time",
    );
    assert_eq!(rows.len(), latency.len(), "ml_processing_time rows");
    for r in rows {
        let values = &latency[&r[0]];
        assert_eq!(int(&r[1]), values.len() as u64);
        for (k, cell) in [(50, &r[2]), (95, &r[3]), (99, &r[4])] {
            assert_quantile(values, k, float(cell), &r[0]);
        }
    }

    // Selected model against the ensemble.
    let mut gaps: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for p in predictions {
        let gap =
            (number(p, "/selected_prediction") - number(p, "/model_predictions/ensemble")).abs();
        gaps.entry((
            day(p),
            p["selected_model"].as_str().expect("model").to_owned(),
        ))
        .or_default()
        .push(gap);
    }
    let rows = query(
        "select cast(prediction_day as string), selected_model, predictions, mean_abs_gap, disagreements from $.ml_model_disagreement",
    );
    assert_eq!(rows.len(), gaps.len(), "ml_model_disagreement rows");
    for r in rows {
        let values = &gaps[&(r[0].clone(), r[1].clone())];
        assert_eq!(int(&r[2]), values.len() as u64);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(close(float(&r[3]), mean), "{r:?} vs {mean}");
        let over = values.iter().filter(|g| **g > 0.1).count() as u64;
        assert_eq!(int(&r[4]), over, "{r:?}");
    }

    // Predictions whose transaction arrived: same ids, event times within 24 h.
    let mut coverage: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in predictions {
        let at = time(p, "prediction_timestamp");
        let found = transactions.iter().any(|t| {
            t["transaction_id"] == p["transaction_id"]
                && t["customer_id"] == p["customer_id"]
                && (time(t, "_timestamp") - at).num_seconds().abs() <= 24 * 3_600
        });
        let entry = coverage.entry(day(p)).or_default();
        entry.0 += 1;
        entry.1 += u64::from(found);
    }
    let got: BTreeMap<String, (u64, u64)> = query(
        "select cast(prediction_day as string), predictions, with_transaction from $.ml_transaction_coverage",
    )
    .into_iter()
    .map(|r| (r[0].clone(), (int(&r[1]), int(&r[2]))))
    .collect();
    assert_eq!(got, coverage, "ml_transaction_coverage");
}

#[test]
fn dbt_builds_marts_that_match_the_generated_events() {
    let redis = RedisServer::start();
    let emulator = Emulator::start();
    let work = tempfile::tempdir().expect("tempdir");
    // Records removed at upload, so that late copies reach the raw tables
    // as they still can (after the TTL, or with the last second of a host
    // crash undone): staging must keep one of each.
    let env = Env::new(&redis)
        .set("BIGQUERY_PROJECT", PROJECT)
        .set("BIGQUERY_API_URL", &emulator.url())
        .set("FLIT_KEEP_UPLOADED", "false");

    // 300 purchases and their predictions over 3 days, and 40 predictions
    // whose transactions never come.
    env.generate(&["--count", "300", "--seed", "11", "--days", "3"]);
    env.generate(&[
        "--count",
        "40",
        "--seed",
        "12",
        "--days",
        "3",
        "--kind",
        "predictions",
    ]);
    ingest_until_queued(&redis, &env, 300, 340);
    let mut transactions = queued_records(&redis, 0);
    let mut predictions = queued_records(&redis, 1);
    let out = env.flit(&["init"]);
    assert!(out.status.success(), "{}", output_text(&out));
    upload(&env);

    // The same events again after their upload (and removal): flit-cache
    // stores and uploads them a second time, and staging must keep one of each.
    let again =
        |records: &[Value]| -> String { records[..20].iter().map(|r| format!("{r}\n")).collect() };
    env.push("transactions", &again(&transactions));
    env.push("predictions", &again(&predictions));
    ingest_until_queued(&redis, &env, 20, 20);
    upload(&env);
    assert_eq!(emulator.count(PRED_TABLE, "prediction_id"), (360, 340));

    dbt_build(&emulator, work.path());
    check_marts(&emulator, &predictions, &transactions);
    // Both raw tables were loaded moments ago: fresh.
    let freshness = dbt(&emulator, work.path(), &["source", "freshness"]);
    assert_eq!(
        freshness.matches(" PASS freshness of ").count(),
        2,
        "{freshness}"
    );

    // A day later: 50 more purchases within the last day. The incremental
    // run reads the raw partitions of those days only.
    env.generate(&["--count", "50", "--seed", "13", "--days", "1"]);
    ingest_until_queued(&redis, &env, 50, 50);
    let new_predictions = queued_records(&redis, 1);
    let new_days: BTreeSet<String> = new_predictions.iter().map(day).collect();
    transactions.extend(queued_records(&redis, 0));
    predictions.extend(new_predictions);
    upload(&env);

    dbt_build(&emulator, work.path());
    let expected: BTreeSet<String> = new_days.union(&lookback_days()).cloned().collect();
    assert_eq!(
        days_read(
            work.path(),
            "staging/stg_predictions",
            "prediction_timestamp"
        ),
        expected,
        "only the new days and the lookback are read"
    );
    // Every incremental model filters its upstream by constant day ranges,
    // which BigQuery prunes partitions on.
    for (model, column) in [
        ("staging/stg_transactions", "_timestamp"),
        ("marts/ml_daily_model_volume", "prediction_at"),
        ("marts/ml_decision_risk_mix", "prediction_at"),
        ("marts/ml_score_distribution", "prediction_at"),
        ("marts/ml_processing_time", "prediction_at"),
        ("marts/ml_model_disagreement", "prediction_at"),
        ("marts/ml_transaction_coverage", "prediction_at"),
    ] {
        let read = days_read(work.path(), model, column);
        assert!(
            !read.is_empty() && lookback_days().is_subset(&read),
            "{model} reads constant day ranges of {column}, the lookback included: {read:?}"
        );
    }
    check_marts(&emulator, &predictions, &transactions);

    // Late and odd rows, as producers send them: a prediction six days old
    // (a spool replayed late: a partition outside the lookback that dbt had
    // built already), one without a business decision, one with a decision
    // and one with a risk level no var lists. NULLABLE columns and unknown
    // values warn; they never stop the marts.
    let mut late: Vec<Value> = predictions[..3].to_vec();
    for (i, p) in late.iter_mut().enumerate() {
        p["prediction_id"] = Value::from(format!("late_{i}"));
    }
    let six_days_ago = Utc::now() - chrono::Duration::days(6);
    late[0]["prediction_timestamp"] =
        Value::from(six_days_ago.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    late[0]["business_decision"] = Value::Null;
    late[1]["business_decision"] = Value::from("refer");
    if let Some(fields) = late[1].as_object_mut() {
        fields.remove("risk_level");
    }
    late[2]["risk_level"] = Value::from("EXTREME");
    env.push(
        "predictions",
        &late.iter().map(|p| format!("{p}\n")).collect::<String>(),
    );
    ingest_until_queued(&redis, &env, 0, 3);
    predictions.extend(late);
    upload(&env);
    let text = dbt(&emulator, work.path(), &["build"]);
    assert!(text.contains("ERROR=0"), "{text}");
    assert!(!text.contains("WARN=0"), "unknown values warn:\n{text}");
    assert!(
        days_read(
            work.path(),
            "staging/stg_predictions",
            "prediction_timestamp"
        )
        .contains(&six_days_ago.format("%Y-%m-%d").to_string()),
        "the late row's past partition is read again"
    );
    check_marts(&emulator, &predictions, &transactions);
}

/// The prod profile picks its method from the credentials set, as
/// flit-cache reads them, and the location from BIGQUERY_LOCATION. `dbt
/// debug` shows the resolved connection; its connection test fails here
/// (no network, a made-up key), which is not what this checks.
#[test]
fn the_prod_profile_follows_the_credentials_that_are_set() {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbt");
    let work = tempfile::tempdir().expect("tempdir");
    let key = r#"{"type":"service_account","project_id":"p1","private_key_id":"k","private_key":"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n","client_email":"a@p1.iam.gserviceaccount.com","client_id":"1","token_uri":"https://oauth2.googleapis.com/token"}"#;
    let key_file = work.path().join("key.json");
    std::fs::write(&key_file, key).expect("key file");
    let debug = |vars: &[(&str, &str)]| -> String {
        let mut command = Command::new(dbt_bin());
        command
            .args(["debug", "--project-dir"])
            .arg(&project)
            .arg("--profiles-dir")
            .arg(&project)
            .env_remove("DBT_TARGET")
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS_JSON")
            .env("BIGQUERY_PROJECT", "p1")
            .env("NO_GCE_CHECK", "True")
            .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
            .env("DBT_TARGET_PATH", work.path().join("target"))
            .env("DBT_LOG_PATH", work.path().join("logs"));
        for (name, value) in vars {
            command.env(name, value);
        }
        output_text(&command.output().expect("run dbt debug"))
    };
    let json = debug(&[
        ("GOOGLE_APPLICATION_CREDENTIALS_JSON", key),
        ("BIGQUERY_LOCATION", "EU"),
    ]);
    assert!(json.contains("method: service-account-json"), "{json}");
    assert!(json.contains("location: EU"), "{json}");
    assert!(!json.contains("MIIB"), "the key is not printed: {json}");
    let file = debug(&[(
        "GOOGLE_APPLICATION_CREDENTIALS",
        &key_file.display().to_string(),
    )]);
    assert!(
        file.contains("method: service-account\n") || file.contains("method: service-account\r"),
        "{file}"
    );
    assert!(file.contains("location: US"), "{file}");
    let adc = debug(&[]);
    assert!(
        adc.contains("method: oauth"),
        "application default credentials: {adc}"
    );
}
