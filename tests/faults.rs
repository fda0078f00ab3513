//! Faults injected for real — the worker killed with SIGKILL, Redis killed and
//! restarted, two workers racing, a producer with Redis gone — each followed
//! by a count showing every event stored exactly once.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(180);

fn generate(env: &Env, count: usize) {
    let out = env.flit(&["generate", "--count", &count.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn worker_killed_mid_batch_and_restarted_loses_and_doubles_nothing() {
    const N: usize = 30_000;
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_BATCH_SIZE", "250");
    generate(&env, N);
    let mut conn = redis.conn(0);

    for (round, stop_at) in [5_000, 12_000, 21_000].into_iter().enumerate() {
        let mut service = env.service(&format!("killed-{round}"));
        wait_until(LIMIT, "ingest to pass the kill point", || {
            llen(&mut conn, "upload_queue") as usize >= stop_at
        });
        service.kill();
        let queued = llen(&mut conn, "upload_queue") as usize;
        assert!(
            queued < N,
            "killed before the end (round {round}: {queued})"
        );
    }
    let _last = env.service("survivor");
    let mut pred = redis.conn(1);
    wait_until(LIMIT, "everything ingested", || {
        llen(&mut conn, "upload_queue") as usize == N
            && llen(&mut pred, "upload_queue") as usize == N
    });
    wait_until(LIMIT, "abandoned entries taken over", || {
        pending(&mut conn, "stream:transactions") == 0
            && pending(&mut pred, "stream:predictions") == 0
    });
    assert_exactly_once(&redis, 0, "tx:", "stream:transactions", N);
    assert_exactly_once(&redis, 1, "pred:", "stream:predictions", N);
}

#[test]
fn redis_killed_and_restarted_during_ingest_loses_nothing() {
    const N: usize = 40_000;
    let mut redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_PRODUCER_TIMEOUT_MS", "300");
    let service = env.service("run");

    // A producer pushing while Redis dies under it: what Redis did not take is spooled.
    let producer = env.spawn(&["generate", "--count", &N.to_string()]);
    let mut conn = redis.conn(0);
    wait_until(LIMIT, "ingest under way", || {
        llen(&mut conn, "upload_queue") > 1_000
    });
    redis.kill();
    let out = producer.wait_with_output().expect("generate finishes");
    assert!(out.status.success(), "{}", output_text(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !report.contains(" 0 spooled"),
        "Redis died mid-push, so some events were spooled: {report}"
    );

    std::thread::sleep(Duration::from_secs(1));
    redis.restart();
    // The running service reconnects, and replays the spool by itself.
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));
    wait_until(LIMIT, "all events ingested after the restart", || {
        llen(&mut tx, "upload_queue") as usize == N && llen(&mut pred, "upload_queue") as usize == N
    });
    wait_until(LIMIT, "spool emptied", || {
        std::fs::read_dir(env.spool_dir())
            .map(|d| {
                d.filter_map(Result::ok).all(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with('.') || e.metadata().map(|m| m.len() == 0).unwrap_or(true)
                })
            })
            .unwrap_or(true)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_exactly_once(&redis, 0, "tx:", "stream:transactions", N);
    assert_exactly_once(&redis, 1, "pred:", "stream:predictions", N);
    assert!(
        service.log_text().contains("reconnecting"),
        "the worker saw Redis go"
    );
}

#[test]
fn two_workers_at_once_share_the_work_without_doubling_it() {
    const N: usize = 20_000;
    let redis = RedisServer::start();
    let env = Env::new(&redis)
        .set("FLIT_LOG_FORMAT", "json")
        .set("FLIT_BATCH_SIZE", "100");
    let mut first = env.service("first");
    let mut second = env.service("second");
    generate(&env, N);
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));
    wait_until(LIMIT, "all ingested", || {
        llen(&mut tx, "upload_queue") as usize == N && llen(&mut pred, "upload_queue") as usize == N
    });
    assert!(first.terminate().success());
    assert!(second.terminate().success());
    assert_exactly_once(&redis, 0, "tx:", "stream:transactions", N);
    assert_exactly_once(&redis, 1, "pred:", "stream:predictions", N);

    // Each worker's own account of what it stored adds up to N per kind.
    let mut stored_by = Vec::new();
    for service in [&first, &second] {
        let mut stored = [0u64; 2];
        for line in service.log_text().lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if entry["message"] == "stream worker stopped" {
                let slot = usize::from(entry["kind"] == "predictions");
                stored[slot] += entry["stored"].as_u64().unwrap_or(0);
            }
        }
        stored_by.push(stored);
    }
    assert_eq!(
        stored_by[0][0] + stored_by[1][0],
        N as u64,
        "transactions stored, {stored_by:?}"
    );
    assert_eq!(
        stored_by[0][1] + stored_by[1][1],
        N as u64,
        "predictions stored, {stored_by:?}"
    );
    assert!(
        stored_by.iter().all(|s| s[0] + s[1] > 0),
        "both workers took a share: {stored_by:?}"
    );
}

#[test]
fn producer_spools_while_redis_is_down_and_replay_restores_every_event() {
    const N: usize = 3_000;
    let mut redis = RedisServer::start();
    let env = Env::new(&redis);
    redis.kill();

    let out = env.flit(&["generate", "--count", &N.to_string()]);
    assert!(
        out.status.success(),
        "producing with Redis down still succeeds: {}",
        output_text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{} spooled", 2 * N)), "{stdout}");
    let line = br#"{"transaction_id":"pushed_while_down","amount":1}"#;
    let out = env.flit_with_input(&["push", "transactions"], line);
    assert!(out.status.success(), "{}", output_text(&out));

    // Replay with Redis still down fails and keeps everything.
    let out = env.flit(&["replay-spool"]);
    assert!(!out.status.success(), "{}", output_text(&out));

    redis.restart();
    let out = env.flit(&["replay-spool"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("replayed {} events", 2 * N + 1)),
        "{}",
        output_text(&out)
    );
    let out = env.flit(&["replay-spool"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 0 events"),
        "a second replay sends nothing"
    );

    let _service = env.service("run");
    let (mut tx, mut pred) = (redis.conn(0), redis.conn(1));
    wait_until(LIMIT, "replayed events ingested", || {
        llen(&mut tx, "upload_queue") as usize == N + 1
            && llen(&mut pred, "upload_queue") as usize == N
    });
    assert_exactly_once(&redis, 0, "tx:", "stream:transactions", N + 1);
    assert_exactly_once(&redis, 1, "pred:", "stream:predictions", N);
}

#[test]
fn a_full_redis_spools_and_holds_events_until_uploads_free_memory() {
    const N: usize = 40_000;
    let redis = RedisServer::builder()
        .args(&["--maxmemory", "24mb", "--maxmemory-policy", "noeviction"])
        .start();
    let env = Env::new(&redis).set("FLIT_UPLOAD_BATCH_ROWS", "2000");
    let mut conn = redis.conn(0);
    let maxmemory: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut conn)
        .expect("config");
    assert_eq!(
        maxmemory[1],
        (24 * 1024 * 1024).to_string(),
        "the limit is in force"
    );

    // More events than fit: Redis refuses writes, producers spool the rest.
    let out = env.flit(&["generate", "--count", &N.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !report.contains(" 0 spooled"),
        "Redis filled up, so events were spooled: {report}"
    );
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut conn)
        .expect("info");
    assert!(info.contains("maxmemory_policy:noeviction"));

    // The streams alone fill Redis: the workers must still turn them into
    // records (committing one batch past the limit, then trimming), and
    // then wait for uploads to free memory instead of going further.
    let service = env.service("run");
    let mut pred = redis.conn(1);
    wait_until(
        Duration::from_secs(120),
        "a batch of each kind past the limit",
        || llen(&mut conn, "upload_queue") > 0 && llen(&mut pred, "upload_queue") > 0,
    );
    std::thread::sleep(Duration::from_secs(3));
    let used = || -> u64 {
        let info: redis::InfoDict = redis::cmd("INFO")
            .arg("memory")
            .query(&mut redis.conn(0))
            .expect("info");
        info.get("used_memory").unwrap_or(0)
    };
    let past = used().saturating_sub(24 << 20);
    println!("past maxmemory while the workers wait for an upload: {past} bytes");
    assert!(
        past < 2 << 20,
        "one batch per worker past the limit, not the whole backlog: {past} bytes"
    );

    // Uploads are what frees memory; they must work while Redis is full.
    let mut runs = 0;
    wait_until(Duration::from_secs(240), "everything uploaded", || {
        runs += 1;
        let out = env.flit(&["batch-upload"]);
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "{}",
            output_text(&out)
        );
        warehouse_rows(&env, TX_TABLE).len() == N
            && warehouse_rows(&env, PRED_TABLE).len() == N
            && llen(&mut conn, "upload_queue") == 0
            && llen(&mut pred, "upload_queue") == 0
    });
    assert!(
        runs > 1,
        "it took several runs while spooled events came back"
    );
    for table in [TX_TABLE, PRED_TABLE] {
        let rows = warehouse_rows(&env, table);
        let ids: std::collections::HashSet<String> = row_ids(&rows).into_iter().collect();
        assert_eq!(
            (rows.len(), ids.len()),
            (N, N),
            "{table}: every event exactly once"
        );
    }
    assert_eq!(pending(&mut conn, "stream:transactions"), 0);
    assert_eq!(pending(&mut pred, "stream:predictions"), 0);
    assert!(
        service
            .log_text()
            .contains("waiting for an upload to free memory"),
        "the worker met a full Redis and waited"
    );
    let info: redis::InfoDict = redis::cmd("INFO")
        .arg("memory")
        .query(&mut conn)
        .expect("info");
    let peak: u64 = info.get("used_memory_peak").unwrap_or(0);
    println!(
        "peak used_memory {peak} bytes against maxmemory {} (past it by {} bytes)",
        24 << 20,
        peak.saturating_sub(24 << 20)
    );
    assert!(
        peak.saturating_sub(24 << 20) < 8 << 20,
        "bounded overshoot (it was 11 MB when every batch could go past the limit)"
    );
}
