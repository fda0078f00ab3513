//! BigQuery behaviour the emulator cannot show, scripted in a stub HTTP
//! server that answers as BigQuery documents: 409 for a job id already used
//! (and that job's status), a 503 after the rows were in fact committed, a
//! non-retryable 400, and insertAll partial success (`invalid` rows with the
//! other rows of the request `stopped`). The stub keeps the rows it
//! "committed", so each test counts what reached the warehouse.

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use support::*;

/// What the stub does with the next load-job upload.
#[derive(Clone, Copy)]
enum Upload {
    /// Commits the rows and answers with a DONE job.
    Commit,
    /// Answers 409: a job with this id already exists.
    Conflict,
    /// Commits the rows, then answers 503 as if the call had failed.
    CommitThen503,
    /// Answers with this error status and reason, committing nothing.
    Fail(u16, &'static str),
}

#[derive(Default)]
struct Stub {
    uploads: VecDeque<Upload>,
    /// Job ids answered to GET jobs/{id}: DONE, or DONE with this error reason.
    failed_jobs_suffix: Option<&'static str>,
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

fn bq_error(status: u16, reason: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"code": status, "message": message,
        "errors": [{"domain": "global", "reason": reason, "message": message}], "status": reason.to_uppercase()}});
    (code, axum::Json(body)).into_response()
}

fn done_job(project: &str, job_id: &str, error: Option<&str>) -> Value {
    let mut status = json!({"state": "DONE"});
    if let Some(reason) = error {
        status["errorResult"] = json!({"reason": reason, "message": "load failed"});
    }
    json!({"kind": "bigquery#job", "id": format!("{project}:US.{job_id}"),
        "jobReference": {"projectId": project, "jobId": job_id, "location": "US"}, "status": status})
}

async fn create_dataset(Path(project): Path<String>) -> Response {
    bq_error(
        409,
        "duplicate",
        &format!("Already Exists: Dataset {project}"),
    )
}

async fn get_table(Path((project, dataset, table)): Path<(String, String, String)>) -> Response {
    axum::Json(
        json!({"kind": "bigquery#table", "id": format!("{project}:{dataset}.{table}"),
        "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
        "schema": {"fields": []}, "timePartitioning": {"type": "DAY"}}),
    )
    .into_response()
}

/// The multipart body: a JSON job configuration, then NDJSON rows.
async fn upload(State(stub): State<Shared>, Path(project): Path<String>, body: String) -> Response {
    let parts: Vec<&str> = body.split("\r\n\r\n").collect();
    let config: Value = parts
        .get(1)
        .and_then(|p| p.split("\r\n--").next())
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or(Value::Null);
    let job_id = config["jobReference"]["jobId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rows: Vec<(String, String)> = parts
        .get(2)
        .and_then(|p| p.split("\r\n--").next())
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|row| {
            (
                row["_ingestion_timestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                row["prediction_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut stub = stub.lock().expect("stub");
    stub.job_ids_seen.push(job_id.clone());
    match stub.uploads.pop_front().unwrap_or(Upload::Commit) {
        Upload::Commit => {
            stub.loaded.extend(rows.iter().map(|(_, id)| id.clone()));
            stub.rows.extend(rows);
            axum::Json(done_job(&project, &job_id, None)).into_response()
        }
        Upload::Conflict => bq_error(
            409,
            "duplicate",
            &format!("Already Exists: Job {project}:US.{job_id}"),
        ),
        Upload::CommitThen503 => {
            stub.rows.extend(rows);
            bq_error(503, "backendError", "Backend error. Please try again.")
        }
        Upload::Fail(status, reason) => bq_error(
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
    let error = stub
        .failed_jobs_suffix
        .filter(|suffix| job_id.ends_with(suffix))
        .map(|_| "invalid");
    axum::Json(done_job(&project, &job_id, error)).into_response()
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
        return bq_error(400, "invalid", "unreadable request");
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
    for row in rows {
        let id = row["insertId"].as_str().unwrap_or_default().to_owned();
        *stub.insert_ids.entry(id.clone()).or_default() += 1;
        stub.rows.push((
            row["json"]["_ingestion_timestamp"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            id,
        ));
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
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
    });
    (port, shared)
}

const N: usize = 50;

/// N predictions waiting in Redis, and an environment pointed at the stub.
fn setup(stub: Stub) -> (RedisServer, Env, Shared) {
    let redis = RedisServer::start();
    let (port, shared) = start_stub(stub);
    let env = Env::new(&redis)
        .set("BIGQUERY_PROJECT", "stub-project")
        .set("BIGQUERY_API_URL", &format!("http://127.0.0.1:{port}"))
        .set("FLIT_UPLOAD_RETRY_MIN_MS", "20");
    env.generate(&["--count", &N.to_string(), "--kind", "predictions"]);
    ingest_until_queued(&redis, &env, 0, N as u64);
    (redis, env, shared)
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
fn a_resubmitted_job_id_gets_409_and_that_jobs_status_decides() {
    // The job already exists and succeeded: nothing is sent again.
    let (redis, env, stub) = setup(Stub {
        uploads: VecDeque::from([Upload::Conflict]),
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

    // The job with that id had failed: the batch goes again under the next id.
    let (redis, env, stub) = setup(Stub {
        uploads: VecDeque::from([Upload::Conflict, Upload::Commit]),
        failed_jobs_suffix: Some("_0"),
        ..Stub::default()
    });
    let (code, _, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    let stub = stub.lock().expect("stub");
    assert_eq!(stub.rows.len(), N, "loaded once");
    assert!(
        stub.job_ids_seen[0].ends_with("_0") && stub.job_ids_seen[1].ends_with("_1"),
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
    assert_eq!(
        llen(&mut redis.conn(1), "upload_queue") as usize,
        N,
        "records wait for the next run"
    );

    // The next run (BigQuery healthy again) takes them, under the same batch.
    let (code, _, text) = upload_predictions(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(stub.lock().expect("stub").rows.len(), N);
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
        "insertId = record id, each once"
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
