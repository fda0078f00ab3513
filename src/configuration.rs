//! The one place that reads the environment. Every variable the service
//! understands is parsed and checked here, at start-up, so a wrong value is
//! one clear line naming the variable instead of a failure hours later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

pub use crate::event::{DoorRules, TimeWindow};
pub use crate::ingest::IngestSettings;
use crate::monitor::MonitorContext;
pub use crate::monitor::MonitorSettings;
pub use crate::notify::NotifySettings;
pub use crate::producer::ProducerSettings;
pub use crate::schedule::UploadSchedule;
pub use crate::store::connection::{RedisSettings, RoleTimeouts};
use crate::store::connection::{RedisTls, RedisUrl, TlsFile};
pub use crate::store::dead_letters::DeadLetterSettings;
pub use crate::store::upload_queue::AfterUpload;
pub use crate::telemetry::LogFormat;
use crate::upload::UploadContext;
pub use crate::upload::UploadSettings;
pub use crate::warehouse::{SinkChoice, WarehouseSettings, WriteMode};

/// A variable that is set to something the service cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub redis: RedisSettings,
    /// Where upload notifications go (`notify`).
    pub notify: NotifySettings,
    /// What the door accepts (`event`): sizes and the time window.
    pub door: DoorRules,
    pub dead_letters: DeadLetterSettings,
    pub ingest: IngestSettings,
    pub producer: ProducerSettings,
    pub warehouse: WarehouseSettings,
    pub upload: UploadSettings,
    /// When `run` uploads (FLIT_UPLOAD_CRON).
    pub schedule: UploadSchedule,
    pub monitor: MonitorSettings,
    pub http_addr: SocketAddr,
    pub log_format: LogFormat,
}

impl Settings {
    /// Reads the process environment (after `.env`, which `main` loads).
    ///
    /// ```
    /// # use flit_cache::configuration::Settings;
    /// // A wrong value is one error naming the variable.
    /// let err = Settings::from_lookup(|name| (name == "FLIT_BATCH_SIZE").then(|| "lots".to_owned()))
    ///     .expect_err("not a number");
    /// assert_eq!(err.variable, "FLIT_BATCH_SIZE");
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env { lookup: &lookup };
        let settings = Self::read(&env)?;
        if settings.redis.db_transactions == settings.redis.db_predictions {
            return Err(env.error(
                "REDIS_DB_PREDICTIONS",
                format!(
                    "must differ from REDIS_DB_TRANSACTIONS (both are {}): each kind's upload_queue and records need a database of their own, or each kind's uploader would take the other's records for its own. A Redis with a single database is not supported yet; docs/scaling.md says how it will be",
                    settings.redis.db_predictions
                ),
            ));
        }
        Ok(settings)
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        Ok(Settings {
            redis: redis(env)?,
            notify: notify(env)?,
            door: door(env)?,
            dead_letters: dead_letters(env)?,
            ingest: ingest(env)?,
            producer: producer(env)?,
            warehouse: warehouse(env)?,
            schedule: env.schedule("FLIT_UPLOAD_CRON", "0 0 2 * * *")?,
            upload: upload(env)?,
            monitor: monitor(env)?,
            http_addr: env.http_addr()?,
            log_format: match env.text("FLIT_LOG_FORMAT").as_deref() {
                None | Some("human") => LogFormat::Human,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(env.error(
                        "FLIT_LOG_FORMAT",
                        format!("expected human or json, got {other:?}"),
                    ));
                }
            },
        })
    }

    /// The Redis database that holds events and records of `kind`.
    pub fn db_for(&self, kind: crate::keys::EventKind) -> i64 {
        self.redis.db_for(kind)
    }

    /// The sections an upload run reads.
    pub(crate) fn upload_context(&self) -> UploadContext<'_> {
        UploadContext {
            redis: &self.redis,
            upload: &self.upload,
            dead_letters: self.dead_letters,
            notify: &self.notify,
        }
    }

    /// The sections `monitor` and `/metrics` read.
    pub(crate) fn monitor_context(&self) -> MonitorContext<'_> {
        MonitorContext {
            redis: &self.redis,
            monitor: &self.monitor,
            spool: &self.producer,
            warehouse: &self.warehouse,
            uploaded: self.upload.uploaded,
        }
    }

    /// A producer with this process's Redis, spool and door rules.
    pub fn producer(&self) -> anyhow::Result<crate::producer::Producer> {
        crate::producer::Producer::new(&self.redis, &self.producer, self.door)
    }
}

/// The `RedisSettings` section.
fn redis(env: &Env) -> Result<RedisSettings, ConfigError> {
    Ok(RedisSettings {
        url: env.redis_url()?,
        db_transactions: env.bounded("REDIS_DB_TRANSACTIONS", 0, 0, 15)?,
        db_predictions: env.bounded("REDIS_DB_PREDICTIONS", 1, 0, 15)?,
        ttl_seconds: env.bounded("REDIS_TTL_SECONDS", 604_800, 60, 90 * 86_400)?,
        timeouts: RoleTimeouts {
            connect: env.millis("FLIT_REDIS_CONNECT_TIMEOUT_MS", 2_000, 10, 600_000)?,
            worker: env.millis("FLIT_REDIS_WORKER_TIMEOUT_MS", 5_000, 10, 600_000)?,
            producer: env.millis("FLIT_PRODUCER_TIMEOUT_MS", 100, 1, 60_000)?,
            uploader: env.millis("FLIT_REDIS_UPLOADER_TIMEOUT_MS", 30_000, 10, 3_600_000)?,
            monitor: env.millis("FLIT_REDIS_MONITOR_TIMEOUT_MS", 3_000, 10, 600_000)?,
            lookups: env.millis("FLIT_REDIS_LOOKUP_TIMEOUT_MS", 2_000, 1, 600_000)?,
        },
    })
}

/// The `NotifySettings` section.
fn notify(env: &Env) -> Result<NotifySettings, ConfigError> {
    Ok(NotifySettings {
        webhook_url: env.secret_url("FLIT_NOTIFY_WEBHOOK_URL")?,
        timeout: env.millis("FLIT_NOTIFY_TIMEOUT_MS", 5_000, 100, 60_000)?,
    })
}

/// The `DoorRules` section.
fn door(env: &Env) -> Result<DoorRules, ConfigError> {
    Ok(DoorRules {
        max_event_bytes: env.bounded(
            "FLIT_MAX_EVENT_BYTES",
            1024 * 1024,
            1024,
            64 * 1024 * 1024,
        )?,
        window: TimeWindow {
            earliest: env.time("FLIT_EARLIEST_EVENT_TIME", TimeWindow::default().earliest)?,
            max_ahead: chrono::TimeDelta::seconds(env.bounded(
                "FLIT_MAX_EVENT_AHEAD_SECONDS",
                86_400,
                0,
                100 * 366 * 86_400,
            )?),
        },
        arrival_skew: chrono::TimeDelta::milliseconds(env.bounded(
            "FLIT_MAX_ARRIVAL_SKEW_MS",
            60_000,
            0,
            86_400_000,
        )?),
    })
}

/// The `DeadLetterSettings` section.
fn dead_letters(env: &Env) -> Result<DeadLetterSettings, ConfigError> {
    Ok(DeadLetterSettings {
        keep_bytes: env.bounded("FLIT_DEAD_LETTER_KEEP_BYTES", 4096, 256, 1 << 20)?,
        max_len: env.bounded("FLIT_DEAD_LETTER_MAXLEN", 100_000, 100, 100_000_000)?,
    })
}

/// The `IngestSettings` section.
fn ingest(env: &Env) -> Result<IngestSettings, ConfigError> {
    Ok(IngestSettings {
        batch_size: env.bounded("FLIT_BATCH_SIZE", 500, 1, 10_000)?,
        block: env.millis("FLIT_BLOCK_MS", 1_000, 10, 60_000)?,
        claim_idle: env.millis("FLIT_CLAIM_IDLE_MS", 60_000, 100, 86_400_000)?,
        workers_per_kind: env.bounded("FLIT_WORKERS", 1, 1, 64)?,
        consumer_name: env
            .text("FLIT_CONSUMER_NAME")
            .unwrap_or_else(default_consumer_name),
        trim_interval: env.millis("FLIT_TRIM_INTERVAL_MS", 5_000, 100, 3_600_000)?,
    })
}

/// The `ProducerSettings` section.
fn producer(env: &Env) -> Result<ProducerSettings, ConfigError> {
    Ok(ProducerSettings {
        breaker_failures: env.bounded("FLIT_BREAKER_FAILURES", 3, 1, 1_000)?,
        breaker_cooldown: env.millis("FLIT_BREAKER_COOLDOWN_MS", 2_000, 10, 600_000)?,
        spool_dir: env.path("FLIT_SPOOL_DIR", "./spool"),
        spool_max_bytes: env.bounded("FLIT_SPOOL_MAX_BYTES", 1 << 30, 1 << 20, 1 << 40)?,
    })
}

/// The `WarehouseSettings` section.
fn warehouse(env: &Env) -> Result<WarehouseSettings, ConfigError> {
    Ok(WarehouseSettings {
        sink: env.sink(),
        bigquery_project: env.text("BIGQUERY_PROJECT"),
        credentials_file: env.credentials_path("GOOGLE_APPLICATION_CREDENTIALS")?,
        credentials_json: env.credentials_json("GOOGLE_APPLICATION_CREDENTIALS_JSON")?,
        bigquery_api_url: env.api_url("BIGQUERY_API_URL", "https://bigquery.googleapis.com")?,
        location: env.location("BIGQUERY_LOCATION", "US")?,
        warehouse_dir: env.path("FLIT_WAREHOUSE_DIR", "./warehouse"),
        write_mode: match env.text("FLIT_BQ_WRITE_MODE").as_deref() {
            None | Some("load") => WriteMode::Load,
            Some("stream") => WriteMode::Stream,
            Some(other) => {
                return Err(env.error(
                    "FLIT_BQ_WRITE_MODE",
                    format!("expected load or stream, got {other:?}"),
                ));
            }
        },
    })
}

/// The `UploadSettings` section.
fn upload(env: &Env) -> Result<UploadSettings, ConfigError> {
    Ok(UploadSettings {
        batch_rows: env.bounded("FLIT_UPLOAD_BATCH_ROWS", 10_000, 1, 100_000)?,
        batch_bytes: env.bounded("FLIT_UPLOAD_BATCH_BYTES", 3 << 20, 64 << 10, 100 << 20)?,
        attempts: env.bounded("FLIT_UPLOAD_ATTEMPTS", 3, 1, 10)?,
        retry_min_delay: env.millis("FLIT_UPLOAD_RETRY_MIN_MS", 1_000, 1, 600_000)?,
        lock_ttl: env.millis("FLIT_UPLOAD_LOCK_TTL_MS", 60_000, 500, 3_600_000)?,
        load_jobs_per_day: env.bounded("FLIT_LOAD_JOBS_PER_DAY", 1_000, 1, 1_500)?,
        max_parked: env.bounded("FLIT_UPLOAD_MAX_PARKED", 10, 0, 1_000)?,
        uploaded: match env.flag("FLIT_KEEP_UPLOADED", true)? {
            true => AfterUpload::Keep,
            false => AfterUpload::Remove,
        },
    })
}

/// The `MonitorSettings` section.
fn monitor(env: &Env) -> Result<MonitorSettings, ConfigError> {
    Ok(MonitorSettings {
        alert_memory_mb: env.bounded("FLIT_ALERT_MEMORY_MB", 400, 1, 1 << 20)?,
        alert_queue: env.bounded("FLIT_ALERT_QUEUE", 10_000, 1, u64::MAX)?,
        alert_upload_age: Duration::from_secs(
            3_600 * env.bounded("FLIT_ALERT_UPLOAD_AGE_HOURS", 26, 1, 24 * 365)?,
        ),
        alert_failure_rate: env.fraction("FLIT_ALERT_FAILURE_RATE", 0.05)?,
        alert_dead_letters_per_hour: env.bounded(
            "FLIT_ALERT_DEAD_LETTERS_PER_HOUR",
            100,
            0,
            1_000_000,
        )?,
        alert_in_flight_age: Duration::from_secs(
            60 * env.bounded("FLIT_ALERT_IN_FLIGHT_MINUTES", 120, 1, 7 * 24 * 60)?,
        ),
        alert_batch_failures: env.bounded("FLIT_ALERT_BATCH_FAILURES", 3, 1, 1_000)?,
        alert_hit_rate: env.fraction("FLIT_ALERT_HIT_RATE", 0.8)?,
        alert_hit_rate_min_lookups: env.bounded(
            "FLIT_ALERT_HIT_RATE_MIN_LOOKUPS",
            100,
            1,
            u64::MAX,
        )?,
        warehouse_check_interval: match env.bounded(
            "FLIT_WAREHOUSE_CHECK_SECONDS",
            3_600,
            0,
            7 * 86_400,
        )? {
            0 => None,
            seconds => Some(Duration::from_secs(seconds)),
        },
    })
}

fn default_consumer_name() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}", std::process::id())
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    /// The variable's value, with empty values treated as unset.
    fn text(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn error(&self, variable: &'static str, problem: String) -> ConfigError {
        ConfigError { variable, problem }
    }

    fn parsed<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.text(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|e: T::Err| self.error(name, e.to_string())),
        }
    }

    fn parsed_with<T: FromStr>(
        &self,
        name: &'static str,
        default: &str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        let text = self.text(name).unwrap_or_else(|| default.to_owned());
        text.parse()
            .map_err(|_| self.error(name, format!("expected {expected}, got {text:?}")))
    }

    fn bounded<T>(&self, name: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        let Some(text) = self.text(name) else {
            return Ok(default);
        };
        match text.parse::<T>() {
            Ok(value) if value >= min && value <= max => Ok(value),
            _ => Err(self.error(
                name,
                format!("expected a whole number from {min} to {max}, got {text:?}"),
            )),
        }
    }

    fn millis(
        &self,
        name: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        self.bounded(name, default, min, max)
            .map(Duration::from_millis)
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        let Some(text) = self.text(name) else {
            return Ok(default);
        };
        match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(self.error(name, format!("expected true or false, got {text:?}"))),
        }
    }

    /// A share from 0 to 1, such as 0.05.
    fn fraction(&self, name: &'static str, default: f64) -> Result<f64, ConfigError> {
        let Some(text) = self.text(name) else {
            return Ok(default);
        };
        match text.parse::<f64>() {
            Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
            _ => Err(self.error(
                name,
                format!("expected a share from 0 to 1 such as 0.05, got {text:?}"),
            )),
        }
    }

    /// A time as the door reads one (RFC 3339, or without offset for UTC).
    fn time(
        &self,
        name: &'static str,
        default: chrono::DateTime<chrono::Utc>,
    ) -> Result<chrono::DateTime<chrono::Utc>, ConfigError> {
        let Some(text) = self.text(name) else {
            return Ok(default);
        };
        crate::event::time::parse_timestamp(&text)
            .filter(|at| *at >= crate::event::time::bigquery_range().0)
            .ok_or_else(|| {
                self.error(
                    name,
                    format!(
                        "expected a time from 0001-01-01 such as 1960-01-01T00:00:00Z, got {text:?}"
                    ),
                )
            })
    }

    fn path(&self, name: &str, default: &str) -> PathBuf {
        PathBuf::from(self.text(name).unwrap_or_else(|| default.to_owned()))
    }

    /// FLIT_SINK, checked against BIGQUERY_PROJECT. A sink that cannot be
    /// used refuses uploads with the reason; it never stops `run` from
    /// starting, so ingest (the prediction path) goes on whatever it says.
    fn sink(&self) -> SinkChoice {
        let project = self.text("BIGQUERY_PROJECT");
        match self.text("FLIT_SINK").as_deref() {
            Some("bigquery") if project.is_some() => SinkChoice::BigQuery,
            Some("bigquery") => SinkChoice::Refused(
                "FLIT_SINK is bigquery but BIGQUERY_PROJECT is not set".to_owned(),
            ),
            Some("local") => SinkChoice::Local,
            Some(other) => SinkChoice::Refused(format!(
                "FLIT_SINK is {other:?}, not a sink: set it to bigquery or local"
            )),
            // The image is told, never guesses: not a folder inside a
            // container that a redeploy discards, nor a project's warehouse
            // a deployment did not choose.
            None if self.text("FLIT_SINK_REQUIRED").is_some() => {
                SinkChoice::Refused(crate::warehouse::UNSET_SINK.to_owned())
            }
            // Outside it (the quick start), a project says where rows go.
            None if project.is_some() => SinkChoice::BigQuery,
            None => SinkChoice::Local,
        }
    }

    /// FLIT_HTTP_ADDR when set; otherwise FLIT_HTTP_HOST (127.0.0.1; the
    /// image sets 0.0.0.0) on PORT (9464), the port a platform such as
    /// Railway gives the container and sends its health checks to, however
    /// the service was deployed.
    fn http_addr(&self) -> Result<SocketAddr, ConfigError> {
        if self.text("FLIT_HTTP_ADDR").is_some() {
            return self.parsed_with(
                "FLIT_HTTP_ADDR",
                "127.0.0.1:9464",
                "an address such as 127.0.0.1:9464",
            );
        }
        let host: std::net::IpAddr = self.parsed_with(
            "FLIT_HTTP_HOST",
            "127.0.0.1",
            "an IP address such as 0.0.0.0",
        )?;
        let port: u16 = self.bounded("PORT", 9464, 1, u16::MAX)?;
        Ok(SocketAddr::new(host, port))
    }

    /// REDIS_URL, with the TLS files of a `rediss://` server: REDIS_CA_FILE
    /// (the CAs to trust instead of the built-in roots) and
    /// FLIT_REDIS_CERT_FILE with FLIT_REDIS_KEY_FILE (a client certificate
    /// for mutual TLS, both or neither). The files are read and checked
    /// here, once; a problem names the variable and the path, never the
    /// contents.
    fn redis_url(&self) -> Result<RedisUrl, ConfigError> {
        let url: RedisUrl = self.parsed("REDIS_URL", RedisUrl::default())?;
        const CA: &str = "REDIS_CA_FILE";
        const CERT: &str = "FLIT_REDIS_CERT_FILE";
        const KEY: &str = "FLIT_REDIS_KEY_FILE";
        let set = |name: &str| self.text(name).is_some();
        let both = "mutual TLS needs the client certificate and its key: set both or neither";
        match (set(CERT), set(KEY)) {
            (false, true) => {
                return Err(self.error(KEY, format!("is set but {CERT} is not: {both}")));
            }
            (true, false) => {
                return Err(self.error(CERT, format!("is set but {KEY} is not: {both}")));
            }
            _ => {}
        }
        let Some(first_set) = [CA, CERT].into_iter().find(|name| set(name)) else {
            return Ok(url);
        };
        if !url.speaks_tls() {
            return Err(self.error(
                first_set,
                format!(
                    "is set, but REDIS_URL is {url}, not a rediss:// URL: the TLS files are only used over TLS (use rediss://host:port)"
                ),
            ));
        }
        let ca = self.pem_file(CA)?;
        let cert = self.pem_file(CERT)?;
        let key = self.pem_file(KEY)?;
        let path_of = |file: TlsFile| {
            let (name, read) = match file {
                TlsFile::Ca => (CA, &ca),
                TlsFile::ClientCert => (CERT, &cert),
                TlsFile::ClientKey => (KEY, &key),
            };
            let path = read.as_ref().map(|(path, _)| path.display().to_string());
            (name, path.unwrap_or_default())
        };
        let identity = cert.as_ref().zip(key.as_ref());
        let tls = RedisTls::new(
            ca.as_ref().map(|(_, bytes)| bytes.clone()),
            identity.map(|((_, cert), (_, key))| (cert.clone(), key.clone())),
        )
        .map_err(|err| {
            let (name, path) = path_of(err.file);
            self.error(name, format!("{path} {}", err.problem))
        })?;
        url.with_tls(tls)
            .map_err(|problem| self.error(first_set, format!("is set, but {problem}")))
    }

    /// The path in `name` and the file's bytes, read now; a missing or
    /// unreadable file is an error naming both.
    fn pem_file(&self, name: &'static str) -> Result<Option<(PathBuf, Vec<u8>)>, ConfigError> {
        let Some(text) = self.text(name) else {
            return Ok(None);
        };
        if text.contains("-----BEGIN") {
            return Err(self.error(
                name,
                "holds what looks like PEM text itself (not shown), not a path to a PEM file"
                    .to_owned(),
            ));
        }
        let path = PathBuf::from(text);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.is_empty() => {
                Err(self.error(name, format!("{} is empty, not a PEM file", path.display())))
            }
            Ok(bytes) => Ok(Some((path, bytes))),
            Err(err) => {
                let why = match err.kind() {
                    std::io::ErrorKind::NotFound => "does not exist".to_owned(),
                    std::io::ErrorKind::PermissionDenied => {
                        "cannot be read: permission denied".to_owned()
                    }
                    _ if path.is_dir() => "is a folder, not a PEM file".to_owned(),
                    _ => format!("cannot be read: {err}"),
                };
                Err(self.error(name, format!("{} {why}", path.display())))
            }
        }
    }

    /// A path to a key file. A key pasted here instead (it would be shown
    /// as the "path" in every error) is refused without being echoed.
    fn credentials_path(&self, name: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        let Some(text) = self.text(name) else {
            return Ok(None);
        };
        if text.trim_start().starts_with('{') || text.contains("PRIVATE KEY") {
            return Err(self.error(
                name,
                "holds what looks like the key itself (not shown), not a path to a key file: put the JSON in GOOGLE_APPLICATION_CREDENTIALS_JSON instead".to_owned(),
            ));
        }
        Ok(Some(PathBuf::from(text)))
    }

    /// The key's JSON itself; anything else (a path, a fragment) is refused
    /// without being echoed.
    fn credentials_json(&self, name: &'static str) -> Result<Option<SecretString>, ConfigError> {
        let Some(text) = self.text(name) else {
            return Ok(None);
        };
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(_)) => Ok(Some(SecretString::from(text))),
            _ => Err(self.error(
                name,
                "is not a service-account key's JSON (not shown); a path to a key file goes in GOOGLE_APPLICATION_CREDENTIALS".to_owned(),
            )),
        }
    }

    /// A BigQuery location: a multi-region (US, EU) or a region
    /// (europe-west1), letters, digits and dashes.
    fn location(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let text = self.text(name).unwrap_or_else(|| default.to_owned());
        if !text.is_empty()
            && text.len() <= 64
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            Ok(text)
        } else {
            Err(self.error(
                name,
                format!("{text:?} is not a BigQuery location such as US, EU or europe-west1"),
            ))
        }
    }

    /// An http(s) URL that holds a secret: a wrong one is refused without
    /// being echoed.
    fn secret_url(&self, name: &'static str) -> Result<Option<SecretString>, ConfigError> {
        let Some(text) = self.text(name) else {
            return Ok(None);
        };
        match url::Url::parse(&text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                Ok(Some(SecretString::from(text)))
            }
            _ => Err(self.error(
                name,
                "expected an http:// or https:// URL (not shown: it may hold a secret)".to_owned(),
            )),
        }
    }

    /// The BigQuery API root. The Google token goes only over https:
    /// http:// is for an emulator on this host (loopback), which gets no
    /// token at all.
    fn api_url(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let text = self.text(name).unwrap_or_else(|| default.to_owned());
        let loopback = |url: &url::Url| match url.host() {
            Some(url::Host::Domain(domain)) => domain == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match url::Url::parse(&text) {
            Ok(url) if url.scheme() == "https" || (url.scheme() == "http" && loopback(&url)) => {
                Ok(text.trim_end_matches('/').to_owned())
            }
            Ok(url) if url.scheme() == "http" => Err(self.error(
                name,
                format!(
                    "is http:// to {}, not this host: the Google token is only ever sent over https (http:// is for a local emulator on 127.0.0.1)",
                    url.host_str().unwrap_or_default()
                ),
            )),
            _ => Err(self.error(
                name,
                format!("expected an http:// or https:// root URL, got {text:?}"),
            )),
        }
    }

    /// Six fields (seconds first), as tokio-cron-scheduler reads them.
    fn schedule(&self, name: &'static str, default: &str) -> Result<UploadSchedule, ConfigError> {
        let text = self.text(name).unwrap_or_else(|| default.to_owned());
        match text.parse::<UploadSchedule>() {
            Ok(schedule) => Ok(schedule),
            Err(problem) => Err(self.error(
                name,
                format!("expected a cron expression with seconds first, such as \"0 0 2 * * *\", got {text:?} ({problem})"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_design() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!(s.redis.db_transactions, 0);
        assert_eq!(s.redis.db_predictions, 1);
        assert_eq!(s.redis.ttl_seconds, 604_800);
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(s.schedule.as_str(), "0 0 2 * * *");
        assert_eq!(
            s.warehouse.bigquery_api_url,
            "https://bigquery.googleapis.com"
        );
        assert_eq!(s.door.max_event_bytes, 1024 * 1024);
        assert_eq!(s.door, crate::event::DoorRules::default());
        assert_eq!(s.dead_letters.keep_bytes, 4096);
        assert_eq!(s.dead_letters.max_len, 100_000);
        assert_eq!(s.monitor.alert_dead_letters_per_hour, 100);
        assert!(s.warehouse.bigquery_project.is_none());
        assert!(s.warehouse.credentials_json.is_none());
        assert_eq!(s.monitor.alert_memory_mb, 400);
        assert_eq!(s.monitor.alert_queue, 10_000);
        assert_eq!(s.monitor.alert_upload_age, Duration::from_secs(26 * 3_600));
        assert_eq!(s.monitor.alert_failure_rate, 0.05);
        assert_eq!(s.upload.uploaded, AfterUpload::Keep);
        let s = settings(&[("FLIT_KEEP_UPLOADED", "false")]).expect("valid");
        assert_eq!(s.upload.uploaded, AfterUpload::Remove);
        let err = settings(&[("FLIT_KEEP_UPLOADED", "maybe")]).expect_err("not a flag");
        assert_eq!(err.variable, "FLIT_KEEP_UPLOADED");
    }

    #[test]
    fn the_sink_is_chosen_explicitly_or_follows_bigquery_project_but_never_a_folder_in_the_image() {
        let sink = |vars: &[(&str, &str)]| settings(vars).expect("settings").warehouse.sink;
        assert_eq!(sink(&[]), SinkChoice::Local, "the quick start");
        assert_eq!(sink(&[("BIGQUERY_PROJECT", "p")]), SinkChoice::BigQuery);
        assert_eq!(
            sink(&[("BIGQUERY_PROJECT", "p"), ("FLIT_SINK", "local")]),
            SinkChoice::Local
        );
        assert!(
            matches!(
                sink(&[("FLIT_SINK_REQUIRED", "1"), ("BIGQUERY_PROJECT", "p")]),
                SinkChoice::Refused(_)
            ),
            "in the image a project alone does not choose the sink"
        );
        assert_eq!(
            sink(&[
                ("FLIT_SINK_REQUIRED", "1"),
                ("BIGQUERY_PROJECT", "p"),
                ("FLIT_SINK", "bigquery")
            ]),
            SinkChoice::BigQuery
        );
        assert!(matches!(
            sink(&[("FLIT_SINK_REQUIRED", "1")]),
            SinkChoice::Refused(_)
        ));
        assert_eq!(
            sink(&[("FLIT_SINK_REQUIRED", "1"), ("FLIT_SINK", "local")]),
            SinkChoice::Local
        );
        // Mistakes refuse uploads, by name; settings (and so ingest) still start.
        let SinkChoice::Refused(why) = sink(&[("FLIT_SINK", "bigquery")]) else {
            panic!("bigquery without a project")
        };
        assert!(why.contains("BIGQUERY_PROJECT"), "{why}");
        let SinkChoice::Refused(why) = sink(&[("FLIT_SINK", "s3")]) else {
            panic!("not a sink")
        };
        assert!(why.contains("\"s3\""), "{why}");
    }

    #[test]
    fn a_key_in_the_wrong_variable_is_refused_without_being_shown() {
        let key = r#"{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----\nMIIsecret\n"}"#;
        let err =
            settings(&[("GOOGLE_APPLICATION_CREDENTIALS", key)]).expect_err("a key, not a path");
        assert_eq!(err.variable, "GOOGLE_APPLICATION_CREDENTIALS");
        assert!(!err.to_string().contains("MIIsecret"), "{err}");
        let err = settings(&[("GOOGLE_APPLICATION_CREDENTIALS_JSON", "/secrets/key.json")])
            .expect_err("a path, not a key");
        assert_eq!(err.variable, "GOOGLE_APPLICATION_CREDENTIALS_JSON");
        assert!(!err.to_string().contains("/secrets"), "{err}");
        let fine = settings(&[("GOOGLE_APPLICATION_CREDENTIALS_JSON", key)]).expect("a key");
        assert!(fine.warehouse.credentials_json.is_some());
    }

    #[test]
    fn the_token_goes_only_over_https_and_the_port_follows_the_platform() {
        let api = |url: &str| {
            settings(&[("BIGQUERY_API_URL", url)]).map(|s| s.warehouse.bigquery_api_url)
        };
        assert!(api("https://bigquery.example.com").is_ok());
        assert!(api("http://127.0.0.1:9050").is_ok(), "a local emulator");
        assert!(api("http://localhost:9050").is_ok());
        assert!(api("http://[::1]:9050").is_ok());
        let err = api("http://bigquery.internal:9050").expect_err("http to another host");
        assert_eq!(err.variable, "BIGQUERY_API_URL");
        assert!(
            err.to_string().contains("only ever sent over https"),
            "{err}"
        );

        let addr = |vars: &[(&str, &str)]| settings(vars).expect("settings").http_addr.to_string();
        assert_eq!(addr(&[]), "127.0.0.1:9464");
        assert_eq!(
            addr(&[("PORT", "8080")]),
            "127.0.0.1:8080",
            "PORT alone never opens the host"
        );
        assert_eq!(
            addr(&[("FLIT_HTTP_HOST", "0.0.0.0"), ("PORT", "8080")]),
            "0.0.0.0:8080"
        );
        assert_eq!(
            addr(&[("FLIT_HTTP_ADDR", "[::]:9464"), ("PORT", "8080")]),
            "[::]:9464"
        );
    }

    #[test]
    fn the_bigquery_location_defaults_to_us_and_refuses_what_no_location_is() {
        assert_eq!(settings(&[]).expect("defaults").warehouse.location, "US");
        let eu = settings(&[("BIGQUERY_LOCATION", "europe-west1")]).expect("a region");
        assert_eq!(eu.warehouse.location, "europe-west1");
        let err = settings(&[("BIGQUERY_LOCATION", "US; drop")]).expect_err("not a location");
        assert_eq!(err.variable, "BIGQUERY_LOCATION");
    }

    #[test]
    fn a_bad_value_names_the_variable_and_what_is_allowed() {
        let err = settings(&[("REDIS_DB_TRANSACTIONS", "sixteen")]).expect_err("not a number");
        assert_eq!(err.variable, "REDIS_DB_TRANSACTIONS");
        assert!(err.to_string().contains("from 0 to 15"), "{err}");

        let err = settings(&[("REDIS_DB_PREDICTIONS", "16")]).expect_err("out of range");
        assert_eq!(err.variable, "REDIS_DB_PREDICTIONS");

        let err = settings(&[("REDIS_DB_PREDICTIONS", "0")]).expect_err("same database");
        assert_eq!(err.variable, "REDIS_DB_PREDICTIONS");
        assert!(err.to_string().contains("must differ"), "{err}");
        let err = settings(&[
            ("REDIS_DB_TRANSACTIONS", "3"),
            ("REDIS_DB_PREDICTIONS", "3"),
        ])
        .expect_err("same database");
        assert!(err.to_string().contains("docs/scaling.md"), "{err}");
        assert!(
            settings(&[
                ("REDIS_DB_TRANSACTIONS", "1"),
                ("REDIS_DB_PREDICTIONS", "0")
            ])
            .is_ok()
        );

        let err = settings(&[("FLIT_HTTP_ADDR", "nowhere")]).expect_err("bad address");
        assert_eq!(err.variable, "FLIT_HTTP_ADDR");

        let err = settings(&[("FLIT_LOG_FORMAT", "xml")]).expect_err("bad format");
        assert_eq!(err.variable, "FLIT_LOG_FORMAT");

        let err = settings(&[("FLIT_ALERT_FAILURE_RATE", "5%")]).expect_err("not a share");
        assert_eq!(err.variable, "FLIT_ALERT_FAILURE_RATE");
        let err = settings(&[("FLIT_ALERT_FAILURE_RATE", "1.5")]).expect_err("over 1");
        assert_eq!(err.variable, "FLIT_ALERT_FAILURE_RATE");

        let err = settings(&[("FLIT_EARLIEST_EVENT_TIME", "1960")]).expect_err("not a time");
        assert_eq!(err.variable, "FLIT_EARLIEST_EVENT_TIME");
        let s =
            settings(&[("FLIT_EARLIEST_EVENT_TIME", "2000-01-01 00:00:00")]).expect("naive is UTC");
        assert_eq!(
            s.door.window.earliest.to_rfc3339(),
            "2000-01-01T00:00:00+00:00"
        );

        let err = settings(&[("FLIT_UPLOAD_CRON", "0 2 * * *")]).expect_err("five fields");
        assert_eq!(err.variable, "FLIT_UPLOAD_CRON");
    }

    #[test]
    fn a_key_in_a_variable_never_shows_in_debug_output() {
        let s = settings(&[(
            "GOOGLE_APPLICATION_CREDENTIALS_JSON",
            r#"{"private_key":"-----BEGIN PRIVATE KEY-----abc"}"#,
        )])
        .expect("valid");
        assert!(s.warehouse.credentials_json.is_some());
        assert!(!format!("{s:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn tls_files_come_in_pairs_only_for_rediss_and_must_exist() {
        let err = settings(&[
            ("REDIS_URL", "rediss://host:6380"),
            ("FLIT_REDIS_KEY_FILE", "/secrets/client.key"),
        ])
        .expect_err("a key without its certificate");
        assert_eq!(err.variable, "FLIT_REDIS_KEY_FILE");
        assert!(err.to_string().contains("FLIT_REDIS_CERT_FILE"), "{err}");
        let err = settings(&[
            ("REDIS_URL", "rediss://host:6380"),
            ("FLIT_REDIS_CERT_FILE", "/secrets/client.crt"),
        ])
        .expect_err("a certificate without its key");
        assert_eq!(err.variable, "FLIT_REDIS_CERT_FILE");
        let err = settings(&[
            ("REDIS_URL", "redis://:hunter2@host:6379"),
            ("REDIS_CA_FILE", "/secrets/ca.pem"),
        ])
        .expect_err("TLS files without TLS");
        assert_eq!(err.variable, "REDIS_CA_FILE");
        assert!(err.to_string().contains("not a rediss:// URL"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = settings(&[
            ("REDIS_URL", "rediss://host:6380"),
            ("REDIS_CA_FILE", "/nowhere/ca.pem"),
        ])
        .expect_err("a missing file");
        assert_eq!(err.variable, "REDIS_CA_FILE");
        assert!(
            err.to_string().contains("/nowhere/ca.pem does not exist"),
            "{err}"
        );
        let err = settings(&[
            ("REDIS_URL", "rediss://host:6380"),
            ("REDIS_CA_FILE", "-----BEGIN CERTIFICATE-----\nMIIsecret"),
        ])
        .expect_err("PEM text, not a path");
        assert!(!err.to_string().contains("MIIsecret"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "MIIsecret, not PEM").expect("write");
        let path = file.display().to_string();
        let err = settings(&[
            ("REDIS_URL", "rediss://host:6380"),
            ("REDIS_CA_FILE", &path),
        ])
        .expect_err("not PEM");
        assert_eq!(err.variable, "REDIS_CA_FILE");
        assert!(err.to_string().contains(&path), "{err}");
        assert!(err.to_string().contains("not a PEM file"), "{err}");
        assert!(!err.to_string().contains("MIIsecret"), "{err}");
        let plain = settings(&[("REDIS_URL", "rediss://host:6380")]).expect("no TLS files");
        assert!(plain.redis.url.tls().is_none());
    }

    #[test]
    fn a_bad_redis_url_is_reported_without_its_password() {
        let err =
            settings(&[("REDIS_URL", "http://user:hunter2@example")]).expect_err("wrong scheme");
        assert_eq!(err.variable, "REDIS_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
