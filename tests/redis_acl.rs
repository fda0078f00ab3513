//! The shipped Redis users (deploy/redis/users.acl, rendered by the shipped
//! render-acl.sh) loaded by a real redis-server on the production
//! redis.conf: the whole pipeline runs as flit-service with events sent as
//! flit-producer, lookups made as flit-reader and `monitor` run as
//! flit-monitor; every user is refused what its role does not need, the
//! producer everything but XADD to its two streams; the default user is off.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::time::Duration;

use flit_cache::cache::RecordCache;
use support::acl::{self, url_for};
use support::*;

/// A connection to `db` signed in as `user`.
fn conn_as(redis: &RedisServer, user: &str, db: i64) -> redis::Connection {
    redis::Client::open(format!("{}/{db}", url_for(redis, user)))
        .expect("client")
        .get_connection()
        .unwrap_or_else(|e| panic!("{user} signs in: {e}"))
}

/// Runs `args` as `user` on database 0 and returns Redis's error, if any.
fn refusal(redis: &RedisServer, user: &str, args: &[&str]) -> Option<String> {
    let mut conn = conn_as(redis, user, 0);
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command
        .query::<redis::Value>(&mut conn)
        .err()
        .map(|e| e.to_string())
}

fn assert_refused(redis: &RedisServer, user: &str, args: &[&str]) {
    match refusal(redis, user, args) {
        // NOPERM (or, inside a script, "can't run this command"): the ACL;
        // "unknown command" or "not allowed": renamed away or disabled by
        // redis.conf.
        Some(error)
            if error.to_ascii_lowercase().contains("noperm")
                || error.contains("unknown command")
                || error.contains("not allowed")
                || error.contains("can't run this command") => {}
        other => panic!("{user} may run {args:?}: {other:?}"),
    }
}

fn assert_allowed(redis: &RedisServer, user: &str, args: &[&str]) {
    if let Some(error) = refusal(redis, user, args) {
        assert!(
            !error.to_ascii_lowercase().contains("noperm"),
            "{user} is refused {args:?}: {error}"
        );
    }
}

/// The roles that may run none of `NEVER`.
const ROLES_BUT_ADMIN: [&str; 4] = [
    "flit-service",
    "flit-producer",
    "flit-reader",
    "flit-monitor",
];

/// What no role but flit-admin may run (issue: "None of them may ...").
const NEVER: &[&[&str]] = &[
    &["FLUSHALL"],
    &["FLUSHDB"],
    &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
    &["CONFIG", "REWRITE"],
    &["CONFIG", "RESETSTAT"],
    &["REPLICAOF", "10.0.0.1", "6379"],
    &["SLAVEOF", "10.0.0.1", "6379"],
    &["SHUTDOWN", "NOSAVE"],
    &["DEBUG", "SLEEP", "0"],
    &["MODULE", "LIST"],
    &["MIGRATE", "10.0.0.1", "6379", "tx:1", "0", "1000"],
    &["SWAPDB", "0", "1"],
    &["ACL", "LIST"],
    &["ACL", "SETUSER", "intruder", "on", ">x", "+@all"],
    &["ACL", "DELUSER", "flit-service"],
    &["KEYS", "*"],
    &["MONITOR"],
    &["CLIENT", "KILL", "TYPE", "normal"],
    &["FUNCTION", "FLUSH"],
    &["SCRIPT", "FLUSH"],
    &["BGREWRITEAOF"],
    &["SAVE"],
];

#[test]
fn each_role_is_refused_what_it_does_not_need() {
    let files = tempfile::tempdir().expect("tempdir");
    let redis = acl::production_redis(files.path(), "flit-service");

    // No one signs in as the default user: without a user nothing answers.
    let refused = acl::anonymous_ping(&redis).expect_err("the default user answers");
    assert!(refused.to_string().contains("NOAUTH"), "{refused}");
    let wrong = redis::Client::open(format!(
        "redis://flit-service:not-the-password@127.0.0.1:{}",
        redis.port
    ))
    .expect("client")
    .get_connection();
    assert!(wrong.is_err(), "a wrong password signs in");

    // Each is refused in fact (some are also renamed away or disabled by
    // redis.conf), and by the ACL alone: ACL DRYRUN on a server that loads
    // only the users, where every command exists.
    for user in ROLES_BUT_ADMIN {
        for args in NEVER {
            assert_refused(&redis, user, args);
        }
    }
    let bare = files.path().join("bare");
    std::fs::create_dir(&bare).expect("dir");
    let (rendered, users) = acl::render(&bare, &acl::ROLES);
    assert!(rendered.status.success(), "{}", output_text(&rendered));
    let config = bare.join("redis.conf");
    std::fs::write(
        &config,
        format!(
            "bind 127.0.0.1\nsave \"\"\nappendonly no\naclfile {}\n",
            users.display()
        ),
    )
    .expect("config");
    let acl_only = RedisServer::builder()
        .config(&config, "flit-admin", acl::password("flit-admin"))
        .start();
    let mut admin = acl_only.conn(0);
    for user in ROLES_BUT_ADMIN {
        for args in NEVER {
            let verdict: String = redis::cmd("ACL")
                .arg("DRYRUN")
                .arg(user)
                .arg(*args)
                .query(&mut admin)
                .unwrap_or_else(|e| panic!("ACL DRYRUN {user} {args:?}: {e}"));
            assert_ne!(verdict, "OK", "the ACL lets {user} run {args:?}");
        }
    }
    for user in ["flit-service", "flit-monitor"] {
        assert_allowed(&redis, user, &["INFO", "memory"]);
        assert_allowed(&redis, user, &["CONFIG", "GET", "maxmemory-policy"]);
    }
    // flit-admin exists for operators and may reconfigure.
    assert_allowed(&redis, "flit-admin", &["CONFIG", "SET", "maxmemory", "1gb"]);

    // The producer: XADD to its two streams and nothing else, not even
    // reading them back or creating a group (which stops trimming).
    let mut producer = conn_as(&redis, "flit-producer", 0);
    let id: String = redis::cmd("XADD")
        .arg("stream:transactions")
        .arg("*")
        .arg("data")
        .arg("{}")
        .query(&mut producer)
        .expect("XADD to its stream");
    assert!(id.contains('-'));
    assert_allowed(
        &redis,
        "flit-producer",
        &["XADD", "stream:predictions", "*", "data", "{}"],
    );
    for args in [
        &["XADD", "stream:transactions:dead", "*", "data", "{}"][..],
        &["XADD", "flit:anything", "*", "data", "{}"],
        &["XRANGE", "stream:transactions", "-", "+"],
        &["XLEN", "stream:transactions"],
        &["XDEL", "stream:transactions", &id],
        &["XTRIM", "stream:transactions", "MAXLEN", "0"],
        &["XGROUP", "CREATE", "stream:transactions", "intruder", "$"],
        &[
            "XREADGROUP",
            "GROUP",
            "flit-cache",
            "c",
            "STREAMS",
            "stream:transactions",
            ">",
        ],
        &["XSETID", "stream:transactions", "99999999999999-0"],
        &["GET", "tx:1"],
        &["SET", "tx:1", "{\"forged\":true}"],
        &["DEL", "upload_queue"],
        &["RPUSH", "upload_queue", "tx:forged"],
        &["EXPIRE", "tx:1", "1"],
        &["EVAL", "return 1", "0"],
        &["SCAN", "0"],
        &["INFO"],
        &["CONFIG", "GET", "*"],
        &["TIME"],
    ] {
        assert_refused(&redis, "flit-producer", args);
    }
    // The reader: GET on records, INCR and EXPIRE on the lookup counters'
    // closed set of names, nothing else: no script (no code of its own to
    // hold Redis busy), no value but an integer, no key beyond that set.
    assert_allowed(&redis, "flit-reader", &["GET", "tx:1"]);
    assert_allowed(
        &redis,
        "flit-reader",
        &["INCR", "flit:cache:transactions:hits:07"],
    );
    assert_allowed(
        &redis,
        "flit-reader",
        &["EXPIRE", "flit:cache:predictions:misses:59", "60", "NX"],
    );
    assert_allowed(
        &redis,
        "flit-reader",
        &["INCR", "flit:cache:predictions:hits"],
    );
    for args in [
        &["GET", "tx!1"][..],
        &["GET", "flit:upload:last_success"],
        &["SET", "tx:1", "{}"],
        &["DEL", "tx:1"],
        &["XADD", "stream:transactions", "*", "data", "{}"],
        &["XRANGE", "stream:transactions", "-", "+"],
        &["LRANGE", "upload_queue", "0", "-1"],
        &["EVAL", "return 1", "0"],
        &["EVAL", "local i = 0 while true do i = i + 1 end", "0"],
        &["SCRIPT", "LOAD", "return 1"],
        &["SET", "flit:cache:transactions:hits", "a long text"],
        &["APPEND", "flit:cache:transactions:hits:07", "more"],
        &["HSET", "flit:cache:stats", "field", "a long text"],
        &["INCR", "flit:cache:transactions:hits:60"],
        &["INCR", "flit:cache:transactions:hits:7x"],
        &["INCR", "flit:cache:anything"],
        &["MULTI"],
        &["DEL", "flit:cache:transactions:hits"],
        &["INFO"],
    ] {
        assert_refused(&redis, "flit-reader", args);
    }

    // The monitor reads everything but DUMP and writes nothing, and runs no
    // code at all.
    assert_allowed(
        &redis,
        "flit-monitor",
        &["LRANGE", "upload_queue", "0", "-1"],
    );
    assert_allowed(
        &redis,
        "flit-monitor",
        &["XRANGE", "stream:transactions", "-", "+"],
    );
    for args in [
        &["SET", "tx:1", "{}"][..],
        &["DEL", "upload_queue"],
        &["XADD", "stream:transactions", "*", "data", "{}"],
        &["XGROUP", "CREATE", "stream:transactions", "intruder", "$"],
        &[
            "EVAL",
            "return redis.call('SET', KEYS[1], 'x')",
            "1",
            "tx:1",
        ],
        &["EVAL", "return 1", "0"],
        &["EVAL_RO", "local i = 0 while true do i = i + 1 end", "0"],
        &["SCRIPT", "LOAD", "return 1"],
        &["DUMP", "tx:1"],
    ] {
        assert_refused(&redis, "flit-monitor", args);
    }

    // The service keeps to flit-cache's own key families.
    assert_refused(&redis, "flit-service", &["SET", "someone-elses-key", "x"]);
    assert_refused(&redis, "flit-service", &["GET", "session:42"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_pipeline_runs_with_one_user_per_role() {
    let files = tempfile::tempdir().expect("tempdir");
    let redis = acl::production_redis(files.path(), "flit-service");
    // The service: ingest, dead letters, upload, redrive.
    let service = Env::new(&redis).set("FLIT_SINK", "local");
    // The ML API's sends, through the Rust producer (`flit-cache push`).
    let producer = Env::new(&redis)
        .set("REDIS_URL", &url_for(&redis, "flit-producer"))
        .set("FLIT_SPOOL_DIR", &path_str(&service.spool_dir()));

    let mut transactions = String::new();
    for i in 0..300 {
        transactions.push_str(&format!(
            "{{\"transaction_id\":\"tx_acl_{i}\",\"amount\":\"{i}.50\",\"timestamp\":\"2026-12-01T10:00:00\"}}\n"
        ));
    }
    let predictions: String = (0..200)
        .map(|i| {
            format!(
                "{{\"prediction_id\":\"p_acl_{i}\",\"transaction_id\":\"tx_acl_{i}\",\"score\":0.{i},\"model_version\":\"v1\",\"timestamp\":\"2026-12-01T10:00:01+00:00\"}}\n"
            )
        })
        .collect();
    producer.push("transactions", &transactions);
    producer.push("predictions", &predictions);
    // Bad input sent as the producer: a dead letter written by the service.
    let mut raw = conn_as(&redis, "flit-producer", 0);
    let _: String = redis::cmd("XADD")
        .arg("stream:transactions")
        .arg("*")
        .arg("data")
        .arg("not json")
        .query(&mut raw)
        .expect("XADD");
    assert!(
        std::fs::read_dir(service.spool_dir())
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "nothing spooled: the producer's XADDs were accepted"
    );

    ingest_until_queued(&redis, &service, 300, 200);
    let mut tx = redis.conn(0);
    assert_eq!(xlen(&mut tx, "stream:transactions:dead"), 1);

    // Lookups as flit-reader, counted in the hit/miss counters.
    let reader = Env::new(&redis).set("REDIS_URL", &url_for(&redis, "flit-reader"));
    let cache = RecordCache::connect(&reader.settings().redis)
        .await
        .expect("connect as flit-reader");
    let found = cache
        .get_transaction("tx_acl_7")
        .await
        .expect("lookup as flit-reader");
    assert_eq!(
        found.as_ref().and_then(|r| r["transaction_id"].as_str()),
        Some("tx_acl_7")
    );
    assert!(
        cache
            .get_prediction("p_acl_missing")
            .await
            .expect("lookup")
            .is_none()
    );

    // The monitor as flit-monitor: everything readable, the verdict healthy
    // but for the dead letter the door refused.
    let monitor = Env::new(&redis).set("REDIS_URL", &url_for(&redis, "flit-monitor"));
    let out = monitor.flit(&["monitor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
    assert_eq!(report["redis"]["reachable"], true, "{report:#}");
    let kinds = report["kinds"].as_array().expect("kinds");
    let queued: u64 = kinds
        .iter()
        .map(|k| k["queue"]["length"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(queued, 500, "{report:#}");
    let alerts: Vec<&str> = report["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["code"].as_str())
        .collect();
    assert!(
        !alerts.iter().any(|c| c.contains("unreachable")),
        "{alerts:?}"
    );
    assert_eq!(
        report["kinds"][0]["lookups"]["hits"], 1,
        "the reader's lookup was counted: {report:#}"
    );

    // The upload as flit-service; every record lands once.
    let out = service.flit(&["batch-upload"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(warehouse_rows(&service, TX_TABLE).len(), 300);
    assert_eq!(warehouse_rows(&service, PRED_TABLE).len(), 200);
    let out = service.flit(&["batch-upload"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(
        warehouse_rows(&service, TX_TABLE).len(),
        300,
        "nothing twice"
    );

    // Operator commands as flit-service.
    let out = service.flit(&["dead-letter", "list", "transactions", "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = monitor.flit(&["dead-letter", "list", "transactions", "--json"]);
    assert!(
        out.status.success(),
        "the monitor reads dead letters: {}",
        output_text(&out)
    );
    let out = monitor.flit(&["batch-upload"]);
    assert!(
        !out.status.success(),
        "the read-only user cannot upload: {}",
        output_text(&out)
    );
    assert_eq!(warehouse_rows(&monitor, TX_TABLE).len(), 0);
}

#[test]
fn monitor_alerts_when_entries_are_deleted_before_the_group_reads_them() {
    let files = tempfile::tempdir().expect("tempdir");
    let redis = acl::production_redis(files.path(), "flit-service");
    let env = Env::new(&redis).set("FLIT_SINK", "local");
    env.push(
        "transactions",
        "{\"transaction_id\":\"tx_del_1\",\"amount\":1,\"timestamp\":\"2026-12-01T10:00:00Z\"}\n",
    );
    ingest_until_queued(&redis, &env, 1, 0);
    let codes = |env: &Env| -> Vec<String> {
        let out = env.flit(&["monitor", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        report["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter_map(|a| a["code"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(
        !codes(&env).contains(&"stream_deleted_before_read".to_owned()),
        "read and trimmed by flit-cache itself is not a deletion"
    );
    // Entries the service has not read yet, deleted by a client that could
    // (only flit-admin can: the producer is refused XDEL).
    let mut admin = conn_as(&redis, "flit-admin", 0);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(xadd(
            &mut admin,
            "stream:transactions",
            &[(
                "data",
                format!("{{\"transaction_id\":\"gone_{i}\"}}").as_bytes(),
            )],
        ));
    }
    let deleted: u64 = redis::cmd("XDEL")
        .arg("stream:transactions")
        .arg(&ids[..2])
        .query(&mut admin)
        .expect("XDEL");
    assert_eq!(deleted, 2);
    let monitor = Env::new(&redis).set("REDIS_URL", &url_for(&redis, "flit-monitor"));
    wait_until(Duration::from_secs(10), "the alert", || {
        codes(&monitor).contains(&"stream_deleted_before_read".to_owned())
    });
    let text = output_text(&monitor.flit(&["monitor"]));
    assert!(text.contains(&ids[1]), "names the last deleted id: {text}");
    // Once the group has read past it, the loss is history, not a state.
    ingest_until_queued(&redis, &env, 2, 0);
    assert!(
        !codes(&monitor).contains(&"stream_deleted_before_read".to_owned()),
        "cleared once read past"
    );

    // A producer's far-future id, read, deleted, then reset to the clock
    // (README, "A stream id in the future"): nothing was lost unread, and
    // monitor does not say so.
    let future = xadd_with_id(
        &mut admin,
        "99999999999999-0",
        b"{\"transaction_id\":\"tx_future\",\"amount\":1}",
    );
    ingest_until_queued(&redis, &env, 3, 0);
    let _: u64 = redis::cmd("XDEL")
        .arg("stream:transactions")
        .arg(&future)
        .query(&mut admin)
        .expect("XDEL");
    let reset: String = redis::Script::new(include_str!("../deploy/redis/reset-stream-id.lua"))
        .key("stream:transactions")
        .invoke(&mut admin)
        .expect("reset-stream-id.lua");
    assert!(reset < future, "{reset}");
    let after_reset = codes(&monitor);
    assert!(
        !after_reset.contains(&"stream_deleted_before_read".to_owned()),
        "{after_reset:?}"
    );
}

fn xadd_with_id(conn: &mut redis::Connection, id: &str, data: &[u8]) -> String {
    redis::cmd("XADD")
        .arg("stream:transactions")
        .arg(id)
        .arg("data")
        .arg(data)
        .query(conn)
        .expect("XADD with an id")
}

#[test]
fn the_users_file_holds_hashes_only_and_refuses_what_would_not_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, users) = acl::render(dir.path(), &acl::ROLES[..4]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = std::fs::read_to_string(&users).expect("users");
    for (_, password) in acl::ROLES {
        assert!(!text.contains(password), "a password in the file");
        assert!(!output_text(&out).contains(password), "a password printed");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&users)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("user flit-admin ") && l.ends_with(" off")),
        "flit-admin stays off without its password: {text}"
    );
    assert!(
        text.lines()
            .filter(|l| !l.starts_with("user default") && !l.starts_with("user flit-admin"))
            .all(|l| l.contains(" on #")),
        "{text}"
    );
    assert!(output_text(&out).contains("flit-admin stays off"));

    // No service user, no file: flit-cache could not connect.
    let (out, _) = acl::render(dir.path(), &acl::ROLES[1..]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("REDIS_SERVICE_PASSWORD"));
    // A short password is refused, and not shown.
    let (out, _) = acl::render(dir.path(), &[("flit-service", "short-pw")]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        !output_text(&out).contains("short-pw"),
        "{}",
        output_text(&out)
    );

    // The image's entrypoint will not start on the old single password.
    let out = std::process::Command::new("sh")
        .arg(acl::repository().join("deploy/redis/entrypoint.sh"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("REDIS_PASSWORD", "an-old-single-password-0123")
        .output()
        .expect("sh");
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("REDIS_SERVICE_PASSWORD"));
    assert!(!output_text(&out).contains("an-old-single-password"));
}

/// Redis 7.0 and 7.2 replay the AOF's script effects (MULTI/EXEC) checked
/// against the default user: with that user off and without rights, every
/// commit would be refused at restart and lost. The shipped users keep it.
#[test]
fn every_record_survives_a_restart_with_the_shipped_users() {
    let files = tempfile::tempdir().expect("tempdir");
    let mut redis = acl::production_redis(files.path(), "flit-service");
    let env = Env::new(&redis).set("FLIT_SINK", "local");
    env.generate(&["--count", "150"]);
    ingest_until_queued(&redis, &env, 150, 150);
    let before: Vec<u64> = (0..2)
        .map(|db| {
            let mut conn = redis.conn(db);
            redis::cmd("DBSIZE").query(&mut conn).expect("dbsize")
        })
        .collect();

    for restart in ["SIGTERM", "SIGKILL"] {
        match restart {
            "SIGTERM" => redis.stop(),
            _ => {
                // appendfsync everysec: wait for the last second to reach disk.
                std::thread::sleep(Duration::from_millis(1_500));
                redis.kill()
            }
        }
        redis.restart();
        for (db, expected) in before.iter().enumerate() {
            let mut conn = redis.conn(db as i64);
            let size: u64 = redis::cmd("DBSIZE").query(&mut conn).expect("dbsize");
            assert_eq!(size, *expected, "database {db} after {restart}");
        }
        assert_exactly_once(&redis, 0, "tx:", "stream:transactions", 150);
        assert_exactly_once(&redis, 1, "pred:", "stream:predictions", 150);
        // Before any worker connects again: the monitor user reads every
        // section with plain commands (no script cache to wait for).
        let monitor = Env::new(&redis).set("REDIS_URL", &url_for(&redis, "flit-monitor"));
        let out = monitor.flit(&["monitor", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", output_text(&out)));
        for kind in report["kinds"].as_array().expect("kinds") {
            assert_eq!(kind["errors"], serde_json::json!([]), "{report:#}");
            assert_eq!(kind["stream"]["lag"], 0, "{report:#}");
        }
    }
    let out = env.flit(&["batch-upload"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(warehouse_rows(&env, TX_TABLE).len(), 150);
    assert_eq!(warehouse_rows(&env, PRED_TABLE).len(), 150);
}
