//! The BigQuery emulator (bqemulator, from PyPI; `BQEMULATOR_BIN`, which
//! scripts/test-tools.sh exports) as tests start it and query it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::http::{http_get, http_post};
use super::process::{free_port, signal, wait_until};

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
