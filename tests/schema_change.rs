//! Schema changes that reach typed columns: a table made by an older
//! schemas/ (a prediction column missing, a column still REQUIRED) is
//! brought up to date in place by `init` (and by any upload), and the rows
//! then carry the new field in its column. A change BigQuery cannot make in
//! place (a type) is refused by name and sets only that table aside.
//!
//! The emulator takes `tables.patch` into its metadata but not into its
//! storage (a later row with the new column fails with a 500, a query of it
//! says the column does not exist), so the data side runs against a stub
//! that keeps each table's schema and checks rows against it as BigQuery
//! does: a field the table lacks fails the load job ("No such field")
//! unless the job's schema adds it with ALLOW_FIELD_ADDITION, and a patch
//! may only add NULLABLE columns and relax REQUIRED ones. The emulator
//! test checks that the patch flit-cache sends is one BigQuery reads.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use support::*;

const PRED_SCHEMA: &str = include_str!("../schemas/raw_bnpl_prediction_logs.json");
const TX_SCHEMA: &str = include_str!("../schemas/raw_bnpl_txs_json.json");

#[derive(Default)]
struct Warehouse {
    /// Each table's fields, as BigQuery answers them.
    tables: HashMap<String, Vec<Value>>,
    /// Committed rows per table.
    rows: HashMap<String, Vec<Value>>,
    patches: usize,
    load_options: Vec<Value>,
}

type Shared = Arc<Mutex<Warehouse>>;

fn mode(field: &Value) -> &str {
    field["mode"].as_str().unwrap_or("NULLABLE")
}

fn table_json(project: &str, dataset: &str, table: &str, fields: &[Value]) -> Value {
    json!({"kind": "bigquery#table", "id": format!("{project}:{dataset}.{table}"),
        "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
        "schema": {"fields": fields}, "timePartitioning": {"type": "DAY"}})
}

async fn create_dataset(Path(project): Path<String>) -> Response {
    bigquery_error(
        409,
        "duplicate",
        &format!("Already Exists: Dataset {project}"),
    )
}

async fn get_table(
    State(stub): State<Shared>,
    Path((project, dataset, table)): Path<(String, String, String)>,
) -> Response {
    let stub = stub.lock().expect("stub");
    match stub.tables.get(&table) {
        Some(fields) => axum::Json(table_json(&project, &dataset, &table, fields)).into_response(),
        None => bigquery_error(
            404,
            "notFound",
            &format!("Not found: Table {project}:{dataset}.{table}"),
        ),
    }
}

/// `tables.patch` as BigQuery checks it: every column kept with its type;
/// new ones NULLABLE; a mode may only go from REQUIRED to NULLABLE.
async fn patch_table(
    State(stub): State<Shared>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let mut stub = stub.lock().expect("stub");
    let Some(current) = stub.tables.get(&table).cloned() else {
        return bigquery_error(404, "notFound", "Not found: Table");
    };
    let new: Vec<Value> = body["schema"]["fields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for have in &current {
        let Some(want) = new.iter().find(|f| f["name"] == have["name"]) else {
            return bigquery_error(
                400,
                "invalid",
                &format!(
                    "Provided Schema does not match Table {project}:{dataset}.{table}. Cannot add fields (field: {})",
                    have["name"]
                ),
            );
        };
        if want["type"] != have["type"] {
            return bigquery_error(
                400,
                "invalid",
                &format!(
                    "Provided Schema does not match Table {project}:{dataset}.{table}. Field {} has changed type",
                    have["name"]
                ),
            );
        }
        if mode(want) != mode(have) && !(mode(have) == "REQUIRED" && mode(want) == "NULLABLE") {
            return bigquery_error(
                400,
                "invalid",
                &format!(
                    "Provided Schema does not match Table {project}:{dataset}.{table}. Field {} has changed mode",
                    have["name"]
                ),
            );
        }
    }
    if new
        .iter()
        .any(|f| !current.iter().any(|h| h["name"] == f["name"]) && mode(f) == "REQUIRED")
    {
        return bigquery_error(
            400,
            "invalid",
            "Provided Schema does not match Table. Cannot add required fields to an existing schema.",
        );
    }
    stub.patches += 1;
    stub.tables.insert(table.clone(), new.clone());
    axum::Json(table_json(&project, &dataset, &table, &new)).into_response()
}

/// A multipart load job: the configuration, then NDJSON rows.
async fn upload(State(stub): State<Shared>, Path(project): Path<String>, body: String) -> Response {
    let (config, data) = load_job_parts(&body);
    let load = &config["configuration"]["load"];
    let job_id = config["jobReference"]["jobId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let table = load["destinationTable"]["tableId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut stub = stub.lock().expect("stub");
    stub.load_options.push(load["schemaUpdateOptions"].clone());
    let Some(mut fields) = stub.tables.get(&table).cloned() else {
        return bigquery_error(404, "notFound", "Not found: Table");
    };
    // The job's schema must match the table's, as BigQuery checks it: every
    // column of the table in it, no mode tightened (options only allow
    // adding fields and relaxing modes).
    if let Some(job_fields) = load["schema"]["fields"].as_array() {
        for have in &fields {
            let problem = match job_fields.iter().find(|f| f["name"] == have["name"]) {
                None => Some(format!("Field {} is missing in new schema", have["name"])),
                Some(f) if mode(have) == "NULLABLE" && mode(f) == "REQUIRED" => Some(format!(
                    "Field {} has changed mode from NULLABLE to REQUIRED",
                    have["name"]
                )),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                let message =
                    format!("Provided Schema does not match Table {project}:{table}. {problem}.");
                let status = json!({"state": "DONE", "errorResult": {"reason": "invalid", "message": message},
                    "errors": [{"reason": "invalid", "message": message}]});
                return axum::Json(json!({"kind": "bigquery#job",
                    "jobReference": {"projectId": project, "jobId": job_id, "location": "US"}, "status": status}))
                .into_response();
            }
        }
    }
    let adds = load["schemaUpdateOptions"]
        .as_array()
        .is_some_and(|o| o.iter().any(|v| v == "ALLOW_FIELD_ADDITION"));
    if adds {
        for field in load["schema"]["fields"].as_array().into_iter().flatten() {
            if !fields.iter().any(|f| f["name"] == field["name"]) && mode(field) != "REQUIRED" {
                fields.push(field.clone());
            }
        }
    }
    let mut rows = Vec::new();
    let mut position = 0;
    for line in data.split('\n') {
        if let Ok(Value::Object(row)) = serde_json::from_str::<Value>(line) {
            if let Some(unknown) = row
                .keys()
                .find(|k| !fields.iter().any(|f| f["name"] == k.as_str()))
            {
                let message = format!(
                    "Error while reading data, error message: JSON parsing error in row starting at position {position}: No such field: {unknown}."
                );
                let status = json!({"state": "DONE", "errorResult": {"reason": "invalid", "message": message},
                    "errors": [{"reason": "invalid", "message": message}]});
                return axum::Json(json!({"kind": "bigquery#job",
                    "jobReference": {"projectId": project, "jobId": job_id, "location": "US"}, "status": status}))
                .into_response();
            }
            rows.push(Value::Object(row));
        }
        position += line.len() + 1;
    }
    stub.tables.insert(table.clone(), fields);
    stub.rows.entry(table).or_default().extend(rows);
    axum::Json(json!({"kind": "bigquery#job",
        "jobReference": {"projectId": project, "jobId": job_id, "location": "US"}, "status": {"state": "DONE"}}))
    .into_response()
}

async fn get_job(Path((project, job_id)): Path<(String, String)>) -> Response {
    bigquery_error(
        404,
        "notFound",
        &format!("Not found: Job {project}:US.{job_id}"),
    )
}

/// The tables as an older flit-cache made them: BigQuery's legacy type
/// names, and `prediction` changed by `older`.
fn start_warehouse(older: impl FnOnce(&mut Vec<Value>)) -> (u16, Shared) {
    let legacy = |text: &str| -> Vec<Value> {
        serde_json::from_str(&text.replace("\"FLOAT64\"", "\"FLOAT\"")).expect("schema")
    };
    let mut predictions = legacy(PRED_SCHEMA);
    older(&mut predictions);
    let mut warehouse = Warehouse::default();
    warehouse
        .tables
        .insert("raw_bnpl_prediction_logs".into(), predictions);
    warehouse
        .tables
        .insert("raw_bnpl_txs_json".into(), legacy(TX_SCHEMA));
    let shared: Shared = Arc::new(Mutex::new(warehouse));
    let table = "/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}";
    let app = Router::new()
        .route(
            "/bigquery/v2/projects/{project}/datasets",
            post(create_dataset),
        )
        .route(table, get(get_table).patch(patch_table))
        .route("/upload/bigquery/v2/projects/{project}/jobs", post(upload))
        .route("/bigquery/v2/projects/{project}/jobs/{job}", get(get_job))
        .with_state(shared.clone());
    (serve_http(app), shared)
}

fn env_for(redis: &RedisServer, port: u16) -> Env {
    Env::new(redis)
        .set("BIGQUERY_PROJECT", PROJECT)
        .set("BIGQUERY_API_URL", &format!("http://127.0.0.1:{port}"))
        .set("FLIT_UPLOAD_RETRY_MIN_MS", "20")
}

fn field<'a>(fields: &'a [Value], name: &str) -> Option<&'a Value> {
    fields.iter().find(|f| f["name"] == name)
}

#[test]
fn init_adds_a_new_nullable_column_and_relaxes_a_mode_and_the_rows_then_fill_it() {
    const N: usize = 30;
    let (port, stub) = start_warehouse(|fields| {
        fields.retain(|f| f["name"] != "processing_time_ms");
        if let Some(decision) = fields.iter_mut().find(|f| f["name"] == "business_decision") {
            decision["mode"] = Value::from("REQUIRED");
        }
    });
    let redis = RedisServer::start();
    let env = env_for(&redis, port);

    let out = env.flit(&["init"]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("added column processing_time_ms (NULLABLE)"),
        "{text}"
    );
    assert!(
        text.contains("made column business_decision NULLABLE"),
        "{text}"
    );
    {
        let stub = stub.lock().expect("stub");
        let fields = &stub.tables["raw_bnpl_prediction_logs"];
        assert_eq!(
            field(fields, "processing_time_ms").map(mode),
            Some("NULLABLE")
        );
        assert_eq!(
            field(fields, "business_decision").map(mode),
            Some("NULLABLE")
        );
        assert_eq!(stub.patches, 1, "the transaction table needed nothing");
    }
    // Run again: nothing left to change.
    let out = env.flit(&["init"]);
    assert!(out.status.success());
    assert_eq!(stub.lock().expect("stub").patches, 1, "init is idempotent");

    ingest_generated(&redis, &env, N);
    let out = env.flit(&["batch-upload", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let stub = stub.lock().expect("stub");
    let rows = &stub.rows["raw_bnpl_prediction_logs"];
    assert_eq!(rows.len(), N);
    assert!(
        rows.iter().all(|r| r["processing_time_ms"].is_number()),
        "the new column holds the events' field: {:?}",
        rows.first()
    );
    assert_eq!(stub.rows["raw_bnpl_txs_json"].len(), N);
    assert!(
        stub.load_options
            .iter()
            .all(|o| o == &json!(["ALLOW_FIELD_ADDITION", "ALLOW_FIELD_RELAXATION"])),
        "load jobs may add fields: {:?}",
        stub.load_options
    );
}

#[test]
fn a_type_change_is_refused_by_name_and_sets_only_that_table_aside() {
    const N: usize = 20;
    let (port, stub) = start_warehouse(|fields| {
        if let Some(score) = fields
            .iter_mut()
            .find(|f| f["name"] == "selected_prediction")
        {
            score["type"] = Value::from("STRING");
        }
    });
    let redis = RedisServer::start();
    let env = env_for(&redis, port);
    let out = env.flit(&["init"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("column selected_prediction is STRING in the table and FLOAT64 in schemas/"),
        "{text}"
    );

    ingest_generated(&redis, &env, N);
    let out = env.flit(&["batch-upload", "--json"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let tables = report["tables"].as_array().expect("tables");
    let predictions = tables
        .iter()
        .find(|t| t["table"] == PRED_TABLE)
        .expect("prediction table");
    assert!(
        predictions["set_aside"]
            .as_str()
            .is_some_and(|why| why.contains("selected_prediction")),
        "{predictions}"
    );
    assert_eq!(
        predictions["kept_for_retry"], N as u64,
        "nothing lost: {predictions}"
    );
    let stub = stub.lock().expect("stub");
    assert_eq!(stub.patches, 0, "nothing half-applied");
    assert_eq!(
        stub.rows["raw_bnpl_txs_json"].len(),
        N,
        "the other table uploads"
    );
    assert!(!stub.rows.contains_key("raw_bnpl_prediction_logs"));
}

#[test]
fn on_the_emulator_init_patches_an_older_table_with_a_schema_bigquery_reads() {
    let emulator = Emulator::start();
    let redis = RedisServer::start();
    let env = Env::new(&redis)
        .set("BIGQUERY_PROJECT", PROJECT)
        .set("BIGQUERY_API_URL", &emulator.url());
    // The older table, created by hand without processing_time_ms.
    let mut fields: Vec<Value> = serde_json::from_str(PRED_SCHEMA).expect("schema");
    fields.retain(|f| f["name"] != "processing_time_ms");
    let base = format!("/bigquery/v2/projects/{PROJECT}");
    http_post(
        emulator.port,
        &format!("{base}/datasets"),
        &json!({"datasetReference": {"projectId": PROJECT, "datasetId": "flit_ml_raw"}})
            .to_string(),
    );
    let (status, text) = http_post(
        emulator.port,
        &format!("{base}/datasets/flit_ml_raw/tables"),
        &json!({"tableReference": {"projectId": PROJECT, "datasetId": "flit_ml_raw", "tableId": "raw_bnpl_prediction_logs"},
            "schema": {"fields": fields},
            "timePartitioning": {"type": "DAY", "field": "prediction_timestamp"}})
        .to_string(),
    )
    .expect("create the older table");
    assert_eq!(status, 200, "{text}");

    let out = env.flit(&["init"]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("added column processing_time_ms (NULLABLE)"),
        "{text}"
    );
    let (_, table) = http_get(
        emulator.port,
        &format!("{base}/datasets/flit_ml_raw/tables/raw_bnpl_prediction_logs"),
    )
    .expect("table");
    let table: Value = serde_json::from_str(&table).expect("json");
    let fields = table["schema"]["fields"].as_array().expect("fields");
    assert_eq!(
        field(fields, "processing_time_ms").map(mode),
        Some("NULLABLE"),
        "{table}"
    );
    let out = env.flit(&["init"]);
    assert!(!output_text(&out).contains("added column"), "idempotent");
}

#[test]
fn a_table_with_a_column_schemas_dropped_and_a_mode_it_cannot_tighten_still_loads() {
    const N: usize = 15;
    let (port, stub) = start_warehouse(|fields| {
        fields.push(json!({"name": "legacy_score", "type": "FLOAT", "mode": "NULLABLE"}));
        if let Some(raw) = fields.iter_mut().find(|f| f["name"] == "raw") {
            raw["mode"] = Value::from("NULLABLE");
        }
    });
    let redis = RedisServer::start();
    let env = env_for(&redis, port);
    ingest_generated(&redis, &env, N);
    let out = env.flit(&["batch-upload", "--json"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("the table has a column schemas/ does not; kept"),
        "{text}"
    );
    let stub = stub.lock().expect("stub");
    assert_eq!(
        stub.rows["raw_bnpl_prediction_logs"].len(),
        N,
        "loaded with the table's own schema"
    );
    assert_eq!(stub.patches, 0, "nothing to change in place");
}
