//! The door against its case corpus (`schemas/door_cases.json`, shared with
//! every implementation of the rules), and property tests of the one-line
//! and no-reformatting rules.

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::warehouse::rows::to_row;

fn utc(text: &str) -> DateTime<Utc> {
    time::parse_timestamp(text).unwrap_or_else(|| panic!("a time: {text}"))
}

#[derive(Deserialize)]
struct Corpus {
    settings: CorpusSettings,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct CorpusSettings {
    now: String,
    arrival: String,
    max_event_bytes: usize,
    earliest_event_time: String,
    max_event_ahead_seconds: i64,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    kind: EventKind,
    data: Option<String>,
    data_hex: Option<String>,
    verdict: String,
    code: Option<String>,
    field: Option<String>,
    record: Option<String>,
    event_time: Option<String>,
    #[serde(default)]
    stamped: bool,
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[test]
fn the_door_gives_every_verdict_of_the_case_corpus() {
    let corpus: Corpus =
        serde_json::from_str(include_str!("../../schemas/door_cases.json")).expect("corpus");
    let s = &corpus.settings;
    let rules = DoorRules {
        max_event_bytes: s.max_event_bytes,
        window: TimeWindow {
            earliest: utc(&s.earliest_event_time),
            max_ahead: TimeDelta::seconds(s.max_event_ahead_seconds),
        },
        arrival_skew: TimeDelta::seconds(60),
    };
    let (now, arrival) = (utc(&s.now), utc(&s.arrival));
    let mut failures = Vec::new();
    for case in &corpus.cases {
        let data = match (&case.data, &case.data_hex) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(h)) => hex(h),
            (None, None) => panic!("{}: no data", case.name),
        };
        let verdict = accept(case.kind, &data, arrival, now, &rules);
        let problem = match (case.verdict.as_str(), &verdict) {
            ("accept", Ok(event)) => {
                let mut problems = Vec::new();
                if case.record.as_ref().is_some_and(|r| *r != event.payload) {
                    problems.push(format!("record {}", event.payload));
                }
                if event.payload.contains('\n') {
                    problems.push("record spans lines".to_owned());
                }
                if case.stamped != event.stamped_at_arrival.is_some() {
                    problems.push(format!("stamped {:?}", event.stamped_at_arrival));
                }
                if let Some(at) = &case.event_time
                    && utc(at) != event.event_time
                {
                    problems.push(format!("event time {}", event.event_time));
                }
                if to_row(case.kind, &event.payload, now).is_err() {
                    problems.push("no row".to_owned());
                }
                (!problems.is_empty()).then(|| problems.join("; "))
            }
            ("reject", Err(rejection)) => {
                let code_differs = case.code.as_deref() != Some(rejection.code());
                let field_differs =
                    case.field.is_some() && case.field.as_deref() != rejection.field();
                (code_differs || field_differs)
                    .then(|| format!("rejected as {} ({rejection})", rejection.code()))
            }
            (_, Ok(event)) => Some(format!("accepted as {}", event.payload)),
            (_, Err(rejection)) => Some(format!("rejected as {}: {rejection}", rejection.code())),
        };
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(corpus.cases.len() >= 60, "the corpus covers every rule");
    let codes: std::collections::HashSet<&str> = corpus
        .cases
        .iter()
        .filter_map(|c| c.code.as_deref())
        .collect();
    for code in Rejection::CODES {
        if code != "missing_data" && code != "missing_field" {
            assert!(codes.contains(code), "the corpus has a case for {code}");
        }
    }
}

fn rules() -> DoorRules {
    DoorRules::default()
}

#[test]
fn an_entry_id_is_the_arrival_time_unless_implausible() {
    let now = utc("2026-11-23T12:00:00Z");
    let rules = rules();
    let ms = |t: DateTime<Utc>| format!("{}-0", t.timestamp_millis());
    // A backlog read late keeps its own time.
    let hour_ago = now - TimeDelta::hours(1);
    assert_eq!(arrival_time(&ms(hour_ago), now, &rules), hour_ago);
    // Within the skew.
    let soon = now + TimeDelta::seconds(30);
    assert_eq!(arrival_time(&ms(soon), now, &rules), soon);
    // A producer-chosen id in the future, an exhausted id, garbage.
    for id in [
        ms(now + TimeDelta::hours(2)),
        "18446744073709551615-18446744073709551615".to_owned(),
        "x".to_owned(),
    ] {
        assert_eq!(arrival_time(&id, now, &rules), now, "{id}");
    }
    // Ids start in 1970: before a window that starts later, the clock stamps.
    let late_window = DoorRules {
        window: TimeWindow {
            earliest: utc("2000-01-01T00:00:00Z"),
            ..rules.window
        },
        ..rules
    };
    assert_eq!(arrival_time("1-1", now, &late_window), now);
    assert_eq!(
        arrival_time("1-1", now, &rules),
        utc("1970-01-01T00:00:00.001Z")
    );
}

#[test]
fn the_same_event_stamped_at_two_arrivals_differs_only_at_the_stamp() {
    let now = utc("2026-11-23T12:00:00Z");
    for text in [
        r#"{"prediction_id":"p","x":1}"#,
        r#"{"prediction_id":"p","prediction_timestamp":null,"x":1}"#,
    ] {
        let first = accept(EventKind::Prediction, text.as_bytes(), now, now, &rules()).expect("ok");
        let later = now + TimeDelta::seconds(5);
        let second = accept(
            EventKind::Prediction,
            text.as_bytes(),
            later,
            later,
            &rules(),
        )
        .expect("ok");
        let stamp = first.stamped_at_arrival.expect("stamped");
        assert_eq!(second.stamped_at_arrival, Some(stamp));
        for event in [&first, &second] {
            assert!(event.payload.starts_with(&event.original[..stamp.at]));
            assert!(
                event
                    .payload
                    .ends_with(&event.original[stamp.at + stamp.replaced..])
            );
        }
        assert_ne!(first.payload, second.payload);
    }
}

#[test]
fn the_window_follows_the_clock_given() {
    let text = br#"{"prediction_id":"p","prediction_timestamp":"2026-11-25T00:00:00Z"}"#;
    let now = utc("2026-11-23T12:00:00Z");
    let refused = accept(EventKind::Prediction, text, now, now, &rules()).expect_err("ahead");
    assert_eq!(refused.code(), "timestamp_out_of_range");
    let later = utc("2026-11-24T12:00:00Z");
    assert!(accept(EventKind::Prediction, text, later, later, &rules()).is_ok());
}

/// A JSON value printed with `ws` pieces of whitespace between its tokens.
fn spaced(value: &Value, ws: &mut impl Iterator<Item = String>, out: &mut String) {
    fn gap(ws: &mut impl Iterator<Item = String>, out: &mut String) {
        out.push_str(&ws.next().unwrap_or_default());
    }
    match value {
        Value::Object(map) => {
            out.push('{');
            for (i, (key, value)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                gap(ws, out);
                out.push_str(&Value::from(key.as_str()).to_string());
                gap(ws, out);
                out.push(':');
                gap(ws, out);
                spaced(value, ws, out);
                gap(ws, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                gap(ws, out);
                spaced(item, ws, out);
                gap(ws, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "(\\PC|[\"\\\\\n\t\u{2028}])*".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_ ]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A prediction with `extra` fields beside its id and time.
fn prediction(extra: serde_json::Map<String, Value>) -> Value {
    let mut event = serde_json::Map::new();
    event.insert("prediction_id".into(), "p_prop".into());
    for (key, value) in extra {
        event.insert(format!("x_{key}"), value);
    }
    event.insert("prediction_timestamp".into(), "2026-11-20 14:30:00".into());
    Value::Object(event)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn whitespace_never_changes_the_record_and_it_is_always_one_line(
        extra in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..6),
        ws in prop::collection::vec("[ \t\r\n]{0,3}", 1..40),
    ) {
        let event = prediction(extra.into_iter().collect());
        let compact = event.to_string();
        let mut pretty = String::new();
        spaced(&event, &mut ws.into_iter().cycle(), &mut pretty);
        let now = utc("2026-11-23T12:00:00Z");
        let a = accept(EventKind::Prediction, compact.as_bytes(), now, now, &rules());
        let b = accept(EventKind::Prediction, pretty.as_bytes(), now, now, &rules());
        let (a, b) = (a.expect("compact accepted"), b.expect("spaced accepted"));
        prop_assert_eq!(&a.payload, &compact, "compact JSON is kept byte for byte");
        prop_assert_eq!(&b.payload, &a.payload, "spacing does not make another record");
        let row = to_row(EventKind::Prediction, &b.payload, now).expect("a row");
        prop_assert!(!row.json.contains('\n') && !row.json.contains('\r'));
        let columns: std::collections::HashMap<String, &serde_json::value::RawValue> =
            serde_json::from_str(&row.json).expect("the row is one JSON object");
        prop_assert_eq!(columns["raw"].get(), compact.as_str(), "raw is the record as written");
    }

    #[test]
    fn numbers_and_key_order_are_kept_as_written(
        numbers in prop::collection::vec(
            "-?(0|[1-9][0-9]{0,12})(\\.[0-9]{1,8})?([eE][+-]?[0-9]{1,2})?", 1..8),
        ws in "[ \n]{0,2}",
    ) {
        let fields: Vec<String> = numbers
            .iter()
            .enumerate()
            .map(|(i, n)| format!("\"k{}\":{ws}{n}", numbers.len() - i))
            .collect();
        let text = format!(
            "{{\"prediction_id\":\"p\",{ws}{},\"prediction_timestamp\":\"2026-11-20T14:30:00Z\"}}",
            fields.join(&format!(",{ws}"))
        );
        let now = utc("2026-11-23T12:00:00Z");
        match accept(EventKind::Prediction, text.as_bytes(), now, now, &rules()) {
            Ok(event) => prop_assert_eq!(
                event.payload,
                format!(
                    "{{\"prediction_id\":\"p\",{},\"prediction_timestamp\":\"2026-11-20T14:30:00Z\"}}",
                    numbers
                        .iter()
                        .enumerate()
                        .map(|(i, n)| format!("\"k{}\":{n}", numbers.len() - i))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            ),
            // Only a number beyond a double is refused.
            Err(rejection) => prop_assert_eq!(rejection.code(), "invalid_json"),
        }
    }

    #[test]
    fn any_bytes_get_a_verdict_never_a_panic(
        data in prop::collection::vec(any::<u8>(), 0..300),
        kind in prop_oneof![Just(EventKind::Transaction), Just(EventKind::Prediction)],
    ) {
        let now = utc("2026-11-23T12:00:00Z");
        if let Ok(event) = accept(kind, &data, now, now, &rules()) {
            prop_assert!(!event.payload.contains('\n'));
            prop_assert!(to_row(kind, &event.payload, now).is_ok());
        }
    }
}
