//! The BigQuery sink. Datasets, tables, jobs, queries and streaming inserts
//! go through gcp-bigquery-client; the one call it lacks, the multipart
//! upload that starts a load job, is made here with a yup-oauth2 token.
//!
//! Exactly-once per batch:
//! - load jobs (the default) are atomic; each batch gets job ids derived from
//!   its batch id, so a batch submitted again is refused with 409 and that
//!   job's status tells whether it committed;
//! - a batch that may have been written before (recovered after a crash, or
//!   retried after an ambiguous failure) is first looked up in the table by
//!   its own `_ingestion_timestamp`, within its partitions only. That also
//!   covers emulators that ignore job ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::error_proto::ErrorProto;
use gcp_bigquery_client::model::job::Job;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::table_data_insert_all_request::TableDataInsertAllRequest;
use gcp_bigquery_client::model::table_field_schema::TableFieldSchema;
use gcp_bigquery_client::model::table_schema::TableSchema;
use gcp_bigquery_client::model::time_partitioning::TimePartitioning;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use yup_oauth2::authenticator::{ApplicationDefaultCredentialsTypes, DefaultAuthenticator};
use yup_oauth2::{
    ApplicationDefaultCredentialsAuthenticator, ApplicationDefaultCredentialsFlowOpts,
    ServiceAccountAuthenticator,
};

use super::WarehouseSettings;
use super::rows::timestamp_text;
use super::{Failure, Freshness, Row, RowBatch, SinkError, TableSpec, Warehouse, WriteOutcome};
use crate::event::{EventSchema, FieldType};

/// How rows reach BigQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Load jobs from NDJSON (multipart upload): free, atomic per batch.
    Load,
    /// Streaming inserts (`insertAll`) with insertId = record id.
    Stream,
}

const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
/// The fields of `table` from schemas/, as JSON for a job configuration.
fn table_fields(table: TableSpec) -> Result<Value, SinkError> {
    serde_json::from_str(table.schema_json).map_err(|e| {
        SinkError::fatal(format!(
            "schema of {} is unreadable: {e}",
            table.qualified()
        ))
    })
}

/// Reasons BigQuery documents as worth retrying.
const RETRYABLE_REASONS: [&str; 4] = [
    "backendError",
    "rateLimitExceeded",
    "internalError",
    "backendErrors",
];
/// insertAll request limits (rows and bytes) from BigQuery's quotas, with room to spare.
const STREAM_ROWS: usize = 500;
const STREAM_BYTES: usize = 9 * 1024 * 1024;
const JOB_WAIT: Duration = Duration::from_secs(600);
/// Getting a token talks to Google (or the metadata server): bounded too.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// BigQuery streams into a time-partitioned table only rows whose partition
/// time lies between 5 years in the past and 1 year in the future; the rest
/// of a stream-mode batch goes by load job. The window is taken from the
/// batch's own ingestion time, with margins, so a batch splits the same way
/// on every retry, and whole days, so the two parts share no partition.
const STREAM_PAST_DAYS: i64 = 5 * 365 - 60;
const STREAM_FUTURE_DAYS: i64 = 365 - 30;
const BOUNDARY: &str = "flit_cache_multipart_boundary_7c0a";

/// Who signs requests: nobody for a local emulator, else Google credentials.
#[derive(Clone)]
enum Credentials {
    None,
    Google(Arc<DefaultAuthenticator>),
}

impl Credentials {
    async fn token(&self) -> Result<Option<String>, SinkError> {
        match self {
            Credentials::None => Ok(None),
            Credentials::Google(auth) => {
                let token = tokio::time::timeout(TOKEN_TIMEOUT, auth.token(&[SCOPE]))
                    .await
                    .map_err(|_| {
                        SinkError::retryable(format!(
                            "no Google access token for BigQuery within {} s",
                            TOKEN_TIMEOUT.as_secs()
                        ))
                    })?
                    .map_err(|e| {
                        SinkError::retryable(format!(
                            "cannot get a Google access token for BigQuery: {e}"
                        ))
                    })?;
                token
                    .token()
                    .map(|t| Some(t.to_owned()))
                    .ok_or_else(|| SinkError::fatal("Google returned no access token for BigQuery"))
            }
        }
    }
}

#[async_trait]
impl gcp_bigquery_client::auth::Authenticator for Credentials {
    async fn access_token(&self) -> Result<String, BQError> {
        match self.token().await {
            Ok(token) => Ok(token.unwrap_or_default()),
            Err(_) => Err(BQError::NoToken),
        }
    }
}

pub struct BigQueryWarehouse {
    client: Client,
    http: reqwest::Client,
    credentials: Credentials,
    project: String,
    /// Where datasets are created and jobs run (BIGQUERY_LOCATION).
    location: String,
    api_root: String,
    mode: WriteMode,
    /// Tables ensured by this process, with the fields their load jobs
    /// carry: the table's own schema after the plan (its extra columns and
    /// modes kept), which BigQuery requires a load's schema to match.
    ensured: Mutex<HashMap<String, Vec<Value>>>,
}

impl BigQueryWarehouse {
    pub async fn connect(settings: &WarehouseSettings) -> anyhow::Result<Self> {
        let project = settings
            .bigquery_project
            .clone()
            .context("BIGQUERY_PROJECT is not set")?;
        let api_root = settings.bigquery_api_url.clone();
        let credentials = if is_local(&api_root) {
            Credentials::None
        } else {
            Credentials::Google(Arc::new(google_authenticator(settings).await?))
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()?;
        let client = ClientBuilder::new()
            .with_v2_base_url(format!("{api_root}/bigquery/v2"))
            .with_client(http.clone())
            .build_from_authenticator(Arc::new(credentials.clone()))
            .await
            .context("cannot set up the BigQuery client")?;
        Ok(BigQueryWarehouse {
            client,
            http,
            credentials,
            project,
            location: settings.location.clone(),
            api_root,
            mode: settings.write_mode,
            ensured: Mutex::new(HashMap::new()),
        })
    }

    /// Brings an existing table to what schemas/ asks for, in place: new
    /// NULLABLE columns and relaxed modes by `tables.patch`. A change
    /// BigQuery cannot make in place sets the table aside with the reason.
    async fn apply_schema_changes(
        &self,
        table: TableSpec,
        existing: &Value,
    ) -> Result<Vec<Value>, SinkError> {
        let name = table.qualified();
        // The fields as BigQuery returned them, every attribute kept (a
        // default value, a policy tag): the patch sends them back unchanged.
        let have: Vec<Value> = existing["schema"]["fields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let wanted = table_fields(table)?;
        let wanted = wanted.as_array().cloned().unwrap_or_default();
        let plan = super::schema_change::plan(&have, &wanted).map_err(|why| {
            SinkError::set_aside(format!("{name} cannot take schemas/ in place: {why}"))
        })?;
        for column in &plan.kept {
            tracing::warn!(table = %name, column, "the table has a column schemas/ does not; kept");
        }
        for column in &plan.not_tightened {
            tracing::warn!(table = %name, column, "REQUIRED in schemas/, NULLABLE in the table: BigQuery cannot tighten a mode; the door requires it of new rows");
        }
        if plan.changes.is_empty() {
            return Ok(plan.fields);
        }
        let body = json!({"schema": {"fields": plan.fields}});
        let mut request = self.http.patch(self.table_url(table)).json(&body);
        // With the table's etag, a patch made from a schema someone else has
        // changed since is refused (412) instead of undoing their change.
        if let Some(etag) = existing["etag"].as_str() {
            request = request.header("If-Match", etag);
        }
        let (status, text) = self.send(request).await?;
        if !(200..300).contains(&status) {
            return Err(from_response(status, &text));
        }
        for change in &plan.changes {
            tracing::info!(table = %name, %change, "applied a schema change from schemas/");
        }
        Ok(plan.fields)
    }

    /// The fields a load into `table` carries: as ensured, or schemas/.
    fn load_fields(&self, table: TableSpec) -> Result<Value, SinkError> {
        let ensured = self
            .ensured
            .lock()
            .ok()
            .and_then(|set| set.get(&table.qualified()).cloned());
        match ensured {
            Some(fields) => Ok(Value::Array(fields)),
            None => table_fields(table),
        }
    }

    fn table_url(&self, table: TableSpec) -> String {
        format!(
            "{}/bigquery/v2/projects/{}/datasets/{}/tables/{}",
            self.api_root, self.project, table.dataset, table.table
        )
    }

    /// Sends a request of the raw REST calls (tables.get and .patch, the
    /// multipart load), with the bearer token when there is one; its status
    /// and body.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, String), SinkError> {
        let request = match self.credentials.token().await? {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(from_reqwest)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(from_reqwest)?;
        Ok((status, text))
    }

    /// The table resource as BigQuery returns it, or None when it does not exist.
    async fn table_resource(&self, table: TableSpec) -> Result<Option<Value>, SinkError> {
        let request = self.http.get(self.table_url(table));
        let (status, text) = self.send(request).await?;
        match status {
            404 => Ok(None),
            200..=299 => serde_json::from_str(&text).map(Some).map_err(|e| {
                SinkError::fatal(format!(
                    "unreadable table {} from BigQuery: {e}",
                    table.qualified()
                ))
            }),
            _ => Err(from_response(status, &text)),
        }
    }

    async fn load(&self, batch: &RowBatch<'_>) -> Result<WriteOutcome, SinkError> {
        if batch.maybe_written && self.already_loaded(batch).await? {
            return Ok(WriteOutcome::default());
        }
        // Job ids follow the batch id. A failed job keeps its id for good, so
        // the next free one is taken: looked up first (a GET, not an upload),
        // and with no fixed number, so no count of failures wedges a batch.
        let mut attempt = 0u64;
        loop {
            let job_id = format!("flit_{}_{attempt}", batch.batch_id);
            let submitted = match self.find_job(&job_id).await? {
                // An earlier attempt's job that failed loaded nothing (load
                // jobs are atomic): take the next id.
                Some(job) if job_failed(&job) => {
                    attempt += 1;
                    continue;
                }
                Some(job) => job,
                None => {
                    batch.jobs.reserve(batch.table).await?;
                    match self.submit_load(batch, &job_id).await? {
                        Submitted::Started(job) => *job,
                        // Created since we looked: the next attempt finds it.
                        Submitted::AlreadyExists => {
                            return Err(SinkError::retryable(format!(
                                "load job {job_id} appeared while it was submitted"
                            )));
                        }
                    }
                }
            };
            // An error from waiting (not done in time, BigQuery unreachable)
            // leaves the job where it is: the next attempt finds it by its id.
            // A job that failed is the answer; a retry (with backoff) then
            // takes the next id.
            return self
                .wait(&submitted, batch)
                .await?
                .map(|()| WriteOutcome::default());
        }
    }

    /// The job with this id, if BigQuery has one.
    async fn find_job(&self, job_id: &str) -> Result<Option<Job>, SinkError> {
        match self
            .client
            .job()
            .get_job(&self.project, job_id, Some(&self.location))
            .await
        {
            Ok(job) => Ok(Some(job)),
            Err(err) if status_of(&err) == Some(404) => Ok(None),
            Err(err) => Err(from_bq(err)),
        }
    }

    async fn submit_load(
        &self,
        batch: &RowBatch<'_>,
        job_id: &str,
    ) -> Result<Submitted, SinkError> {
        let table = batch.table;
        let config = json!({
            "jobReference": {"projectId": self.project, "jobId": job_id, "location": self.location},
            "configuration": {"load": {
                "destinationTable": {"projectId": self.project, "datasetId": table.dataset, "tableId": table.table},
                "sourceFormat": "NEWLINE_DELIMITED_JSON",
                "writeDisposition": "WRITE_APPEND",
                "createDisposition": "CREATE_NEVER",
                // The schema the rows follow, and leave to add what it has
                // and the table lacks: a deploy that added a NULLABLE column
                // loads its rows whether or not `init` ran first.
                "schema": {"fields": self.load_fields(table)?},
                "schemaUpdateOptions": ["ALLOW_FIELD_ADDITION", "ALLOW_FIELD_RELAXATION"],
            }},
        });
        // Built straight from the rows, once per attempt: a batch is not copied twice.
        let rows_bytes: usize = batch.rows.iter().map(|r| r.json.len() + 1).sum();
        let mut body = String::with_capacity(rows_bytes + 512);
        body.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{config}\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ));
        for row in batch.rows {
            body.push_str(&row.json);
            body.push('\n');
        }
        body.push_str(&format!("\r\n--{BOUNDARY}--\r\n"));
        let url = format!(
            "{}/upload/bigquery/v2/projects/{}/jobs?uploadType=multipart",
            self.api_root, self.project
        );
        let request = self
            .http
            .post(url)
            .header(
                "Content-Type",
                format!("multipart/related; boundary={BOUNDARY}"),
            )
            .body(body);
        let (status, text) = self.send(request).await?;
        match status {
            200..=299 => serde_json::from_str(&text)
                .map(|job| Submitted::Started(Box::new(job)))
                .map_err(|e| SinkError::fatal(format!("unreadable load job from BigQuery: {e}"))),
            409 => Ok(Submitted::AlreadyExists),
            _ => Err(from_response(status, &text)),
        }
    }

    /// Polls a job until it is done; then its error, if any, is the inner
    /// result, with the rows its errors name (by their position in the
    /// uploaded data). The outer error: the job could not be followed.
    async fn wait(
        &self,
        job: &Job,
        batch: &RowBatch<'_>,
    ) -> Result<Result<(), SinkError>, SinkError> {
        let reference = job.job_reference.clone().unwrap_or_default();
        let job_id = reference.job_id.unwrap_or_default();
        let location = reference.location.unwrap_or_else(|| self.location.clone());
        let started = std::time::Instant::now();
        let mut current = job.clone();
        loop {
            let status = current.status.clone().unwrap_or_default();
            if status.state.as_deref() == Some("DONE") {
                return Ok(match status.error_result {
                    None => Ok(()),
                    Some(error) => Err(job_failure(
                        &job_id,
                        &error,
                        status.errors.as_deref().unwrap_or_default(),
                        batch.rows,
                    )),
                });
            }
            if started.elapsed() > JOB_WAIT {
                return Err(SinkError::retryable(format!(
                    "load job {job_id} not done after {JOB_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            current = self
                .client
                .job()
                .get_job(&self.project, &job_id, Some(&location))
                .await
                .map_err(from_bq)?;
        }
    }

    /// Whether every row of the batch is already in the table, found by the
    /// batch's own ingestion time within the batch's partitions.
    async fn already_loaded(&self, batch: &RowBatch<'_>) -> Result<bool, SinkError> {
        if batch.rows.is_empty() {
            return Ok(true);
        }
        let count = self.count_ingested(batch, batch.rows.iter()).await?;
        match count {
            0 => Ok(false),
            n if n == batch.rows.len() => {
                tracing::info!(batch = %batch.batch_id, rows = n, "batch already in BigQuery; not sent again");
                Ok(true)
            }
            n => Err(SinkError::fatal(format!(
                "batch {} is partly in {} ({n} of {} rows); refusing to guess",
                batch.batch_id,
                batch.table.qualified(),
                batch.rows.len()
            ))),
        }
    }

    /// Rows of the table carrying the batch's ingestion time, within the
    /// partitions of `rows` only (a batch's own, so the scan stays small).
    async fn count_ingested<'r>(
        &self,
        batch: &RowBatch<'_>,
        rows: impl Iterator<Item = &'r Row>,
    ) -> Result<usize, SinkError> {
        let sql = format!(
            "SELECT COUNT(*) FROM `{}.{}` WHERE _ingestion_timestamp = TIMESTAMP '{}' AND {}",
            batch.table.dataset,
            batch.table.table,
            timestamp_text(batch.ingested_at),
            partition_filter(batch.table.partition_field, rows.map(|r| r.day)),
        );
        Ok(self
            .first_row(sql)
            .await?
            .first()
            .and_then(|cell| cell.as_deref()?.parse::<usize>().ok())
            .unwrap_or(0))
    }

    /// Runs a standard-SQL query; the cells of its first row as text.
    async fn first_row(&self, sql: String) -> Result<Vec<Option<String>>, SinkError> {
        Ok(self.rows(sql).await?.into_iter().next().unwrap_or_default())
    }

    /// Runs a standard-SQL query; its rows, cells as text.
    async fn rows(&self, sql: String) -> Result<Vec<Vec<Option<String>>>, SinkError> {
        let mut request = QueryRequest::new(sql);
        request.use_legacy_sql = false;
        let response = self
            .client
            .job()
            .query(&self.project, request)
            .await
            .map_err(from_bq)?;
        // A query still running when BigQuery's wait ends comes back with no
        // rows: that is no answer, not an empty table.
        if response.job_complete != Some(true) {
            return Err(SinkError::retryable(
                "the query did not complete within BigQuery's wait (jobComplete false); try again",
            ));
        }
        Ok(response
            .rows
            .unwrap_or_default()
            .into_iter()
            .map(|row| {
                row.columns
                    .unwrap_or_default()
                    .into_iter()
                    .map(|cell| match cell.value {
                        Some(Value::String(text)) => Some(text),
                        Some(Value::Null) | None => None,
                        Some(other) => Some(other.to_string()),
                    })
                    .collect()
            })
            .collect())
    }

    /// Stream mode: rows within BigQuery's streaming window by insertAll,
    /// the others by a load job of their own.
    async fn stream_or_load(&self, batch: &RowBatch<'_>) -> Result<WriteOutcome, SinkError> {
        let (streamable, by_job): (Vec<usize>, Vec<usize>) =
            (0..batch.rows.len()).partition(|&i| streamable(&batch.rows[i], batch.ingested_at));
        if !by_job.is_empty() {
            let rows: Vec<Row> = by_job.iter().map(|&i| batch.rows[i].clone()).collect();
            let ids: Vec<String> = by_job.iter().map(|&i| batch.row_ids[i].clone()).collect();
            let batch_id = format!("{}_outside_streaming_window", batch.batch_id);
            let loaded = self
                .load(&RowBatch {
                    batch_id: &batch_id,
                    rows: &rows,
                    row_ids: &ids,
                    ..*batch
                })
                .await;
            if let Err(SinkError {
                failure: Failure::Rows { named, unexplained },
                message,
            }) = loaded
            {
                // Name the rows by their place in the whole batch.
                let named = named
                    .into_iter()
                    .filter_map(|(i, why)| Some((*by_job.get(i)?, why)))
                    .collect();
                return Err(SinkError::new(
                    Failure::Rows { named, unexplained },
                    message,
                ));
            }
            loaded?;
        }
        let pending = if batch.maybe_written {
            self.not_yet_streamed(batch, streamable).await?
        } else {
            streamable
        };
        self.stream(batch, pending).await
    }

    /// Of the rows `candidates`, those not in the table yet. insertId keeps
    /// repeats out only for about a minute, so a batch that may have been
    /// streamed before is looked up first, as load mode does: by its
    /// ingestion time, then, when only part of it is there, by content.
    async fn not_yet_streamed(
        &self,
        batch: &RowBatch<'_>,
        candidates: Vec<usize>,
    ) -> Result<Vec<usize>, SinkError> {
        let rows = || candidates.iter().map(|&i| &batch.rows[i]);
        let present = self.count_ingested(batch, rows()).await?;
        if present == 0 {
            return Ok(candidates);
        }
        if present >= candidates.len() {
            tracing::info!(batch = %batch.batch_id, rows = present, "batch already streamed; not sent again");
            return Ok(Vec::new());
        }
        let event_column = crate::event::schema::event_column(batch.table.kind);
        let sql = format!(
            "SELECT TO_JSON_STRING({event_column}) FROM `{}.{}` WHERE _ingestion_timestamp = TIMESTAMP '{}' AND {}",
            batch.table.dataset,
            batch.table.table,
            timestamp_text(batch.ingested_at),
            partition_filter(batch.table.partition_field, rows().map(|r| r.day)),
        );
        let mut landed: Vec<Value> = self
            .rows(sql)
            .await?
            .into_iter()
            .filter_map(|cells| serde_json::from_str(cells.first()?.as_deref()?).ok())
            .collect();
        let mut missing = Vec::new();
        for index in candidates {
            let event = event_of_row(&batch.rows[index].json, event_column);
            match landed.iter().position(|row| Some(row) == event.as_ref()) {
                Some(at) => {
                    landed.swap_remove(at);
                }
                None => missing.push(index),
            }
        }
        tracing::info!(batch = %batch.batch_id, present, missing = missing.len(),
            "part of a streamed batch is in BigQuery; sending the rest");
        Ok(missing)
    }

    /// Streaming inserts with insertId = record id. Rows BigQuery rejects come
    /// back as `rejected`; rows it reports as `stopped` are sent again.
    async fn stream(
        &self,
        batch: &RowBatch<'_>,
        mut pending: Vec<usize>,
    ) -> Result<WriteOutcome, SinkError> {
        let mut outcome = WriteOutcome::default();
        for _round in 0..5 {
            if pending.is_empty() {
                return Ok(outcome);
            }
            let mut stopped = Vec::new();
            for chunk in chunk_rows(batch, &pending) {
                let mut request = TableDataInsertAllRequest::new();
                for &index in &chunk {
                    request
                        .add_row(
                            Some(batch.row_ids[index].clone()),
                            streaming_row(batch.table, &batch.rows[index].json)?,
                        )
                        .map_err(from_bq)?;
                }
                let response = self
                    .client
                    .tabledata()
                    .insert_all(
                        &self.project,
                        batch.table.dataset,
                        batch.table.table,
                        request,
                    )
                    .await
                    .map_err(from_bq)?;
                for error in response.insert_errors.unwrap_or_default() {
                    let Some(index) = error
                        .index
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| chunk.get(i))
                    else {
                        continue;
                    };
                    let errors = error.errors.unwrap_or_default();
                    if errors
                        .iter()
                        .all(|e| e.reason.as_deref() == Some("stopped"))
                    {
                        stopped.push(*index);
                    } else {
                        let reason = errors
                            .iter()
                            .filter(|e| e.reason.as_deref() != Some("stopped"))
                            .map(|e| {
                                format!(
                                    "{}: {}",
                                    e.reason.clone().unwrap_or_default(),
                                    e.message.clone().unwrap_or_default()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; ");
                        outcome.rejected.push((*index, reason));
                    }
                }
            }
            pending = stopped;
        }
        Err(SinkError::retryable(format!(
            "batch {}: {} rows still stopped after five rounds",
            batch.batch_id,
            pending.len()
        )))
    }
}

enum Submitted {
    Started(Box<Job>),
    AlreadyExists,
}

impl Warehouse for BigQueryWarehouse {
    fn describe(&self) -> String {
        format!(
            "BigQuery project {} at {} ({:?} mode)",
            self.project, self.api_root, self.mode
        )
    }

    async fn ensure_table(&self, table: TableSpec) -> Result<(), SinkError> {
        let name = table.qualified();
        if self
            .ensured
            .lock()
            .map(|set| set.contains_key(&name))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let dataset = Dataset::new(&self.project, table.dataset).location(&self.location);
        match self.client.dataset().create(dataset).await {
            Ok(_) => tracing::info!(dataset = table.dataset, "created BigQuery dataset"),
            Err(err) if status_of(&err) == Some(409) => {}
            Err(err) => return Err(from_bq(err)),
        }
        let load_fields = match self.table_resource(table).await? {
            Some(existing) => self.apply_schema_changes(table, &existing).await?,
            None => {
                let fields: Vec<TableFieldSchema> = serde_json::from_str(table.schema_json)
                    .map_err(|e| {
                        SinkError::fatal(format!("schema of {name} is unreadable: {e}"))
                    })?;
                let mut partitioning = TimePartitioning::new("DAY".to_owned());
                partitioning.field = Some(table.partition_field.to_owned());
                let definition = Table::new(
                    &self.project,
                    table.dataset,
                    table.table,
                    TableSchema::new(fields),
                )
                .description("Written by flit-cache; see schemas/ in its repository.")
                .time_partitioning(partitioning);
                match self.client.table().create(definition).await {
                    Ok(_) => {
                        tracing::info!(table = %name, "created BigQuery table, day-partitioned")
                    }
                    Err(err) if status_of(&err) == Some(409) => {}
                    Err(err) => return Err(from_bq(err)),
                }
                table_fields(table)?.as_array().cloned().unwrap_or_default()
            }
        };
        if let Ok(mut set) = self.ensured.lock() {
            set.insert(name, load_fields);
        }
        Ok(())
    }

    async fn write(&self, batch: &RowBatch<'_>) -> Result<WriteOutcome, SinkError> {
        match self.mode {
            WriteMode::Load => self.load(batch).await,
            WriteMode::Stream => self.stream_or_load(batch).await,
        }
    }

    async fn freshness(&self, table: TableSpec, window_days: u32) -> Result<Freshness, SinkError> {
        // The partition filter keeps the scan to the window's days. The time
        // comes back as INT64 micros: TIMESTAMP cells are rendered
        // differently by BigQuery (float seconds) and the emulator.
        let sql = format!(
            "SELECT COUNTIF(_ingestion_timestamp >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 24 HOUR)), UNIX_MICROS(MAX({field})) FROM `{}.{}` WHERE {field} >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {window_days} DAY)",
            table.dataset,
            table.table,
            field = table.partition_field,
        );
        let cells = self.first_row(sql).await?;
        let cell = |i: usize| cells.get(i).cloned().flatten();
        Ok(Freshness {
            rows_last_24h: cell(0).and_then(|n| n.parse().ok()).unwrap_or(0),
            newest_event_at: cell(1)
                .and_then(|micros| micros.parse().ok())
                .and_then(chrono::DateTime::from_timestamp_micros),
        })
    }
}

/// What a failed load job means for its batch: its reason decides, and for
/// `invalid` the errors that name a row by its position in the uploaded
/// data ("... in row starting at position N ...") say which rows are at fault.
fn job_failure(job_id: &str, error: &ErrorProto, errors: &[ErrorProto], rows: &[Row]) -> SinkError {
    let reason = error.reason.clone().unwrap_or_default();
    let message = format!(
        "load job {job_id} failed: {reason}: {}",
        error.message.clone().unwrap_or_default()
    );
    if reason != "invalid" {
        return classify_reason(None, &reason, message);
    }
    let mut starts = Vec::with_capacity(rows.len());
    let mut offset = 0u64;
    for row in rows {
        starts.push(offset);
        offset += row.json.len() as u64 + 1;
    }
    let mut named = Vec::new();
    let mut unexplained = false;
    let mut row_level = false;
    for entry in errors.iter().chain(std::iter::once(error)) {
        let text = entry.message.clone().unwrap_or_default();
        if text.contains("too many errors") {
            row_level = true;
            continue;
        }
        let found: Vec<usize> = positions(&text)
            .filter_map(|at| starts.binary_search(&at).ok())
            .collect();
        if found.is_empty() {
            unexplained |= !std::ptr::eq(entry, error);
        } else {
            row_level = true;
            named.extend(found.into_iter().map(|index| (index, text.clone())));
        }
    }
    named.sort_by_key(|(index, _)| *index);
    named.dedup_by_key(|(index, _)| *index);
    if !row_level {
        // Nothing says a row is at fault (a schema that changed, say):
        // splitting would only dead-letter good rows.
        return SinkError::fatal(message);
    }
    SinkError::new(Failure::Rows { named, unexplained }, message)
}

/// Whether a job is done and failed.
fn job_failed(job: &Job) -> bool {
    job.status
        .as_ref()
        .is_some_and(|s| s.state.as_deref() == Some("DONE") && s.error_result.is_some())
}

/// The numbers that follow "position " in a message.
fn positions(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.match_indices("position ")
        .filter_map(move |(at, word)| {
            let digits: String = text[at + word.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
}

/// A filter on the partition column that keeps the given days, as constant
/// ranges (consecutive days merged) so BigQuery prunes partitions.
fn partition_filter(field: &str, days: impl Iterator<Item = chrono::NaiveDate>) -> String {
    let mut days: Vec<chrono::NaiveDate> = days.collect();
    days.sort();
    days.dedup();
    let mut ranges: Vec<(chrono::NaiveDate, chrono::NaiveDate)> = Vec::new();
    for day in days {
        match ranges.last_mut() {
            Some((_, end)) if end.succ_opt() == Some(day) => *end = day,
            _ => ranges.push((day, day)),
        }
    }
    if ranges.is_empty() {
        return "FALSE".to_owned();
    }
    let clauses: Vec<String> = ranges
        .iter()
        .map(|(first, last)| {
            format!(
                "({field} >= TIMESTAMP '{first}' AND {field} < TIMESTAMP '{}')",
                last.succ_opt().unwrap_or(*last)
            )
        })
        .collect();
    format!("({})", clauses.join(" OR "))
}

/// The event column of a row line, as a JSON value.
fn event_of_row(line: &str, event_column: &str) -> Option<Value> {
    let columns: std::collections::HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(line).ok()?;
    serde_json::from_str(columns.get(event_column)?.get()).ok()
}

/// Whether a row's whole partition day lies within the streaming window.
fn streamable(row: &Row, ingested_at: chrono::DateTime<chrono::Utc>) -> bool {
    let start = row.day.and_time(chrono::NaiveTime::MIN).and_utc();
    let end = start + chrono::TimeDelta::days(1);
    start >= ingested_at - chrono::TimeDelta::days(STREAM_PAST_DAYS)
        && end <= ingested_at + chrono::TimeDelta::days(STREAM_FUTURE_DAYS)
}

/// A row as insertAll takes it. JSON columns (by the table's schema, not by
/// the value's shape) go as JSON-encoded strings, as BigQuery documents, so
/// `raw` keeps the record's text exactly; other columns as their values.
fn streaming_row(table: TableSpec, line: &str) -> Result<Value, SinkError> {
    let not_a_row =
        |e: serde_json::Error| SinkError::fatal(format!("a row is not a JSON object: {e}"));
    let columns: std::collections::BTreeMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(line).map_err(not_a_row)?;
    let schema = EventSchema::for_kind(table.kind);
    let mut row = serde_json::Map::with_capacity(columns.len());
    for (name, raw) in columns {
        let value = match schema.column_type(&name) {
            Some(FieldType::Json) => Value::String(raw.get().to_owned()),
            _ => serde_json::from_str(raw.get()).map_err(not_a_row)?,
        };
        row.insert(name, value);
    }
    Ok(Value::Object(row))
}

/// Splits pending rows into insertAll requests within the row and byte limits.
fn chunk_rows(batch: &RowBatch<'_>, pending: &[usize]) -> Vec<Vec<usize>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for &index in pending {
        let size = batch.rows[index].json.len() + batch.row_ids[index].len() + 32;
        if !current.is_empty() && (current.len() == STREAM_ROWS || bytes + size > STREAM_BYTES) {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(index);
        bytes += size;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

fn is_local(api_root: &str) -> bool {
    url::Url::parse(api_root)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_some_and(|host| matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]" | "::1"))
}

async fn google_authenticator(
    settings: &WarehouseSettings,
) -> anyhow::Result<DefaultAuthenticator> {
    if let Some(json) = &settings.credentials_json {
        // The parse error of serde_json names positions, never the key's text.
        let key = yup_oauth2::parse_service_account_key(json.expose_secret().as_bytes()).map_err(
            |e| {
                anyhow::anyhow!(
                    "GOOGLE_APPLICATION_CREDENTIALS_JSON: not a service-account key ({e})"
                )
            },
        )?;
        return ServiceAccountAuthenticator::builder(key)
            .build()
            .await
            .context("GOOGLE_APPLICATION_CREDENTIALS_JSON: the service-account key is not usable");
    }
    if let Some(path) = &settings.credentials_file {
        let key = yup_oauth2::read_service_account_key(path)
            .await
            .with_context(|| {
                format!(
                    "GOOGLE_APPLICATION_CREDENTIALS: cannot read the service-account key {}",
                    path.display()
                )
            })?;
        return ServiceAccountAuthenticator::builder(key)
            .build()
            .await
            .context("GOOGLE_APPLICATION_CREDENTIALS: the service-account key is not usable");
    }
    let built = match ApplicationDefaultCredentialsAuthenticator::builder(
        ApplicationDefaultCredentialsFlowOpts::default(),
    )
    .await
    {
        ApplicationDefaultCredentialsTypes::ServiceAccount(builder) => builder.build().await,
        ApplicationDefaultCredentialsTypes::InstanceMetadata(builder) => builder.build().await,
    };
    built.context("no GOOGLE_APPLICATION_CREDENTIALS and no application default credentials")
}

fn status_of(err: &BQError) -> Option<i64> {
    match err {
        BQError::ResponseError { error } => Some(error.error.code),
        _ => None,
    }
}

fn from_bq(err: BQError) -> SinkError {
    match err {
        BQError::ResponseError { error } => {
            let reason = error
                .error
                .errors
                .first()
                .and_then(|e| e.get("reason").cloned())
                .unwrap_or_default();
            classify(error.error.code as u16, &reason, &error.error.message)
        }
        BQError::RequestError(err) => from_reqwest(err),
        other => SinkError::fatal(other.to_string()),
    }
}

fn from_reqwest(err: reqwest::Error) -> SinkError {
    // Connection refused, reset or timed out: the network or BigQuery may recover.
    SinkError::retryable(format!("cannot reach BigQuery: {err}"))
}

/// A BigQuery error body, `{"error": {"code", "message", "errors": [{"reason"}]}}`.
fn from_response(status: u16, body: &str) -> SinkError {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = &parsed["error"];
    let reason = error["errors"][0]["reason"].as_str().unwrap_or_default();
    let message = error["message"].as_str().unwrap_or(body);
    classify(status, reason, message)
}

fn classify(status: u16, reason: &str, message: &str) -> SinkError {
    classify_reason(
        Some(status),
        reason,
        format!("BigQuery answered {status} {reason}: {message}"),
    )
}

/// Reasons that set a table aside until the next run: a quota, or
/// credentials and permissions. Never split on them.
const SET_ASIDE_REASONS: [&str; 5] = [
    "quotaExceeded",
    "accessDenied",
    "billingNotEnabled",
    "billingTierLimitExceeded",
    "unauthorized",
];

fn classify_reason(status: Option<u16>, reason: &str, message: String) -> SinkError {
    let failure =
        if RETRYABLE_REASONS.contains(&reason) || status.is_some_and(|s| s == 429 || s >= 500) {
            Failure::Retryable
        } else if SET_ASIDE_REASONS.contains(&reason) || matches!(status, Some(401 | 403)) {
            Failure::SetAside
        } else {
            Failure::Failed
        };
    SinkError::new(failure, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_follow_bigquery_documentation() {
        assert!(classify(503, "backendError", "try again").is_retryable());
        assert!(classify(403, "rateLimitExceeded", "slow down").is_retryable());
        assert!(classify(429, "", "").is_retryable());
        assert!(classify(500, "internalError", "").is_retryable());
        let bad = from_response(
            400,
            r#"{"error":{"code":400,"message":"Invalid schema","errors":[{"reason":"invalid"}]}}"#,
        );
        assert_eq!(bad.failure, Failure::Failed);
        assert!(bad.message.contains("Invalid schema"), "{}", bad.message);
        assert_eq!(classify(404, "notFound", "").failure, Failure::Failed);
        // Never split, never retried now: the table waits for the next run.
        assert_eq!(
            classify(403, "quotaExceeded", "").failure,
            Failure::SetAside
        );
        assert_eq!(classify(403, "accessDenied", "").failure, Failure::SetAside);
        assert_eq!(classify(401, "", "").failure, Failure::SetAside);
    }

    fn row(text: &str) -> Row {
        Row {
            day: chrono::NaiveDate::MIN,
            at: chrono::DateTime::<chrono::Utc>::MIN_UTC,
            json: text.to_owned(),
        }
    }

    fn proto(reason: &str, message: &str) -> ErrorProto {
        ErrorProto {
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            ..ErrorProto::default()
        }
    }

    #[test]
    fn a_failed_load_job_names_its_rows_by_position() {
        // Rows of 9, 10 and 5 bytes: they start at 0, 10 and 21.
        let rows = [row("{\"a\":111}"), row("{\"a\":2222}"), row("{\"a\"}")];
        let summary = proto(
            "invalid",
            "Error while reading data, error message: JSON table encountered too many errors, giving up. Rows: 2; errors: 2.",
        );
        let errors = [
            summary.clone(),
            proto(
                "invalid",
                "Error while reading data, error message: JSON parsing error in row starting at position 10: Could not convert value to double.",
            ),
            proto(
                "invalid",
                "Error while reading data, error message: JSON parsing error in row starting at position 21: Parser terminated before end of string",
            ),
        ];
        let err = job_failure("j", &summary, &errors, &rows);
        let Failure::Rows { named, unexplained } = err.failure else {
            panic!("row-level: {err:?}");
        };
        assert_eq!(named.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2]);
        assert!(named[0].1.contains("Could not convert value to double"));
        assert!(!unexplained);

        // Errors that name no row: still row-level (the summary says so), unexplained.
        let errors = [
            summary.clone(),
            proto("invalid", "Error while reading data: something odd"),
        ];
        let err = job_failure("j", &summary, &errors, &rows);
        assert_eq!(
            err.failure,
            Failure::Rows {
                named: vec![],
                unexplained: true
            }
        );

        // Nothing about rows: not split.
        let schema = proto("invalid", "Provided Schema does not match Table");
        assert_eq!(
            job_failure("j", &schema, std::slice::from_ref(&schema), &rows).failure,
            Failure::Failed
        );
        // A quota in a job: set aside.
        let quota = proto(
            "quotaExceeded",
            "Quota exceeded: Your table exceeded quota for imports or query appends per table",
        );
        assert_eq!(
            job_failure("j", &quota, &[], &rows).failure,
            Failure::SetAside
        );
    }

    #[test]
    fn partition_filters_merge_consecutive_days() {
        let day = |d: &str| d.parse::<chrono::NaiveDate>().expect("date");
        let filter = partition_filter(
            "t",
            ["2026-11-20", "2026-11-21", "2026-11-20", "2030-01-01"]
                .into_iter()
                .map(day),
        );
        assert_eq!(
            filter,
            "((t >= TIMESTAMP '2026-11-20' AND t < TIMESTAMP '2026-11-22') OR (t >= TIMESTAMP '2030-01-01' AND t < TIMESTAMP '2030-01-02'))"
        );
    }

    #[test]
    fn streaming_rows_carry_json_columns_as_strings_by_schema() {
        let table = TableSpec::for_kind(crate::keys::EventKind::Prediction);
        let line = r#"{"prediction_id":"p","model_predictions":"ridge","selected_prediction":0.5,"raw":{"n":0.2340,"big":123456789012345678901234567890}}"#;
        let row = streaming_row(table, line).expect("object");
        assert_eq!(
            row["raw"], r#"{"n":0.2340,"big":123456789012345678901234567890}"#,
            "raw as written"
        );
        assert_eq!(
            row["model_predictions"], "\"ridge\"",
            "a JSON column holding a string is that JSON text"
        );
        assert_eq!(row["selected_prediction"], 0.5);
        assert_eq!(row["prediction_id"], "p");
    }

    #[test]
    fn only_rows_within_the_streaming_window_stream() {
        let now = chrono::Utc::now();
        let row = |at: chrono::DateTime<chrono::Utc>| Row {
            day: at.date_naive(),
            at,
            json: String::new(),
        };
        assert!(streamable(&row(now), now));
        assert!(streamable(
            &row(now - chrono::TimeDelta::days(4 * 365)),
            now
        ));
        assert!(!streamable(
            &row(now - chrono::TimeDelta::days(5 * 365)),
            now
        ));
        assert!(!streamable(&row(now + chrono::TimeDelta::days(365)), now));
    }

    #[test]
    fn local_api_urls_need_no_token() {
        assert!(is_local("http://127.0.0.1:9050"));
        assert!(is_local("http://localhost:1"));
        assert!(!is_local("https://bigquery.googleapis.com"));
    }
}
