//! Test harness: a private `redis-server` per test (own port, own data dir,
//! AOF on) that can be killed and restarted, and the real `flit-cache` binary
//! run against it as a service or as a one-shot command.
#![allow(dead_code)]

pub mod acl;
pub mod corpus;
pub mod tls;

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_flit-cache");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A multipart load-job upload as BigQuery takes it: the job configuration
/// (JSON), then the NDJSON rows.
pub fn load_job_parts(body: &str) -> (serde_json::Value, &str) {
    let parts: Vec<&str> = body.split("\r\n\r\n").collect();
    let config = parts
        .get(1)
        .and_then(|p| p.split("\r\n--").next())
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or(serde_json::Value::Null);
    let data = parts
        .get(2)
        .and_then(|p| p.split("\r\n--").next())
        .unwrap_or_default();
    (config, data)
}

/// An error answer in BigQuery's documented shape.
pub fn bigquery_error(status: u16, reason: &str, message: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let code = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({"error": {"code": status, "message": message,
        "errors": [{"domain": "global", "reason": reason, "message": message}], "status": reason.to_uppercase()}});
    (code, axum::Json(body)).into_response()
}

/// Serves `app` on a free loopback port, in a thread of its own, for the
/// life of the test binary (HTTP stand-ins: the BigQuery stub, a webhook
/// receiver). Returns the port.
pub fn serve_http(app: axum::Router) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
    });
    port
}

/// Polls `check` until it is true or `limit` passes; panics with `what` then.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    password: Option<String>,
    /// The ACL user `url()` names; empty for the default user.
    user: String,
    extra: Vec<String>,
    /// A configuration file that replaces the test defaults (AOF always...).
    config: Option<PathBuf>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    /// A server that requires `password` (AUTH) from every client.
    pub fn start_with_password(password: Option<&str>) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            password: password.map(str::to_owned),
            user: String::new(),
            extra: Vec::new(),
            config: None,
        };
        server.launch();
        server
    }

    /// A server with extra configuration, such as `["--maxmemory", "30mb"]`.
    pub fn start_with(args: &[&str]) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            password: None,
            user: String::new(),
            extra: args.iter().map(|a| a.to_string()).collect(),
            config: None,
        };
        server.launch();
        server
    }

    /// A server that loads `config` as it is, with only its port and data
    /// folder set here; `user` and `password` are what `url()` signs in
    /// with (the configuration's users).
    pub fn start_with_config(config: &Path, user: &str, password: &str) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            password: Some(password.to_owned()),
            user: user.to_owned(),
            extra: Vec::new(),
            config: Some(config.to_owned()),
        };
        server.launch();
        server
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        match &self.config {
            // The file as it is: only the port and the data folder are the test's.
            Some(config) => {
                command.arg(config).args(["--port", &self.port.to_string()]);
            }
            None => {
                command
                    .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                    // Every acknowledged write is on disk, so a kill -9 loses nothing Redis said OK to.
                    .args([
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                        "--save",
                        "",
                    ])
                    .args(["--logfile", "redis.log"])
                    .args(
                        self.password
                            .iter()
                            .flat_map(|p| ["--requirepass".to_owned(), p.clone()]),
                    )
                    .args(&self.extra);
            }
        }
        let child = command
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the test command installs it)");
        self.child = Some(child);
        self.wait_for_answer();
    }

    fn wait_for_answer(&self) {
        let url = self.url();
        wait_until(Duration::from_secs(20), "redis-server to answer", || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://{}:{password}@127.0.0.1:{}", self.user, self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn conn(&self, db: i64) -> redis::Connection {
        let client = redis::Client::open(format!("{}/{db}", self.url())).expect("client");
        client.get_connection().expect("connection")
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: Redis's own clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    /// Starts again on the same port with the same data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.launch();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status();
}

/// The environment a test gives the binary: its Redis, private folders, and
/// short timings so takeovers and trims happen within a test's time.
pub struct Env {
    pub vars: Vec<(String, String)>,
    pub dir: TempDir,
}

impl Env {
    pub fn new(redis: &RedisServer) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars = vec![
            ("REDIS_URL".into(), redis.url()),
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

/// A minimal HTTP/1.1 GET, enough for health endpoints.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((status, body))
}

pub fn output_text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Keys matching `pattern`, by SCAN (test-side only; the service never scans).
pub fn keys(conn: &mut redis::Connection, pattern: &str) -> HashSet<String> {
    let mut cursor = 0u64;
    let mut found = HashSet::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .expect("scan");
        found.extend(batch);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Records of the kind whose keys start with `prefix` (`tx` or `pred`)
/// that are not marked uploaded: every record key (`tx:*`) and older
/// version (`tx@*`) whose value's SHA-1 is not among the uploaded marks
/// beside it (`tx!{id}`, a hash whose fields are SHA-1s). Empty once everything is uploaded, whether
/// records are kept (marked) or removed (FLIT_KEEP_UPLOADED=false).
pub fn unuploaded_records(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    let mut waiting = Vec::new();
    for key in keys(conn, &format!("{prefix}[:@]*")) {
        let id = match key.strip_prefix(&format!("{prefix}:")) {
            Some(id) => id.to_owned(),
            None => key[prefix.len() + 42..].to_owned(),
        };
        let value: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(conn).expect("get");
        let Some(value) = value else { continue };
        let digest = sha1_smol::Sha1::from(&value).digest().to_string();
        if !uploaded_marks(conn, &format!("{prefix}!{id}")).contains(&digest) {
            waiting.push(key);
        }
    }
    waiting.sort();
    waiting
}

/// The SHA-1s an uploaded mark (`tx!{id}`, a hash) holds, sorted.
pub fn uploaded_marks(conn: &mut redis::Connection, mark: &str) -> Vec<String> {
    let mut marks: Vec<String> = redis::cmd("HKEYS").arg(mark).query(conn).expect("hkeys");
    marks.sort();
    marks
}

pub fn queue(conn: &mut redis::Connection) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg("upload_queue")
        .arg(0)
        .arg(-1)
        .query(conn)
        .expect("lrange")
}

pub fn llen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("LLEN").arg(key).query(conn).unwrap_or(0)
}

pub fn xlen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(conn).unwrap_or(0)
}

/// Entries delivered to the group's consumers but not acknowledged.
pub fn pending(conn: &mut redis::Connection, stream: &str) -> u64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg("flit-cache")
        .query(conn)
        .unwrap_or(redis::Value::Nil);
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

pub fn xadd(conn: &mut redis::Connection, stream: &str, fields: &[(&str, &[u8])]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (field, value) in fields {
        cmd.arg(*field).arg(*value);
    }
    cmd.query(conn).expect("xadd")
}

/// Checks the whole Redis side for one kind after all `expected` records
/// were ingested: exactly that many record keys, each queued exactly once,
/// and nothing left pending.
pub fn assert_exactly_once(
    redis: &RedisServer,
    db: i64,
    prefix: &str,
    stream: &str,
    expected: usize,
) {
    let mut conn = redis.conn(db);
    let records = keys(&mut conn, &format!("{prefix}*"));
    let queued = queue(&mut conn);
    let distinct: HashSet<&String> = queued.iter().collect();
    assert_eq!(records.len(), expected, "record keys with {prefix}");
    assert_eq!(queued.len(), expected, "queue entries in db {db}");
    assert_eq!(distinct.len(), queued.len(), "no key is queued twice");
    assert!(
        queued.iter().all(|k| records.contains(k)),
        "every queue entry names a stored record"
    );
    assert_eq!(pending(&mut conn, stream), 0, "nothing pending on {stream}");
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

pub const TX_TABLE: &str = "flit_bnpl_raw.raw_bnpl_txs_json";
pub const PRED_TABLE: &str = "flit_ml_raw.raw_bnpl_prediction_logs";

/// Every row in the local warehouse for `table`, with the day folder it sits in.
pub fn warehouse_rows(env: &Env, table: &str) -> Vec<(String, serde_json::Value)> {
    let dir = env.dir.path().join("warehouse").join(table);
    let mut rows = Vec::new();
    let Ok(days) = std::fs::read_dir(&dir) else {
        return rows;
    };
    for day in days.filter_map(Result::ok) {
        let name = day.file_name().to_string_lossy().into_owned();
        let Some(dt) = name.strip_prefix("dt=") else {
            continue;
        };
        for file in std::fs::read_dir(day.path())
            .expect("day folder")
            .filter_map(Result::ok)
        {
            let file_name = file.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') || !file_name.ends_with(".ndjson") {
                continue; // temporary files are not part of the warehouse
            }
            let text = std::fs::read_to_string(file.path()).expect("read");
            for line in text.lines() {
                rows.push((
                    dt.to_owned(),
                    serde_json::from_str(line).expect("each line is JSON"),
                ));
            }
        }
    }
    rows
}

/// Row ids of a table: transaction_id in json_body, or prediction_id.
pub fn row_ids(rows: &[(String, serde_json::Value)]) -> Vec<String> {
    rows.iter()
        .map(|(_, row)| {
            row["prediction_id"]
                .as_str()
                .or_else(|| row["json_body"]["transaction_id"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// A private BigQuery emulator (bqemulator) with its data on disk, so it can
/// be stopped and started again with its tables intact.
pub struct Emulator {
    pub port: u16,
    grpc_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

pub const PROJECT: &str = "flit-data-platform";

impl Emulator {
    pub fn start() -> Self {
        let mut emulator = Emulator {
            port: free_port(),
            grpc_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        emulator.launch();
        emulator
    }

    fn launch(&mut self) {
        let bin = std::env::var("BQEMULATOR_BIN")
            .unwrap_or_else(|_| format!("{}/.venv/bin/bqemulator", env!("CARGO_MANIFEST_DIR")));
        let log = std::fs::File::create(self.dir.path().join("emulator.log")).expect("log");
        let child = Command::new(&bin)
            .args([
                "start",
                "--rest-port",
                &self.port.to_string(),
                "--grpc-port",
                &self.grpc_port.to_string(),
            ])
            .args([
                "--project",
                PROJECT,
                "--persistent",
                "--log-level",
                "warning",
            ])
            .arg("--data-dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (scripts/test.sh installs it): {e}"));
        self.child = Some(child);
        let port = self.port;
        wait_until(
            Duration::from_secs(60),
            "the BigQuery emulator to answer",
            || {
                http_get(port, &format!("/bigquery/v2/projects/{PROJECT}/datasets"))
                    .is_some_and(|(s, _)| s == 200)
            },
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop first");
        self.launch();
    }

    /// Runs standard SQL and returns the rows as lists of string cells.
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let body = serde_json::json!({"query": sql, "useLegacySql": false}).to_string();
        let (status, text) = http_post(
            self.port,
            &format!("/bigquery/v2/projects/{PROJECT}/queries"),
            &body,
        )
        .expect("emulator answers");
        assert_eq!(status, 200, "{sql}: {text}");
        let reply: serde_json::Value = serde_json::from_str(&text).expect("json");
        reply["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|row| {
                        row["f"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|cell| cell["v"].as_str().unwrap_or_default().to_owned())
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every row of `sql` (which must have a total ORDER BY), read in pages.
    pub fn query_all(&self, sql: &str) -> Vec<Vec<String>> {
        const PAGE: usize = 5_000;
        let mut rows = Vec::new();
        loop {
            let page = self.query(&format!("{sql} LIMIT {PAGE} OFFSET {}", rows.len()));
            let done = page.len() < PAGE;
            rows.extend(page);
            if done {
                return rows;
            }
        }
    }

    /// Number of rows, and of distinct values of `id_expression`, in `table`.
    pub fn count(&self, table: &str, id_expression: &str) -> (u64, u64) {
        let rows = self.query(&format!(
            "SELECT COUNT(*), COUNT(DISTINCT {id_expression}) FROM {table}"
        ));
        let cell = |i: usize| {
            rows.first()
                .and_then(|r| r.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (cell(0), cell(1))
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.1 POST of a JSON body.
pub fn http_post(port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Some((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}
