//! The shipped Redis users (deploy/redis/users.acl) as tests load them:
//! rendered by the shipped deploy/redis/render-acl.sh with a password per
//! role, into a copy of deploy/redis/redis.conf that points at the result.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{RedisServer, output_text};

/// The roles of users.acl, with the password each test gives them.
pub const ROLES: [(&str, &str); 5] = [
    ("flit-service", "test-service-password-0123456789"),
    ("flit-producer", "test-producer-password-0123456789"),
    ("flit-reader", "test-reader-password-0123456789"),
    ("flit-monitor", "test-monitor-password-0123456789"),
    ("flit-admin", "test-admin-password-0123456789"),
];

pub fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn password(user: &str) -> &'static str {
    ROLES
        .iter()
        .find(|(name, _)| *name == user)
        .map(|(_, password)| *password)
        .unwrap_or_else(|| panic!("no role {user}"))
}

/// The variable render-acl.sh reads for `user` (flit-service -> REDIS_SERVICE_PASSWORD).
pub fn password_variable(user: &str) -> String {
    let role = user.trim_start_matches("flit-").to_ascii_uppercase();
    format!("REDIS_{role}_PASSWORD")
}

/// Runs the shipped render-acl.sh on the shipped users.acl into `dir`,
/// with the passwords of `roles`; returns the command's output.
pub fn render(dir: &Path, roles: &[(&str, &str)]) -> (std::process::Output, PathBuf) {
    let out = dir.join("users.acl");
    let mut command = Command::new("sh");
    command
        .arg(repository().join("deploy/redis/render-acl.sh"))
        .arg(repository().join("deploy/redis/users.acl"))
        .arg(&out)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (user, password) in roles {
        command.env(password_variable(user), password);
    }
    (command.output().expect("sh"), out)
}

/// deploy/redis/redis.conf with its `aclfile` pointed at the shipped users,
/// rendered into `dir` with every role's test password.
pub fn production_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repository().join("deploy/redis/redis.conf"))
        .expect("deploy/redis/redis.conf");
    let line = "aclfile /etc/redis/users.acl";
    assert!(text.contains(line), "redis.conf loads the users file");
    let (rendered, users) = render(dir, &ROLES);
    assert!(rendered.status.success(), "{}", output_text(&rendered));
    let config = dir.join("redis.conf");
    std::fs::write(
        &config,
        text.replace(line, &format!("aclfile {}", users.display())),
    )
    .expect("config");
    config
}

/// A real redis-server on the production configuration and users; its
/// `url()` signs in as `user`.
pub fn production_redis(dir: &Path, user: &str) -> RedisServer {
    RedisServer::builder()
        .config(&production_config(dir), user, password(user))
        .start()
}

/// The URL of `server` for `user`.
pub fn url_for(server: &RedisServer, user: &str) -> String {
    format!(
        "redis://{user}:{}@127.0.0.1:{}",
        password(user),
        server.port
    )
}

/// A PING from a client that names no user (the default user).
pub fn anonymous_ping(server: &RedisServer) -> redis::RedisResult<String> {
    redis::Client::open(format!("redis://127.0.0.1:{}", server.port))?
        .get_connection()
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
}
