//! The deployment files, checked for real: deploy/redis/redis.conf loaded
//! by a real redis-server (only its port, data folder and the users file
//! it loads are local to the test) must need a user, keep every
//! record on disk, never evict, and be reported healthy by `monitor`; the
//! memory a record costs must stay within what its maxmemory comment
//! assumes. deploy.sh must stop with a clear message without the Railway CLI,
//! and a second run must create nothing the first one made.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::process::Command;

use support::acl::{self, repository};
use support::*;

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
    let redis = acl::production_redis(files.path(), "flit-service");

    // A user and password are required: the default user is off.
    let refused = acl::anonymous_ping(&redis).expect_err("no password, no answer");
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
    assert!(!text.contains(acl::password("flit-service")), "{text}");

    let out = env.flit(&["batch-upload"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(env.flit(&["monitor"]).status.code(), Some(0));

    // Uploaded, the records stay for their TTL, in the index: what a purchase
    // costs then sizes Redis (README, "Memory per daily volume").
    let kept = (used_memory(&mut conn) - before) as f64 / 5_000.0;
    println!(
        "Redis memory per purchase kept after upload (records + uploaded index): {kept:.0} bytes"
    );
    assert!(kept < 2_000.0, "{kept:.0} bytes per purchase kept");
    let report: serde_json::Value =
        serde_json::from_slice(&env.flit(&["monitor", "--json"]).stdout).expect("JSON");
    let projected = report["projected_memory_bytes"]
        .as_f64()
        .expect("projected");
    let expected = 2.0 * 5_000.0 * (kept / 2.0) * 7.0;
    assert!(
        (projected - expected).abs() < expected * 0.5,
        "monitor projects {projected} bytes for 7 days at this volume, measured {expected}"
    );
}

#[test]
fn redis_does_not_start_without_its_users_file() {
    let files = tempfile::tempdir().expect("tempdir");
    let config = acl::production_config(files.path());
    std::fs::remove_file(files.path().join("users.acl")).expect("remove");
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

/// A stand-in for the Railway CLI (none can run here): it logs each call and
/// keeps the project's services in a folder, the way the real one answers.
const RAILWAY_STAND_IN: &str = r#"#!/bin/sh
state="$RAILWAY_STATE"
echo "$*" >> "$state/calls.log"
case "$1" in
  whoami) echo "someone@example.com" ;;
  status) [ -f "$state/project" ] || { echo "No linked project" >&2; exit 1; } ;;
  init) touch "$state/project" ;;
  service)
    printf '['
    sep=''
    for s in "$state"/service.*; do
      [ -e "$s" ] || continue
      printf '%s{"name": "%s"}' "$sep" "${s##*/service.}"
      sep=','
    done
    echo ']' ;;
  variable)
    case "$*" in
      *--stdin*)
        cat > "$state/stdin.$(echo "$*" | tr ' /' '__')"
        # variable set --service S --skip-deploys NAME --stdin
        touch "$state/var.$4.$6" ;;
      "variable list --service "*)
        printf '{'
        sep=''
        for v in "$state"/var."$4".*; do
          [ -e "$v" ] || continue
          printf '%s"%s": "a-value"' "$sep" "${v##*/var.$4.}"
          sep=','
        done
        echo '}' ;;
    esac ;;
  add)
    while [ $# -gt 0 ]; do
      [ "$1" = --service ] && touch "$state/service.$2"
      shift
    done ;;
esac
exit 0
"#;

#[test]
fn the_railway_script_creates_once_and_redeploys_after() {
    let bin = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let fake = bin.path().join("railway");
    std::fs::write(&fake, RAILWAY_STAND_IN).expect("stand-in");
    Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .expect("chmod");
    let run = |mode: &str| {
        let out = Command::new("bash")
            .arg(repository().join("deploy/railway/deploy.sh"))
            .arg(mode)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
            .env("RAILWAY_STATE", state.path())
            .env("BIGQUERY_PROJECT", "my-project")
            .output()
            .expect("bash");
        assert!(out.status.success(), "{}", output_text(&out));
        let calls = std::fs::read_to_string(state.path().join("calls.log")).expect("calls");
        std::fs::remove_file(state.path().join("calls.log")).expect("reset");
        (calls, output_text(&out))
    };
    let created = |calls: &str| -> Vec<String> {
        calls
            .lines()
            .filter(|c| c.starts_with("init") || c.starts_with("add") || c.starts_with("volume"))
            .map(str::to_owned)
            .collect()
    };

    let (calls, output) = run("service");
    assert_eq!(
        created(&calls),
        [
            "init --name flit-cache",
            "add --service redis",
            "volume add --service redis --mount-path /data",
            "add --service flit-cache",
        ]
    );
    assert!(calls.contains("up deploy/redis --path-as-root --service redis --detach"));
    assert!(
        calls.contains("FLIT_SINK=bigquery"),
        "the sink is set: {calls}"
    );
    assert!(calls.contains("up . --service flit-cache --detach"));
    assert!(calls.contains(
        "REDIS_URL=redis://flit-service:${{redis.REDIS_SERVICE_PASSWORD}}@redis.railway.internal:6379"
    ));
    let mut passwords = Vec::new();
    for (user, _) in acl::ROLES {
        let variable = acl::password_variable(user);
        let set_password =
            format!("variable set --service redis --skip-deploys {variable} --stdin");
        assert!(calls.contains(&set_password), "{variable}: {calls}");
        let password = std::fs::read_to_string(
            state
                .path()
                .join(format!("stdin.{}", set_password.replace([' ', '/'], "_"))),
        )
        .expect("the password came on stdin");
        assert_eq!(password.trim().len(), 64, "32 random bytes, hex");
        assert!(!calls.contains(password.trim()), "never on a command line");
        assert!(!output.contains(password.trim()), "never printed");
        passwords.push(password);
    }
    passwords.sort();
    passwords.dedup();
    assert_eq!(passwords.len(), acl::ROLES.len(), "one password per user");

    // An upgrade from the single REDIS_PASSWORD: only what is missing is made.
    for (user, _) in &acl::ROLES[1..] {
        let var = state
            .path()
            .join(format!("var.redis.{}", acl::password_variable(user)));
        std::fs::remove_file(var).expect("forget");
    }
    let (calls, _) = run("service");
    let made: Vec<&str> = calls.lines().filter(|c| c.contains("--stdin")).collect();
    assert_eq!(made.len(), acl::ROLES.len() - 1, "{calls}");
    assert!(
        !calls.contains("REDIS_SERVICE_PASSWORD --stdin"),
        "kept: {calls}"
    );

    // Again: nothing created, everything deployed.
    let (calls, _) = run("service");
    assert!(created(&calls).is_empty(), "{calls}");
    assert!(
        !calls.contains("--stdin"),
        "no password made again: {calls}"
    );
    assert!(calls.contains("up . --service flit-cache --detach"));

    // Cron mode adds the upload service, moves the schedule off the run service.
    let (calls, _) = run("cron");
    assert_eq!(created(&calls), ["add --service flit-cache-upload"]);
    assert!(calls.contains("FLIT_UPLOAD_CRON=0 0 0 31 2 *"));
    assert!(calls.contains("--path-as-root --service flit-cache-upload --detach"));

    // Without a BigQuery project, the container's own folder is not taken
    // as the warehouse unless asked for.
    let out = Command::new("bash")
        .arg(repository().join("deploy/railway/deploy.sh"))
        .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
        .env("RAILWAY_STATE", state.path())
        .env_remove("BIGQUERY_PROJECT")
        .env_remove("FLIT_SINK")
        .output()
        .expect("bash");
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("FLIT_SINK=local"),
        "{}",
        output_text(&out)
    );
}

/// deploy/cron runs the upload at 02:00 UTC whatever the host's zone, as
/// Debian's cron reads it (no CRON_TZ; `%` is a newline unless escaped).
#[test]
fn the_cron_entry_runs_at_two_utc_in_every_time_zone() {
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cron/flit-cache"),
    )
    .expect("deploy/cron/flit-cache");
    let entries: Vec<&str> = file
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(entries.len(), 1, "one entry: {entries:?}");
    assert!(
        !file.lines().any(|l| l.starts_with("CRON_TZ")),
        "Debian's cron ignores CRON_TZ"
    );
    let fields: Vec<&str> = entries[0].splitn(7, ' ').collect();
    assert_eq!(fields[..5], ["*/15", "*", "*", "*", "*"]);
    assert_eq!(fields[5], "flit-cache", "the user");
    let command = fields[6];
    assert!(
        !command.replace("\\%", "").contains('%'),
        "an unescaped % would cut the command: {command}"
    );
    // As cron hands it to sh, with a `date` that says what time it is in
    // UTC and a flit-cache that notes it ran.
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = dir.path().join("ran");
    let shell = command
        .replace("\\%", "%")
        .replace("/usr/local/bin/flit-cache", "touch")
        .replace("batch-upload --json", &ran.display().to_string())
        .replace(". /etc/flit-cache/env", "true")
        .replace("/var/lib/flit-cache", &dir.path().display().to_string())
        .replace("/var/log/flit-cache/upload.log", "/dev/null");
    for (utc, runs) in [
        ("0200", true),
        ("0215", false),
        ("0100", false),
        ("1400", false),
    ] {
        let _ = std::fs::remove_file(&ran);
        let fake = dir.path().join("date");
        std::fs::write(&fake, format!("#!/bin/sh\n[ \"$1\" = -u ] && echo {utc}\n"))
            .expect("fake date");
        let status = Command::new("chmod")
            .arg("+x")
            .arg(&fake)
            .status()
            .expect("chmod");
        assert!(status.success());
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(&shell)
            .env("PATH", path)
            .status()
            .expect("sh");
        assert_eq!(ran.exists(), runs, "at {utc} UTC: {shell}");
    }
}

/// Both systemd units carry the same hardening block, word for word.
#[test]
fn both_systemd_units_share_one_hardening_block() {
    let block = |unit: &str| -> String {
        let text =
            std::fs::read_to_string(repository().join("deploy/systemd").join(unit)).expect("unit");
        let start = text.find("# Hardening").expect("a hardening block");
        text[start..]
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let service = block("flit-cache.service");
    assert_eq!(service, block("flit-cache-upload.service"));
    for setting in [
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
    ] {
        assert!(
            service.lines().any(|l| l == setting),
            "{setting} in:\n{service}"
        );
    }
}
