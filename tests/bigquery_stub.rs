//! BigQuery behaviour the emulator cannot show, scripted in a stub HTTP
//! server that answers as BigQuery documents: jobs found by the id the
//! client chose (and 404 for one never created), a 503 after the rows were
//! in fact committed, a non-retryable 400, load jobs that fail because of
//! some rows (with the rows' positions in `errors[]`, or without), quota
//! errors, and insertAll partial success (`invalid` rows with the other rows
//! of the request `stopped`). The stub keeps the rows it "committed", so
//! each test counts what reached the warehouse.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use support::*;

/// What the stub does with the next load-job upload.
#[derive(Clone, Copy)]
enum Upload {
    /// Commits the rows and answers with a DONE job.
    Commit,
    /// Commits the rows, then answers 503 as if the call had failed.
    CommitThen503,
    /// Answers with this error status and reason, committing nothing.
    Fail(u16, &'static str),
}

#[derive(Default)]
struct Stub {
    uploads: VecDeque<Upload>,
    /// Jobs that exist before the test (an earlier process made them): a
    /// GET of a job id ending so answers DONE, with this error reason if any.
    existing_jobs: Vec<(&'static str, Option<&'static str>)>,
    /// Jobs created here, with their status.
    jobs: HashMap<String, Value>,
    /// Load jobs fail (DONE, reason invalid) while they hold a row whose
    /// prediction_id starts with this; `poison_positions` says whether the
    /// job's errors name those rows by position, as BigQuery's do.
    poison_prefix: Option<&'static str>,
    poison_positions: bool,
    /// Load jobs fail with this reason (quotaExceeded...), committing nothing.
    jobs_fail_with: Option<&'static str>,
    /// Uploads holding a row whose prediction_id starts with this get 503
    /// backendError, committing nothing (a batch that keeps failing).
    stuck_prefix: Option<&'static str>,
    /// Every upload waits this long first (so a test can kill the client mid-run).
    delay_ms: u64,
    /// The next insertAll commits only its first half, then answers 503.
    insert_half_then_503: bool,
    /// The `raw` column of streamed rows, with their ingestion time.
    streamed_raw: Vec<(String, String)>,
    /// insertAll requests still to answer with a rejected first row.
    reject_first_insert: bool,
    job_ids_seen: Vec<String>,
    queries: usize,
    /// Committed rows: (_ingestion_timestamp, insertId or id).
    rows: Vec<(String, String)>,
    /// Ids of the rows committed by load jobs.
    loaded: Vec<String>,
    insert_ids: HashMap<String, usize>,
}

type Shared = Arc<Mutex<Stub>>;

fn done_status(error: Option<&str>) -> Value {
    let mut status = json!({"state": "DONE"});
    if let Some(reason) = error {
        status["errorResult"] = json!({"reason": reason, "message": "load failed"});
    }
    status
}

fn done_job(project: &str, job_id: &str, error: Option<&str>) -> Value {
    done(project, job_id, done_status(error))
}

fn done(project: &str, job_id: &str, status: Value) -> Value {
    json!({"kind": "bigquery#job", "id": format!("{project}:US.{job_id}"),
        "jobReference": {"projectId": project, "jobId": job_id, "location": "US"}, "status": status})
}

async fn create_dataset(Path(project): Path<String>) -> Response {
    bigquery_error(
        409,
        "duplicate",
        &format!("Already Exists: Dataset {project}"),
    )
}

/// The table as flit-cache created it: the schema from schemas/, with the
/// legacy type names BigQuery answers with.
async fn get_table(Path((project, dataset, table)): Path<(String, String, String)>) -> Response {
    let schema = match table.as_str() {
        "raw_bnpl_txs_json" => include_str!("../schemas/raw_bnpl_txs_json.json"),
        _ => include_str!("../schemas/raw_bnpl_prediction_logs.json"),
    }
    .replace("\"FLOAT64\"", "\"FLOAT\"");
    let fields: Value = serde_json::from_str(&schema).unwrap_or(Value::Null);
    axum::Json(
        json!({"kind": "bigquery#table", "id": format!("{project}:{dataset}.{table}"),
        "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
        "schema": {"fields": fields}, "timePartitioning": {"type": "DAY"}}),
    )
    .into_response()
}

/// The multipart body: a JSON job configuration, then NDJSON rows.
async fn upload(State(stub): State<Shared>, Path(project): Path<String>, body: String) -> Response {
    let (config, data) = load_job_parts(&body);
    let job_id = config["jobReference"]["jobId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Each row with the byte position it starts at, as BigQuery names rows.
    let mut position = 0;
    let mut rows: Vec<(usize, String, String)> = Vec::new();
    for line in data.split('\n') {
        if let Ok(row) = serde_json::from_str::<Value>(line) {
            rows.push((
                position,
                row["_ingestion_timestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                row["prediction_id"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        position += line.len() + 1;
    }
    let delay = stub.lock().expect("stub").delay_ms;
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let mut stub = stub.lock().expect("stub");
    stub.job_ids_seen.push(job_id.clone());
    if let Some(prefix) = stub.stuck_prefix
        && rows.iter().any(|(_, _, id)| id.starts_with(prefix))
    {
        return bigquery_error(503, "backendError", "Backend error. Please try again.");
    }
    if stub.jobs.contains_key(&job_id) {
        return bigquery_error(
            409,
            "duplicate",
            &format!("Already Exists: Job {project}:US.{job_id}"),
        );
    }
    if let Some(reason) = stub.jobs_fail_with {
        let status = json!({"state": "DONE", "errorResult": {"reason": reason,
            "message": "Quota exceeded: Your table exceeded quota for imports or query appends per table."}});
        stub.jobs.insert(job_id.clone(), status.clone());
        return axum::Json(done(&project, &job_id, status)).into_response();
    }
    if let Some(prefix) = stub.poison_prefix {
        let poisoned: Vec<usize> = rows
            .iter()
            .filter(|(_, _, id)| id.starts_with(prefix))
            .map(|(at, _, _)| *at)
            .collect();
        if !poisoned.is_empty() {
            let summary = format!(
                "Error while reading data, error message: JSON table encountered too many errors, giving up. Rows: {}; errors: {}. Please look into the errors[] collection for more details.",
                poisoned.len(),
                poisoned.len()
            );
            let mut errors = vec![json!({"reason": "invalid", "message": summary})];
            for at in poisoned {
                let message = if stub.poison_positions {
                    format!(
                        "Error while reading data, error message: JSON parsing error in row starting at position {at}: Could not convert value to double."
                    )
                } else {
                    "Error while reading data, error message: Could not convert value to double."
                        .to_owned()
                };
                errors.push(json!({"reason": "invalid", "location": "query", "message": message}));
            }
            let status = json!({"state": "DONE", "errorResult": {"reason": "invalid", "message": summary}, "errors": errors});
            stub.jobs.insert(job_id.clone(), status.clone());
            return axum::Json(done(&project, &job_id, status)).into_response();
        }
    }
    let rows: Vec<(String, String)> = rows.into_iter().map(|(_, at, id)| (at, id)).collect();
    match stub.uploads.pop_front().unwrap_or(Upload::Commit) {
        Upload::Commit => {
            stub.jobs.insert(job_id.clone(), done_status(None));
            stub.loaded.extend(rows.iter().map(|(_, id)| id.clone()));
            stub.rows.extend(rows);
            axum::Json(done_job(&project, &job_id, None)).into_response()
        }
        Upload::CommitThen503 => {
            stub.jobs.insert(job_id.clone(), done_status(None));
            stub.rows.extend(rows);
            bigquery_error(503, "backendError", "Backend error. Please try again.")
        }
        Upload::Fail(status, reason) => bigquery_error(
            status,
            reason,
            "Error while reading data, error message: JSON table encountered too many errors",
        ),
    }
}

async fn get_job(
    State(stub): State<Shared>,
    Path((project, job_id)): Path<(String, String)>,
) -> Response {
    let stub = stub.lock().expect("stub");
    if let Some(status) = stub.jobs.get(&job_id) {
        return axum::Json(done(&project, &job_id, status.clone())).into_response();
    }
    match stub
        .existing_jobs
        .iter()
        .find(|(suffix, _)| job_id.ends_with(suffix))
    {
        Some((_, error)) => axum::Json(done_job(&project, &job_id, *error)).into_response(),
        None => bigquery_error(
            404,
            "notFound",
            &format!("Not found: Job {project}:US.{job_id}"),
        ),
    }
}

/// Answers the uploader's "is this batch in already?" count by ingestion time.
async fn query(State(stub): State<Shared>, body: axum::body::Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let sql = request["query"].as_str().unwrap_or_default();
    let ingested = sql
        .split("_ingestion_timestamp = TIMESTAMP '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap_or_default();
    let mut stub = stub.lock().expect("stub");
    stub.queries += 1;
    if sql.contains("TO_JSON_STRING(raw)") {
        let rows: Vec<Value> = stub
            .streamed_raw
            .iter()
            .filter(|(at, _)| at == ingested)
            .map(|(_, raw)| json!({"f": [{"v": raw}]}))
            .collect();
        return axum::Json(
            json!({"kind": "bigquery#queryResponse", "jobComplete": true,
            "totalRows": rows.len().to_string(),
            "schema": {"fields": [{"name": "f0_", "type": "STRING"}]}, "rows": rows}),
        )
        .into_response();
    }
    let count = stub.rows.iter().filter(|(at, _)| at == ingested).count();
    axum::Json(json!({"kind": "bigquery#queryResponse", "jobComplete": true, "totalRows": "1",
        "schema": {"fields": [{"name": "f0_", "type": "INTEGER"}]}, "rows": [{"f": [{"v": count.to_string()}]}]}))
    .into_response()
}

/// insertAll as BigQuery does it with skipInvalidRows=false: one invalid row
/// fails the request, and every other row is reported `stopped`.
async fn insert_all(
    State(stub): State<Shared>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // BigQuery takes gzip-encoded request bodies; the client sends insertAll that way.
    let body = match headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        Some("gzip") => {
            let mut plain = Vec::new();
            let _ = std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&body[..]),
                &mut plain,
            );
            plain
        }
        _ => body.to_vec(),
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        eprintln!("stub: unreadable insertAll request, headers {headers:?}");
        return bigquery_error(400, "invalid", "unreadable request");
    };
    let rows = request["rows"].as_array().cloned().unwrap_or_default();
    let mut stub = stub.lock().expect("stub");
    if stub.reject_first_insert && !rows.is_empty() {
        stub.reject_first_insert = false;
        let errors: Vec<Value> = (0..rows.len())
            .map(|i| match i {
                0 => json!({"index": 0, "errors": [{"reason": "invalid", "location": "selected_prediction", "message": "Cannot convert value to floating point."}]}),
                i => json!({"index": i, "errors": [{"reason": "stopped", "message": ""}]}),
            })
            .collect();
        return axum::Json(
            json!({"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": errors}),
        )
        .into_response();
    }
    let half = std::mem::take(&mut stub.insert_half_then_503);
    let take = if half { rows.len() / 2 } else { rows.len() };
    for row in rows.into_iter().take(take) {
        let id = row["insertId"].as_str().unwrap_or_default().to_owned();
        *stub.insert_ids.entry(id).or_default() += 1;
        let at = row["json"]["_ingestion_timestamp"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // insertAll takes a JSON column as JSON text.
        let raw = row["json"]["raw"].as_str().unwrap_or_default().to_owned();
        stub.streamed_raw.push((at.clone(), raw));
        let prediction_id = row["json"]["prediction_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        stub.rows.push((at, prediction_id));
    }
    if half {
        return bigquery_error(503, "backendError", "Backend error. Please try again.");
    }
    axum::Json(json!({"kind": "bigquery#tableDataInsertAllResponse"})).into_response()
}

/// Starts the stub on a free port in a thread of its own.
fn start_stub(stub: Stub) -> (u16, Shared) {
    let shared: Shared = Arc::new(Mutex::new(stub));
    let app = Router::new()
        .route(
            "/bigquery/v2/projects/{project}/datasets",
            post(create_dataset),
        )
        .route(
            "/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}",
            get(get_table),
        )
        .route("/upload/bigquery/v2/projects/{project}/jobs", post(upload))
        .route("/bigquery/v2/projects/{project}/jobs/{job}", get(get_job))
        .route("/bigquery/v2/projects/{project}/queries", post(query))
        .route(
            "/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}/insertAll",
            post(insert_all),
        )
        .with_state(shared.clone());
    let port = serve_http(app);
    (port, shared)
}

const N: usize = 50;

/// N predictions waiting in Redis, and an environment pointed at the stub.
fn setup(stub: Stub) -> (RedisServer, Env, Shared) {
    setup_with(stub, &[], &[])
}

/// N generated predictions, then one per id in `ids` (pushed in that order),
/// waiting in Redis; `vars` added to the environment.
fn setup_with(stub: Stub, ids: &[&str], vars: &[(&str, &str)]) -> (RedisServer, Env, Shared) {
    let redis = RedisServer::start();
    let (port, shared) = start_stub(stub);
    let mut env = Env::new(&redis)
        .set("BIGQUERY_PROJECT", "stub-project")
        .set("BIGQUERY_API_URL", &format!("http://127.0.0.1:{port}"))
        .set("FLIT_UPLOAD_RETRY_MIN_MS", "20");
    for (name, value) in vars {
        env = env.set(name, value);
    }
    env.generate(&["--count", &N.to_string(), "--kind", "predictions"]);
    if !ids.is_empty() {
        env.push("predictions", &prediction_lines(ids, 0.1));
    }
    ingest_until_queued(&redis, &env, 0, (N + ids.len()) as u64);
    (redis, env, shared)
}

fn prediction_lines(ids: &[&str], score: f64) -> String {
    ids.iter()
        .map(|id| {
            format!(r#"{{"prediction_id":"{id}","selected_prediction":{score},"prediction_timestamp":"2026-11-20T10:00:00Z"}}"#)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Dead letters of predictions: (reason code, reason, data).
fn prediction_dead_letters(redis: &RedisServer) -> Vec<(String, String, String)> {
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("stream:predictions:dead")
        .arg("-")
        .arg("+")
        .query(&mut redis.conn(1))
        .expect("xrange");
    dead.into_iter()
        .map(|(_, f)| {
            (
                f["reason_code"].clone(),
                f["reason"].clone(),
                f["data"].clone(),
            )
        })
        .collect()
}

/// Rows the stub committed, per prediction id.
fn committed(stub: &Shared) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, id) in &stub.lock().expect("stub").rows {
        *counts.entry(id.clone()).or_default() += 1;
    }
    counts
}

fn upload_predictions(env: &Env) -> (Option<i32>, Value, String) {
    let out = env.flit(&["batch-upload", "--json", "--only", "predictions"]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        output_text(&out),
    )
}

#[test]
fn a_job_id_already_used_is_found_first_and_that_jobs_status_decides() {
    // The job already exists and succeeded: nothing is sent again.
    let (redis, env, stub) = setup(Stub {
        existing_jobs: vec![("_0", None)],
        ..Stub::default()
    });
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["tables"][0]["rows_uploaded"], N as u64, "{text}");
    assert_eq!(
        stub.lock().expect("stub").rows.len(),
        0,
        "the committed job is not loaded twice"
    );
    assert_eq!(llen(&mut redis.conn(1), "upload_queue"), 0);

    // Jobs with those ids had failed (retryably): the batch goes again
    // under the next free id, however many were used.
    let (redis, env, stub) = setup(Stub {
        existing_jobs: (0..12)
            .map(|n| -> (&'static str, Option<&'static str>) {
                (
                    Box::leak(format!("_{n}").into_boxed_str()),
                    Some("backendError"),
                )
            })
            .collect(),
        ..Stub::default()
    });
    let (code, _, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    let stub = stub.lock().expect("stub");
    assert_eq!(stub.rows.len(), N, "loaded once");
    assert_eq!(
        stub.job_ids_seen.len(),
        1,
        "one upload: {:?}",
        stub.job_ids_seen
    );
    assert!(
        stub.job_ids_seen[0].ends_with("_12"),
        "{:?}",
        stub.job_ids_seen
    );
    assert_eq!(llen(&mut redis.conn(1), "upload_queue"), 0);
}

#[test]
fn a_503_is_retried_and_the_retry_finds_rows_that_were_committed_anyway() {
    let (redis, env, stub) = setup(Stub {
        uploads: VecDeque::from([Upload::CommitThen503]),
        ..Stub::default()
    });
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["tables"][0]["attempts"], 2, "{text}");
    let stub = stub.lock().expect("stub");
    assert_eq!(stub.queries, 1, "the retry looked before sending again");
    assert_eq!(stub.rows.len(), N, "rows committed once, not twice");
    assert_eq!(llen(&mut redis.conn(1), "upload_queue"), 0);
}

#[test]
fn a_400_fails_fast_with_bigquerys_message_and_keeps_the_records() {
    let (redis, env, stub) = setup(Stub {
        uploads: VecDeque::from([Upload::Fail(400, "invalid")]),
        ..Stub::default()
    });
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(1), "{text}");
    let table = &report["tables"][0];
    assert_eq!(table["attempts"], 1, "not retried: {text}");
    assert_eq!(table["kept_for_retry"], N as u64, "{text}");
    assert!(
        table["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("400 invalid: Error while reading data")),
        "{text}"
    );
    assert_eq!(stub.lock().expect("stub").job_ids_seen.len(), 1);
    assert_eq!(table["batches_parked"], 1, "{text}");
    let mut conn = redis.conn(1);
    assert_eq!(
        llen(&mut conn, "upload_queue"),
        0,
        "parked: out of the queue"
    );
    assert_eq!(
        unuploaded_records(&mut conn, "pred").len(),
        N,
        "records wait for the next run"
    );

    // The next run (BigQuery healthy again) takes them, under the same batch.
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["tables"][0]["parked_waiting"], 0, "{text}");
    assert_eq!(stub.lock().expect("stub").rows.len(), N);
    assert!(unuploaded_records(&mut conn, "pred").is_empty());
    assert!(
        keys(&mut conn, "flit:upload:parked*").is_empty(),
        "nothing parked is left"
    );
}

#[test]
fn insert_errors_dead_letter_the_invalid_row_and_resend_the_stopped_ones() {
    let (redis, env, stub) = setup(Stub {
        reject_first_insert: true,
        ..Stub::default()
    });
    let env = env.set("FLIT_BQ_WRITE_MODE", "stream");
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    let table = &report["tables"][0];
    assert_eq!(table["rows_uploaded"], (N - 1) as u64, "{text}");
    assert_eq!(table["dead_lettered"], 1, "{text}");
    let stub = stub.lock().expect("stub");
    assert_eq!(stub.rows.len(), N - 1, "every stopped row sent again, once");
    assert!(
        stub.insert_ids.values().all(|n| *n == 1),
        "one insertId per record version, each sent once"
    );
    let mut conn = redis.conn(1);
    assert_eq!(llen(&mut conn, "upload_queue"), 0);
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("stream:predictions:dead")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("xrange");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].1["reason"].contains("Cannot convert value to floating point"),
        "{:?}",
        dead[0].1
    );
}

#[test]
fn stream_mode_loads_rows_outside_the_streaming_window_by_job() {
    let redis = RedisServer::start();
    let (port, stub) = start_stub(Stub::default());
    let env = Env::new(&redis)
        .set("BIGQUERY_PROJECT", "stub-project")
        .set("BIGQUERY_API_URL", &format!("http://127.0.0.1:{port}"))
        .set("FLIT_BQ_WRITE_MODE", "stream");
    env.generate(&["--count", &N.to_string(), "--kind", "predictions"]);
    // A backfill from 2015: BigQuery streams nothing older than five years.
    let old: Vec<String> = (0..5).map(|i| format!("p_2015_{i}")).collect();
    let lines: Vec<String> = old
        .iter()
        .map(|id| {
            format!(r#"{{"prediction_id":"{id}","prediction_timestamp":"2015-06-01T00:00:00Z"}}"#)
        })
        .collect();
    env.push("predictions", &lines.join("\n"));
    ingest_until_queued(&redis, &env, 0, (N + old.len()) as u64);
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["tables"][0]["rows_uploaded"], (N + old.len()) as u64);
    let stub = stub.lock().expect("stub");
    let mut loaded = stub.loaded.clone();
    loaded.sort();
    assert_eq!(loaded, old, "the old rows went by load job");
    assert_eq!(stub.insert_ids.len(), N, "the recent ones were streamed");
    assert!(old.iter().all(|id| !stub.insert_ids.contains_key(id)));
    assert!(
        stub.job_ids_seen
            .iter()
            .all(|j| j.contains("_outside_streaming_window"))
    );
}

#[test]
fn rows_a_load_job_names_are_dead_lettered_and_the_rest_loads_in_the_same_run() {
    let poison = ["poison_1", "poison_2", "poison_3"];
    let (redis, env, stub) = setup_with(
        Stub {
            poison_prefix: Some("poison_"),
            poison_positions: true,
            ..Stub::default()
        },
        &poison,
        &[],
    );
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "the table is not stuck: {text}");
    let table = &report["tables"][0];
    assert_eq!(table["rows_uploaded"], N as u64, "{text}");
    assert_eq!(table["dead_lettered"], 3, "{text}");
    let rows = committed(&stub);
    assert_eq!(rows.len(), N, "every good row, once");
    assert!(rows.values().all(|n| *n == 1));
    assert!(poison.iter().all(|id| !rows.contains_key(*id)));
    assert_eq!(
        stub.lock().expect("stub").job_ids_seen.len(),
        2,
        "named rows cost one more job, no splitting"
    );
    let dead = prediction_dead_letters(&redis);
    assert_eq!(dead.len(), 3);
    assert!(
        dead.iter()
            .all(|(code, reason, _)| code == "refused_by_warehouse"
                && reason.contains("row starting at position")
                && reason.contains("Could not convert value to double"))
    );
    assert_eq!(llen(&mut redis.conn(1), "upload_queue"), 0);
    assert!(unuploaded_records(&mut redis.conn(1), "pred").is_empty());
}

#[test]
fn rows_no_error_names_are_found_by_halving_within_a_few_jobs() {
    let (redis, env, stub) = setup_with(
        Stub {
            poison_prefix: Some("poison_"),
            poison_positions: false,
            ..Stub::default()
        },
        &["poison_x"],
        &[],
    );
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["tables"][0]["rows_uploaded"], N as u64, "{text}");
    assert_eq!(report["tables"][0]["dead_lettered"], 1, "{text}");
    let rows = committed(&stub);
    assert_eq!(rows.len(), N);
    assert!(rows.values().all(|n| *n == 1), "nothing loaded twice");
    let jobs = stub.lock().expect("stub").job_ids_seen.len();
    println!("{jobs} load jobs isolated one bad row among {}", N + 1);
    assert!(jobs <= 2 * 6 + 1, "about 2 log2(n) jobs, not n: {jobs}");
    let dead = prediction_dead_letters(&redis);
    assert_eq!(dead.len(), 1);
    assert!(dead[0].2.contains("poison_x"));
}

#[test]
fn an_upload_killed_while_isolating_rows_and_rerun_loads_every_good_row_once() {
    let poison = ["poison_a", "poison_b"];
    let (redis, env, stub) = setup_with(
        Stub {
            poison_prefix: Some("poison_"),
            poison_positions: false,
            delay_ms: 150,
            ..Stub::default()
        },
        &poison,
        &[
            ("FLIT_UPLOAD_BATCH_ROWS", "20"),
            ("FLIT_UPLOAD_LOCK_TTL_MS", "600"),
        ],
    );
    let mut kills = 0;
    for round in 0..40 {
        let mut child = env.spawn(&["batch-upload", "--only", "predictions"]);
        std::thread::sleep(std::time::Duration::from_millis(100 + 37 * (round % 7)));
        match child.try_wait().expect("wait") {
            Some(status) if status.code() == Some(0) => break,
            Some(_) => continue,
            None => {
                child.kill().expect("kill -9");
                let _ = child.wait();
                kills += 1;
                // The dead run's lock expires.
                std::thread::sleep(std::time::Duration::from_millis(700));
            }
        }
    }
    // The last run holds a long lock: a late renewal on a busy machine
    // would fence it (as it should), which is not what this test checks.
    let env = env.set("FLIT_UPLOAD_LOCK_TTL_MS", "30000");
    let (code, _, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert!(kills >= 3, "killed mid-run several times: {kills}");
    let rows = committed(&stub);
    assert_eq!(rows.len(), N, "every good row");
    assert!(rows.values().all(|n| *n == 1), "none twice: {rows:?}");
    let dead = prediction_dead_letters(&redis);
    assert_eq!(dead.len(), 2, "each bad row dead-lettered once");
    assert_eq!(llen(&mut redis.conn(1), "upload_queue"), 0);
    assert!(
        keys(&mut redis.conn(1), "flit:upload:*")
            .iter()
            .all(|k| k.starts_with("flit:upload:load_jobs"))
    );
}

#[test]
fn a_quota_sets_the_table_aside_without_splitting_or_giving_up_anything() {
    let (redis, env, stub) = setup(Stub {
        jobs_fail_with: Some("quotaExceeded"),
        ..Stub::default()
    });
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(1), "{text}");
    let table = &report["tables"][0];
    assert!(
        table["set_aside"]
            .as_str()
            .is_some_and(|s| s.contains("quotaExceeded")),
        "{text}"
    );
    assert_eq!(table["dead_lettered"], 0, "no row is blamed for a quota");
    assert_eq!(table["attempts"], 1, "not retried, not split: {text}");
    assert_eq!(stub.lock().expect("stub").job_ids_seen.len(), 1);
    assert_eq!(
        unuploaded_records(&mut redis.conn(1), "pred").len(),
        N,
        "every record kept"
    );
    let out = env.flit(&["monitor", "--json"]);
    let health: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        health["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .any(|a| a["code"] == "table_set_aside"),
        "{health}"
    );

    // Quota back the next day: everything loads, once.
    stub.lock().expect("stub").jobs_fail_with = None;
    let (code, _, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(committed(&stub).len(), N);
    assert!(unuploaded_records(&mut redis.conn(1), "pred").is_empty());
}

#[test]
fn the_daily_load_job_budget_sets_the_table_aside_when_spent() {
    let (redis, env, stub) = setup_with(
        Stub::default(),
        &[],
        &[
            ("FLIT_UPLOAD_BATCH_ROWS", "10"),
            ("FLIT_LOAD_JOBS_PER_DAY", "2"),
        ],
    );
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(1), "{text}");
    let table = &report["tables"][0];
    assert_eq!(table["rows_uploaded"], 20, "two jobs of ten rows: {text}");
    assert!(
        table["set_aside"]
            .as_str()
            .is_some_and(|s| s.contains("FLIT_LOAD_JOBS_PER_DAY")),
        "{text}"
    );
    assert_eq!(stub.lock().expect("stub").job_ids_seen.len(), 2);
    let mut conn = redis.conn(1);
    assert_eq!(
        unuploaded_records(&mut conn, "pred").len(),
        N - 20,
        "the rest waits"
    );
    let used: u64 = redis::cmd("ZCARD")
        .arg("flit:upload:load_jobs:predictions")
        .query(&mut conn)
        .expect("jobs");
    assert_eq!(used, 2, "two jobs; the one refused is not counted");
    // A second run within the 24 hours starts no job.
    let (code, _, text) = upload_predictions(&env);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(stub.lock().expect("stub").job_ids_seen.len(), 2);
}

#[test]
fn a_batch_that_keeps_failing_is_parked_and_the_queue_behind_it_goes_on() {
    let (redis, env, stub) = setup_with(
        Stub {
            stuck_prefix: Some("stuck_"),
            ..Stub::default()
        },
        &["stuck_1"],
        &[("FLIT_UPLOAD_BATCH_ROWS", "10")],
    );
    // stuck_1 was pushed last: its batch is the last one; put it first.
    let mut conn = redis.conn(1);
    let _: () = redis::pipe()
        .cmd("LREM")
        .arg("upload_queue")
        .arg(1)
        .arg("pred:stuck_1")
        .ignore()
        .cmd("LPUSH")
        .arg("upload_queue")
        .arg("pred:stuck_1")
        .ignore()
        .query(&mut conn)
        .expect("reorder");
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(1), "{text}");
    let table = &report["tables"][0];
    assert_eq!(table["batches_parked"], 1, "{text}");
    assert_eq!(
        table["rows_uploaded"],
        (N + 1 - 10) as u64,
        "every batch behind it: {text}"
    );
    assert_eq!(table["kept_for_retry"], 10, "{text}");
    assert_eq!(llen(&mut conn, "upload_queue"), 0);

    // While it waits parked, stuck_1 comes back with new content.
    env.push("predictions", &prediction_lines(&["stuck_1"], 0.9));
    ingest_until_queued(&redis, &env, 0, 1);

    // Runs keep failing both. A parked batch that fails again ends only the
    // retries of parked batches: the queue behind them is still tried (the
    // new version is taken and parked too), and the parked batch that failed
    // least goes first, so neither keeps the other from its turn.
    for _ in 0..3 {
        let (code, _, text) = upload_predictions(&env);
        assert_eq!(code, Some(1), "{text}");
    }
    assert_eq!(llen(&mut conn, "upload_queue"), 0, "the queue was tried");
    let out = env.flit(&["monitor", "--json"]);
    let health: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        health["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .any(|a| a["code"] == "batch_failures_repeating"),
        "{health}"
    );
    let parked = &health["kinds"][1]["queue"]["parked"];
    assert_eq!(parked[0]["failures"], 3, "{health}");
    assert_eq!(parked[1]["failures"], 2, "its turn came too: {health}");

    // The warehouse takes it at last: each version exactly once.
    stub.lock().expect("stub").stuck_prefix = None;
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["tables"][0]["parked_waiting"], 0);
    let rows = committed(&stub);
    assert_eq!(rows["stuck_1"], 2, "both versions, once each");
    assert_eq!(rows.len(), N + 1);
    assert!(rows.iter().all(|(id, n)| *n == 1 || id == "stuck_1"));
    assert!(
        unuploaded_records(&mut conn, "pred").is_empty() && keys(&mut conn, "pred@*").is_empty(),
        "nothing left behind"
    );
    assert!(keys(&mut conn, "flit:upload:parked*").is_empty());
    assert_eq!(llen(&mut conn, "upload_queue"), 0);
}

#[test]
fn sigterm_stops_batch_upload_in_a_retry_pause_and_keeps_the_batch() {
    let (redis, env, stub) = setup_with(
        Stub {
            stuck_prefix: Some("pred_"),
            ..Stub::default()
        },
        &[],
        &[("FLIT_UPLOAD_RETRY_MIN_MS", "60000")],
    );
    let child = env.spawn(&["batch-upload", "--only", "predictions", "--json"]);
    wait_until(
        std::time::Duration::from_secs(30),
        "a first attempt",
        || !stub.lock().expect("stub").job_ids_seen.is_empty(),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().expect("wait");
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "stopped in the pause, not after it: {took:?}"
    );
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_eq!(
        unuploaded_records(&mut redis.conn(1), "pred").len(),
        N,
        "the batch is kept"
    );
    stub.lock().expect("stub").stuck_prefix = None;
    let (code, _, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(committed(&stub).len(), N);
}

#[test]
fn stream_mode_looks_before_resending_and_sends_only_what_did_not_land() {
    let (redis, env, stub) = setup(Stub {
        insert_half_then_503: true,
        ..Stub::default()
    });
    let env = env.set("FLIT_BQ_WRITE_MODE", "stream");
    let (code, report, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["tables"][0]["attempts"], 2, "{text}");
    let rows = committed(&stub);
    assert_eq!(rows.len(), N, "every row");
    assert!(
        rows.values().all(|n| *n == 1),
        "the half that landed was not sent again: {rows:?}"
    );
    let stub = stub.lock().expect("stub");
    assert!(stub.insert_ids.values().all(|n| *n == 1));
    assert!(stub.queries >= 2, "counted, then read what landed");
    assert!(unuploaded_records(&mut redis.conn(1), "pred").is_empty());
}

#[test]
fn a_version_replaced_while_its_batch_is_written_then_parked_is_neither_lost_nor_doubled() {
    let (redis, env, stub) = setup_with(
        Stub {
            stuck_prefix: Some("stuck_"),
            delay_ms: 1_500,
            ..Stub::default()
        },
        &["stuck_1"],
        &[],
    );
    let upload = env.spawn(&["batch-upload", "--only", "predictions", "--json"]);
    wait_until(
        std::time::Duration::from_secs(30),
        "the batch is being written",
        || keys(&mut redis.conn(1), "flit:upload:inflight:*").len() == 1,
    );
    // The id comes back with new content while its batch is in the warehouse's hands.
    env.push("predictions", &prediction_lines(&["stuck_1"], 0.9));
    // The batch's entries left the queue when it was taken: only the newer
    // version's entry is there.
    ingest_until_queued(&redis, &env, 0, 1);
    let out = upload.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1), "parked: {}", output_text(&out));
    let mut conn = redis.conn(1);
    assert_eq!(
        queue(&mut conn),
        ["pred:stuck_1"],
        "the newer version keeps a queue entry of its own"
    );

    stub.lock().expect("stub").stuck_prefix = None;
    stub.lock().expect("stub").delay_ms = 0;
    let (code, _, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    let rows = committed(&stub);
    assert_eq!(rows["stuck_1"], 2, "each version once");
    assert_eq!(rows.len(), N + 1);
    assert!(
        rows.iter().all(|(id, n)| *n == 1 || id == "stuck_1"),
        "{rows:?}"
    );
    assert!(unuploaded_records(&mut conn, "pred").is_empty());
    assert!(keys(&mut conn, "pred@*").is_empty());
    assert!(
        keys(&mut conn, "flit:upload:*")
            .iter()
            .all(|k| k.contains("load_jobs")),
        "no claim, manifest or parked batch left"
    );
}
