//! The warehouse side of the pipeline: the tables, rows, and the sinks that
//! take a batch of rows. Sinks sit behind one small trait, so the local
//! folder and BigQuery are interchangeable for the uploader and in tests.

mod bigquery;
mod local;
pub mod rows;
pub mod schema_change;

use std::future::Future;

pub use bigquery::{BigQueryWarehouse, WriteMode};
pub use local::LocalWarehouse;
pub use rows::Row;

use std::path::PathBuf;

use secrecy::SecretString;

use crate::keys::EventKind;

/// Where uploads go (FLIT_SINK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkChoice {
    BigQuery,
    /// NDJSON files under FLIT_WAREHOUSE_DIR.
    Local,
    /// No usable sink, and why (FLIT_SINK unset in the image without a
    /// project, a typo, bigquery without a project): uploads refuse to
    /// start with this reason; ingest runs on.
    Refused(String),
}

/// Where uploads go (used by the upload commands).
#[derive(Debug, Clone)]
pub struct WarehouseSettings {
    /// FLIT_SINK; unset, it follows BIGQUERY_PROJECT (the quick start),
    /// except in the image, where it must be chosen.
    pub sink: SinkChoice,
    pub bigquery_project: Option<String>,
    pub credentials_file: Option<PathBuf>,
    /// The service-account key itself, for platforms that hold secrets in
    /// variables rather than files (Railway).
    pub credentials_json: Option<SecretString>,
    pub bigquery_api_url: String,
    /// BigQuery location of the datasets and jobs (BIGQUERY_LOCATION).
    pub location: String,
    pub warehouse_dir: PathBuf,
    pub write_mode: WriteMode,
}

/// The sink the settings choose: BigQuery when `BIGQUERY_PROJECT` is set,
/// else the local warehouse folder.
pub enum Sink {
    Local(LocalWarehouse),
    BigQuery(Box<BigQueryWarehouse>),
}

/// The sink FLIT_SINK chose, named in the log each time one is opened (at
/// every upload start). Refused, with the reason, when none is usable.
pub async fn configured(settings: &WarehouseSettings) -> anyhow::Result<Sink> {
    let sink = match &settings.sink {
        SinkChoice::BigQuery => {
            Sink::BigQuery(Box::new(BigQueryWarehouse::connect(settings).await?))
        }
        SinkChoice::Local => Sink::Local(LocalWarehouse::new(&settings.warehouse_dir)),
        SinkChoice::Refused(why) => anyhow::bail!("no upload sink: {why}"),
    };
    tracing::info!(sink = %sink.describe(), "upload sink");
    Ok(sink)
}

/// Why an upload in the image does not start without FLIT_SINK.
pub const UNSET_SINK: &str = "FLIT_SINK is not set: this image uploads nowhere until it is told where. Set FLIT_SINK=bigquery (with BIGQUERY_PROJECT), or FLIT_SINK=local (files in FLIT_WAREHOUSE_DIR, lost with the container unless it is a volume)";

impl Warehouse for Sink {
    fn describe(&self) -> String {
        match self {
            Sink::Local(sink) => sink.describe(),
            Sink::BigQuery(sink) => sink.describe(),
        }
    }

    async fn ensure_table(&self, table: TableSpec) -> Result<(), SinkError> {
        match self {
            Sink::Local(sink) => sink.ensure_table(table).await,
            Sink::BigQuery(sink) => sink.ensure_table(table).await,
        }
    }

    async fn write(&self, batch: &RowBatch<'_>) -> Result<WriteOutcome, SinkError> {
        match self {
            Sink::Local(sink) => sink.write(batch).await,
            Sink::BigQuery(sink) => sink.write(batch).await,
        }
    }

    async fn freshness(&self, table: TableSpec, window_days: u32) -> Result<Freshness, SinkError> {
        match self {
            Sink::Local(sink) => sink.freshness(table, window_days).await,
            Sink::BigQuery(sink) => sink.freshness(table, window_days).await,
        }
    }
}

/// What a table received lately, read from its last `window_days` daily
/// partitions (by event time) so that the check stays cheap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    /// Rows whose `_ingestion_timestamp` is within the last 24 hours.
    pub rows_last_24h: u64,
    /// The newest event time in those partitions.
    pub newest_event_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A warehouse table and how it is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    pub kind: EventKind,
    pub dataset: &'static str,
    pub table: &'static str,
    /// The TIMESTAMP column whose day is the partition.
    pub partition_field: &'static str,
    /// The BigQuery schema (`schemas/<table>.json`).
    pub schema_json: &'static str,
}

impl TableSpec {
    pub fn for_kind(kind: EventKind) -> TableSpec {
        match kind {
            EventKind::Transaction => TableSpec {
                kind,
                dataset: "flit_bnpl_raw",
                table: "raw_bnpl_txs_json",
                partition_field: "_timestamp",
                schema_json: crate::event::schema::table_schema_json(kind),
            },
            EventKind::Prediction => TableSpec {
                kind,
                dataset: "flit_ml_raw",
                table: "raw_bnpl_prediction_logs",
                partition_field: "prediction_timestamp",
                schema_json: crate::event::schema::table_schema_json(kind),
            },
        }
    }

    /// `dataset.table`, as people and BigQuery name it.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.dataset, self.table)
    }
}

/// One upload batch (or a part of one). `batch_id` is unique and stable:
/// writing the same batch again (after a crash) must not add its rows twice.
pub struct RowBatch<'a> {
    pub batch_id: &'a str,
    pub table: TableSpec,
    pub rows: &'a [Row],
    /// One id per record version (the SHA-1 of its payload), used where the
    /// sink deduplicates by row (insertId).
    pub row_ids: &'a [String],
    /// The batch's `_ingestion_timestamp`, unique to it: how a batch is found again.
    pub ingested_at: chrono::DateTime<chrono::Utc>,
    /// The batch may have reached the warehouse before (a recovered batch,
    /// or a retry after a failure that may have happened after the write).
    pub maybe_written: bool,
    /// Asked before every load job: BigQuery allows 1,500 per table a day.
    pub jobs: &'a dyn JobBudget,
}

/// Load jobs a sink may still start today for a table.
#[async_trait::async_trait]
pub trait JobBudget: Send + Sync {
    /// Takes one job from the budget, or says the table must wait
    /// (`Failure::SetAside`) because the day's budget is spent.
    async fn reserve(&self, table: TableSpec) -> Result<(), SinkError>;
}

/// No budget: the local sink starts no jobs; tests and benchmarks.
pub struct Unlimited;

#[async_trait::async_trait]
impl JobBudget for Unlimited {
    async fn reserve(&self, _table: TableSpec) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Rows of a batch the warehouse refused one by one (the rest were written).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Index into the batch's rows, and the warehouse's reason.
    pub rejected: Vec<(usize, String)>,
}

/// What a failed write means for its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again soon: network, 5xx, backendError, rateLimitExceeded.
    Retryable,
    /// The warehouse refused the batch because of some of its rows: those it
    /// named (index into the batch's rows, and its message), and whether
    /// other errors named no row (then the batch is split to find them).
    Rows {
        named: Vec<(usize, String)>,
        unexplained: bool,
    },
    /// Not this batch's fault and not worth retrying now: a quota, the day's
    /// job budget, credentials or permissions. The table waits for the next
    /// run, and its batches are neither split nor given up.
    SetAside,
    /// Anything else: the batch is kept for a later run.
    Failed,
}

/// A failed write, and what it means for the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub failure: Failure,
    pub message: String,
}

impl SinkError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(Failure::Retryable, message)
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(Failure::Failed, message)
    }

    pub fn set_aside(message: impl Into<String>) -> Self {
        Self::new(Failure::SetAside, message)
    }

    pub fn new(failure: Failure, message: impl Into<String>) -> Self {
        SinkError {
            failure,
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.failure == Failure::Retryable
    }
}

/// Where uploaded rows go.
pub trait Warehouse: Send + Sync {
    /// Where this sink writes, for reports (never with secrets).
    fn describe(&self) -> String;

    /// Creates the table (and dataset) if missing, partitioned by day.
    fn ensure_table(&self, table: TableSpec) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Writes a batch. Idempotent per `batch_id`: a batch written before
    /// (completely or in part) is completed, never doubled. Refuses none of
    /// the door's rows unless the warehouse itself does (`Failure::Rows`).
    fn write(
        &self,
        batch: &RowBatch<'_>,
    ) -> impl Future<Output = Result<WriteOutcome, SinkError>> + Send;

    /// Recent rows and the newest event time (the monitor's `--bigquery`).
    fn freshness(
        &self,
        table: TableSpec,
        window_days: u32,
    ) -> impl Future<Output = Result<Freshness, SinkError>> + Send;
}
