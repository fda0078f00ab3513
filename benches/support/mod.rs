//! What both benchmarks need: a private redis-server on a free port, with AOF
//! on and `appendfsync everysec` as in production (`BENCH_APPENDFSYNC=always`
//! to measure the other policy), stopped when dropped.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `ready` for up to a minute.
pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ready() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct PrivateRedis {
    _process: Killed,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = tempfile::tempdir()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", &appendfsync()])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()?;
        let redis = PrivateRedis {
            _process: Killed(child),
            port,
            dir,
        };
        let client = redis::Client::open(redis.url())?;
        wait_for("redis-server", || client.get_connection().is_ok())?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// The AOF fsync policy of the benchmark's Redis (`BENCH_APPENDFSYNC`).
pub fn appendfsync() -> String {
    std::env::var("BENCH_APPENDFSYNC").unwrap_or_else(|_| "everysec".into())
}
