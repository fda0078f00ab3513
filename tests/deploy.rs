//! The deployment files, checked for real: deploy/redis/redis.conf loaded
//! by a real redis-server (only its port, data folder and the password file
//! it includes are local to the test) must need a password, keep every
//! record on disk, never evict, and be reported healthy by `monitor`; the
//! memory a record costs must stay within what its maxmemory comment
//! assumes. deploy.sh must stop with a clear message without the Railway CLI.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const PASSWORD: &str = "test-only-redis-password-0123456789";

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// redis.conf with its `include` pointed at a password file in `dir`.
fn production_config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repository().join("deploy/redis/redis.conf"))
        .expect("deploy/redis/redis.conf");
    let include = "include /etc/redis/flit-cache-secret.conf";
    assert!(
        text.contains(include),
        "redis.conf includes the password file"
    );
    let secret = dir.join("flit-cache-secret.conf");
    std::fs::write(&secret, format!("requirepass {PASSWORD}\n")).expect("secret");
    let config = dir.join("redis.conf");
    std::fs::write(
        &config,
        text.replace(include, &format!("include {}", secret.display())),
    )
    .expect("config");
    config
}

fn config_get(conn: &mut redis::Connection, name: &str) -> String {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query(conn)
        .expect("config get");
    pair.get(1).cloned().unwrap_or_default()
}

fn used_memory(conn: &mut redis::Connection) -> u64 {
    let info: redis::InfoDict = redis::cmd("INFO").arg("memory").query(conn).expect("info");
    info.get("used_memory").expect("used_memory")
}

#[test]
fn the_production_redis_config_is_safe_and_monitor_reports_it_healthy() {
    let files = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start_with_config(&production_config(files.path()), PASSWORD);

    // A password is required.
    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port))
        .expect("client")
        .get_connection()
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    let refused = anonymous.expect_err("no password, no answer");
    assert!(refused.to_string().contains("NOAUTH"), "{refused}");

    let mut conn = redis.conn(0);
    assert_eq!(config_get(&mut conn, "maxmemory-policy"), "noeviction");
    assert_eq!(config_get(&mut conn, "appendonly"), "yes");
    assert_eq!(config_get(&mut conn, "appendfsync"), "everysec");
    assert_eq!(config_get(&mut conn, "maxmemory"), (1u64 << 30).to_string());
    let flush = redis::cmd("FLUSHALL").query::<()>(&mut conn);
    assert!(flush.is_err(), "FLUSHALL is disabled");

    // The pipeline on it, end to end, and the monitor's verdict.
    let env = Env::new(&redis);
    let before = used_memory(&mut conn);
    ingest_generated(&redis, &env, 5_000);
    let per_purchase = (used_memory(&mut conn) - before) as f64 / 5_000.0;
    println!(
        "Redis memory per purchase waiting for upload (transaction + prediction): {per_purchase:.0} bytes"
    );
    // redis.conf's maxmemory reasoning assumes about 1.2 KB; well above
    // that, its figures no longer hold and must be redone.
    assert!(
        per_purchase < 2_000.0,
        "{per_purchase:.0} bytes per purchase"
    );

    let out = env.flit(&["monitor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["redis"]["aof_enabled"], true);
    assert_eq!(report["redis"]["maxmemory_policy"], "noeviction");
    let text = output_text(&env.flit(&["monitor"]));
    assert!(!text.contains(PASSWORD), "{text}");

    let out = env.flit(&["batch-upload"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(env.flit(&["monitor"]).status.code(), Some(0));
}

#[test]
fn redis_does_not_start_without_its_password_file() {
    let files = tempfile::tempdir().expect("tempdir");
    let config = production_config(files.path());
    std::fs::remove_file(files.path().join("flit-cache-secret.conf")).expect("remove");
    let out = Command::new("redis-server")
        .arg(&config)
        .args(["--port", &free_port().to_string()])
        .arg("--dir")
        .arg(files.path())
        .output()
        .expect("redis-server");
    assert!(!out.status.success(), "Redis must refuse to start");
}

#[test]
fn the_railway_script_names_what_is_missing() {
    let script = repository().join("deploy/railway/deploy.sh");
    // No Railway CLI on the PATH.
    let out = Command::new("bash")
        .arg(&script)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("bash");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Railway CLI is not installed"),
        "{}",
        output_text(&out)
    );

    // A CLI that is installed but not logged in.
    let bin = tempfile::tempdir().expect("tempdir");
    let fake = bin.path().join("railway");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'Unauthorized. Please login' >&2\nexit 1\n",
    )
    .expect("fake CLI");
    Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .expect("chmod");
    let out = Command::new("bash")
        .arg(&script)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
        .output()
        .expect("bash");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("railway login"),
        "{}",
        output_text(&out)
    );

    let out = Command::new("bash")
        .arg(&script)
        .arg("sideways")
        .output()
        .expect("bash");
    assert_eq!(out.status.code(), Some(2));
}
