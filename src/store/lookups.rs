//! Lookups of cached records by id, for programs that use the library (the
//! ML API reading a transaction, a support tool reading a prediction). A
//! lookup is a plain GET; it then counts as a hit or a miss in the state
//! database (a total, and the current minute's counter, which expires within
//! the hour: `keys::lookup_minute_key`), so `monitor` and `/metrics` show the
//! hit rate of all processes together. The counters take INCR and EXPIRE
//! only, on names from a closed set: the lookup user needs no script, and
//! cannot grow Redis or run code. A count that fails or waits (a full Redis
//! refuses INCR, a write pause holds it) is dropped; the record is still
//! returned.

use redis::aio::MultiplexedConnection;
use serde::Serialize;
use serde_json::Value;

use super::RedisSettings;
use crate::event::{Rejection, check_id_text};
use crate::keys::{
    EventKind, LOOKUP_MINUTE_TTL_SECONDS, LookupResult, lookup_minute_key, lookup_total_key,
};
use crate::store::connection::Role;

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
///
/// ```no_run
/// use flit_cache::cache::RecordCache;
/// use flit_cache::configuration::Settings;
///
/// # async fn example() -> anyhow::Result<()> {
/// let settings = Settings::from_env()?;
/// let cache = RecordCache::connect(&settings.redis).await?;
/// match cache.get_prediction("pred-1").await? {
///     Some(prediction) => println!("score {}", prediction["selected_prediction"]),
///     None => println!("not cached (expired, or never sent)"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RecordCache {
    transactions: MultiplexedConnection,
    predictions: MultiplexedConnection,
    /// Counts go on a connection of their own to the state database, so a
    /// count held up (a write pause, a full Redis) never delays a GET.
    counts: MultiplexedConnection,
}

/// How long a lookup waits for its count before dropping it: statistics
/// never cost the caller more than this.
const COUNT_BOUND: std::time::Duration = std::time::Duration::from_millis(100);

impl RecordCache {
    /// Connects to both kinds' databases (and the counters' one) with the
    /// lookup role's timeout, `FLIT_REDIS_LOOKUP_TIMEOUT_MS`.
    pub async fn connect(redis: &RedisSettings) -> anyhow::Result<Self> {
        Ok(RecordCache {
            transactions: redis
                .open(Role::Lookups, redis.db_for(EventKind::Transaction))
                .await?,
            predictions: redis
                .open(Role::Lookups, redis.db_for(EventKind::Prediction))
                .await?,
            counts: redis.open(Role::Lookups, redis.db_transactions).await?,
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
        let text: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        let result = match text {
            Some(_) => LookupResult::Hit,
            None => LookupResult::Miss,
        };
        // A count that fails or waits past COUNT_BOUND costs the statistics
        // one lookup, not the caller its record.
        match tokio::time::timeout(
            COUNT_BOUND,
            count_lookup(&mut self.counts.clone(), kind, result),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "lookup not counted"),
            Err(_) => tracing::debug!("lookup not counted: Redis did not answer in time"),
        }
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

/// Counts one lookup of `kind` in the state database `state`: its total,
/// and the current minute's counter, given its expiry when it has none
/// (`EXPIRE NX`, sent with every count: a count cut off between the two
/// leaves a counter without one only until the next count of that minute).
/// No MULTI: the lookup user may not queue commands, which would let it
/// grow Redis.
pub(crate) async fn count_lookup(
    state: &mut MultiplexedConnection,
    kind: EventKind,
    result: LookupResult,
) -> redis::RedisResult<()> {
    let minute = minute_of_hour(chrono::Utc::now());
    let slot = lookup_minute_key(kind, result, minute);
    redis::pipe()
        .cmd("INCR")
        .arg(lookup_total_key(kind, result))
        .ignore()
        .cmd("INCR")
        .arg(&slot)
        .ignore()
        .cmd("EXPIRE")
        .arg(&slot)
        .arg(LOOKUP_MINUTE_TTL_SECONDS)
        .arg("NX")
        .ignore()
        .query_async(state)
        .await
}

/// The minute of the hour (0-59) a lookup at `at` counts in. Each process
/// reads its own clock: one that is off by s seconds counts in a minute
/// that many seconds away, which can be the last or the next hour's; the
/// hour's rate is off by that much, no more.
fn minute_of_hour(at: chrono::DateTime<chrono::Utc>) -> u32 {
    (at.timestamp().rem_euclid(3_600) / 60) as u32
}

/// Reads the lookup counters of `kind` from the state database: the
/// totals, and the minute counters that still exist (the last hour's).
pub(crate) async fn lookup_counts(
    state: &mut MultiplexedConnection,
    kind: EventKind,
) -> redis::RedisResult<LookupCounts> {
    let mut keys = Vec::with_capacity(122);
    for result in LookupResult::ALL {
        keys.push(lookup_total_key(kind, result));
        keys.extend((0..60).map(|minute| lookup_minute_key(kind, result, minute)));
    }
    let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query_async(state).await?;
    let sum = |range: std::ops::Range<usize>| -> u64 {
        values[range].iter().map(|v| v.unwrap_or(0)).sum()
    };
    // Per result: its total, then its 60 minutes.
    Ok(LookupCounts::new(
        values[0].unwrap_or(0),
        values[61].unwrap_or(0),
        sum(1..61),
        sum(62..122),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hit_rate_is_the_last_hours_and_absent_when_it_saw_no_lookup() {
        assert_eq!(LookupCounts::new(9, 9, 0, 0).hit_rate, None);
        assert_eq!(LookupCounts::new(100, 0, 3, 1).hit_rate, Some(0.75));
    }

    #[test]
    fn minute_counters_have_names_from_a_closed_set() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .expect("time")
                .with_timezone(&chrono::Utc)
        };
        assert_eq!(minute_of_hour(at("2026-12-03T15:00:00Z")), 0);
        assert_eq!(minute_of_hour(at("2026-12-03T15:59:59Z")), 59);
        assert_eq!(minute_of_hour(at("1969-12-31T23:59:00Z")), 59);
        assert_eq!(
            lookup_minute_key(EventKind::Prediction, LookupResult::Miss, 7),
            "flit:cache:predictions:misses:07"
        );
        assert_eq!(
            lookup_minute_key(EventKind::Transaction, LookupResult::Hit, 67),
            "flit:cache:transactions:hits:07"
        );
    }
}
