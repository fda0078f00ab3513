//! Redis over TLS with a CA of one's own: a real `redis-server` speaking
//! only TLS, with a CA, a server certificate and a client certificate made
//! by `openssl` in the test. Without REDIS_CA_FILE the server is refused
//! (its CA is unknown); with it the whole pipeline runs, events in, records
//! stored, rows in the local warehouse, counted exactly. With
//! `--tls-auth-clients yes` a client without FLIT_REDIS_CERT_FILE /
//! FLIT_REDIS_KEY_FILE is refused and one with them works. Wrong files are
//! configuration errors naming the variable and the path, never the contents.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::tls::{TestPki, TlsRedis};
use support::*;

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Runs `monitor --json`: the exit code and the parsed report.
fn monitor(env: &Env) -> (Option<i32>, Value) {
    let out = env.flit(&["monitor", "--json"]);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("monitor --json is not JSON ({e}): {}", output_text(&out)));
    (out.status.code(), report)
}

/// A transaction event, timed now.
fn transaction(id: &str) -> String {
    serde_json::json!({
        "transaction_id": id,
        "customer_id": "cust_tls",
        "amount": 12.5,
        "_timestamp": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
        "customer_credit_score_range": "good",
        "customer_age_bracket": "25-34",
        "device_type": "mobile",
        "product_category": "electronics",
    })
    .to_string()
}

/// The transaction ids of the warehouse's transaction rows.
fn transaction_ids(env: &Env) -> Vec<String> {
    warehouse_rows(env, TX_TABLE)
        .into_iter()
        .map(|(_, row)| {
            let body: Value = match &row["json_body"] {
                Value::String(text) => serde_json::from_str(text).expect("body is JSON"),
                other => other.clone(),
            };
            body["transaction_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// Runs the service over TLS until the upload queues hold these many
/// records, then stops it with SIGTERM, which must succeed.
fn ingest_until_queued(redis: &TlsRedis, env: &Env, transactions: u64, predictions: u64) {
    let mut service = env.service("ingest");
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));
    let mut seen = (0, 0);
    let start = std::time::Instant::now();
    while seen != (transactions, predictions) {
        assert!(
            start.elapsed() < Duration::from_secs(120) && service.is_running(),
            "queues hold {seen:?}, not ({transactions}, {predictions}); service log:\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
        seen = (
            llen(&mut tx, "upload_queue"),
            llen(&mut pred, "upload_queue"),
        );
    }
    assert!(service.terminate().success(), "{}", service.log_text());
    assert!(
        !service.log_text().contains("cannot reach Redis"),
        "{}",
        service.log_text()
    );
}

/// The TLS part of a refusal: the handshake failed on the certificate.
fn assert_refused_by_tls(report: &Value, code: Option<i32>, why: &str) {
    assert_eq!(
        code,
        Some(2),
        "{why}: Redis must be unreachable: {report:#}"
    );
    assert_eq!(report["redis"]["reachable"], false, "{report:#}");
    let error = report["redis"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("rediss://127.0.0.1"),
        "{why}: the error names the server: {error}"
    );
    assert!(
        error.to_lowercase().contains("certificate"),
        "{why}: the error says a certificate was the problem: {error}"
    );
}

#[test]
fn without_the_ca_file_the_server_is_refused_and_with_it_the_whole_pipeline_runs() {
    let pki = TestPki::new();
    let redis = TlsRedis::start(&pki, false);

    // Built-in roots only: the test CA is unknown, nothing gets through.
    let plain = redis.env();
    let (code, report) = monitor(&plain);
    assert_refused_by_tls(&report, code, "without REDIS_CA_FILE");
    let error = report["redis"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("REDIS_CA_FILE"), "the fix is named: {error}");
    let out = plain.flit(&["batch-upload"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UnknownIssuer")
            || String::from_utf8_lossy(&out.stderr).contains("unknown"),
        "{}",
        output_text(&out)
    );
    // Another CA than the one that signed the server: refused too (the CA
    // file replaces the built-in roots, it does not add to them).
    let other = redis.env().set("REDIS_CA_FILE", &path(&pki.other_ca()));
    let (code, report) = monitor(&other);
    assert_refused_by_tls(&report, code, "with another CA");
    let mut conn = redis.conn(0);
    assert_eq!(xlen(&mut conn, "stream:transactions"), 0);

    // With the CA that signed it: generated events of both kinds, and
    // transactions XADDed by a producer of its own, all the way through.
    let env = redis.env().set("REDIS_CA_FILE", &path(&pki.ca()));
    let out = env.flit(&["generate", "--count", "40"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(80 to the streams, 0 spooled)"),
        "nothing spooled: {}",
        output_text(&out)
    );
    let own: Vec<String> = (0..25).map(|n| format!("tls_tx_{n}")).collect();
    for id in &own {
        xadd(
            &mut conn,
            "stream:transactions",
            &[("data", transaction(id).as_bytes())],
        );
    }
    ingest_until_queued(&redis, &env, 65, 40);
    assert_exactly_once_in(&mut redis.conn(0), 0, "tx:", "stream:transactions", 65);
    assert_exactly_once_in(&mut redis.conn(1), 1, "pred:", "stream:predictions", 40);

    let out = env.flit(&["batch-upload", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let ids = transaction_ids(&env);
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 65, "each transaction once");
    assert_eq!(distinct.len(), 65);
    assert!(own.iter().all(|id| distinct.contains(id)), "{ids:?}");
    let predictions = warehouse_rows(&env, PRED_TABLE);
    let distinct: HashSet<&str> = predictions
        .iter()
        .map(|(_, row)| row["prediction_id"].as_str().expect("prediction_id"))
        .collect();
    assert_eq!((predictions.len(), distinct.len()), (40, 40));
    assert!(unuploaded_records(&mut redis.conn(0), "tx").is_empty());
    assert!(unuploaded_records(&mut redis.conn(1), "pred").is_empty());

    // monitor over TLS: reachable, healthy, the queues read.
    let (code, report) = monitor(&env);
    assert_eq!(report["redis"]["reachable"], true, "{report:#}");
    assert_eq!(code, Some(0), "{report:#}");
    let out = env.flit(&["monitor"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rediss://127.0.0.1"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn a_server_that_requires_client_certificates_refuses_one_without_and_takes_one_with() {
    let pki = TestPki::new();
    let redis = TlsRedis::start(&pki, true);

    // The CA alone: the server wants a certificate, the client has none.
    let ca_only = redis.env().set("REDIS_CA_FILE", &path(&pki.ca()));
    let (code, report) = monitor(&ca_only);
    assert_eq!(code, Some(2), "{report:#}");
    let error = report["redis"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("FLIT_REDIS_CERT_FILE") && error.contains("FLIT_REDIS_KEY_FILE"),
        "the error says what to set: {error}"
    );
    let out = ca_only.flit(&["batch-upload"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FLIT_REDIS_CERT_FILE"),
        "{}",
        output_text(&out)
    );
    // A certificate from a CA the server does not trust: refused too.
    let (foreign_cert, foreign_key) = pki.foreign_client();
    let foreign = ca_only
        .set("FLIT_REDIS_CERT_FILE", &path(&foreign_cert))
        .set("FLIT_REDIS_KEY_FILE", &path(&foreign_key));
    let (code, report) = monitor(&foreign);
    assert_eq!(code, Some(2), "{report:#}");
    let error = report["redis"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused the client certificate in FLIT_REDIS_CERT_FILE"),
        "{error}"
    );

    // With the client certificate the server's CA signed: everything works.
    let env = redis
        .env()
        .set("REDIS_CA_FILE", &path(&pki.ca()))
        .set("FLIT_REDIS_CERT_FILE", &path(&pki.client_cert()))
        .set("FLIT_REDIS_KEY_FILE", &path(&pki.client_key()));
    let ids: Vec<String> = (0..30).map(|n| format!("mtls_{n}")).collect();
    let lines: String = ids.iter().map(|id| transaction(id) + "\n").collect();
    let out = env.flit_with_input(&["push", "transactions"], lines.as_bytes());
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(30 to the stream, 0 spooled)"),
        "{}",
        output_text(&out)
    );
    ingest_until_queued(&redis, &env, 30, 0);
    let out = env.flit(&["batch-upload"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let uploaded = transaction_ids(&env);
    let distinct: HashSet<&String> = uploaded.iter().collect();
    assert_eq!((uploaded.len(), distinct.len()), (30, 30));
    assert!(ids.iter().all(|id| distinct.contains(id)));
    let (code, report) = monitor(&env);
    assert_eq!(report["redis"]["reachable"], true, "{report:#}");
    assert_eq!(code, Some(0), "{report:#}");

    // The settings hold the key, but their Debug output never shows it.
    let key = std::fs::read_to_string(pki.client_key()).expect("key");
    let settings = format!("{:?}", env.settings());
    assert!(settings.contains("RedisTls"), "{settings}");
    assert!(!settings.contains("PRIVATE KEY"), "{settings}");
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!settings.contains(line), "key material in {settings}");
    }
}

/// The variables set, the variable the error must name, what it must say.
type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, Vec<&'a str>);

#[test]
fn wrong_tls_files_are_configuration_errors_naming_the_variable_and_never_the_contents() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "SECRET-MARKER-4711";
    let write = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write");
        path(&file)
    };
    let not_pem = write("notes.txt", &format!("password = {secret}\n"));
    let broken = write(
        "broken.pem",
        &format!("-----BEGIN CERTIFICATE-----\n{secret}!!\n-----END CERTIFICATE-----\n"),
    );
    let key_text = std::fs::read_to_string(pki.client_key()).expect("key");
    let key_line = key_text
        .lines()
        .find(|l| !l.starts_with("-----"))
        .expect("a base64 line")
        .to_owned();
    let (ca, cert, key) = (
        path(&pki.ca()),
        path(&pki.client_cert()),
        path(&pki.client_key()),
    );
    let server_key = path(&pki.server_key());
    let missing = path(&dir.path().join("nowhere.pem"));

    let base = |vars: &[(&str, &str)]| {
        let mut env = Env {
            vars: vec![
                ("REDIS_URL".into(), "rediss://127.0.0.1:1".into()),
                ("FLIT_SINK".into(), "local".into()),
            ],
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for (name, value) in vars {
            env = env.set(name, value);
        }
        env
    };
    let cases: Vec<Case> = vec![
        (
            vec![("REDIS_CA_FILE", &not_pem)],
            "REDIS_CA_FILE",
            vec![&not_pem, "not a PEM file"],
        ),
        (
            vec![("REDIS_CA_FILE", &broken)],
            "REDIS_CA_FILE",
            vec![&broken, "not a valid PEM file"],
        ),
        (
            vec![("REDIS_CA_FILE", &key)],
            "REDIS_CA_FILE",
            vec![&key, "holds no certificate"],
        ),
        (
            vec![("REDIS_CA_FILE", &missing)],
            "REDIS_CA_FILE",
            vec![&missing, "does not exist"],
        ),
        (
            vec![("REDIS_CA_FILE", &ca), ("FLIT_REDIS_KEY_FILE", &key)],
            "FLIT_REDIS_KEY_FILE",
            vec!["FLIT_REDIS_CERT_FILE is not", "both or neither"],
        ),
        (
            vec![("FLIT_REDIS_CERT_FILE", &cert)],
            "FLIT_REDIS_CERT_FILE",
            vec!["FLIT_REDIS_KEY_FILE is not", "both or neither"],
        ),
        (
            vec![
                ("FLIT_REDIS_CERT_FILE", &cert),
                ("FLIT_REDIS_KEY_FILE", &cert),
            ],
            "FLIT_REDIS_KEY_FILE",
            vec![&cert, "holds no private key"],
        ),
        (
            vec![
                ("FLIT_REDIS_CERT_FILE", &key),
                ("FLIT_REDIS_KEY_FILE", &key),
            ],
            "FLIT_REDIS_CERT_FILE",
            vec![&key, "holds no certificate"],
        ),
        (
            vec![
                ("FLIT_REDIS_CERT_FILE", &cert),
                ("FLIT_REDIS_KEY_FILE", &server_key),
            ],
            "FLIT_REDIS_KEY_FILE",
            vec![&server_key, "is not the key of the client certificate"],
        ),
        (
            vec![("REDIS_CA_FILE", &key_text)],
            "REDIS_CA_FILE",
            vec!["looks like PEM text itself"],
        ),
        (
            vec![("REDIS_URL", "redis://127.0.0.1:1"), ("REDIS_CA_FILE", &ca)],
            "REDIS_CA_FILE",
            vec!["not a rediss:// URL"],
        ),
        (
            vec![
                ("REDIS_URL", "unix:///tmp/redis.sock"),
                ("FLIT_REDIS_CERT_FILE", &cert),
                ("FLIT_REDIS_KEY_FILE", &key),
            ],
            "FLIT_REDIS_CERT_FILE",
            vec!["not a rediss:// URL"],
        ),
    ];
    for (vars, variable, expected) in cases {
        let env = base(&vars);
        for command in [&["monitor"][..], &["batch-upload"], &["run"]] {
            let out = env.flit(command);
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(
                out.status.code(),
                Some(2),
                "{vars:?} {command:?}: {}",
                output_text(&out)
            );
            assert!(
                stderr.starts_with(&format!("error: {variable}: ")),
                "{vars:?}: names {variable}: {stderr}"
            );
            for part in &expected {
                assert!(stderr.contains(part), "{vars:?}: says {part:?}: {stderr}");
            }
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            for leak in [secret, key_line.as_str(), "PRIVATE KEY-----"] {
                assert!(!stderr.contains(leak), "{vars:?} shows the file: {stderr}");
            }
        }
    }
}
