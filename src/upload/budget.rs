//! `DailyLoadJobs`: the load jobs a table may still get today. BigQuery
//! allows 1,500 load jobs per table per day, failed ones included; flit-cache
//! keeps under its own budget (`FLIT_LOAD_JOBS_PER_DAY`, default 1,000), so
//! retries and poison isolation can never spend a table's quota. Counted in
//! Redis per table and UTC day, so every process shares the count.

use redis::Script;
use redis::aio::MultiplexedConnection;

use crate::keys::{EventKind, load_jobs_key};
use crate::warehouse::{JobBudget, SinkError, TableSpec};

/// INCR with a two-day expiry, at maxmemory too: counting must not stop an
/// upload that frees memory.
const TAKE_ONE: &str = "#!lua flags=allow-oom\nlocal n = redis.call('INCR', KEYS[1])\nif n == 1 then redis.call('EXPIRE', KEYS[1], 172800) end\nreturn n";

pub struct DailyLoadJobs {
    conn: MultiplexedConnection,
    kind: EventKind,
    per_day: u64,
}

impl DailyLoadJobs {
    /// `conn` is the kind's database, where the counter lives.
    pub fn new(conn: MultiplexedConnection, kind: EventKind, per_day: u64) -> Self {
        DailyLoadJobs {
            conn,
            kind,
            per_day,
        }
    }
}

#[async_trait::async_trait]
impl JobBudget for DailyLoadJobs {
    async fn reserve(&self, table: TableSpec) -> Result<(), SinkError> {
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let mut conn = self.conn.clone();
        let used: u64 = Script::new(TAKE_ONE)
            .key(load_jobs_key(self.kind, &day))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| SinkError::retryable(format!("cannot count load jobs in Redis: {e}")))?;
        if used > self.per_day {
            return Err(SinkError::set_aside(format!(
                "{} has used its budget of {} load jobs for {day} (FLIT_LOAD_JOBS_PER_DAY; BigQuery allows 1,500); its batches wait for tomorrow's run",
                table.qualified(),
                self.per_day
            )));
        }
        Ok(())
    }
}
