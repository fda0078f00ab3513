//! The door's case corpus (`schemas/door_cases.json`) as integration tests
//! use it: each case's bytes are sent raw onto its stream, as redis-py
//! would, and what should come out is known.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{RedisServer, xadd};

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// `transactions` or `predictions`.
    pub kind: String,
    pub data: Vec<u8>,
    pub accept: bool,
    pub code: Option<String>,
    pub field: Option<String>,
    /// The stored record (accepted cases), when the corpus gives it.
    pub record: Option<String>,
    /// The record carries the arrival stamp (so the real one differs).
    pub stamped: bool,
    /// The verdict depends on the corpus's clock; skipped against a real one.
    pub clock: bool,
    /// UTC day of the event time (accepted cases that carry their own time).
    pub day: Option<String>,
}

impl Case {
    pub fn db(&self) -> i64 {
        if self.kind == "transactions" { 0 } else { 1 }
    }

    pub fn stream(&self) -> String {
        format!("stream:{}", self.kind)
    }

    /// The record id (accepted cases).
    pub fn id(&self) -> String {
        let field = if self.kind == "transactions" {
            "transaction_id"
        } else {
            "prediction_id"
        };
        let text = self
            .record
            .clone()
            .unwrap_or_else(|| String::from_utf8_lossy(&self.data).into_owned());
        let value: Value = serde_json::from_str(&text).expect("accepted cases are JSON");
        value[field].as_str().expect("an id").to_owned()
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Every case of the corpus that holds against a real clock.
pub fn cases() -> Vec<Case> {
    let corpus: Value =
        serde_json::from_str(include_str!("../../schemas/door_cases.json")).expect("corpus");
    let text = |case: &Value, name: &str| case[name].as_str().map(str::to_owned);
    corpus["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|case| Case {
            name: text(case, "name").unwrap_or_default(),
            kind: text(case, "kind").unwrap_or_default(),
            data: match text(case, "data") {
                Some(data) => data.into_bytes(),
                None => hex(&text(case, "data_hex").unwrap_or_default()),
            },
            accept: case["verdict"] == "accept",
            code: text(case, "code"),
            field: text(case, "field"),
            record: text(case, "record"),
            stamped: case["stamped"] == true,
            clock: case["clock"] == true,
            day: text(case, "event_time").map(|t| t[..10].to_owned()),
        })
        .filter(|case| !case.clock)
        .collect()
}

/// What sending the corpus must give: per kind, the accepted cases by id
/// (cases with the same id carry the same record: a duplicate), and the
/// reason codes of the refused ones with how many of each.
#[derive(Debug, Default)]
pub struct Expected {
    pub records: HashMap<String, BTreeMap<String, Case>>,
    pub dead: HashMap<String, BTreeMap<String, usize>>,
    /// Stream entry id of each refused case.
    pub dead_sources: HashMap<String, Case>,
}

impl Expected {
    pub fn records(&self, kind: &str) -> usize {
        self.records.get(kind).map_or(0, BTreeMap::len)
    }

    pub fn dead_letters(&self, kind: &str) -> usize {
        self.dead.get(kind).map_or(0, |m| m.values().sum())
    }
}

/// XADDs every case raw onto its stream and says what must come out.
pub fn send(redis: &RedisServer, cases: &[Case]) -> Expected {
    let mut expected = Expected::default();
    let mut conns = [redis.conn(0), redis.conn(1)];
    for case in cases {
        let conn = &mut conns[case.db() as usize];
        let entry = xadd(conn, &case.stream(), &[("data", &case.data)]);
        if case.accept {
            let records = expected.records.entry(case.kind.clone()).or_default();
            if let Some(earlier) = records.get(&case.id()) {
                assert_eq!(
                    earlier.record, case.record,
                    "{}: same id, same record",
                    case.name
                );
            }
            records.insert(case.id(), case.clone());
        } else {
            *expected
                .dead
                .entry(case.kind.clone())
                .or_default()
                .entry(case.code.clone().unwrap_or_default())
                .or_default() += 1;
            expected.dead_sources.insert(entry, case.clone());
        }
    }
    expected
}

/// The dead letters of a stream as (fields) maps, text values.
pub fn dead_letters(conn: &mut redis::Connection, stream: &str) -> Vec<HashMap<String, Vec<u8>>> {
    let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("xrange");
    entries.into_iter().map(|(_, fields)| fields).collect()
}

/// Checks the dead letters of `kind` against what the corpus expects: one
/// per refused case, with its code, a reason naming its field, its data.
pub fn check_dead_letters(redis: &RedisServer, expected: &Expected, kind: &str) {
    let db = if kind == "transactions" { 0 } else { 1 };
    let mut conn = redis.conn(db);
    let letters = dead_letters(&mut conn, &format!("stream:{kind}:dead"));
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for fields in &letters {
        let text = |name: &str| String::from_utf8_lossy(&fields[name]).into_owned();
        let source = text("source_id");
        let case = expected.dead_sources.get(&source).unwrap_or_else(|| {
            panic!("a dead letter nobody expected: {source} {}", text("reason"))
        });
        assert_eq!(Some(text("reason_code")), case.code, "{}", case.name);
        if let Some(field) = &case.field {
            assert!(
                text("reason").contains(field.as_str()),
                "{}: {}",
                case.name,
                text("reason")
            );
        }
        if fields["truncated"] == b"1" {
            assert!(
                case.data.starts_with(&fields["data"]),
                "{}: a prefix kept",
                case.name
            );
            assert!(fields["data"].len() < case.data.len());
        } else {
            assert_eq!(fields["data"], case.data, "{}: data kept", case.name);
        }
        assert_eq!(text("size"), case.data.len().to_string());
        *codes.entry(text("reason_code")).or_default() += 1;
    }
    assert_eq!(
        codes,
        expected.dead.get(kind).cloned().unwrap_or_default(),
        "one dead letter per refused {kind} case"
    );
}
