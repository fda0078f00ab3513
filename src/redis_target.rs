//! Where Redis is and how to reach one of its databases. The URL may hold a
//! password, so it is wrapped in [`RedisUrl`], whose `Debug` and `Display`
//! only ever show the redacted form.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};

/// A Redis URL (`redis://`, `rediss://`, `unix://`), possibly with a password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl Default for RedisUrl {
    fn default() -> Self {
        RedisUrl("redis://127.0.0.1:6379".to_owned())
    }
}

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let url = RedisUrl(text.to_owned());
        match text.into_connection_info() {
            Ok(_) => Ok(url),
            // The parser's message may quote the URL, so it is not passed on.
            Err(_) => Err(format!(
                "expected a redis://, rediss:// or unix:// URL, got {}",
                url.redacted()
            )),
        }
    }
}

impl RedisUrl {
    /// The URL with any password replaced by `***`, safe for logs and reports.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.to_string()
            }
            Err(_) => "<unparseable URL>".to_owned(),
        }
    }

    /// A client for database `db` of this server.
    pub fn client(&self, db: i64) -> anyhow::Result<Client> {
        let info =
            self.0.as_str().into_connection_info().with_context(|| {
                format!("REDIS_URL {} is not a valid Redis URL", self.redacted())
            })?;
        let redis_settings = info.redis_settings().clone().set_db(db);
        let info = info.set_redis_settings(redis_settings);
        Client::open(info).with_context(|| format!("cannot use Redis at {}", self.redacted()))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A `TIME` reply (seconds, microseconds) as a time: the Redis server's
/// clock, which the door's window and arrival stamps are read against, so
/// that the clocks of producers and workers do not matter.
pub fn clock_reading((seconds, micros): (i64, i64)) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(
        seconds.saturating_mul(1_000_000).saturating_add(micros),
    )
    .unwrap_or_else(chrono::Utc::now)
}

/// The Redis server's clock.
pub async fn server_time(
    conn: &mut MultiplexedConnection,
) -> redis::RedisResult<chrono::DateTime<chrono::Utc>> {
    Ok(clock_reading(redis::cmd("TIME").query_async(conn).await?))
}

/// Opens a connection of its own to `client`. `response_timeout` bounds every
/// command; blocking reads need it longer than their BLOCK time.
pub async fn connect(
    client: &Client,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// A connection opened on first use and dropped after a failure, so the
/// next call reconnects. Connecting is bounded by `timeout`, so callers never
/// wait long on a Redis that is down.
pub struct LazyConnection {
    client: Client,
    slot: std::sync::Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

impl LazyConnection {
    pub fn new(client: Client, timeout: Duration) -> Self {
        LazyConnection {
            client,
            slot: std::sync::Mutex::new(None),
            timeout,
        }
    }

    pub async fn get(&self) -> anyhow::Result<MultiplexedConnection> {
        if let Some(conn) = self.lock().clone() {
            return Ok(conn);
        }
        let conn = tokio::time::timeout(
            self.timeout,
            connect(&self.client, self.timeout, Duration::from_secs(30)),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "could not connect to Redis within {} ms",
                self.timeout.as_millis()
            )
        })??;
        *self.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection after an error or timeout.
    pub fn reset(&self) {
        *self.lock() = None;
    }

    /// Runs `command` with the call timeout; a failure resets the connection.
    pub async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> anyhow::Result<T> {
        let mut conn = self.get().await?;
        self.bounded(self.timeout, command.query_async(&mut conn))
            .await
    }

    /// Awaits `call` on this connection for at most `timeout`; resets on failure.
    pub async fn bounded<T>(
        &self,
        timeout: Duration,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                self.reset();
                Err(err.into())
            }
            Err(_) => {
                self.reset();
                anyhow::bail!("Redis did not answer within {} ms", timeout.as_millis())
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_shows() {
        let url: RedisUrl = "redis://:s3cret@10.0.0.1:6380/0".parse().expect("valid");
        assert!(!format!("{url} {url:?}").contains("s3cret"));
        assert!(url.redacted().contains("***"));
        let url: RedisUrl = "rediss://user:s3cret@host:6380".parse().expect("valid");
        assert!(!url.redacted().contains("s3cret"));
    }

    #[test]
    fn wrong_scheme_is_refused_without_echoing_the_secret() {
        let err = "http://u:s3cret@host"
            .parse::<RedisUrl>()
            .expect_err("wrong scheme");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn client_selects_the_database() {
        let url = RedisUrl::default();
        let client = url.client(3).expect("valid");
        assert_eq!(client.get_connection_info().redis_settings().db(), 3);
    }
}
