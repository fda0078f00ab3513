//! A private `redis-server` (own port, own data folder) that can be killed
//! and restarted, started one way for tests and benches: `RedisServer::start()`
//! for the test defaults, `RedisServer::builder()` for anything else.
//! Benches include this file (benches/support/mod.rs), so it uses nothing
//! of the test harness but its sibling `process`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::process::{free_port, signal, wait_until};

pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    options: RedisBuilder,
}

/// How a [`RedisServer`] starts. The defaults are the tests': AOF on with
/// `appendfsync always`, no RDB snapshots, no password, the log in
/// `redis.log` in the data folder.
#[derive(Clone, Debug)]
pub struct RedisBuilder {
    password: Option<String>,
    /// The ACL user `url()` names; empty for the default user.
    user: String,
    appendfsync: String,
    /// Passed after everything else, so they override the defaults.
    args: Vec<String>,
    /// A configuration file that replaces the defaults.
    config: Option<PathBuf>,
}

impl Default for RedisBuilder {
    fn default() -> Self {
        RedisBuilder {
            password: None,
            user: String::new(),
            appendfsync: "always".to_owned(),
            args: Vec::new(),
            config: None,
        }
    }
}

impl RedisBuilder {
    /// Requires `password` (AUTH) from every client.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Extra configuration, such as `["--maxmemory", "30mb"]`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The AOF fsync policy (`always` unless set; benches measure `everysec`).
    pub fn appendfsync(mut self, policy: &str) -> Self {
        self.appendfsync = policy.to_owned();
        self
    }

    /// Loads `config` as it is, with only the port and data folder set here
    /// (and `args`); `user` and `password` are what `url()` signs in with
    /// (the configuration's users).
    pub fn config(mut self, config: &Path, user: &str, password: &str) -> Self {
        self.config = Some(config.to_owned());
        self.user = user.to_owned();
        self.password = Some(password.to_owned());
        self
    }

    pub fn start(self) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            options: self,
        };
        server.launch();
        server
    }
}

impl RedisServer {
    /// A server with the test defaults (see [`RedisBuilder`]).
    pub fn start() -> Self {
        Self::builder().start()
    }

    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) {
        let options = &self.options;
        let mut command = Command::new("redis-server");
        match &options.config {
            // The file as it is: only the port and the data folder are the test's.
            Some(config) => {
                command.arg(config).args(["--port", &self.port.to_string()]);
            }
            None => {
                command
                    .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                    // With `always`, every acknowledged write is on disk, so a
                    // kill -9 loses nothing Redis said OK to.
                    .args(["--appendonly", "yes", "--appendfsync"])
                    .arg(&options.appendfsync)
                    .args(["--save", ""])
                    .args(["--logfile", "redis.log"])
                    .args(
                        options
                            .password
                            .iter()
                            .flat_map(|p| ["--requirepass".to_owned(), p.clone()]),
                    );
            }
        }
        let child = command
            .args(&options.args)
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
        match &self.options.password {
            Some(password) => format!(
                "redis://{}:{password}@127.0.0.1:{}",
                self.options.user, self.port
            ),
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
