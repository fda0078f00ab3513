//! Lookups of cached records by id, for programs that use the library (the
//! ML API reading a transaction, a support tool reading a prediction). Every
//! lookup counts as a hit or a miss in `flit:cache:stats`, in the same round
//! trip as the read (totals, and a per-minute ring for the last hour), so
//! `monitor` and `/metrics` show the hit rate of all processes together.

use redis::aio::MultiplexedConnection;
use serde::Serialize;
use serde_json::Value;

use crate::configuration::Settings;
use crate::event::{Rejection, check_id_text};
use crate::keys::{CACHE_STATS, EventKind};
use crate::store::connection::Role;
use crate::store::scripts;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("invalid id: {0}")]
    InvalidId(Rejection),
    #[error("Redis lookup failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{key} holds a value that is not JSON: {problem}")]
    Corrupt { key: String, problem: String },
}

/// Cached records of both kinds, looked up by id.
#[derive(Clone)]
pub struct RecordCache {
    transactions: MultiplexedConnection,
    predictions: MultiplexedConnection,
    state_db: i64,
}

impl RecordCache {
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let redis = &settings.redis;
        Ok(RecordCache {
            transactions: redis
                .open(Role::Lookups, redis.db_for(EventKind::Transaction))
                .await?,
            predictions: redis
                .open(Role::Lookups, redis.db_for(EventKind::Prediction))
                .await?,
            state_db: redis.db_transactions,
        })
    }

    /// The cached transaction `tx:{id}`, if it is still in Redis.
    pub async fn get_transaction(&self, id: &str) -> Result<Option<Value>, LookupError> {
        self.get(EventKind::Transaction, id).await
    }

    /// The cached prediction `pred:{id}`, if it is still in Redis.
    pub async fn get_prediction(&self, id: &str) -> Result<Option<Value>, LookupError> {
        self.get(EventKind::Prediction, id).await
    }

    async fn get(&self, kind: EventKind, id: &str) -> Result<Option<Value>, LookupError> {
        check_id_text(kind.id_field(), id).map_err(LookupError::InvalidId)?;
        let key = kind.record_key(id);
        let mut conn = match kind {
            EventKind::Transaction => self.transactions.clone(),
            EventKind::Prediction => self.predictions.clone(),
        };
        let text: Option<String> = scripts::CACHE_LOOKUP
            .key(CACHE_STATS)
            .arg(self.state_db)
            .arg(kind.name())
            .arg(&key)
            .invoke_async(&mut conn)
            .await?;
        text.map(|text| {
            serde_json::from_str(&text).map_err(|e| LookupError::Corrupt {
                key,
                problem: e.to_string(),
            })
        })
        .transpose()
    }
}

/// Lookups of one kind: totals since the counters began (for the
/// Prometheus counter) and the last hour's (for the hit rate, so a falling
/// rate shows within the hour).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LookupCounts {
    pub hits: u64,
    pub misses: u64,
    pub last_hour_hits: u64,
    pub last_hour_misses: u64,
    /// Last hour's hits / lookups; absent when the hour saw none.
    pub hit_rate: Option<f64>,
}

impl LookupCounts {
    fn new(hits: u64, misses: u64, last_hour_hits: u64, last_hour_misses: u64) -> Self {
        let hour = last_hour_hits + last_hour_misses;
        LookupCounts {
            hits,
            misses,
            last_hour_hits,
            last_hour_misses,
            hit_rate: (hour > 0).then(|| last_hour_hits as f64 / hour as f64),
        }
    }

    /// Lookups in the last hour.
    pub fn last_hour(&self) -> u64 {
        self.last_hour_hits + self.last_hour_misses
    }
}

/// Reads the lookup counters of `kind` from the state database.
pub async fn lookup_counts(
    state: &mut MultiplexedConnection,
    kind: EventKind,
) -> redis::RedisResult<LookupCounts> {
    let (hits, misses, hour_hits, hour_misses): (u64, u64, u64, u64) = scripts::CACHE_STATS
        .key(CACHE_STATS)
        .arg(kind.name())
        .invoke_async(state)
        .await?;
    Ok(LookupCounts::new(hits, misses, hour_hits, hour_misses))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hit_rate_is_the_last_hours_and_absent_when_it_saw_no_lookup() {
        assert_eq!(LookupCounts::new(9, 9, 0, 0).hit_rate, None);
        assert_eq!(LookupCounts::new(100, 0, 3, 1).hit_rate, Some(0.75));
    }
}
