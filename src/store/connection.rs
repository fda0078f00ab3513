//! Where Redis is and how each part of flit-cache reaches it. Every
//! connection is opened for a [`Role`] (worker, producer, uploader, monitor,
//! lookups), with that role's timeouts from configuration, so no caller
//! picks its own and the roles can become Redis users of their own. The URL
//! may hold a password, so it is wrapped in [`RedisUrl`], whose `Debug` and
//! `Display` only ever show the redacted form.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};

use super::keys::EventKind;

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
    /// Covers every form redis-rs reads: a password in the userinfo
    /// (`redis://`, `rediss://`, `valkey://`...), and the `pass` or
    /// `password` query parameter of `unix://` and `redis+unix://` URLs.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                if url.query().is_some() {
                    let pairs: Vec<(String, String)> = url
                        .query_pairs()
                        .map(|(name, value)| {
                            let secret =
                                matches!(name.to_ascii_lowercase().as_str(), "pass" | "password");
                            (
                                name.into_owned(),
                                if secret {
                                    "***".to_owned()
                                } else {
                                    value.into_owned()
                                },
                            )
                        })
                        .collect();
                    url.query_pairs_mut().clear().extend_pairs(pairs);
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

/// Who a connection is for; each role has its own response timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Stream workers: blocking group reads and commits.
    Worker,
    /// `Producer::send` and the spool replay: short calls, spooled on failure.
    Producer,
    /// Upload runs and operator commands (`dead-letter`): long scripts in slices.
    Uploader,
    /// `monitor`, `/metrics` and `/readyz`: read-only probes.
    Monitor,
    /// Record lookups (`RecordCache`).
    Lookups,
}

/// How long each role waits for Redis (`FLIT_REDIS_*_TIMEOUT_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleTimeouts {
    /// Opening a connection, for every role.
    pub connect: Duration,
    /// A worker's reply, on top of its BLOCK time.
    pub worker: Duration,
    /// One producer call (`FLIT_PRODUCER_TIMEOUT_MS`).
    pub producer: Duration,
    pub uploader: Duration,
    pub monitor: Duration,
    pub lookups: Duration,
}

impl Default for RoleTimeouts {
    fn default() -> Self {
        RoleTimeouts {
            connect: Duration::from_secs(2),
            worker: Duration::from_secs(5),
            producer: Duration::from_millis(100),
            uploader: Duration::from_secs(30),
            monitor: Duration::from_secs(3),
            lookups: Duration::from_secs(2),
        }
    }
}

impl RoleTimeouts {
    /// The response timeout of `role`'s connections.
    pub fn response(&self, role: Role) -> Duration {
        match role {
            Role::Worker => self.worker,
            Role::Producer => self.producer,
            Role::Uploader => self.uploader,
            Role::Monitor => self.monitor,
            Role::Lookups => self.lookups,
        }
    }
}

/// Where Redis is, which database holds each kind, and how long records live.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: RedisUrl,
    pub db_transactions: i64,
    pub db_predictions: i64,
    pub ttl_seconds: u64,
    pub timeouts: RoleTimeouts,
}

impl RedisSettings {
    /// The Redis database that holds events and records of `kind`.
    pub fn db_for(&self, kind: EventKind) -> i64 {
        match kind {
            EventKind::Transaction => self.db_transactions,
            EventKind::Prediction => self.db_predictions,
        }
    }

    /// Opens a connection of `role` to database `db`, bounded by the role's
    /// timeouts; the error names the server (redacted) and the database.
    pub async fn open(&self, role: Role, db: i64) -> anyhow::Result<MultiplexedConnection> {
        self.open_waiting(role, db, Duration::ZERO).await
    }

    /// As `open`, for a connection whose commands may block `block` longer
    /// (a worker's `XREADGROUP ... BLOCK`).
    pub async fn open_blocking(
        &self,
        db: i64,
        block: Duration,
    ) -> anyhow::Result<MultiplexedConnection> {
        self.open_waiting(Role::Worker, db, block).await
    }

    async fn open_waiting(
        &self,
        role: Role,
        db: i64,
        block: Duration,
    ) -> anyhow::Result<MultiplexedConnection> {
        let client = self.url.client(db)?;
        let response = self.timeouts.response(role) + block;
        let connecting = connect(&client, self.timeouts.connect, response);
        // The connect timeout covers the handshake (AUTH, SELECT) too.
        match tokio::time::timeout(self.timeouts.connect + response, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(anyhow::Error::new(err).context(format!(
                "cannot reach Redis at {} (database {db})",
                self.url
            ))),
            Err(_) => anyhow::bail!(
                "cannot reach Redis at {} (database {db}): no answer within {} ms",
                self.url,
                (self.timeouts.connect + response).as_millis()
            ),
        }
    }

    /// A connection of `role` to `db` opened on first use (see [`LazyConnection`]).
    pub fn lazy(&self, role: Role, db: i64) -> anyhow::Result<LazyConnection> {
        self.lazy_within(role, db, self.timeouts.response(role))
    }

    /// As `lazy`, with connecting and each call bounded by `limit` when that
    /// is shorter than the role's timeouts (`/readyz` answers fast).
    pub fn lazy_within(
        &self,
        role: Role,
        db: i64,
        limit: Duration,
    ) -> anyhow::Result<LazyConnection> {
        let call = self.timeouts.response(role).min(limit);
        Ok(LazyConnection::new(
            self.url.client(db)?,
            self.timeouts.connect.min(call),
            call,
        ))
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
async fn connect(
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
    /// Bounds connecting (producers use their call timeout: a caller never
    /// waits longer than one call for a Redis that is down).
    connect_timeout: Duration,
    /// Bounds each call made with `query`.
    timeout: Duration,
}

impl LazyConnection {
    fn new(client: Client, connect_timeout: Duration, timeout: Duration) -> Self {
        LazyConnection {
            client,
            slot: std::sync::Mutex::new(None),
            connect_timeout,
            timeout,
        }
    }

    /// The timeout of one call on this connection.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn get(&self) -> anyhow::Result<MultiplexedConnection> {
        if let Some(conn) = self.lock().clone() {
            return Ok(conn);
        }
        let conn = tokio::time::timeout(
            self.connect_timeout,
            connect(&self.client, self.connect_timeout, Duration::from_secs(30)),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "could not connect to Redis within {} ms",
                self.connect_timeout.as_millis()
            )
        })??;
        *self.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection after an error or timeout.
    pub fn reset(&self) {
        *self.lock() = None;
    }

    /// A PING with the call timeout (readiness); a failure resets the connection.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.get().await?;
        let _: String = self
            .bounded(self.timeout, redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
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
        for form in [
            "unix:///run/redis.sock?db=1&pass=s3cret",
            "unix:///run/redis.sock?user=flit&password=s3cret",
            "redis+unix:///run/redis.sock?pass=s3cret",
            "redis://flit:s3cret@host:6379/?protocol=resp3",
            "rediss://:s3cret@host",
        ] {
            let url: RedisUrl = form.parse().unwrap_or_else(|e| panic!("{form}: {e}"));
            let shown = format!("{url} {url:?} {}", url.redacted());
            assert!(!shown.contains("s3cret"), "{form} shows as {shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    proptest::proptest! {
        /// Whatever the password, in whichever place redis-rs reads one, it
        /// is never shown.
        #[test]
        fn no_password_is_ever_shown(password in "[A-Za-z0-9]{6,20}", form in 0usize..3) {
            let text = match form {
                0 => format!("redis://:{password}@host:6379"),
                1 => format!("unix:///run/redis.sock?pass={password}"),
                _ => format!("redis+unix:///run/redis.sock?db=2&password={password}"),
            };
            let url: RedisUrl = text.parse().map_err(proptest::test_runner::TestCaseError::fail)?;
            proptest::prop_assert!(!url.redacted().contains(&password), "{}", url.redacted());
        }
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
