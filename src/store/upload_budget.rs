//! `LoadJobBudget`: the load jobs a table may still get. BigQuery allows
//! 1,500 load jobs per table per day, failed ones included, and refills that
//! quota over a rolling 24 hours; flit-cache keeps under its own budget
//! (`FLIT_LOAD_JOBS_PER_DAY`, default 1,000) over the same rolling window,
//! so retries and poison isolation never spend a table's quota, not even
//! across midnight. Kept in Redis per table, so every process shares it.

use redis::aio::MultiplexedConnection;

use super::scripts;
use crate::keys::{EventKind, load_jobs_key};
use crate::warehouse::{JobBudget, SinkError, TableSpec};

/// The window BigQuery's per-table quota refills over.
const WINDOW_MS: u64 = 24 * 3_600_000;

pub struct LoadJobBudget {
    conn: MultiplexedConnection,
    kind: EventKind,
    per_day: u64,
}

impl LoadJobBudget {
    /// `conn` is the kind's database, where the count lives.
    pub fn new(conn: MultiplexedConnection, kind: EventKind, per_day: u64) -> Self {
        LoadJobBudget {
            conn,
            kind,
            per_day,
        }
    }
}

#[async_trait::async_trait]
impl JobBudget for LoadJobBudget {
    async fn reserve(&self, table: TableSpec) -> Result<(), SinkError> {
        let mut conn = self.conn.clone();
        let member = format!(
            "{}-{:016x}",
            chrono::Utc::now().timestamp_micros(),
            rand::random::<u64>()
        );
        let used: u64 = scripts::BUDGET_TAKE
            .key(load_jobs_key(self.kind))
            .arg(WINDOW_MS)
            .arg(self.per_day)
            .arg(member)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| SinkError::retryable(format!("cannot count load jobs in Redis: {e}")))?;
        if used > self.per_day {
            return Err(SinkError::set_aside(format!(
                "{} has used its budget of {} load jobs in the last 24 hours (FLIT_LOAD_JOBS_PER_DAY; BigQuery allows 1,500 and refills over a rolling 24 hours); its batches wait for a later run",
                table.qualified(),
                self.per_day
            )));
        }
        Ok(())
    }
}
