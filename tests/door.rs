//! The door, end to end: what real producers send (through redis-py, that
//! is raw XADDs) becomes exactly one row that parses or exactly one dead
//! letter with its reason, counted at the end; dead letters are bounded and
//! can be redriven exactly once, even when the redrive is killed; a stream
//! id in the future neither breaks arrival stamps nor goes unnoticed.
// Tests and benches set up, break and inspect Redis directly (see clippy.toml).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json::value::RawValue;
use support::corpus::{self, Case};
use support::*;

const LIMIT: Duration = Duration::from_secs(120);

/// Rows of a local warehouse table, each as its columns' text, with the day
/// folder it sits in.
fn raw_rows(env: &Env, table: &str) -> Vec<(String, HashMap<String, Box<RawValue>>)> {
    let dir = env.dir.path().join("warehouse").join(table);
    let mut rows = Vec::new();
    for day in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = day.file_name().to_string_lossy().into_owned();
        let Some(dt) = name.strip_prefix("dt=") else {
            continue;
        };
        for file in std::fs::read_dir(day.path()).expect("day").flatten() {
            if !file.file_name().to_string_lossy().ends_with(".ndjson") {
                continue;
            }
            let text = std::fs::read_to_string(file.path()).expect("read");
            for line in text.lines() {
                rows.push((
                    dt.to_owned(),
                    serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("a row that does not parse ({e}): {line}")),
                ));
            }
        }
    }
    rows
}

fn wait_until_committed(redis: &RedisServer, expected: &corpus::Expected) {
    for (db, kind) in [(0, "transactions"), (1, "predictions")] {
        let mut conn = redis.conn(db);
        wait_until(LIMIT, &format!("{kind} committed"), || {
            llen(&mut conn, "upload_queue") as usize == expected.records(kind)
                && xlen(&mut conn, &format!("stream:{kind}:dead")) as usize
                    == expected.dead_letters(kind)
                && pending(&mut conn, &format!("stream:{kind}")) == 0
        });
    }
}

fn check_row(
    case: &Case,
    day: &str,
    row: &HashMap<String, Box<RawValue>>,
    now: chrono::DateTime<chrono::Utc>,
) {
    let event_column = if case.kind == "transactions" {
        "json_body"
    } else {
        "raw"
    };
    let stored = row[event_column].get();
    match (&case.record, case.stamped) {
        (Some(record), false) => {
            assert_eq!(stored, record, "{}: the row holds the record", case.name)
        }
        (None, false) => panic!("{}: the corpus gives no record", case.name),
        _ => {
            let event: Value = serde_json::from_str(stored).expect("json");
            let field = if case.kind == "transactions" {
                "_timestamp"
            } else {
                "prediction_timestamp"
            };
            let stamp =
                chrono::DateTime::parse_from_rfc3339(event[field].as_str().expect("stamped"))
                    .expect("a stamp");
            assert!(
                (now - stamp.with_timezone(&chrono::Utc))
                    .num_seconds()
                    .abs()
                    < 300,
                "{}: stamped at arrival, by the Redis clock: {stamp}",
                case.name
            );
        }
    }
    if let Some(expected_day) = &case.day {
        assert_eq!(
            day, expected_day,
            "{}: the partition of its own event time",
            case.name
        );
    }
}

#[test]
fn what_producers_send_becomes_one_row_that_parses_or_one_dead_letter_in_the_local_warehouse() {
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_MAX_EVENT_BYTES", "2048");
    let cases = corpus::cases();
    let mut expected = corpus::send(&redis, &cases);

    // A huge event: refused, and only 4 KiB of it is kept.
    let mut tx = redis.conn(0);
    let huge = format!(
        r#"{{"transaction_id":"t_huge","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    let huge_entry = xadd(&mut tx, "stream:transactions", &[("data", huge.as_bytes())]);
    *expected
        .dead
        .entry("transactions".into())
        .or_default()
        .entry("too_large".into())
        .or_default() += 1;

    // A producer chooses an id far in the future; every later XADD * follows it.
    let mut pred = redis.conn(1);
    let future: String = redis::cmd("XADD")
        .arg("stream:predictions")
        .arg("9999999999999-0")
        .arg("data")
        .arg(r#"{"prediction_id":"p_future_id","selected_prediction":0.1}"#)
        .query(&mut pred)
        .expect("xadd");
    let after = xadd(
        &mut pred,
        "stream:predictions",
        &[("data", br#"{"prediction_id":"p_after_future"}"#)],
    );
    assert!(after.starts_with("9999999999999-"), "{future} then {after}");

    let records = expected
        .records
        .get_mut("predictions")
        .expect("predictions");
    for id in ["p_future_id", "p_after_future"] {
        records.insert(
            id.to_owned(),
            Case {
                name: format!("{id}: an entry id in the future"),
                kind: "predictions".into(),
                data: Vec::new(),
                accept: true,
                code: None,
                field: None,
                record: None,
                stamped: true,
                clock: false,
                day: None,
            },
        );
    }

    let service = env.service("ingest");
    wait_until_committed(
        &redis,
        &corpus::Expected {
            records: expected.records.clone(),
            dead: expected.dead.clone(),
            ..Default::default()
        },
    );
    drop(service);

    // The huge event's dead letter is bounded.
    let letters = corpus::dead_letters(&mut tx, "stream:transactions:dead");
    let huge_letter = letters
        .iter()
        .find(|f| f["source_id"] == huge_entry.as_bytes())
        .expect("the huge event is dead-lettered");
    assert!(huge_letter["data"].len() <= 4096);
    assert_eq!(huge_letter["truncated"], b"1");
    assert_eq!(huge_letter["size"], huge.len().to_string().as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&huge_letter["sha1"]),
        sha1_smol::Sha1::from(huge.as_bytes()).digest().to_string()
    );
    expected.dead_sources.insert(
        huge_entry,
        Case {
            name: "huge".into(),
            kind: "transactions".into(),
            data: huge.clone().into_bytes(),
            accept: false,
            code: Some("too_large".into()),
            field: None,
            record: None,
            stamped: false,
            clock: false,
            day: None,
        },
    );
    let out = env.flit(&["batch-upload", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let now = chrono::Utc::now();

    for (kind, table) in [("transactions", TX_TABLE), ("predictions", PRED_TABLE)] {
        let rows = raw_rows(&env, table);
        let id_column = if kind == "transactions" {
            None
        } else {
            Some("prediction_id")
        };
        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        for (day, row) in &rows {
            let id = match id_column {
                Some(column) => serde_json::from_str::<String>(row[column].get()).expect("id"),
                None => {
                    let body: Value = serde_json::from_str(row["json_body"].get()).expect("body");
                    body["transaction_id"].as_str().expect("id").to_owned()
                }
            };
            let case = &expected.records[kind]
                .get(&id)
                .unwrap_or_else(|| panic!("a row nobody sent as an event: {id} in {table}"));
            check_row(case, day, row, now);
            *by_id.entry(id).or_default() += 1;
        }
        assert_eq!(
            rows.len(),
            expected.records(kind),
            "{table}: one row per accepted event"
        );
        assert!(
            by_id.values().all(|n| *n == 1),
            "{table}: no id twice: {by_id:?}"
        );
    }
    for kind in ["transactions", "predictions"] {
        let mut sources = corpus::Expected {
            dead: expected.dead.clone(),
            ..Default::default()
        };
        sources.dead_sources = expected
            .dead_sources
            .iter()
            .filter(|(_, c)| c.kind == kind)
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        corpus::check_dead_letters(&redis, &sources, kind);
    }

    // Typed columns as the door normalised them.
    let rows = raw_rows(&env, PRED_TABLE);
    let column = |id: &str, name: &str| {
        rows.iter()
            .find(|(_, r)| r["prediction_id"].get() == format!("\"{id}\""))
            .and_then(|(_, r)| r.get(name).map(|v| v.get().to_owned()))
    };
    assert_eq!(
        column("p_str", "selected_prediction").as_deref(),
        Some("0.234")
    );
    assert_eq!(
        column("p_naive", "prediction_timestamp").as_deref(),
        Some("\"2026-11-20T14:30:00.123456Z\"")
    );
    assert_eq!(
        column("p_off", "prediction_timestamp").as_deref(),
        Some("\"2026-11-21T01:30:00.000000Z\"")
    );
}

#[test]
fn push_gives_the_door_s_verdict_for_every_line() {
    let redis = RedisServer::start();
    let env = Env::new(&redis).set("FLIT_MAX_EVENT_BYTES", "2048");
    for kind in ["transactions", "predictions"] {
        let cases: Vec<Case> = corpus::cases()
            .into_iter()
            .filter(|c| c.kind == kind && !c.data.contains(&b'\n'))
            .collect();
        let mut input = Vec::new();
        for case in &cases {
            input.extend_from_slice(&case.data);
            input.push(b'\n');
        }
        let out = env.flit_with_input(&["push", kind, "-"], &input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for (n, case) in cases.iter().enumerate() {
            let said = stderr
                .lines()
                .find(|l| l.starts_with(&format!("line {}: ", n + 1)));
            match (&case.code, said) {
                (None, None) => {}
                (Some(code), Some(line)) => assert!(
                    line.starts_with(&format!("line {}: {code}: ", n + 1)),
                    "{}: {line}",
                    case.name
                ),
                (code, said) => panic!("{}: expected {code:?}, push said {said:?}", case.name),
            }
        }
        let good = cases.iter().filter(|c| c.accept).count();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("pushed {good} {kind} events")),
            "{}",
            output_text(&out)
        );
    }
}

/// Sends `n` predictions (raw) whose time is 2026-11-20.
fn send_predictions(redis: &RedisServer, n: usize, prefix: &str) {
    let mut conn = redis.conn(1);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("XADD")
                .arg("stream:predictions")
                .arg("*")
                .arg("data")
                .arg(format!(
                    r#"{{"prediction_id":"{prefix}{i}","selected_prediction":"0.{i}","prediction_timestamp":"2026-11-20 10:00:00"}}"#
                ))
                .ignore();
        }
        pipe.exec(&mut conn).expect("xadd");
    }
}

#[test]
fn a_redrive_killed_mid_run_and_rerun_sends_every_event_back_exactly_once() {
    const N: usize = 20_000;
    let redis = RedisServer::start();
    // Today's rules refuse anything before 2030: every event is dead-lettered.
    let strict = Env::new(&redis).set("FLIT_EARLIEST_EVENT_TIME", "2030-01-01T00:00:00Z");
    send_predictions(&redis, N, "p_");
    let mut conn = redis.conn(1);
    {
        let _service = strict.service("strict");
        wait_until(LIMIT, "all dead-lettered", || {
            xlen(&mut conn, "stream:predictions:dead") as usize == N
                && pending(&mut conn, "stream:predictions") == 0
        });
    }
    assert_eq!(llen(&mut conn, "upload_queue"), 0);
    let out = strict.flit(&[
        "dead-letter",
        "list",
        "predictions",
        "--limit",
        "2",
        "--reason",
        "timestamp_out_of_range",
        "--json",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert!(listed[0].get("data").is_none(), "list leaves the data out");

    // Under the strict rules a redrive refuses them again, for the same reason.
    let out = strict.flit(&["dead-letter", "redrive", "predictions", "--limit", "10"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert_eq!(xlen(&mut conn, "stream:predictions:dead") as usize, N);

    // The rules are fixed (the default window): redrive, killed mid-run.
    let env = Env::new(&redis);
    let before: u64 = xlen(&mut conn, "stream:predictions");
    let mut redrive = env.spawn(&["dead-letter", "redrive", "predictions"]);
    let started = Instant::now();
    let mut left = N as u64;
    while started.elapsed() < LIMIT {
        left = xlen(&mut conn, "stream:predictions:dead");
        if left < N as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    redrive.kill().expect("kill -9");
    let _ = redrive.wait();
    let left_after_kill = xlen(&mut conn, "stream:predictions:dead");
    assert!(
        left < N as u64 && left_after_kill > 0,
        "killed mid-run: {left_after_kill} of {N} still dead"
    );
    let moved = N as u64 - left_after_kill;
    assert_eq!(
        xlen(&mut conn, "stream:predictions") - before,
        moved,
        "what left the dead letters is on the stream, once"
    );

    let out = env.flit(&["dead-letter", "redrive", "predictions", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let outcomes: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        outcomes.as_array().map(Vec::len),
        Some(left_after_kill as usize)
    );
    assert_eq!(xlen(&mut conn, "stream:predictions:dead"), 0);

    let _service = env.service("fixed");
    wait_until(LIMIT, "every redriven event stored", || {
        llen(&mut conn, "upload_queue") as usize == N
            && pending(&mut conn, "stream:predictions") == 0
    });
    assert_exactly_once(&redis, 1, "pred:", "stream:predictions", N);
    let stored: String = redis::cmd("GET")
        .arg("pred:p_7")
        .query(&mut conn)
        .expect("get");
    assert_eq!(
        stored,
        r#"{"prediction_id":"p_7","selected_prediction":"0.7","prediction_timestamp":"2026-11-20 10:00:00"}"#,
        "the original data went back"
    );
}

#[test]
fn dead_letters_are_capped_and_what_the_cap_drops_is_counted() {
    const N: u64 = 1_000;
    let redis = RedisServer::start();
    let env = Env::new(&redis)
        .set("FLIT_DEAD_LETTER_MAXLEN", "100")
        .set("FLIT_ALERT_DEAD_LETTERS_PER_HOUR", "50");
    let mut conn = redis.conn(0);
    let big = "y".repeat(50_000);
    for i in 0..N {
        let data = if i % 10 == 0 {
            format!(r#"{{"transaction_id":"t{i}","amount":{{"big":"{big}"}}}}"#)
        } else {
            format!(r#"{{"transaction_id":"t{i}","amount":"lots"}}"#)
        };
        xadd(
            &mut conn,
            "stream:transactions",
            &[("data", data.as_bytes())],
        );
    }
    let _service = env.service("cap");
    wait_until(LIMIT, "all refused", || {
        pending(&mut conn, "stream:transactions") == 0
            && redis::cmd("GET")
                .arg("flit:dead_letters_trimmed:transactions")
                .query::<Option<u64>>(&mut conn)
                .ok()
                .flatten()
                .unwrap_or(0)
                + xlen(&mut conn, "stream:transactions:dead")
                == N
    });
    let kept = xlen(&mut conn, "stream:transactions:dead");
    assert!(kept <= 300, "about the cap: {kept}");
    for fields in corpus::dead_letters(&mut conn, "stream:transactions:dead") {
        assert!(
            fields["data"].len() <= 4096,
            "no dead letter keeps more than 4 KiB"
        );
    }
    let out = env.flit(&["monitor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    let stream = &report["kinds"][0]["stream"];
    assert_eq!(stream["dead_letters_trimmed"].as_u64(), Some(N - kept));
    assert!(
        report["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .any(|a| a["code"] == "dead_letters_recent"),
        "{report}"
    );
    // A truncated dead letter says it cannot be redriven.
    let out = env.flit(&["dead-letter", "redrive", "transactions", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let outcomes: Value = serde_json::from_slice(&out.stdout).expect("json");
    let outcomes = outcomes.as_array().expect("list");
    assert!(
        outcomes
            .iter()
            .all(|o| o["outcome"] == "unchanged" || o["outcome"] == "not_redrivable")
    );
    assert!(outcomes.iter().any(|o| o["outcome"] == "not_redrivable"
        && o["why"].as_str().is_some_and(|w| w.contains("prefix"))));
}

fn eval_reset(conn: &mut redis::Connection, stream: &str) -> redis::RedisResult<String> {
    redis::Script::new(include_str!("../deploy/redis/reset-stream-id.lua"))
        .key(stream)
        .invoke(conn)
}

fn alert_codes(env: &Env) -> Vec<String> {
    let out = env.flit(&["monitor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    report["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["code"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_stream_id_in_the_future_is_stamped_safely_alerted_and_reset_as_readme_says() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let mut conn = redis.conn(1);
    let service = env.service("future");
    xadd(
        &mut conn,
        "stream:predictions",
        &[("data", br#"{"prediction_id":"p0"}"#)],
    );
    wait_until(LIMIT, "first record", || {
        llen(&mut conn, "upload_queue") == 1
    });
    assert!(!alert_codes(&env).contains(&"stream_id_in_future".to_owned()));

    // The last possible id: XADD * fails for everyone after it.
    redis::cmd("XADD")
        .arg("stream:predictions")
        .arg("18446744073709551615-18446744073709551615")
        .arg("data")
        .arg(r#"{"prediction_id":"p_max"}"#)
        .query::<String>(&mut conn)
        .expect("xadd");
    let refused = redis::cmd("XADD")
        .arg("stream:predictions")
        .arg("*")
        .arg("data")
        .arg("{}")
        .query::<String>(&mut conn);
    assert!(refused.is_err(), "an exhausted stream refuses XADD *");
    wait_until(LIMIT, "the max-id entry stored", || {
        llen(&mut conn, "upload_queue") == 2
    });
    let stored: Value = serde_json::from_str(
        &redis::cmd("GET")
            .arg("pred:p_max")
            .query::<String>(&mut conn)
            .expect("get"),
    )
    .expect("json");
    let stamp = chrono::DateTime::parse_from_rfc3339(
        stored["prediction_timestamp"].as_str().expect("stamp"),
    )
    .expect("time");
    assert!(
        (chrono::Utc::now() - stamp.with_timezone(&chrono::Utc))
            .num_seconds()
            .abs()
            < 60,
        "stamped with the Redis clock, not year 584 million: {stamp}"
    );
    assert!(alert_codes(&env).contains(&"stream_id_in_future".to_owned()));

    // README: once lag and pending are 0, the script resets the ids.
    wait_until(LIMIT, "all read", || {
        pending(&mut conn, "stream:predictions") == 0
    });
    let id = eval_reset(&mut conn, "stream:predictions").expect("reset");
    let new = xadd(
        &mut conn,
        "stream:predictions",
        &[("data", br#"{"prediction_id":"p_new"}"#)],
    );
    assert!(
        new.as_str() > id.as_str() && new.len() == id.len(),
        "{id} then {new}"
    );
    wait_until(LIMIT, "the group reads after the reset", || {
        llen(&mut conn, "upload_queue") == 3
    });
    assert!(!alert_codes(&env).contains(&"stream_id_in_future".to_owned()));
    drop(service);

    // With entries still unread, the script refuses and changes nothing.
    xadd(
        &mut conn,
        "stream:predictions",
        &[("data", br#"{"prediction_id":"p_unread"}"#)],
    );
    let err = eval_reset(&mut conn, "stream:predictions").expect_err("unread entries");
    assert!(err.to_string().contains("has not read"), "{err}");
}

#[test]
fn a_copy_without_a_time_is_a_duplicate_only_when_the_stamp_is_all_that_differs() {
    let redis = RedisServer::start();
    let env = Env::new(&redis);
    let mut conn = redis.conn(1);
    let send = |conn: &mut redis::Connection, data: &[u8]| {
        xadd(conn, "stream:predictions", &[("data", data)]);
        // Entry ids a millisecond apart: copies get different arrival stamps.
        std::thread::sleep(Duration::from_millis(5));
    };
    // Other events that merely share the text around where a stamp would go.
    send(&mut conn, br#"{"prediction_id":"p1","risk_level":"LOW","prediction_timestamp":"2026-11-20T14:30:00Z","selected_prediction":0.9}"#);
    send(
        &mut conn,
        br#"{"prediction_id":"p1","risk_level":"LOW","prediction_timestamp":null}"#,
    );
    send(&mut conn, br#"{"prediction_timestamp":"2026-11-20T14:30:00.000Z","selected_model":"ridge","business_decision":"decline","prediction_id":"p3","risk_level":"HIGH"}"#);
    send(&mut conn, br#"{"prediction_id":"p3","risk_level":"HIGH"}"#);
    // Real copies: the same event without a time, sent twice, and indented once more.
    send(&mut conn, br#"{"prediction_id":"p5","x":1}"#);
    send(&mut conn, br#"{"prediction_id":"p5","x":1}"#);
    send(&mut conn, b"{\n  \"prediction_id\": \"p5\",\n  \"x\": 1\n}");
    send(
        &mut conn,
        br#"{"prediction_id":"p6","prediction_timestamp":null,"x":1}"#,
    );
    send(
        &mut conn,
        br#"{"prediction_id":"p6","prediction_timestamp":null,"x":1}"#,
    );
    let _service = env.service("copies");
    wait_until(LIMIT, "all committed", || {
        pending(&mut conn, "stream:predictions") == 0 && llen(&mut conn, "upload_queue") >= 6
    });
    std::thread::sleep(Duration::from_millis(500));
    let queued = queue(&mut conn);
    let ids: Vec<String> = queued
        .iter()
        .map(|key| key.rsplit(':').next().unwrap_or_default().to_owned())
        .collect();
    let count = |id: &str| ids.iter().filter(|i| *i == id).count();
    assert_eq!(count("p1"), 2, "two versions of p1: {queued:?}");
    assert_eq!(count("p3"), 2, "two versions of p3: {queued:?}");
    assert_eq!(count("p5"), 1, "copies of p5 are one record: {queued:?}");
    assert_eq!(count("p6"), 1, "copies of p6 are one record: {queued:?}");
    assert_eq!(queued.len(), 6);
}
