//! The command line as a user meets it: configuration errors, `push` input
//! errors with line numbers, help, and secrets that never show.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::time::Duration;

use support::*;

#[test]
fn a_wrong_variable_is_one_line_naming_it_and_exit_2() {
    let redis = RedisServer::start();
    for (variable, value, expected) in [
        (
            "REDIS_DB_PREDICTIONS",
            "sixteen",
            "REDIS_DB_PREDICTIONS: expected a whole number from 0 to 15",
        ),
        (
            "REDIS_TTL_SECONDS",
            "-5",
            "REDIS_TTL_SECONDS: expected a whole number",
        ),
        (
            "FLIT_HTTP_ADDR",
            "localhost",
            "FLIT_HTTP_ADDR: expected an address",
        ),
        (
            "FLIT_LOG_FORMAT",
            "yaml",
            "FLIT_LOG_FORMAT: expected human or json",
        ),
        (
            "REDIS_URL",
            "mysql://root:topsecret@db",
            "REDIS_URL: expected a redis://",
        ),
    ] {
        let env = Env::new(&redis).set(variable, value);
        let out = env.flit(&["replay-spool"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{variable}: {}",
            output_text(&out)
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{variable}: {stderr}");
        assert!(!stderr.contains("topsecret"), "password shown: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_taken_http_address_stops_run_with_exit_2() {
    let redis = RedisServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("addr").to_string();
    let out = Env::new(&redis)
        .set("FLIT_HTTP_ADDR", &address)
        .flit(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FLIT_HTTP_ADDR"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn every_command_has_help() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    for command in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["push", "--help"],
        vec!["generate", "--help"],
        vec!["replay-spool", "--help"],
    ] {
        let out = env.flit(&command);
        assert!(out.status.success(), "{command:?}: {}", output_text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{command:?}"
        );
    }
}

#[test]
fn push_sends_good_lines_and_names_each_bad_line() {
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_MAX_EVENT_BYTES", "2048");
    let long_line = format!(
        r#"{{"prediction_id":"p_long","pad":"{}"}}"#,
        "x".repeat(5000)
    );
    let input = [
        r#"{"prediction_id":"p1","selected_prediction":0.1}"#,
        "",
        "{broken",
        r#"{"prediction_id":"p2"}"#,
        &long_line,
        r#"{"selected_prediction":0.3}"#,
        r#"{"prediction_id":"p3","prediction_timestamp":"2025-09-27T14:30:00Z"}"#,
    ]
    .join("\n");
    let out = env.flit_with_input(&["push", "predictions", "-"], input.as_bytes());
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3: invalid_json: not valid JSON"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 5: too_large: event is 5035 bytes"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 6: missing_id: `prediction_id` is missing"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pushed 3 predictions events"),
        "{}",
        output_text(&out)
    );
    let mut conn = redis.conn(1);
    assert_eq!(
        xlen(&mut conn, "stream:predictions"),
        3,
        "exactly the good lines"
    );

    let file = env.dir.path().join("events.ndjson");
    std::fs::write(&file, r#"{"transaction_id":"from_file","amount":5}"#).expect("write");
    let out = env.flit(&["push", "transactions", &path_str(&file)]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(xlen(&mut redis.conn(0), "stream:transactions"), 1);

    let out = env.flit(&["push", "transactions", "/no/such/file.ndjson"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.ndjson"));
}

#[test]
fn the_redis_password_never_appears_in_logs_or_answers() {
    const PASSWORD: &str = "pw-7d1c0ffee";
    let redis = RedisServer::builder().password(PASSWORD).start();
    let env = Env::new(&redis).set("RUST_LOG", "debug");
    let out = env.flit(&["generate", "--count", "200"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let mut service = env.service("run");
    let mut conn = redis.conn(1);
    wait_until(Duration::from_secs(60), "ingest with AUTH", || {
        llen(&mut conn, "upload_queue") == 200
    });

    // A wrong password: the service keeps running, reports not ready, and
    // shows neither password.
    let wrong = Env::new(&redis).set(
        "REDIS_URL",
        &format!("redis://:wrong-{PASSWORD}@127.0.0.1:{}", redis.port),
    );
    let denied = wrong.service("denied");
    wait_until(Duration::from_secs(30), "readyz answers", || {
        denied.get("/readyz").is_some()
    });
    let (status, body) = denied.get("/readyz").expect("answer");
    assert_eq!(status, 503, "{body}");
    std::thread::sleep(Duration::from_millis(500));

    assert!(service.terminate().success());
    for text in [
        service.log_text(),
        denied.log_text(),
        body,
        output_text(&out),
    ] {
        assert!(!text.contains(PASSWORD), "password leaked: {text}");
    }
    assert!(
        service.log_text().contains("redis://:***@127.0.0.1"),
        "the redacted URL is logged"
    );
}

#[test]
fn a_missing_credentials_file_is_named_and_the_upload_cannot_start() {
    let redis = RedisServer::start();
    let env = Env::new(&redis)
        .set("BIGQUERY_PROJECT", "some-project")
        .set("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json");
    for command in [&["batch-upload"][..], &["init"][..]] {
        let out = env.flit(command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command:?}: {}",
            output_text(&out)
        );
        assert!(
            stderr.contains("GOOGLE_APPLICATION_CREDENTIALS")
                && stderr.contains("/nonexistent/key.json"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn a_broken_key_in_a_variable_is_named_and_its_text_never_shown() {
    let redis = RedisServer::start();
    let env = Env::new(&redis)
        .set("BIGQUERY_PROJECT", "some-project")
        .set(
            "GOOGLE_APPLICATION_CREDENTIALS_JSON",
            r#"{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----s3cr3tmaterial"#,
        );
    let out = env.flit(&["batch-upload"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("GOOGLE_APPLICATION_CREDENTIALS_JSON"),
        "{text}"
    );
    assert!(!text.contains("s3cr3tmaterial"), "{text}");
}

/// In the image (FLIT_SINK_REQUIRED, set by the Dockerfile) no upload starts
/// until FLIT_SINK says where rows go; records wait, ingest runs on.
#[test]
fn in_the_image_an_upload_refuses_to_start_until_flit_sink_is_set() {
    let dockerfile = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"),
    )
    .expect("Dockerfile");
    assert!(
        dockerfile.contains("FLIT_SINK_REQUIRED=1"),
        "the image is marked"
    );
    assert!(
        !dockerfile.contains("FLIT_SINK="),
        "the image sets no sink itself"
    );

    let redis = RedisServer::start();
    let image = Env::new(&redis).set("FLIT_SINK_REQUIRED", "1");
    ingest_generated(&redis, &image, 10);
    let out = image.flit(&["batch-upload"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("FLIT_SINK is not set"), "{text}");
    assert_eq!(llen(&mut redis.conn(1), "upload_queue"), 10, "records wait");

    // A project alone does not choose for the image either.
    let with_project = image.set("BIGQUERY_PROJECT", "some-project");
    let out = with_project.flit(&["batch-upload"]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("FLIT_SINK is not set"));
    assert_eq!(llen(&mut redis.conn(1), "upload_queue"), 10, "records wait");

    let chosen = with_project.set("FLIT_SINK", "local");
    let out = chosen.flit(&["batch-upload"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("upload sink"), "the sink is named: {text}");
    assert_eq!(llen(&mut redis.conn(1), "upload_queue"), 0);
}
