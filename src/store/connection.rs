//! Where Redis is and how each part of flit-cache reaches it. Every
//! connection is opened for a [`Role`] (worker, producer, uploader, monitor,
//! lookups), with that role's timeouts from configuration, so no caller
//! picks its own and the roles can become Redis users of their own. The URL
//! may hold a password, so it is wrapped in [`RedisUrl`], whose `Debug` and
//! `Display` only ever show the redacted form. A `rediss://` URL may carry
//! the TLS material of [`RedisTls`] (a private CA, a client certificate),
//! so every client made from it, for every role, trusts that CA and shows
//! that certificate.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo,
    TlsCertificates,
};
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use secrecy::{ExposeSecret, SecretSlice, SecretString};

use super::keys::EventKind;

/// A Redis URL (`redis://`, `rediss://`, `unix://`), possibly with a
/// password, and for `rediss://` the TLS files read at start-up.
///
/// The URL itself is a secret (it may hold the password): `Debug` and
/// `Display` show it redacted, and only a client is built from it.
#[derive(Clone)]
pub struct RedisUrl {
    text: SecretString,
    tls: Option<RedisTls>,
}

impl Default for RedisUrl {
    fn default() -> Self {
        RedisUrl {
            text: SecretString::from("redis://127.0.0.1:6379"),
            tls: None,
        }
    }
}

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let url = RedisUrl {
            text: SecretString::from(text),
            tls: None,
        };
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
        match url::Url::parse(self.text.expose_secret()) {
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

    /// This URL with `tls` for its connections. Only a `rediss://` URL
    /// speaks TLS, so for any other the TLS files would be ignored: that is
    /// refused here rather than connecting without them.
    pub fn with_tls(self, tls: RedisTls) -> Result<Self, String> {
        match self.speaks_tls() {
            true => Ok(RedisUrl {
                tls: Some(tls),
                ..self
            }),
            false => Err(format!(
                "REDIS_URL is {}, not a rediss:// URL: the TLS files are only used over TLS (use rediss://host:port)",
                self.redacted()
            )),
        }
    }

    /// What to fix when `err` is a failed TLS handshake (`": ..."`), or
    /// nothing: the server's certificate is not trusted, or the server
    /// wants (another) client certificate.
    pub fn tls_hint(&self, err: &redis::RedisError) -> String {
        if !self.speaks_tls() {
            return String::new();
        }
        let text = err.to_string();
        let has_ca = self.tls.as_ref().is_some_and(RedisTls::has_ca);
        let has_identity = self
            .tls
            .as_ref()
            .is_some_and(RedisTls::has_client_certificate);
        let hint = if text.contains("UnknownIssuer") {
            if has_ca {
                "the server's certificate is not signed by a CA in REDIS_CA_FILE (which replaces the built-in roots)"
            } else {
                "the server's certificate is not signed by a well-known CA: set REDIS_CA_FILE to the PEM file of the CA that signed it"
            }
        } else if text.contains("invalid peer certificate") {
            "the server's certificate is not valid for the host in REDIS_URL, has expired, or is not a server certificate"
        } else if text.contains("CertificateRequired") && !has_identity {
            "the server requires a client certificate (mutual TLS): set FLIT_REDIS_CERT_FILE and FLIT_REDIS_KEY_FILE"
        } else if has_identity
            && [
                "BadCertificate",
                "UnknownCA",
                "CertificateUnknown",
                "AccessDenied",
                "DecryptError",
            ]
            .iter()
            .any(|alert| text.contains(alert))
        {
            "the server refused the client certificate in FLIT_REDIS_CERT_FILE: is it signed by a CA the server trusts?"
        } else {
            return String::new();
        };
        format!(": {hint}")
    }

    /// Whether this is a `rediss://` URL (TLS over TCP).
    pub fn speaks_tls(&self) -> bool {
        self.text
            .expose_secret()
            .into_connection_info()
            .is_ok_and(|info| matches!(info.addr(), ConnectionAddr::TcpTls { .. }))
    }

    /// The TLS files of this server, if any were given.
    pub fn tls(&self) -> Option<&RedisTls> {
        self.tls.as_ref()
    }

    /// A client for database `db` of this server, with the TLS files if any.
    pub fn client(&self, db: i64) -> anyhow::Result<Client> {
        let info = self
            .text
            .expose_secret()
            .into_connection_info()
            .with_context(|| format!("REDIS_URL {} is not a valid Redis URL", self.redacted()))?;
        let redis_settings = info.redis_settings().clone().set_db(db);
        let info = info.set_redis_settings(redis_settings);
        let client = match &self.tls {
            None => Client::open(info),
            Some(tls) => Client::build_with_tls(info, tls.certificates()),
        };
        client.with_context(|| format!("cannot use Redis at {}", self.redacted()))
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tls {
            None => write!(f, "RedisUrl({})", self.redacted()),
            Some(tls) => write!(f, "RedisUrl({}, {tls:?})", self.redacted()),
        }
    }
}

/// TLS material for a `rediss://` server: the CAs to trust (`REDIS_CA_FILE`)
/// and a client certificate with its key for mutual TLS
/// (`FLIT_REDIS_CERT_FILE`, `FLIT_REDIS_KEY_FILE`), read once at start-up
/// and checked then, so a wrong file is a configuration error, not a
/// failed handshake later.
///
/// The CA bundle *replaces* the built-in roots: redis-rs (1.8,
/// `TlsCertificates::root_cert`) builds an empty root store from it, so a
/// server is then trusted only when one of these CAs signed its
/// certificate. Without a CA file, the built-in (webpki) roots are used, with
/// or without a client certificate.
///
/// `Debug` shows how many certificates each file held, never their
/// contents; the key shows as `***`.
#[derive(Clone, Default)]
pub struct RedisTls {
    ca: Option<Pem>,
    identity: Option<ClientIdentity>,
}

/// A checked PEM file and how many certificates it holds.
#[derive(Clone, PartialEq, Eq)]
struct Pem {
    bytes: Arc<[u8]>,
    certificates: usize,
}

#[derive(Clone)]
struct ClientIdentity {
    chain: Pem,
    key: SecretSlice<u8>,
}

/// Which of the TLS files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The CAs to trust (`REDIS_CA_FILE`).
    Ca,
    /// The client certificate chain (`FLIT_REDIS_CERT_FILE`).
    ClientCert,
    /// The client certificate's private key (`FLIT_REDIS_KEY_FILE`).
    ClientKey,
}

/// What is wrong with one of the TLS files; never quotes the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub file: TlsFile,
    pub problem: String,
}

impl RedisTls {
    /// Checks `ca` (a PEM bundle of CA certificates) and `identity` (a PEM
    /// certificate chain, leaf first, and its PEM private key).
    pub fn new(
        ca: Option<Vec<u8>>,
        identity: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, TlsFileError> {
        let ca = ca
            .map(|bytes| {
                let certificates = certificates(TlsFile::Ca, &bytes)?;
                let mut roots = rustls::RootCertStore::empty();
                for certificate in certificates.iter().cloned() {
                    roots.add(certificate).map_err(|_| TlsFileError {
                        file: TlsFile::Ca,
                        problem: "holds a certificate that cannot be used as a trusted CA (contents not shown)".to_owned(),
                    })?;
                }
                Ok(Pem {
                    bytes: bytes.into(),
                    certificates: certificates.len(),
                })
            })
            .transpose()?;
        let identity = identity
            .map(|(chain, key)| {
                let certificates = certificates(TlsFile::ClientCert, &chain)?;
                let count = certificates.len();
                check_key(&key, certificates)?;
                Ok(ClientIdentity {
                    chain: Pem {
                        bytes: chain.into(),
                        certificates: count,
                    },
                    key: SecretSlice::from(key),
                })
            })
            .transpose()?;
        Ok(RedisTls { ca, identity })
    }

    /// Whether a CA file replaces the built-in roots.
    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// Whether a client certificate is shown to the server (mutual TLS).
    pub fn has_client_certificate(&self) -> bool {
        self.identity.is_some()
    }

    /// The files as redis-rs takes them.
    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self.identity.as_ref().map(|identity| ClientTlsConfig {
                client_cert: identity.chain.bytes.to_vec(),
                client_key: identity.key.expose_secret().to_vec(),
            }),
            root_cert: self.ca.as_ref().map(|ca| ca.bytes.to_vec()),
        }
    }
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("RedisTls");
        match &self.ca {
            Some(ca) => out.field("ca_certificates", &ca.certificates),
            None => out.field("ca_certificates", &"built-in roots"),
        };
        match &self.identity {
            Some(identity) => out
                .field("client_certificates", &identity.chain.certificates)
                .field("client_key", &"***"),
            None => out.field("client_certificates", &0usize),
        };
        out.finish()
    }
}

/// The PEM sections of `bytes`, or what is wrong with them.
fn sections(file: TlsFile, bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsFileError> {
    let problem = |problem: &str| TlsFileError {
        file,
        problem: problem.to_owned(),
    };
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            problem("is not a valid PEM file: a BEGIN/END section is broken (contents not shown)")
        })?;
    if sections.is_empty() {
        return Err(problem(
            "is not a PEM file: it has no BEGIN/END section (contents not shown; a DER or PKCS#12 file must be converted to PEM)",
        ));
    }
    Ok(sections)
}

/// The certificates of a PEM file, at least one.
fn certificates(file: TlsFile, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certificates: Vec<CertificateDer<'static>> = sections(file, bytes)?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if certificates.is_empty() {
        return Err(TlsFileError {
            file,
            problem: "is PEM but holds no certificate (no BEGIN CERTIFICATE section; is it a key?)"
                .to_owned(),
        });
    }
    Ok(certificates)
}

/// Checks that `key` is a PEM private key rustls can sign with and that it
/// belongs to the first certificate of `chain`.
fn check_key(key: &[u8], chain: Vec<CertificateDer<'static>>) -> Result<(), TlsFileError> {
    let problem = |problem: &str| TlsFileError {
        file: TlsFile::ClientKey,
        problem: problem.to_owned(),
    };
    let kinds = sections(TlsFile::ClientKey, key)?;
    if !kinds.iter().any(|(kind, _)| {
        matches!(
            kind,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        )
    }) {
        return Err(problem(
            "is PEM but holds no private key (no BEGIN PRIVATE KEY section; is it the certificate?)",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|_| problem("holds a private key that cannot be read (contents not shown)"))?;
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(problem(
            "is not the key of the client certificate in FLIT_REDIS_CERT_FILE",
        )),
        Err(_) => Err(problem(
            "holds a private key of a kind that cannot be used (RSA, ECDSA P-256/P-384 and Ed25519 can)",
        )),
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
            Ok(Err(err)) => {
                let hint = self.url.tls_hint(&err);
                Err(anyhow::Error::new(err).context(format!(
                    "cannot reach Redis at {} (database {db}){hint}",
                    self.url
                )))
            }
            Err(_) => anyhow::bail!(
                "cannot reach Redis at {} (database {db}): no answer within {} ms",
                self.url,
                (self.timeouts.connect + response).as_millis()
            ),
        }
    }

    /// A connection of `role` to `db` opened on first use (a `LazyConnection`).
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
            self.url.clone(),
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
    /// For what a failed TLS handshake means (`RedisUrl::tls_hint`).
    url: RedisUrl,
    slot: std::sync::Mutex<Option<MultiplexedConnection>>,
    /// Bounds connecting (producers use their call timeout: a caller never
    /// waits longer than one call for a Redis that is down).
    connect_timeout: Duration,
    /// Bounds each call made with `query`.
    timeout: Duration,
}

impl LazyConnection {
    fn new(client: Client, url: RedisUrl, connect_timeout: Duration, timeout: Duration) -> Self {
        LazyConnection {
            client,
            url,
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
        })?
        .map_err(|err| match self.url.tls_hint(&err) {
            hint if hint.is_empty() => anyhow::Error::new(err),
            hint => anyhow::Error::new(err)
                .context(format!("cannot reach Redis at {} over TLS{hint}", self.url)),
        })?;
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
    fn tls_files_are_checked_and_never_shown() {
        let err = RedisTls::new(Some(b"MIIsecret".to_vec()), None).expect_err("not PEM");
        assert_eq!(err.file, TlsFile::Ca);
        assert!(!err.problem.contains("MIIsecret"), "{}", err.problem);
        let key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec();
        let err = RedisTls::new(Some(key_only.clone()), None).expect_err("no certificate");
        assert!(
            err.problem.contains("holds no certificate"),
            "{}",
            err.problem
        );
        let err = RedisTls::new(None, Some((key_only.clone(), key_only))).expect_err("no cert");
        assert_eq!(err.file, TlsFile::ClientCert);
        let none = RedisTls::new(None, None).expect("nothing to check");
        assert!(!none.has_ca() && !none.has_client_certificate());
        let url: RedisUrl = "rediss://:s3cret@host:6380".parse().expect("valid");
        let url = url.with_tls(none).expect("rediss");
        assert!(url.client(2).is_ok());
        let shown = format!("{url:?}");
        assert!(
            shown.contains("RedisTls") && !shown.contains("s3cret"),
            "{shown}"
        );
        let plain: RedisUrl = "redis://host:6379".parse().expect("valid");
        assert!(plain.with_tls(RedisTls::default()).is_err());
    }

    #[test]
    fn client_selects_the_database() {
        let url = RedisUrl::default();
        let client = url.client(3).expect("valid");
        assert_eq!(client.get_connection_info().redis_settings().db(), 3);
    }
}
