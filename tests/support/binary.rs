//! The real `flit-cache` binary as tests run it: the environment it gets
//! (the test's Redis, private folders, short timings), one-shot commands,
//! and `flit-cache run` as a service with its HTTP port and log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::http::http_get;
use super::process::{free_port, output_text, signal, wait_until};
use super::redis::RedisServer;
use super::redis_keys::llen;

pub const BIN: &str = env!("CARGO_BIN_EXE_flit-cache");

/// The environment a test gives the binary: its Redis, private folders, and
/// short timings so takeovers and trims happen within a test's time.
pub struct Env {
    pub vars: Vec<(String, String)>,
    pub dir: TempDir,
}

impl Env {
    pub fn new(redis: &RedisServer) -> Self {
        Self::for_url(redis.url())
    }

    /// As `new`, for a Redis at `url` (one the harness did not start as a
    /// `RedisServer`: a TLS-only server).
    pub fn for_url(url: String) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars = vec![
            ("REDIS_URL".into(), url),
            (
                "FLIT_SPOOL_DIR".into(),
                dir.path().join("spool").display().to_string(),
            ),
            (
                "FLIT_WAREHOUSE_DIR".into(),
                dir.path().join("warehouse").display().to_string(),
            ),
            ("FLIT_CLAIM_IDLE_MS".into(), "1500".into()),
            ("FLIT_TRIM_INTERVAL_MS".into(), "300".into()),
            ("FLIT_BLOCK_MS".into(), "200".into()),
            ("FLIT_BREAKER_COOLDOWN_MS".into(), "200".into()),
            ("FLIT_PRODUCER_TIMEOUT_MS".into(), "2000".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        Env { vars, dir }
    }

    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.into(), value.into()));
        self
    }

    /// The settings the binary reads from these variables, for tests that
    /// use the library directly (record lookups).
    pub fn settings(&self) -> flit_cache::configuration::Settings {
        flit_cache::configuration::Settings::from_lookup(|name| {
            self.vars
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
        .expect("valid settings")
    }

    /// Runs `flit-cache generate` with `args`; it must succeed.
    pub fn generate(&self, args: &[&str]) {
        let mut all = vec!["generate"];
        all.extend_from_slice(args);
        let out = self.flit(&all);
        assert!(out.status.success(), "{}", output_text(&out));
    }

    /// Pushes `lines` (NDJSON) with `flit-cache push`; it must succeed.
    pub fn push(&self, kind: &str, lines: &str) {
        let out = self.flit_with_input(&["push", kind], lines.as_bytes());
        assert!(out.status.success(), "{}", output_text(&out));
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(self.dir.path()).env_clear();
        command.env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.vars {
            command.env(k, v);
        }
        command
    }

    /// Runs a one-shot command to completion.
    pub fn flit(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run flit-cache")
    }

    /// Starts a one-shot command in the background, its output piped, so a
    /// test can kill it mid-run or collect what it printed.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flit-cache")
    }

    /// Runs a one-shot command with `input` on stdin.
    pub fn flit_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    }

    /// Starts `flit-cache run` in the background.
    pub fn service(&self, name: &str) -> Service {
        let port = free_port();
        let log = self.dir.path().join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = self
            .command(&["run"])
            .env("FLIT_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn flit-cache run");
        Service {
            child: Some(child),
            port,
            log,
        }
    }
}

pub struct Service {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Service {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(&child, "TERM");
        child.wait().expect("wait")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Generates `count` events of each kind and runs the service until all of
/// them are records in the upload queues; the service is then stopped.
pub fn ingest_generated(redis: &RedisServer, env: &Env, count: usize) {
    env.generate(&["--count", &count.to_string()]);
    ingest_until_queued(redis, env, count as u64, count as u64);
}

/// Runs the service until the upload queues hold `transactions` and
/// `predictions` records, then stops it with SIGTERM (which must succeed).
pub fn ingest_until_queued(redis: &RedisServer, env: &Env, transactions: u64, predictions: u64) {
    let mut service = env.service("ingest");
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));
    wait_until(Duration::from_secs(180), "events ingested", || {
        llen(&mut tx, "upload_queue") == transactions
            && llen(&mut pred, "upload_queue") == predictions
    });
    assert!(service.terminate().success());
}
